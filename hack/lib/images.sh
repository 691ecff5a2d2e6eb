#!/usr/bin/env bash
# shellcheck disable=SC2154 # root is set by the scripts that source this
# Shared by hack/build-images.sh, hack/local-cluster.sh and hack/conformance.sh:
# the image references the pinned Kubernetes release expects. Source it;
# needs ${root} (the repository).

# k8s_module_dir: where the Go module cache holds the pinned k8s.io/kubernetes.
k8s_module_dir() {
  local d
  d="$(cd "${root}/hack/tools/k8s" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
  if [[ -z "${d}" || ! -d "${d}" ]]; then
    (cd "${root}/hack/tools/k8s" && go mod download k8s.io/kubernetes)
    d="$(cd "${root}/hack/tools/k8s" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
  fi
  echo "${d}"
}

# k8s_version: the pinned k8s.io/kubernetes version (v1.37.2).
k8s_version() {
  (cd "${root}/hack/tools/k8s" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
}

# e2e_image <key>: registry/name:tag of an image in the e2e framework's
# manifest (test/utils/image/manifest.go) at the pinned version, by its key
# there, for example Agnhost -> registry.k8s.io/e2e-test-images/agnhost:2.66.1
# (AgnhostPrev is another agnhost).
e2e_image() {
  local manifest line registry
  manifest="$(k8s_module_dir)/test/utils/image/manifest.go"
  line="$(grep -E "^\s*configs\[$1\] = Config\{list\.[A-Za-z0-9]+, \"[^\"]+\", \"[^\"]+\"\}" "${manifest}" | head -n 1)"
  if [[ -z "${line}" ]]; then
    echo "images: $1 not found in ${manifest}" >&2
    return 1
  fi
  case "${line}" in
    *list.PromoterE2eRegistry*) registry=registry.k8s.io/e2e-test-images ;;
    *list.GcRegistry*) registry=registry.k8s.io ;;
    *)
      echo "images: unknown registry in: ${line}" >&2
      return 1
      ;;
  esac
  echo "${registry}/$(sed -E 's/.*"([^"]+)", "([^"]+)"\}.*/\1:\2/' <<<"${line}")"
}
