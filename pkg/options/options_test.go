package options

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/kube-proxy/config/v1alpha1"
)

// kubeadmConfig is the config.conf kubeadm writes into the kube-proxy
// ConfigMap: every field present, most of them empty or null.
const kubeadmConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ""
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
`

// kubeadmResolved is kubeadmConfig after Complete with
// --hostname-override=Node-1, as --write-config-to prints it.
const kubeadmResolved = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 10
  contentType: application/vnd.kubernetes.protobuf
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 5
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 15m0s
conntrack:
  maxPerCore: 32768
  min: 131072
  tcpBeLiberal: false
  tcpCloseWaitTimeout: 1h0m0s
  tcpEstablishedTimeout: 24h0m0s
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ClusterCIDR
enableProfiling: false
healthzBindAddress: 0.0.0.0:10256
hostnameOverride: node-1
iptables:
  localhostNodePorts: true
  masqueradeAll: false
  masqueradeBit: 14
  minSyncPeriod: 1s
  syncPeriod: 30s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 5s
  format: text
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: 127.0.0.1:10249
mode: iptables
nftables:
  masqueradeAll: false
  masqueradeBit: 14
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: -999
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
`

// result is the outcome of parsing a command line and completing.
type result struct {
	o    *Options
	logs string
	err  error
}

// complete runs NewOptions, AddFlags, Parse and Complete. When file is not
// empty it is written to a temporary config.conf and {{config}} in args is
// replaced by its path.
func complete(t *testing.T, file string, args ...string) result {
	t.Helper()
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(4), ktesting.BufferLogs(true)))
	if file != "" {
		path := filepath.Join(t.TempDir(), "config.conf")
		if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
			t.Fatal(err)
		}
		for i := range args {
			args[i] = strings.ReplaceAll(args[i], "{{config}}", path)
		}
	}
	o := NewOptions()
	o.Logger = logger
	fs := pflag.NewFlagSet("iptproxy", pflag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return result{o: o, err: err}
	}
	err := o.Complete(fs)
	logs := ""
	if u, ok := logger.GetSink().(ktesting.Underlier); ok {
		logs = u.GetBuffer().String()
	}
	return result{o: o, logs: logs, err: err}
}

func TestKubeadmConfig(t *testing.T) {
	r := complete(t, kubeadmConfig, "--config={{config}}", "--hostname-override=Node-1")
	if r.err != nil {
		t.Fatalf("Complete: %v", r.err)
	}
	if err := r.o.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	got, err := EncodeConfig(r.o.Config)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != kubeadmResolved {
		t.Errorf("resolved configuration differs\n--- got\n%s\n--- want\n%s", got, kubeadmResolved)
	}
	if !r.o.DefaultedMode {
		t.Errorf("DefaultedMode = false, want true for mode: \"\"")
	}
	if got, want := r.o.ClusterCIDRs(), []string{"10.244.0.0/16"}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("ClusterCIDRs() = %q, want %q", got, want)
	}
	if strings.Contains(r.logs, "lenient") {
		t.Errorf("kubeadm's file needed lenient decoding:\n%s", r.logs)
	}
}

