"""The exact lab (chapter 03): every EOS-terminated sequence of a small vocabulary, enumerated.

With a vocabulary of V tokens (one of them EOS) and a horizon of L positions there are Σ_{n<L} (V−1)^n
sequences. On them a sequence model is a probability vector (Eq. 2.8), a target is a vector of unnormalised
log-scores, and every expectation, divergence and gradient can be computed exactly — the truth against which
the Monte-Carlo estimators and the trainers are checked.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from . import divergences
from .gpt import GPT, GPTConfig
from .logspace import log_normalise
from .tensor import Tensor, concatenate, constant


def sequence_count(vocab_size: int, horizon: int, stop_above: int | None = None) -> int:
    """Σ_{n<horizon} (vocab_size − 1)^n, the number of EOS-terminated sequences; with ``stop_above``, the sum is
    abandoned (and returned) as soon as it passes that bound, so a huge lab is refused at once."""
    total, term = 0, 1
    for _ in range(horizon):
        total += term
        if stop_above is not None and total > stop_above:
            break
        term *= vocab_size - 1
    return total


class ExactLab:
    """All EOS-terminated sequences of length ≤ ``horizon`` (EOS included), as rows padded with EOS."""

    def __init__(self, vocab_size: int, horizon: int, eos_id: int = 0, max_sequences: int = 200_000):
        for name, value, least in (("vocab_size", vocab_size, 2), ("horizon", horizon, 1), ("eos_id", eos_id, 0)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < least:
                raise ValueError(f"the lab needs vocab_size ≥ 2, horizon ≥ 1 and eos_id ≥ 0, whole numbers; "
                                 f"got {name} {value!r}")
        if eos_id >= vocab_size:
            raise ValueError(f"eos_id must be a token of the vocabulary, in [0, {vocab_size}); got eos_id {eos_id}")
        count = sequence_count(vocab_size, horizon, stop_above=max_sequences)
        if count > max_sequences:
            digits = horizon * math.log10(vocab_size - 1) if vocab_size > 2 else math.log10(horizon)
            size = f"{count:,}" if digits < 15 else f"about 10^{digits:.0f}"
            raise ValueError(f"vocab_size {vocab_size} and horizon {horizon} give {size} sequences, more than "
                             f"max_sequences={max_sequences:,}; the lab is for small vocabularies")
        self.vocab_size, self.horizon, self.eos_id = vocab_size, horizon, eos_id
        tokens = [t for t in range(vocab_size) if t != eos_id]
        rows = []
        for n in range(horizon):
            for body in itertools.product(tokens, repeat=n):
                rows.append(list(body) + [eos_id] * (horizon - n))
        self.sequences = np.array(rows, dtype=np.int64)
        self.lengths = (self.sequences != eos_id).sum(axis=1)  # characters before the EOS
        self._index = {r.tobytes(): i for i, r in enumerate(self.sequences)}

    @classmethod
    def for_model(cls, model) -> "ExactLab":
        cfg = model.config
        return cls(cfg.vocab_size, cfg.block_size, cfg.eos_id)

    def __len__(self) -> int:
        return len(self.sequences)

    def _check_model(self, model):
        cfg = model.config
        if (cfg.vocab_size, cfg.block_size, cfg.eos_id) != (self.vocab_size, self.horizon, self.eos_id):
            raise ValueError(
                f"model (vocab_size {cfg.vocab_size}, block_size {cfg.block_size}, eos {cfg.eos_id}) does not match "
                f"the lab (vocab_size {self.vocab_size}, horizon {self.horizon}, eos {self.eos_id})"
            )

    # ------------------------------------------------------------------ models as vectors
    def log_probs(self, model, batch_size: int = 8192) -> Tensor:
        """log π(x) for every enumerated x, differentiable (a Tensor ``[S]``); float64 models give exact values."""
        self._check_model(model)
        parts = [model.sequence_logprob(self.sequences[i:i + batch_size]) for i in range(0, len(self), batch_size)]
        return parts[0] if len(parts) == 1 else concatenate(parts)

    def distribution(self, model) -> np.ndarray:
        """Eq. (2.8): the model's exact distribution over the enumeration, float64; it must sum to 1."""
        logp = np.asarray(self.log_probs(model).numpy(), dtype=np.float64)
        p = np.exp(logp)
        tol = 1e-9 if logp.dtype == np.float64 and model.parameters()[0].dtype == np.float64 else 1e-4
        if abs(p.sum() - 1.0) > tol:
            raise ValueError(f"the model's probabilities over the enumeration sum to {p.sum():.12f}, not 1")
        return p

    # ------------------------------------------------------------------ targets
    def normalise(self, log_scores):
        """A target from unnormalised log-scores log P(x): returns (log p, log Z) with Z = Σ_x P(x).

        −inf marks points of zero mass; NaN, +inf, or no mass at all are errors.
        """
        log_scores = np.asarray(log_scores, dtype=np.float64)
        if log_scores.shape != (len(self),):
            raise ValueError(f"log-scores must have one entry per enumerated sequence, shape ({len(self)},); "
                             f"got {log_scores.shape}")
        if np.isnan(log_scores).any() or np.isposinf(log_scores).any():
            raise ValueError("log-scores contain NaN or +inf")
        if np.isneginf(log_scores).all():
            raise ValueError("every log-score is -inf: the target has no mass")
        log_p, log_z = log_normalise(log_scores)
        return log_p, float(log_z)

    # ------------------------------------------------------------------ exact quantities
    @staticmethod
    def expectation(p, values) -> float:
        """E_p[values] = Σ_x p(x) values(x), with 0·(anything finite) = 0."""
        p, values = np.asarray(p, dtype=np.float64), np.asarray(values, dtype=np.float64)
        return float(np.sum(np.where(p > 0, p * values, 0.0)))

    @staticmethod
    def divergence(name: str, p, q) -> float:
        """D_f(p‖q) between two distributions on the enumeration (``divergences.divergence``)."""
        return float(divergences.divergence(name, np.asarray(p, np.float64), np.asarray(q, np.float64)))

    @staticmethod
    def entropy(p) -> float:
        p = np.asarray(p, dtype=np.float64)
        return float(-np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)))

    # ------------------------------------------------------------------ sampling
    def sample(self, p, n: int, rng) -> np.ndarray:
        """Indices of ``n`` sequences drawn exactly from the vector ``p``."""
        p = np.asarray(p, dtype=np.float64)
        if p.shape != (len(self),) or (p < 0).any() or abs(p.sum() - 1) > 1e-9:
            raise ValueError(f"p must be a distribution over the {len(self)} enumerated sequences")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a whole number of samples ≥ 0; got {n!r}")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        return rng.choice(len(self), size=n, p=p / p.sum())

    def index_of(self, rows) -> np.ndarray:
        """Enumeration indices of token rows (padded with EOS after their end, as ``generate`` returns them)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 2 or rows.shape[1] != self.horizon:
            raise ValueError(f"rows must have shape [n, {self.horizon}]; got {rows.shape}")
        first = (rows == self.eos_id).argmax(axis=1)
        clean = np.where(np.arange(self.horizon)[None, :] > first[:, None], self.eos_id, rows)
        try:
            return np.array([self._index[r.tobytes()] for r in clean])
        except KeyError as e:
            raise ValueError("a row is not an EOS-terminated sequence of the lab") from e


def fdiv_to_target(name: str, log_pi: Tensor, log_p) -> Tensor:
    """Eq. (3.1) with P = π, Q = p: D_f(π‖p) = Σ_x p(x) f(π(x)/p(x)) as a differentiable function of log π (a Tensor).

    The target p is fixed (log p an array, −inf for zero mass). Computed from l = log π − log p with the
    generator's log form; its derivative in log π(x) is p·f'(t)·t = π(x)·f'(t). Points with p(x) = 0 contribute π(x)·lim f(t)/t.
    """
    fd = divergences.get(name)
    log_p = np.asarray(log_p, dtype=np.float64)
    if log_p.shape != tuple(log_pi.shape):
        raise ValueError(f"log π has shape {log_pi.shape} but log p has shape {log_p.shape}")
    support = np.isfinite(log_p)
    l_data = np.where(support, log_pi.data - np.where(support, log_p, 0.0), 0.0)
    p = np.where(support, np.exp(np.where(support, log_p, 0.0)), 0.0)
    f_val = np.where(support, fd.f_log(l_data), 0.0)
    pi = np.exp(log_pi.data)
    slope = fd.slope_at_infinity
    off = np.where(support, 0.0, pi * slope if np.isfinite(slope) else np.where(pi > 0, np.inf, 0.0))
    value = np.sum(p * f_val) + np.sum(off)

    def backward(g):
        d = np.where(support, pi * fd.f_prime_log(l_data), 0.0)  # p·f'(t)·t = π·f'(t)
        if np.isfinite(slope):
            d = d + np.where(support, 0.0, slope * pi)
        log_pi._accumulate(g * d)

    return Tensor._result(np.asarray(value, dtype=log_pi.dtype), (log_pi,), backward, f"D_{name}")


def score_function_gradient(model, lab: ExactLab, weights) -> dict:
    """Σ_x w(x) ∇_θ log π_θ(x), exactly, by one backward pass through the enumeration (w held fixed).

    With w = π·R this is the policy gradient E_π[R ∇ log π] with no sampling at all; with R = f'(π/p) it is
    the right side of the gradient identity, Eq. (3.21).
    Returns parameter name → gradient array.
    """
    model.zero_grad()
    logp = lab.log_probs(model)
    (logp * constant(np.asarray(weights, dtype=np.float64), like=logp)).sum().backward()
    grads = {n: (np.zeros(p.shape) if p.grad is None else np.array(p.grad)) for n, p in model.named_parameters()}
    model.zero_grad()
    return grads


# ---------------------------------------------------------------------- tiny models and exact gradients
def lab_model(seed: int = 0, vocab_size: int = 3, block_size: int = 4, scale: float = 1.0, dtype=np.float64,
              n_embd: int = 8, noise_seed: int | None = None, **config) -> GPT:
    """A tiny GPT for the exact lab (two layers, two heads by default), far from uniform.

    The initial weights of ``GPT(config, seed)`` (cast to ``dtype``) get ``scale``·N(0, 1) noise added, drawn
    from ``noise_seed`` (``seed + 100`` when not given): the larger weights make the distribution over the
    enumeration (Eq. 2.8) peaked and every term of a gradient sizeable. ``config`` overrides other
    ``GPTConfig`` fields (``n_layer``, ``n_head``, ``eos_id``, ...).
    """
    config = {"n_layer": 2, "n_head": 2, **config}
    cfg = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_embd=n_embd, **config)
    model = GPT(cfg, seed=seed).astype(dtype)
    rng = np.random.default_rng(seed + 100 if noise_seed is None else noise_seed)
    for p in model.parameters():
        p.data = p.data + scale * rng.standard_normal(p.shape).astype(dtype)
    return model


def lab_fn(lab: ExactLab, values):
    """A reward or log-score given as a vector over the enumeration, as a function of a batch: each batch
    row (``batch.tokens``) reads its sequence's entry."""
    values = np.asarray(values)
    if values.shape != (len(lab),):
        raise ValueError(f"values must have one entry per enumerated sequence, shape ({len(lab)},); "
                         f"got {values.shape}")
    return lambda batch: values[lab.index_of(batch.tokens)]


def flat_grad(model) -> np.ndarray:
    """The gradients of all of ``model``'s parameters, flattened into one vector (zeros where none)."""
    return np.concatenate([np.zeros(p.size) if p.grad is None else np.ravel(p.grad) for p in model.parameters()])


def exact_grad(method, policy, batch) -> np.ndarray:
    """∇_θ of a trainer's loss (``method.loss(policy, batch)``) on one batch, flattened over π_θ's parameters.

    On an exact batch (every sequence of the lab, weighted by its probability under the sampler) this is the
    exact expectation of the trainer's Monte-Carlo gradient.
    """
    policy.zero_grad()
    loss, _ = method.loss(policy, batch)
    loss.backward()
    g = flat_grad(policy)
    policy.zero_grad()
    return g


def autograd_of(policy, value_fn) -> np.ndarray:
    """∇_θ of the scalar Tensor ``value_fn()`` (e.g. a divergence through the enumeration), flattened."""
    policy.zero_grad()
    value_fn().backward()
    g = flat_grad(policy)
    policy.zero_grad()
    return g
