"""Reads a checkpoint from a running `wstore serve` with the PyPI `safetensors` package.

Usage: read_via_daemon.py FILE_URL LOCAL_CHECKOUT TENSOR_NAME

1. Downloads the whole file, loads it with safetensors.numpy.load and compares every tensor
   with the local checkout of the same commit.
2. Reads one tensor with three range requests (the 8-byte header length, the JSON header,
   then only that tensor's bytes) and compares it with the local checkout.

Exits non-zero with a message on the first difference.
"""

import json
import struct
import sys
import urllib.request

import numpy as np
from safetensors.numpy import load, load_file

# Little-endian numpy dtypes of the safetensors dtypes this script compares.
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def fetch(url, byte_range=None):
    request = urllib.request.Request(url)
    if byte_range is not None:
        request.add_header("Range", byte_range)
    with urllib.request.urlopen(request) as response:
        return response.status, response.read()


def check_full_file(url, expected):
    status, data = fetch(url)
    if status != 200:
        sys.exit(f"GET {url}: status {status}, expected 200")
    loaded = load(data)
    if sorted(loaded) != sorted(expected):
        sys.exit(f"tensor names differ: {sorted(loaded)} != {sorted(expected)}")
    for name, array in expected.items():
        if loaded[name].dtype != array.dtype or loaded[name].shape != array.shape:
            sys.exit(f"tensor {name}: dtype or shape differs")
        if not np.array_equal(loaded[name], array):
            sys.exit(f"tensor {name}: values differ")
    print(f"full file: {len(data)} bytes, {len(loaded)} tensors equal to the local checkout")


def fetch_range(url, start, end):
    """Fetches bytes start..end inclusive and checks that only those came back."""
    status, data = fetch(url, f"bytes={start}-{end}")
    if status != 206:
        sys.exit(f"range {start}-{end}: status {status}, expected 206")
    if len(data) != end - start + 1:
        sys.exit(f"range {start}-{end}: {len(data)} bytes, expected {end - start + 1}")
    return data


def check_one_tensor(url, local_path, expected, name):
    (header_len,) = struct.unpack("<Q", fetch_range(url, 0, 7))
    header = json.loads(fetch_range(url, 8, 8 + header_len - 1))
    info = header[name]
    begin, end = info["data_offsets"]
    data_start = 8 + header_len
    raw = fetch_range(url, data_start + begin, data_start + end - 1)
    array = np.frombuffer(raw, dtype=np.dtype(DTYPES[info["dtype"]])).reshape(info["shape"])
    if not np.array_equal(array, expected[name]):
        sys.exit(f"tensor {name}: values read by range differ from the local checkout")
    with open(local_path, "rb") as local:
        local.seek(data_start + begin)
        if local.read(end - begin) != raw:
            sys.exit(f"tensor {name}: bytes read by range differ from the local checkout")
    print(f"tensor {name}: 3 range requests, {len(raw)} tensor bytes, equal to the local checkout")


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    url, local_path, name = sys.argv[1:4]
    expected = load_file(local_path)
    check_full_file(url, expected)
    check_one_tensor(url, local_path, expected, name)


if __name__ == "__main__":
    main()
