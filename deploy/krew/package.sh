#!/bin/sh
# Builds the krew archive of kubectl-showalloc and prints deploy/krew/showalloc.yaml with its
# version, URI and sha256 filled in.
#   deploy/krew/package.sh VERSION OUT_DIR [BINARY]
# BINARY defaults to target/release/kubectl-showalloc; the archive holds it and the LICENSE
# text, as the manifest's `files` say.
set -eu
version=${1:?usage: package.sh VERSION OUT_DIR [BINARY]}
out=${2:?usage: package.sh VERSION OUT_DIR [BINARY]}
here=$(cd "$(dirname "$0")" && pwd)
binary=${3:-$here/../../target/release/kubectl-showalloc}
[ -x "$binary" ] || { echo "package.sh: $binary is not built (cargo build --release -p danm-ipamd)" >&2; exit 1; }
archive=kubectl-showalloc-linux-amd64.tar.gz
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$binary" "$stage/kubectl-showalloc"
printf 'danm-rs is licensed under the BSD 3-Clause License (see the repository).\n' > "$stage/LICENSE"
mkdir -p "$out"
# Reproducible: fixed owner, order and time.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$stage" -czf "$out/$archive" kubectl-showalloc LICENSE
sum=$(sha256sum "$out/$archive" | cut -d' ' -f1)
sed -e "s|version: v0.1.0|version: $version|" \
    -e "s|download/v0.1.0/|download/$version/|" \
    -e "s|\"SHA256\"|\"$sum\"|" \
    "$here/showalloc.yaml" > "$out/showalloc.yaml"
echo "$out/$archive"
echo "$out/showalloc.yaml"
