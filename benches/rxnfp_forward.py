#!/usr/bin/env python3
r"""Run the rxnfp reaction BERT in pure numpy to check a rebuilt checkpoint.

rxnfp 0.1.0 (Schwaller et al., Nat. Mach. Intell. 2021) turns a reaction SMILES
into a 256-d fingerprint: the last hidden state of the [CLS] token of a
12-layer BERT encoder. This script repeats that forward pass without torch or
transformers, so that wstore can run an original checkpoint and one rebuilt
from its lossy delta store on the same reactions and compare the outputs.

Commands:
  check-fingerprint  run the example reaction of the rxnfp README and check the
                     first five fingerprint values it prints (exit 1 if not).
  compare            run two checkpoints on every reaction of a file and report
                     the cosine of their [CLS] vectors and, when both have a
                     classifier head, how often their top-1 classes agree.

Usage:
  pip install -r benches/rxnfp_requirements.txt
  pip download rxnfp==0.1.0 --no-deps -d /tmp/rxnfp   # for the vocabulary
  python3 benches/rxnfp_forward.py check-fingerprint \
      --model bert_ft.safetensors --vocab /tmp/rxnfp/rxnfp-0.1.0-py3-none-any.whl
  python3 benches/rxnfp_forward.py compare --reference A.safetensors \
      --candidate B.safetensors --vocab /tmp/rxnfp/rxnfp-0.1.0-py3-none-any.whl [--json]

The SMILES vocabulary ships only inside the rxnfp wheel, so --vocab takes
either its vocab.txt or the wheel itself. Without --vocab the script looks at
$RXNFP_VOCAB, then for vocab.txt or the wheel next to the model file, then in
an installed rxnfp package.

The pass runs in float64 while rxnfp runs torch in float32, and erf comes from
a polynomial with max abs error 1.5e-7. The README fingerprint is matched to
within 1e-6.

Exit status: 0 on success, 1 when check-fingerprint finds another fingerprint
or a compare threshold (--min-cosine, --min-top1) or non-finite output fails,
2 on invalid input (missing file, tensor or vocabulary).
"""

import argparse
import hashlib
import importlib.util
import io
import json
import math
import os
import re
import sys
import zipfile
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().with_name("rxnfp_requirements.txt")

# The matrices here are at most 512 x 512, too small for BLAS threads to pay
# off, and on a busy 2-core machine a threaded OpenBLAS ran them about 10x
# slower. numpy reads these variables when it loads BLAS, so they are set
# before the import. Values that the caller set are kept.
for _threads_variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_threads_variable, "1")

try:
    import numpy as np
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
except ImportError as import_error:
    sys.exit(
        f"error: {import_error}. Install the pinned dependencies with: "
        f"pip install -r {REQUIREMENTS}"
    )

DEFAULT_REACTIONS = Path(__file__).resolve().with_name("rxnfp_reactions.txt")

# Paths of the vocabulary and config inside the rxnfp 0.1.0 wheel. The three
# models in the wheel (bert_pretrained, bert_ft, bert_ft_10k_25s) ship
# byte-identical vocab.txt files.
WHEEL_NAME = "rxnfp-0.1.0-py3-none-any.whl"
WHEEL_VOCAB_MEMBER = "rxnfp/models/transformers/bert_ft/vocab.txt"
WHEEL_CONFIG_MEMBER = "rxnfp/models/transformers/bert_ft/config.json"
VOCAB_SHA256 = "399868a653e85549ce150af4a1f6cd2776240c6a3d951ced2120565f00f027fd"
VOCAB_HELP = (
    "pass --vocab with the vocab.txt of rxnfp 0.1.0 or with the wheel itself, "
    "e.g. `pip download rxnfp==0.1.0 --no-deps -d /tmp/rxnfp` and then "
    f"`--vocab /tmp/rxnfp/{WHEEL_NAME}`. Without --vocab the script tries, in "
    "order: $RXNFP_VOCAB, vocab.txt next to the model file, "
    f"{WHEEL_NAME} next to the model file, and an installed rxnfp package"
)

# Architecture settings of config.json in rxnfp 0.1.0, the same for its three
# models. Layer count and sizes are read from the tensor shapes instead.
DEFAULT_CONFIG = {
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "num_attention_heads": 4,
}

CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
UNK_TOKEN = "[UNK]"

# SMILES token grammar of rxnfp 0.1.0 (SMI_REGEX_PATTERN in
# rxnfp/tokenization.py). Python's regex takes the first alternative that
# matches, so the order matters: "Br" before "B", ">>" before ">". Characters
# that match no alternative (spaces, for example) are dropped, as in rxnfp.
# fmt: off
SMILES_TOKEN_ALTERNATIVES = (
    r"\%\([0-9]{3}\)",  # three-digit ring-closure label, %(123)
    r"\[[^\]]+]",  # bracket atom: [N+], [C@@H], [Na+]
    r"Br?", r"Cl?",  # before the one-letter B and C
    r"N", r"O", r"S", r"P", r"F", r"I",
    r"b", r"c", r"n", r"o", r"s", r"p",  # aromatic atoms
    r"\|", r"\(", r"\)", r"\.", r"=", r"#", r"-", r"\+", r"\\", r"\/",
    r":", r"~", r"@", r"\?",
    r">>?",  # reaction arrow, or a single ">" that sets off the reagents
    r"\*", r"\$",
    r"\%[0-9]{2}",  # two-digit ring closure, %12
    r"[0-9]",  # one-digit ring closure
)
# fmt: on
SMILES_TOKEN_RE = re.compile("(" + "|".join(SMILES_TOKEN_ALTERNATIVES) + ")")

# The example of the rxnfp 0.1.0 README and the first five values of the
# fingerprint that the README prints for it with the default model, bert_ft.
EXAMPLE_REACTION = (
    "Nc1cccc2cnccc12.O=C(O)c1cc([N+](=O)[O-])c(Sc2c(Cl)cncc2Cl)s1"
    ">>O=C(Nc1cccc2cnccc12)c1cc([N+](=O)[O-])c(Sc2c(Cl)cncc2Cl)s1"
)
EXAMPLE_FINGERPRINT_START = (
    -2.0174953937530518,
    1.7602033615112305,
    -1.3323537111282349,
    -1.1095019578933716,
    1.2254549264907837,
)

BERT_PREFIX = "bert."


class HarnessError(Exception):
    """An input (file, tensor, option) that the harness cannot use."""


# ---------------------------------------------------------------- resources


def read_resource(path, wheel_member):
    """Return the bytes of a file, or of `wheel_member` when `path` is a wheel."""
    path = Path(path)
    try:
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as wheel:
                return wheel.read(wheel_member)
        return path.read_bytes()
    except FileNotFoundError:
        raise HarnessError(f"file not found: {path}") from None
    except KeyError:
        raise HarnessError(
            f"{path} has no member {wheel_member}, so it is not the rxnfp 0.1.0 wheel"
        ) from None
    except (OSError, zipfile.BadZipFile) as err:
        raise HarnessError(f"failed to read {path}: {err}") from None


def find_vocab(model_path):
    """Return the first vocabulary source that exists, or None."""
    from_env = os.environ.get("RXNFP_VOCAB")
    if from_env:
        return Path(from_env)

    model_dir = Path(model_path).resolve().parent
    for candidate in (model_dir / "vocab.txt", model_dir / WHEEL_NAME):
        if candidate.is_file():
            return candidate

    # find_spec locates the package without importing it, so an rxnfp install
    # without torch still works here.
    spec = importlib.util.find_spec("rxnfp")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "models/transformers/bert_ft/vocab.txt"
            if candidate.is_file():
                return candidate
    return None


def load_vocab(vocab_arg, model_path):
    """Map each token to its id (its 0-based line number), as BertTokenizer does."""
    source = Path(vocab_arg) if vocab_arg else find_vocab(model_path)
    if source is None:
        raise HarnessError(f"SMILES vocabulary not found: {VOCAB_HELP}")
    data = read_resource(source, WHEEL_VOCAB_MEMBER)

    digest = hashlib.sha256(data).hexdigest()
    if digest != VOCAB_SHA256:
        print(
            f"warning: {source} has sha256 {digest}, not that of the rxnfp 0.1.0 "
            f"vocabulary ({VOCAB_SHA256}), so token ids may not match the model",
            file=sys.stderr,
        )

    # Read lines as BertTokenizer's load_vocab does: universal newlines, only
    # the trailing "\n" stripped, and a later duplicate token wins.
    try:
        lines = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8").readlines()
    except UnicodeDecodeError as err:
        raise HarnessError(f"vocabulary {source} is not valid UTF-8: {err}") from None
    vocab = {line.rstrip("\n"): index for index, line in enumerate(lines)}
    for token in (CLS_TOKEN, SEP_TOKEN, UNK_TOKEN):
        if token not in vocab:
            raise HarnessError(f"vocabulary {source} has no {token} token: {VOCAB_HELP}")
    return vocab


