#!/usr/bin/env bash
# Builds Whereabouts' CNI binary from the module pinned in go.mod/go.sum into a cache folder
# keyed by those pins, and prints the binary's path. A second run with the same pins builds
# nothing; concurrent runs wait for each other. (Whereabouts' own go.mod has a replace
# directive, so `go install ...@version` refuses it: it is built as a tool of this module.)
#
#   DANM_PEERS_CACHE   cache root (default: ~/.cache/danm-rs/peers)
#
# Test infrastructure only: the product never links or needs Go.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
version="$(awk '$1 == "github.com/k8snetworkplumbingwg/whereabouts" {print $2; exit}' go.mod)"
key="$(cat go.mod go.sum build.sh | sha256sum | cut -c1-16)"
root="${DANM_PEERS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/danm-rs/peers}"
out="$root/whereabouts-$version-$key"
mkdir -p "$root"
exec 9>"$root/.lock"
if [ ! -x "$out/whereabouts" ]; then
  flock 9
fi
if [ ! -x "$out/whereabouts" ]; then
  command -v go >/dev/null || { echo "build.sh: go is not installed" >&2; exit 1; }
  echo "build.sh: building Whereabouts $version into $out (first time only; about 2 minutes on 2 cores)" >&2
  started=$(date +%s)
  tmp="$out.tmp.$$"
  trap 'rm -rf "$tmp"' EXIT
  rm -rf "$tmp" && mkdir -p "$tmp"
  export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
  go build -trimpath -o "$tmp/whereabouts" \
    -ldflags "-s -w -X github.com/k8snetworkplumbingwg/whereabouts/pkg/version.Version=$version" \
    github.com/k8snetworkplumbingwg/whereabouts/cmd
  rm -rf "$out" && mv "$tmp" "$out"
  echo "build.sh: built in $(( $(date +%s) - started )) s" >&2
fi
echo "$out/whereabouts"
