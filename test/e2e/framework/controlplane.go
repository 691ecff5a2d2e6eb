package framework

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/iptproxy/iptproxy/test/e2e/framework/netns"
	"github.com/iptproxy/iptproxy/test/e2e/framework/pki"
)

// controlPlane is etcd and kube-apiserver running in the host namespace.
type controlPlane struct {
	url             string // https://<host IP>:6443
	caPEM           []byte
	adminConfig     *rest.Config
	client          kubernetes.Interface
	adminKubecfg    string
	etcd, apiserver *netns.Process
	apiserverArgs   []string // to start it again (see StartAPIServer)
}

// connTracker dials from the host namespace and remembers every connection,
// so that teardown can close them (an open socket keeps its namespace alive
// after the name is deleted).
type connTracker struct {
	ns *netns.NetNS

	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
	closed bool
}

type trackedConn struct {
	net.Conn
	t    *connTracker
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.t.mu.Lock()
		delete(c.t.conns, c)
		c.t.mu.Unlock()
	})
	return c.Conn.Close()
}

// DialContext dials from inside the namespace; it fits rest.Config.Dial.
func (t *connTracker) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("dial %s: cluster is shut down", address)
	}
	c, err := t.ns.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, t: t}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		_ = c.Close()
		return nil, fmt.Errorf("dial %s: cluster is shut down", address)
	}
	t.conns[tc] = struct{}{}
	return tc, nil
}

// closeAll closes every connection and refuses new ones.
func (t *connTracker) closeAll() {
	t.mu.Lock()
	t.closed = true
	conns := t.conns
	t.conns = nil
	t.mu.Unlock()
	for c := range conns {
		_ = c.Conn.Close()
	}
}

// startControlPlane generates the PKI, starts etcd and kube-apiserver inside
// the host namespace and waits until the apiserver is ready.
func (c *Cluster) startControlPlane(ctx context.Context, t T, extraArgs []string) error {
	dir := filepath.Join(c.dir, "control-plane")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	hostV4, hostV6 := hostIPs()
	advertise := byFamily(c.families, hostV4, hostV6)[0]
	url := "https://" + netip.AddrPortFrom(advertise, APIServerPort).String()
	creds, err := c.writePKI(dir, url, hostV4, hostV6)
	if err != nil {
		return err
	}
	cp := &controlPlane{url: url, caPEM: creds.caPEM, adminKubecfg: creds.kubeconfig}
	c.cp = cp

	start := time.Now()
	if err := c.startEtcd(ctx, cp, dir); err != nil {
		return err
	}
	if err := c.startAPIServer(ctx, cp, dir, advertise, creds, extraArgs); err != nil {
		return err
	}
	t.Logf("control plane of run %s ready at %s after %v", c.runID, url, time.Since(start).Round(100*time.Millisecond))
	return nil
}

// controlPlaneCreds are the certificates the control plane's clients use.
type controlPlaneCreds struct {
	caPEM, adminCert, adminKey []byte
	// kubeconfig is the admin kubeconfig's path.
	kubeconfig string
}

// writePKI generates the CA, the apiserver's serving certificate, the
// admin client certificate and the service-account key into dir, and
// writes the admin kubeconfig for url.
func (c *Cluster) writePKI(dir, url string, hostV4, hostV6 netip.Addr) (*controlPlaneCreds, error) {
	ca, err := pki.NewCA("iptproxy-e2e-ca")
	if err != nil {
		return nil, err
	}
	svcV4, svcV6 := netip.MustParseAddr("198.19.0.1"), netip.MustParseAddr("fd00:198:19::1")
	serving, err := ca.Issue(pki.CertOptions{
		CommonName: "kube-apiserver",
		DNSNames:   []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"},
		IPs:        []net.IP{hostV4.AsSlice(), hostV6.AsSlice(), svcV4.AsSlice(), svcV6.AsSlice(), net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		Server:     true,
	})
	if err != nil {
		return nil, err
	}
	admin, err := ca.Issue(pki.CertOptions{CommonName: "e2e-admin", Organizations: []string{"system:masters"}, Client: true})
	if err != nil {
		return nil, err
	}
	saKey, err := pki.NewSigningKey()
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{
		"ca.crt":        ca.CertPEM,
		"apiserver.crt": serving.CertPEM,
		"apiserver.key": serving.KeyPEM,
		"sa.key":        saKey.PrivatePEM,
		"sa.pub":        saKey.PublicPEM,
		// For people poking at the apiserver with curl.
		"admin.crt": admin.CertPEM,
		"admin.key": admin.KeyPEM,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, fmt.Errorf("writing %s: %w", name, err)
		}
	}
	adminKubecfg := filepath.Join(c.dir, "admin.kubeconfig")
	if err := writeKubeconfig(adminKubecfg, url, ca.CertPEM, "e2e-admin", &clientcmdapi.AuthInfo{ClientCertificateData: admin.CertPEM, ClientKeyData: admin.KeyPEM}); err != nil {
		return nil, err
	}
	return &controlPlaneCreds{caPEM: ca.CertPEM, adminCert: admin.CertPEM, adminKey: admin.KeyPEM, kubeconfig: adminKubecfg}, nil
}

