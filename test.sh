#!/usr/bin/env bash
# Runs every test of the workspace, then the lints CI holds us to.
set -euo pipefail
cd "$(dirname "$0")"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
