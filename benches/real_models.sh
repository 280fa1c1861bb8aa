#!/usr/bin/env bash
# Compare wstore's lossless commit with zstd and ZipNN on real base/fine-tune pairs.
#
#   bash benches/real_models.sh REAL_DIR [OUT_DIR]
#
# REAL_DIR is filled by fetch-real-models.sh and has pairs.json. OUT_DIR (default
# ./real-models-bench) receives the ZipNN venv, scratch stores and results.md; the script can
# be run again on the same OUT_DIR. It prints a Markdown table of stored sizes, in bytes and as
# original/stored ratios, for every pair, then the wall time and peak RSS (median of 3) of
# the commit and checkout of the first pair.
#
# Environment: CARGO_TARGET_DIR (default REPO/target); ZIPNN_SPEC, the pip requirement for
# ZipNN (default "zipnn", the newest release).
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: bash benches/real_models.sh REAL_DIR [OUT_DIR]" >&2
    exit 2
fi
real_dir=$(cd "$1" && pwd)
out_dir=${2:-$PWD/real-models-bench}
mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
zipnn_spec=${ZIPNN_SPEC:-zipnn}

if [ ! -f "$real_dir/pairs.json" ]; then
    echo "missing $real_dir/pairs.json: fill REAL_DIR with fetch-real-models.sh first" >&2
    exit 2
fi

# --- tools -------------------------------------------------------------------------------
if ! command -v zstd >/dev/null; then
    apt-get update && apt-get install -y zstd
fi

(cd "$repo" && cargo build --release --quiet)
wstore="$CARGO_TARGET_DIR/release/wstore"

venv="$out_dir/venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import zipnn" 2>/dev/null; then
    "$venv/bin/pip" install --quiet "$zipnn_spec"
fi

work="$out_dir/work"
rm -rf "$work"
mkdir -p "$work"

# ratio ORIGINAL STORED: original/stored with two decimals
ratio() {
    awk -v o="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.2f", o / s; else printf "-" }'
}

# objects_bytes STORE: bytes under the store's objects directory (files and directory entries)
objects_bytes() {
    du -sb "$1/objects" | cut -f1
}

