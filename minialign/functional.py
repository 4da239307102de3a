"""Fused operations: each forward computed in one go, its backward written by hand beside it (chapter 01).

Built from primitive ops these would record many graph nodes and store many intermediates; fused, each is
one node whose backward is the closed-form vector-Jacobian product. Every one is gradchecked and compared
with torch autograd in ``tests/test_functional.py``.
"""
from __future__ import annotations

import math

from .tensor import Tensor, normalise_axes, unbroadcast


def _as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def _no_empty_rows(bk, m, what):
    if bk.any(m == -math.inf):
        raise ValueError(f"{what} of a row whose entries are all -inf (no finite logit): the result would be NaN")


def _logsumexp(bk, x, axis):
    m = bk.max(x, axis=axis, keepdims=True)
    m = bk.where(bk.isfinite(m), m, 0.0)
    return m + bk.log(bk.sum(bk.exp(x - m), axis=axis, keepdims=True))


def softmax(x, axis: int = -1) -> Tensor:
    """Eq. (1.6): y = e^{x−max} / Σ e^{x−max}; backward dx = y ∘ (dy − Σ dy∘y)."""
    x = _as_tensor(x)
    bk = x.bk
    m = bk.max(x.data, axis=axis, keepdims=True)
    _no_empty_rows(bk, m, "softmax")
    e = bk.exp(x.data - m)
    y = e / bk.sum(e, axis=axis, keepdims=True)

    def backward(g):
        # BEGIN SOLUTION backward
        x._accumulate(y * (g - bk.sum(g * y, axis=axis, keepdims=True)))
        # END SOLUTION

    return Tensor._result(y, (x,), backward, "softmax")


def log_softmax(x, axis: int = -1) -> Tensor:
    """Eq. (1.7): y = x − logsumexp(x); backward dx = dy − softmax(x) Σ dy."""
    x = _as_tensor(x)
    bk = x.bk
    _no_empty_rows(bk, bk.max(x.data, axis=axis, keepdims=True), "log_softmax")
    y = x.data - _logsumexp(bk, x.data, axis)

    def backward(g):
        x._accumulate(g - bk.exp(y) * bk.sum(g, axis=axis, keepdims=True))

    return Tensor._result(y, (x,), backward, "log_softmax")


def logsumexp(x, axis=-1, keepdims=False) -> Tensor:
    """log Σ e^x along ``axis``; its gradient is softmax(x)."""
    x = _as_tensor(x)
    bk = x.bk
    axes = normalise_axes(axis, x.ndim)
    lse = _logsumexp(bk, x.data, axes)

    def backward(g):
        if not keepdims:
            g = bk.reshape(g, tuple(1 if i in axes else s for i, s in enumerate(x.shape)))
        x._accumulate(g * bk.exp(x.data - lse))

    out = lse if keepdims else bk.reshape(lse, tuple(s for i, s in enumerate(x.shape) if i not in axes))
    return Tensor._result(out, (x,), backward, "logsumexp")


def log_sigmoid(x) -> Tensor:
    """Eq. (5.3)'s building block: log σ(x) = −softplus(−x), with softplus(u) = r + log(1 + e^{u − 2r}), r = max(u, 0)
    (= max(u, 0) + log(1 + e^{−|u|})). The exponent is never positive, so nothing overflows for any finite x.

    Composed from the engine's elementwise ops, whose backwards chain to d log σ(x)/dx = σ(−x) everywhere —
    at x = 0 too, where relu'(0) = 0 leaves the ½ to the second term.
    """
    u = -_as_tensor(x)
    r = u.relu()
    return -(r + (1.0 + (u - 2.0 * r).exp()).log())


