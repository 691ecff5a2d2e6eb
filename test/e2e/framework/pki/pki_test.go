package pki

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"testing"
)

func TestIssueVerifies(t *testing.T) {
	ca, err := NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	serving, err := ca.Issue(CertOptions{CommonName: "apiserver", DNSNames: []string{"kubernetes"}, IPs: []net.IP{net.ParseIP("198.18.0.1"), net.ParseIP("fd00:198:18::1")}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.Issue(CertOptions{CommonName: "admin", Organizations: []string{"system:masters"}, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	for name, tc := range map[string]struct {
		kp   KeyPair
		opts x509.VerifyOptions
	}{
		"serving v4":  {serving, x509.VerifyOptions{Roots: pool, DNSName: "198.18.0.1"}},
		"serving v6":  {serving, x509.VerifyOptions{Roots: pool, DNSName: "fd00:198:18::1"}},
		"serving dns": {serving, x509.VerifyOptions{Roots: pool, DNSName: "kubernetes"}},
		"client":      {client, x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}},
	} {
		if _, err := tls.X509KeyPair(tc.kp.CertPEM, tc.kp.KeyPEM); err != nil {
			t.Errorf("%s: key pair: %v", name, err)
		}
		block, _ := pem.Decode(tc.kp.CertPEM)
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := cert.Verify(tc.opts); err != nil {
			t.Errorf("%s: verify: %v", name, err)
		}
	}
	if _, err := NewSigningKey(); err != nil {
		t.Fatal(err)
	}
}