# --- pairs ---------------------------------------------------------------------------------
# One line per pair: base<TAB>fine-tune<TAB>relation<TAB>strip prefixes joined by spaces
mapfile -t pairs < <(python3 -c '
import json, sys
for p in json.load(open(sys.argv[1])):
    print("\t".join([p["base"], p["ft"], p["relation"], " ".join(p.get("strip", []))]))
' "$real_dir/pairs.json")

rows=()
notes=()
index=0
for line in "${pairs[@]}"; do
    IFS=$'\t' read -r base ft relation strip <<<"$line"
    index=$((index + 1))
    base_file="$real_dir/$base.safetensors"
    ft_file="$real_dir/$ft.safetensors"
    original=$(stat -c %s "$ft_file")
    echo "[$index/${#pairs[@]}] $base -> $ft" >&2

    # wstore: a fresh store per pair, so objects/ grows by exactly this commit
    store="$work/store-$index"
    "$wstore" -q --store "$store" init >/dev/null
    "$wstore" -q --store "$store" base add base "$base_file" --json >"$work/base-$index.json"
    before=$(objects_bytes "$store")
    "$wstore" -q --store "$store" commit "$ft_file" --base base --name ft --codec lossless --json \
        >"$work/commit-$index.json"
    after=$(objects_bytes "$store")
    stored=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["stored_bytes"])' \
        "$work/commit-$index.json")
    name_map=$(python3 -c '
import json, sys
m = json.load(open(sys.argv[1])).get("name_map") or {}
print(repr(m.get("finetune_prefix", ""))+"→"+repr(m.get("base_prefix", "")) if m else "none")
' "$work/commit-$index.json")
    "$wstore" -q --store "$store" checkout ft -o "$work/checkout-$index.safetensors" --json >/dev/null
    if cmp -s "$ft_file" "$work/checkout-$index.safetensors"; then
        verified="cmp ok"
    else
        verified="CMP FAILED"
    fi
    rm -f "$work/checkout-$index.safetensors"

    # zstd of the fine-tune file alone, single-threaded
    zstd3=$(zstd -3 -q -c "$ft_file" | wc -c)
    zstd19=$(zstd -19 -q -c "$ft_file" | wc -c)

    # ZipNN alone and with its XOR delta mode on name-matched tensors
    strip_args=()
    for prefix in $strip; do
        strip_args+=(--strip "$prefix")
    done
    "$venv/bin/python" "$repo/benches/zipnn_sizes.py" --base "$base_file" --finetune "$ft_file" \
        "${strip_args[@]}" >"$work/zipnn-$index.json" 2>"$work/zipnn-$index.log"
    read -r zalone zdelta zalone_ok zdelta_ok zmatched < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print(r["alone_bytes"], r["delta_bytes"], r["alone_roundtrip_ok"], r["delta_roundtrip_ok"],
      "%d/%d" % (r["matched_tensors"], r["finetune_tensors"]))
' "$work/zipnn-$index.json")
    zalone_mark=""
    zdelta_mark=""
    [ "$zalone_ok" = True ] || zalone_mark=" †"
    [ "$zdelta_ok" = True ] || zdelta_mark=" †"

    rows+=("| $ft vs $base | $relation | $original | $stored ($(ratio "$original" "$stored")) | $zstd3 ($(ratio "$original" "$zstd3")) | $zstd19 ($(ratio "$original" "$zstd19")) | $zalone ($(ratio "$original" "$zalone"))$zalone_mark | $zdelta ($(ratio "$original" "$zdelta"))$zdelta_mark |")
    notes+=("- $ft: wstore objects/ grew by $((after - before)) bytes (du -sb, includes directory entries); checkout $verified; name map $name_map; ZipNN delta matched $zmatched tensors")
done

# --- timings ---------------------------------------------------------------------------------
# Median of 3 fresh runs of commit and of checkout for the first pair. /usr/bin/time prints
# wall seconds and peak RSS in KiB.
IFS=$'\t' read -r base ft _ _ <<<"${pairs[0]}"
commit_runs=()
checkout_runs=()
for run in 1 2 3; do
    store="$work/timing-$run"
    "$wstore" -q --store "$store" init >/dev/null
    "$wstore" -q --store "$store" base add base "$real_dir/$base.safetensors" >/dev/null
    /usr/bin/time -f '%e %M' -o "$work/time-commit" "$wstore" -q --store "$store" commit \
        "$real_dir/$ft.safetensors" --base base --name ft --codec lossless >/dev/null
    commit_runs+=("$(tail -1 "$work/time-commit")")
    /usr/bin/time -f '%e %M' -o "$work/time-checkout" "$wstore" -q --store "$store" checkout \
        ft -o "$work/timing-$run.safetensors" >/dev/null
    checkout_runs+=("$(tail -1 "$work/time-checkout")")
    cmp "$real_dir/$ft.safetensors" "$work/timing-$run.safetensors"
    rm -rf "$store" "$work/timing-$run.safetensors"
done

# median_of COLUMN RUN...: median of one column of "seconds KiB" lines
median_of() {
    local column=$1
    shift
    printf '%s\n' "$@" | awk -v c="$column" '{ print $c }' | sort -g | sed -n 2p
}

# --- report ----------------------------------------------------------------------------------
cpu=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
zipnn_version=$("$venv/bin/pip" show zipnn 2>/dev/null | awk '/^Version/ { print $2 }')
numpy_version=$("$venv/bin/python" -c 'import numpy; print(numpy.__version__)')
torch_version=$("$venv/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null)
{
    echo "## wstore vs zstd vs ZipNN on real fine-tunes"
    echo
    echo "Each cell: bytes (original/stored). wstore: \`commit --codec lossless\` into a store that holds only the base, \`stored_bytes\` from \`--json\`."
    echo "zstd: the fine-tune file alone, single-threaded. ZipNN alone: the fine-tune file as one float32 byte stream."
    echo "ZipNN delta: ZipNN's own XOR delta mode (\`delta_compressed_type=\"byte\"\`) on name-matched tensors concatenated in file order; the header and unmatched tensors are compressed alone and added."
    echo
    echo "| pair | relation | original bytes | wstore lossless | zstd -3 | zstd -19 | ZipNN alone | ZipNN delta |"
    echo "|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
    echo
    if printf '%s\n' "${rows[@]}" | grep -q '†'; then
        echo "† ZipNN's decompress did not return the input bytes for this stream, so the size is not a verified lossless size."
        echo
    fi
    printf '%s\n' "${notes[@]}"
    echo
    echo "Timing of \`$ft\` against \`$base\` (/usr/bin/time, 3 runs in fresh stores; wall time and peak RSS are each the median of their own column):"
    echo
    echo "| step | wall s | peak RSS KiB | runs (s KiB) |"
    echo "|---|---|---|---|"
    echo "| commit --codec lossless | $(median_of 1 "${commit_runs[@]}") | $(median_of 2 "${commit_runs[@]}") | $(IFS=';'; echo "${commit_runs[*]}") |"
    echo "| checkout | $(median_of 1 "${checkout_runs[@]}") | $(median_of 2 "${checkout_runs[@]}") | $(IFS=';'; echo "${checkout_runs[*]}") |"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) cores, $cpu"
    echo "- wstore: $("$wstore" --version) (git $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown), release build)"
    echo "- zstd: $(zstd --version)"
    echo "- ZipNN: $zipnn_version (numpy $numpy_version, torch $torch_version, python $("$venv/bin/python" -c 'import platform; print(platform.python_version())'))"
} | tee "$out_dir/results.md"
