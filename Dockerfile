# syntax=docker/dockerfile:1
# Kloak image: one binary (`kloak controller|webhook|certgen|doctor|run`) with the BPF objects
# embedded (build.rs compiles bpf/*.bpf.c with clang into libbpf-rs skeletons).
#
#   docker build -t ghcr.io/getkloak/kloak:dev .      (or: make docker-image; `make image` packs
#   the same binary as an OCI archive without Docker, scripts/k8s/image.sh)
#
# amd64 only for now: bpf/include/vmlinux.h is pinned for x86_64.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
# clang/llvm: compile the BPF programs; libelf, zlib, pkg-config: libbpf-sys (vendored libbpf).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      clang llvm libelf-dev zlib1g-dev pkg-config make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY bpf ./bpf
COPY src ./src
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kloak \
 && install -D -m 0755 target/release/kloak /out/kloak

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="kloak" \
      org.opencontainers.image.description="Kubernetes-native secret injection with eBPF: workloads hold placeholders, the kernel sends the real value only to allowed hosts" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/getkloak/kloak" \
      org.opencontainers.image.url="https://getkloak.io"
# The binary links libelf and zlib dynamically (libbpf); nothing else is installed.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libelf1 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin nonroot
COPY --from=builder /out/kloak /usr/local/bin/kloak
# Non-root by default (webhook, certgen); the node agent's DaemonSet runs it as root with a
# fixed set of capabilities.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kloak"]
CMD ["--help"]
