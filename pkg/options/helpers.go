package options

import (
	"fmt"
	"os"
	"strings"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/iptproxy/iptproxy/pkg/localdetect"
)

// RESTConfig returns the API client configuration kube-proxy would use
// (cmd/kube-proxy/app server.go createClient): in-cluster configuration when
// neither clientConnection.kubeconfig nor --master is set; otherwise the
// kubeconfig file (only that file: $KUBECONFIG and ~/.kube/config are not
// consulted) with the server overridden by --master when given. QPS, burst,
// contentType and acceptContentTypes come from clientConnection.
func (o *Options) RESTConfig() (*rest.Config, error) {
	cc := o.Config.ClientConnection
	var (
		cfg *rest.Config
		err error
	)
	if cc.Kubeconfig == "" && o.Master == "" {
		o.Logger.Info("Neither kubeconfig file nor master URL was specified, falling back to in-cluster config")
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: cc.Kubeconfig},
			&clientcmd.ConfigOverrides{ClusterInfo: clientcmdapi.Cluster{Server: o.Master}},
		).ClientConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("building API client configuration: %w", err)
	}
	cfg.AcceptContentTypes = cc.AcceptContentTypes
	cfg.ContentType = cc.ContentType
	cfg.QPS = cc.QPS
	cfg.Burst = int(cc.Burst)
	return cfg, nil
}

// NodeName returns the name of the Node iptproxy runs on: hostnameOverride,
// or the machine's hostname when that is empty, trimmed and lower-cased (as
// k8s.io/component-helpers/node/util.GetHostname).
func (o *Options) NodeName() (string, error) {
	name := o.Config.HostnameOverride
	if name == "" {
		h, err := os.Hostname()
		if err != nil {
			return "", fmt.Errorf("couldn't determine hostname: %w", err)
		}
		name = h
	}
	name = strings.TrimSpace(name)
	if name == "" {
		return "", fmt.Errorf("empty hostname is invalid")
	}
	return strings.ToLower(name), nil
}

// LocalDetectConfig returns the settings that select the local-traffic
// detector; pass them to localdetect.Resolve.
func (o *Options) LocalDetectConfig() localdetect.Config {
	return localdetect.Config{
		Mode:                o.Config.DetectLocalMode,
		ClusterCIDRs:        o.ClusterCIDRs(),
		BridgeInterface:     o.Config.DetectLocal.BridgeInterface,
		InterfaceNamePrefix: o.Config.DetectLocal.InterfaceNamePrefix,
	}
}

// NodePortAddresses parses Config.NodePortAddresses (validated by
// Validate).
func (o *Options) NodePortAddresses() (NodePortAddresses, error) {
	return ParseNodePortAddresses(o.Config.NodePortAddresses)
}
