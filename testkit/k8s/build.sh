#!/usr/bin/env bash
# Builds the test control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl) and the real nodes' kubelet, their images' programs (pause, the
# sandbox's process, and netcheck, a TCP check: no registry is reachable) and containerd
# 2.x from the Go modules pinned in go.mod/go.sum (containerd: its version below, with its
# own go.sum), into a cache folder keyed by those pins, and prints that folder. A second
# run with the same pins builds nothing. Concurrent runs (parallel test binaries) wait for
# each other.
#
#   DANM_K8S_CACHE   cache root (default: ~/.cache/danm-rs/k8s)
#
# Test infrastructure only: the product never links or needs Go.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
k8s_version="$(awk '$1 == "k8s.io/kubernetes" {print $2}' go.mod)"
key="$(cat go.mod go.sum build.sh cmd/*/main.go | sha256sum | cut -c1-16)"
root="${DANM_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/danm-rs/k8s}"
out="$root/$k8s_version-$key"
# containerd 2.x for the real nodes (containerd 1.6 is Debian's), by its module's own pins.
containerd_version=v2.4.2
bins=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet pause netcheck
  containerd/containerd containerd/containerd-shim-runc-v2 containerd/ctr)

built() {
  for b in "${bins[@]}"; do [ -x "$out/bin/$b" ] || return 1; done
}

mkdir -p "$root"
exec 9>"$root/.lock"
if ! built; then
  flock 9
fi
if ! built; then
  command -v go >/dev/null || { echo "build.sh: go is not installed (Go 1.26 or newer is needed: containerd $containerd_version asks for it)" >&2; exit 1; }
  echo "build.sh: building Kubernetes $k8s_version, etcd and containerd $containerd_version into $out (first time only; about 9 minutes on 2 cores, module downloads included)" >&2
  started=$(date +%s)
  major="${k8s_version#v}"; major="${major%%.*}"
  minor="${k8s_version#v*.}"; minor="${minor%%.*}"
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  tmp="$out.tmp.$$"
  trap 'rm -rf "$tmp"' EXIT
  rm -rf "$tmp" && mkdir -p "$tmp/bin"
  export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
  go build -trimpath -ldflags "$ldflags" -o "$tmp/bin/" \
    ./cmd/etcd \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/cmd/kubelet \
    ./cmd/pause \
    ./cmd/netcheck
  GOBIN="$tmp/bin/containerd" go install -trimpath -ldflags "-s -w" \
    "github.com/containerd/containerd/v2/cmd/containerd@$containerd_version" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$containerd_version" \
    "github.com/containerd/containerd/v2/cmd/ctr@$containerd_version"
  rm -rf "$out" && mv "$tmp" "$out"
  echo "build.sh: built in $(( $(date +%s) - started )) s" >&2
fi
echo "$out/bin"
