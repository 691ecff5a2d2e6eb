package deploy

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"k8s.io/utils/ptr"

	fw "github.com/iptproxy/iptproxy/test/e2e/framework"
)

const (
	echoPort  = 8080
	converge  = 30 * time.Second
	testNS    = "deploy-e2e"
	exitAfter = 60 * time.Second
)

// cluster is the shared fixture: one node running one daemon at a time,
// two backend pods and a client pod on it.
type cluster struct {
	c        *fw.Cluster
	env      fw.Env
	node     *fw.Node
	client   *fw.Pod
	backends []fw.Backend
	names    []string
	// rendered are the objects of each kustomization, by directory under
	// deploy/.
	rendered map[string][]*unstructured.Unstructured
}

// TestDeploy applies deploy/ (the kustomize base), deploy/overlays/kind and
// deploy/kubeadm to a real kube-apiserver, then runs iptproxy with only the
// RBAC those manifests grant, and as kubeadm's kube-proxy DaemonSet runs
// it, with real traffic through a ClusterIP Service.
func TestDeploy(t *testing.T) {
	env := fw.RequireCluster(t)
	fw.RequireIPTProxy(t)
	kbin, err := kustomize(t.Context(), env.Root, env.ToolsDir)
	if err != nil {
		t.Fatalf("%v", err)
	}
	rendered := map[string][]*unstructured.Unstructured{}
	for _, dir := range []string{".", "overlays/kind", "kubeadm"} {
		objs, err := build(t.Context(), kbin, filepath.Join(env.Root, "deploy", dir))
		if err != nil {
			t.Fatalf("%v", err)
		}
		rendered[dir] = objs
	}

	c := fw.NewCluster(t, fw.ClusterOptions{Nodes: 1})
	w := &cluster{c: c, env: env, node: c.Nodes()[0], rendered: rendered}
	for _, name := range []string{"pod-a", "pod-b"} {
		p := w.node.AddPod(t, name)
		p.StartEcho(t, fw.EchoOn(echoPort))
		w.backends = append(w.backends, p.Backend())
		w.names = append(w.names, name)
	}
	w.client = w.node.AddPod(t, "client")

	if !t.Run("manifests", w.testManifests) {
		t.Fatalf("the manifests were not accepted; the install tests need them")
	}
	t.Run("rbac", w.testRBAC)
	t.Run("daemonset", w.testDaemonSet)
	t.Run("kind", w.testKindOverlay)
	t.Run("kubeadm", w.testKubeadm)
	t.Run("swap", w.testSwap)
}

// testManifests applies every rendered object with server-side apply and
// strict field validation: deploy/ and deploy/kubeadm for real, the kind
// overlay (same object names as the base) as a server-side dry run.
func (w *cluster) testManifests(t *testing.T) {
	cfg := w.c.RESTConfig()
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatalf("%v", err)
	}
	groups, err := restmapper.GetAPIGroupResources(disc)
	if err != nil {
		t.Fatalf("discovery: %v", err)
	}
	mapper := restmapper.NewDiscoveryRESTMapper(groups)
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("%v", err)
	}
	tests := []struct {
		dir    string
		dryRun bool
		// wantKinds must all be among the objects.
		wantKinds []string
	}{
		{dir: ".", wantKinds: []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"}},
		{dir: "overlays/kind", dryRun: true, wantKinds: []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"}},
		{dir: "kubeadm", wantKinds: []string{"ServiceAccount", "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap", "DaemonSet"}},
	}
	for _, tc := range tests {
		t.Run(strings.ReplaceAll(tc.dir, "/", "-"), func(t *testing.T) {
			objs := w.rendered[tc.dir]
			var kinds []string
			for _, obj := range objs {
				kinds = append(kinds, obj.GetKind())
				got, err := apply(t.Context(), mapper, dyn, obj, tc.dryRun)
				if err != nil {
					t.Errorf("%s from deploy/%s: %v", describe(obj), tc.dir, err)
					continue
				}
				if got.GetUID() == "" && !tc.dryRun {
					t.Errorf("%s: the server returned no UID", describe(obj))
				}
				if obj.GetKind() == "DaemonSet" {
					checkDaemonSet(t, got)
				}
				t.Logf("accepted%s: %s", map[bool]string{true: " (dry run)"}[tc.dryRun], describe(obj))
			}
			for _, k := range tc.wantKinds {
				if !slices.Contains(kinds, k) {
					t.Errorf("deploy/%s renders no %s (kinds: %v)", tc.dir, k, kinds)
				}
			}
		})
	}
}

// apply server-side applies obj with strict field validation, so that an
// unknown or duplicate field is an error rather than a warning.
func apply(ctx context.Context, mapper meta.RESTMapper, dyn dynamic.Interface, obj *unstructured.Unstructured, dryRun bool) (*unstructured.Unstructured, error) {
	gvk := obj.GroupVersionKind()
	mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("no API for %s: %w", gvk, err)
	}
	var ri dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		if obj.GetNamespace() == "" {
			return nil, fmt.Errorf("namespaced object without a namespace")
		}
		ri = dyn.Resource(mapping.Resource).Namespace(obj.GetNamespace())
	}
	data, err := obj.MarshalJSON()
	if err != nil {
		return nil, err
	}
	opts := metav1.PatchOptions{FieldManager: "iptproxy-e2e", Force: ptr.To(true), FieldValidation: metav1.FieldValidationStrict}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	return ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, opts)
}

