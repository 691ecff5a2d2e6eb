#!/usr/bin/env bash
# A real Kubernetes cluster on this machine, without Docker or kind: etcd,
# kube-apiserver, kube-controller-manager and kube-scheduler, and a node made
# of containerd 2.x, runc, the bridge CNI plugin and a kubelet, all built by
# hack/build-tools.sh and hack/build-node-tools.sh (pinned, cached), with the
# images from hack/build-images.sh imported into containerd. No kube-proxy
# runs until a proxy is deployed, the way a user deploys it:
#
#   hack/local-cluster.sh up          the cluster, then iptproxy with
#                                     "kubectl apply -k" of an overlay of
#                                     deploy/ (image set by kustomize), and a
#                                     smoke test (a Deployment behind a
#                                     Service, reached from a pod and from the
#                                     node)
#   hack/local-cluster.sh up --proxy kube-proxy
#                                     the same with upstream kube-proxy's
#                                     kubeadm DaemonSet (deploy/kubeadm, the
#                                     image set to registry.k8s.io/kube-proxy)
#   hack/local-cluster.sh up --proxy none
#   hack/local-cluster.sh proxy iptproxy|kube-proxy|none
#                                     switch the proxy of a running cluster
#   hack/local-cluster.sh swap        the kubeadm path: the kube-proxy
#                                     DaemonSet's image swapped to iptproxy's
#                                     with a rolling update while a client
#                                     keeps sending requests; fails if any fails
#   hack/local-cluster.sh smoke       the smoke test again
#   hack/local-cluster.sh down        stop and remove everything: processes,
#                                     containers, mounts, cgroups, network
#                                     namespaces, interfaces, iptables rules
#
# Options for up: --nodes 2 adds a second node in its own network and mount
# namespaces, with its own containerd and kubelet.
#
# The cluster lives in IPTPROXY_CLUSTER_DIR (default /var/lib/iptproxy-cluster)
# and /run/iptproxy-cluster; kubectl --kubeconfig
# ${IPTPROXY_CLUSTER_DIR}/admin.kubeconfig talks to it. Node 1 is this machine
# (its network namespace, its iptables): run it on a machine you can spare.
#
# Needs root, cgroup v1 or v2, overlayfs, and the Debian packages runc,
# containernetworking-plugins, openssl, iptables, busybox-static and
# debootstrap (hack/install-node-deps.sh).
set -o errexit -o nounset -o pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export IPTPROXY_TOOLS_DIR="${IPTPROXY_TOOLS_DIR:-${root}/_output/bin}"
tools="${IPTPROXY_TOOLS_DIR}"
dir="${IPTPROXY_CLUSTER_DIR:-/var/lib/iptproxy-cluster}"
run="/run/iptproxy-cluster"
image="${IMAGE:-ghcr.io/iptproxy/iptproxy:dev}"
cluster_cidr=10.244.0.0/16
service_cidr=10.96.0.0/16
api_port=6443
etcd_port=12379
dns_ip=10.96.0.10
cni_bridge=iptp-cni0
node2_netns=iptp-node-2
node2_veth=iptp-n2
node2_link_net=172.30.0

log() { echo "local-cluster: $(date +%T) $*"; }
die() {
  echo "local-cluster: $*" >&2
  exit 1
}

# node_ip: this machine's address on its default route.
node_ip() {
  ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -n 1
}

# shellcheck source=hack/lib/images.sh
source "${root}/hack/lib/images.sh"

k() { "${tools}/kubectl" --kubeconfig "${dir}/admin.kubeconfig" "$@"; }

# ----------------------------------------------------------------------------
# Prerequisites and binaries

check_host() {
  [[ "$(id -u)" -eq 0 ]] || die "needs root"
  local m
  for m in overlay br_netfilter; do
    modprobe "${m}" 2>/dev/null || true
  done
  grep -qw overlay /proc/filesystems || die "no overlayfs in this kernel"
  for m in runc openssl iptables ip; do
    command -v "${m}" >/dev/null || die "${m} not found; run hack/install-node-deps.sh"
  done
  [[ -x /usr/lib/cni/bridge ]] || die "/usr/lib/cni/bridge not found; run hack/install-node-deps.sh"
}

build_all() {
  "${root}/hack/build-tools.sh"
  "${root}/hack/build-node-tools.sh"
  (cd "${root}" && make build)
  "${root}/hack/build-images.sh"
}

# ----------------------------------------------------------------------------
# Certificates and kubeconfigs

# cert <name> <CN> <O or ""> [subjectAltName]
cert() {
  local name="$1" cn="$2" o="$3" san="${4-}" subj
  subj="/CN=${cn}"
  [[ -z "${o}" ]] || subj="/O=${o}${subj}"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "${dir}/pki/${name}.key" -out "${dir}/pki/${name}.csr" -subj "${subj}" 2>/dev/null
  local ext="${dir}/pki/${name}.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"
    [[ -z "${san}" ]] || echo "subjectAltName=${san}"
  } >"${ext}"
  openssl x509 -req -in "${dir}/pki/${name}.csr" -CA "${dir}/pki/ca.crt" -CAkey "${dir}/pki/ca.key" \
    -CAcreateserial -days 365 -extfile "${ext}" -out "${dir}/pki/${name}.crt" 2>/dev/null
  rm -f "${dir}/pki/${name}.csr" "${ext}"
}

