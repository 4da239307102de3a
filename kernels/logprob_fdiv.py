"""Fused token log-probabilities and token-level f-divergences over a vocabulary (Eqs. 8.9-8.14).

For every row n of policy logits ``z`` and reference logits ``r`` (``[N, V]``) the forward kernel returns

* ``logp[n] = log pi(y_n)`` and ``ref_logp[n] = log a(y_n)`` for the target token ``y_n``,
* the entropy ``H(pi_n)``,
* ``D_f(pi_n || a_n) = sum_v a_v f(pi_v / a_v)`` for f in {kl, reverse_kl, js, tv} (chapter 03, Eq. 3.2),
* the row statistics the backward needs: both log-sum-exps, ``S_n = sum_v pi_v f'(pi_v / a_v)`` and, for the
  gradient with respect to the reference logits, ``G_n = sum_v a_v g(pi_v / a_v)`` with ``g(t) = f(t) - t f'(t)``,

without ever writing an ``[N, V]`` probability table. Pass 1 streams the row once for the two
log-sum-exps (online max and sum); pass 2 streams it again and forms every term in log space from
``log pi_v = z_v - LSE(z)`` and ``log a_v = r_v - LSE(r)``. The backward writes the one ``[N, V]`` array it
must, the gradient of ``L = sum_n w_n log pi(y_n) + u_n D_f(pi_n || a_n)`` with respect to ``z`` — and, when
asked, a second one, its gradient with respect to the reference logits ``r`` (Eq. 8.15).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .launch import check_device, interpreting

F_NAMES = ("kl", "reverse_kl", "js", "tv")
_F_CODE = {name: i for i, name in enumerate(F_NAMES)}
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LOG2 = math.log(2.0)


class LogprobFdivOutput(NamedTuple):
    """Per-row results of the fused forward, all ``[N]`` float32."""

    logp: torch.Tensor
    ref_logp: torch.Tensor
    entropy: torch.Tensor
    div: torch.Tensor
    lse: torch.Tensor
    ref_lse: torch.Tensor
    row_scalar: torch.Tensor
    ref_row_scalar: torch.Tensor




# ----------------------------------------------------------------------------------------------- kernels


@triton.jit
def _online_lse_update(m, l, x):
    """Eq. (8.1) on one block: returns the new running max and the running sum rescaled to it."""
    m_new = tl.maximum(m, tl.max(x, axis=0))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    l_new = l * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe), axis=0)
    return m_new, l_new


@triton.jit
def _masses(lp, la):
    """pi and a from their logs, where each is zero, and finite stand-ins for log 0 (so that no 0 * inf or
    inf - inf is ever formed: the callers' where's pick the limit)."""
    p_zero = lp == float("-inf")
    a_zero = la == float("-inf")
    return tl.exp(lp), tl.exp(la), p_zero, a_zero, tl.where(p_zero, 0.0, lp), tl.where(a_zero, 0.0, la)


@triton.jit
def _fdiv_terms(lp, la, F: tl.constexpr):
    """Eqs. (8.10) and (8.12): per-entry ``a f(pi/a)`` and ``pi f'(pi/a)`` from ``lp = log pi``, ``la = log a``.

    Zero mass follows chapter 03, Eq. (3.4): ``pi = 0 < a`` contributes ``a f(0)``, ``a = 0 < pi`` contributes
    ``pi lim f(t)/t``, and ``0 f(0/0) = 0``. Everything is formed from log-ratios, so no ratio overflows.
    """
    p, a, p_zero, a_zero, lp_s, la_s = _masses(lp, la)
    if F == 0:  # kl: f = t log t, f' = log t + 1
        log_t = lp_s - la_s
        term = tl.where(p_zero, 0.0, tl.where(a_zero, float("inf"), p * log_t))
        pfp = tl.where(p_zero, 0.0, tl.where(a_zero, float("inf"), p * (log_t + 1.0)))
    elif F == 1:  # reverse_kl: f = -log t, f' = -1/t, so pi f'(t) = -a
        term = tl.where(a_zero, 0.0, tl.where(p_zero, float("inf"), a * (la_s - lp_s)))
        pfp = -a
    elif F == 2:  # js: a f(t) = 1/2 [pi log(pi/m) + a log(a/m)], m = (pi + a)/2; f' = 1/2 log(pi/m)
        top = tl.where(p_zero & a_zero, 0.0, tl.maximum(lp, la))
        gap = tl.where(p_zero | a_zero, float("inf"), tl.abs(lp_s - la_s))
        lm = top + tl.log(1.0 + tl.exp(-gap)) - 0.6931471805599453
        p_part = tl.where(p_zero, 0.0, p * (lp_s - lm))
        a_part = tl.where(a_zero, 0.0, a * (la_s - lm))
        term = 0.5 * (p_part + a_part)
        pfp = 0.5 * p_part
    else:  # tv: a f(t) = 1/2 |pi - a|, f' = 1/2 sign(t - 1)
        term = 0.5 * tl.abs(p - a)
        sgn = tl.where(lp > la, 1.0, tl.where(lp < la, -1.0, 0.0))
        pfp = 0.5 * p * sgn
    return term, pfp


@triton.jit
def _fdiv_ref_terms(lp, la, F: tl.constexpr):
    """Eq. (8.15): per-entry ``a g(pi/a)`` with ``g(t) = f(t) - t f'(t)`` (= d(a f(pi/a))/da), up to a constant
    times ``a`` (which Eq. 8.15 cancels): kl ``-pi``; reverse_kl ``a log(a/pi)``; js ``1/2 a log(a/m)``;
    tv ``-1/2 a sign(pi - a)``. Zero mass as in :func:`_fdiv_terms`."""
    p, a, p_zero, a_zero, lp_s, la_s = _masses(lp, la)
    if F == 0:  # kl: g = -t, so a g = -pi
        agp = -p
    elif F == 1:  # reverse_kl: g = 1 - log t; the constant 1 is dropped
        agp = tl.where(a_zero, 0.0, tl.where(p_zero, float("inf"), a * (la_s - lp_s)))
    elif F == 2:  # js: symmetric in (pi, a), so d/da = 1/2 log(a/m)
        top = tl.where(p_zero & a_zero, 0.0, tl.maximum(lp, la))
        gap = tl.where(p_zero | a_zero, float("inf"), tl.abs(lp_s - la_s))
        lm = top + tl.log(1.0 + tl.exp(-gap)) - 0.6931471805599453
        agp = 0.5 * tl.where(a_zero, 0.0, a * (la_s - lm))
    else:  # tv: d/da 1/2 |pi - a| = -1/2 sign(pi - a)
        sgn = tl.where(lp > la, 1.0, tl.where(lp < la, -1.0, 0.0))
        agp = -0.5 * a * sgn
    return agp


@triton.jit
def _logprob_fdiv_fwd_kernel(
    Z, R, Y, LOGP, REF_LOGP, ENT, DIV, LSE, REF_LSE, SROW, GROW,
    stride_z, stride_r, V, ignore_index,
    F: tl.constexpr, HAS_REF: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """Eqs. (8.9)-(8.12) and (8.15)'s row scalar for one row: pass 1 the two LSEs, pass 2 every term."""
    row = tl.program_id(0).to(tl.int64)
    Z += row * stride_z
    R += row * stride_r
    cols = tl.arange(0, BLOCK_V)

    # Pass 1: online max and sum of exponentials, for the policy and the reference together.
    m_z = tl.full([], float("-inf"), tl.float32)
    l_z = tl.zeros([], tl.float32)
    m_r = tl.full([], float("-inf"), tl.float32)
    l_r = tl.zeros([], tl.float32)
    for start in range(0, V, BLOCK_V):
        offs = start + cols
        ok = offs < V
        z = tl.load(Z + offs, mask=ok, other=float("-inf")).to(tl.float32)
        m_z, l_z = _online_lse_update(m_z, l_z, z)
        if HAS_REF:
            r = tl.load(R + offs, mask=ok, other=float("-inf")).to(tl.float32)
            m_r, l_r = _online_lse_update(m_r, l_r, r)
    # log pi_v = (z_v - m) - log l keeps the large max out of the subtraction that matters.
    log_lz = tl.log(l_z)
    if HAS_REF:
        log_lr = tl.log(l_r)

    # Pass 2: entropy, divergence and the backward's row scalar, all from log-probabilities.
    ent = tl.zeros([BLOCK_V], tl.float32)
    div = tl.zeros([BLOCK_V], tl.float32)
    srow = tl.zeros([BLOCK_V], tl.float32)
    grow = tl.zeros([BLOCK_V], tl.float32)
    for start in range(0, V, BLOCK_V):
        offs = start + cols
        ok = offs < V
        z = tl.load(Z + offs, mask=ok, other=float("-inf")).to(tl.float32)
        lp = (z - m_z) - log_lz
        p = tl.exp(lp)
        ent -= p * tl.where(lp == float("-inf"), 0.0, lp)
        if HAS_REF:
            r = tl.load(R + offs, mask=ok, other=float("-inf")).to(tl.float32)
            la = (r - m_r) - log_lr
            term, pfp = _fdiv_terms(lp, la, F)
            div += term
            srow += pfp
            grow += _fdiv_ref_terms(lp, la, F)

    y = tl.load(Y + row)
    valid = y != ignore_index
    y_safe = tl.where(valid, y, 0)
    z_y = tl.load(Z + y_safe).to(tl.float32)
    tl.store(LOGP + row, tl.where(valid, (z_y - m_z) - log_lz, 0.0))
    tl.store(ENT + row, tl.sum(ent, axis=0))
    tl.store(LSE + row, m_z + log_lz)
    if HAS_REF:
        r_y = tl.load(R + y_safe).to(tl.float32)
        tl.store(REF_LOGP + row, tl.where(valid, (r_y - m_r) - log_lr, 0.0))
        tl.store(DIV + row, tl.sum(div, axis=0))
        tl.store(SROW + row, tl.sum(srow, axis=0))
        tl.store(GROW + row, tl.sum(grow, axis=0))
        tl.store(REF_LSE + row, m_r + log_lr)


