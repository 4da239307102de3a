"""Causal flash attention in Triton: forward (online softmax, Eqs. 8.1-8.4) and backward (Eqs. 8.5-8.8).

The forward pass never writes the ``[T, T]`` attention matrix: each program owns a block of query rows,
streams the key/value blocks past it, and keeps a running row maximum ``m``, a running normaliser ``l``
and an output accumulator rescaled whenever ``m`` grows. It saves one number per row for the backward,
the log-sum-exp ``LSE = m + log l``; the backward recomputes ``P = exp(S - LSE)`` block by block.

File layout (as in the Triton tutorials): the ``@triton.jit`` kernels, the launchers that check their
arguments and pick block sizes, a ``torch.autograd.Function`` wrapper, and the plain PyTorch reference.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .launch import check_device, interpreting

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 128




# ----------------------------------------------------------------------------------------------- kernels


@triton.jit
def _mm(a, b, FP32_DOT: tl.constexpr):
    """Matrix product with fp32 accumulation.

    ``FP32_DOT`` multiplies in fp32 (exact IEEE products: fp32 inputs, and every dtype under the CPU
    interpreter); otherwise ``a`` is cast to ``b``'s 16-bit dtype so the tensor cores take both operands.
    """
    if FP32_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a.to(b.dtype), b)


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    H, T, D, scale,
    CAUSAL: tl.constexpr, FP32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Eqs. (8.2)-(8.4): one block of query rows against every allowed key block, online softmax."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    O += b * stride_ob + h * stride_oh
    LSE += bh * T

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < T
    d_ok = offs_d < D
    q = tl.load(Q + offs_m[:, None] * stride_qt + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if CAUSAL:
        n_end = tl.minimum(T, start_m + BLOCK_M)
    else:
        n_end = T
    for start_n in range(0, n_end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < T
        kv_mask = col_ok[:, None] & d_ok[None, :]
        k = tl.load(K + offs_n[:, None] * stride_kt + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + offs_n[:, None] * stride_vt + offs_d[None, :], mask=kv_mask, other=0.0)

        s = _mm(q, tl.trans(k), FP32_DOT) * scale
        allowed = col_ok[None, :]
        if CAUSAL:
            allowed = allowed & (offs_n[None, :] <= offs_m[:, None])
        s = tl.where(allowed, s, float("-inf"))

        # Key block 0 is allowed for every row, so m_new is finite from the first block on.
        # BEGIN SOLUTION online-softmax
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + _mm(p, v, FP32_DOT)
        m_i = m_new
        # END SOLUTION

    acc = acc / l_i[:, None]
    tl.store(O + offs_m[:, None] * stride_ot + offs_d[None, :], acc.to(O.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + offs_m, m_i + tl.log(l_i), mask=row_ok)


@triton.jit
def _attn_bwd_delta_kernel(O, DO, DELTA, T, D, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Eq. (8.6): D_i = sum_j dO_ij O_ij for one block of rows (O and dO are contiguous [BH, T, D])."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < T)[:, None] & (offs_d < D)[None, :]
    ptrs = bh * T * D + offs_m[:, None] * D + offs_d[None, :]
    o = tl.load(O + ptrs, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + bh * T + offs_m, tl.sum(o * do, axis=1), mask=offs_m < T)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    T, D, scale,
    CAUSAL: tl.constexpr, FP32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Eqs. (8.5)-(8.8) for one key block: dV = P^T dO and dK = s dS^T Q, summed over query blocks.

    All tensors are contiguous ``[BH, T, D]`` (LSE, DELTA: ``[BH, T]``); the program recomputes each
    transposed probability block ``P^T = exp(K Q^T s - LSE)`` instead of reading it from memory.
    """
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    base = bh * T * D
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = offs_n < T
    d_ok = offs_d < D
    kv_mask = col_ok[:, None] & d_ok[None, :]
    k = tl.load(K + base + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + base + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    if CAUSAL:
        m_begin = (start_n // BLOCK_M) * BLOCK_M
    else:
        m_begin = 0
    for start_m in range(m_begin, T, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < T
        q_mask = row_ok[:, None] & d_ok[None, :]
        q = tl.load(Q + base + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(DO + base + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
        lse = tl.load(LSE + bh * T + offs_m, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + bh * T + offs_m, mask=row_ok, other=0.0)

        s_t = _mm(k, tl.trans(q), FP32_DOT) * scale
        allowed = col_ok[:, None] & row_ok[None, :]
        if CAUSAL:
            allowed = allowed & (offs_n[:, None] <= offs_m[None, :])
        p_t = tl.exp(tl.where(allowed, s_t, float("-inf")) - lse[None, :])

        dv += _mm(p_t, do, FP32_DOT)
        dp_t = _mm(v, tl.trans(do), FP32_DOT)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _mm(ds_t, q, FP32_DOT)

    out = base + offs_n[:, None] * D + offs_d[None, :]
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    T, D, scale,
    CAUSAL: tl.constexpr, FP32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Eqs. (8.5)-(8.8) for one query block: dQ = s dS K, summed over the allowed key blocks."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    base = bh * T * D
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < T
    d_ok = offs_d < D
    q_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + base + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(DO + base + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
    lse = tl.load(LSE + bh * T + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + bh * T + offs_m, mask=row_ok, other=0.0)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if CAUSAL:
        n_end = tl.minimum(T, start_m + BLOCK_M)
    else:
        n_end = T
    for start_n in range(0, n_end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < T
        kv_mask = col_ok[:, None] & d_ok[None, :]
        k = tl.load(K + base + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + base + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)

        s = _mm(q, tl.trans(k), FP32_DOT) * scale
        allowed = row_ok[:, None] & col_ok[None, :]
        if CAUSAL:
            allowed = allowed & (offs_n[None, :] <= offs_m[:, None])
        # BEGIN SOLUTION dq
        p = tl.exp(tl.where(allowed, s, float("-inf")) - lse[:, None])
        dp = _mm(do, tl.trans(v), FP32_DOT)
        ds = p * (dp - delta[:, None])
        dq += _mm(ds, k, FP32_DOT)
        # END SOLUTION

    tl.store(DQ + base + offs_m[:, None] * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)


# --------------------------------------------------------------------------------------------- launchers


def _check_qkv(names, tensors):
    """Validate attention operands: 4-D [B, H, T, D], one shape, one supported dtype, one usable device."""
    for name, t in zip(names, tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape [B, H, T, D]; got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, H, T, D]; got shape {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16; got {t.dtype}")
    first_name, first = names[0], tensors[0]
    for name, t in zip(names[1:], tensors[1:]):
        if t.shape != first.shape:
            raise ValueError(f"{name} must have the shape of {first_name} {tuple(first.shape)}; got {tuple(t.shape)}")
        if t.dtype != first.dtype:
            raise TypeError(f"{name} must have the dtype of {first_name} ({first.dtype}); got {t.dtype}")
        if t.device != first.device:
            raise ValueError(f"{name} must be on {first_name}'s device ({first.device}); got {t.device}")
    check_device(first)
    d = first.shape[-1]
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"head dim must be between 1 and {MAX_HEAD_DIM} (padded to a power of two >= 16); got {d}")




def _blocks(d: int, dtype: torch.dtype, block_m, block_n):
    """Block sizes: 16 x 16 under the interpreter (fast tests with several blocks); on a GPU, tiles that
    keep the fp32 accumulators and the 16-bit (or fp32) operand tiles within registers and shared memory."""
    if block_m is None or block_n is None:
        if interpreting():
            bm, bn = 16, 16
        elif dtype == torch.float32:
            bm, bn = (64, 32) if d <= 64 else (32, 32)
        elif d <= 64:
            bm, bn = 128, 64
        else:
            bm, bn = 64, 64
        block_m = block_m or bm
        block_n = block_n or bn
    for name, b in (("block_m", block_m), ("block_n", block_n)):
        if b < 16 or b & (b - 1):
            raise ValueError(f"{name} must be a power of two >= 16; got {b}")
    return block_m, block_n, max(16, triton.next_power_of_2(d))


def _fp32_dot(dtype: torch.dtype) -> bool:
    return dtype == torch.float32 or interpreting()


def flash_attention_forward(q, k, v, causal=True, scale=None, *, block_m=None, block_n=None):
    """Eqs. (8.2)-(8.4): attention output ``o`` ``[B, H, T, D]`` (dtype of q) and row LSE ``[B, H, T]`` (fp32).

    ``scale`` defaults to ``1/sqrt(D)``; ``causal`` lets query i see keys j <= i only.
    """
    _check_qkv(("q", "k", "v"), (q, k, v))
    B, H, T, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o = torch.empty_like(q)
    lse = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    if T == 0 or B * H == 0:
        return o, lse
    bm, bn, bd = _blocks(D, q.dtype, block_m, block_n)
    grid = (triton.cdiv(T, bm), B * H)
    _attn_fwd_kernel[grid](
        q, k, v, o, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        H, T, D, scale,
        CAUSAL=bool(causal), FP32_DOT=_fp32_dot(q.dtype),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
    )
    return o, lse


def flash_attention_backward(q, k, v, o, lse, do, causal=True, scale=None, *, block_m=None, block_n=None):
    """Eqs. (8.5)-(8.8): gradients ``(dq, dk, dv)`` of ``sum(o * do)`` from the saved row LSE."""
    _check_qkv(("q", "k", "v", "o", "do"), (q, k, v, o, do))
    B, H, T, D = q.shape
    if not isinstance(lse, torch.Tensor) or tuple(lse.shape) != (B, H, T) or lse.dtype != torch.float32:
        got = (tuple(lse.shape), lse.dtype) if isinstance(lse, torch.Tensor) else type(lse).__name__
        raise ValueError(f"lse must be a float32 tensor of shape {(B, H, T)}; got {got}")
    if lse.device != q.device:
        raise ValueError(f"lse must be on q's device ({q.device}); got {lse.device}")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q, k, v, o, do, lse = (t.contiguous() for t in (q, k, v, o, do, lse))
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if T == 0 or B * H == 0:
        return dq, dk, dv
    bm, bn, bd = _blocks(D, q.dtype, block_m, block_n)
    delta = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    _attn_bwd_delta_kernel[(triton.cdiv(T, bm), B * H)](o, do, delta, T, D, BLOCK_M=bm, BLOCK_D=bd)
    meta = dict(CAUSAL=bool(causal), FP32_DOT=_fp32_dot(q.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd)
    _attn_bwd_dkdv_kernel[(triton.cdiv(T, bn), B * H)](q, k, v, do, lse, delta, dk, dv, T, D, scale, **meta)
    _attn_bwd_dq_kernel[(triton.cdiv(T, bm), B * H)](q, k, v, do, lse, delta, dq, T, D, scale, **meta)
    return dq, dk, dv


class FlashAttention(torch.autograd.Function):
    """Autograd wrapper: the forward kernel saves (q, k, v, o, lse); the backward kernels use them."""

    @staticmethod
    def forward(ctx, q, k, v, causal=True, scale=None):
        o, lse = flash_attention_forward(q, k, v, causal=causal, scale=scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.scale = causal, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(q, k, v, o, lse, do, causal=ctx.causal, scale=ctx.scale)
        return dq, dk, dv, None, None


def flash_attention(q, k, v, causal=True, scale=None):
    """Differentiable flash attention (Eqs. 8.1-8.8) through ``torch.autograd``."""
    return FlashAttention.apply(q, k, v, causal, scale)


# --------------------------------------------------------------------------------------------- reference


def attention_reference(q, k, v, causal=True, scale=None, return_lse=False):
    """Eq. (8.2): plain softmax attention in fp32 (the oracle of the tests): ``softmax(q k^T s + mask) v``.

    Returns the output in fp32 (and the row log-sum-exp when ``return_lse``); differentiable.
    """
    T, D = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if causal:
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    o = torch.matmul(torch.exp(s - lse[..., None]), v.float())
    return (o, lse) if return_lse else o
