#!/usr/bin/env bash
# Runs every test of the workspace, the lints CI holds us to, and every fuzz target for a
# short while (FUZZ_SECONDS each, default 30; 0 skips them).
set -euo pipefail
cd "$(dirname "$0")"
cargo fmt --all --check
cargo fmt --manifest-path fuzz/Cargo.toml --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
seconds="${FUZZ_SECONDS:-30}"
if [ "$seconds" != 0 ]; then
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "test.sh: the fuzz targets need cargo-fuzz: cargo install cargo-fuzz --locked (or FUZZ_SECONDS=0 to skip them)" >&2
    exit 1
  fi
  fuzz/run.sh "$seconds"
fi
