#!/usr/bin/env python3
"""Build DARE checkpoints at a given file size and compare many candidates with rxnfp.

DARE (drop and rescale) drops each delta entry with probability q and scales
the survivors by 1/(1-q). It does not
quantize. benches/rxnfp_quality.sh uses it as the baseline for wstore's
UltraDelta codec at the same stored size.

Commands:
  build    drop the deltas of the tensors that wstore stored lossily, choosing q
           so that the estimated DARE file size matches a wstore commit's
           stored bytes, and write the rebuilt checkpoint.
  compare  run the `compare` measurement of benches/rxnfp_forward.py for one
           reference and many candidates, running the reference forward pass
           once per reaction instead of once per candidate.
  table    print the Markdown table of one fine-tune from the files that
           rxnfp_quality.sh wrote.

Size model of a DARE file (an estimate, no file is encoded):
  - each kept delta value costs 4 bytes (float32);
  - kept positions are coded as gaps (index - previous kept index, the first
    one counted from -1) in Elias-gamma, 2*floor(log2 gap)+1 bits each, summed
    over the realized mask and rounded up to whole bytes per tensor;
  - every tensor that wstore did not store lossily costs the bytes wstore spent
    on it. That rest is the commit's stored bytes minus the object bytes of its
    lossy tensors, so headers and exact tensors cost the same in both files.
"""

import argparse
import json
import os
import sys
from pathlib import Path

# One BLAS thread, as in rxnfp_forward.py, because threads slow down these small matrices.
for _threads_variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_threads_variable, "1")

import numpy as np
from safetensors.numpy import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rxnfp_forward  # noqa: E402  (needs the path entry above)


def elias_gamma_bytes(kept_indices):
    """Return the bytes of the Elias-gamma code of the gaps between kept indices."""
    if kept_indices.size == 0:
        return 0
    gaps = np.diff(kept_indices, prepend=-1).astype(np.int64)
    bits = int((2 * np.floor(np.log2(gaps)).astype(np.int64) + 1).sum())
    return (bits + 7) // 8


def dare_bytes(draws, q):
    """Return the estimated bytes of the DARE-coded tensors for drop rate q."""
    total = 0
    for uniform in draws.values():
        kept = np.flatnonzero(uniform >= q)
        total += 4 * kept.size + elias_gamma_bytes(kept)
    return total


def choose_drop_rate(draws, budget):
    """Bisect q so that the DARE bytes are at most `budget`, as close as 1e-9 in q allows.

    The kept sets are nested (an entry is kept when its uniform draw is >= q), so
    the kept count falls as q rises. The gap code size is nearly but not strictly
    monotone, which bisection tolerates.
    """
    low, high = 0.0, 1.0
    if dare_bytes(draws, low) <= budget:
        return low
    for _ in range(40):
        middle = (low + high) / 2
        if dare_bytes(draws, middle) <= budget:
            high = middle
        else:
            low = middle
    return high


def lossy_tensor_names(show):
    """Return (fine-tune name, base name) of each tensor that `wstore show --json` lists as ultradelta."""
    return sorted(
        (tensor["name"], tensor["base_tensor"])
        for tensor in show["tensors"]
        if tensor["storage"] == "ultradelta"
    )


def build(args):
    commit = json.loads(Path(args.commit).read_text())
    show = json.loads(Path(args.show).read_text())
    target_bytes = commit["stored_bytes"]
    # Every other byte of the commit is kept as wstore stored it, so the lossy tensors get
    # the bytes that wstore spent on them.
    # A budget commit may find no tensor for which a lossy code beats the lossless delta.
    # Then the report has "lossy": null, no tensor is dropped and the DARE file is the fine-tune.
    lossy_bytes = commit["lossy"]["object_bytes"] if commit["lossy"] else 0
    rest_bytes = target_bytes - lossy_bytes
    names = lossy_tensor_names(show)

    base = load_file(args.base)
    finetune = load_file(args.finetune)
    rng = np.random.default_rng(args.seed)
    draws, deltas = {}, {}
    for name, base_name in names:
        if base_name not in base or base[base_name].shape != finetune[name].shape:
            sys.exit(f"error: lossy tensor {name} has no base tensor of the same shape")
        delta = finetune[name].astype(np.float32) - base[base_name].astype(np.float32)
        deltas[name] = (base_name, delta.ravel())
        draws[name] = rng.random(delta.size)

    q = choose_drop_rate(draws, lossy_bytes)
    out = dict(finetune)
    for name, (base_name, delta) in deltas.items():
        keep = draws[name] >= q
        scale = np.float32(1.0 / (1.0 - q)) if q < 1.0 else np.float32(0.0)
        dropped = np.where(keep, delta * scale, np.float32(0.0)).astype(np.float32)
        out[name] = (base[base_name].ravel() + dropped).reshape(finetune[name].shape)
    save_file(out, args.out)

    numerator = sum(float(np.sum((out[n].ravel() - base[b].ravel() - d) ** 2)) for n, (b, d) in deltas.items())
    denominator = sum(float(np.sum(d.astype(np.float64) ** 2)) for _, d in deltas.values())
    dare_lossy_bytes = dare_bytes(draws, q)
    report = {
        "drop_rate": q,
        "lossy_tensors": len(deltas),
        "lossy_bytes_wstore": lossy_bytes,
        "lossy_bytes_dare": dare_lossy_bytes,
        "stored_bytes_wstore": target_bytes,
        "stored_bytes_dare": rest_bytes + dare_lossy_bytes,
        "original_bytes": commit["original_bytes"],
        "delta_rel_error": (numerator / denominator) ** 0.5 if denominator else 0.0,
    }
    print(json.dumps(report))
    return 0


