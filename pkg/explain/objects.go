package explain

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
)

// LoadFiles reads Services, EndpointSlices and Nodes from YAML or JSON
// files (several documents per file, and List objects, are fine). Other
// kinds are skipped. The Node named nodeName, if present, becomes
// Objects.Node.
func LoadFiles(paths []string, nodeName string) (*Objects, error) {
	objs := &Objects{}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("reading objects: %w", err)
		}
		if err := objs.decode(data, nodeName); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	return objs, nil
}

// decode adds the objects of one YAML or JSON stream.
func (objs *Objects) decode(data []byte, nodeName string) error {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	deser := scheme.Codecs.UniversalDeserializer()
	for i := 1; ; i++ {
		var raw runtime.RawExtension
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("document %d: %w", i, err)
		}
		raw.Raw = bytes.TrimSpace(raw.Raw)
		if len(raw.Raw) == 0 || bytes.Equal(raw.Raw, []byte("null")) {
			continue
		}
		if err := objs.add(deser, raw.Raw, nodeName); err != nil {
			return fmt.Errorf("document %d: %w", i, err)
		}
	}
}

func (objs *Objects) add(deser runtime.Decoder, raw []byte, nodeName string) error {
	obj, gvk, err := deser.Decode(raw, nil, nil)
	if err != nil {
		if runtime.IsNotRegisteredError(err) {
			return nil // some other kind: not ours
		}
		return err
	}
	switch o := obj.(type) {
	case *v1.Service:
		objs.Services = append(objs.Services, o)
	case *discovery.EndpointSlice:
		objs.Slices = append(objs.Slices, o)
	case *v1.Node:
		if o.Name == nodeName {
			objs.Node = o
		}
	case *v1.ServiceList:
		for i := range o.Items {
			objs.Services = append(objs.Services, &o.Items[i])
		}
	case *discovery.EndpointSliceList:
		for i := range o.Items {
			objs.Slices = append(objs.Slices, &o.Items[i])
		}
	case *v1.NodeList:
		for i := range o.Items {
			if o.Items[i].Name == nodeName {
				objs.Node = &o.Items[i]
			}
		}
	case *v1.List:
		for _, item := range o.Items {
			if err := objs.add(deser, item.Raw, nodeName); err != nil {
				return err
			}
		}
	default:
		_ = gvk // another kind (Deployment, Pod, ...): not ours
	}
	return nil
}

// LoadAPI reads every Service and EndpointSlice, and the Node nodeName,
// from the API server. It only reads.
func LoadAPI(ctx context.Context, client kubernetes.Interface, nodeName string) (*Objects, error) {
	objs := &Objects{}
	svcs, err := client.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing Services: %w", err)
	}
	for i := range svcs.Items {
		objs.Services = append(objs.Services, &svcs.Items[i])
	}
	slices, err := client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing EndpointSlices: %w", err)
	}
	for i := range slices.Items {
		objs.Slices = append(objs.Slices, &slices.Items[i])
	}
	node, err := client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return nil, fmt.Errorf("reading Node %q: %w", nodeName, err)
	default:
		objs.Node = node
	}
	return objs, nil
}
