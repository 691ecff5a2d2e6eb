# syntax=docker/dockerfile:1
#
# iptproxy image: the static iptproxy binary on Debian bookworm with the
# iptables (nft and legacy), conntrack and iproute2 tools, laid out like
# kube-proxy's image so that kubeadm's kube-proxy DaemonSet runs it unchanged
# (/usr/local/bin/kube-proxy) and the plain iptables commands follow the
# node's backend (iptables-wrapper).
#
#   docker build -t iptproxy:dev --build-arg VERSION="$(git describe --tags --always --dirty)" .
#
# hack/image-rootfs.sh assembles the same filesystem without Docker.

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS builder
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
# .dockerignore keeps the context to the Go sources.
COPY . .
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath \
      -ldflags "-X github.com/iptproxy/iptproxy/pkg/version.Version=${VERSION}" \
      -o /out/iptproxy ./cmd/iptproxy

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      iptables conntrack iproute2 \
 && rm -rf /var/lib/apt/lists/*
COPY --chmod=0755 hack/iptables-wrapper.sh /usr/sbin/iptables-wrapper
RUN /usr/sbin/iptables-wrapper install
# For the way back to kube-proxy (docs/install.md).
COPY --chmod=0755 hack/remove-dispatch-chains.sh /usr/local/bin/remove-dispatch-chains
COPY --from=builder /out/iptproxy /usr/local/bin/iptproxy
RUN ln -s iptproxy /usr/local/bin/kube-proxy \
 && /usr/local/bin/kube-proxy --version
ENTRYPOINT ["/usr/local/bin/iptproxy"]