class CachedEncoder:
    """An encoder whose forward results are memoized by token ids, to reuse the reference."""

    def __init__(self, encoder):
        self._encoder = encoder
        self._states = {}
        self._logits = {}

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def hidden_states(self, token_ids):
        key = tuple(int(token) for token in token_ids)
        if key not in self._states:
            self._states[key] = self._encoder.hidden_states(token_ids)
        return self._states[key]

    def logits(self, hidden_states):
        key = id(hidden_states)
        if key not in self._logits:
            self._logits[key] = (hidden_states, self._encoder.logits(hidden_states))
        return self._logits[key][1]


def compare(args):
    config = rxnfp_forward.load_config(None)
    vocab = rxnfp_forward.load_vocab(args.vocab, args.reference)
    reactions = rxnfp_forward.load_reactions(args.reactions)
    reference = CachedEncoder(rxnfp_forward.load_encoder(args.reference, config))
    for label, path in zip(args.labels, args.candidates):
        candidate = rxnfp_forward.load_encoder(path, config)
        rxnfp_forward.check_compatible(reference, candidate)
        result = rxnfp_forward.measure(reference, candidate, reactions, vocab)
        result["label"] = label
        result["candidate"] = path
        print(json.dumps(result), flush=True)
    return 0


def format_top1(value):
    return "n/a" if value is None else f"{100 * value:.1f} %"


def format_cosine(value):
    return "NaN" if value is None else f"{value:.6f}"


def table(args):
    """Print the Markdown table of one fine-tune from the files that rxnfp_quality.sh wrote."""
    directory = Path(args.dir)
    results = {}
    compare_file = directory / "compare.jsonl"
    if compare_file.is_file():
        for line in compare_file.read_text().splitlines():
            result = json.loads(line)
            results[result["label"]] = result

    classifier = args.finetune == "bert_ft_10k_25s"
    print(f"### {args.finetune}" + (" (classifier, 50 labels)" if classifier else ""))
    print()
    header = [
        "row", "file ratio", "paper ratio", "delta rel. error", "sparsity",
        "cos mean", "cos min",
    ]
    if classifier:
        header.append("top-1")
    header += ["DARE q", "DARE file ratio", "DARE delta rel. error", "DARE cos mean", "DARE cos min"]
    if classifier:
        header.append("DARE top-1")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))

    for index in range(args.rows):
        row_dir = directory / f"row{index}"
        if not (row_dir / "dare.json").is_file():
            print(f"| row {index} | " + " | ".join(["missing"] * (len(header) - 1)) + " |")
            continue
        label = (row_dir / "label").read_text().strip()
        commit = json.loads((row_dir / "commit.json").read_text())
        dare = json.loads((row_dir / "dare.json").read_text())
        lossy = commit["lossy"] or {}
        ours = results.get(f"row{index}/wstore", {})
        theirs = results.get(f"row{index}/dare", {})
        cells = [
            label,
            f"{commit['original_bytes'] / commit['stored_bytes']:.2f}",
            f"{lossy['paper_ratio']:.2f}" if lossy else "none lossy",
            f"{lossy['delta_rel_error']:.4f}" if lossy else "0 (exact)",
            f"{lossy['sparsity']:.3f}" if lossy else "-",
            format_cosine(ours.get("cls_cosine_mean")) if ours else "missing",
            format_cosine(ours.get("cls_cosine_min")) if ours else "missing",
        ]
        if classifier:
            cells.append(format_top1(ours.get("top1_agreement")) if ours else "missing")
        cells += [
            f"{dare['drop_rate']:.4f}",
            f"{dare['original_bytes'] / dare['stored_bytes_dare']:.2f}",
            f"{dare['delta_rel_error']:.4f}",
            format_cosine(theirs.get("cls_cosine_mean")) if theirs else "missing",
            format_cosine(theirs.get("cls_cosine_min")) if theirs else "missing",
        ]
        if classifier:
            cells.append(format_top1(theirs.get("top1_agreement")) if theirs else "missing")
        print("| " + " | ".join(cells) + " |")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    builder = commands.add_parser("build", help="write a DARE checkpoint of a given size")
    builder.add_argument("--base", required=True, help="base safetensors file")
    builder.add_argument("--finetune", required=True, help="exact fine-tune safetensors file")
    builder.add_argument("--commit", required=True, help="output of `wstore commit --json`")
    builder.add_argument("--show", required=True, help="output of `wstore show REF --json`")
    builder.add_argument("--out", required=True, help="output safetensors file")
    builder.add_argument("--seed", type=int, default=0, help="seed of the drop mask")

    comparer = commands.add_parser("compare", help="compare many candidates to one reference")
    comparer.add_argument("--reference", required=True)
    comparer.add_argument("--vocab", required=True)
    comparer.add_argument("--candidates", nargs="+", required=True)
    comparer.add_argument("--labels", nargs="+", required=True)
    comparer.add_argument(
        "--reactions",
        type=Path,
        default=rxnfp_forward.DEFAULT_REACTIONS,
        help="reaction SMILES file (default: benches/rxnfp_reactions.txt)",
    )

    tabler = commands.add_parser("table", help="print the Markdown table of one fine-tune")
    tabler.add_argument("--finetune", required=True, help="bert_ft or bert_ft_10k_25s")
    tabler.add_argument("--dir", required=True, help="OUTDIR/FINETUNE of rxnfp_quality.sh")
    tabler.add_argument("--rows", type=int, required=True, help="number of rows")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "build":
        return build(args)
    if args.command == "table":
        return table(args)
    if len(args.labels) != len(args.candidates):
        sys.exit("error: pass one --labels entry per --candidates entry")
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
