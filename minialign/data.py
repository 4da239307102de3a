"""The names corpus (US Census 1990 first names), a character tokenizer, a fixed split and a bigram baseline.

Every sequence the models see is a name followed by one end token. The token "." (id 0) plays both ends:
the model reads it first as beginning-of-sequence and stops by emitting it as end-of-sequence, as in
makemore. So each of the 27 tokens the model can emit means something, and the set of EOS-terminated
sequences of length <= L can be enumerated exactly.

The longest name has 11 letters, so a GPT over this corpus needs a block size of at least 12
(BOS + 11 letters as inputs, 11 letters + EOS as targets). ``load_names().max_len`` gives the number.
"""
from __future__ import annotations

import csv
import functools
import string
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping, Sequence

import numpy as np

DATA_DIR = Path(__file__).parent / "data"
NAMES_CSV = DATA_DIR / "names.csv"


# ------------------------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class NamesCorpus:
    """First names with a gender label and the census frequencies they came from.

    names      sorted unique lowercase names.
    gender     name -> 'F' or 'M': the list on which the name has the larger census frequency (percent of
               that gender's population). A name on both lists with equal frequencies (ariel, hong, kris)
               is labelled 'F'.
    frequency  (name, gender) -> census frequency in percent, for every row of the source lists.
    """

    names: tuple[str, ...]
    gender: Mapping[str, str]
    frequency: Mapping[tuple[str, str], float]

    def __contains__(self, name: object) -> bool:
        return name in self.gender

    def __len__(self) -> int:
        return len(self.names)

    def is_female(self, name: str) -> bool:
        """True if the name's label is 'F' (see the class docstring for names on both lists)."""
        if name not in self.gender:
            raise ValueError(f"unknown name {name!r}: not in the census first-name lists")
        return self.gender[name] == "F"

    @property
    def max_len(self) -> int:
        """Length of the longest name in characters (a model's block size must be at least max_len + 1)."""
        return max(len(n) for n in self.names)

    @property
    def alphabet(self) -> tuple[str, ...]:
        """The sorted characters that occur in the names."""
        return tuple(sorted(set("".join(self.names))))


def _read_rows(path: Path) -> list[tuple[str, str, float]]:
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        if header != ["name", "gender", "frequency"]:
            raise ValueError(f"{path}: expected header name,gender,frequency; got {','.join(header)}")
        rows = []
        for lineno, (name, gender, freq) in enumerate(reader, start=2):
            if gender not in ("F", "M"):
                raise ValueError(f"{path}:{lineno}: gender must be F or M; got {gender!r}")
            rows.append((name, gender, float(freq)))
    return rows


@functools.lru_cache(maxsize=None)
def _load(path: str) -> NamesCorpus:
    rows = _read_rows(Path(path))
    frequency = {(name, g): f for name, g, f in rows}
    gender = {}
    for name in sorted({name for name, _, _ in rows}):
        f, m = frequency.get((name, "F"), 0.0), frequency.get((name, "M"), 0.0)
        gender[name] = "F" if f >= m else "M"
    return NamesCorpus(
        names=tuple(gender), gender=MappingProxyType(gender), frequency=MappingProxyType(frequency)
    )


def load_names(path: str | Path | None = None) -> NamesCorpus:
    """Load the names corpus from the package data (or from a CSV with columns name,gender,frequency)."""
    return _load(str(NAMES_CSV if path is None else path))


# ---------------------------------------------------------------------------------------- tokenizer


def _check_int_array(ids, what: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.size == 0 and arr.dtype == np.float64:  # an empty list carries no dtype of its own
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{what} must be an integer array; got dtype {arr.dtype}")
    return arr


class CharTokenizer:
    """Characters 'a'..'z' -> ids 1..26; id 0 ('.') is both BOS and EOS.

    Built from the corpus alphabet (which must be exactly a-z). ``encode`` gives the character ids followed
    by EOS, without BOS: the model prepends BOS itself.
    """

    special = "."

    def __init__(self, corpus: NamesCorpus | None = None):
        corpus = load_names() if corpus is None else corpus
        chars = corpus.alphabet
        if "".join(chars) != string.ascii_lowercase:
            raise ValueError(f"the corpus alphabet must be exactly a-z; got {''.join(chars)!r}")
        self.chars: tuple[str, ...] = chars
        self.bos_id = 0
        self.eos_id = 0
        self.vocab_size = len(chars) + 1
        self.itos = (self.special,) + chars
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, eos_id=bos_id={self.eos_id})"

    def encode(self, name: str) -> np.ndarray:
        """Ids of the characters of ``name`` followed by EOS, as int64."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str; got {type(name).__name__}")
        ids = []
        for c in name:
            if c == self.special or c not in self.stoi:
                raise ValueError(f"unknown character {c!r} in name {name!r}; expected only a-z")
            ids.append(self.stoi[c])
        ids.append(self.eos_id)
        return np.array(ids, dtype=np.int64)

    def decode(self, ids) -> str:
        """The characters before the first EOS (all of them if there is none)."""
        arr = _check_int_array(ids, "ids")
        if arr.ndim != 1:
            raise ValueError(f"decode expects a 1-D id sequence; got shape {arr.shape}")
        bad = arr[(arr < 0) | (arr >= self.vocab_size)]
        if bad.size:
            raise ValueError(f"ids must lie in [0, {self.vocab_size}); got {int(bad[0])}")
        out = []
        for i in arr.tolist():
            if i == self.eos_id:
                break
            out.append(self.itos[i])
        return "".join(out)

    def encode_batch(self, names: Sequence[str], length: int) -> np.ndarray:
        """[B, length] int64: each row is encode(name), padded with EOS after the name's EOS."""
        if isinstance(names, str):
            raise TypeError("encode_batch expects a sequence of names, not a single str")
        if int(length) != length or length < 1:
            raise ValueError(f"length must be a positive integer; got {length!r}")
        out = np.full((len(names), int(length)), self.eos_id, dtype=np.int64)
        for row, name in enumerate(names):
            ids = self.encode(name)
            if len(ids) > length:
                raise ValueError(
                    f"name {name!r} needs {len(ids)} positions (its {len(name)} characters and EOS) "
                    f"but length is {length}"
                )
            out[row, : len(ids)] = ids
        return out

    def decode_batch(self, ids) -> list[str]:
        """decode() for each row of a [B, L] id array."""
        arr = _check_int_array(ids, "ids")
        if arr.ndim != 2:
            raise ValueError(f"decode_batch expects a 2-D [B, L] id array; got shape {arr.shape}")
        return [self.decode(row) for row in arr]


