#!/usr/bin/env bash
# Kills real `wstore commit` processes with SIGKILL at random points and prints the tally:
# trials, commits killed part-way, lost acknowledged commits, corrupt objects, fsck problems.
# Usage: bash benches/crash_harness.sh [TRIALS] [SEED]
#   TRIALS: number of kill trials (default 100); SEED: fixes the random delays (default: clock).
# Each trial copies a store holding one acknowledged commit and makes a second acknowledged
# commit. It starts a third and kills it after a random delay in [0, 1.3 x its uninterrupted
# time], then runs `fsck --full` and checks out every acknowledged commit (tests/crash.rs).
set -euo pipefail
trials="${1:-100}"
cd "$(dirname "$0")/.."
export WSTORE_CRASH_TRIALS="$trials"
if [[ -n "${2:-}" ]]; then
  export WSTORE_CRASH_SEED="$2"
fi
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'), cores: $(nproc), trials: $trials"
cargo test --release --test crash crash_trials -- --exact --nocapture 2>&1 | grep -E 'crash tally|trial [0-9]+:|test result|panicked'
