#!/usr/bin/env bash
# Runs every test of the workspace, the lints CI holds us to, and every fuzz target for a
# short while (FUZZ_SECONDS each, default 30; 0 skips them).
set -euo pipefail
cd "$(dirname "$0")"
cargo fmt --all --check
cargo fmt --manifest-path fuzz/Cargo.toml --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# RBAC is proven, not guessed: the tests of each component that talks to the API server run
# again with each component acting as its ServiceAccount of deploy/base, with exactly the
# roles the manifests give it (danm_testkit::identity applies them, and checks the identity
# is refused Secrets). A request outside its role fails the test. Only the test files that
# start a component (its binary or its library's client) against the API server: cleaner
# (leaks, races, watch, calico: with the calico component's RBAC), svcwatcher and netwatcher
# (its attachments test with the attachments component's RBAC), the webhook (api, faults),
# ipamd (kube_attach, node_authz, showalloc_api, status), the policer (controller). `--workspace` with `--test` names selects just
# those and keeps the features of the run above, so nothing is rebuilt: about 2 minutes more.
DANM_TESTS_AS_SERVICE_ACCOUNTS=1 cargo test --workspace --locked \
  --test leaks --test races --test watch --test calico \
  --test svcwatcher --test netwatcher \
  --test api --test faults \
  --test kube_attach --test node_authz --test showalloc_api --test status \
  --test controller
seconds="${FUZZ_SECONDS:-30}"
if [ "$seconds" != 0 ]; then
  # The fuzz targets run under cargo fuzz (libFuzzer), installed from crates.io the first
  # time (about 4 minutes on 2 cores).
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "test.sh: installing cargo-fuzz for the fuzz targets (FUZZ_SECONDS=0 skips them)" >&2
    cargo install cargo-fuzz --locked --quiet
  fi
  fuzz/run.sh "$seconds"
fi