def check_targets(targets, logits_shape, ignore_index=None, what="targets"):
    """Token ids must be integers of shape ``logits_shape[:-1]`` in [0, V) (or ``ignore_index``)."""
    if isinstance(targets, Tensor):
        targets = targets.data
    if not hasattr(targets, "dtype") or str(targets.dtype).startswith(("float", "torch.float", "bool", "torch.bool")):
        raise TypeError(f"{what} must be an integer array of token ids; got {getattr(targets, 'dtype', type(targets))}")
    if tuple(targets.shape) != tuple(logits_shape[:-1]):
        raise ValueError(f"{what} must have shape {tuple(logits_shape[:-1])} (logits without the last axis); "
                         f"got {tuple(targets.shape)}")
    v = logits_shape[-1]
    bad = (targets < 0) | (targets >= v)
    if ignore_index is not None:
        bad = bad & (targets != ignore_index)
    if bool(bad.any()):
        raise ValueError(f"{what} must lie in [0, {v}) (or equal ignore_index={ignore_index}); "
                         f"got values in [{int(targets.min())}, {int(targets.max())}]")
    return targets


def cross_entropy(logits, targets, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Eq. (1.8): ℓ = −log softmax(z)_y, averaged over the targets that are not ``ignore_index``.

    Backward: dz = (softmax(z) − onehot(y)) · dℓ, zero on ignored rows. A backend with a fused kernel for
    token log-probabilities (the torch backend) computes the same without writing the softmax.
    """
    logits = _as_tensor(logits)
    bk = logits.bk
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")
    targets = bk.asarray(check_targets(targets, logits.shape, ignore_index))
    v = logits.shape[-1]
    z = bk.reshape(logits.data, (-1, v))
    y = bk.reshape(targets, (-1,))
    keep = y != ignore_index
    fused = bk.token_logprobs(z, y, ignore_index)
    if fused is not None:
        logp, logp_backward = fused
    else:
        y_safe = bk.where(keep, y, 0)
        lse = _logsumexp(bk, z, -1)
        logp = bk.reshape(bk.take_along_axis(z, bk.reshape(y_safe, (-1, 1)), 1) - lse, (-1,))

        def logp_backward(w):  # d/dz of Σ_n w_n log π(y_n) = w_n (onehot(y_n) − π_n)
            onehot = bk.index_add(z.shape, z.dtype, (bk.arange(z.shape[0], like=z), y_safe), 1.0, like=z)
            return bk.reshape(w, (-1, 1)) * (onehot - bk.exp(z - lse))

    losses = -logp * keep
    n = max(int(keep.sum()), 1)
    if reduction == "mean":
        out, scale = bk.sum(losses) / n, 1.0 / n
    elif reduction == "sum":
        out, scale = bk.sum(losses), 1.0
    else:
        out, scale = bk.reshape(losses, tuple(targets.shape)), None

    def backward(g):
        w = -(bk.reshape(g, (-1,)) if scale is None else g * scale) * keep
        dz = logp_backward(bk.astype(w, z.dtype))
        logits._accumulate(bk.reshape(bk.astype(dz, logits.dtype), logits.shape))

    return Tensor._result(bk.astype(out, logits.dtype), (logits,), backward, "cross_entropy")


def layer_norm(x, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Eq. (1.9): y = (x − μ)/√(σ² + ε) · w + b over the last axis.

    Backward with x̂ the normalised input and r = 1/√(σ²+ε):
    dx = r · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ ∘ x̂)), dx̂ = dy ∘ w.
    """
    x = _as_tensor(x)
    bk = x.bk
    mu = bk.sum(x.data, axis=-1, keepdims=True) / x.shape[-1]
    xc = x.data - mu
    var = bk.sum(xc * xc, axis=-1, keepdims=True) / x.shape[-1]
    r = 1.0 / bk.sqrt(var + eps)
    xhat = xc * r
    parents = [x]
    y = xhat
    if weight is not None:
        weight = _as_tensor(weight)
        parents.append(weight)
        y = y * weight.data
    if bias is not None:
        bias = _as_tensor(bias)
        parents.append(bias)
        y = y + bias.data

    def backward(g):
        # BEGIN SOLUTION backward
        if weight is not None and weight.requires_grad:
            weight._accumulate(unbroadcast(g * xhat, weight.shape, bk))
        if bias is not None and bias.requires_grad:
            bias._accumulate(unbroadcast(g, bias.shape, bk))
        if x.requires_grad:
            gx = g * weight.data if weight is not None else g
            n = x.shape[-1]
            gx = r * (gx - bk.sum(gx, axis=-1, keepdims=True) / n
                      - xhat * (bk.sum(gx * xhat, axis=-1, keepdims=True) / n))
            x._accumulate(gx)
        # END SOLUTION

    return Tensor._result(y, tuple(parents), backward, "layer_norm")


_GELU_C = math.sqrt(2.0 / math.pi)


def gelu(x) -> Tensor:
    """Eq. (1.10): GELU, tanh form: y = ½x(1 + tanh u), u = c(x + 0.044715x³), c = √(2/π).

    Computed as y = x·σ(2u), the same function (½(1 + tanh u) = σ(2u)) with one exp in place of a tanh.
    Backward: dy/dx = σ(2u) + x·σ(2u)(1 − σ(2u))·2c(1 + 3·0.044715x²).
    """
    x = _as_tensor(x)
    bk = x.bk
    xd = x.data
    x2 = xd * xd
    e = x2 * (-2 * 0.044715 * _GELU_C)
    e -= 2 * _GELU_C
    e *= xd  # −2u
    e = bk.exp(bk.minimum(e, 80.0))  # e^{−2u}; beyond 80, σ(2u) < 1e-34 and y is 0 to float precision
    e += 1.0
    sig = 1.0 / e  # σ(2u)
    y = xd * sig

    def backward(g):
        d = 1.0 - sig
        d *= sig
        d *= xd
        du = x2 * (2 * 3 * 0.044715 * _GELU_C)
        du += 2 * _GELU_C
        d *= du
        d += sig
        d *= g
        x._accumulate(d)

    return Tensor._result(y, (x,), backward, "gelu")


def linear(x, weight, bias=None) -> Tensor:
    """Eq. (1.11): y = x Wᵀ + b with W of shape [out, in], computed as one 2-D product over all leading axes.

    Backward: dx = dy W, dW = dyᵀ x, db = Σ dy.
    """
    x, weight = _as_tensor(x), _as_tensor(weight)
    bk = x.bk
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input has {x.shape[-1]} features but the weight expects {weight.shape[1]} "
                         f"(weight shape {weight.shape})")
    lead = x.shape[:-1]
    x2 = bk.reshape(x.data, (-1, x.shape[-1]))
    y = bk.matmul(x2, bk.swapaxes(weight.data, 0, 1))
    parents = (x, weight)
    if bias is not None:
        bias = _as_tensor(bias)
        y = y + bias.data
        parents = (x, weight, bias)

    def backward(g):
        g2 = bk.reshape(g, (-1, g.shape[-1]))
        if x.requires_grad:
            x._accumulate(bk.reshape(bk.matmul(g2, weight.data), x.shape))
        if weight.requires_grad:
            weight._accumulate(bk.matmul(bk.swapaxes(g2, 0, 1), x2))
        if bias is not None and bias.requires_grad:
            bias._accumulate(bk.sum(g2, axis=0))

    return Tensor._result(bk.reshape(y, lead + (weight.shape[0],)), parents, backward, "linear")


