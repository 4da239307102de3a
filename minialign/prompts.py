"""Prompt distributions ρ(x) for the conditional setting (chapter 05, §12; chapter 06, §10).

A prompt x is a prefix of a sequence: P tokens, none of them EOS, that the model completes with a response
y ∼ π(·|x). A :class:`Prompts` holds finitely many prompts of one length P with their probabilities ρ(x);
trainers draw prompts from it, and the exact lab enumerates every response of every prompt
(``lab.PromptedLab``). On names, :func:`first_letters` takes the first k letters of the corpus names: ρ(x) is
the share of corpus names that begin with x, each name counted once, as in pretraining.
"""
from __future__ import annotations

import numpy as np

from .data import CharTokenizer, load_names

KINDS = ("none", "first1", "first2")  # the names task's prompt distributions (the --prompts option)


class Prompts:
    """Prompts ``tokens [m, P]`` (distinct rows of one length P, no EOS) with probabilities ρ ``[m]``.

    ``weights`` need not be normalised but must be finite and non-negative with a positive sum; prompts of
    weight 0 are dropped. ``name`` says where the distribution came from (recorded in checkpoints).
    """

    def __init__(self, tokens, weights=None, name: str = "custom", eos_id: int = 0, vocab_size: int | None = None):
        tokens = np.asarray(tokens)
        if tokens.ndim == 1:
            tokens = tokens[:, None]
        if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.dtype.kind not in "iu":
            raise ValueError(f"prompts must be token ids of shape [m ≥ 1, P]; got dtype {tokens.dtype}, "
                             f"shape {tokens.shape}")
        if (tokens == eos_id).any():
            raise ValueError(f"a prompt is a prefix of a sequence and cannot contain the EOS token (id {eos_id})")
        if (tokens < 0).any() or (vocab_size is not None and (tokens >= vocab_size).any()):
            raise ValueError(f"prompt tokens must be ids in [0, {vocab_size}); got values in "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        if len(np.unique(tokens, axis=0)) != len(tokens):
            raise ValueError("the prompts must be distinct (give a repeated prompt a larger weight instead)")
        weights = np.ones(len(tokens)) if weights is None else np.asarray(weights, dtype=np.float64)
        if weights.shape != (len(tokens),):
            raise ValueError(f"one weight per prompt: expected shape ({len(tokens)},), got {weights.shape}")
        if not np.isfinite(weights).all() or (weights < 0).any():
            raise ValueError("prompt weights must be finite and non-negative")
        if not weights.sum() > 0:
            raise ValueError(f"the prompt distribution {name!r} has no mass: every one of its {len(tokens)} "
                             "prompts has weight 0")
        keep = weights > 0
        self.tokens = tokens[keep].astype(np.int64)
        self.probs = weights[keep] / weights[keep].sum()
        self.name, self.eos_id = name, eos_id

    @classmethod
    def empty(cls, eos_id: int = 0) -> "Prompts":
        """The one empty prompt (P = 0): the unconditional setting written as a conditional one."""
        return cls(np.zeros((1, 0), dtype=np.int64), name="none", eos_id=eos_id)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def length(self) -> int:
        """P, the number of tokens of every prompt."""
        return self.tokens.shape[1]

    def sample(self, n: int, rng) -> np.ndarray:
        """Indices of ``n`` prompts drawn from ρ."""
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        return rng.choice(len(self), size=int(n), p=self.probs)

    def describe(self) -> dict:
        """What defines the distribution, for a run's identity."""
        return {"prompts": self.name, "prompt_length": self.length, "n_prompts": len(self)}


def first_letters(k: int, corpus=None) -> Prompts:
    """The names task's prompts: the first ``k`` letters of the corpus names (names with at least k letters),
    ρ(x) ∝ the number of distinct names that begin with x."""
    if k not in (1, 2):
        raise ValueError(f"prompts on names are the first 1 or 2 letters; got k = {k}")
    corpus = load_names() if corpus is None else corpus
    tok = CharTokenizer(corpus)
    counts: dict[str, int] = {}
    for name in corpus.names:
        if len(name) >= k:
            counts[name[:k]] = counts.get(name[:k], 0) + 1
    prefixes = sorted(counts)
    tokens = np.array([tok.encode(p)[:-1] for p in prefixes], dtype=np.int64).reshape(len(prefixes), k)
    return Prompts(tokens, [counts[p] for p in prefixes], name=f"first{k}", eos_id=tok.eos_id,
                   vocab_size=tok.vocab_size)


def names_prompts(kind: str) -> Prompts | None:
    """``none`` (unconditional: None), ``first1`` or ``first2``."""
    if kind not in KINDS:
        raise ValueError(f"unknown prompt distribution {kind!r}; choose one of {', '.join(KINDS)}")
    return None if kind == "none" else first_letters(int(kind[-1]))
