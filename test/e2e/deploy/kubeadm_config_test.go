package deploy

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	kpv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"

	fw "github.com/iptproxy/iptproxy/test/e2e/framework"
)

// TestKubeadmConfigIsKubeadms checks that config.conf in
// deploy/kubeadm/configmap.yaml is what kubeadm v1.37 writes for
// --pod-network-cidr 10.244.0.0/16: kubeadm's componentconfigs
// kubeProxyConfig.Default sets bindAddress, clusterCIDR,
// clientConnection.kubeconfig and mode on an empty v1alpha1
// KubeProxyConfiguration, and Marshal encodes it with the YAML serializer of
// kube-proxy's scheme (kubeadmutil.MarshalToYamlForCodecs), without
// defaulting. So a field k8s.io/kube-proxy adds shows up here when the
// module is bumped, and the ConfigMap must be regenerated
// (deploy/kubeadm/README.md).
func TestKubeadmConfigIsKubeadms(t *testing.T) {
	env, err := fw.LoadEnv()
	if err != nil {
		t.Fatalf("%v", err)
	}
	data, err := os.ReadFile(filepath.Join(env.Root, "deploy", "kubeadm", "configmap.yaml"))
	if err != nil {
		t.Fatalf("%v", err)
	}
	objs, err := decodeObjects(data)
	if err != nil || len(objs) != 1 {
		t.Fatalf("deploy/kubeadm/configmap.yaml: %d objects, %v", len(objs), err)
	}
	// "|-" drops the final newline kubeadm's encoder writes.
	got := objs[0].Object["data"].(map[string]any)["config.conf"].(string) + "\n"

	cfg := &kpv1alpha1.KubeProxyConfiguration{
		BindAddress:  "0.0.0.0",
		ClusterCIDR:  "10.244.0.0/16",
		Mode:         "iptables",
		FeatureGates: map[string]bool{},
	}
	cfg.ClientConnection.Kubeconfig = "/var/lib/kube-proxy/kubeconfig.conf"
	scheme := runtime.NewScheme()
	if err := kpv1alpha1.AddToScheme(scheme); err != nil {
		t.Fatalf("%v", err)
	}
	codecs := serializer.NewCodecFactory(scheme)
	info, ok := runtime.SerializerInfoForMediaType(codecs.SupportedMediaTypes(), runtime.ContentTypeYAML)
	if !ok {
		t.Fatalf("no YAML serializer")
	}
	want, err := runtime.Encode(codecs.EncoderForVersion(info.Serializer, kpv1alpha1.SchemeGroupVersion), cfg)
	if err != nil {
		t.Fatalf("%v", err)
	}
	if !bytes.Equal([]byte(got), want) {
		t.Errorf("deploy/kubeadm/configmap.yaml config.conf is not kubeadm's:\n--- ours\n%s\n--- kubeadm\n%s", got, want)
	}
}
