"""Quasi-rejection sampling (Eikema, Kruszewski, Dance, Aziz & Dymetman 2022) of an EBM from a proposal (chapter 06,
§11).

The target is p = P/Z, known through log P(x); the proposal q can be sampled and scored. QRS draws x ∼ q and
keeps it with probability min(1, P(x)/(β q(x))). The kept samples follow

    p_β(x) = min(q(x), P(x)/β) / A_β,      A_β = Σ_x min(q(x), P(x)/β) = E_q[min(1, w/β)],  w = P/q,    (6.17)

A_β the acceptance rate. For β ≥ max_x w(x) every ratio is below 1 and QRS is rejection sampling: p_β = p
and A_β = Z/β (Eq. 6.6 with M = β). For smaller β it accepts more and samples only approximately p, with

    TV(p, p_β) = ½ E_q| w/Z − min(1, w/β)/A_β |,      KL(p‖p_β) = log(A_β/Z) + E_p[log max(β, w)],          (6.18)

both falling to 0 as β grows (monotonically). Every term is an expectation under q or p, so one set of
proposal samples estimates all of them for every β at once (:func:`estimates`, Eq. 6.19: Z, A_β and the
expectations by their sample means, E_p by self-normalised weights w); :func:`exact` computes them on an
enumeration. :func:`sample` runs the sampler itself. NumPy in, NumPy out, in log space.
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple

import numpy as np

from .logspace import log_mean_exp, logsumexp


def _check_beta(beta) -> np.ndarray:
    beta = np.asarray(beta, dtype=np.float64)
    if not np.isfinite(beta).all() or (beta <= 0).any():
        raise ValueError(f"QRS needs β > 0 (finite): it keeps x with probability min(1, P(x)/(β q(x))); got β = {beta}")
    return beta


def _check_scores(log_P, log_q):
    log_P, log_q = np.asarray(log_P, dtype=np.float64), np.asarray(log_q, dtype=np.float64)
    if log_P.shape != log_q.shape or log_P.ndim != 1 or log_P.size == 0:
        raise ValueError(f"log P and log q must be two vectors of one length; got shapes {log_P.shape} and "
                         f"{log_q.shape}")
    if np.isnan(log_P).any() or np.isposinf(log_P).any() or np.isnan(log_q).any() or np.isposinf(log_q).any():
        raise ValueError("log P and log q must not hold NaN or +inf")
    if np.isneginf(log_P).all():
        raise ValueError("every log P(x) is −inf: the target has no mass here")
    return log_P, log_q


def log_acceptance(log_P, log_q, beta) -> np.ndarray:
    """log min(1, P(x)/(β q(x))): the log-probability of keeping x (0 where q(x) = 0 and P(x) > 0)."""
    log_P, log_q = np.asarray(log_P, dtype=np.float64), np.asarray(log_q, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        log_w = np.where(np.isneginf(log_P), -np.inf, log_P - log_q)
    return np.minimum(0.0, log_w - np.log(_check_beta(beta)))


class Divergences(NamedTuple):
    """QRS at one β: the acceptance rate A_β, TV(p, p_β) and KL(p‖p_β) (exact, or estimated)."""

    beta: float
    acceptance: float
    tv: float
    kl: float


def distribution(log_P, log_q, beta):
    """Eq. (6.17) on an enumeration: (log p_β over the points, A_β)."""
    log_P, log_q = _check_scores(log_P, log_q)
    log_kept = log_q + log_acceptance(log_P, log_q, beta)  # log min(q, P/β)
    log_a = logsumexp(log_kept)
    return log_kept - log_a, float(np.exp(log_a))


def exact(log_P, log_q, beta) -> Divergences:
    """Eqs. (6.17)–(6.18) on an enumeration (q must cover p: q(x) > 0 wherever P(x) > 0)."""
    log_P, log_q = _check_scores(log_P, log_q)
    if (np.isneginf(log_q) & np.isfinite(log_P)).any():
        raise ValueError("the proposal q gives probability 0 to points of the target: QRS cannot reach them")
    log_pb, acceptance = distribution(log_P, log_q, beta)
    log_p = log_P - logsumexp(log_P)
    p, pb = np.exp(log_p), np.exp(log_pb)
    support = np.isfinite(log_p)
    kl = float(np.sum(p[support] * (log_p[support] - log_pb[support])))
    return Divergences(float(beta), acceptance, float(0.5 * np.abs(p - pb).sum()), max(kl, 0.0))


def estimates(log_P, log_q, betas) -> list[Divergences]:
    """Eq. (6.19): A_β, TV(p, p_β) and KL(p‖p_β) for every β of ``betas``, estimated from one set of samples
    x_i ∼ q with their log P(x_i) and log q(x_i): Ẑ = mean w_i, Â_β = mean min(1, w_i/β),
    TV ≈ ½ mean |w_i/Ẑ − min(1, w_i/β)/Â_β|, KL ≈ log(Â_β/Ẑ) + Σ_i (w_i/Σ_j w_j) log max(β, w_i)."""
    log_P, log_q = _check_scores(log_P, log_q)
    log_w = np.where(np.isneginf(log_P), -np.inf, log_P - log_q)
    log_z = log_mean_exp(log_w)
    w_over_z = np.exp(log_w - log_z)  # self-normalised weights × n
    out = []
    for beta in np.atleast_1d(_check_beta(betas)):
        accept = np.exp(np.minimum(0.0, log_w - np.log(beta)))
        a = float(accept.mean())
        tv = 0.5 * float(np.mean(np.abs(w_over_z - accept / a)))
        log_w_finite = np.where(np.isfinite(log_w), log_w, 0)
        kl = float(np.log(a) - log_z + np.mean(w_over_z * np.maximum(np.log(beta), log_w_finite)))
        out.append(Divergences(float(beta), a, tv, max(kl, 0.0)))
    return out


class Samples(NamedTuple):
    """What :func:`sample` kept, and what it cost."""

    kept: np.ndarray          # the accepted proposals, in order (rows of tokens, or indices)
    proposals: int            # how many were drawn
    seconds: float

    @property
    def acceptance(self) -> float:
        return len(self.kept) / self.proposals

    @property
    def per_second(self) -> float:
        return len(self.kept) / self.seconds if self.seconds > 0 else float("inf")


def sample(propose: Callable, log_score: Callable, beta: float, n: int, rng, batch_size: int = 1024,
           max_proposals: int = 10_000_000) -> Samples:
    """Draw with QRS until ``n`` samples are kept: ``propose(m, rng) → (xs, log q(xs))`` draws m proposals,
    ``log_score(xs) → log P(xs)`` scores them; each is kept with probability min(1, P/(βq)). Stops with an
    error after ``max_proposals`` proposals (the acceptance rate is then below n/max_proposals)."""
    _check_beta(beta)
    if int(n) != n or n < 1:
        raise ValueError(f"n (samples to keep) must be a whole number ≥ 1; got {n}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    kept, drawn, need, t0 = [], 0, int(n), time.perf_counter()
    while need > 0:
        if drawn >= max_proposals:
            raise RuntimeError(f"QRS kept {int(n) - need} of {n} samples in {drawn:,} proposals: the acceptance rate "
                               "is too low for this β and proposal")
        xs, log_q = propose(batch_size, rng)
        log_keep = log_acceptance(log_score(xs), log_q, beta)
        keep = np.flatnonzero(np.log(rng.random(len(log_keep))) < log_keep)
        if len(keep) >= need:  # the proposals after the n-th kept one are not counted
            keep = keep[:need]
            drawn += int(keep[-1]) + 1
        else:
            drawn += len(log_keep)
        kept.append(np.asarray(xs)[keep])
        need -= len(keep)
    return Samples(np.concatenate(kept), drawn, time.perf_counter() - t0)