def embedding(idx, weight) -> Tensor:
    """Rows of ``weight`` looked up by integer ids; the backward sums gradients into the looked-up rows."""
    weight = _as_tensor(weight)
    bk = weight.bk
    idx = bk.asarray(check_targets(idx, tuple(idx.shape) + (weight.shape[0],), what="token ids"))

    def backward(g):
        weight._accumulate(bk.embedding_grad(idx, g, weight.shape[0]))

    return Tensor._result(weight.data[idx], (weight,), backward, "embedding")


def dropout(x, p: float, rng, training: bool = True) -> Tensor:
    """Zero each entry with probability p and scale the rest by 1/(1−p); identity when not training."""
    x = _as_tensor(x)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1); got {p}")
    if not training or p == 0.0:
        return x
    bk = x.bk
    mask = bk.bernoulli_mask(rng, x.shape, 1.0 - p, x.dtype, like=x.data) / (1.0 - p)
    return Tensor._result(x.data * mask, (x,), lambda g: x._accumulate(g * mask), "dropout")


def scaled_dot_product_attention(q, k, v, causal: bool = True, scale=None) -> Tensor:
    """Eq. (2.4): O = softmax(Q Kᵀ·s + M) V with the causal mask M, over the last two axes.

    Queries are the last Tq of Tk positions (Tq < Tk when keys and values come from a cache), so query i
    sees keys j ≤ Tk − Tq + i. Backward (chapter 08, Eqs. 8.5–8.8): dV = Pᵀ dO, dP = dO Vᵀ,
    dS = P ∘ (dP − Σ_j dP∘P), dQ = dS K·s, dK = dSᵀ Q·s.
    """
    q, k, v = _as_tensor(q), _as_tensor(k), _as_tensor(v)
    bk = q.bk
    if q.ndim < 2 or k.shape != v.shape or q.shape[-1] != k.shape[-1] or q.shape[:-2] != k.shape[:-2]:
        raise ValueError(f"attention needs q [..., Tq, D], k and v [..., Tk, D] with matching batch axes; "
                         f"got q {q.shape}, k {k.shape}, v {v.shape}")
    tq, tk = q.shape[-2], k.shape[-2]
    if tq > tk:
        raise ValueError(f"attention: more queries ({tq}) than keys ({tk})")
    s = (1.0 / math.sqrt(q.shape[-1])) if scale is None else scale
    flash = bk.flash_attention(q.data, k.data, v.data, s) if causal and tq == tk else None
    if flash is not None:  # a backend with a flash-attention kernel: O and a backward that recomputes P
        out, flash_backward = flash

        def backward(g):
            dq, dk, dv = flash_backward(g)
            q._accumulate(dq)
            k._accumulate(dk)
            v._accumulate(dv)

        return Tensor._result(out, (q, k, v), backward, "flash_attention")
    # BEGIN SOLUTION attention
    scores = bk.matmul(q.data, bk.swapaxes(k.data, -1, -2)) * s
    if causal:
        scores = bk.where(bk.causal_mask(tq, tk, like=scores), -math.inf, scores)
    scores = scores - bk.max(scores, axis=-1, keepdims=True)
    p = bk.exp(scores)
    p = p / bk.sum(p, axis=-1, keepdims=True)
    out = bk.matmul(p, v.data)

    def backward(g):
        if v.requires_grad:
            v._accumulate(bk.matmul(bk.swapaxes(p, -1, -2), g))
        dp = bk.matmul(g, bk.swapaxes(v.data, -1, -2))
        ds = p * (dp - bk.sum(dp * p, axis=-1, keepdims=True))
        if q.requires_grad:
            q._accumulate(bk.matmul(ds, k.data) * s)
        if k.requires_grad:
            k._accumulate(bk.matmul(bk.swapaxes(ds, -1, -2), q.data) * s)
    # END SOLUTION

    return Tensor._result(out, (q, k, v), backward, "attention")


