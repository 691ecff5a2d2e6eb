package options

import (
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"
	"sigs.k8s.io/yaml"
)

// LoadConfigFile reads and decodes a KubeProxyConfiguration file and applies
// the defaults; see DecodeConfig.
func LoadConfigFile(logger klog.Logger, path string) (*v1alpha1.KubeProxyConfiguration, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading kube-proxy configuration: %w", err)
	}
	cfg, err := DecodeConfig(logger, data)
	if err != nil {
		return nil, fmt.Errorf("loading kube-proxy configuration %s: %w", path, err)
	}
	return cfg, nil
}

// DecodeConfig decodes a KubeProxyConfiguration (YAML or JSON, apiVersion
// kubeproxy.config.k8s.io/v1alpha1) and applies SetDefaults.
//
// As in kube-proxy (cmd/kube-proxy/app options.go loadConfig), decoding is
// strict first; when that fails only because of strictness (unknown or
// duplicate fields), the data is decoded again leniently and the strict error
// is logged as a warning. Any other problem (malformed YAML, missing or wrong
// apiVersion/kind, wrongly typed values) is an error.
func DecodeConfig(logger klog.Logger, data []byte) (*v1alpha1.KubeProxyConfiguration, error) {
	cfg, err := decodeConfig(data, serializer.EnableStrict)
	if err != nil {
		if !runtime.IsStrictDecodingError(err) {
			return nil, fmt.Errorf("failed to decode: %w", err)
		}
		lenient, lenientErr := decodeConfig(data, serializer.DisableStrict)
		if lenientErr != nil {
			return nil, fmt.Errorf("failed lenient decoding: %w", err)
		}
		logger.Info("Using lenient decoding as strict decoding failed", "err", err)
		cfg = lenient
	}
	SetDefaults(cfg)
	return cfg, nil
}

// decodeConfig decodes data with a scheme that knows only the v1alpha1
// KubeProxyConfiguration.
func decodeConfig(data []byte, strictness serializer.CodecFactoryOptionsMutator) (*v1alpha1.KubeProxyConfiguration, error) {
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("registering the kube-proxy configuration API: %w", err)
	}
	codecs := serializer.NewCodecFactory(scheme, strictness)
	obj, gvk, err := codecs.UniversalDeserializer().Decode(data, nil, nil)
	if err != nil {
		return nil, err
	}
	cfg, ok := obj.(*v1alpha1.KubeProxyConfiguration)
	if !ok {
		return nil, fmt.Errorf("got unexpected config type: %v", gvk)
	}
	return cfg, nil
}

// EncodeConfig renders cfg as kube-proxy's --write-config-to does: YAML with
// apiVersion and kind, keys sorted.
func EncodeConfig(cfg *v1alpha1.KubeProxyConfiguration) ([]byte, error) {
	out := cfg.DeepCopy()
	out.APIVersion = v1alpha1.SchemeGroupVersion.String()
	out.Kind = "KubeProxyConfiguration"
	data, err := yaml.Marshal(out)
	if err != nil {
		return nil, fmt.Errorf("encoding kube-proxy configuration: %w", err)
	}
	return data, nil
}

// WriteConfigFile writes the resolved configuration to o.WriteConfigTo
// (--write-config-to). Call it after Complete and Validate; kube-proxy then
// exits without starting, and so should the caller.
func (o *Options) WriteConfigFile() (err error) {
	data, err := EncodeConfig(o.Config)
	if err != nil {
		return err
	}
	f, err := os.Create(o.WriteConfigTo)
	if err != nil {
		return fmt.Errorf("writing configuration: %w", err)
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("writing configuration: %w", cerr)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("writing configuration: %w", err)
	}
	o.Logger.Info("Wrote configuration", "file", o.WriteConfigTo)
	return nil
}
