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


def checked_log_scores(log_scores, n: int, row: str) -> np.ndarray:
    """Unnormalised log-scores as float64 ``[n]``, one per ``row``: −inf is zero mass; NaN and +inf are errors."""
    log_scores = np.asarray(log_scores, dtype=np.float64)
    if log_scores.shape != (n,):
        raise ValueError(f"log-scores must have one entry per {row}, shape ({n},); got {log_scores.shape}")
    if np.isnan(log_scores).any() or np.isposinf(log_scores).any():
        raise ValueError("log-scores contain NaN or +inf")
    return log_scores


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
        log_scores = checked_log_scores(log_scores, len(self), "enumerated sequence")
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


class PromptedLab:
    """The exact lab with prompts (chapter 05, §12): for each prompt x of a distribution ρ (a
    ``prompts.Prompts``), every response y — the lab's sequences that begin with x — enumerated.

    The (x, y) pairs are the rows of ``sequences`` (prompt and response, padded with EOS), grouped by prompt:
    ``group[i]`` is the prompt of row i, ``prompt_len[i]`` its length, ``row_prompt_probs[i]`` its ρ(x). On
    them a model is a conditional distribution π(y|x) that sums to 1 within each group (Eq. 5.19), and every
    per-prompt quantity — Z(x), the optimum π*(·|x), divergences averaged over ρ — is a finite sum.
    """

    def __init__(self, lab: ExactLab, prompts):
        if prompts.eos_id != lab.eos_id or int(prompts.tokens.max()) >= lab.vocab_size:
            raise ValueError(f"the prompts (EOS id {prompts.eos_id}, ids up to {int(prompts.tokens.max())}) do not fit "
                             f"the lab (EOS id {lab.eos_id}, vocabulary {lab.vocab_size})")
        if prompts.length > lab.horizon - 1:
            raise ValueError(f"prompts of {prompts.length} tokens leave no room for a response's EOS in a horizon of "
                             f"{lab.horizon}")
        self.lab, self.prompts = lab, prompts
        length = prompts.length
        members = [np.flatnonzero((lab.sequences[:, :length] == x).all(axis=1)) for x in prompts.tokens]
        self.rows_of = np.concatenate(members)  # index into the lab's enumeration of each (x, y) row
        self.sequences = lab.sequences[self.rows_of]
        self.group = np.concatenate([np.full(len(m), i) for i, m in enumerate(members)])
        self.prompt_len = np.full(len(self.sequences), length, dtype=np.int64)
        self.row_prompt_probs = prompts.probs[self.group]
        self.vocab_size, self.horizon, self.eos_id = lab.vocab_size, lab.horizon, lab.eos_id
        self._pair = np.full(len(lab), -1)
        self._pair[self.rows_of] = np.arange(len(self.rows_of))

    @classmethod
    def first_tokens(cls, model, length: int = 1, weights=None) -> "PromptedLab":
        """Every prompt of ``length`` non-EOS tokens on the model's lab, with ρ ∝ ``weights`` (uniform if None)."""
        from .prompts import Prompts

        lab = ExactLab.for_model(model)
        tokens = [t for t in range(lab.vocab_size) if t != lab.eos_id]
        rows = np.array(list(itertools.product(tokens, repeat=length)), dtype=np.int64)
        return cls(lab, Prompts(rows, weights, name=f"first{length}", eos_id=lab.eos_id, vocab_size=lab.vocab_size))

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def n_prompts(self) -> int:
        return len(self.prompts)

    def log_probs(self, model) -> Tensor:
        """log π(y|x) for every (x, y) row, differentiable (a Tensor ``[N]``)."""
        self.lab._check_model(model)
        return model.sequence_logprob(self.sequences, self.prompt_len)

    def distribution(self, model) -> np.ndarray:
        """π(y|x) for every row, float64; it must sum to 1 within each prompt's group."""
        p = np.exp(np.asarray(self.log_probs(model).numpy(), dtype=np.float64))
        sums = self.group_sum(p)
        tol = 1e-9 if model.parameters()[0].dtype == np.float64 else 1e-4
        if np.abs(sums - 1).max() > tol:
            raise ValueError(f"the model's conditional probabilities sum to {sums[np.abs(sums - 1).argmax()]:.12f} "
                             "for some prompt, not 1")
        return p

    def group_sum(self, values) -> np.ndarray:
        """Σ_y values(x, y) for each prompt x: ``[m]``."""
        return np.bincount(self.group, weights=np.asarray(values, dtype=np.float64), minlength=self.n_prompts)

    def normalise(self, log_scores):
        """A conditional target from log-scores log P(x, y) over the rows: (log p(y|x) ``[N]``, log Z(x) ``[m]``),
        Z(x) = Σ_y P(x, y) (Eq. 6.14). −inf marks zero mass; a prompt with no mass at all is an error."""
        log_scores = checked_log_scores(log_scores, len(self), "(prompt, response) row")
        groups = [log_scores[self.group == i] for i in range(self.n_prompts)]
        log_z = np.array([log_normalise(g)[1] if np.isfinite(g).any() else -np.inf for g in groups])
        if np.isneginf(log_z).any():
            raise ValueError(f"the target has no mass on any response of prompt "
                             f"{self.prompts.tokens[np.isneginf(log_z)][0]}")
        return log_scores - log_z[self.group], log_z

    def mean_divergence(self, name: str, p, q) -> float:
        """Σ_x ρ(x) D_f(p(·|x) ‖ q(·|x)) between two conditional distributions given row by row."""
        p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
        return float(sum(rho * divergences.divergence(name, p[self.group == i], q[self.group == i])
                         for i, rho in enumerate(self.prompts.probs)))

    def mean_fdiv(self, name: str, log_pi: Tensor, log_p) -> Tensor:
        """Σ_x ρ(x) D_f(π(·|x) ‖ p(·|x)) as a differentiable function of log π(y|x) over the rows (Eq. 3.1 per
        prompt, ``fdiv_to_target``), for autograd's exact gradients."""
        log_p = np.asarray(log_p, dtype=np.float64)
        total = None
        for i, rho in enumerate(self.prompts.probs):
            at = np.flatnonzero(self.group == i)
            term = fdiv_to_target(name, log_pi[at], log_p[at]) * float(rho)
            total = term if total is None else total + term
        return total

    def index_of(self, rows) -> np.ndarray:
        """Row indices (into ``sequences``) of token rows that begin with one of the prompts."""
        pair = self._pair[self.lab.index_of(rows)]
        if (pair < 0).any():
            raise ValueError("a row does not begin with any of the lab's prompts")
        return pair


def fdiv_to_target(name: str, log_pi: Tensor, log_p) -> Tensor:
    """Eq. (3.1) with P = π, Q = p: D_f(π‖p) = Σ_x p(x) f(π(x)/p(x)) as a differentiable function of log π (a Tensor).

    The target p is fixed (log p an array, −inf for zero mass). Computed from l = log π − log p with the
    generator's log form; its derivative in log π(x) is p·f'(t)·t = π(x)·f'(t). Points with p(x) = 0 contribute
    π(x)·lim f(t)/t.
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
    """A reward or log-score given as a vector over the enumeration (of an ExactLab, or of a PromptedLab's
    (x, y) rows), as a function of a batch: each batch row (``batch.tokens``) reads its sequence's entry."""
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