# kubeconfig <file> <cert name> <server>
kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    certificate-authority: ${dir}/pki/ca.crt
    server: $3
users:
- name: $2
  user:
    client-certificate: ${dir}/pki/$2.crt
    client-key: ${dir}/pki/$2.key
contexts:
- name: local
  context: {cluster: local, user: $2}
current-context: local
EOF
}

make_pki() {
  local ip="$1"
  mkdir -p "${dir}/pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -keyout "${dir}/pki/ca.key" -out "${dir}/pki/ca.crt" -subj "/CN=iptproxy-local-ca" 2>/dev/null
  cert apiserver kube-apiserver "" \
    "IP:10.96.0.1,IP:${ip},IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert admin admin system:masters
  cert kube-controller-manager system:kube-controller-manager ""
  cert kube-scheduler system:kube-scheduler ""
  openssl genrsa -out "${dir}/pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "${dir}/pki/sa.key" -pubout -out "${dir}/pki/sa.pub" 2>/dev/null
  local server="https://${ip}:${api_port}"
  kubeconfig "${dir}/admin.kubeconfig" admin "${server}"
  kubeconfig "${dir}/kube-controller-manager.kubeconfig" kube-controller-manager "${server}"
  kubeconfig "${dir}/kube-scheduler.kubeconfig" kube-scheduler "${server}"
}

# ----------------------------------------------------------------------------
# Processes: each runs in the background with its log in ${dir}/logs and its
# pid in ${run}/pids/<name>.pid; "down" stops them by that pid.

# start <name> <node 2 or ""> <command...>: with "2", inside node 2's
# network and mount namespaces (held by the process in ${run}/pids/node-2.pid).
start() {
  local name="$1" ns="$2"
  shift 2
  mkdir -p "${dir}/logs" "${run}/pids"
  if [[ -n "${ns}" ]]; then
    setsid nsenter -t "$(cat "${run}/pids/node-${ns}.pid")" -n -m -- "$@" >>"${dir}/logs/${name}.log" 2>&1 </dev/null &
  else
    setsid "$@" >>"${dir}/logs/${name}.log" 2>&1 </dev/null &
  fi
  echo $! >"${run}/pids/${name}.pid"
}

# wait_for <what> <seconds> <command...>
wait_for() {
  local what="$1" timeout="$2" deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      die "${what} not ready after ${timeout}s (logs in ${dir}/logs)"
    fi
    sleep 1
  done
}

start_control_plane() {
  local ip="$1"
  mkdir -p "${dir}/etcd"
  start etcd "" "${tools}/etcd" --name=local --data-dir="${dir}/etcd" \
    --listen-client-urls="http://127.0.0.1:${etcd_port}" --advertise-client-urls="http://127.0.0.1:${etcd_port}" \
    --listen-peer-urls=http://127.0.0.1:12380 --initial-advertise-peer-urls=http://127.0.0.1:12380 \
    --initial-cluster=local=http://127.0.0.1:12380 --unsafe-no-fsync=true --log-level=warn
  wait_for etcd 30 curl -fsS "http://127.0.0.1:${etcd_port}/health"
  start kube-apiserver "" "${tools}/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:${etcd_port}" \
    --bind-address=0.0.0.0 --secure-port="${api_port}" --advertise-address="${ip}" \
    --cert-dir="${dir}/pki/serving" \
    --tls-cert-file="${dir}/pki/apiserver.crt" --tls-private-key-file="${dir}/pki/apiserver.key" \
    --client-ca-file="${dir}/pki/ca.crt" \
    --kubelet-client-certificate="${dir}/pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="${dir}/pki/apiserver-kubelet-client.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="${dir}/pki/sa.pub" \
    --service-account-signing-key-file="${dir}/pki/sa.key" \
    --authorization-mode=Node,RBAC \
    --service-cluster-ip-range="${service_cidr}" \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --allow-privileged=true --profiling=false
  wait_for kube-apiserver 90 curl -fsS --cacert "${dir}/pki/ca.crt" --cert "${dir}/pki/admin.crt" \
    --key "${dir}/pki/admin.key" "https://${ip}:${api_port}/readyz"
  start kube-controller-manager "" "${tools}/kube-controller-manager" \
    --kubeconfig="${dir}/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="${dir}/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="${dir}/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false \
    --service-account-private-key-file="${dir}/pki/sa.key" --root-ca-file="${dir}/pki/ca.crt" \
    --use-service-account-credentials=true \
    --cluster-signing-cert-file="${dir}/pki/ca.crt" --cluster-signing-key-file="${dir}/pki/ca.key" \
    --allocate-node-cidrs=true --cluster-cidr="${cluster_cidr}" --node-cidr-mask-size=24 \
    --service-cluster-ip-range="${service_cidr}" --profiling=false
  start kube-scheduler "" "${tools}/kube-scheduler" \
    --kubeconfig="${dir}/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="${dir}/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="${dir}/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --profiling=false
}

