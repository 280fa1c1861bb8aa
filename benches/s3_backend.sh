#!/usr/bin/env bash
# Measures the S3 object backend against the local filesystem backend, on a local Garage
# server (the S3-compatible store the tests use), in three parts:
#  (a) base add, lossless commit and checkout of a synthetic LLaMA-shaped family (2 decoder
#      layers at LLaMA-2-7B widths by default: 1.33 GB per file), fresh stores, median of RUNS;
#      throughput is original bytes / wall time, in MB/s (10^6 bytes per second).
#  (b) bytes a push sends: ft1 (and so its base) to an empty remote daemon, then ft2, a second
#      fine-tune of the same base, which should send its own objects only. Also the wall time
#      of each push, which for ft1 includes the remote rebuilding the new base once to check
#      its record against its objects.
#  (c) time to the first byte of a one-byte range read of the middle weight tensor, from a
#      freshly started daemon on the S3 store with an empty local cache (cold), then the same
#      request again (warm); the same on the filesystem store for comparison. Median of RUNS.
#
# Usage: bash benches/s3_backend.sh [WORK_DIR]
# Environment: WSTORE_GARAGE (the garage binary, default `garage` on PATH), LAYERS (default
#   2), RUNS (default 3), FAMILY (a directory with base, ft1 and ft2 .safetensors; generated
#   with examples/synth when missing). Needs curl and python3. Prints Markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
layers=${LAYERS:-2}
runs=${RUNS:-3}
family=${FAMILY:-$work/family}
garage=${WSTORE_GARAGE:-garage}
command -v "$garage" >/dev/null || { echo "garage not found: set WSTORE_GARAGE or run .ci/run once" >&2; exit 2; }
mkdir -p "$work"
work=$(cd "$work" && pwd)

cargo build --release --quiet --bin wstore --example synth
target=${CARGO_TARGET_DIR:-$PWD/target}
wstore=$target/release/wstore
if [ ! -f "$family/ft2.safetensors" ]; then
    "$target/release/examples/synth" --shape llama2-7b --layers "$layers" --finetunes 2 --out "$family"
fi
original=$(stat -c %s "$family/ft1.safetensors")

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
}
trap 'status=$?; cleanup; exit $status' EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

median() {
    sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Starts one single-node Garage on loopback with one bucket, and exports its credentials the
# way a user would set them for wstore.
garage_pid=
start_garage() {
    local dir=$work/garage s3_port rpc_port
    if [ -n "$garage_pid" ]; then
        kill -TERM "$garage_pid"
        wait "$garage_pid" || true
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    s3_port=$(free_port)
    rpc_port=$(free_port)
    cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
EOF
    chmod 600 "$dir/garage.toml"
    export AWS_ACCESS_KEY_ID=GK$(python3 -c 'import secrets; print(secrets.token_hex(12))')
    export AWS_SECRET_ACCESS_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
    export AWS_REGION=garage AWS_ENDPOINT_URL=http://127.0.0.1:$s3_port AWS_ALLOW_HTTP=true
    GARAGE_DEFAULT_ACCESS_KEY=$AWS_ACCESS_KEY_ID GARAGE_DEFAULT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
        GARAGE_DEFAULT_BUCKET=bench "$garage" -c "$dir/garage.toml" server --single-node --default-bucket \
        >"$dir/log" 2>&1 &
    garage_pid=$!
    pids+=("$garage_pid")
    # Any HTTP status (403 without a signature) means the S3 API listens.
    for _ in $(seq 100); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$AWS_ENDPOINT_URL/")" != 000 ] && return
        sleep 0.1
    done
    cat "$dir/log" >&2
    exit 1
}

# Starts a daemon on store $1; sets `url` and `daemon_pid`.
start_daemon() {
    "$wstore" --store "$1" serve --listen 127.0.0.1:0 >/dev/null 2>"$work/daemon-$(basename "$1").log" &
    daemon_pid=$!
    pids+=("$daemon_pid")
    for _ in $(seq 300); do
        [ -f "$1/daemon.json" ] && break
        sleep 0.1
    done
    url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$1/daemon.json")
}

stop_daemon() {
    kill -TERM "$daemon_pid"
    wait "$daemon_pid" || true
    while [ -f "$1/daemon.json" ]; do sleep 0.05; done
}

# Wall seconds of a command, its output discarded.
wall() {
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l
}

init_store() { # backend store run
    rm -rf "$2"
    if [ "$1" = s3 ]; then
        "$wstore" --store "$2" init --objects "s3://bench/$(basename "$2")-$3" >/dev/null
    else
        "$wstore" --store "$2" init >/dev/null
    fi
}