func TestDecodeConfig(t *testing.T) {
	header := "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
	tests := []struct {
		name        string
		data        string
		wantErr     string // substring; empty for success
		wantLenient bool
		check       func(t *testing.T, c *v1alpha1.KubeProxyConfiguration)
	}{
		{
			name: "empty sections",
			data: header + "ipvs:\nwinkernel:\nnftables:\nconntrack:\n  maxPerCore: null\n  min: null\niptables:\n",
			check: func(t *testing.T, c *v1alpha1.KubeProxyConfiguration) {
				if *c.Conntrack.MaxPerCore != 32768 || *c.Conntrack.Min != 131072 {
					t.Errorf("conntrack = %d/%d, want defaults 32768/131072", *c.Conntrack.MaxPerCore, *c.Conntrack.Min)
				}
				if c.IPTables.SyncPeriod.Duration != 30*time.Second || *c.IPTables.MasqueradeBit != 14 {
					t.Errorf("iptables = %v/%d, want 30s/14", c.IPTables.SyncPeriod.Duration, *c.IPTables.MasqueradeBit)
				}
			},
		},
		{
			name: "explicit values survive defaulting",
			data: header + "mode: iptables\nconntrack:\n  maxPerCore: 0\n  tcpEstablishedTimeout: 0s\n" +
				"iptables:\n  masqueradeBit: 0\n  localhostNodePorts: false\n  syncPeriod: 10s\n",
			check: func(t *testing.T, c *v1alpha1.KubeProxyConfiguration) {
				if *c.Conntrack.MaxPerCore != 0 || c.Conntrack.TCPEstablishedTimeout.Duration != 0 {
					t.Errorf("explicit zero conntrack values were defaulted: %d, %v", *c.Conntrack.MaxPerCore, c.Conntrack.TCPEstablishedTimeout)
				}
				if *c.IPTables.MasqueradeBit != 0 || *c.IPTables.LocalhostNodePorts || c.IPTables.SyncPeriod.Duration != 10*time.Second {
					t.Errorf("iptables section = %+v", c.IPTables)
				}
			},
		},
		{
			name: "IPv6 bind address and bare IP bind addresses",
			data: header + "bindAddress: \"::\"\nhealthzBindAddress: \"fd00::1\"\n",
			check: func(t *testing.T, c *v1alpha1.KubeProxyConfiguration) {
				if c.HealthzBindAddress != "[fd00::1]:10256" || c.MetricsBindAddress != "[::1]:10249" {
					t.Errorf("bind addresses = %q, %q", c.HealthzBindAddress, c.MetricsBindAddress)
				}
			},
		},
		{
			name: "JSON",
			data: `{"apiVersion":"kubeproxy.config.k8s.io/v1alpha1","kind":"KubeProxyConfiguration","clusterCIDR":"10.0.0.0/8"}`,
			check: func(t *testing.T, c *v1alpha1.KubeProxyConfiguration) {
				if c.ClusterCIDR != "10.0.0.0/8" {
					t.Errorf("clusterCIDR = %q", c.ClusterCIDR)
				}
			},
		},
		{
			name:        "unknown field is accepted with a warning",
			data:        header + "mode: iptables\nnoSuchField: 1\n",
			wantLenient: true,
		},
		{
			name:        "duplicate field is accepted with a warning",
			data:        header + "mode: iptables\nmode: iptables\n",
			wantLenient: true,
		},
		{
			name:    "wrong apiVersion",
			data:    "apiVersion: kubeproxy.config.k8s.io/v1beta1\nkind: KubeProxyConfiguration\n",
			wantErr: "failed to decode",
		},
		{
			name:    "missing kind",
			data:    "apiVersion: kubeproxy.config.k8s.io/v1alpha1\n",
			wantErr: "failed to decode",
		},
		{
			name:    "wrong type",
			data:    header + "iptables:\n  masqueradeBit: fourteen\n",
			wantErr: "failed to decode",
		},
		{
			name:    "malformed YAML",
			data:    header + "iptables: [\n",
			wantErr: "failed to decode",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
			c, err := DecodeConfig(logger, []byte(tc.data))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("DecodeConfig: %v", err)
			}
			logs := logger.GetSink().(ktesting.Underlier).GetBuffer().String()
			if gotLenient := strings.Contains(logs, "Using lenient decoding"); gotLenient != tc.wantLenient {
				t.Errorf("lenient warning logged = %v, want %v; logs:\n%s", gotLenient, tc.wantLenient, logs)
			}
			if tc.check != nil {
				tc.check(t, c)
			}
		})
	}
}