// checkDaemonSet checks what the server stored for a proxy DaemonSet: the
// settings a node proxy cannot run without.
func checkDaemonSet(t *testing.T, u *unstructured.Unstructured) {
	t.Helper()
	var ds appsv1.DaemonSet
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &ds); err != nil {
		t.Fatalf("%s: %v", describe(u), err)
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Errorf("%s: not hostNetwork", describe(u))
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("%s: priorityClassName %q", describe(u), spec.PriorityClassName)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%s: %d containers", describe(u), len(spec.Containers))
	}
	sc := spec.Containers[0].SecurityContext
	if sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Errorf("%s: the stored container is not privileged", describe(u))
	}
	if !slices.ContainsFunc(spec.Tolerations, func(tol v1.Toleration) bool {
		return tol.Operator == v1.TolerationOpExists && tol.Key == ""
	}) {
		t.Errorf("%s: does not tolerate every taint", describe(u))
	}
}

// renderedObject returns the object of kind and name rendered from
// deploy/<dir>.
func (w *cluster) renderedObject(t *testing.T, dir, kind, name string, into any) {
	t.Helper()
	for _, u := range w.rendered[dir] {
		if u.GetKind() == kind && u.GetName() == name {
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, into); err != nil {
				t.Fatalf("%s: %v", describe(u), err)
			}
			return
		}
	}
	t.Fatalf("deploy/%s renders no %s %s", dir, kind, name)
}

// serves creates a ClusterIP Service for the two backend pods and waits
// until the client pod reaches both through it.
func (w *cluster) serves(t *testing.T, name string) {
	t.Helper()
	addr := fw.ServiceAddr(w.service(t, name), v1.IPv4Protocol, 80)
	seen := w.client.WaitForBackends(t, v1.ProtocolTCP, addr, w.names, converge)
	t.Logf("Service %s (%s) reached from pod %s: %v", name, addr, w.client.Name(), seen)
}

// testRBAC runs iptproxy with the token of a ServiceAccount and nothing
// else: deploy/'s own ServiceAccount serves traffic; one without the
// binding, or bound to a role short of EndpointSlices, makes iptproxy exit
// with one line naming what is missing.
func (w *cluster) testRBAC(t *testing.T) {
	var deployRole rbacv1.ClusterRole
	w.renderedObject(t, ".", "ClusterRole", "iptproxy", &deployRole)
	noSlices := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "iptproxy-e2e-no-endpointslices"}}
	for _, r := range deployRole.Rules {
		if !slices.Contains(r.Resources, "endpointslices") {
			noSlices.Rules = append(noSlices.Rules, r)
		}
	}
	if len(noSlices.Rules) != len(deployRole.Rules)-1 {
		t.Fatalf("the iptproxy ClusterRole has no single EndpointSlice rule: %+v", deployRole.Rules)
	}
	if _, err := w.c.Client().RbacV1().ClusterRoles().Create(t.Context(), noSlices, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating ClusterRole %s: %v", noSlices.Name, err)
	}

	tests := []struct {
		name string
		// account is the ServiceAccount in kube-system; roles are extra
		// ClusterRoles bound to it by the test (deploy/ binds iptproxy).
		account string
		roles   []string
		// wantMissing, when set, are the permissions the exit message
		// must name; otherwise iptproxy must serve.
		wantMissing []string
	}{
		{
			name:    "deploy ServiceAccount",
			account: "iptproxy",
		},
		{
			name:    "no binding",
			account: "iptproxy-e2e-unbound",
			wantMissing: []string{"list services", "watch services", "list endpointslices.discovery.k8s.io",
				"watch endpointslices.discovery.k8s.io", "get nodes/" + w.node.Name(), "list nodes", "watch nodes"},
		},
		{
			name:        "role without EndpointSlices",
			account:     "iptproxy-e2e-no-slices",
			roles:       []string{noSlices.Name},
			wantMissing: []string{"list endpointslices.discovery.k8s.io", "watch endpointslices.discovery.k8s.io"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sa := w.c.CreateServiceAccount(t, metav1.NamespaceSystem, tc.account, tc.roles...)
			d := w.node.StartDaemon(t, fw.DaemonOptions{Binary: fw.RequireIPTProxy(t), Kubeconfig: sa.Kubeconfig})
			defer d.Stop(t)
			if tc.wantMissing == nil {
				d.WaitHealthy(t, converge)
				w.serves(t, "rbac")
				if strings.Contains(d.Log(), "forbidden") {
					t.Errorf("iptproxy logged a forbidden request:\n%s", d.Log())
				}
				return
			}
			err := d.WaitExit(t, exitAfter)
			if err == nil {
				t.Fatalf("iptproxy exited with status 0; want non-zero")
			}
			log := d.Log()
			var lines []string
			for l := range strings.Lines(log) {
				if strings.Contains(l, "missing API permissions") {
					lines = append(lines, l)
				}
			}
			if len(lines) != 1 {
				t.Fatalf("want exactly one line naming the missing permissions, got %d; log:\n%s", len(lines), log)
			}
			line := lines[0]
			t.Logf("exit %v with: %s", err, strings.TrimSpace(line))
			user := "system:serviceaccount:kube-system:" + tc.account
			if !strings.Contains(line, user) {
				t.Errorf("the line does not name the user %s", user)
			}
			for _, m := range tc.wantMissing {
				if !strings.Contains(line, m) {
					t.Errorf("the line does not name %q", m)
				}
			}
			if n := strings.Count(line, ", ") + 1; n != len(tc.wantMissing) {
				t.Errorf("the line names %d permissions, want %d (%v)", n, len(tc.wantMissing), tc.wantMissing)
			}
		})
	}
}

