#!/usr/bin/env bash
# Measures `wstore serve` over loopback HTTP with curl, in two parts.
#  (a) Full-checkout throughput of a lossless and a lossy commit, against `python3 -m
#      http.server` serving the lossless checkout as a plain file (median of RUNS each).
#  (b) Time to the first byte of the weight tensor in the middle of the checkpoint: the tensor
#      that contains the middle byte, or the next one of at least 1 MiB. The time is curl's
#      total for a one-byte range at the tensor's start, because the daemon sends that byte
#      only after rebuilding and verifying the whole tensor. Cold is a freshly started daemon
#      (tensor cache empty), warm the same request again, then the whole tensor, warm. Median
#      of RUNS.
#
# Usage: benches/daemon_http.sh FAMILY_DIR [WORK_DIR]
#   FAMILY_DIR holds base.safetensors and ft1.safetensors (e.g. from benches/synth_llama.sh).
#   WORK_DIR gets the store and the checkout; it is reused when it already holds the store.
# Or, for (b) alone on a store that exists (the full 7B shape, whose files need not be on
# disk any more): PART=ttfb STORE=DIR EXACT_REF=ref LOSSY_REF=ref benches/daemon_http.sh - WORK_DIR
# Environment: WSTORE (binary, default target/release/wstore), RUNS (default 5),
#   MAX_ERROR (lossy commit budget, default 2e-3).
# Needs curl and python3. Prints a Markdown table.
set -euo pipefail

family=${1:?usage: benches/daemon_http.sh FAMILY_DIR [WORK_DIR]}
work=${2:-$(mktemp -d)}
wstore=${WSTORE:-target/release/wstore}
runs=${RUNS:-5}
max_error=${MAX_ERROR:-2e-3}
part=${PART:-all}
store=${STORE:-$work/store}
exact_ref=${EXACT_REF:-exact}
lossy_ref=${LOSSY_REF:-lossy}
mkdir -p "$work"

daemon_pid=
plain_pid=
# A server stopped by SIGTERM makes `wait` return 143, which must not fail the script.
cleanup() {
    if [ -n "$daemon_pid" ]; then kill -TERM "$daemon_pid" 2>/dev/null; wait "$daemon_pid" 2>/dev/null || true; fi
    if [ -n "$plain_pid" ]; then kill -TERM "$plain_pid" 2>/dev/null; wait "$plain_pid" 2>/dev/null || true; fi
}
trap 'status=$?; cleanup; exit $status' EXIT

if [ ! -d "$store/catalog" ]; then
    "$wstore" --store "$store" init >/dev/null
    "$wstore" --store "$store" --quiet base add base "$family/base.safetensors" >/dev/null
    "$wstore" --store "$store" --quiet commit "$family/ft1.safetensors" --base base --name exact --codec lossless >/dev/null
    "$wstore" --store "$store" --quiet commit "$family/ft1.safetensors" --base base --name lossy --max-error "$max_error" >/dev/null
fi

start_daemon() {
    "$wstore" --store "$store" serve --listen 127.0.0.1:0 >/dev/null 2>"$work/daemon.log" &
    daemon_pid=$!
    for _ in $(seq 300); do
        [ -f "$store/daemon.json" ] && break
        kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/daemon.log" >&2; exit 1; }
        sleep 0.1
    done
    url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$store/daemon.json")
}

stop_daemon() {
    kill -TERM "$daemon_pid"
    wait "$daemon_pid" || true
    daemon_pid=
    # A stopping daemon removes its discovery file; a new one must not find the old one.
    while [ -f "$store/daemon.json" ]; do sleep 0.05; done
}

# Prints the file URL path of a target's only file, from its checkout manifest.
file_url() {
    curl -sf "$url/v1/checkout/$1" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(m["files"][0]["url"])'
}

