#!/usr/bin/env bash
# Check `wstore diff --json` against numpy (benches/diff_numpy.py) on the rxnfp family.
#
#   bash benches/diff_peer.sh REAL_DIR [OUT_DIR]
#
# REAL_DIR is filled by fetch-real-models.sh (it has rxnfp/*.safetensors). OUT_DIR (default
# ./diff-peer) receives the reports, a scratch store and checkouts. Python needs numpy:
# set PYTHON to an interpreter that has it (default python3).
#
# Pairs checked, each to 1e-6 relative per figure:
#   files:   base vs each fine-tune, and the two fine-tunes against each other;
#   commits: bert_ft (lossless) and bert_ft_10k_25s (default codec, lossy) committed on the
#            base, diffed commit vs commit and commit vs its base; numpy reads their checkouts.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: bash benches/diff_peer.sh REAL_DIR [OUT_DIR]" >&2
    exit 2
fi
real_dir=$(cd "$1" && pwd)
out_dir=${2:-$PWD/diff-peer}
mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
python=${PYTHON:-python3}

(cd "$repo" && cargo build --release --quiet)
wstore="$CARGO_TARGET_DIR/release/wstore"
rx="$real_dir/rxnfp"
base="$rx/bert_pretrained.safetensors"
ft="$rx/bert_ft.safetensors"
ft25="$rx/bert_ft_10k_25s.safetensors"

# Runs `wstore diff` (exit 1 means differences, which these pairs have) and the numpy check.
check_pair() {
    local label=$1 a_file=$2 b_file=$3
    shift 3
    local report="$out_dir/$label.json"
    local code=0
    "$wstore" --store "$out_dir/store" diff "$@" --json > "$report" || code=$?
    if [ "$code" -gt 1 ]; then
        echo "$label: wstore diff failed with exit code $code" >&2
        exit 2
    fi
    printf '%-28s ' "$label"
    "$python" "$repo/benches/diff_numpy.py" "$a_file" "$b_file" "$report"
}

check_pair base-vs-ft "$base" "$ft" "$base" "$ft"
check_pair base-vs-ft25 "$base" "$ft25" "$base" "$ft25"
check_pair ft-vs-ft25 "$ft" "$ft25" "$ft" "$ft25"

rm -rf "$out_dir/store" "$out_dir"/checkout-*.safetensors
"$wstore" --store "$out_dir/store" init > /dev/null
"$wstore" --store "$out_dir/store" --quiet base add rxnfp "$base" > /dev/null
"$wstore" --store "$out_dir/store" --quiet commit "$ft" --base rxnfp --name ft --codec lossless > /dev/null
"$wstore" --store "$out_dir/store" --quiet commit "$ft25" --base rxnfp --name ft25 > /dev/null
for ref in ft ft25; do
    "$wstore" --store "$out_dir/store" --quiet checkout "$ref" -o "$out_dir/checkout-$ref.safetensors" > /dev/null
done
check_pair commit-ft-vs-ft25 "$out_dir/checkout-ft.safetensors" "$out_dir/checkout-ft25.safetensors" ft ft25
check_pair commit-ft25-vs-base "$out_dir/checkout-ft25.safetensors" "$base" ft25
