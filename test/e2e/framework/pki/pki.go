// Package pki generates the certificates and keys a throw-away control plane
// needs, in memory and with the standard library only: a CA, serving and
// client certificates signed by it, and a ServiceAccount token signing key.
// Keys are ECDSA P-256, which is fast to generate and accepted everywhere
// Kubernetes uses keys.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"time"
)

// validity is how long generated certificates last; test control planes live
// for minutes, demos for hours.
const validity = 7 * 24 * time.Hour

// CA is a self-signed certificate authority.
type CA struct {
	// Cert is the CA certificate.
	Cert *x509.Certificate
	// CertPEM is Cert in PEM form.
	CertPEM []byte
	key     crypto.Signer
}

// KeyPair is a certificate and its private key in PEM form.
type KeyPair struct {
	// CertPEM is the certificate.
	CertPEM []byte
	// KeyPEM is the private key (PKCS #8).
	KeyPEM []byte
}

// CertOptions describes a certificate to issue.
type CertOptions struct {
	// CommonName is the subject CN (the user name for client
	// certificates).
	CommonName string
	// Organizations are the subject O values (the groups for client
	// certificates).
	Organizations []string
	// DNSNames and IPs are the subject alternative names of a serving
	// certificate.
	DNSNames []string
	// IPs are IP subject alternative names.
	IPs []net.IP
	// Server and Client select the extended key usages.
	Server, Client bool
}

// NewCA generates a CA with the given common name.
func NewCA(commonName string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating CA key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("creating CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing CA certificate: %w", err)
	}
	return &CA{Cert: cert, CertPEM: pemBlock("CERTIFICATE", der), key: key}, nil
}

// Issue generates a key and a certificate for it signed by the CA.
func (ca *CA) Issue(opts CertOptions) (KeyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return KeyPair{}, fmt.Errorf("generating key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return KeyPair{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: opts.CommonName, Organization: opts.Organizations},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		DNSNames:     opts.DNSNames,
		IPAddresses:  opts.IPs,
	}
	if opts.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if opts.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		return KeyPair{}, fmt.Errorf("creating certificate for %s: %w", opts.CommonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return KeyPair{}, fmt.Errorf("encoding key: %w", err)
	}
	return KeyPair{CertPEM: pemBlock("CERTIFICATE", der), KeyPEM: pemBlock("PRIVATE KEY", keyDER)}, nil
}

// SigningKey is a key pair for signing ServiceAccount tokens, in the PEM
// forms kube-apiserver's --service-account-signing-key-file (private) and
// --service-account-key-file (public) read.
type SigningKey struct {
	// PrivatePEM is the private key (PKCS #8).
	PrivatePEM []byte
	// PublicPEM is the public key (PKIX).
	PublicPEM []byte
}

// NewSigningKey generates a ServiceAccount token signing key.
func NewSigningKey() (SigningKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return SigningKey{}, fmt.Errorf("generating signing key: %w", err)
	}
	priv, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return SigningKey{}, fmt.Errorf("encoding signing key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return SigningKey{}, fmt.Errorf("encoding public key: %w", err)
	}
	return SigningKey{PrivatePEM: pemBlock("PRIVATE KEY", priv), PublicPEM: pemBlock("PUBLIC KEY", pub)}, nil
}

func serialNumber() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating serial number: %w", err)
	}
	return n, nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
