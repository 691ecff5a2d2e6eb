#!/usr/bin/env bash
# Renders the kustomizations under deploy/ with a pinned kustomize (built from
# the Go module proxy, cached in IPTPROXY_TOOLS_DIR) and checks them:
#
#   - deploy/ (the base), deploy/overlays/kind and deploy/kubeadm render; the
#     results are written to MANIFESTS_DIR (default _output/manifests) as
#     iptproxy.yaml, iptproxy-kind.yaml and kubeadm-kube-proxy.yaml, for the
#     end-to-end harness to apply;
#   - every KubeProxyConfiguration there (base, kind, kubeadm's ConfigMap)
#     loads in iptproxy strictly (no unknown or duplicate fields);
#   - the ClusterRole grants exactly the rules of upstream's bootstrap
#     ClusterRole system:node-proxier, deploy/kubeadm/daemonset.yaml is
#     kubeadm's template with only the image swapped, and
#     deploy/kubeadm/configmap.yaml is kubeadm's ConfigMap template around
#     its config.conf (all read from
#     k8s.io/kubernetes in the Go module cache at the version
#     hack/tools/k8s/go.mod pins; skipped when it is not there).
#
# Usage: hack/verify-manifests.sh
set -o errexit -o nounset -o pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"
kustomize_version=v5.8.2
tools_dir="${IPTPROXY_TOOLS_DIR:-${root}/_output/bin}"
out_dir="${MANIFESTS_DIR:-${root}/_output/manifests}"
image=ghcr.io/iptproxy/iptproxy

fail() {
  echo "verify-manifests: $*" >&2
  exit 1
}

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

# kustomize, built once per pinned version.
kustomize="${tools_dir}/kustomize-${kustomize_version}"
if [[ ! -x "${kustomize}" ]]; then
  echo "verify-manifests: building kustomize ${kustomize_version}"
  mkdir -p "${tools_dir}"
  GOBIN="${work}/gobin" go install "sigs.k8s.io/kustomize/kustomize/v5@${kustomize_version}"
  mv "${work}/gobin/kustomize" "${kustomize}"
fi

mkdir -p "${out_dir}"
"${kustomize}" build deploy >"${out_dir}/iptproxy.yaml"
"${kustomize}" build deploy/overlays/kind >"${out_dir}/iptproxy-kind.yaml"
"${kustomize}" build deploy/kubeadm >"${out_dir}/kubeadm-kube-proxy.yaml"

# has <file> <pattern> <what>: the rendered file must contain a line.
has() {
  grep -q -E -- "$2" "$1" || fail "$(basename "$1"): missing $3"
}
for f in iptproxy.yaml iptproxy-kind.yaml; do
  m="${out_dir}/${f}"
  for kind in ServiceAccount ClusterRole ClusterRoleBinding ConfigMap DaemonSet; do
    has "${m}" "^kind: ${kind}$" "${kind}"
  done
  has "${m}" '^  namespace: kube-system$' "namespace kube-system"
  has "${m}" '^        - --config=/var/lib/iptproxy/config\.conf$' "--config"
  has "${m}" '^        - --hostname-override=\$\(NODE_NAME\)$' "--hostname-override"
  has "${m}" '^      priorityClassName: system-node-critical$' "priorityClassName"
  has "${m}" '^      hostNetwork: true$' "hostNetwork"
done
has "${out_dir}/iptproxy.yaml" "^        image: ${image}:latest$" "image ${image}:latest"
has "${out_dir}/iptproxy-kind.yaml" '^        image: iptproxy:dev$' "image iptproxy:dev"
has "${out_dir}/iptproxy-kind.yaml" '^        imagePullPolicy: Never$' "imagePullPolicy Never"
has "${out_dir}/iptproxy-kind.yaml" '^    clusterCIDR: 10\.244\.0\.0/16$' "clusterCIDR 10.244.0.0/16"
has "${out_dir}/kubeadm-kube-proxy.yaml" "^        image: ${image}:latest$" "image ${image}:latest"
has "${out_dir}/kubeadm-kube-proxy.yaml" '^        - /usr/local/bin/kube-proxy$' "/usr/local/bin/kube-proxy"

# The KubeProxyConfigurations load in iptproxy, strictly.
go build -o "${work}/iptproxy" ./cmd/iptproxy
# block_scalar <key>: prints the "  <key>: |..." block of a ConfigMap,
# de-indented.
block_scalar() {
  awk -v key="$1" '
    $0 ~ "^  " key ": [|]" { inside = 1; next }
    inside && /^    / { print substr($0, 5); next }
    inside && /^$/ { print; next }
    inside { exit }
  '
}
block_scalar config.conf <deploy/kubeadm/configmap.yaml >"${work}/kubeadm.conf"
for conf in deploy/base/config.conf deploy/overlays/kind/config.conf "${work}/kubeadm.conf"; do
  if ! "${work}/iptproxy" --config "${conf}" --write-config-to "${work}/resolved.conf" >"${work}/log" 2>&1; then
    cat "${work}/log" >&2
    fail "${conf}: iptproxy rejects it"
  fi
  if grep -q lenient "${work}/log"; then
    cat "${work}/log" >&2
    fail "${conf}: not strictly valid"
  fi