median() {
    sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Prints the median MB/s (10^6 bytes per second) of RUNS full GETs of a URL to /dev/null.
throughput() {
    for _ in $(seq "$runs"); do
        curl -sf -o /dev/null -w '%{size_download} %{time_total}\n' "$1" | awk '{ printf "%.1f\n", $1 / $2 / 1e6 }'
    done | median
}

start_daemon
exact_url=$(file_url "$exact_ref")
lossy_url=$(file_url "$lossy_ref")

# The byte range of the weight tensor at the middle of the file, read through the daemon: the
# header's length, then the header.
read -r bytes tensor range_start range_end < <(python3 - "$url$exact_url" <<'EOF'
import json, struct, sys, urllib.request
def read(start, end):
    request = urllib.request.Request(sys.argv[1], headers={"Range": f"bytes={start}-{end}"})
    with urllib.request.urlopen(request) as response:
        return response.read(), response.headers["Content-Range"]
head, content_range = read(0, 7)
n = struct.unpack("<Q", head)[0]
size = int(content_range.rsplit("/", 1)[1])
header = json.loads(read(8, 8 + n - 1)[0])
middle = size // 2
# The tensor holding the middle byte, or, when that one is a small vector (a norm scale), the
# next tensor of at least 1 MiB: a weight matrix is what a reader waits for.
tensors = sorted((8 + n + info["data_offsets"][0], 8 + n + info["data_offsets"][1], name)
                 for name, info in header.items() if name != "__metadata__")
for start, end, name in tensors:
    if end > middle and end - start >= 1 << 20:
        print(size, name, start, end - 1)
        break
EOF
)

if [ "$part" = all ]; then
base_url=$(file_url base)
# The plain server serves a checkout written through the daemon, so it contains the same bytes.
mkdir -p "$work/plain"
rm -f "$work/plain/ft1.safetensors"
"$wstore" --store "$store" --quiet checkout exact -o "$work/plain/ft1.safetensors" >/dev/null
cmp "$work/plain/ft1.safetensors" "$family/ft1.safetensors"
plain_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$plain_port" --bind 127.0.0.1 --directory "$work/plain" >/dev/null 2>&1 &
plain_pid=$!
for _ in $(seq 100); do
    curl -sf -o /dev/null -r 0-0 "http://127.0.0.1:$plain_port/ft1.safetensors" && break
    sleep 0.1
done

plain_mbs=$(throughput "http://127.0.0.1:$plain_port/ft1.safetensors")
base_mbs=$(throughput "$url$base_url")
exact_mbs=$(throughput "$url$exact_url")
lossy_mbs=$(throughput "$url$lossy_url")
fi

# Appends "cold warm whole" seconds for the tensor, from a fresh daemon, to the file $2: the
# first byte cold, the first byte warm, and the whole tensor warm. It runs in this shell, not
# a subshell, so it can wait for the daemon it stops.
first_byte() {
    stop_daemon
    start_daemon
    for range in "$range_start-$range_start" "$range_start-$range_start" "$range_start-$range_end"; do
        curl -sf -o /dev/null -r "$range" -w '%{time_total} ' "$url$1" >>"$2"
    done
    echo >>"$2"
}

declare -A cold warm whole
for target in exact lossy; do
    path=$exact_url
    [ "$target" = lossy ] && path=$lossy_url
    samples="$work/first-byte-$target.txt"
    rm -f "$samples"
    for _ in $(seq "$runs"); do first_byte "$path" "$samples"; done
    cold[$target]=$(awk '{ print $1 }' "$samples" | median)
    warm[$target]=$(awk '{ print $2 }' "$samples" | median)
    whole[$target]=$(awk '{ print $3 }' "$samples" | median)
done

tensor_mib=$(awk -v a="$range_start" -v b="$range_end" 'BEGIN { printf "%.1f", (b - a + 1) / 1048576 }')
echo "file: $bytes bytes; middle tensor: $tensor ($tensor_mib MiB, bytes $range_start-$range_end); runs: $runs"
echo
ratio() { awk -v a="$1" -v b="$plain_mbs" 'BEGIN { printf "%.2f", a / b }'; }
echo "| what | base | lossless commit | lossy commit (--max-error $max_error) | python3 -m http.server |"
echo "|---|---|---|---|---|"
if [ "$part" = all ]; then
    echo "| full GET, MB/s (median) | $base_mbs | $exact_mbs | $lossy_mbs | $plain_mbs |"
    echo "| ratio to the static server | $(ratio "$base_mbs") | $(ratio "$exact_mbs") | $(ratio "$lossy_mbs") | 1.00 |"
fi
echo "| first byte of the middle tensor, cold (s) | | ${cold[exact]} | ${cold[lossy]} | |"
echo "| first byte of the middle tensor, warm (s) | | ${warm[exact]} | ${warm[lossy]} | |"
echo "| whole middle tensor, warm (s) | | ${whole[exact]} | ${whole[lossy]} | |"