# ----------------------------------------------------------------------------
# Nodes

# node_dirs <n>: the node's directories (data and run).
node_data() { echo "${dir}/node-$1"; }
node_run() { echo "${run}/node-$1"; }

# write_containerd_config <n>
write_containerd_config() {
  local n="$1" data run_n
  data="$(node_data "${n}")"
  run_n="$(node_run "${n}")"
  mkdir -p "${data}/containerd" "${run_n}/containerd" "${data}/cni/net.d"
  cat >"${data}/containerd/config.toml" <<EOF
version = 3
root = "${data}/containerd/root"
state = "${run_n}/containerd/state"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "${run_n}/containerd/containerd.sock"

[ttrpc]
  address = "${run_n}/containerd/containerd.sock.ttrpc"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$(e2e_image Pause)"

[plugins."io.containerd.cri.v1.runtime"]
  netns_mounts_under_state_dir = true
  # Where /proc/self/oom_score_adj cannot be lowered (these machines), runc
  # fails to start a critical pod (kubelet gives it -998); clamp the score
  # at containerd's own instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "${run_n}/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "${data}/cni/net.d"
EOF
}

# write_cni_config <n> <pod cidr>: the bridge plugin on this node's pod CIDR.
write_cni_config() {
  local n="$1" cidr="$2" data
  data="$(node_data "${n}")"
  cat >"${data}/cni/net.d/10-iptproxy-local.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "iptproxy-local",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${cni_bridge}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${data}/cni/ipam",
        "ranges": [[{"subnet": "${cidr}"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

# write_kubelet_config <n> <node ip>
write_kubelet_config() {
  local n="$1" ip="$2" data run_n name="node-$1"
  data="$(node_data "${n}")"
  run_n="$(node_run "${n}")"
  mkdir -p "${data}/kubelet" "${data}/pods-logs"
  cert "kubelet-${n}" "system:node:${name}" system:nodes "IP:${ip},DNS:${name}"
  kubeconfig "${data}/kubelet.kubeconfig" "kubelet-${n}" "https://$(node_ip):${api_port}"
  cat >"${data}/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine runs cgroup v1 (hybrid): kubelet 1.35+ refuses it unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
# A small footprint: no QoS cgroup tree, no node allocatable enforcement, no
# eviction and no image garbage collection (the images are imported, not
# pulled, and could not come back).
cgroupsPerQOS: false
cgroupRoot: /iptproxy-node-${n}
enforceNodeAllocatable: ["none"]
evictionHard:
  memory.available: "0%"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
failSwapOn: false
containerRuntimeEndpoint: unix://${run_n}/containerd/containerd.sock
podLogsDir: ${data}/pods-logs
address: ${ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: ${dir}/pki/kubelet-${n}.crt
tlsPrivateKeyFile: ${dir}/pki/kubelet-${n}.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: ${dir}/pki/ca.crt}
authorization:
  mode: AlwaysAllow
clusterDomain: cluster.local
clusterDNS: [${dns_ip}]
resolvConf: /etc/resolv.conf
serializeImagePulls: false
maxPods: 110
EOF
}

# cgroup_dirs <n>: the node's cgroupRoot in every cgroup v1 hierarchy (and
# in the v2 one when it is the only one).
cgroup_dirs() {
  local c
  if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    echo "/sys/fs/cgroup/iptproxy-node-$1"
    return
  fi
  for c in /sys/fs/cgroup/*/; do
    c="${c%/}"
    [[ -L "${c}" || "${c##*/}" == unified ]] && continue
    echo "${c}/iptproxy-node-$1"
  done
}

# start_node <n> <node ip> <netns or "">
start_node() {
  local n="$1" ip="$2" ns="$3" data run_n name="node-$1" cg
  data="$(node_data "${n}")"
  run_n="$(node_run "${n}")"
  write_containerd_config "${n}"
  write_kubelet_config "${n}" "${ip}"
  while read -r cg; do mkdir -p "${cg}"; done < <(cgroup_dirs "${n}")
  start "containerd-${n}" "${ns}" env PATH="${tools}:${PATH}" "${tools}/containerd" \
    --config "${data}/containerd/config.toml"
  wait_for "containerd on ${name}" 30 "${tools}/ctr" --address "${run_n}/containerd/containerd.sock" version
  log "importing images into ${name}'s containerd"
  local i
  for i in "${root}/_output/images/"{pause,agnhost,busybox,coredns,regression-issue-74839,iptproxy,kube-proxy}.tar; do
    [[ -f "${i}" ]] || die "${i} missing; run hack/build-images.sh"
    "${tools}/ctr" --address "${run_n}/containerd/containerd.sock" -n k8s.io images import "${i}" >/dev/null
  done
  start "kubelet-${n}" "${ns}" "${tools}/kubelet" \
    --config="${data}/kubelet.yaml" --kubeconfig="${data}/kubelet.kubeconfig" \
    --root-dir="${data}/kubelet" --hostname-override="${name}" --node-ip="${ip}" \
    --v=1
  wait_for "${name} registered" 60 k get node "${name}"
  local cidr=""
  wait_for "${name}'s pod CIDR" 60 bash -c "[[ -n \"\$(${tools}/kubectl --kubeconfig ${dir}/admin.kubeconfig get node ${name} -o jsonpath='{.spec.podCIDR}')\" ]]"
  cidr="$(k get node "${name}" -o jsonpath='{.spec.podCIDR}')"
  write_cni_config "${n}" "${cidr}"
  log "${name}: ${ip}, pod CIDR ${cidr}"
}

# setup_node2_netns: node 2's network namespace, linked to this machine by a
# veth pair, and a mount namespace for its containerd and kubelet (they must
# share one: kubelet mounts the volumes containerd bind-mounts into
# containers), held by a sleeping process; host mounts propagate into it,
# its own do not leak out, and it goes away with its last process.
setup_node2_netns() {
  ip netns add "${node2_netns}"
  ip link add "${node2_veth}" type veth peer name eth0 netns "${node2_netns}"
  ip addr add "${node2_link_net}.1/24" dev "${node2_veth}"
  ip link set "${node2_veth}" up
  # Node 1 talks to node 2 from its node IP, as nodes on one network do
  # (the e2e tests compare the client IP a NodePort sees with the node's).
  ip route replace "${node2_link_net}.0/24" dev "${node2_veth}" src "$(node_ip)"
  ip -n "${node2_netns}" addr add "${node2_link_net}.2/24" dev eth0
  ip -n "${node2_netns}" link set eth0 up
  ip -n "${node2_netns}" link set lo up
  ip -n "${node2_netns}" route add default via "${node2_link_net}.1"
  ip netns exec "${node2_netns}" sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.ipv4.ip_forward=1
  mkdir -p "${run}/pids"
  # Not "ip netns exec": it remounts /sys for the namespace, which hides the
  # cgroup mounts kubelet needs (/sys/fs/cgroup); sysfs is only read here for
  # what is the same in both namespaces, and /proc/sys/net follows the
  # reader's network namespace.
  setsid unshare --mount --propagation slave nsenter --net="/run/netns/${node2_netns}" sleep infinity </dev/null >/dev/null 2>&1 &
  local holder=$! child=""
  for _ in $(seq 1 50); do
    child="$(pgrep -P "${holder}" -x sleep || true)"
    [[ -n "${child}" ]] && break
    # setsid, unshare and nsenter exec in place: usually the same pid.
    if [[ "$(cat "/proc/${holder}/comm" 2>/dev/null)" == sleep ]]; then
      child="${holder}"
      break
    fi
    sleep 0.1
  done
  [[ -n "${child}" ]] || die "node 2's namespace holder did not start"
  echo "${child}" >"${run}/pids/node-2.pid"
}

route_pod_cidrs() {
  local cidr2 cidr1
  cidr1="$(k get node node-1 -o jsonpath='{.spec.podCIDR}')"
  cidr2="$(k get node node-2 -o jsonpath='{.spec.podCIDR}')"
  ip route replace "${cidr2}" via "${node2_link_net}.2"
  ip -n "${node2_netns}" route replace "${cidr1}" via "${node2_link_net}.1"
}

# isolate_service_cidr: traffic to the Service CIDR that no proxy rule
# rewrote must not leave the machine. Where the default route leads to a
# network that answers anything (these machines' uplink answers every TCP
# connection to port 80 and more with an HTTP 404), it would make a Service
# without rules look reachable, and the e2e tests that expect a Service to be
# down fail with any proxy. It is rejected on the way out instead, in a chain
# of ours (IPTP-LOCAL-CLUSTER, removed by "down"); proxied traffic has been
# DNATed to a pod before it gets there.
isolate_service_cidr() {
  local dev
  dev="$(ip -4 route show default | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1) }' | head -n 1)"
  [[ -n "${dev}" ]] || return 0
  iptables -N IPTP-LOCAL-CLUSTER
  iptables -A IPTP-LOCAL-CLUSTER -d "${service_cidr}" -o "${dev}" -j REJECT
  iptables -I OUTPUT -j IPTP-LOCAL-CLUSTER
  iptables -I FORWARD -j IPTP-LOCAL-CLUSTER
}

# ----------------------------------------------------------------------------
# Proxies, deployed as a user deploys them

overlay_dir() { echo "${dir}/overlay-$1"; }

# iptproxy_overlay: deploy/ with this cluster's image, pod CIDR and API server.
iptproxy_overlay() {
  local o ip
  o="$(overlay_dir iptproxy)"
  ip="$(node_ip)"
  mkdir -p "${o}"
  sed -e "s|^clusterCIDR: .*|clusterCIDR: ${cluster_cidr}|" "${root}/deploy/base/config.conf" >"${o}/config.conf"
  cat >"${o}/kustomization.yaml" <<EOF
# iptproxy on the local cluster (hack/local-cluster.sh): the image built by
# hack/build-images.sh, the cluster's pod CIDR, and the API server reached
# directly, since no proxy serves its Service IP before iptproxy runs.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- $(realpath --relative-to="${o}" "${root}/deploy")
images:
- name: ghcr.io/iptproxy/iptproxy
  newName: ${image%:*}
  newTag: ${image##*:}
configMapGenerator:
- name: iptproxy
  namespace: kube-system
  behavior: replace
  files:
  - config.conf
  options:
    labels:
      k8s-app: iptproxy
patches:
- patch: |-
    apiVersion: apps/v1
    kind: DaemonSet
    metadata:
      name: iptproxy
      namespace: kube-system
    spec:
      template:
        spec:
          containers:
          - name: iptproxy
            env:
            - name: KUBERNETES_SERVICE_HOST
              value: "${ip}"
            - name: KUBERNETES_SERVICE_PORT
              value: "${api_port}"
EOF
  echo "${o}"
}

# kube_proxy_overlay: deploy/kubeadm (kubeadm's kube-proxy addon) with
# upstream kube-proxy's image and this cluster's API server.
kube_proxy_overlay() {
  local o ip version
  o="$(overlay_dir kube-proxy)"
  ip="$(node_ip)"
  version="$(cd "${root}/hack/tools/k8s" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
  mkdir -p "${o}"
  cat >"${o}/kustomization.yaml" <<EOF
# kubeadm's kube-proxy addon on the local cluster (hack/local-cluster.sh):
# upstream kube-proxy's image (hack/build-images.sh) and the API server's
# address kubeadm would have written.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- $(realpath --relative-to="${o}" "${root}/deploy/kubeadm")
images:
- name: ghcr.io/iptproxy/iptproxy
  newName: registry.k8s.io/kube-proxy
  newTag: ${version}
patches:
- path: kubeconfig-patch.yaml
EOF
  cat >"${o}/kubeconfig-patch.yaml" <<EOF
kind: ConfigMap
apiVersion: v1
metadata:
  name: kube-proxy
  namespace: kube-system
data:
  kubeconfig.conf: |-
    apiVersion: v1
    kind: Config
    clusters:
    - cluster:
        certificate-authority: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
        server: https://${ip}:${api_port}
      name: default
    contexts:
    - context:
        cluster: default
        namespace: default
        user: default
      name: default
    current-context: default
    users:
    - name: default
      user:
        tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
EOF
  echo "${o}"
}

# wait_ds <name>: the DaemonSet rolled out and every pod Ready.
wait_ds() {
  k -n kube-system rollout status "daemonset/$1" --timeout=180s
}

delete_proxies() {
  local o
  for o in iptproxy kube-proxy; do
    if [[ -d "$(overlay_dir "${o}")" ]]; then
      k delete -k "$(overlay_dir "${o}")" --ignore-not-found --wait=true >/dev/null 2>&1 || true
    fi
  done
  # The proxies leave their rules when their pod goes; remove them as an
  # operator would before switching (kube-proxy --cleanup, iptproxy --cleanup).
  "${root}/bin/iptproxy" --cleanup >/dev/null 2>&1 || true
  if [[ -e "/run/netns/${node2_netns}" ]]; then
    ip netns exec "${node2_netns}" "${root}/bin/iptproxy" --cleanup >/dev/null 2>&1 || true
  fi
}

# deploy_proxy iptproxy|kube-proxy|none
deploy_proxy() {
  delete_proxies
  case "$1" in
    iptproxy)
      local o
      o="$(iptproxy_overlay)"
      log "kubectl apply -k ${o}"
      k apply -k "${o}"
      wait_ds iptproxy
      ;;
    kube-proxy)
      local o
      o="$(kube_proxy_overlay)"
      log "kubectl apply -k ${o}"
      k apply -k "${o}"
      wait_ds kube-proxy
      ;;
    none) ;;
    *) die "unknown proxy $1 (iptproxy, kube-proxy or none)" ;;
  esac
  echo "$1" >"${dir}/proxy"
}

