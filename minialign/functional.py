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
            gx = r * (gx - bk.sum(gx, axis=-1, keepdims=True) / n - xhat * (bk.sum(gx * xhat, axis=-1, keepdims=True) / n))
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