func TestPrecedence(t *testing.T) {
	file := "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n" +
		"clientConnection:\n  kubeconfig: /from/file\n" +
		"hostnameOverride: FileHost\nclusterCIDR: 10.1.0.0/16\n" +
		"iptables:\n  syncPeriod: 20s\n" +
		"logging:\n  verbosity: 2\n  vmodule:\n  - filePattern: file\n    verbosity: 3\n"
	tests := []struct {
		name  string
		file  string
		args  []string
		check func(t *testing.T, r result)
	}{
		{
			name: "flags alone",
			args: []string{"--kubeconfig=/from/flag", "--iptables-sync-period=7s", "--iptables-min-sync-period=2s",
				"--cluster-cidr=10.0.0.0/8,fd00::/48", "--masquerade-all", "--proxy-mode=iptables", "--nodeport-addresses=primary,10.0.0.0/8"},
			check: func(t *testing.T, r result) {
				c := r.o.Config
				if c.ClientConnection.Kubeconfig != "/from/flag" || c.IPTables.SyncPeriod.Duration != 7*time.Second ||
					c.IPTables.MinSyncPeriod.Duration != 2*time.Second || c.ClusterCIDR != "10.0.0.0/8,fd00::/48" ||
					!c.IPTables.MasqueradeAll || c.Mode != ModeIPTables || r.o.DefaultedMode ||
					strings.Join(c.NodePortAddresses, ",") != "primary,10.0.0.0/8" {
					t.Errorf("flags not applied: %+v", c)
				}
			},
		},
		{
			name: "file wins over every configuration flag",
			file: file,
			args: []string{"--config={{config}}", "--kubeconfig=/from/flag", "--iptables-sync-period=7s",
				"--cluster-cidr=10.9.0.0/16", "--proxy-mode=ipvs", "--healthz-port=0"},
			check: func(t *testing.T, r result) {
				c := r.o.Config
				if c.ClientConnection.Kubeconfig != "/from/file" || c.IPTables.SyncPeriod.Duration != 20*time.Second ||
					c.ClusterCIDR != "10.1.0.0/16" || c.Mode != ModeIPTables || c.HealthzBindAddress != "0.0.0.0:10256" {
					t.Errorf("flags leaked into the file configuration: %+v", c)
				}
				for _, f := range []string{"--kubeconfig", "--iptables-sync-period", "--cluster-cidr", "--proxy-mode", "--healthz-port"} {
					if !strings.Contains(r.logs, `"`+f+`"`) {
						t.Errorf("no log line about ignored flag %s; logs:\n%s", f, r.logs)
					}
				}
			},
		},
		{
			name: "file keeps its hostname without the flag",
			file: file,
			args: []string{"--config={{config}}"},
			check: func(t *testing.T, r result) {
				if got := r.o.Config.HostnameOverride; got != "FileHost" {
					t.Errorf("hostnameOverride = %q, want FileHost (as written)", got)
				}
				if name, err := r.o.NodeName(); err != nil || name != "filehost" {
					t.Errorf("NodeName() = %q, %v; want filehost", name, err)
				}
			},
		},
		{
			name: "hostname-override, master and logging flags beat the file",
			file: file,
			args: []string{"--config={{config}}", "--hostname-override= Node-A ", "--master=https://10.0.0.1:6443", "-v=5", "--vmodule=flag=4"},
			check: func(t *testing.T, r result) {
				c := r.o.Config
				if c.HostnameOverride != "node-a" {
					t.Errorf("hostnameOverride = %q, want node-a", c.HostnameOverride)
				}
				if r.o.Master != "https://10.0.0.1:6443" {
					t.Errorf("Master = %q", r.o.Master)
				}
				if c.Logging.Verbosity != 5 {
					t.Errorf("verbosity = %d, want 5", c.Logging.Verbosity)
				}
				if len(c.Logging.VModule) != 2 || c.Logging.VModule[0].FilePattern != "flag" || c.Logging.VModule[1].FilePattern != "file" {
					t.Errorf("vmodule = %+v, want flag entry before file entry", c.Logging.VModule)
				}
			},
		},
		{
			name: "file logging kept when no logging flag is given",
			file: file,
			args: []string{"--config={{config}}"},
			check: func(t *testing.T, r result) {
				if v := r.o.Config.Logging.Verbosity; v != 2 {
					t.Errorf("verbosity = %d, want 2 from the file", v)
				}
			},
		},
		{
			name: "deprecated ports without a file",
			args: []string{"--healthz-bind-address=10.0.0.5", "--metrics-port=0"},
			check: func(t *testing.T, r result) {
				c := r.o.Config
				if c.HealthzBindAddress != "10.0.0.5:10256" || c.MetricsBindAddress != "" {
					t.Errorf("bind addresses = %q, %q; want 10.0.0.5:10256 and empty", c.HealthzBindAddress, c.MetricsBindAddress)
				}
			},
		},
		{
			name: "deprecated ports are not applied with --write-config-to",
			args: []string{"--write-config-to=/dev/null", "--healthz-bind-address=10.0.0.5", "--metrics-port=0"},
			check: func(t *testing.T, r result) {
				c := r.o.Config
				if c.HealthzBindAddress != "10.0.0.5" || c.MetricsBindAddress != "127.0.0.1:10249" {
					t.Errorf("bind addresses = %q, %q", c.HealthzBindAddress, c.MetricsBindAddress)
				}
			},
		},
		{
			name: "empty --bind-address leaves the default",
			args: []string{"--bind-address="},
			check: func(t *testing.T, r result) {
				if got := r.o.Config.BindAddress; got != "0.0.0.0" {
					t.Errorf("bindAddress = %q", got)
				}
			},
		},
		{
			name: "ipvs flags are ignored with a log line",
			args: []string{"--ipvs-scheduler=rr", "--ipvs-sync-period=5s"},
			check: func(t *testing.T, r result) {
				if r.o.Config.IPTables.SyncPeriod.Duration != 30*time.Second {
					t.Errorf("ipvs-sync-period changed the iptables sync period")
				}
				if !strings.Contains(r.logs, "--ipvs-scheduler") || !strings.Contains(r.logs, "--ipvs-sync-period") {
					t.Errorf("no log lines for ipvs flags:\n%s", r.logs)
				}
			},
		},
		{
			name: "iptables-backend is honoured with a file",
			file: file,
			args: []string{"--config={{config}}", "--iptables-backend=legacy"},
			check: func(t *testing.T, r result) {
				if r.o.IPTablesBackend != BackendLegacy {
					t.Errorf("IPTablesBackend = %q", r.o.IPTablesBackend)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := complete(t, tc.file, tc.args...)
			if r.err != nil {
				t.Fatalf("Complete: %v", r.err)
			}
			tc.check(t, r)
		})
	}
}

func TestCompleteErrors(t *testing.T) {
	tests := []struct {
		name    string
		file    string
		args    []string
		wantErr string
	}{
		{name: "blank hostname-override", args: []string{"--hostname-override=  "}, wantErr: "empty hostname-override is invalid"},
		{name: "missing file", args: []string{"--config=/nonexistent/config.conf"}, wantErr: "no such file"},
		{name: "locked feature gate", args: []string{"--feature-gates=PreferSameTrafficDistribution=false"}, wantErr: "locked"},
		{name: "bad bind address", args: []string{"--bind-address=nope"}, wantErr: "not a valid IP address"},
		{name: "bad healthz address", args: []string{"--healthz-bind-address=1.2.3.4:http"}, wantErr: "not a valid number"},
		{name: "bad backend", args: []string{"--iptables-backend=xt"}, wantErr: "is not one of"},
		{name: "unknown flag", args: []string{"--windows-service"}, wantErr: "unknown flag"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := complete(t, tc.file, tc.args...)
			if r.err == nil || !strings.Contains(r.err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want one containing %q", r.err, tc.wantErr)
			}
		})
	}
}