# ------------------------------------------------------------------ token-level f-divergences (chapter 08, §6)
FDIV_NAMES = ("kl", "reverse_kl", "js", "tv")
_LOG2 = math.log(2.0)


def _fdiv_parts(bk, lp, la, f):
    """Per entry, from log π and log a: a·f(π/a) (Eq. 8.10), π·f'(π/a) (Eq. 8.12) and a·g(π/a) with
    g = f − t f' (Eq. 8.15, up to a constant times a, which the gradient cancels).

    Zero mass follows chapter 03: π = 0 < a costs a f(0), a = 0 < π costs π lim f(t)/t, 0·f(0/0) = 0; finite
    stand-ins replace log 0 before any product, so no 0·∞ is formed.
    """
    inf = math.inf
    p_zero, a_zero = lp == -inf, la == -inf
    lp_s, la_s = bk.where(p_zero, 0.0, lp), bk.where(a_zero, 0.0, la)
    p, a = bk.exp(lp), bk.exp(la)
    if f == "kl":  # f = t log t, f' = log t + 1, g = −t
        log_t = lp_s - la_s
        term = bk.where(p_zero, 0.0, bk.where(a_zero, inf, p * log_t))
        pfp = bk.where(p_zero, 0.0, bk.where(a_zero, inf, p * (log_t + 1.0)))
        return term, pfp, -p
    if f == "reverse_kl":  # f = −log t, π f'(t) = −a, g = 1 − log t (the 1 dropped)
        term = bk.where(a_zero, 0.0, bk.where(p_zero, inf, a * (la_s - lp_s)))
        return term, -a, term
    if f == "js":  # a f(t) = ½[π log(π/m) + a log(a/m)], m = (π + a)/2: symmetric, so g-part = ½ a log(a/m)
        top = bk.where(p_zero & a_zero, 0.0, bk.maximum(lp, la))
        gap = bk.where(p_zero | a_zero, inf, bk.abs(lp_s - la_s))
        lm = top + bk.log1p(bk.exp(-gap)) - _LOG2
        p_part = bk.where(p_zero, 0.0, p * (lp_s - lm))
        a_part = bk.where(a_zero, 0.0, a * (la_s - lm))
        return 0.5 * (p_part + a_part), 0.5 * p_part, 0.5 * a_part
    if f == "tv":  # a f(t) = ½|π − a|, f' = ½ sign(t − 1)
        sgn = bk.where(lp > la, 1.0, bk.where(lp < la, -1.0, 0.0))
        return 0.5 * bk.abs(p - a), 0.5 * p * sgn, -0.5 * a * sgn
    raise ValueError(f"f must be one of {FDIV_NAMES}; got {f!r}")


