#!/usr/bin/env bash
# Shared by hack/build-tools.sh and hack/build-node-tools.sh: reading the
# pinned versions and stamping Kubernetes binaries as a release build does.
# Source it.

# pinned_version <module dir> <module path>: the version go.mod requires.
pinned_version() {
  (cd "$1" && go list -m -f '{{.Version}}' "$2")
}

# k8s_ldflags <version>: the -ldflags a Kubernetes release build of
# <version> (vX.Y.Z) sets, so that the binaries report that version.
k8s_ldflags() {
  local version="$1" minor major pkg=k8s.io/component-base/version
  minor="${version#v*.}"
  minor="${minor%%.*}"
  major="${version#v}"
  major="${major%%.*}"
  echo "-s -w -X ${pkg}.gitVersion=${version} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor} -X ${pkg}.gitTreeState=clean"
}