func TestFeatureGates(t *testing.T) {
	r := complete(t, "", "--feature-gates=SomeKubeletGate=true,AllowServiceExternalIPs=false")
	if r.err != nil {
		t.Fatalf("Complete: %v", r.err)
	}
	if err := r.o.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	fg := r.o.FeatureGate()
	if fg.Enabled(AllowServiceExternalIPs) {
		t.Errorf("AllowServiceExternalIPs enabled, want disabled")
	}
	if !fg.Enabled(PreferSameTrafficDistribution) {
		t.Errorf("PreferSameTrafficDistribution disabled, want its default (on)")
	}
	if !strings.Contains(r.logs, "SomeKubeletGate") {
		t.Errorf("unknown gate not logged:\n%s", r.logs)
	}
	if got := r.o.Config.FeatureGates; !got["SomeKubeletGate"] || got["AllowServiceExternalIPs"] {
		t.Errorf("featureGates = %v, want both entries kept", got)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		file    string
		args    []string
		wantErr []string // substrings; none for a valid configuration
	}{
		{name: "defaults", args: nil},
		{name: "explicit iptables", args: []string{"--proxy-mode=iptables"}},
		{name: "ipvs flag", args: []string{"--proxy-mode=ipvs"}, wantErr: []string{`iptproxy implements only the iptables proxy mode; got "ipvs"`}},
		{name: "nftables flag", args: []string{"--proxy-mode=nftables"}, wantErr: []string{`got "nftables"`}},
		{
			name:    "nftables file",
			file:    "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\n",
			args:    []string{"--config={{config}}"},
			wantErr: []string{`got "nftables"`},
		},
		{name: "bogus mode", args: []string{"--proxy-mode=userspace"}, wantErr: []string{`got "userspace"`}},
		{
			name: "several errors at once",
			args: []string{"--iptables-masquerade-bit=32", "--oom-score-adj=-1001", "--conntrack-min=-1",
				"--iptables-sync-period=1s", "--iptables-min-sync-period=2s", "--config-sync-period=0", "--kube-api-burst=-1"},
			wantErr: []string{"iptables.masqueradeBit", "oomScoreAdj", "conntrack.min", "iptables.syncPeriod", "configSyncPeriod", "clientConnection.burst"},
		},
		{name: "metrics port 0 is rejected as upstream", args: []string{"--metrics-port=0"}, wantErr: []string{"metricsBindAddress"}},
		{name: "healthz port 0 disables", args: []string{"--healthz-port=0"}},
		{name: "nodeport keyword and CIDRs", args: []string{"--nodeport-addresses=primary,localhost,10.0.0.0/8,fd00::/64"}},
		{name: "duplicate nodeport keyword", args: []string{"--nodeport-addresses=primary,primary"}, wantErr: []string{"nodePortAddresses[1]: Duplicate"}},
		{name: "bad nodeport CIDR", args: []string{"--nodeport-addresses=10.0.0.1"}, wantErr: []string{"nodePortAddresses[0]"}},
		{name: "dual-stack cluster CIDR", args: []string{"--cluster-cidr=10.0.0.0/8,fd00::/48"}},
		{name: "two IPv4 cluster CIDRs", args: []string{"--cluster-cidr=10.0.0.0/8,11.0.0.0/8"}, wantErr: []string{"dual-stack pair"}},
		{name: "empty cluster-cidr flag", args: []string{"--cluster-cidr="}, wantErr: []string{"clusterCIDR[0]"}},
		{name: "cluster CIDR unused in other modes", args: []string{"--cluster-cidr=bogus", "--detect-local-mode=NodeCIDR"}},
		{name: "bridge without name", args: []string{"--detect-local-mode=BridgeInterface"}, wantErr: []string{"detectLocal.bridgeInterface"}},
		{name: "prefix without value", args: []string{"--detect-local-mode=InterfaceNamePrefix"}, wantErr: []string{"detectLocal.interfaceNamePrefix"}},
		{name: "unknown detect-local mode", args: []string{"--detect-local-mode=Magic"}, wantErr: []string{"detectLocalMode: Unsupported value"}},
		{name: "hidden metrics previous minor", args: []string{"--show-hidden-metrics-for-version=1.36"}},
		{name: "hidden metrics other version", args: []string{"--show-hidden-metrics-for-version=1.35"}, wantErr: []string{"'1.36'"}},
		{name: "unknown logging format", args: []string{"--logging-format=xml"}, wantErr: []string{"logging.format"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := complete(t, tc.file, tc.args...)
			if r.err != nil {
				if len(tc.wantErr) > 0 && strings.Contains(r.err.Error(), tc.wantErr[0]) {
					return
				}
				t.Fatalf("Complete: %v", r.err)
			}
			err := r.o.Validate()
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate passed, want errors %q", tc.wantErr)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not mention %q:\n%v", want, err)
				}
			}
		})
	}
}

