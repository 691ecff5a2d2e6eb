#!/usr/bin/env bash
# Deletes the kind cluster hack/kind-up.sh created (KIND_CLUSTER_NAME,
# default iptproxy). The iptproxy:dev image stays in the local Docker.
set -o errexit -o nounset -o pipefail

cluster="${KIND_CLUSTER_NAME:-iptproxy}"

if ! command -v kind >/dev/null 2>&1; then
  echo "kind-down: kind is not installed (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)" >&2
  exit 1
fi
if ! kind get clusters 2>/dev/null | grep -qx "${cluster}"; then
  echo "kind-down: no kind cluster named ${cluster}; nothing to do"
  exit 0
fi
kind delete cluster --name "${cluster}"