# deploy_dns: CoreDNS as kube-dns on ${dns_ip}, as kubeadm installs it (the
# e2e tests reach Services by name). It talks to the API server directly,
# so that it keeps working while the proxy is switched.
deploy_dns() {
  local version ip
  version="$(cut -d' ' -f2 "${tools}/coredns.version")"
  ip="$(node_ip)"
  k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
- {kind: ServiceAccount, name: coredns, namespace: kube-system}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 30
        }
        forward . /etc/resolv.conf
        cache 30
        loop
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      priorityClassName: system-cluster-critical
      serviceAccountName: coredns
      dnsPolicy: Default
      tolerations: [{operator: Exists}]
      containers:
      - name: coredns
        image: registry.k8s.io/coredns/coredns:${version}
        imagePullPolicy: IfNotPresent
        args: [-conf, /etc/coredns/Corefile]
        env:
        - {name: KUBERNETES_SERVICE_HOST, value: "${ip}"}
        - {name: KUBERNETES_SERVICE_PORT, value: "${api_port}"}
        ports:
        - {containerPort: 53, name: dns, protocol: UDP}
        - {containerPort: 53, name: dns-tcp, protocol: TCP}
        readinessProbe:
          httpGet: {path: /ready, port: 8181}
          periodSeconds: 2
        livenessProbe:
          httpGet: {path: /health, port: 8080}
          initialDelaySeconds: 30
        volumeMounts:
        - {name: config, mountPath: /etc/coredns, readOnly: true}
      volumes:
      - name: config
        configMap: {name: coredns}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: ${dns_ip}
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
EOF
  k -n kube-system rollout status deployment/coredns --timeout=120s
}

