"""A small gender classifier for first names, and the "female" feature of the GDC names task (chapter 06).

The census lists label every name of the corpus F or M (``NamesCorpus.is_female``). A model samples names
that are not in the corpus as well, so the feature φ(x) = 1[x is a female name] of Eq. (6.1) needs a
decision for those too: :func:`female_feature` takes the census label where there is one and the
classifier's decision (p > 0.5) elsewhere.

The classifier is a bag of character n-grams with one hidden layer, trained on our own engine:

    h(x) = relu(Σ_{g ∈ grams(x)} E[g] + c),    p(female | x) = softmax(W h(x) + d)₁

``grams(x)`` are the name's last letter, last two letters, last three letters (hashed into 1009 buckets),
first letter and every character bigram with '.' marking both ends. Endings carry most of the signal in
English first names (-a, -ie, -ine against -o, -us, -ck); the bigram bag sees the rest. The sum of
looked-up rows is an embedding bag: a name touches about 15 rows of E, so a step costs almost nothing.

A trained classifier ships as ``minialign/data/gender.npz`` (``python -m minialign.gender`` rebuilds it
with a fixed seed in a few seconds) and is loaded on first use.
"""
from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from . import functional as F
from .data import DATA_DIR, NamesCorpus, load_names, split
from .io import kind_error, load, save, weights_into
from .loop import LoopConfig, fit
from .nn import Module, Parameter
from .optim import AdamW
from .tensor import Tensor, no_grad

GENDER_NPZ = DATA_DIR / "gender.npz"

_ALPHABET = ".abcdefghijklmnopqrstuvwxyz"  # '.' marks the ends of a name (and pads short ones)
_ID = {c: i for i, c in enumerate(_ALPHABET)}
_A = len(_ALPHABET)
_SUFFIX3_BUCKETS = 1009  # a prime; 27³ exact trigrams would be 19,683 rows for little gain

# Offsets of the n-gram groups in the embedding table; the last row is padding (masked out).
_GROUPS = (("last1", _A), ("last2", _A * _A), ("last3", _SUFFIX3_BUCKETS), ("first1", _A), ("bigram", _A * _A))
_OFFSET = {}
_n = 0
for _name, _size in _GROUPS:
    _OFFSET[_name] = _n
    _n += _size
N_GRAMS = _n  # rows of E that mean something
PAD = N_GRAMS  # one more row for padding


def _check_name(name) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a name must be a str; got {type(name).__name__}")
    bad = [c for c in name if c not in _ID or c == "."]
    if bad:
        raise ValueError(f"name {name!r} has characters outside a-z: {sorted(set(bad))}")
    return name


def gram_ids(name: str) -> list[int]:
    """Row indices of E for one name: its endings, first letter and bigrams (see the module docstring)."""
    _check_name(name)
    p = ".." + name
    last3 = (_ID[("." + p)[-3]] * _A + _ID[p[-2]]) * _A + _ID[p[-1]]
    ids = [
        _OFFSET["last1"] + _ID[p[-1]],
        _OFFSET["last2"] + _ID[p[-2]] * _A + _ID[p[-1]],
        _OFFSET["last3"] + last3 % _SUFFIX3_BUCKETS,
        _OFFSET["first1"] + _ID[(name or ".")[0]],
    ]
    q = "." + name + "."
    ids += [_OFFSET["bigram"] + _ID[a] * _A + _ID[b] for a, b in zip(q, q[1:])]
    return ids