done
# The config kubeadm's ConfigMap holds for kubeadm.conf is the same text as
# the rendered one.
block_scalar config.conf <"${out_dir}/kubeadm-kube-proxy.yaml" | diff -q - "${work}/kubeadm.conf" >/dev/null ||
  fail "kustomize changed kubeadm's config.conf"

# Against upstream, when its source is in the module cache.
k8s_version="$(awk '($1 == "require" && $2 == "k8s.io/kubernetes") { print $3 } ($1 == "k8s.io/kubernetes" && $2 ~ /^v/) { print $2 }' hack/tools/k8s/go.mod | head -n 1)"
k8s_src="$(go env GOMODCACHE)/k8s.io/kubernetes@${k8s_version}"
if [[ -z "${k8s_version}" || ! -d "${k8s_src}" ]]; then
  echo "verify-manifests: k8s.io/kubernetes ${k8s_version:-?} not in the module cache (make tools fetches it); skipping the upstream comparisons"
else
  # The ClusterRole's rules, and system:node-proxier's in upstream's
  # bootstrap policy fixture (the exact output of policy.go).
  awk '
    /^kind: ClusterRole$/ { role = 1 }
    /^---$/ { role = 0; rules = 0 }
    role && /^rules:$/ { rules = 1; next }
    role && rules && /^[^ -]/ { rules = 0 }
    role && rules { print }
  ' "${out_dir}/iptproxy.yaml" >"${work}/ours"
  awk '
    /^- apiVersion:/ { role = 0; rules = 0 }
    /^    name: system:node-proxier$/ { role = 1; next }
    role && /^  rules:$/ { rules = 1; next }
    role && rules { print substr($0, 3) }
  ' "${k8s_src}/plugin/pkg/auth/authorizer/rbac/bootstrappolicy/testdata/cluster-roles.yaml" >"${work}/upstream"
  [[ -s "${work}/upstream" ]] || fail "system:node-proxier not found in ${k8s_src}"
  if ! diff -u "${work}/upstream" "${work}/ours"; then
    fail "ClusterRole iptproxy differs from system:node-proxier ${k8s_version} (above: - upstream, + ours)"
  fi

  # kubeadm's ConfigMap template with its values filled in: the
  # kubeconfig.conf as kubeadm writes it, around our config.conf (whose
  # content test/e2e/deploy's TestKubeadmConfigIsKubeadms checks).
  awk '
    /KubeProxyConfigMap19 = `/ { inside = 1; next }
    inside && /^`/ { exit }
    inside { print }
  ' "${k8s_src}/cmd/kubeadm/app/phases/addons/proxy/manifests.go" |
    sed -e '1{/^$/d;}' \
      -e 's|{{ .ProxyConfigMap }}|kube-proxy|' \
      -e 's|{{ .ControlPlaneEndpoint }}|https://192.168.0.10:6443|' \
      -e 's|{{ .ProxyConfigMapKey }}|config.conf|' >"${work}/kubeadm-cm.tmpl"
  grep -q '^{{ .ProxyConfig}}$' "${work}/kubeadm-cm.tmpl" ||
    fail "kubeadm's ConfigMap template not found in ${k8s_src}"
  sed 's/^/    /' "${work}/kubeadm.conf" >"${work}/kubeadm.conf.indented"
  sed -e "/^{{ .ProxyConfig}}\$/{r ${work}/kubeadm.conf.indented" -e 'd;}' "${work}/kubeadm-cm.tmpl" |
    sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' >"${work}/kubeadm-cm"
  if ! diff -u "${work}/kubeadm-cm" deploy/kubeadm/configmap.yaml; then
    fail "deploy/kubeadm/configmap.yaml is not kubeadm ${k8s_version}'s template (above: - kubeadm, + ours)"
  fi

  # kubeadm's DaemonSet template with its values filled in.
  awk '
    /KubeProxyDaemonSet19 = `/ { inside = 1; next }
    inside && /^`/ { exit }
    inside { print }
  ' "${k8s_src}/cmd/kubeadm/app/phases/addons/proxy/manifests.go" |
    sed -e '1{/^$/d;}' \
      -e "s|{{ .Image }}|${image}:latest|" \
      -e 's|{{ .ProxyConfigMap }}|kube-proxy|' \
      -e 's|{{ .ProxyConfigMapKey }}|config.conf|' >"${work}/kubeadm-ds"
  [[ -s "${work}/kubeadm-ds" ]] || fail "kubeadm's DaemonSet template not found in ${k8s_src}"
  if ! diff -u "${work}/kubeadm-ds" deploy/kubeadm/daemonset.yaml; then
    fail "deploy/kubeadm/daemonset.yaml is not kubeadm ${k8s_version}'s (above: - kubeadm, + ours)"
  fi
fi
echo "verify-manifests: ok (rendered into ${out_dir})"
