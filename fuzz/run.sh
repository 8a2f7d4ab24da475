#!/usr/bin/env bash
# Runs every fuzz target for SECONDS seconds each (default 45), starting from the seed
# corpora in fuzz/seeds/ (modelled on the test fixtures), with libFuzzer through cargo fuzz.
# A crash fails the run and leaves the input under fuzz/artifacts/<target>/.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). cargo fuzz passes nightly-only
# compiler flags; on a stable toolchain RUSTC_BOOTSTRAP=1 allows them. No sanitizer: the
# code under test is safe Rust (unsafe_code is forbidden), so what is looked for is panics,
# overflows (debug assertions are on), runaway memory and hangs.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-45}"
shift || true
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build --sanitizer none --debug-assertions
for target in "${targets[@]}"; do
  corpus="corpus/$target"
  mkdir -p "$corpus"
  cp -n seeds/"$target"/* "$corpus"/ 2>/dev/null || true
  log="$(mktemp)"
  status=0
  cargo fuzz run --sanitizer none --debug-assertions "$target" "$corpus" -- \
    -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    >"$log" 2>&1 || status=$?
  runs=$(grep -m1 '^stat::number_of_executed_units' "$log" | awk '{print $2}')
  echo "fuzz: $target: ${runs:-?} runs in ${seconds} s, exit $status" >&2
  if [ "$status" -ne 0 ]; then
    tail -40 "$log" >&2
    echo "fuzz: $target failed; the input is under fuzz/artifacts/$target/" >&2
    exit 1
  fi
  rm -f "$log"
done
echo "fuzz: ${#targets[@]} targets, ${seconds} s each, no crash" >&2