echo "## (a) base add, commit and checkout, $layers layers at LLaMA-2-7B widths, median of $runs"
echo
echo "| backend | base add s | commit s (MB/s) | checkout s (MB/s) |"
echo "|---|---|---|---|"
for backend in fs s3; do
    : >"$work/add.$backend"; : >"$work/commit.$backend"; : >"$work/checkout.$backend"
    for run in $(seq "$runs"); do
        store=$work/store-$backend
        # A fresh server per S3 run: an empty bucket, and no disk used by earlier runs.
        if [ "$backend" = s3 ]; then start_garage; fi
        init_store "$backend" "$store" "$run"
        wall "$wstore" --store "$store" --quiet base add base "$family/base.safetensors" >>"$work/add.$backend"
        wall "$wstore" --store "$store" --quiet commit "$family/ft1.safetensors" --base base --name ft1 --codec lossless >>"$work/commit.$backend"
        rm -rf "$store/cache" "$work/out.safetensors"
        wall "$wstore" --store "$store" --quiet checkout ft1 -o "$work/out.safetensors" >>"$work/checkout.$backend"
        cmp "$work/out.safetensors" "$family/ft1.safetensors"
        rm -f "$work/out.safetensors"
    done
    add=$(median <"$work/add.$backend")
    commit=$(median <"$work/commit.$backend")
    checkout=$(median <"$work/checkout.$backend")
    printf '| %s | %.1f | %.1f (%.0f) | %.1f (%.0f) |\n' "$backend" "$add" "$commit" \
        "$(echo "$original / $commit / 1000000" | bc -l)" "$checkout" "$(echo "$original / $checkout / 1000000" | bc -l)"
done

echo
echo "## (b) bytes sent by push (filesystem stores, two daemons)"
echo
local_store=$work/store-fs
remote_store=$work/store-remote
"$wstore" --store "$local_store" --quiet commit "$family/ft2.safetensors" --base base --name ft2 --codec lossless >/dev/null
init_store fs "$remote_store" 0
start_daemon "$remote_store"
remote_url=$url
remote_pid=$daemon_pid
echo "| push | objects sent | bytes sent | objects already there | seconds |"
echo "|---|---|---|---|---|"
for ref in ft1 ft2; do
    start=$(date +%s.%N)
    "$wstore" --store "$local_store" --quiet push "$remote_url" "$ref" --json >"$work/push-$ref.json"
    seconds=$(echo "$(date +%s.%N) - $start" | bc -l)
    python3 - "$ref" "$work/push-$ref.json" "$seconds" <<'EOF'
import json, sys
r = json.load(open(sys.argv[2]))
print(f"| {sys.argv[1]} | {r['objects_sent']} | {r['bytes_sent']} | {r['objects_present']} | {float(sys.argv[3]):.1f} |")
EOF
done
ft2_stored=$("$wstore" --store "$local_store" show ft2 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["commit"]["stored_bytes"])')
echo
echo "ft2's own stored bytes (\`show ft2\`): $ft2_stored"
daemon_pid=$remote_pid
stop_daemon "$remote_store"

echo
echo "## (c) first byte of the middle weight tensor (one-byte range), median of $runs"
echo
echo "| backend | cold ms | warm ms |"
echo "|---|---|---|"
for backend in fs s3; do
    store=$work/store-$backend
    : >"$work/cold.$backend"; : >"$work/warm.$backend"
    for _ in $(seq "$runs"); do
        rm -rf "$store/cache"
        start_daemon "$store"
        file=$(curl -sf "$url/v1/checkout/ft1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["files"][0]["url"])')
        if [ -z "${range_start:-}" ]; then
            range_start=$(python3 - "$url$file" <<'EOF'
import json, struct, sys, urllib.request
def read(start, end):
    request = urllib.request.Request(sys.argv[1], headers={"Range": f"bytes={start}-{end}"})
    with urllib.request.urlopen(request) as response:
        return response.read(), response.headers["Content-Range"]
head, content_range = read(0, 7)
n = struct.unpack("<Q", head)[0]
size = int(content_range.rsplit("/", 1)[1])
header = json.loads(read(8, 8 + n - 1)[0])
tensors = sorted((8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1])
                 for k, v in header.items() if k != "__metadata__")
print(next(s for s, e in tensors if e > size // 2 and e - s >= 1 << 20))
EOF
)
            # Reading the header rebuilt no tensor, but restart anyway so that the cache is cold.
            stop_daemon "$store"
            rm -rf "$store/cache"
            start_daemon "$store"
        fi
        curl -sf -o /dev/null -r "$range_start-$range_start" -w '%{time_total}\n' "$url$file" | awk '{ print $1 * 1000 }' >>"$work/cold.$backend"
        curl -sf -o /dev/null -r "$range_start-$range_start" -w '%{time_total}\n' "$url$file" | awk '{ print $1 * 1000 }' >>"$work/warm.$backend"
        stop_daemon "$store"
    done
    printf '| %s | %.1f | %.1f |\n' "$backend" "$(median <"$work/cold.$backend")" "$(median <"$work/warm.$backend")"
done
echo
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'), cores: $(nproc), garage: $("$garage" --version | head -1)"