def _token_fdiv_rows(bk, z, r, f, ref_grad):
    """The engine's own token f-divergence on rows ``z, r [N, V]``: (D [N], backward(u) → (dz, dr or None))."""
    lp, la = z - _logsumexp(bk, z, -1), r - _logsumexp(bk, r, -1)
    term, pfp, agp = _fdiv_parts(bk, lp, la, f)
    div, s_row, g_row = bk.sum(term, axis=-1), bk.sum(pfp, axis=-1), bk.sum(agp, axis=-1)

    def backward(u):
        # rows with u = 0 may hold infinite terms (a masked-out infinite divergence): zero them before any product
        live = bk.reshape(u != 0, (-1, 1))
        u = bk.reshape(u, (-1, 1))

        def grad(part, prob, row):
            return u * (bk.where(live, part, 0.0) - prob * bk.where(live, bk.reshape(row, (-1, 1)), 0.0))

        dz = grad(pfp, bk.exp(lp), s_row)
        return dz, (grad(agp, bk.exp(la), g_row) if ref_grad else None)

    return div, backward


def token_fdiv(logits_p, logits_q, f: str = "kl", mask=None) -> Tensor:
    """Per position, D_f(p‖q) = Σ_v q_v f(p_v/q_v) between the next-token distributions p = softmax(logits_p)
    and q = softmax(logits_q) (Eq. 8.10), zero where ``mask`` is False; differentiable in both logits.

    Backward (Eqs. 8.13 and 8.15), with u the incoming gradient of a position, t = p/q, S = Σ p f'(t) and
    G = Σ q g(t), g = f − t f':  d/dz_k = u p_k (f'(t_k) − S),  d/dr_k = u q_k (g(t_k) − G).
    A backend with a fused kernel (the torch backend) computes both without writing an [N, V] softmax; it is
    asked for the second gradient only when ``logits_q`` requires one. A position whose divergence is infinite
    (kl with q = 0 < p) has no gradient: its backward refuses it unless the position is masked out.
    """
    logits_p, logits_q = _as_tensor(logits_p), _as_tensor(logits_q)
    bk = logits_p.bk
    if f not in FDIV_NAMES:
        raise ValueError(f"f must be one of {FDIV_NAMES}; got {f!r}")
    if logits_p.shape != logits_q.shape or logits_p.ndim < 1:
        raise ValueError(f"token_fdiv needs two logits arrays of one shape [..., V]; got {logits_p.shape} and "
                         f"{logits_q.shape}")
    lead, v = logits_p.shape[:-1], logits_p.shape[-1]
    if mask is None:
        mask = bk.full(lead, True, bool, like=logits_p.data)
    else:
        mask = mask.data if isinstance(mask, Tensor) else mask
        if tuple(mask.shape) != lead:
            raise ValueError(f"mask must have shape {lead} (logits without the last axis); got {tuple(mask.shape)}")
        mask = bk.asarray(mask, dtype=bool)
    z, r = bk.reshape(logits_p.data, (-1, v)), bk.reshape(logits_q.data, (-1, v))
    for name, x in (("logits_p", z), ("logits_q", r)):
        _no_empty_rows(bk, bk.max(x, axis=-1, keepdims=True), f"token_fdiv's {name}")
    keep = bk.reshape(mask, (-1,))
    ref_grad = logits_q.requires_grad
    fused = bk.token_fdiv(z, r, f, ref_grad)
    div, rows_backward = fused if fused is not None else _token_fdiv_rows(bk, z, r, f, ref_grad)
    div = bk.astype(div, logits_p.dtype)
    out = bk.reshape(bk.where(keep, div, 0.0), lead)

    def backward(g):
        u = bk.where(keep, bk.reshape(g, (-1,)), 0.0)
        bad = (u != 0) & ~bk.isfinite(div)
        if bk.any(bad):
            raise ValueError(f"D_{f} is infinite at {int(bk.to_numpy(bad).sum())} unmasked position(s) (one "
                             "distribution puts no mass where the other does), so its gradient is undefined there")
        dz, dr = rows_backward(bk.astype(u, z.dtype))
        logits_p._accumulate(bk.reshape(bk.astype(dz, logits_p.dtype), logits_p.shape))
        if dr is not None:
            logits_q._accumulate(bk.reshape(bk.astype(dr, logits_q.dtype), logits_q.shape))

    return Tensor._result(out, (logits_p, logits_q), backward, "token_fdiv")