func TestUnsupportedModeError(t *testing.T) {
	r := complete(t, "", "--proxy-mode=ipvs", "--iptables-masquerade-bit=40")
	if r.err != nil {
		t.Fatal(r.err)
	}
	err := r.o.Validate()
	var modeErr *UnsupportedModeError
	if !errors.As(err, &modeErr) || modeErr.Mode != ModeIPVS {
		t.Fatalf("errors.As(%v, *UnsupportedModeError) failed", err)
	}
	if lines := strings.Split(err.Error(), "\n"); len(lines) != 2 {
		t.Errorf("want one line per problem, got %q", lines)
	}
}

func TestWriteConfigFileRoundTrip(t *testing.T) {
	out := filepath.Join(t.TempDir(), "written.yaml")
	r := complete(t, "", "--write-config-to="+out, "--cluster-cidr=10.0.0.0/8", "--nodeport-addresses=primary")
	if r.err != nil {
		t.Fatal(r.err)
	}
	if err := r.o.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := r.o.WriteConfigFile(); err != nil {
		t.Fatal(err)
	}
	written, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	// The written file, used as --config, resolves to itself.
	again := complete(t, string(written), "--config={{config}}")
	if again.err != nil {
		t.Fatal(again.err)
	}
	reencoded, err := EncodeConfig(again.o.Config)
	if err != nil {
		t.Fatal(err)
	}
	if string(reencoded) != string(written) {
		t.Errorf("round trip differs\n--- written\n%s\n--- reloaded\n%s", written, reencoded)
	}
	if strings.Contains(again.logs, "lenient") {
		t.Errorf("written file needed lenient decoding:\n%s", again.logs)
	}
}

