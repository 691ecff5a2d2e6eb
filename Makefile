# iptproxy: short targets that call go and the scripts in hack/.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -o errexit -o nounset -o pipefail -c

GO ?= go
BIN := bin/iptproxy
IMAGE ?= iptproxy:dev
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/iptproxy/iptproxy/pkg/version.Version=$(VERSION)
export IPTPROXY_TOOLS_DIR ?= $(CURDIR)/_output/bin

.PHONY: all build deps tools test unit e2e e2e-faults demo verify fmt vet clean image image-rootfs check-image kind-up kind-down bench bench-churn bench-chart

all: build

## build: compile bin/iptproxy (static)
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/iptproxy

## deps: install the Debian packages the tests and the demo need
deps:
	hack/install-deps.sh

## tools: build kube-apiserver, kube-proxy and etcd from the Go module proxy (cached; TOOLS="etcd kube-apiserver" for a subset)
TOOLS ?=
tools:
	hack/build-tools.sh $(TOOLS)

# tools-and-build: the three tools and bin/iptproxy in one parallel run of
# hack/build-tools.sh (progress every 15 s); what the e2e targets need.
.PHONY: tools-and-build
tools-and-build:
	hack/build-tools.sh kube-apiserver kube-proxy etcd iptproxy

## unit: unit and kernel tests (kernel tests need root and skip otherwise)
unit:
	$(GO) test -count=1 ./pkg/... ./cmd/...

## e2e: the end-to-end harness: real kube-apiserver, network namespaces, real packets
e2e: deps tools-and-build
	IPTPROXY_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 40m -v ./test/e2e/... 2>&1 | hack/test-summary.sh

## e2e-faults: the fault tests only (flushes, refused restores, lock, apiserver outage, node changes, SIGKILL, takeover)
e2e-faults: deps tools-and-build
	IPTPROXY_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 30m -v ./test/e2e/faults/ 2>&1 | hack/test-summary.sh

.PHONY: e2e-parity
## e2e-parity: the Service feature suite with upstream kube-proxy on every node (same expectations)
e2e-parity: deps tools
	IPTPROXY_BIN=$(IPTPROXY_TOOLS_DIR)/kube-proxy $(GO) test -count=1 -timeout 20m -v -run TestFeatures ./test/e2e/proxy/ 2>&1 | hack/test-summary.sh

## test: every test: unit, kernel, the image filesystem check and end to end; the last line counts them all
test: deps tools-and-build
	hack/image-rootfs.sh --skip-if-unsupported
	mkdir -p _output && rm -f _output/test-counts
	$(GO) test -count=1 -v ./pkg/... ./cmd/... 2>&1 | hack/test-summary.sh --quiet --part unit --counts _output/test-counts
	IPTPROXY_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 40m -v ./test/e2e/... 2>&1 | hack/test-summary.sh --part e2e --counts _output/test-counts
	hack/test-summary.sh --total _output/test-counts

## demo: a local control plane, a two-node namespace cluster, iptproxy, and a load-balanced Service
## (hack/demo.sh installs the Debian packages and builds what it needs itself: kube-apiserver, etcd, bin/iptproxy)
demo:
	hack/demo.sh $(DEMO_ARGS)

## image: build the container image with Docker (IMAGE=iptproxy:dev); without a Docker engine, an archive in _output/images/iptproxy.tar (hack/build-images.sh)
image:
	if docker info >/dev/null 2>&1; then docker build -t $(IMAGE) --build-arg VERSION=$(VERSION) .; \
	else echo "image: no Docker engine; building the archive with hack/build-images.sh"; $(MAKE) build && IMAGE=$(IMAGE) hack/build-images.sh iptproxy; fi

## image-rootfs: assemble the image's filesystem without Docker (debootstrap, cached in _output/rootfs) and check bin/iptproxy in it
image-rootfs: build
	hack/image-rootfs.sh

## check-image: image-rootfs, skipped with a message where it cannot run (not root, no namespaces)
check-image: build
	hack/image-rootfs.sh --skip-if-unsupported

.PHONY: node-tools images cluster cluster-down conformance
## node-tools: build containerd, kubelet, kube-controller-manager, kube-scheduler, kubectl, agnhost, e2e.test and pause, pinned (cached)
node-tools: tools
	hack/install-node-deps.sh
	hack/build-node-tools.sh

## images: image archives without Docker (iptproxy, kube-proxy, pause, agnhost, busybox) in _output/images
images: build node-tools
	hack/build-images.sh

## cluster: a real local cluster (control plane, containerd, kubelet, bridge CNI) running iptproxy from deploy/ (CLUSTER_ARGS="--nodes 2")
cluster: node-tools images
	IPTPROXY_SKIP_BUILD=1 hack/local-cluster.sh up $(CLUSTER_ARGS)

## cluster-down: stop and remove the local cluster and everything it left on the machine
cluster-down:
	hack/local-cluster.sh down

## conformance: Kubernetes' Service e2e tests on the local cluster, with iptproxy and with kube-proxy; table in docs/conformance.md
conformance: node-tools images
	IPTPROXY_SKIP_BUILD=1 hack/conformance.sh

## kind-up: a kind cluster without kube-proxy, running iptproxy:dev, smoke-tested
kind-up:
	hack/kind-up.sh

## kind-down: delete the kind cluster kind-up made
kind-down:
	hack/kind-down.sh

## bench: iptproxy vs upstream kube-proxy (iptables and nftables modes), default flags, and the chart (BENCH_SIZES=1000x10 BENCH_BACKENDS=nft ...; see hack/bench.sh)
bench: deps tools-and-build
	hack/bench.sh

## bench-chart: redraw docs/benchmarks-chart.svg from docs/benchmarks-data/*.json
bench-chart:
	hack/bench.sh chart

## bench-churn: sustained EndpointSlice churn (BENCH_CHURN_RATE=100 BENCH_CHURN_DURATION=10m BENCH_CHURN_SIZE=10000x10)
bench-churn: deps tools-and-build
	hack/bench.sh churn

.PHONY: diagram
## diagram: redraw docs/images/chains.{svg,png} (kube-proxy's KUBE-SERVICES beside the dispatch tree) from a real render
diagram:
	hack/diagram.sh

## verify: gofmt, go vet, shellcheck
verify:
	hack/verify.sh

fmt:
	gofmt -w $$(git ls-files '*.go')

vet:
	$(GO) vet ./...

clean:
	rm -rf bin

## fuzz: run every fuzz target of the renderer and the restore parser for FUZZTIME each (default 60s)
FUZZTIME ?= 60s
.PHONY: fuzz
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzRender$$' -fuzztime $(FUZZTIME) ./pkg/rules/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./pkg/iptables/ruleset/
	$(GO) test -run '^$$' -fuzz '^FuzzRestore$$' -fuzztime $(FUZZTIME) ./pkg/iptables/ruleset/