// testKubeadm runs iptproxy exactly as kubeadm's kube-proxy DaemonSet (as
// the API server stored it from deploy/kubeadm) runs its container (see
// podRun): /var/lib/kube-proxy holds the ConfigMap's config.conf and
// kubeconfig.conf, the token is kube-system/kube-proxy's (bound only by
// kubeadm's ClusterRoleBinding kubeadm:node-proxier), and the command is
// /usr/local/bin/kube-proxy --config=/var/lib/kube-proxy/config.conf
// --hostname-override=$(NODE_NAME). The only edits are the two
// cluster-specific values deploy/kubeadm/README.md names: the API server URL
// and the pod CIDR.
func (w *cluster) testKubeadm(t *testing.T) {
	ds, cm := w.stored(t, "kube-proxy", "kube-proxy")
	config := replaceOnce(t, cm.Data["config.conf"], "clusterCIDR: 10.244.0.0/16", "clusterCIDR: "+w.clusterCIDRs())
	kubeconfig := replaceOnce(t, cm.Data["kubeconfig.conf"], "server: https://192.168.0.10:6443", "server: "+w.c.APIServerURL())
	for _, want := range []string{"kubeconfig: /var/lib/kube-proxy/kubeconfig.conf", "mode: iptables"} {
		if !strings.Contains(config, want) {
			t.Fatalf("kubeadm's config.conf lacks %q:\n%s", want, config)
		}
	}
	sa := w.c.CreateServiceAccount(t, metav1.NamespaceSystem, ds.Spec.Template.Spec.ServiceAccountName)
	run := newPodRun(t, w.c, w.node.Name(), ds.Spec.Template.Spec,
		map[string]map[string]string{cm.Name: {"config.conf": config, "kubeconfig.conf": kubeconfig}}, sa)
	want := []string{"/usr/local/bin/kube-proxy", "--config=/var/lib/kube-proxy/config.conf", "--hostname-override=" + w.node.Name()}
	if !slices.Equal(run.Command, want) {
		t.Fatalf("kubeadm's container runs %q, want %q", run.Command, want)
	}
	w.runs(t, run, "kubeadm", ds.Spec.Template.Spec.Containers[0])
}

// testDaemonSet runs iptproxy as deploy/'s DaemonSet (as the API server
// stored it) runs its container: config.conf from the iptproxy ConfigMap
// with clusterCIDR set as docs/install.md tells an overlay to, in-cluster
// API configuration from the iptproxy ServiceAccount's token and
// KUBERNETES_SERVICE_HOST/PORT, and the DaemonSet's own command. Its
// liveness and readiness probes must answer.
func (w *cluster) testDaemonSet(t *testing.T) {
	ds, cm := w.stored(t, "iptproxy", "iptproxy")
	config := replaceOnce(t, cm.Data["config.conf"], `clusterCIDR: ""`, "clusterCIDR: "+w.clusterCIDRs())
	if !strings.Contains(config, `kubeconfig: ""`) {
		t.Fatalf("deploy/base/config.conf does not use the in-cluster configuration:\n%s", config)
	}
	sa := w.c.CreateServiceAccount(t, metav1.NamespaceSystem, ds.Spec.Template.Spec.ServiceAccountName)
	run := newPodRun(t, w.c, w.node.Name(), ds.Spec.Template.Spec, map[string]map[string]string{cm.Name: {"config.conf": config}}, sa)
	w.runs(t, run, "daemonset", ds.Spec.Template.Spec.Containers[0])
}