# ----------------------------------------------------------------------------
# Smoke test: a Deployment behind a Service, reached from a pod and the node.

smoke() {
  local agnhost
  agnhost="$(e2e_image Agnhost)"
  k create namespace smoke --dry-run=client -o yaml | k apply -f - >/dev/null
  k -n smoke create deployment echo --image="${agnhost}" --replicas=2 --port=8080 \
    --dry-run=client -o yaml -- /agnhost netexec --http-port=8080 | k apply -f - >/dev/null
  k -n smoke expose deployment echo --port=80 --target-port=8080 --dry-run=client -o yaml | k apply -f - >/dev/null
  k -n smoke run client --image="${agnhost}" --restart=Never --dry-run=client -o yaml -- pause | k apply -f - >/dev/null
  k -n smoke rollout status deployment/echo --timeout=120s
  k -n smoke wait --for=condition=Ready pod/client --timeout=120s >/dev/null
  local vip
  vip="$(k -n smoke get service echo -o jsonpath='{.spec.clusterIP}')"
  local i out
  for i in $(seq 1 30); do
    if out="$(k -n smoke exec client -- curl -fsS --max-time 2 "http://${vip}/hostname" 2>&1)"; then
      break
    fi
    [[ ${i} -lt 30 ]] || die "the Service ${vip} did not answer from a pod: ${out}"
    sleep 1
  done
  log "from a pod: http://${vip}/hostname -> ${out}"
  out="$(curl -fsS --max-time 5 "http://${vip}/hostname")" || die "the Service ${vip} did not answer from the node"
  log "from the node: http://${vip}/hostname -> ${out}"
  log "smoke test passed"
}