// startEtcd starts etcd on the host namespace's loopback (so fixed ports
// never clash between runs) and waits until it is healthy.
func (c *Cluster) startEtcd(ctx context.Context, cp *controlPlane, dir string) error {
	var err error
	cp.etcd, err = c.startProcess(c.host, "etcd", []string{
		c.env.Etcd(),
		"--name=e2e",
		"--data-dir=" + filepath.Join(dir, "etcd"),
		"--listen-client-urls=http://127.0.0.1:2379",
		"--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380",
		"--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=e2e=http://127.0.0.1:2380",
		"--unsafe-no-fsync=true",
		"--log-level=warn",
	})
	if err != nil {
		return err
	}
	if err := waitFor(ctx, 30*time.Second, cp.etcd, func(ctx context.Context) error {
		return etcdHealthy(ctx, c.host.NetNS)
	}); err != nil {
		return fmt.Errorf("etcd did not become healthy: %w", err)
	}
	return nil
}

// startAPIServer starts kube-apiserver and waits until it is ready and the
// system namespaces exist.
func (c *Cluster) startAPIServer(ctx context.Context, cp *controlPlane, dir string, advertise netip.Addr, creds *controlPlaneCreds, extraArgs []string) error {
	families := make([]string, len(c.families))
	for i, f := range c.families {
		families[i] = byFamily([]v1.IPFamily{f}, ServiceCIDRIPv4, ServiceCIDRIPv6)[0]
	}
	args := []string{
		c.env.KubeAPIServer(),
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=::",
		"--advertise-address=" + advertise.String(),
		fmt.Sprintf("--secure-port=%d", APIServerPort),
		"--cert-dir=" + filepath.Join(dir, "certs"),
		"--tls-cert-file=" + filepath.Join(dir, "apiserver.crt"),
		"--tls-private-key-file=" + filepath.Join(dir, "apiserver.key"),
		"--client-ca-file=" + filepath.Join(dir, "ca.crt"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + filepath.Join(dir, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(dir, "sa.key"),
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=" + strings.Join(families, ","),
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
		"--profiling=false",
		"--v=1",
	}
	cp.apiserverArgs = append(args, extraArgs...)
	var err error
	cp.apiserver, err = c.startProcess(c.host, "kube-apiserver", cp.apiserverArgs)
	if err != nil {
		return err
	}
	cp.adminConfig = &rest.Config{
		Host: cp.url,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   creds.caPEM,
			CertData: creds.adminCert,
			KeyData:  creds.adminKey,
		},
		Dial:      c.dialer.DialContext,
		QPS:       200,
		Burst:     400,
		UserAgent: "iptproxy-e2e",
	}
	cp.client, err = kubernetes.NewForConfig(cp.adminConfig)
	if err != nil {
		return fmt.Errorf("creating admin client: %w", err)
	}
	if err := waitFor(ctx, 120*time.Second, cp.apiserver, func(ctx context.Context) error {
		body, err := cp.client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Raw()
		if err != nil {
			return fmt.Errorf("readyz: %w: %s", err, body)
		}
		// The system namespaces are created by a post-start hook that
		// readyz does not wait for.
		for _, ns := range []string{metav1.NamespaceDefault, metav1.NamespaceSystem} {
			if _, err := cp.client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
				return fmt.Errorf("namespace %s: %w", ns, err)
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("kube-apiserver did not become ready: %w", err)
	}
	return nil
}

// etcdHealthy asks etcd's /health endpoint from inside ns.
func etcdHealthy(ctx context.Context, ns *netns.NetNS) error {
	tr := &http.Transport{DialContext: ns.DialContext, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:2379/health", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 2 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close() //nolint:errcheck // read-only
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"health":"true"`) {
		return fmt.Errorf("etcd health: %s: %s", resp.Status, body)
	}
	return nil
}

// waitFor polls fn every 200 ms until it succeeds, the timeout passes, ctx
// ends or (if proc is not nil) the process exits.
func waitFor(ctx context.Context, timeout time.Duration, proc *netns.Process, fn func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		attempt, cancelAttempt := context.WithTimeout(ctx, 5*time.Second)
		last = fn(attempt)
		cancelAttempt()
		if last == nil {
			return nil
		}
		var exited <-chan struct{}
		if proc != nil {
			exited = proc.Done()
		}
		select {
		case <-exited:
			return fmt.Errorf("process exited (%v) while waiting; last error: %w", proc.Err(), last)
		case <-ctx.Done():
			return fmt.Errorf("%w; last error: %w", ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// writeKubeconfig writes a kubeconfig with one cluster, user and context.
func writeKubeconfig(path, server string, caPEM []byte, user string, auth *clientcmdapi.AuthInfo) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = auth
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: user}
	cfg.CurrentContext = "e2e"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("writing kubeconfig %s: %w", path, err)
	}
	return nil
}

// stopControlPlane stops kube-apiserver, then etcd.
func (cp *controlPlane) stop(ctx context.Context) error {
	var errs []error
	for _, p := range []*netns.Process{cp.apiserver, cp.etcd} {
		if p != nil {
			if err := p.Stop(ctx, 5*time.Second); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
