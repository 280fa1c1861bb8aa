#!/usr/bin/env bash
# Runs every cargo-fuzz target for a fixed time and prints executions and crashes per target.
# Usage: bash benches/fuzz_all.sh [SECONDS_PER_TARGET] [TARGET...]
#   SECONDS_PER_TARGET defaults to 600 (10 minutes); targets default to all of
#   fuzz/fuzz_targets. Needs cargo-fuzz (`cargo install cargo-fuzz`); nightly features
#   are enabled with RUSTC_BOOTSTRAP=1 on the stable toolchain.
set -euo pipefail
seconds="${1:-600}"
shift || true
cd "$(dirname "$0")/../fuzz"
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  for f in fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
work="$(mktemp -d)"
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'), cores: $(nproc), ${seconds} s per target"
for target in "${targets[@]}"; do
  # A scratch corpus dir takes new inputs, so the committed seeds stay as they are.
  mkdir -p "$work/$target" "$work/artifacts-$target"
  log="$work/$target.log"
  status=0
  cargo fuzz run -O "$target" "$work/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=4096 -artifact_prefix="$work/artifacts-$target/" \
    >"$log" 2>&1 || status=$?
  runs="$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -1 || true)"
  crashes="$(find "$work/artifacts-$target" -type f | wc -l)"
  echo "$target: ${runs:-no summary (exit $status)}, crash artifacts: $crashes, log: $log"
done