# swap: the kubeadm path. kube-proxy's DaemonSet runs upstream kube-proxy; a
# client in a pod keeps one connection open and sends requests through the
# Service while the DaemonSet's image is set to iptproxy's; none may fail.
swap() {
  deploy_proxy kube-proxy
  smoke
  local agnhost vip
  agnhost="$(k -n smoke get pod client -o jsonpath='{.spec.containers[0].image}')"
  vip="$(k -n smoke get service echo -o jsonpath='{.spec.clusterIP}')"
  k -n smoke delete pod swap-client --ignore-not-found --wait=true >/dev/null
  # Every 100 ms: one request on a connection opened before the swap and
  # kept open throughout (HTTP/1.1 keep-alive over bash's /dev/tcp), and one
  # on a new connection (curl); failures of either are counted.
  # shellcheck disable=SC2016 # expanded by the shell in the pod
  k -n smoke run swap-client --image="${agnhost}" --restart=Never --command -- /bin/bash -c '
    vip="$1"; ok=0; fail=0; kept=0; keptfail=0; cr="$(printf "\r")"
    exec 3<>"/dev/tcp/${vip}/80"
    # kept_request: GET /hostname on fd 3, the response read to its end.
    kept_request() {
      local line len=0
      printf "GET /hostname HTTP/1.1\r\nHost: %s\r\n\r\n" "${vip}" >&3 || return 1
      IFS= read -r -t 2 line <&3 || return 1
      [[ "${line}" == "HTTP/1.1 200"* ]] || return 1
      while IFS= read -r -t 2 line <&3; do
        line="${line%"${cr}"}"
        [[ -z "${line}" ]] && break
        [[ "${line,,}" == content-length:* ]] && len="${line#*: }"
      done
      [[ "${len}" -eq 0 ]] || read -r -t 2 -N "${len}" line <&3
    }
    while [[ ! -f /tmp/stop ]]; do
      if kept_request; then kept=$((kept + 1)); else keptfail=$((keptfail + 1)); echo "$(date +%T.%N) kept-alive request failed"; fi
      if curl -fsS --max-time 2 -o /dev/null "http://${vip}/hostname"; then
        ok=$((ok + 1)); else fail=$((fail + 1)); echo "$(date +%T.%N) new-connection request failed"; fi
      sleep 0.1
    done
    echo "requests: kept-alive connection ok=${kept} failed=${keptfail}, new connections ok=${ok} failed=${fail}"
    sleep 3600' bash "${vip}" >/dev/null
  k -n smoke wait --for=condition=Ready pod/swap-client --timeout=120s >/dev/null
  sleep 5
  log "kubectl set image daemonset/kube-proxy kube-proxy=${image}"
  k -n kube-system set image daemonset/kube-proxy "kube-proxy=${image}"
  wait_ds kube-proxy
  sleep 10
  k -n smoke exec swap-client -- touch /tmp/stop
  sleep 3
  local result
  result="$(k -n smoke logs swap-client | tail -n 1)"
  k -n smoke logs swap-client | grep 'request failed' >&2 || true
  log "during the swap: ${result}"
  k -n kube-system get pods -l k8s-app=kube-proxy -o jsonpath='{range .items[*]}{.spec.containers[0].image}{"\n"}{end}'
  k -n smoke delete pod swap-client --wait=false >/dev/null
  [[ "${result}" == *"ok="*"failed=0, "*"failed=0" ]] || die "requests failed during the swap: ${result}"
  echo "iptproxy" >"${dir}/proxy.kubeadm"
  log "swap passed"
}

