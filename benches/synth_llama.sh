#!/usr/bin/env bash
# Times base add, lossless commit and checkout of a synthetic LLaMA-shaped family, and reports
# peak RSS. Usage: bash benches/synth_llama.sh [LAYERS] [WORKDIR]
#   LAYERS: number of decoder layers at LLaMA-2-7B widths (default 32: the full 7B shape,
#   13.5 GB per file, about 45 GB of free disk needed); 2 gives a 1.3 GB family.
set -euo pipefail
layers="${1:-32}"
work="${2:-/tmp/wstore-synth-$layers}"
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin wstore --example synth
W="$PWD/target/release/wstore"
mkdir -p "$work"
if [[ ! -f "$work/ft1.safetensors" ]]; then
  target/release/examples/synth --shape llama2-7b --layers "$layers" --finetunes 1 --out "$work"
fi
T='wall %e s, peak RSS %M KiB'
S="$work/store"
rm -rf "$S"
"$W" --store "$S" init
echo "== base add";  /usr/bin/time -f "$T" "$W" --store "$S" base add llama "$work/base.safetensors"
echo "== commit --codec lossless"; /usr/bin/time -f "$T" "$W" --store "$S" commit "$work/ft1.safetensors" --base llama --name ft1 --codec lossless
echo "== checkout"; /usr/bin/time -f "$T" "$W" --store "$S" checkout ft1 -o "$work/out.safetensors"
cmp "$work/out.safetensors" "$work/ft1.safetensors" && echo "checkout is byte-identical"
rm -f "$work/out.safetensors"
"$W" --store "$S" ls
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'), cores: $(nproc)"
