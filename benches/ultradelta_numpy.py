#!/usr/bin/env python3
"""Plain numpy version of the UltraDelta steps, for timing against the Rust codec.

It runs the same steps as `src/codec/ultradelta`: per-tensor uniform quantization, three-band
variance allocation, per-level random pruning, the 1/(1-p) rescale, and optionally the trace norm
of each 2-D pruned delta. It sizes the kept positions with Golomb-Rice and the codes with their
order-0 entropy but packs no bits, so it is a lower bound on the work of an encoder.

Inputs are either synthetic (base uniform in [-0.1, 0.1], Laplace deltas of scale 1e-3) or two
.npz files holding the same arrays by name:

    python3 benches/ultradelta_numpy.py --shapes 4096x4096,4096x11008 --sparsity 0.97 --bits 4
    python3 benches/ultradelta_numpy.py --base base.npz --finetuned ft.npz --trace-norm

It prints one line per step with wall time in seconds, then the totals as JSON. numpy runs these
element-wise steps on one core, so the per-core ratio against the Rust codec is
`numpy_seconds / (rust_seconds * rust_threads)`.
"""

import argparse
import json
import time

import numpy as np


def parse_shapes(text):
    shapes = []
    for item in text.split(","):
        dims = tuple(int(d) for d in item.lower().split("x"))
        shapes.append(dims)
    return shapes


def synthetic(shapes, seed):
    rng = np.random.default_rng(seed)
    tensors = {}
    for i, shape in enumerate(shapes):
        base = rng.uniform(-0.1, 0.1, size=shape).astype(np.float32)
        delta = rng.laplace(0.0, 1e-3, size=shape).astype(np.float32)
        tensors[f"layers.{i}.weight"] = (base, base + delta)
    return tensors


def load_pair(base_path, finetuned_path):
    base = np.load(base_path)
    finetuned = np.load(finetuned_path)
    return {
        name: (base[name].astype(np.float32), finetuned[name].astype(np.float32))
        for name in base.files
        if name in finetuned.files and base[name].shape == finetuned[name].shape
    }


def quantize(delta, bits):
    """Returns codes, min and step: code = round((x - min) / (max - min) * (2^b - 1))."""
    lo = float(delta.min())
    hi = float(delta.max())
    if hi == lo:
        return np.zeros(delta.shape, dtype=np.uint8), lo, 0.0
    levels = (1 << bits) - 1
    step = (hi - lo) / levels
    codes = np.floor((delta.astype(np.float64) - lo) / step + 0.5)
    return np.clip(codes, 0, levels).astype(np.uint8), lo, step


def allocate(stds, numels, p, s):
    """Three bands by running parameter count in ascending std order; returns rates by index."""
    order = sorted(range(len(stds)), key=lambda i: (stds[i], i))
    total = sum(numels)
    bands = [None] * len(stds)
    counts = {"low": 0, "mid": 0, "high": 0}
    running = 0
    for i in order:
        running += numels[i]
        if 3 * running <= total:
            band = "low"
        elif 3 * running <= 2 * total:
            band = "mid"
        else:
            band = "high"
        bands[i] = band
        counts[band] += numels[i]
    high = (p * total - p * counts["mid"] - (p + s) * counts["low"]) / counts["high"]
    high = min(max(high, 0.0), 0.99)
    rate = {"low": min(max(p + s, 0.0), 1.0), "mid": p, "high": high}
    return [rate[b] for b in bands]


def prune(codes, lo, step, rate, rng):
    """Drops round(n_g * q) random entries of every non-zero level; returns the kept mask."""
    flat = codes.reshape(-1)
    values = lo + np.arange(256) * step
    zero_levels = np.flatnonzero(values == 0.0)
    zero_code = int(zero_levels[0]) if zero_levels.size and step > 0 else None
    counts = np.bincount(flat, minlength=256)
    zeros = counts[zero_code] if zero_code is not None else 0
    z = zeros / flat.size
    q = 0.0 if zeros >= flat.size else max(0.0, (rate - z) / (1.0 - z))
    keep = np.ones(flat.size, dtype=bool)
    if zero_code is not None:
        keep[flat == zero_code] = False
    order = np.argsort(flat, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)))
    for level in np.flatnonzero(counts):
        if level == zero_code:
            continue
        members = order[starts[level] : starts[level + 1]]
        drop = int(round(members.size * q))
        if drop:
            keep[rng.choice(members, size=drop, replace=False)] = False
    return keep