# ----------------------------------------------------------------------------
# up / down

up() {
  local proxy=iptproxy nodes=1
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --proxy)
        proxy="$2"
        shift
        ;;
      --nodes)
        nodes="$2"
        shift
        ;;
      *) die "unknown argument $1" ;;
    esac
    shift
  done
  check_host
  if [[ -d "${dir}" || -d "${run}" ]]; then
    die "${dir} or ${run} exists: a cluster is up (hack/local-cluster.sh down first)"
  fi
  [[ "${IPTPROXY_SKIP_BUILD:-}" == 1 ]] || build_all
  local start=${SECONDS} ip
  ip="$(node_ip)"
  [[ -n "${ip}" ]] || die "no IPv4 address on a default route"
  mkdir -p "${dir}" "${run}"
  # containerd's shims keep their sockets in /run/containerd/s whatever the
  # configuration says: remove that directory on the way down if it is ours.
  [[ -e /run/containerd ]] || touch "${dir}/run-containerd.ours"
  # The bridge plugin turns IPv4 forwarding on (isGateway); put it back after.
  sysctl -n net.ipv4.ip_forward >"${dir}/ip_forward.before"
  # The proxy turns route_localnet on for localhost NodePorts; same.
  sysctl -n net.ipv4.conf.all.route_localnet >"${dir}/route_localnet.before"
  make_pki "${ip}"
  isolate_service_cidr
  start_control_plane "${ip}"
  log "control plane up at https://${ip}:${api_port}"
  start_node 1 "${ip}" ""
  if [[ "${nodes}" -ge 2 ]]; then
    setup_node2_netns
    start_node 2 "${node2_link_net}.2" 2
    route_pod_cidrs
  fi
  k wait --for=condition=Ready node --all --timeout=120s
  log "nodes Ready after $((SECONDS - start))s"
  deploy_dns
  deploy_proxy "${proxy}"
  [[ "${proxy}" == none ]] || smoke
  log "cluster up in $((SECONDS - start))s: kubectl --kubeconfig ${dir}/admin.kubeconfig get pods -A"
}

# pidfile_kill <file>: SIGTERM, then SIGKILL after 10 s, the process in it.
pidfile_kill() {
  local pid i
  pid="$(cat "$1" 2>/dev/null)" || return 0
  [[ -n "${pid}" ]] || return 0
  kill "${pid}" 2>/dev/null || return 0
  for i in $(seq 1 100); do
    kill -0 "${pid}" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "${pid}" 2>/dev/null || true
}

# shims_of <socket>: pids of containerd shims started by the containerd
# listening on that socket.
shims_of() {
  local p
  for p in /proc/[0-9]*; do
    [[ -r "${p}/cmdline" ]] || continue
    if tr '\0' ' ' <"${p}/cmdline" 2>/dev/null | grep -q "containerd-shim-runc-v2 .*-address $1"; then
      echo "${p#/proc/}"
    fi
  done
}

