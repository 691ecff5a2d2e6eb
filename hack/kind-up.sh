#!/usr/bin/env bash
# Brings up a kind cluster with iptproxy in place of kube-proxy and
# smoke-tests it:
#
#   1. a kind cluster (one control plane, KIND_WORKERS workers) created with
#      networking.kubeProxyMode: none, so that nothing else programs Services;
#      an existing cluster of the same name is reused;
#   2. docker build -t iptproxy:dev, kind load docker-image; or, with
#      IMAGE_ARCHIVE, kind load image-archive of an image built without
#      Docker (make image, see docs/install.md);
#   3. kubectl apply -k deploy/overlays/kind, wait for the DaemonSet, the
#      nodes and CoreDNS;
#   4. a 3-replica echo Deployment (agnhost netexec) behind a ClusterIP and a
#      NodePort Service: requests from a client pod (by DNS name and by
#      ClusterIP, which must reach more than one replica), from a node
#      container to another node's NodePort, and from this host to a node's
#      IP and NodePort.
#
# Environment:
#   KIND_CLUSTER_NAME  cluster name (default iptproxy)
#   KIND_WORKERS       number of worker nodes (default 2)
#   KIND_NODE_IMAGE    kindest/node image (default: kind's own)
#   ECHO_IMAGE         echo server image
#                      (default registry.k8s.io/e2e-test-images/agnhost:2.53)
#   SKIP_BUILD=1       do not rebuild iptproxy:dev (it must exist locally)
#   IMAGE_ARCHIVE      an image archive (docker-archive or OCI tar) holding
#                      iptproxy:dev, built without Docker: loaded with
#                      "kind load image-archive" instead of building
#   KIND_EXPERIMENTAL_PROVIDER  kind's node provider (docker, the default,
#                      or podman): the only container engine needed when
#                      IMAGE_ARCHIVE is given
#
# hack/kind-down.sh deletes the cluster.
set -o errexit -o nounset -o pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"

cluster="${KIND_CLUSTER_NAME:-iptproxy}"
workers="${KIND_WORKERS:-2}"
node_image="${KIND_NODE_IMAGE:-}"
echo_image="${ECHO_IMAGE:-registry.k8s.io/e2e-test-images/agnhost:2.53}"
# deploy/overlays/kind uses this tag, with imagePullPolicy: Never.
image=iptproxy:dev
context="kind-${cluster}"
ns=iptproxy-smoke

log() { echo "kind-up: $*"; }
die() {
  echo "kind-up: $*" >&2
  exit 1
}

# Prerequisites, all reported at once.
missing=()
need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    missing+=("  $1: $2")
  fi
}
archive="${IMAGE_ARCHIVE:-}"
provider="${KIND_EXPERIMENTAL_PROVIDER:-docker}"
if [[ -n "${archive}" && ! -f "${archive}" ]]; then
  die "IMAGE_ARCHIVE=${archive} does not exist (build it with make image, see docs/install.md)"
fi
if [[ "${provider}" == docker ]]; then
  need docker "a Docker engine and CLI, https://docs.docker.com/engine/install/ (kind runs its nodes in it)"
else
  need "${provider}" "kind's node provider (KIND_EXPERIMENTAL_PROVIDER=${provider})"
