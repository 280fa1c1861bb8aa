#!/usr/bin/env bash
# Measure the output quality of wstore's lossy UltraDelta codec on the two rxnfp fine-tunes.
#
# Usage: benches/rxnfp_quality.sh DIR OUTDIR
#   DIR     directory filled by fetch-real-models.sh. It must contain
#           rxnfp/bert_pretrained.safetensors, rxnfp/bert_ft.safetensors and
#           rxnfp/bert_ft_10k_25s.safetensors.
#   OUTDIR  working directory for the Python venv, the rxnfp wheel, one wstore store per row
#           (deleted after its checkout), the checkouts, the DARE checkpoints (about 1.4 GB in
#           all), the JSON results and the tables in OUTDIR/tables.md.
# Environment:
#   WSTORE  wstore binary (default: ${CARGO_TARGET_DIR:-target}/release/wstore, built if missing)
#   PYTHON  interpreter used to create the venv (default: python3; numpy 2.4 needs 3.11+)
#
# For each fine-tune it commits the file once per row into a fresh store: the error budgets
# 1e-3 (the default), 3e-3, 1e-2 and 3e-2, and the fixed settings --sparsity P --bits 4
# --step 0.01 --accept-error for P in 0.9, 0.95, 0.97, 0.99 in both mask modes. Each row is
# checked out and run through the numpy rxnfp forward pass (benches/rxnfp_forward.py) against
# the exact fine-tune. Each row also gets a DARE checkpoint of the same estimated size
# (benches/dare.py explains the size model), compared the same way.
#
# Cost: 2 x 12 rows, each one commit, one checkout and two forward passes over the reactions
# in benches/rxnfp_reactions.txt. The two fine-tunes are compared in parallel, and the run took
# 13 min on 2 shared cores (Intel Xeon, Linux 6.18).
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 DIR OUTDIR" >&2
    exit 2