# mounts_under <dir>: mount points at or below dir, deepest first.
mounts_under() {
  awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

# iptables_cleanup: removes every KUBE-*, CNI-* and IPTP-LOCAL-* rule and
# chain in every table of both backends, which is what kubelet, the proxies,
# the CNI plugins and this script create, and nothing else.
iptables_cleanup() {
  local cmd t save
  for cmd in iptables-nft ip6tables-nft iptables-legacy ip6tables-legacy; do
    command -v "${cmd}" >/dev/null || continue
    for t in nat filter mangle raw; do
      # Listing a legacy table that does not exist creates it: look first.
      case "${cmd}" in
        iptables-legacy) grep -qx "${t}" /proc/net/ip_tables_names 2>/dev/null || continue ;;
        ip6tables-legacy) grep -qx "${t}" /proc/net/ip6_tables_names 2>/dev/null || continue ;;
      esac
      save="$("${cmd}-save" -t "${t}" 2>/dev/null)" || continue
      grep -qE 'KUBE-|CNI-|IPTP-LOCAL-' <<<"${save}" || continue
      # The table without our chains and every rule naming them, restored
      # whole (atomic per table).
      awk '/^:(KUBE-|CNI-|IPTP-LOCAL-)/ { next } /^-A / && /(KUBE-|CNI-|IPTP-LOCAL-)/ { next } { print }' <<<"${save}" |
        "${cmd}-restore" || log "could not clean ${cmd} ${t}"
    done
  done
}

down() {
  [[ "$(id -u)" -eq 0 ]] || die "needs root"
  log "tearing down"
  local f n sock pid
  # 1. kubelets first, so nothing restarts containers.
  for f in "${run}"/pids/kubelet-*.pid; do
    [[ -f "${f}" ]] && pidfile_kill "${f}"
  done
  # 2. Every container's processes, through their shims; then the shims.
  for n in 1 2; do
    sock="${run}/node-${n}/containerd/containerd.sock"
    [[ -S "${sock}" ]] || continue
    local c
    for c in $("${tools}/ctr" --address "${sock}" -n k8s.io tasks ls -q 2>/dev/null); do
      "${tools}/ctr" --address "${sock}" -n k8s.io tasks kill -s SIGKILL "${c}" >/dev/null 2>&1 || true
    done
    sleep 1
    for pid in $(shims_of "${sock}"); do
      kill -9 "${pid}" 2>/dev/null || true
    done
  done
  # 3. The daemons, in reverse order of start.
  for f in containerd-2 node-2 containerd-1 kube-scheduler kube-controller-manager kube-apiserver etcd; do
    [[ -f "${run}/pids/${f}.pid" ]] && pidfile_kill "${run}/pids/${f}.pid"
  done
  # Anything left in the nodes' cgroups (container processes whose shim died).
  local cg
  for n in 1 2; do
    while read -r cg; do
      [[ -d "${cg}" ]] || continue
      find "${cg}" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r pid; do
        kill -9 "${pid}" 2>/dev/null || true
      done
    done < <(cgroup_dirs "${n}")
  done
  sleep 1
  # 4. Mounts: container root filesystems, network namespaces, kubelet
  # volumes, sandbox shm.
  local m
  for d in "${run}" "${dir}"; do
    while read -r m; do umount -l "${m}" 2>/dev/null || true; done < <(mounts_under "${d}")
  done
  # 5. Cgroups, deepest first.
  for n in 1 2; do
    while read -r cg; do
      if [[ -d "${cg}" ]]; then
        find "${cg}" -depth -type d -exec rmdir {} + 2>/dev/null || true
      fi
    done < <(cgroup_dirs "${n}")
  done
  # 6. Network: node 2's namespace and link, the CNI bridge, routes, rules.
  if [[ -e "/run/netns/${node2_netns}" ]]; then
    ip netns delete "${node2_netns}" || true
  fi
  ip link delete "${node2_veth}" 2>/dev/null || true
  ip link delete "${cni_bridge}" 2>/dev/null || true
  ip route show | awk '/^10\.244\./ { print $1 }' | while read -r r; do ip route delete "${r}" || true; done
  iptables_cleanup
  if [[ -f "${dir}/ip_forward.before" ]]; then
    sysctl -qw "net.ipv4.ip_forward=$(cat "${dir}/ip_forward.before")"
  fi
  if [[ -f "${dir}/route_localnet.before" ]]; then
    sysctl -qw "net.ipv4.conf.all.route_localnet=$(cat "${dir}/route_localnet.before")"
  fi
  # kubelet's container log symlinks that point into the cluster's directory.
  for f in /var/log/containers/*.log; do
    [[ -L "${f}" && "$(readlink "${f}")" == "${dir}/"* ]] && rm -f "${f}"
  done
  # 7. Files.
  if [[ -f "${dir}/run-containerd.ours" ]]; then
    rm -rf /run/containerd
  fi
  if [[ -n "$(mounts_under "${dir}")$(mounts_under "${run}")" ]]; then
    mounts_under "${dir}" >&2
    mounts_under "${run}" >&2
    die "mounts are left under ${dir} or ${run}; not removing them"
  fi
  rm -rf "${dir}" "${run}"
  log "down: no processes, mounts, cgroups, namespaces or rules of the cluster are left"
}

cmd="${1-}"
[[ $# -gt 0 ]] && shift
case "${cmd}" in
  up) up "$@" ;;
  down) down ;;
  proxy) deploy_proxy "$@" ;;
  smoke) smoke ;;
  swap) swap ;;
  -h | --help | "")
    sed -n '2,/^set -o/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
    ;;
  *) die "unknown command ${cmd} (see --help)" ;;
esac
