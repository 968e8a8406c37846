#!/usr/bin/env bash
# Builds the single-node cluster's binaries from Go modules and caches them under
# $KLOAK_CACHE/k8s/<versions>/bin (see lib.sh for the versions and the binary set). Does nothing when
# every binary is already there, so CI pays the build once per version change.
#
# Needs Go >= 1.26 (Kubernetes 1.37 is built with it; /usr/local/go or $GO) and the Go module proxy.
# The module and build caches ($KLOAK_CACHE/k8s/gomod, gocache) are kept: a rebuild after a version
# bump recompiles only what changed.
#
# Why from modules: no registry or release download is reachable here, Debian's containerd is too old
# for kubelet >= 1.36 (CRI RuntimeConfig), and nothing else ships a 1.37 kubelet that still runs on
# cgroup v1 hosts. runc comes from Debian (apt), which install-deps-style callers provide.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OUT=$K8S_CACHE/$K8S_KEY
GO=${GO:-/usr/local/go/bin/go}
export GOMODCACHE=$K8S_CACHE/gomod GOCACHE=$K8S_CACHE/gocache GOTOOLCHAIN=local
# -mod=mod: our tiny wrapper modules resolve their dependencies themselves; -trimpath and -s -w keep
# the binaries (and the cache) small and the build independent of this path.
export CGO_ENABLED=0 GOFLAGS=-mod=mod
LDFLAGS='-s -w'

missing() { # prints the binaries not yet in $OUT/bin
  local name
  for name in "${K8S_BINARIES[@]}"; do
    [ -x "$OUT/bin/$name" ] || echo "$name"
  done
}

# Kubernetes: k8s.io/kubernetes replaces every staging module with ./staging/...; as a dependency
# those replaces are ignored, so a wrapper module pins each one to its published v0.x version.
build_kubernetes() {
  local mod=$OUT/mod staging=v0.${K8S_VERSION#v1.} gomod
  mkdir -p "$mod"
  (
    cd "$mod"
    if [ ! -f go.mod ]; then
      "$GO" mod init kloak.test/k8sbuild
      gomod=$("$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["GoMod"])')
      grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" |
        awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}' >>go.mod
      "$GO" mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
      # A build-tagged import list, so `go mod tidy` keeps what the commands need.
      printf '//go:build tools\n\npackage tools\n\nimport (\n%s)\n' \
        "$(printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' kube-apiserver kube-controller-manager \
          kube-scheduler kubelet kube-proxy kubectl)" >tools.go
      "$GO" mod tidy
    fi
    # The version stamp: without it the API server reports v0.0.0-master, which Helm refuses for
    # any chart with a kubeVersion constraint.
    local pkg stamp=""
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      stamp+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitTreeState=clean"
      stamp+=" -X $pkg.gitMajor=$(cut -d. -f1 <<<"${K8S_VERSION#v}")"
      stamp+=" -X $pkg.gitMinor=$(cut -d. -f2 <<<"$K8S_VERSION")"
    done
    # One invocation for all six commands: their (large) shared packages compile once.
    "$GO" build -trimpath -ldflags="$LDFLAGS$stamp" -o "$OUT/bin.new/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
      k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl
  )
}

# etcd: its root module has ./ replaces too, so a five-line main over server/v3/etcdmain.
build_etcd() {
  local mod=$OUT/etcd
  mkdir -p "$mod"
  (
    cd "$mod"
    if [ ! -f go.mod ]; then
      "$GO" mod init kloak.test/etcd
      printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' >main.go
      "$GO" get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
      "$GO" mod tidy
    fi
    "$GO" build -trimpath -ldflags="$LDFLAGS" -o "$OUT/bin.new/etcd" .
  )
}

# helm, containerd (with its shim and ctr) and the CNI plugins: plain `go install` of a version.
build_tools() {
  GOBIN=$OUT/bin.new "$GO" install -trimpath -ldflags="$LDFLAGS" \
    "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
  GOBIN=$OUT/bin.new "$GO" install -trimpath -ldflags="$LDFLAGS" \
    "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
  GOBIN=$OUT/bin.new "$GO" install -trimpath -ldflags="$LDFLAGS" \
    "github.com/containernetworking/plugins/plugins/main/bridge@$CNI_VERSION" \
    "github.com/containernetworking/plugins/plugins/ipam/host-local@$CNI_VERSION" \
    "github.com/containernetworking/plugins/plugins/main/loopback@$CNI_VERSION" \
    "github.com/containernetworking/plugins/plugins/meta/portmap@$CNI_VERSION"
}

main() {
  local todo
  todo=$(missing)
  if [ -z "$todo" ]; then
    log "cluster binaries cached in $OUT/bin"
    echo "$OUT/bin"
    return 0
  fi
  [ -x "$GO" ] || die "Go not found at $GO (set GO=/path/to/go; Go >= 1.26 is needed)"
  log "building into $OUT: $(echo "$todo" | tr '\n' ' ')"
  local start=$SECONDS
  # Build into bin.new and move each binary into bin: an interrupted build never leaves a
  # half-written binary that the next run would take as cached.
  rm -rf "$OUT/bin.new"
  mkdir -p "$OUT/bin" "$OUT/bin.new"
  grep -qx 'kube-apiserver\|kube-controller-manager\|kube-scheduler\|kubelet\|kube-proxy\|kubectl' \
    <<<"$todo" && build_kubernetes
  grep -qx etcd <<<"$todo" && build_etcd
  grep -qvx 'kube-.*\|kubelet\|kubectl\|etcd' <<<"$todo" && build_tools
  mv "$OUT"/bin.new/* "$OUT/bin/"
  rmdir "$OUT/bin.new"
  todo=$(missing)
  [ -z "$todo" ] || die "still missing after the build: $todo"
  log "built in $((SECONDS - start))s"
  echo "$OUT/bin"
}

main "$@"
