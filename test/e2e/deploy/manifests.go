// Package deploy holds the end-to-end tests of iptproxy's install paths:
// the manifests under deploy/ applied to a real kube-apiserver, iptproxy run
// with nothing but the RBAC those manifests grant, and iptproxy run as
// kubeadm's kube-proxy DaemonSet runs it.
package deploy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// kustomizeVersionLine finds the pinned kustomize version in
// hack/verify-manifests.sh, the one place it is written.
var kustomizeVersionLine = regexp.MustCompile(`(?m)^kustomize_version=(v[0-9.]+)$`)

// kustomize returns the pinned kustomize binary in toolsDir, building it
// from the Go module proxy as hack/verify-manifests.sh does when it is not
// there yet.
func kustomize(ctx context.Context, root, toolsDir string) (string, error) {
	script, err := os.ReadFile(filepath.Join(root, "hack", "verify-manifests.sh"))
	if err != nil {
		return "", fmt.Errorf("reading the pinned kustomize version: %w", err)
	}
	m := kustomizeVersionLine.FindSubmatch(script)
	if m == nil {
		return "", errors.New("no kustomize_version= line in hack/verify-manifests.sh")
	}
	version := string(m[1])
	bin := filepath.Join(toolsDir, "kustomize-"+version)
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	gobin, err := os.MkdirTemp("", "kustomize-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(gobin) //nolint:errcheck // temporary
	cmd := exec.CommandContext(ctx, "go", "install", "sigs.k8s.io/kustomize/kustomize/v5@"+version)
	cmd.Env = append(os.Environ(), "GOBIN="+gobin)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building kustomize %s: %w\n%s", version, err, out)
	}
	if err := os.MkdirAll(toolsDir, 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(filepath.Join(gobin, "kustomize"), bin); err != nil {
		return "", fmt.Errorf("installing kustomize: %w", err)
	}
	return bin, nil
}

// build runs "kustomize build dir" and returns the objects it renders.
func build(ctx context.Context, kustomizeBin, dir string) ([]*unstructured.Unstructured, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, kustomizeBin, "build", dir)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w: %s", dir, err, strings.TrimSpace(stderr.String()))
	}
	return decodeObjects(stdout.Bytes())
}

// decodeObjects splits a multi-document YAML stream into objects.
func decodeObjects(data []byte) ([]*unstructured.Unstructured, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []*unstructured.Unstructured
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading YAML: %w", err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := utilyaml.Unmarshal(doc, &u.Object); err != nil {
			return nil, fmt.Errorf("decoding %q: %w", firstLine(doc), err)
		}
		if len(u.Object) == 0 {
			continue
		}
		out = append(out, u)
	}
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return s
}

// describe names an object as kubectl does: Kind namespace/name.
func describe(u *unstructured.Unstructured) string {
	if ns := u.GetNamespace(); ns != "" {
		return u.GetKind() + " " + ns + "/" + u.GetName()
	}
	return u.GetKind() + " " + u.GetName()
}