def encode_names(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids ``[B, K]`` int64 padded with PAD, mask ``[B, K, 1]`` of 1.0 on real n-grams) for a batch of names."""
    if isinstance(names, str):
        raise TypeError("expected a sequence of names, not a single str")
    rows = [gram_ids(n) for n in names]
    k = max((len(r) for r in rows), default=1)
    ids = np.full((len(rows), k), PAD, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return ids, (ids != PAD).astype(np.float32)[..., None]


class GenderClassifier(Module):
    """p(female | name) from an embedding bag of character n-grams and one hidden layer (module docstring)."""

    def __init__(self, hidden: int = 16, seed: int = 0):
        if int(hidden) < 1:
            raise ValueError(f"hidden must be a positive integer; got {hidden}")
        rng = np.random.default_rng(seed)
        self.hidden, self.seed = int(hidden), int(seed)
        self.grams = Parameter(rng.normal(0.0, 0.1, (N_GRAMS + 1, self.hidden)).astype(np.float32))
        self.grams_bias = Parameter(np.zeros(self.hidden, dtype=np.float32))
        self.head = Parameter(rng.normal(0.0, 0.1, (2, self.hidden)).astype(np.float32))
        self.head_bias = Parameter(np.zeros(2, dtype=np.float32))
        self.metrics: dict = {}

    def forward(self, ids, mask) -> Tensor:
        """Logits ``[B, 2]`` (column 1 is female) for encoded names."""
        bag = (self.grams[ids] * Tensor(mask)).sum(axis=1)  # [B, K, H] → [B, H]
        return F.linear((bag + self.grams_bias).relu(), self.head, self.head_bias)

    # ------------------------------------------------------------------ training
    @classmethod
    def fit(cls, corpus: NamesCorpus | None = None, *, hidden: int = 16, steps: int = 400, batch_size: int = 256,
            lr: float = 1e-2, weight_decay: float = 0.05, val_fraction: float = 0.1, split_seed: int = 0,
            seed: int = 0, progress: bool = False) -> "GenderClassifier":
        """Train on the census labels of the train split (``data.split``) by minimising the cross-entropy
        −log p(label | name) with AdamW, through the one loop of ``minialign.loop``; ``.metrics`` then holds train
        and held-out accuracy, the held-out balanced accuracy (mean of the per-class recalls), the majority-class
        baseline and the seconds taken.
        """
        corpus = load_names() if corpus is None else corpus
        if int(steps) < 1 or int(batch_size) < 1:
            raise ValueError(f"steps and batch_size must be positive integers; got {steps} and {batch_size}")
        train_names, val_names = split(corpus, val_fraction=val_fraction, seed=split_seed)
        start = time.perf_counter()
        model = cls(hidden=hidden, seed=seed)
        ids, mask = encode_names(train_names)
        labels = np.array([corpus.is_female(n) for n in train_names], dtype=np.int64)
        opt = AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
        rng = np.random.default_rng(seed)

        def step(i):
            rows = rng.integers(0, len(labels), int(batch_size))
            loss = F.cross_entropy(model(ids[rows], mask[rows]), labels[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            return {"loss": loss.item()}

        fit(step, LoopConfig(int(steps), progress=progress, desc="gender classifier"), model=model, optimizer=opt)
        val_labels = np.array([corpus.is_female(n) for n in val_names], dtype=bool)
        val_pred = model.prob_female(val_names) > 0.5
        model.metrics = {
            "train_accuracy": model.accuracy(train_names, labels.astype(bool)),
            "val_accuracy": float(np.mean(val_pred == val_labels)),
            "val_balanced_accuracy": float(0.5 * (np.mean(val_pred[val_labels]) + np.mean(~val_pred[~val_labels]))),
            "val_majority_baseline": float(max(val_labels.mean(), 1 - val_labels.mean())),
            "n_train": len(train_names), "n_val": len(val_names),
            "steps": int(steps), "seconds": time.perf_counter() - start,
        }
        return model

    # ------------------------------------------------------------------ use
    def prob_female(self, names: Sequence[str]) -> np.ndarray:
        """p(female | name) for each name, float64 ``[B]``."""
        names = list(names)
        if not names:
            return np.zeros(0)
        ids, mask = encode_names(names)
        with no_grad():
            z = self(ids, mask).numpy().astype(np.float64)
        return 1.0 / (1.0 + np.exp(z[:, 0] - z[:, 1]))

    def accuracy(self, names: Sequence[str], is_female) -> float:
        """Fraction of names whose decision p > 0.5 agrees with the boolean labels ``is_female``."""
        is_female = np.asarray(is_female, dtype=bool)
        if is_female.shape != (len(names),):
            raise ValueError(f"need one label per name ({len(names)}); got shape {is_female.shape}")
        return float(np.mean((self.prob_female(names) > 0.5) == is_female))

    # ------------------------------------------------------------------ checkpoints
    def save(self, path, weights=None, **extra) -> Path:
        weights = self.state_dict() if weights is None else weights
        return save(path, {"kind": "gender-classifier", "hidden": self.hidden, "seed": self.seed,
                           "metrics": json.dumps(self.metrics), "weights": weights, **extra})

    @classmethod
    def load(cls, path) -> "GenderClassifier":
        state = load(path)
        if state.get("kind") != "gender-classifier" or "hidden" not in state:
            raise kind_error(path, state, "a gender-classifier checkpoint")
        model = weights_into(cls(hidden=int(state["hidden"]), seed=int(state.get("seed", 0))), state, path)
        model.metrics = json.loads(state.get("metrics", "{}"))
        return model


@functools.lru_cache(maxsize=1)
def default_classifier() -> GenderClassifier:
    """The shipped classifier (``minialign/data/gender.npz``), loaded once on first use."""
    if not GENDER_NPZ.exists():
        raise FileNotFoundError(f"no trained gender classifier at {GENDER_NPZ}; build it with "
                                "`python -m minialign.gender`")
    return GenderClassifier.load(GENDER_NPZ)


def female_feature(names: Sequence[str], classifier: GenderClassifier | None = None,
                   corpus: NamesCorpus | None = None) -> np.ndarray:
    """φ_female(x) ∈ {0, 1} for each name, float64: the census label for names in the corpus, the
    classifier's decision p(female | x) > 0.5 for names the corpus does not hold (a feature of Eq. (6.1))."""
    if isinstance(names, str):
        raise TypeError("female_feature expects a sequence of names, not a single str")
    names = list(names)
    corpus = load_names() if corpus is None else corpus
    out = np.zeros(len(names), dtype=np.float64)
    unknown = []
    for i, n in enumerate(names):
        if n in corpus:
            out[i] = float(corpus.is_female(n))
        else:
            unknown.append(i)
    if unknown:
        clf = default_classifier() if classifier is None else classifier
        out[unknown] = (clf.prob_female([names[i] for i in unknown]) > 0.5).astype(np.float64)
    return out


def main(path=GENDER_NPZ) -> GenderClassifier:
    """Train the shipped classifier with its fixed seed and write it to ``path``."""
    clf = GenderClassifier.fit()
    clf.save(path)
    m = clf.metrics
    print(f"held-out accuracy {m['val_accuracy']:.4f} (balanced {m['val_balanced_accuracy']:.4f}, majority "
          f"baseline {m['val_majority_baseline']:.4f}); train accuracy {m['train_accuracy']:.4f}; "
          f"{m['seconds']:.1f} s; wrote {path}")
    return clf


if __name__ == "__main__":
    main()