@triton.jit
def _logprob_fdiv_bwd_kernel(
    Z, R, Y, LSE, REF_LSE, SROW, GROW, W, U, DZ, DR,
    stride_z, stride_r, stride_dz, stride_dr, V, ignore_index,
    F: tl.constexpr, HAS_REF: tl.constexpr, REF_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """Eqs. (8.13)-(8.14): dL/dz_k = w (1[k=y] - pi_k) + u pi_k (f'(pi_k/a_k) - S) for one row; with
    ``REF_GRAD`` also Eq. (8.15): dL/dr_k = u a_k (g(t_k) - G)."""
    row = tl.program_id(0).to(tl.int64)
    Z += row * stride_z
    R += row * stride_r
    DZ += row * stride_dz
    DR += row * stride_dr
    cols = tl.arange(0, BLOCK_V)
    lse = tl.load(LSE + row)
    y = tl.load(Y + row)
    w = tl.where(y != ignore_index, tl.load(W + row), 0.0)
    if HAS_REF:
        ref_lse = tl.load(REF_LSE + row)
        s_row = tl.load(SROW + row)
        u = tl.load(U + row)
        if REF_GRAD:
            g_row = tl.load(GROW + row)
    for start in range(0, V, BLOCK_V):
        offs = start + cols
        ok = offs < V
        z = tl.load(Z + offs, mask=ok, other=float("-inf")).to(tl.float32)
        lp = z - lse
        p = tl.exp(lp)
        g = w * (tl.where(offs == y, 1.0, 0.0) - p)
        if HAS_REF:
            r = tl.load(R + offs, mask=ok, other=float("-inf")).to(tl.float32)
            la = r - ref_lse
            _, pfp = _fdiv_terms(lp, la, F)
            # u = 0 switches the term off even in a row whose divergence (and S) is infinite.
            g += tl.where(u != 0.0, u * (pfp - p * s_row), 0.0)
            if REF_GRAD:
                agp = _fdiv_ref_terms(lp, la, F)
                gr = tl.where(u != 0.0, u * (agp - tl.exp(la) * g_row), 0.0)
                tl.store(DR + offs, gr.to(DR.dtype.element_ty), mask=ok)
        tl.store(DZ + offs, g.to(DZ.dtype.element_ty), mask=ok)


# --------------------------------------------------------------------------------------------- launchers




def _check_inputs(logits, ref_logits, targets, f, ignore_index):
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor of shape [N, V]; got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D [N, V]; got shape {tuple(logits.shape)}")
    if logits.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"logits must be float32, float16 or bfloat16; got {logits.dtype}")
    check_device(logits)
    n, v = logits.shape
    if v == 0:
        raise ValueError("logits must have a non-empty vocabulary axis; got V = 0")
    if ref_logits is not None:
        if not isinstance(ref_logits, torch.Tensor):
            raise TypeError(f"ref_logits must be a torch.Tensor or None; got {type(ref_logits).__name__}")
        if ref_logits.shape != logits.shape:
            raise ValueError(
                f"ref_logits must have the shape of logits {tuple(logits.shape)}; got {tuple(ref_logits.shape)}"
            )
        if ref_logits.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"ref_logits must be float32, float16 or bfloat16; got {ref_logits.dtype}")
        if ref_logits.device != logits.device:
            raise ValueError(f"ref_logits must be on logits' device ({logits.device}); got {ref_logits.device}")
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be an int64 torch.Tensor of shape [N]; got {type(targets).__name__}")
    if targets.dtype != torch.int64:
        raise TypeError(f"targets must be int64; got {targets.dtype}")
    if tuple(targets.shape) != (n,):
        raise ValueError(
            f"targets must have shape ({n},) to match logits {tuple(logits.shape)}; got {tuple(targets.shape)}"
        )
    if targets.device != logits.device:
        raise ValueError(f"targets must be on logits' device ({logits.device}); got {targets.device}")
    if f not in _F_CODE:
        raise ValueError(f"f must be one of {F_NAMES}; got {f!r}")
    if n > 0:
        bad = (targets != ignore_index) & ((targets < 0) | (targets >= v))
        if bool(bad.any()):
            raise ValueError(
                f"targets must lie in [0, {v}) or equal ignore_index={ignore_index}; "
                f"got {targets[bad][0].item()}"
            )