# ------------------------------------------------------------------------------------------- split


def split(corpus: NamesCorpus | Iterable[str], val_fraction: float = 0.1, seed: int = 0):
    """Shuffle the unique names with ``seed`` and hold out round(val_fraction * N) of them.

    Returns (train_names, val_names) as sorted lists: disjoint, together all the names, and the same for
    the same seed.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1); got {val_fraction}")
    names = sorted(set(corpus.names if isinstance(corpus, NamesCorpus) else corpus))
    n_val = int(round(val_fraction * len(names)))
    if not 0 < n_val < len(names):
        raise ValueError(f"val_fraction {val_fraction} of {len(names)} names leaves an empty train or val set")
    order = np.random.default_rng(seed).permutation(len(names))
    val = sorted(names[i] for i in order[:n_val])
    train = sorted(names[i] for i in order[n_val:])
    return train, val


# ------------------------------------------------------------------------------------------ bigram


def _bigram_pairs(ids, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(previous, next) token pairs of every non-padding target: BOS->c1, c1->c2, ..., c_n->EOS."""
    arr = _check_int_array(ids, "ids")
    if arr.ndim != 2:
        raise ValueError(f"expected a [B, L] id array from encode_batch; got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise ValueError(f"ids must lie in [0, {vocab_size}); got range [{arr.min()}, {arr.max()}]")
    is_eos = arr == 0
    missing = ~is_eos.any(axis=1)
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise ValueError(f"every row must contain an EOS (id 0); row {row} has none")
    end = is_eos.argmax(axis=1)  # position of each row's first EOS
    prev = np.concatenate([np.zeros((arr.shape[0], 1), dtype=np.int64), arr[:, :-1]], axis=1)
    keep = np.arange(arr.shape[1])[None, :] <= end[:, None]
    return prev[keep], arr[keep]


def bigram_logprob_table(train_ids, smoothing: float = 1.0, vocab_size: int = 27) -> np.ndarray:
    """[V, V] table of log P(next | prev) from bigram counts with add-``smoothing`` (Laplace) smoothing.

    Row 0 is the distribution of the first character after BOS; every row sums to 1 in probability.
    """
    if not smoothing > 0:
        raise ValueError(f"smoothing must be > 0 (an unseen bigram would get probability 0); got {smoothing}")
    prev, nxt = _bigram_pairs(train_ids, vocab_size)
    counts = np.zeros((vocab_size, vocab_size), dtype=np.float64)
    np.add.at(counts, (prev, nxt), 1.0)
    counts += smoothing
    return np.log(counts) - np.log(counts.sum(axis=1, keepdims=True))


def bigram_nll(train_ids, val_ids, smoothing: float = 1.0, vocab_size: int = 27) -> float:
    """Mean negative log-likelihood (nats per token) on val of the bigram model fitted on train.

    Every character and each name's EOS counts once; padding after the EOS does not. This is the same
    quantity as a language model's mean cross-entropy over the non-padding targets.
    """
    table = bigram_logprob_table(train_ids, smoothing, vocab_size)
    prev, nxt = _bigram_pairs(val_ids, vocab_size)
    return float(-table[prev, nxt].mean())


# ----------------------------------------------------------------------------------------- batches


def get_batch(ids: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """``batch_size`` rows of ``ids`` drawn uniformly with replacement."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator; got {type(rng).__name__}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    ids = np.asarray(ids)
    if len(ids) == 0:
        raise ValueError("cannot draw a batch from an empty id array")
    return ids[rng.integers(0, len(ids), size=int(batch_size))]