def rice_bytes(kept_positions, numel):
    m = kept_positions.size
    if m == 0:
        return 0
    gaps = np.diff(kept_positions, prepend=-1) - 1
    k = max(int(np.log2(max((numel - m) / m, 1.0))), 0)
    bits = int(np.sum(gaps >> k)) + m * (k + 1)
    return (bits + 7) // 8 + 1


def entropy_bytes(codes):
    if codes.size == 0:
        return 0
    counts = np.bincount(codes, minlength=256)
    probs = counts[counts > 0] / codes.size
    return float(-(counts[counts > 0] * np.log2(probs)).sum() / 8)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="1024x1024,1024x4096", help="synthetic tensor shapes, ROWSxCOLS,...")
    parser.add_argument("--base", help=".npz file of base tensors")
    parser.add_argument("--finetuned", help=".npz file of fine-tuned tensors")
    parser.add_argument("--sparsity", type=float, default=0.97, help="target mean sparsity p")
    parser.add_argument("--bits", type=int, default=4, help="quantization bits")
    parser.add_argument("--step", type=float, default=0.01, help="sparsity step between bands")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace-norm", action="store_true", help="also time the SVD of every 2-D delta")
    args = parser.parse_args()

    if args.base and args.finetuned:
        tensors = load_pair(args.base, args.finetuned)
    else:
        tensors = synthetic(parse_shapes(args.shapes), args.seed)
    rng = np.random.default_rng(args.seed)
    timings = {}

    def timed(step, fn):
        start = time.perf_counter()
        result = fn()
        timings[step] = timings.get(step, 0.0) + time.perf_counter() - start
        return result

    names = list(tensors)
    quantized = {}
    for name in names:
        base, finetuned = tensors[name]
        delta = timed("delta", lambda: finetuned - base)
        quantized[name] = timed("quantize", lambda: quantize(delta, args.bits))

    def std_of(name):
        codes, lo, step = quantized[name]
        return float((lo + codes.astype(np.float64) * step).std())

    stds = [timed("std", lambda: std_of(name)) for name in names]
    rates = timed("allocate", lambda: allocate(stds, [tensors[n][0].size for n in names], args.sparsity, args.step))

    scale = 1.0 / (1.0 - args.sparsity)
    stored = {"values": 0.0, "positions": 0, "numel": 0}
    trace_norm = 0.0
    for name, rate in zip(names, rates):
        codes, lo, step = quantized[name]
        keep = timed("prune", lambda: prune(codes, lo, step, rate, rng))
        delta = timed("rescale", lambda: np.where(keep.reshape(codes.shape), (lo + codes * step) * scale, 0.0).astype(np.float32))
        kept_positions = np.flatnonzero(keep)
        stored["positions"] += timed("positions", lambda: rice_bytes(kept_positions, keep.size))
        stored["values"] += timed("values", lambda: entropy_bytes(codes.reshape(-1)[keep]))
        stored["numel"] += keep.size
        base = tensors[name][0]
        timed("reconstruct", lambda: (base + delta).astype(np.float32))
        if args.trace_norm and delta.ndim == 2:
            trace_norm += timed("trace_norm", lambda: float(np.linalg.svd(delta, compute_uv=False).sum()))

    for step, seconds in timings.items():
        print(f"{step:12s} {seconds:8.3f} s")
    print(json.dumps({"seconds": sum(timings.values()), "steps": timings, "bytes": stored, "trace_norm": trace_norm}))


if __name__ == "__main__":
    main()