def _unit_column_stride(x: torch.Tensor) -> torch.Tensor:
    """The kernels step rows by ``stride(0)`` and columns by 1: row-strided views (a slice of a wider
    buffer) are used in place, anything else is copied."""
    return x if x.stride(1) == 1 else x.contiguous()


def _block_v(v: int, block_v):
    if block_v is None:
        block_v = max(16, min(triton.next_power_of_2(v), 8192 if interpreting() else 4096))
    if block_v < 16 or block_v & (block_v - 1):
        raise ValueError(f"block_v must be a power of two >= 16; got {block_v}")
    return block_v


def _num_warps(block_v: int) -> int:
    return 8 if block_v >= 2048 else 4


def logprob_fdiv_forward(logits, ref_logits, targets, f="kl", ignore_index=-100, *, block_v=None):
    """Eqs. (8.9)-(8.12): fused per-row ``log pi(y)``, ``log a(y)``, ``H(pi)``, ``D_f(pi || a)`` and row stats.

    ``ref_logits=None`` computes only ``logp``, ``entropy`` and ``lse``; the reference fields are then
    zeros. Rows whose target equals ``ignore_index`` get ``logp = ref_logp = 0``; their entropy and
    divergence are still computed (the weight ``u`` decides whether they count).
    """
    _check_inputs(logits, ref_logits, targets, f, ignore_index)
    n, v = logits.shape
    logits = _unit_column_stride(logits)
    targets = targets.contiguous()
    has_ref = ref_logits is not None
    ref = _unit_column_stride(ref_logits) if has_ref else logits
    out = LogprobFdivOutput(*(torch.zeros(n, device=logits.device, dtype=torch.float32)
                              for _ in LogprobFdivOutput._fields))
    if n == 0:
        return out
    bv = _block_v(v, block_v)
    _logprob_fdiv_fwd_kernel[(n,)](
        logits, ref, targets, out.logp, out.ref_logp, out.entropy, out.div, out.lse, out.ref_lse, out.row_scalar,
        out.ref_row_scalar, logits.stride(0), ref.stride(0), v, ignore_index,
        F=_F_CODE[f], HAS_REF=has_ref, BLOCK_V=bv, num_warps=_num_warps(bv),
    )
    return out


