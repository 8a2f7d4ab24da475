#!/bin/sh
# Builds the krew archive of kubectl-showalloc and prints deploy/krew/showalloc.yaml with its
# version, URI and sha256 filled in.
#   deploy/krew/package.sh VERSION OUT_DIR [BINARY]
# BINARY defaults to target/release/kubectl-showalloc; the archive holds it and the license
# (BSD-3-Clause, Cargo.toml's), as the manifest's `files` say.
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
cat > "$stage/LICENSE" <<'LICENSE'
BSD 3-Clause License

Copyright (c) 2026, the danm-rs authors

Redistribution and use in source and binary forms, with or without modification, are
permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this list of
   conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice, this list of
   conditions and the following disclaimer in the documentation and/or other materials
   provided with the distribution.

3. Neither the name of the copyright holder nor the names of its contributors may be used
   to endorse or promote products derived from this software without specific prior
   written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY
EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF
MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE
COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL,
EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF
SUBSTITUTE GOODS OR SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION)
HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY, OR
TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE OF THIS
SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
LICENSE
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