fi
need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation (e.g. go install sigs.k8s.io/kind@latest)"
need kubectl "https://kubernetes.io/docs/tasks/tools/ (v1.14 or newer, for apply -k)"
need curl "your distribution's curl package"
if [[ ${#missing[@]} -gt 0 ]]; then
  printf 'kind-up: missing prerequisites:\n' >&2
  printf '%s\n' "${missing[@]}" >&2
  exit 1
fi
if [[ "${provider}" == docker ]] && ! docker info >/dev/null 2>&1; then
  die "docker is installed but its engine is not reachable ('docker info' failed): start Docker, or check DOCKER_HOST and your permissions on the socket"
fi
if [[ "${provider}" != docker && -z "${archive}" ]]; then
  die "without Docker, build the image with make image and pass it as IMAGE_ARCHIVE=<file>"
fi
[[ "${workers}" =~ ^[0-9]+$ ]] || die "KIND_WORKERS must be a number, got '${workers}'"

k() { kubectl --context "${context}" "$@"; }

# 1. The cluster.
reused=false
if kind get clusters 2>/dev/null | grep -qx "${cluster}"; then
  log "reusing kind cluster ${cluster}"
  reused=true
else
  log "creating kind cluster ${cluster} (kubeProxyMode: none, ${workers} workers)"
  kind_config="$(
    printf '%s\n' "kind: Cluster" "apiVersion: kind.x-k8s.io/v1alpha4" \
      "networking:" "  kubeProxyMode: \"none\"" "nodes:" "- role: control-plane"
    for ((i = 0; i < workers; i++)); do
      echo "- role: worker"
    done
  )"
  create=(kind create cluster --name "${cluster}" --config -)
  if [[ -n "${node_image}" ]]; then
    create+=(--image "${node_image}")
  fi
  "${create[@]}" <<<"${kind_config}"
fi

# 2. The image.
if [[ -n "${archive}" ]]; then
  log "loading ${archive} (must hold ${image}) into the nodes"
  kind load image-archive "${archive}" --name "${cluster}"
elif [[ "${SKIP_BUILD:-}" == 1 ]]; then
  docker image inspect "${image}" >/dev/null 2>&1 || die "SKIP_BUILD=1 but there is no local image ${image}"
else
  version="$(git describe --tags --always --dirty 2>/dev/null || echo dev)"
  log "building ${image} (${version})"
  DOCKER_BUILDKIT=1 docker build -t "${image}" --build-arg VERSION="${version}" .
fi
if [[ -z "${archive}" ]]; then
  log "loading ${image} into the nodes"
  kind load docker-image "${image}" --name "${cluster}"
fi

# 3. iptproxy. The overlay reaches the API server as
# iptproxy-control-plane:6443, kind's endpoint for a cluster named iptproxy.
log "applying deploy/overlays/kind"
k kustomize deploy/overlays/kind |
  sed -e "s/value: iptproxy-control-plane$/value: ${cluster}-control-plane/" |
  k apply -f -
if ${reused}; then
  # Same tag, new image: restart the pods so they run it.
  k -n kube-system rollout restart daemonset/iptproxy
fi
k -n kube-system rollout status daemonset/iptproxy --timeout=5m
k wait --for=condition=Ready nodes --all --timeout=5m
# CoreDNS reaches the API server through the kubernetes Service: it becomes
# ready only once iptproxy programs it.
k -n kube-system rollout status deployment/coredns --timeout=5m

# 4. Smoke test.
log "smoke test in namespace ${ns}"
k apply -f - <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: ${ns}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
  namespace: ${ns}
spec:
  replicas: 3
  selector:
    matchLabels:
      app: echo
  template:
    metadata:
      labels:
        app: echo
    spec:
      containers:
      - name: echo
        image: ${echo_image}
        args: ["netexec", "--http-port=8080"]
        ports:
        - containerPort: 8080
        readinessProbe:
          tcpSocket:
            port: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: ${ns}
spec:
  selector:
    app: echo
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: echo-nodeport
  namespace: ${ns}
spec:
  type: NodePort
  selector:
    app: echo
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: ${ns}
spec:
  containers:
  - name: client
    image: ${echo_image}
    args: ["pause"]
EOF
k -n "${ns}" rollout status deployment/echo --timeout=5m
k -n "${ns}" wait --for=condition=Ready pod/client --timeout=5m

cluster_ip="$(k -n "${ns}" get service echo -o jsonpath='{.spec.clusterIP}')"
node_port="$(k -n "${ns}" get service echo-nodeport -o jsonpath='{.spec.ports[0].nodePort}')"
node_ips=()
mapfile -t node_ips < <(k get nodes -o jsonpath='{range .items[*]}{.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}')
[[ ${#node_ips[@]} -gt 0 ]] || die "no node InternalIP found"

# retry <command...>: up to 10 tries, 2s apart (rules take a sync to land).
retry() {
  local i
  for ((i = 1; i <= 10; i++)); do
    if "$@"; then
      return 0
    fi
    sleep 2
  done
  return 1
}

# from_client <url>: one request from the client pod.
from_client() {
  k -n "${ns}" exec client -- curl -fsS --max-time 5 "$1"
}

retry from_client "http://echo.${ns}.svc.cluster.local/hostname" >/dev/null ||
  die "client pod cannot reach http://echo.${ns}.svc.cluster.local (ClusterIP by DNS name)"
log "ok: client pod -> echo.${ns}.svc.cluster.local (DNS and ClusterIP)"

# Thirty requests to the ClusterIP, in one exec, must reach more than one
# replica (all on one of three: 3 * (1/3)^30).
backends="$(
  k -n "${ns}" exec client -- sh -c \
    "for i in \$(seq 30); do curl -fsS --max-time 5 http://${cluster_ip}/hostname; echo; done" |
    sort -u | grep -c . || true
)"
[[ "${backends}" -ge 2 ]] || die "30 requests to ClusterIP ${cluster_ip} reached ${backends} replica(s); want 2 or more"
log "ok: client pod -> ClusterIP ${cluster_ip}:80 reached ${backends} of 3 replicas"

# NodePort from another node: the control plane's container to the last
# node's IP.
target_ip="${node_ips[${#node_ips[@]} - 1]}"
retry docker exec "${cluster}-control-plane" curl -fsS --max-time 5 \
  "http://${target_ip}:${node_port}/hostname" >/dev/null ||
  die "node ${cluster}-control-plane cannot reach NodePort ${target_ip}:${node_port}"
log "ok: node ${cluster}-control-plane -> NodePort ${target_ip}:${node_port}"

# NodePort from this host. kind's node IPs are reachable from the host on
# Linux; Docker Desktop (macOS, Windows) keeps them inside its VM.
if [[ "$(uname -s)" == Linux ]]; then
  retry curl -fsS --max-time 5 "http://${target_ip}:${node_port}/hostname" >/dev/null ||
    die "this host cannot reach NodePort ${target_ip}:${node_port}"
  log "ok: host -> NodePort ${target_ip}:${node_port}"
else
  log "skipping host -> NodePort: node IPs are not reachable from the host on $(uname -s)"
fi

svc_rules="$(docker exec "${cluster}-control-plane" sh -c 'iptables-save -t nat | grep -c "^-A KUBE-SVC-"' || true)"
log "node ${cluster}-control-plane has ${svc_rules} KUBE-SVC- rules"
log "done: kubectl --context ${context} -n kube-system logs daemonset/iptproxy; hack/kind-down.sh deletes the cluster"
