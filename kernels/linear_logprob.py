"""Output projection fused with the log-prob / f-divergence kernels, chunk by chunk (Eq. 8.16).

The last layer of a language model turns hidden states ``h`` ``[N, d]`` into logits ``z = h W^T`` ``[N, V]``.
Even the fused kernel of ``logprob_fdiv.py`` reads a full ``[N, V]`` logits array that somebody had to
write. Here the logits exist one chunk of ``C`` rows at a time: project the chunk, run the fused forward
on it, turn its statistics straight into the chunk's logit gradient with the fused backward (the weights
``w`` and ``u`` are known up front), and push that gradient through the projection,

    dh_chunk = dz_chunk W,        dW += dz_chunk^T h_chunk,

before the next chunk overwrites the buffer. Peak memory is ``O(C V)`` instead of ``O(N V)``; the price is
that forward and backward run together, so the gradients are computed whether or not they are used.

When the weights are not known at the forward — the engine's case: ``GPT.token_logprobs`` through
``functional.linear_logprobs`` — :func:`linear_logprob_forward` keeps only ``log pi(y)`` and the row
log-sum-exps, and :func:`linear_logprob_backward` recomputes each chunk's logits from ``h`` and ``W`` when
the weights arrive: one more projection (four ``N x V x d`` products instead of three) for the same
``O(C V)`` memory. The matrix products are PyTorch's (cuBLAS on a GPU); the per-row work is the Triton kernels.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton

from .logprob_fdiv import (
    SUPPORTED_DTYPES,
    LogprobFdivOutput,
    logprob_fdiv_backward,
    logprob_fdiv_forward,
    logprob_fdiv_reference,
)


class LinearLogprobOutput(NamedTuple):
    """Per-row results (``[N]`` float32), the loss ``L`` and its gradients with respect to h and W."""

    logp: torch.Tensor
    ref_logp: torch.Tensor
    entropy: torch.Tensor
    div: torch.Tensor
    loss: torch.Tensor
    d_hidden: torch.Tensor
    d_weight: torch.Tensor


def _check(hidden, weight, targets, w, u, ref_hidden, ref_weight):
    for name, t in (("hidden", hidden), ("weight", weight)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 2-D tensor; got {got}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16; got {t.dtype}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden [N, d] and weight [V, d] must share d; got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if weight.dtype != hidden.dtype or weight.device != hidden.device:
        raise ValueError(f"weight must match hidden's dtype and device ({hidden.dtype}, {hidden.device}); "
                         f"got {weight.dtype} on {weight.device}")
    n = hidden.shape[0]
    if not isinstance(targets, torch.Tensor) or tuple(targets.shape) != (n,) or targets.dtype != torch.int64:
        got = (tuple(targets.shape), targets.dtype) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f"targets must be an int64 tensor of shape ({n},); got {got}")
    if w is not None and (not isinstance(w, torch.Tensor) or tuple(w.shape) != (n,)):
        got = tuple(w.shape) if isinstance(w, torch.Tensor) else w
        raise ValueError(f"w must be a tensor of shape ({n},); got {got}")
    if (ref_hidden is None) != (ref_weight is None):
        raise ValueError("ref_hidden and ref_weight must be given together (or both left out)")
    if ref_hidden is not None:
        if (ref_hidden.shape[0] != n or ref_weight.shape[0] != weight.shape[0]
                or ref_hidden.shape[1] != ref_weight.shape[1]):
            raise ValueError(
                f"ref_hidden [N, d'] and ref_weight [V, d'] must have N = {n} and V = {weight.shape[0]}; "
                f"got {tuple(ref_hidden.shape)} and {tuple(ref_weight.shape)}"
            )
        if not isinstance(u, torch.Tensor) or tuple(u.shape) != (n,):
            raise ValueError(f"u must be a tensor of shape ({n},) when a reference is given")


def default_chunk_size(n: int, v: int, d: int) -> int:
    """Rows per chunk so that one chunk of logits is about as large as the hidden states (Liger's rule)."""
    return int(min(max(1, triton.next_power_of_2(math.ceil(n / max(1, math.ceil(v / d))))), max(1, n)))


def _chunks(n, v, d, chunk_size):
    chunk = chunk_size or default_chunk_size(n, v, d)
    if chunk < 1:
        raise ValueError(f"chunk_size must be a positive number of rows; got {chunk}")
    return [slice(start, min(n, start + chunk)) for start in range(0, n, chunk)]


def linear_logprob_forward(hidden, weight, targets, ignore_index=-100, chunk_size=None):
    """Eq. (8.16)'s forward alone: ``(log pi(y_n), LSE_n)`` ``[N]`` float32 for ``pi = softmax(h W^T)``, with
    the logits held one chunk at a time. Ignored rows get ``log pi(y) = 0``."""
    _check(hidden, weight, targets, None, None, None, None)
    (n, d), v = hidden.shape, weight.shape[0]
    logp = torch.zeros(n, device=hidden.device, dtype=torch.float32)
    lse = torch.zeros_like(logp)
    for rows in _chunks(n, v, d, chunk_size):
        out = logprob_fdiv_forward(hidden[rows] @ weight.T, None, targets[rows], ignore_index=ignore_index)
        logp[rows], lse[rows] = out.logp, out.lse
    return logp, lse


def linear_logprob_backward(hidden, weight, targets, lse, w, ignore_index=-100, chunk_size=None):
    """Eq. (8.16)'s gradients of ``L = sum_n w_n log pi(y_n)``: ``(dL/dh, dL/dW)`` in the inputs' dtypes, each
    chunk's logits recomputed from ``h`` and ``W`` and its logit gradient (Eq. 8.14) pushed through the
    projection before the next chunk."""
    _check(hidden, weight, targets, w, None, None, None)
    (n, d), v = hidden.shape, weight.shape[0]
    if tuple(lse.shape) != (n,):
        raise ValueError(f"lse must be the forward's [N] = ({n},) row log-sum-exps; got {tuple(lse.shape)}")
    w = w.to(torch.float32)
    d_hidden = torch.empty_like(hidden)
    d_weight = torch.zeros(weight.shape, device=hidden.device, dtype=torch.float32)
    for rows in _chunks(n, v, d, chunk_size):
        h = hidden[rows]
        zeros = torch.zeros(h.shape[0], device=h.device, dtype=torch.float32)
        saved = LogprobFdivOutput(zeros, zeros, zeros, zeros, lse[rows].float(), zeros, zeros, zeros)
        dz = logprob_fdiv_backward(h @ weight.T, None, targets[rows], saved, w[rows], None, ignore_index=ignore_index)
        d_hidden[rows] = dz @ weight
        d_weight += (dz.T @ h).float()
    return d_hidden, d_weight.to(weight.dtype)


def linear_logprob_fdiv(hidden, weight, targets, w, u=None, ref_hidden=None, ref_weight=None, f="kl",
                        ignore_index=-100, chunk_size=None) -> LinearLogprobOutput:
    """Eq. (8.16): ``L = sum_n w_n log pi(y_n) + u_n D_f(pi_n || a_n)`` with ``pi = softmax(h W^T)``, chunked.

    The reference distribution, if any, is ``a = softmax(h_ref W_ref^T)`` (frozen: no gradient). Returns the
    per-row statistics, ``L`` and its gradients with respect to ``hidden`` and ``weight`` (their dtypes).
    """
    if w is None:
        raise ValueError("w (the [N] weights of log pi(y)) is required; use zeros for a divergence-only loss")
    _check(hidden, weight, targets, w, u, ref_hidden, ref_weight)
    n, d = hidden.shape
    v = weight.shape[0]
    has_ref = ref_hidden is not None
    dev = hidden.device
    stats = {k: torch.zeros(n, device=dev, dtype=torch.float32) for k in ("logp", "ref_logp", "entropy", "div")}
    d_hidden = torch.empty_like(hidden)
    d_weight = torch.zeros(weight.shape, device=dev, dtype=torch.float32)
    w = w.to(torch.float32)
    u = u.to(torch.float32) if has_ref else None
    for rows in _chunks(n, v, d, chunk_size):
        h = hidden[rows]
        z = h @ weight.T
        r = ref_hidden[rows] @ ref_weight.T if has_ref else None
        out = logprob_fdiv_forward(z, r, targets[rows], f=f, ignore_index=ignore_index)
        dz = logprob_fdiv_backward(z, r, targets[rows], out, w[rows], u[rows] if has_ref else None, f=f,
                                   ignore_index=ignore_index)
        d_hidden[rows] = dz @ weight
        d_weight += (dz.T @ h).float()
        for k in stats:
            stats[k][rows] = getattr(out, k)
    valid = targets != ignore_index
    loss = (w * stats["logp"] * valid).sum()
    if has_ref:
        loss = loss + (u * stats["div"]).sum()
    return LinearLogprobOutput(stats["logp"], stats["ref_logp"], stats["entropy"], stats["div"], loss,
                               d_hidden, d_weight.to(weight.dtype))


class LinearLogprob(torch.autograd.Function):
    """Autograd wrapper: the forward already holds dL/dh and dL/dW; the backward only scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, w, u, ref_hidden, ref_weight, f, ignore_index, chunk_size):
        out = linear_logprob_fdiv(hidden, weight, targets, w, u, ref_hidden, ref_weight, f=f,
                                  ignore_index=ignore_index, chunk_size=chunk_size)
        ctx.save_for_backward(out.d_hidden, out.d_weight)
        return out.loss

    @staticmethod
    def backward(ctx, grad_loss):
        d_hidden, d_weight = ctx.saved_tensors
        return (d_hidden * grad_loss.to(d_hidden.dtype), d_weight * grad_loss.to(d_weight.dtype),
                None, None, None, None, None, None, None, None)


def linear_logprob(hidden, weight, targets, w, u=None, ref_hidden=None, ref_weight=None, f="kl",
                   ignore_index=-100, chunk_size=None):
    """Differentiable scalar ``L`` of Eq. (8.16) with respect to ``hidden`` and ``weight``."""
    return LinearLogprob.apply(hidden, weight, targets, w, u, ref_hidden, ref_weight, f, ignore_index, chunk_size)


def linear_logprob_reference(hidden, weight, targets, w, u=None, ref_hidden=None, ref_weight=None, f="kl",
                             ignore_index=-100, dtype=torch.float64):
    """Eq. (8.16) the plain way: the full ``[N, V]`` logits in ``dtype``, then the reference of Eqs. (8.9)-(8.12).

    Returns ``(loss, stats)``; differentiable with respect to ``hidden`` and ``weight``.
    """
    z = hidden.to(dtype) @ weight.to(dtype).T
    r = ref_hidden.to(dtype) @ ref_weight.to(dtype).T if ref_hidden is not None else None
    stats = logprob_fdiv_reference(z, r, targets, f=f, ignore_index=ignore_index, dtype=dtype)
    loss = (w.to(dtype) * stats.logp).sum()
    if r is not None:
        loss = loss + (u.to(dtype) * stats.div).sum()
    return loss, stats