def logprob_fdiv_backward(logits, ref_logits, targets, saved: LogprobFdivOutput, w, u, f="kl", ignore_index=-100,
                          *, ref_grad: bool = False, block_v=None):
    """Eqs. (8.13)-(8.14): ``dL/dlogits`` ``[N, V]`` (logits' dtype) for ``L = sum w logp + sum u div``.

    ``w`` and ``u`` are ``[N]`` weights (``u`` is ignored, and may be None, when ``ref_logits`` is None).
    ``saved`` is the forward's output (its ``lse``, ``ref_lse``, ``row_scalar`` and ``ref_row_scalar`` are
    read). With ``ref_grad=True`` (a reference is then required) it returns ``(dL/dlogits, dL/dref_logits)``,
    the second by Eq. (8.15) in the reference's dtype, written in the same pass over the row.
    """
    _check_inputs(logits, ref_logits, targets, f, ignore_index)
    n, v = logits.shape
    has_ref = ref_logits is not None
    if ref_grad and not has_ref:
        raise ValueError("ref_grad=True asks for the gradient with respect to ref_logits, but ref_logits is None")
    weights = {"w": w, "u": u} if has_ref else {"w": w}
    for name, t in weights.items():
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n,):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor of shape ({n},); got {got}")
        if t.device != logits.device:
            raise ValueError(f"{name} must be on logits' device ({logits.device}); got {t.device}")
    if not isinstance(saved, LogprobFdivOutput):
        raise TypeError(f"saved must be the LogprobFdivOutput of logprob_fdiv_forward; got {type(saved).__name__}")
    for name in ("lse", "ref_lse", "row_scalar", "ref_row_scalar"):
        t = getattr(saved, name)
        if tuple(t.shape) != (n,) or t.device != logits.device:
            raise ValueError(
                f"saved.{name} must have shape ({n},) on {logits.device}; got {tuple(t.shape)} on {t.device}"
            )
    if has_ref:
        stats = (saved.row_scalar, saved.ref_row_scalar) if ref_grad else (saved.row_scalar,)
        bad = ~torch.stack([torch.isfinite(s) for s in stats]).all(0) & (u != 0)
        if bool(bad.any()):
            rows = bad.nonzero()[:, 0].tolist()[:8]
            raise ValueError(
                f"D_f(pi || a) is infinite in rows {rows} (one distribution puts no mass where the other does), "
                f"so its gradient is undefined there; set u = 0 for those rows"
            )
    logits = _unit_column_stride(logits)
    targets = targets.contiguous()
    ref = _unit_column_stride(ref_logits) if has_ref else logits
    w = w.to(torch.float32).contiguous()
    u = u.to(torch.float32).contiguous() if has_ref else w
    dz = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    dr = torch.empty(ref.shape, dtype=ref.dtype, device=ref.device) if ref_grad else dz
    if n > 0:
        bv = _block_v(v, block_v)
        _logprob_fdiv_bwd_kernel[(n,)](
            logits, ref, targets, saved.lse.float().contiguous(), saved.ref_lse.float().contiguous(),
            saved.row_scalar.float().contiguous(), saved.ref_row_scalar.float().contiguous(), w, u, dz, dr,
            logits.stride(0), ref.stride(0), dz.stride(0), dr.stride(0), v, ignore_index,
            F=_F_CODE[f], HAS_REF=has_ref, REF_GRAD=ref_grad, BLOCK_V=bv, num_warps=_num_warps(bv),
        )
    return (dz, dr) if ref_grad else dz


