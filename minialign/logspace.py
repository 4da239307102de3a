"""Log-space numerics on NumPy arrays, written once (chapter 03, §"Computing in log space").

Probabilities of whole sequences underflow long before anything interesting happens (a name of eight letters
has probability near e^{-20}; a vocabulary of 50k tokens gives logits of magnitude 1e4), so every sum of
probabilities here is a log-sum-exp, shifted by its maximum. Everything is float64 NumPy in, NumPy out; −inf
stands for zero mass and passes through. The Tensor versions with gradients (``logsumexp``, ``log_sigmoid``)
are in :mod:`minialign.functional`.
"""
from __future__ import annotations

import math

import numpy as np


def logsumexp(x, axis=-1, keepdims: bool = False):
    """log Σ e^{x} along ``axis``, shifted by the maximum: m + log Σ e^{x − m}.

    All −inf along the axis gives −inf (no mass), never NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


def log_normalise(x, axis=-1):
    """x − logsumexp(x): log-probabilities from unnormalised log-scores, and log Z. Returns (log p, log Z)."""
    log_z = logsumexp(x, axis=axis, keepdims=True)
    return np.asarray(x, dtype=np.float64) - log_z, np.squeeze(log_z, axis=axis)


def log_mean_exp(x, weights=None) -> float:
    """log Σ_i w_i e^{x_i} over a 1-D array (w = 1/n by default); terms with w_i = 0 or x_i = −inf drop out.

    With w the sampling weights of a batch this is the log of an importance-sampling average, e.g.
    log Ẑ = log mean_q[P/q] from log P − log q.
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.full(len(x), 1.0 / len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    finite = np.isfinite(x) & (w > 0)
    if not finite.any():
        return -math.inf
    m = x[finite].max()
    return float(m + np.log(np.sum(w[finite] * np.exp(x[finite] - m))))


def softplus(x):
    """log(1 + e^x), finite for every finite x."""
    return np.logaddexp(0.0, np.asarray(x, dtype=np.float64))


def log_sigmoid(x):
    """log σ(x) = −softplus(−x)."""
    return -softplus(-np.asarray(x, dtype=np.float64))


def sigmoid(x):
    """σ(x) = 1/(1 + e^{−x}) from e^{−|x|} ∈ (0, 1], so that it never overflows and keeps its relative accuracy
    in both tails: 1/(1 + e^{−x}) for x ≥ 0, e^{x}/(1 + e^{x}) below."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


def log1mexp(x):
    """log(1 − e^{x}) for x ≤ 0, accurate at both ends (Mächler 2012): log(−expm1(x)) near 0, log1p(−e^x) below
    −log 2."""
    x = np.asarray(x, dtype=np.float64)
    if np.any(x > 0):
        raise ValueError(f"log1mexp needs x ≤ 0 (a log-probability); got a maximum of {x.max()}")
    with np.errstate(divide="ignore"):
        near = x > -math.log(2.0)
        return np.where(near, np.log(-np.expm1(np.where(near, x, -1.0))), np.log1p(-np.exp(np.where(near, -1.0, x))))