fi
REAL_DIR=$(cd "$1" && pwd)
mkdir -p "$2"
OUT=$(cd "$2" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
BENCHES="$REPO/benches"
BASE="$REAL_DIR/rxnfp/bert_pretrained.safetensors"
FINETUNES=(bert_ft bert_ft_10k_25s)

for model in "$BASE" "$REAL_DIR/rxnfp/bert_ft.safetensors" "$REAL_DIR/rxnfp/bert_ft_10k_25s.safetensors"; do
    if [[ ! -f "$model" ]]; then
        echo "error: $model not found. Fill DIR with fetch-real-models.sh first" >&2
        exit 2
    fi
done

# --- tools -------------------------------------------------------------------------------

WSTORE=${WSTORE:-${CARGO_TARGET_DIR:-$REPO/target}/release/wstore}
if [[ ! -x "$WSTORE" ]]; then
    (cd "$REPO" && cargo build --release)
fi

VENV="$OUT/venv"
if [[ ! -x "$VENV/bin/python" ]]; then
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet -r "$BENCHES/rxnfp_requirements.txt"
fi
PY="$VENV/bin/python"
WHEEL="$OUT/wheel/rxnfp-0.1.0-py3-none-any.whl"
if [[ ! -f "$WHEEL" ]]; then
    # The SMILES vocabulary ships only inside this wheel.
    "$VENV/bin/pip" download --quiet rxnfp==0.1.0 --no-deps -d "$OUT/wheel"
fi

# --- rows --------------------------------------------------------------------------------

# Each row is "label|commit flags". The budget rows use the default mask mode (seeded).
# RXNFP_ROWS=policy swaps in rows that compare tensor policies instead: the default (2-D
# float tensors of at least 4096 elements), every float tensor (biases, LayerNorm scales and
# the 1-D tensors included), and the default without the embeddings, each at two budgets.
if [[ "${RXNFP_ROWS:-}" == policy ]]; then
    ROWS=()
    for budget in 1e-3 3e-3; do
        ROWS+=("default policy, budget $budget|--max-error $budget")
        ROWS+=("every float tensor, budget $budget|--max-error $budget --lossy-include *")
        ROWS+=("no embeddings, budget $budget|--max-error $budget --lossy-exclude *embeddings*")
    done
else
    ROWS=(
        "budget 1e-3 (default)|"
        "budget 3e-3|--max-error 3e-3"
        "budget 1e-2|--max-error 1e-2"
        "budget 3e-2|--max-error 3e-2"
    )
    for sparsity in 0.9 0.95 0.97 0.99; do
        for mode in grouped seeded; do
            ROWS+=("p=$sparsity 4-bit $mode|--sparsity $sparsity --bits 4 --step 0.01 --accept-error --mask-mode $mode")
        done
    done
fi

# Commit one row into a fresh store, check it out and build its DARE twin.
run_row() {
    # No pathname expansion here: the flags hold glob patterns for wstore, not for the shell.
    local -
    set -f
    local finetune=$1 index=$2 label=$3 flags=$4
    local dir="$OUT/$finetune/row$index"
    rm -rf "$dir"
    mkdir -p "$dir"
    echo "$label" >"$dir/label"
    local store="$dir/store"
    "$WSTORE" --store "$store" init >/dev/null
    "$WSTORE" --store "$store" base add rxnfp-pretrained "$BASE" >/dev/null
    # shellcheck disable=SC2086  # flags is a list of words on purpose
    "$WSTORE" --store "$store" commit "$REAL_DIR/rxnfp/$finetune.safetensors" \
        --base rxnfp-pretrained --name row $flags --json >"$dir/commit.json" 2>"$dir/commit.log"
    "$WSTORE" --store "$store" checkout row -o "$dir/wstore.safetensors" >/dev/null 2>&1
    "$WSTORE" --store "$store" show row --json >"$dir/show.json"
    "$PY" "$BENCHES/dare.py" build --base "$BASE" \
        --finetune "$REAL_DIR/rxnfp/$finetune.safetensors" \
        --commit "$dir/commit.json" --show "$dir/show.json" \
        --out "$dir/dare.safetensors" >"$dir/dare.json"
    # Only the two checkpoints are needed from here on.
    rm -rf "$store"
}

started=$(date +%s)
for finetune in "${FINETUNES[@]}"; do
    for index in "${!ROWS[@]}"; do
        row=${ROWS[$index]}
        echo "commit $finetune: ${row%%|*}" >&2
        run_row "$finetune" "$index" "${row%%|*}" "${row#*|}"
    done
done

# --- forward passes ----------------------------------------------------------------------

compare_finetune() {
    local finetune=$1
    local candidates=() labels=()
    for index in "${!ROWS[@]}"; do
        candidates+=("$OUT/$finetune/row$index/wstore.safetensors" "$OUT/$finetune/row$index/dare.safetensors")
        labels+=("row$index/wstore" "row$index/dare")
    done
    "$PY" "$BENCHES/dare.py" compare --reference "$REAL_DIR/rxnfp/$finetune.safetensors" \
        --vocab "$WHEEL" --candidates "${candidates[@]}" --labels "${labels[@]}" \
        >"$OUT/$finetune/compare.jsonl"
}

pids=()
for finetune in "${FINETUNES[@]}"; do
    echo "compare $finetune (${#ROWS[@]} rows x 2 checkpoints)" >&2
    compare_finetune "$finetune" &
    pids+=($!)
done
for pid in "${pids[@]}"; do
    wait "$pid"
done
finished=$(date +%s)

# --- tables ------------------------------------------------------------------------------

{
    echo "Command: benches/rxnfp_quality.sh $1 $2"
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'), run time $(( (finished - started) / 60 )) min"
    echo "Machine: $(uname -srm), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "wstore: $("$WSTORE" --version 2>/dev/null || echo unknown)"
    echo
    for finetune in "${FINETUNES[@]}"; do
        "$PY" "$BENCHES/dare.py" table --finetune "$finetune" --dir "$OUT/$finetune" \
            --rows "${#ROWS[@]}"
        echo
    done
} | tee "$OUT/tables.md"