class LogprobFdiv(torch.autograd.Function):
    """Autograd wrapper returning the scalar ``L = sum_n w_n log pi(y_n) + u_n D_f(pi_n || a_n)``; the
    reference logits get a gradient too (Eq. 8.15) when they require one."""

    @staticmethod
    def forward(ctx, logits, ref_logits, targets, f, w, u, ignore_index=-100):
        saved = logprob_fdiv_forward(logits, ref_logits, targets, f=f, ignore_index=ignore_index)
        valid = targets != ignore_index
        loss = (w.float() * saved.logp * valid).sum()
        if ref_logits is not None:
            loss = loss + (u.float() * saved.div).sum()
        ctx.save_for_backward(logits, ref_logits, targets, w, u, *saved)
        ctx.f, ctx.ignore_index, ctx.has_ref = f, ignore_index, ref_logits is not None
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        logits, ref_logits, targets, w, u, *saved = ctx.saved_tensors
        ref_grad = ctx.has_ref and ctx.needs_input_grad[1]
        out = logprob_fdiv_backward(logits, ref_logits if ctx.has_ref else None, targets, LogprobFdivOutput(*saved),
                                    w, u, f=ctx.f, ignore_index=ctx.ignore_index, ref_grad=ref_grad)
        dz, dr = out if ref_grad else (out, None)
        dr = None if dr is None else dr * grad_loss.to(dr.dtype)
        return dz * grad_loss.to(dz.dtype), dr, None, None, None, None, None


def logprob_fdiv(logits, ref_logits, targets, f, w, u, ignore_index=-100):
    """Differentiable ``L = sum_n w_n log pi(y_n) + u_n D_f(pi_n || a_n)`` (Eqs. 8.9-8.15) via the fused kernels."""
    return LogprobFdiv.apply(logits, ref_logits, targets, f, w, u, ignore_index)


# --------------------------------------------------------------------------------------------- reference