def load_config(config_arg):
    """Return the architecture settings, from --config when given."""
    config = dict(DEFAULT_CONFIG)
    if config_arg:
        data = read_resource(config_arg, WHEEL_CONFIG_MEMBER)
        try:
            loaded = json.loads(data)
        except ValueError as err:
            raise HarnessError(f"invalid JSON in config {config_arg}: {err}") from None
        if not isinstance(loaded, dict):
            raise HarnessError(f"config {config_arg} is not a JSON object")
        for key in DEFAULT_CONFIG:
            if key in loaded:
                config[key] = loaded[key]

    if config["hidden_act"] != "gelu":
        raise HarnessError(
            f"unsupported hidden_act {config['hidden_act']!r}: only 'gelu' "
            "(the erf form) is implemented"
        )
    for key in ("num_attention_heads", "max_position_embeddings"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise HarnessError(f"invalid {key} {value!r} in config: expected a positive integer")
    if not isinstance(config["layer_norm_eps"], (int, float)) or config["layer_norm_eps"] <= 0:
        raise HarnessError(
            f"invalid layer_norm_eps {config['layer_norm_eps']!r} in config: "
            "expected a positive number"
        )
    return config


def load_reactions(path):
    """Read one reaction SMILES a line, skipping blank lines and '#' comments."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise HarnessError(f"reactions file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise HarnessError(f"failed to read reactions file {path}: {err}") from None
    reactions = [line.strip() for line in lines]
    reactions = [line for line in reactions if line and not line.startswith("#")]
    if not reactions:
        raise HarnessError(f"reactions file {path} has no reaction lines")
    return reactions


# ---------------------------------------------------------------- tokenizer


def encode_reaction(reaction, vocab, max_length):
    """Return token ids [CLS] + SMILES tokens + [SEP], and the [UNK] count.

    rxnfp calls encode_plus with max_length=max_position_embeddings and
    truncation=True, so a single sequence loses tokens from its end until it
    fits together with [CLS] and [SEP]. Case is kept (do_lower_case=False).
    """
    unk_id = vocab[UNK_TOKEN]
    ids = [vocab.get(token, unk_id) for token in SMILES_TOKEN_RE.findall(reaction)]
    unknown = sum(1 for token_id in ids if token_id == unk_id)
    ids = ids[: max(max_length - 2, 0)]
    return np.array([vocab[CLS_TOKEN], *ids, vocab[SEP_TOKEN]], dtype=np.int64), unknown


# ---------------------------------------------------------------- model

# Abramowitz & Stegun, Handbook of Mathematical Functions, formula 7.1.26:
# erf(x) = 1 - (a1 t + ... + a5 t^5) exp(-x^2) with t = 1 / (1 + p x), x >= 0,
# max abs error 1.5e-7, about the float32 rounding of the torch original.
# numpy has no erf, and math.erf called per element took about 0.1 s per
# 100-token forward pass, twice the time of the rest of the pass.
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def erf(x):
    magnitude = np.abs(x)
    t = 1.0 / (1.0 + _ERF_P * magnitude)
    polynomial = 0.0
    for coefficient in reversed(_ERF_A):
        polynomial = (polynomial + coefficient) * t
    return np.sign(x) * (1.0 - polynomial * np.exp(-magnitude * magnitude))


def gelu(x):
    """GELU in the erf form that HF BERT uses for hidden_act 'gelu'."""
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def layer_norm(x, weight, bias, eps):
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + eps) * weight + bias


def softmax(scores):
    shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def load_checkpoint(path):
    """Load tensors by name, with any `bert.` prefix removed."""
    try:
        raw = load_file(str(path))
    except FileNotFoundError:
        raise HarnessError(f"checkpoint not found: {path}") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise HarnessError(f"failed to read safetensors file {path}: {err}") from None

    tensors = {}
    for name, tensor in raw.items():
        key = name[len(BERT_PREFIX) :] if name.startswith(BERT_PREFIX) else name
        if key in tensors:
            raise HarnessError(
                f"checkpoint {path} has tensor {key!r} both with and without the "
                f"{BERT_PREFIX!r} prefix. Keep one of them"
            )
        tensors[key] = tensor
    return tensors


class BertEncoder:
    """BERT encoder (embeddings, layers, pooler, optional classifier) in float64.

    Dropout is off, as in rxnfp's model.eval(). Linear weights keep the
    PyTorch layout [out_features, in_features], so a layer computes x @ W.T + b.
    """

    def __init__(self, tensors, config, source):
        self.source = str(source)
        self.tensor_count = len(tensors)
        self._tensors = tensors
        self.eps = float(config["layer_norm_eps"])
        self.num_heads = config["num_attention_heads"]

        word = self._take("embeddings.word_embeddings.weight", ndim=2)
        self.vocab_size, self.hidden_size = word.shape
        if self.hidden_size % self.num_heads:
            raise HarnessError(
                f"hidden size {self.hidden_size} of {self.source} is not a multiple of "
                f"num_attention_heads {self.num_heads}. Pass the matching --config"
            )
        hidden = self.hidden_size

        positions = self._take("embeddings.position_embeddings.weight", ndim=2, columns=hidden)
        self.max_positions = min(positions.shape[0], config["max_position_embeddings"])
        self.embeddings = {
            "word": word,
            "position": positions,
            "token_type": self._take(
                "embeddings.token_type_embeddings.weight", ndim=2, columns=hidden
            ),
            "norm": self._take_norm("embeddings.LayerNorm", hidden),
        }

        self.layers = []
        while f"encoder.layer.{len(self.layers)}.attention.self.query.weight" in tensors:
            self.layers.append(self._take_layer(len(self.layers)))
        if not self.layers:
            raise HarnessError(f"checkpoint {self.source} has no encoder.layer.0 tensors")

        self.pooler = None
        if "pooler.dense.weight" in tensors:
            self.pooler = self._take_linear("pooler.dense", hidden, hidden)
        self.classifier = None
        if "classifier.weight" in tensors:
            if self.pooler is None:
                raise HarnessError(
                    f"checkpoint {self.source} has classifier.* but no pooler.dense.* tensors"
                )
            num_labels = self._take("classifier.weight", ndim=2, columns=hidden).shape[0]
            self.classifier = self._take_linear("classifier", num_labels, hidden)

    def _take(self, name, ndim, columns=None):
        tensor = self._tensors.get(name)
        if tensor is None:
            raise HarnessError(
                f"checkpoint {self.source} has no tensor {name!r} (with or without "
                f"the {BERT_PREFIX!r} prefix)"
            )
        if tensor.ndim != ndim or (columns is not None and tensor.shape[-1] != columns):
            raise HarnessError(
                f"tensor {name!r} in {self.source} has shape {list(tensor.shape)}, "
                f"expected {ndim} dimensions" + (f" ending in {columns}" if columns else "")
            )
        if not np.issubdtype(tensor.dtype, np.floating):
            raise HarnessError(
                f"tensor {name!r} in {self.source} has dtype {tensor.dtype}, expected a float type"
            )
        return tensor.astype(np.float64)

    def _take_linear(self, prefix, out_features, in_features):
        weight = self._take(f"{prefix}.weight", ndim=2, columns=in_features)
        bias = self._take(f"{prefix}.bias", ndim=1, columns=out_features)
        if weight.shape[0] != out_features:
            raise HarnessError(
                f"tensor {prefix}.weight in {self.source} has shape {list(weight.shape)}, "
                f"expected [{out_features}, {in_features}]"
            )
        return weight, bias

    def _take_norm(self, prefix, size):
        return (
            self._take(f"{prefix}.weight", ndim=1, columns=size),
            self._take(f"{prefix}.bias", ndim=1, columns=size),
        )

    def _take_layer(self, index):
        prefix = f"encoder.layer.{index}"
        hidden = self.hidden_size
        intermediate = self._take(
            f"{prefix}.intermediate.dense.weight", ndim=2, columns=hidden
        ).shape[0]
        return {
            "query": self._take_linear(f"{prefix}.attention.self.query", hidden, hidden),
            "key": self._take_linear(f"{prefix}.attention.self.key", hidden, hidden),
            "value": self._take_linear(f"{prefix}.attention.self.value", hidden, hidden),
            "attention_out": self._take_linear(f"{prefix}.attention.output.dense", hidden, hidden),
            "attention_norm": self._take_norm(f"{prefix}.attention.output.LayerNorm", hidden),
            "intermediate": self._take_linear(f"{prefix}.intermediate.dense", intermediate, hidden),
            "output": self._take_linear(f"{prefix}.output.dense", hidden, intermediate),
            "output_norm": self._take_norm(f"{prefix}.output.LayerNorm", hidden),
        }

    def _attention(self, x, layer):
        length = x.shape[0]
        head_size = self.hidden_size // self.num_heads

        def project(name):
            weight, bias = layer[name]
            # [length, hidden] -> [heads, length, head_size]
            return (
                (x @ weight.T + bias).reshape(length, self.num_heads, head_size).transpose(1, 0, 2)
            )

        query, key, value = project("query"), project("key"), project("value")
        # One unpadded sequence, so every position attends to every other one.
        probabilities = softmax(query @ key.transpose(0, 2, 1) / math.sqrt(head_size))
        context = (probabilities @ value).transpose(1, 0, 2).reshape(length, self.hidden_size)
        weight, bias = layer["attention_out"]
        return layer_norm(context @ weight.T + bias + x, *layer["attention_norm"], self.eps)

    def _feed_forward(self, x, layer):
        weight, bias = layer["intermediate"]
        inner = gelu(x @ weight.T + bias)
        weight, bias = layer["output"]
        return layer_norm(inner @ weight.T + bias + x, *layer["output_norm"], self.eps)

    def hidden_states(self, token_ids):
        """Return the last hidden states, [length, hidden], of one sequence."""
        length = len(token_ids)
        if length > self.max_positions:
            raise HarnessError(
                f"sequence of {length} tokens exceeds the {self.max_positions} "
                f"positions of {self.source}"
            )
        if token_ids.max(initial=0) >= self.vocab_size:
            raise HarnessError(
                f"token id {int(token_ids.max())} is outside the {self.vocab_size}-row word "
                f"embedding of {self.source}, so the vocabulary does not match the model"
            )
        emb = self.embeddings
        x = emb["word"][token_ids] + emb["position"][:length] + emb["token_type"][0]
        x = layer_norm(x, *emb["norm"], self.eps)
        for layer in self.layers:
            x = self._feed_forward(self._attention(x, layer), layer)
        return x

    def logits(self, hidden_states):
        """Return classifier logits from [CLS]: tanh pooler, then the linear classifier."""
        weight, bias = self.pooler
        pooled = np.tanh(hidden_states[0] @ weight.T + bias)
        weight, bias = self.classifier
        return pooled @ weight.T + bias


def load_encoder(path, config):
    return BertEncoder(load_checkpoint(path), config, path)


# ---------------------------------------------------------------- commands


def check_fingerprint(args):
    config = load_config(args.config)
    vocab = load_vocab(args.vocab, args.model)
    encoder = load_encoder(args.model, config)
    token_ids, unknown = encode_reaction(EXAMPLE_REACTION, vocab, encoder.max_positions)
    fingerprint = encoder.hidden_states(token_ids)[0]

    expected = np.array(EXAMPLE_FINGERPRINT_START)
    actual = fingerprint[: len(expected)]
    max_error = float(np.abs(actual - expected).max())
    passed = max_error <= args.tolerance

    layers = len(encoder.layers)
    print(f"model         {encoder.source} ({layers} layers, hidden {encoder.hidden_size})")
    print(f"reaction      {EXAMPLE_REACTION}")
    print(f"tokens        {len(token_ids)} including [CLS] and [SEP], {unknown} [UNK]")
    print(f"expected      {' '.join(f'{v:+.4f}' for v in expected)}")
    print(f"computed      {' '.join(f'{v:+.4f}' for v in actual)}")
    print(f"max abs error {max_error:.2e} (tolerance {args.tolerance:g})")
    print(
        "PASS: fingerprint matches the rxnfp README"
        if passed
        else "FAIL: fingerprint differs from the rxnfp README"
    )
    return 0 if passed else 1


def cosine(a, b):
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norm == 0.0:
        # Two zero vectors behave the same, but a zero and a non-zero vector share no direction.
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(a @ b) / norm


def describe(encoder):
    return {
        "path": encoder.source,
        "tensors": encoder.tensor_count,
        "layers": len(encoder.layers),
        "hidden_size": encoder.hidden_size,
        "num_labels": None if encoder.classifier is None else int(encoder.classifier[1].shape[0]),
    }


def check_compatible(reference, candidate):
    if reference.hidden_size != candidate.hidden_size:
        raise HarnessError(
            f"hidden sizes differ: {reference.hidden_size} in {reference.source}, "
            f"{candidate.hidden_size} in {candidate.source}. "
            "Compare checkpoints of one architecture"
        )
    if (
        reference.classifier is not None
        and candidate.classifier is not None
        and reference.classifier[1].shape != candidate.classifier[1].shape
    ):
        raise HarnessError(
            f"classifiers differ in label count: {reference.classifier[1].shape[0]} in "
            f"{reference.source}, {candidate.classifier[1].shape[0]} in {candidate.source}"
        )


def measure(reference, candidate, reactions, vocab):
    """Run both encoders on every reaction and summarize how their outputs differ.

    A reaction whose outputs contain NaN or inf in either checkpoint counts as
    non-finite. Its cosine is NaN, so mean, min and any --min-cosine check
    fail, and its top-1 classes count as disagreeing.
    """
    with_classifier = reference.classifier is not None and candidate.classifier is not None
    max_length = min(reference.max_positions, candidate.max_positions)

    cosines, cls_diffs, agreements, logit_diffs = [], [], [], []
    unknown_total, truncated, nonfinite = 0, 0, 0
    for reaction in reactions:
        token_ids, unknown = encode_reaction(reaction, vocab, max_length)
        unknown_total += unknown
        truncated += len(SMILES_TOKEN_RE.findall(reaction)) + 2 > max_length

        # A broken candidate may overflow. Non-finite outputs are counted below,
        # so numpy's overflow warnings would only repeat that.
        with np.errstate(all="ignore"):
            reference_states = reference.hidden_states(token_ids)
            candidate_states = candidate.hidden_states(token_ids)
            reference_logits = (
                reference.logits(reference_states) if with_classifier else np.zeros(1)
            )
            candidate_logits = (
                candidate.logits(candidate_states) if with_classifier else np.zeros(1)
            )
        finite = all(
            np.isfinite(values).all()
            for values in (
                reference_states[0],
                candidate_states[0],
                reference_logits,
                candidate_logits,
            )
        )
        nonfinite += not finite

        if finite:
            cosines.append(cosine(reference_states[0], candidate_states[0]))
            cls_diffs.append(float(np.abs(reference_states[0] - candidate_states[0]).max()))
        else:
            cosines.append(math.nan)
            cls_diffs.append(math.inf)
        if with_classifier:
            agreements.append(
                finite and int(reference_logits.argmax()) == int(candidate_logits.argmax())
            )
            logit_diffs.append(
                float(np.abs(reference_logits - candidate_logits).max()) if finite else math.inf
            )

    return {
        "reactions": len(reactions),
        "unknown_tokens": unknown_total,
        "truncated_reactions": int(truncated),
        "nonfinite_reactions": int(nonfinite),
        "cls_cosine_mean": float(np.mean(cosines)),
        "cls_cosine_min": float(np.min(cosines)),
        "cls_max_abs_diff": float(np.max(cls_diffs)),
        "top1_agreement": float(np.mean(agreements)) if with_classifier else None,
        "logits_max_abs_diff": float(np.max(logit_diffs)) if with_classifier else None,
    }


def compare(args):
    config = load_config(args.config)
    vocab = load_vocab(args.vocab, args.reference)
    reactions = load_reactions(args.reactions)
    reference = load_encoder(args.reference, config)
    candidate = load_encoder(args.candidate, config)
    check_compatible(reference, candidate)

    report = {
        "reference": describe(reference),
        "candidate": describe(candidate),
        "reactions_file": str(args.reactions),
        **measure(reference, candidate, reactions, vocab),
    }
    report["failures"] = threshold_failures(report, args)

    if args.json:
        # Strict JSON has no NaN or Infinity, so those values become null.
        printable = {
            key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in report.items()
        }
        print(json.dumps(printable, indent=2))
    else:
        print_table(report)
    return 1 if report["failures"] else 0


def threshold_failures(report, args):
    failures = []
    if report["nonfinite_reactions"]:
        failures.append(f"{report['nonfinite_reactions']} reactions gave NaN or inf outputs")
    # Written as "not >=" so that a NaN value fails the check.
    if args.min_cosine is not None and not report["cls_cosine_min"] >= args.min_cosine:
        failures.append(
            f"min [CLS] cosine {report['cls_cosine_min']:.6f} "
            f"is not at least --min-cosine {args.min_cosine}"
        )
    if args.min_top1 is not None:
        if report["top1_agreement"] is None:
            failures.append(
                "--min-top1 was given but the checkpoints do not both have classifier.* tensors"
            )
        elif not report["top1_agreement"] >= args.min_top1:
            failures.append(
                f"top-1 agreement {report['top1_agreement']:.4f} "
                f"is not at least --min-top1 {args.min_top1}"
            )
    return failures


def print_table(report):
    for role in ("reference", "candidate"):
        info = report[role]
        head = (
            "no classifier"
            if info["num_labels"] is None
            else f"classifier with {info['num_labels']} labels"
        )
        print(
            f"{role:<10} {info['path']} "
            f"({info['tensors']} tensors, {info['layers']} layers, {head})"
        )
    print(
        f"reactions  {report['reactions']} from {report['reactions_file']} "
        f"({report['unknown_tokens']} [UNK] tokens, {report['truncated_reactions']} truncated, "
        f"{report['nonfinite_reactions']} with NaN or inf outputs)"
    )
    print()
    rows = [
        ("[CLS] cosine, mean", f"{report['cls_cosine_mean']:.6f}"),
        ("[CLS] cosine, min", f"{report['cls_cosine_min']:.6f}"),
        ("[CLS] max abs diff", f"{report['cls_max_abs_diff']:.3e}"),
    ]
    if report["top1_agreement"] is None:
        rows.append(("top-1 agreement", "n/a (needs classifier.* in both checkpoints)"))
    else:
        rows.append(("top-1 agreement", f"{report['top1_agreement']:.4f}"))
        rows.append(("logits max abs diff", f"{report['logits_max_abs_diff']:.3e}"))
    for name, value in rows:
        print(f"{name:<22} {value}")
    for failure in report["failures"]:
        print(f"FAIL: {failure}")


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def add_resources(command):
        command.add_argument(
            "--vocab", help="vocab.txt of rxnfp 0.1.0, or the rxnfp 0.1.0 wheel (.whl)"
        )
        command.add_argument(
            "--config",
            help="config.json (or the rxnfp wheel) to read hidden_act, layer_norm_eps, "
            "max_position_embeddings and num_attention_heads from "
            "(default: the values of rxnfp 0.1.0)",
        )

    check = commands.add_parser(
        "check-fingerprint", help="check the README fingerprint of the example reaction"
    )
    check.add_argument("--model", required=True, help="safetensors file of rxnfp's bert_ft model")
    check.add_argument(
        "--tolerance", type=float, default=1e-3, help="max abs error per value (default 1e-3)"
    )
    add_resources(check)

    comparison = commands.add_parser(
        "compare", help="compare two checkpoints on every reaction of a file"
    )
    comparison.add_argument(
        "--reference", required=True, help="safetensors file of the original checkpoint"
    )
    comparison.add_argument(
        "--candidate", required=True, help="safetensors file to compare against it"
    )
    comparison.add_argument(
        "--reactions",
        default=DEFAULT_REACTIONS,
        help=f"one reaction SMILES a line (default {DEFAULT_REACTIONS})",
    )
    comparison.add_argument("--json", action="store_true", help="print the report as JSON")
    comparison.add_argument(
        "--min-cosine", type=float, help="exit 1 if the min [CLS] cosine is below this"
    )
    comparison.add_argument(
        "--min-top1", type=float, help="exit 1 if the top-1 agreement fraction is below this"
    )
    add_resources(comparison)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check-fingerprint":
            return check_fingerprint(args)
        return compare(args)
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