// testKindOverlay runs the container of deploy/overlays/kind's DaemonSet
// (as rendered: the API server only dry-ran it) the same way. Two values
// stand in for kind's: the control-plane name in KUBERNETES_SERVICE_HOST
// becomes the API server's address (kind's Docker DNS resolves the name),
// and kind's pod subnet this cluster's.
func (w *cluster) testKindOverlay(t *testing.T) {
	var ds appsv1.DaemonSet
	var cm v1.ConfigMap
	w.renderedObject(t, "overlays/kind", "DaemonSet", "iptproxy", &ds)
	w.renderedObject(t, "overlays/kind", "ConfigMap", "iptproxy", &cm)
	config := replaceOnce(t, cm.Data["config.conf"], "clusterCIDR: 10.244.0.0/16", "clusterCIDR: "+w.clusterCIDRs())
	u, err := url.Parse(w.c.APIServerURL())
	if err != nil {
		t.Fatalf("%v", err)
	}
	env := ds.Spec.Template.Spec.Containers[0].Env
	i := slices.IndexFunc(env, func(e v1.EnvVar) bool { return e.Name == "KUBERNETES_SERVICE_HOST" })
	if i < 0 || env[i].Value != "iptproxy-control-plane" {
		t.Fatalf("the kind overlay does not point KUBERNETES_SERVICE_HOST at iptproxy-control-plane: %+v", env)
	}
	env[i].Value = u.Hostname()
	sa := w.c.CreateServiceAccount(t, metav1.NamespaceSystem, ds.Spec.Template.Spec.ServiceAccountName)
	run := newPodRun(t, w.c, w.node.Name(), ds.Spec.Template.Spec, map[string]map[string]string{cm.Name: {"config.conf": config}}, sa)
	w.runs(t, run, "kind", ds.Spec.Template.Spec.Containers[0])
}

// stored returns the DaemonSet and ConfigMap of that name in kube-system,
// as the API server stored them.
func (w *cluster) stored(t *testing.T, daemonSet, configMap string) (*appsv1.DaemonSet, *v1.ConfigMap) {
	t.Helper()
	cs := w.c.Client()
	ds, err := cs.AppsV1().DaemonSets(metav1.NamespaceSystem).Get(t.Context(), daemonSet, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("DaemonSet %s: %v", daemonSet, err)
	}
	cm, err := cs.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(t.Context(), configMap, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("ConfigMap %s: %v", configMap, err)
	}
	return ds, cm
}

// clusterCIDRs is the cluster's pod CIDRs as clusterCIDR takes them.
func (w *cluster) clusterCIDRs() string {
	var cidrs []string
	for _, p := range w.c.ClusterCIDRs() {
		cidrs = append(cidrs, p.String())
	}
	return strings.Join(cidrs, ",")
}

// runs starts run on the node, waits for it to serve a new Service, checks
// the container's HTTP probes and the metrics, and stops it.
func (w *cluster) runs(t *testing.T, run *podRun, service string, ctr v1.Container) {
	t.Helper()
	d := run.start(t, w.node)
	defer d.Stop(t)
	d.WaitHealthy(t, converge)
	w.serves(t, service)
	for _, p := range []*v1.Probe{ctr.LivenessProbe, ctr.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil {
			continue
		}
		code, body, err := d.Get(t.Context(), p.HTTPGet.Port.IntValue(), p.HTTPGet.Path)
		if err != nil || code != 200 {
			t.Errorf("probe %s:%s: %d %v %s", p.HTTPGet.Port.String(), p.HTTPGet.Path, code, err, body)
		} else {
			t.Logf("probe %s:%s answers 200", p.HTTPGet.Port.String(), p.HTTPGet.Path)
		}
	}
	log := d.Log()
	for _, bad := range []string{"lenient", "forbidden", "missing API permissions", "Ignoring command-line flag"} {
		if strings.Contains(log, bad) {
			t.Errorf("iptproxy's log mentions %q:\n%s", bad, log)
		}
	}
	code, body, err := d.Get(t.Context(), 10249, "/metrics")
	if err != nil || code != 200 || !strings.Contains(body, "kubeproxy_sync_proxy_rules_duration_seconds") {
		t.Errorf("metrics on 127.0.0.1:10249: %d %v", code, err)
	}
}

// replaceOnce replaces the one occurrence of old in s.
func replaceOnce(t *testing.T, s, old, new string) string {
	t.Helper()
	if n := strings.Count(s, old); n != 1 {
		t.Fatalf("want exactly one %q in the ConfigMap, found %d", old, n)
	}
	return strings.Replace(s, old, new, 1)
}