def linear_logprobs(x, weight, targets, ignore_index: int = -100) -> Tensor:
    """log softmax(x Wᵀ)_y at every position (Eq. 8.16 with u = 0): the output head and the token
    log-probabilities in one op, zero where the target is ``ignore_index``.

    The same as ``−cross_entropy(linear(x, W), y, reduction="none")``, which is what it computes unless the
    backend has a fused kernel for it (the torch backend, for large vocabularies: there the logits exist one
    chunk of rows at a time and are recomputed in the backward). Backward: dz = w (onehot(y) − softmax(z)),
    dx = dz W, dW = dzᵀ x.
    """
    x, weight = _as_tensor(x), _as_tensor(weight)
    bk = x.bk
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear_logprobs: input has {x.shape[-1]} features but the weight expects {weight.shape[1]}")
    targets = check_targets(targets, x.shape[:-1] + (weight.shape[0],), ignore_index)
    h = bk.reshape(x.data, (-1, x.shape[-1]))
    y = bk.reshape(bk.asarray(targets), (-1,))
    fused = bk.linear_logprobs(h, weight.data, y, ignore_index)
    if fused is None:
        return -cross_entropy(linear(x, weight), targets, ignore_index=ignore_index, reduction="none")
    logp, fused_backward = fused

    def backward(g):
        dh, dw = fused_backward(bk.astype(bk.reshape(g, (-1,)), logp.dtype))
        if x.requires_grad:
            x._accumulate(bk.reshape(bk.astype(dh, x.dtype), x.shape))
        if weight.requires_grad:
            weight._accumulate(bk.astype(dw, weight.dtype))

    out = bk.reshape(bk.astype(logp, x.dtype), tuple(targets.shape))
    return Tensor._result(out, (x, weight), backward, "linear_logprobs")
