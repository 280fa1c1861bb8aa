#!/usr/bin/env python3
"""Check a `wstore diff --json` report against the same figures computed in numpy.

    python benches/diff_numpy.py A.safetensors B.safetensors REPORT.json [--tolerance 1e-6]

A and B are the files the report compares: the files given to `wstore diff`, or checkouts
of the commits and bases it compared. The script parses both files itself (numpy only, so
BF16 works too), takes the tensor pairing from the report's `name` and `name_b`, recomputes
each row's status and figures in float64, and checks every float figure to the given
relative tolerance. It also checks that the rows cover every tensor of both files and that
the summary's counts and whole-model relative change agree. It exits 1 on any mismatch.
"""

import argparse
import json
import math
import struct
import sys

import numpy as np

# Little-endian numpy dtypes of the safetensors dtypes wstore decodes. BF16 is widened by hand.
NUMERIC = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "U16": "<u2", "I16": "<i2", "F16": "<f2",
    "U32": "<u4", "I32": "<i4", "F32": "<f4", "U64": "<u8", "I64": "<i8", "F64": "<f8",
}


def read_safetensors(path):
    """Returns {name: (dtype, shape, bytes)} for every tensor of a safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    header.pop("__metadata__", None)
    start = 8 + header_len
    return {
        name: (info["dtype"], list(info["shape"]), data[start + info["data_offsets"][0]:start + info["data_offsets"][1]])
        for name, info in header.items()
    }


def values(dtype, raw):
    """Decodes a tensor's bytes to float64, or returns None for dtypes compared bytewise."""
    if dtype == "BF16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).astype(np.float64)
    if dtype not in NUMERIC:
        return None
    return np.frombuffer(raw, dtype=NUMERIC[dtype]).astype(np.float64)


def figures(a, b, atol, rtol):
    """Computes the per-tensor figures `wstore diff` reports, with its rules for NaN and equal elements."""
    both_nan = np.isnan(a) & np.isnan(b)
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.where((a == b) | both_nan, 0.0, b - a)
    one_nan = np.isnan(d)
    absd = np.abs(d)
    with np.errstate(invalid="ignore"):
        differing = one_nan | (absd > atol + rtol * np.abs(a))
    a_norm = float(np.sqrt(np.sum(a * a)))
    b_norm = float(np.sqrt(np.sum(b * b)))
    diff_norm = float(np.sqrt(np.sum(d * d)))
    if a_norm > 0:
        relative = diff_norm / a_norm
    else:
        relative = 0.0 if diff_norm == 0 else None
    cosine = float(np.sum(a * b)) / (a_norm * b_norm) if a_norm > 0 and b_norm > 0 else None
    if one_nan.any():
        max_abs = float("nan")
    elif absd.size:
        max_abs = float(absd.max())
    else:
        max_abs = 0.0
    fraction = float(differing.sum()) / a.size if a.size else 0.0
    return {
        "a_norm": a_norm, "b_norm": b_norm, "diff_norm": diff_norm, "relative_change": relative,
        "cosine": cosine, "max_abs_diff": max_abs, "differing_fraction": fraction,
    }, int(differing.sum())


def close(x, y, tolerance):
    """Both undefined, or equal to `tolerance` relative to the larger magnitude."""
    undefined = lambda v: v is None or (isinstance(v, float) and math.isnan(v))
    if undefined(x) or undefined(y):
        return undefined(x) and undefined(y)
    return abs(x - y) <= tolerance * max(abs(x), abs(y))


def check(a_path, b_path, report, tolerance):
    a_file, b_file = read_safetensors(a_path), read_safetensors(b_path)
    atol, rtol = report["tolerance"]["atol"], report["tolerance"]["rtol"]
    problems = []
    seen_a, seen_b = set(), set()
    worst = 0.0
    a_squared = diff_squared = 0.0
    counts = {}
    for row in report["tensors"]:
        a_name = row["name"] if row["dtype_a"] is not None else None
        b_name = (row["name_b"] or row["name"]) if row["dtype_b"] is not None else None
        a_t = a_file.get(a_name) if a_name else None
        b_t = b_file.get(b_name) if b_name else None
        seen_a.add(a_name)
        seen_b.add(b_name)
        if (a_name and a_t is None) or (b_name and b_t is None):
            problems.append(f"{row['name']}: tensor missing from the files")
            continue
        expected_figures = None
        if a_t is None:
            status = "added"
        elif b_t is None:
            status = "removed"
        elif a_t[1] != b_t[1]:
            status = "shape_changed"
        else:
            a_values, b_values = values(a_t[0], a_t[2]), values(b_t[0], b_t[2])
            if a_values is not None and b_values is not None:
                expected_figures, differing = figures(a_values, b_values, atol, rtol)
            else:
                differing = int(a_t[2] != b_t[2])
            if a_t[0] != b_t[0]:
                status = "dtype_changed"
            else:
                status = "changed" if differing else "unchanged"
        counts[status] = counts.get(status, 0) + 1
        if row["status"] != status:
            problems.append(f"{row['name']}: status {row['status']}, numpy {status}")
        if expected_figures is None:
            continue
        a_squared += expected_figures["a_norm"] ** 2
        diff_squared += expected_figures["diff_norm"] ** 2
        for key, expected in expected_figures.items():
            got = row[key]
            if not close(got, expected, tolerance):
                problems.append(f"{row['name']}: {key} {got!r}, numpy {expected!r}")
            elif got is not None and expected is not None and not math.isnan(expected) and max(abs(got), abs(expected)) > 0:
                worst = max(worst, abs(got - expected) / max(abs(got), abs(expected)))

    unfiltered = not report["tensors"] or report["summary"]["tensors"] == len(report["tensors"])
    if unfiltered:
        for name in set(a_file) - seen_a:
            problems.append(f"{name}: in A but in no row")
        for name in set(b_file) - seen_b:
            problems.append(f"{name}: in B but in no row")
        for status, count in counts.items():
            if report["summary"]["by_status"][status] != count:
                problems.append(f"summary: {status} {report['summary']['by_status'][status]}, numpy {count}")
        whole = math.sqrt(diff_squared) / math.sqrt(a_squared) if a_squared > 0 else None
        if not close(report["summary"]["relative_change"], whole, tolerance):
            problems.append(f"summary: relative_change {report['summary']['relative_change']!r}, numpy {whole!r}")
    return problems, worst, len(report["tensors"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("report")
    parser.add_argument("--tolerance", type=float, default=1e-6, help="relative tolerance per figure")
    args = parser.parse_args()
    with open(args.report) as f:
        report = json.load(f)
    problems, worst, rows = check(args.a, args.b, report, args.tolerance)
    for problem in problems[:50]:
        print("MISMATCH", problem)
    verdict = "FAIL" if problems else "ok"
    summary = report["summary"]
    print(
        f"{verdict}: {rows} rows, {len(problems)} mismatches, largest relative deviation {worst:.2e}; "
        f"wstore whole-model relative change {summary['relative_change']}"
    )
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