def _reference_terms(lp, la, f):
    """Per-entry ``a f(pi/a)`` and ``pi f'(pi/a)`` in plain PyTorch, with the zero-mass conventions."""
    p, a = lp.exp(), la.exp()
    p_zero, a_zero = torch.isneginf(lp), torch.isneginf(la)
    inf = torch.full_like(lp, float("inf"))
    zero = torch.zeros_like(lp)
    if f == "kl":
        log_t = torch.where(p_zero | a_zero, zero, lp - la)
        term = torch.where(p_zero, zero, torch.where(a_zero, inf, p * log_t))
        pfp = torch.where(p_zero, zero, torch.where(a_zero, inf, p * (log_t + 1)))
    elif f == "reverse_kl":
        log_t = torch.where(p_zero | a_zero, zero, la - lp)
        term = torch.where(a_zero, zero, torch.where(p_zero, inf, a * log_t))
        pfp = -a
    elif f == "js":
        lm = torch.logaddexp(lp, la) - LOG2
        lm = torch.where(p_zero & a_zero, zero, lm)
        p_part = torch.where(p_zero, zero, p * (torch.where(p_zero, zero, lp) - lm))
        a_part = torch.where(a_zero, zero, a * (torch.where(a_zero, zero, la) - lm))
        term = 0.5 * (p_part + a_part)
        pfp = 0.5 * p_part
    elif f == "tv":
        term = 0.5 * (p - a).abs()
        sgn = torch.where(lp > la, 1.0, torch.where(lp < la, -1.0, 0.0)).to(lp.dtype)
        pfp = 0.5 * p * sgn
    else:
        raise ValueError(f"f must be one of {F_NAMES}; got {f!r}")
    return term, pfp


def _reference_ref_terms(lp, la, f):
    """Per-entry ``a g(pi/a)`` of Eq. (8.15) in plain PyTorch (the same constants dropped as in the kernel)."""
    p, a = lp.exp(), la.exp()
    p_zero, a_zero = torch.isneginf(lp), torch.isneginf(la)
    zero = torch.zeros_like(lp)
    if f == "kl":
        return -p
    if f == "reverse_kl":
        log_r = torch.where(p_zero | a_zero, zero, la - lp)
        return torch.where(a_zero, zero, torch.where(p_zero, torch.full_like(lp, float("inf")), a * log_r))
    if f == "js":
        lm = torch.where(p_zero & a_zero, zero, torch.logaddexp(lp, la) - LOG2)
        return 0.5 * torch.where(a_zero, zero, a * (torch.where(a_zero, zero, la) - lm))
    if f == "tv":
        return -0.5 * a * torch.where(lp > la, 1.0, torch.where(lp < la, -1.0, 0.0)).to(lp.dtype)
    raise ValueError(f"f must be one of {F_NAMES}; got {f!r}")


def logprob_fdiv_reference(logits, ref_logits, targets, f="kl", ignore_index=-100, dtype=torch.float64):
    """Eqs. (8.9)-(8.12) and (8.15)'s row scalar in plain PyTorch: the oracle of :func:`logprob_fdiv_forward`.

    Computed with ``log_softmax`` in ``dtype`` (float64 by default) and differentiable with respect to both
    logits; returns the same :class:`LogprobFdivOutput` fields in ``dtype``.
    """
    if f not in _F_CODE:
        raise ValueError(f"f must be one of {F_NAMES}; got {f!r}")
    lp = torch.log_softmax(logits.to(dtype), dim=-1)
    valid = targets != ignore_index
    y = torch.where(valid, targets, torch.zeros_like(targets))
    logp = torch.where(valid, lp.gather(-1, y[:, None])[:, 0], torch.zeros((), dtype=dtype, device=lp.device))
    p = lp.exp()
    entropy = -torch.where(torch.isneginf(lp), torch.zeros_like(lp), p * lp).sum(-1)
    lse = torch.logsumexp(logits.to(dtype), dim=-1)
    zeros = torch.zeros_like(logp)
    if ref_logits is None:
        return LogprobFdivOutput(logp, zeros, entropy, zeros, lse, zeros, zeros, zeros)
    la = torch.log_softmax(ref_logits.to(dtype), dim=-1)
    ref_logp = torch.where(valid, la.gather(-1, y[:, None])[:, 0], torch.zeros((), dtype=dtype, device=la.device))
    term, pfp = _reference_terms(lp, la, f)
    return LogprobFdivOutput(logp, ref_logp, entropy, term.sum(-1), lse,
                             torch.logsumexp(ref_logits.to(dtype), dim=-1), pfp.sum(-1),
                             _reference_ref_terms(lp, la, f).sum(-1))