func TestFlagDefaults(t *testing.T) {
	o := NewOptions()
	fs := pflag.NewFlagSet("iptproxy", pflag.ContinueOnError)
	o.AddFlags(fs)
	tests := []struct {
		name, def  string
		deprecated bool
	}{
		{name: "config", def: ""},
		{name: "bind-address", def: "0.0.0.0"},
		{name: "healthz-bind-address", def: "0.0.0.0:10256"},
		{name: "metrics-bind-address", def: "127.0.0.1:10249"},
		{name: "iptables-masquerade-bit", def: "14"},
		{name: "iptables-sync-period", def: "30s"},
		{name: "iptables-min-sync-period", def: "1s"},
		{name: "iptables-localhost-nodeports", def: "true"},
		{name: "ipvs-min-sync-period", def: "1s"},
		{name: "conntrack-max-per-core", def: "32768"},
		{name: "conntrack-min", def: "131072"},
		{name: "conntrack-tcp-timeout-established", def: "24h0m0s"},
		{name: "conntrack-tcp-timeout-close-wait", def: "1h0m0s"},
		{name: "oom-score-adj", def: "-999"},
		{name: "kube-api-qps", def: "5"},
		{name: "kube-api-burst", def: "10"},
		{name: "kube-api-content-type", def: "application/vnd.kubernetes.protobuf"},
		{name: "config-sync-period", def: "15m0s"},
		{name: "proxy-mode", def: ""},
		{name: "detect-local-mode", def: ""},
		{name: "cluster-cidr", def: ""},
		{name: "nodeport-addresses", def: "[]"},
		{name: "feature-gates", def: ""},
		{name: "healthz-port", def: "10256", deprecated: true},
		{name: "metrics-port", def: "10249", deprecated: true},
		{name: "logging-format", def: "text"},
		{name: "v", def: "0"},
		{name: "iptables-backend", def: "auto"},
	}
	for _, tc := range tests {
		f := fs.Lookup(tc.name)
		if f == nil {
			t.Errorf("flag --%s not registered", tc.name)
			continue
		}
		if f.DefValue != tc.def {
			t.Errorf("--%s default = %q, want %q", tc.name, f.DefValue, tc.def)
		}
		if (f.Deprecated != "") != tc.deprecated {
			t.Errorf("--%s deprecated = %q, want %v", tc.name, f.Deprecated, tc.deprecated)
		}
	}
}

func TestRESTConfig(t *testing.T) {
	kubeconfig := `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://from-kubeconfig:6443
    insecure-skip-tls-verify: true
contexts:
- name: c
  context:
    cluster: c
    user: u
current-context: c
users:
- name: u
  user:
    token: secret
`
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		args       []string
		wantServer string
	}{
		{name: "kubeconfig", args: []string{"--kubeconfig=" + path}, wantServer: "https://from-kubeconfig:6443"},
		{name: "master overrides", args: []string{"--kubeconfig=" + path, "--master=https://override:443"}, wantServer: "https://override:443"},
		{name: "master alone", args: []string{"--master=http://127.0.0.1:8080"}, wantServer: "http://127.0.0.1:8080"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := complete(t, "", append(tc.args, "--kube-api-qps=50", "--kube-api-burst=100", "--kube-api-content-type=application/json")...)
			if r.err != nil {
				t.Fatal(r.err)
			}
			cfg, err := r.o.RESTConfig()
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Host != tc.wantServer || cfg.QPS != 50 || cfg.Burst != 100 || cfg.ContentType != "application/json" {
				t.Errorf("rest.Config host=%q qps=%v burst=%d contentType=%q", cfg.Host, cfg.QPS, cfg.Burst, cfg.ContentType)
			}
		})
	}
}
