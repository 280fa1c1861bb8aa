#!/usr/bin/env python3
"""Measure ZipNN compressed sizes of a fine-tune, alone and as a delta against its base.

    python3 benches/zipnn_sizes.py --base BASE.safetensors --finetune FT.safetensors [--strip bert.]

It prints one JSON object: `alone_bytes`, `delta_bytes`, and `alone_roundtrip_ok` and
`delta_roundtrip_ok`, which are true only when decompressing every stream returned its input. A size
whose round trip failed is not a lossless size; the caller must flag it.

Alone: the whole fine-tune file as one byte stream, with ZipNN's byte grouping set for float32,
the dtype of every float tensor in the benchmark models.

Delta: ZipNN's own delta mode (`delta_compressed_type="byte"`, zipnn 0.5.x) XORs two byte
streams of equal length and compresses the result. A fine-tune file and its base differ in
length and tensor order, so the file-level mode cannot apply. This script therefore matches
tensors by name, after removing the `--strip` prefixes from either side's names, and requires equal dtype
and shape. It concatenates the matched fine-tune tensors in fine-tune order, and the base tensors
in the same order, one pair of streams per dtype, then feeds each pair to ZipNN's delta mode.
The safetensors header and the unmatched fine-tune tensors go into one more stream compressed
without a delta. `delta_bytes` is the sum over all streams.
"""

import argparse
import json
import struct
import sys

import zipnn

# safetensors dtype -> ZipNN `bytearray_dtype`, which selects the byte grouping.
ZIPNN_DTYPES = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I8": "int8",
    "U8": "uint8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
}


def read_safetensors(path):
    """Return (header length in bytes including its 8-byte prefix, tensors, file bytes).

    Each tensor is a dict with dtype, shape and its bytes as a memoryview.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    start = 8 + header_len
    view = memoryview(data)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        tensors[name] = {
            "dtype": info["dtype"],
            "shape": info["shape"],
            "begin": begin,
            "bytes": view[start + begin : start + end],
        }
    return start, tensors, data


def make_codec(dtype, delta=False):
    options = {"input_format": "byte", "bytearray_dtype": ZIPNN_DTYPES.get(dtype, "uint8")}
    if delta:
        options["delta_compressed_type"] = "byte"
    return zipnn.ZipNN(**options)


def compress_checked(data, dtype, base=None):
    """Compress `data` (XOR `base` when given) and return (compressed length, round trip ok)."""
    data = bytes(data)
    if base is None:
        compressed = make_codec(dtype).compress(data)
        restored = make_codec(dtype).decompress(compressed)
    else:
        base = bytes(base)
        compressed = make_codec(dtype, delta=True).compress(data, delta_second_data=base)
        restored = make_codec(dtype, delta=True).decompress(compressed, delta_second_data=base)
    ok = bytes(restored) == data
    if not ok:
        print(f"zipnn round trip failed on a {dtype} stream of {len(data)} bytes", file=sys.stderr)
    return len(compressed), ok


def strip_name(name, prefixes):
    for prefix in prefixes:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--finetune", required=True)
    parser.add_argument(
        "--strip",
        action="append",
        default=[],
        help="prefix to remove from base and fine-tune tensor names before matching, repeatable",
    )
    args = parser.parse_args()

    _, base_tensors, _ = read_safetensors(args.base)
    ft_header_len, ft_tensors, ft_data = read_safetensors(args.finetune)
    base_by_name = {strip_name(name, args.strip): t for name, t in base_tensors.items()}

    alone_bytes, alone_ok = compress_checked(ft_data, "F32")

    # dtype -> ([fine-tune tensor bytes], [base tensor bytes]), in fine-tune file order
    matched = {}
    rest = [ft_data[:ft_header_len]]
    matched_count = 0
    for name, tensor in sorted(ft_tensors.items(), key=lambda item: item[1]["begin"]):
        base = base_by_name.get(strip_name(name, args.strip))
        if base is not None and base["dtype"] == tensor["dtype"] and base["shape"] == tensor["shape"]:
            ft_parts, base_parts = matched.setdefault(tensor["dtype"], ([], []))
            ft_parts.append(tensor["bytes"])
            base_parts.append(base["bytes"])
            matched_count += 1
        else:
            rest.append(tensor["bytes"])

    streams = [
        compress_checked(b"".join(ft_parts), dtype, base=b"".join(base_parts))
        for dtype, (ft_parts, base_parts) in matched.items()
    ]
    streams.append(compress_checked(b"".join(rest), "F32"))
    delta_bytes = sum(size for size, _ in streams)
    delta_ok = all(ok for _, ok in streams)

    print(
        json.dumps(
            {
                "alone_bytes": alone_bytes,
                "delta_bytes": delta_bytes,
                "alone_roundtrip_ok": alone_ok,
                "delta_roundtrip_ok": delta_ok,
                "matched_tensors": matched_count,
                "finetune_tensors": len(ft_tensors),
            }
        )
    )


if __name__ == "__main__":
    main()
