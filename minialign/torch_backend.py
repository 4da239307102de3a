"""The torch backend: the same array seam on ``torch.Tensor``, for the GPU path (chapter 08).

torch here is only a store of arrays and a library of elementwise kernels; gradients still come from our
own graph walk (no torch.autograd). Attention, token log-probabilities, token f-divergences and (for large
vocabularies) the output head fused with the log-probabilities dispatch to the Triton kernels of
``minialign.kernels`` (on a CPU they run under ``TRITON_INTERPRET=1``). The kernels take float32, float16
and bfloat16; on float64 arrays every hook declines and the engine computes the same itself.

    bk = TorchBackend("cuda")
    model = GPT(config).to(bk)
"""
from __future__ import annotations

import numpy as np
import torch

from .backend import NumpyBackend, _is_basic_index, register_backend

# Below this vocabulary GPT.token_logprobs writes the [N, V] logits and runs the fused log-prob kernel on them;
# from it on, the chunked head of kernels/linear_logprob.py never holds them all (chapter 08, §7: it saves
# memory only when V > d, and costs one more N×V×d product; the time crossover is measured by
# `python -m minialign.bench kernels --only linear` on a GPU).
LINEAR_LOGPROB_MIN_VOCAB = 32_768

_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
           np.dtype(np.float16): torch.float16, np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32,
           np.dtype(np.bool_): torch.bool}


def _torch_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    return _DTYPES[np.dtype(dtype)]


class TorchBackend(NumpyBackend):
    """The engine's array operations on torch tensors of one device."""

    name = "torch"
    float32 = torch.float32
    float64 = torch.float64

    def __init__(self, device="cpu", use_kernels: bool = True,
                 linear_logprob_min_vocab: int = LINEAR_LOGPROB_MIN_VOCAB):
        self.device = torch.device(device)
        self.use_kernels = use_kernels
        self.linear_logprob_min_vocab = linear_logprob_min_vocab
        register_backend(torch.Tensor, self)

    def _kernels_take(self, *arrays) -> bool:
        return self.use_kernels and all(x.dtype in (torch.float32, torch.float16, torch.bfloat16) for x in arrays)

    # creation and conversion
    def asarray(self, x, dtype=None):
        if isinstance(x, torch.Tensor):
            x = x.to(self.device)
            return x if dtype is None else x.to(_torch_dtype(dtype))
        return torch.as_tensor(np.asarray(x), device=self.device, dtype=_torch_dtype(dtype))

    def to_numpy(self, x):
        return x.detach().cpu().numpy()

    def from_numpy(self, x, like=None):
        return torch.as_tensor(np.array(x, copy=True), device=self.device)

    def zeros(self, shape, dtype, like=None):
        return torch.zeros(shape, dtype=_torch_dtype(dtype), device=self.device)

    def zeros_like(self, x):
        return torch.zeros_like(x)

    def ones_like(self, x):
        return torch.ones_like(x)

    def full(self, shape, value, dtype, like=None):
        return torch.full(shape, value, dtype=_torch_dtype(dtype), device=self.device)

    def arange(self, n, like=None):
        return torch.arange(n, device=self.device)

    def is_floating(self, x):
        return x.is_floating_point()

    def is_integer(self, x):
        return not x.is_floating_point() and x.dtype != torch.bool

    def astype(self, x, dtype):
        return x.to(_torch_dtype(dtype))

    # elementwise
    exp = staticmethod(torch.exp)
    log = staticmethod(torch.log)
    log1p = staticmethod(torch.log1p)
    tanh = staticmethod(torch.tanh)
    sqrt = staticmethod(torch.sqrt)
    abs = staticmethod(torch.abs)
    sign = staticmethod(torch.sign)
    maximum = staticmethod(torch.maximum)

    def minimum(self, x, c):
        return torch.clamp(x, max=c) if isinstance(c, (int, float)) else torch.minimum(x, c)
    isfinite = staticmethod(torch.isfinite)
    logaddexp = staticmethod(torch.logaddexp)

    def where(self, cond, a, b):
        return torch.where(self.asarray(cond), a, b)

    # reductions
    def sum(self, x, axis=None, keepdims=False):
        if axis is None:
            return x.sum()
        return x.sum(dim=axis, keepdim=keepdims)

    def max(self, x, axis=None, keepdims=False):
        if axis is None:
            return x.amax()
        return x.amax(dim=axis, keepdim=keepdims)

    # shapes
    def reshape(self, x, shape):
        return x.reshape(shape)

    def transpose(self, x, axes):
        return x.permute(*axes)

    def swapaxes(self, x, a, b):
        return x.transpose(a, b)

    def broadcast_to(self, x, shape):
        return x.expand(*shape)

    def concatenate(self, xs, axis):
        return torch.cat(list(xs), dim=axis)

    def split_at(self, x, indices, axis):
        return torch.tensor_split(x, list(indices), dim=axis)

    def matmul(self, a, b):
        return a @ b

    # indexing
    def take_along_axis(self, x, index, axis):
        return torch.take_along_dim(x, self.asarray(index), dim=axis)

    def index_add(self, shape, dtype, key, values, like=None):
        out = torch.zeros(shape, dtype=_torch_dtype(dtype), device=self.device)
        if _is_basic_index(key):
            out[key] = values
            return out
        parts = key if isinstance(key, tuple) else (key,)
        index = tuple(self.asarray(k) for k in parts)
        if not isinstance(values, torch.Tensor):
            values = torch.as_tensor(values, dtype=out.dtype, device=self.device)
        return out.index_put_(index, values.expand(torch.broadcast_shapes(*(i.shape for i in index))), accumulate=True)

    def embedding_grad(self, idx, grad, num_embeddings):
        d = grad.shape[-1]
        out = torch.zeros((num_embeddings, d), dtype=grad.dtype, device=self.device)
        return out.index_add_(0, self.asarray(idx).reshape(-1), grad.reshape(-1, d))

    def index_grids(self, shape, like=None):
        return [torch.arange(n, device=self.device).reshape([-1 if i == d else 1 for i in range(len(shape))])
                for d, n in enumerate(shape)]

    def bernoulli_mask(self, rng, shape, keep, dtype, like=None):
        return self.asarray((rng.random(shape) < keep), dtype=dtype)

    def causal_mask(self, tq, tk, like=None):
        return torch.ones((tq, tk), dtype=torch.bool, device=self.device).triu(tk - tq + 1)

    # fused hooks (declared in backend.NumpyBackend): the Triton kernels, unless use_kernels is False
    def flash_attention(self, q, k, v, scale):
        """Causal attention by the Triton flash kernel: returns (O, backward(dO) -> (dQ, dK, dV))."""
        if not self._kernels_take(q, k, v):
            return None
        from .kernels.attention import flash_attention_backward, flash_attention_forward

        o, lse = flash_attention_forward(q, k, v, causal=True, scale=scale)

        def backward(do):
            return flash_attention_backward(q, k, v, o, lse, do.contiguous(), causal=True, scale=scale)

        return o, backward

    def token_logprobs(self, logits, targets, ignore_index):
        """log π(y_n) per row by the fused Triton kernel (no [N, V] softmax written); returns
        (logp [N], backward(w [N]) -> d logits) for the loss Σ w_n log π(y_n)."""
        if not self._kernels_take(logits):
            return None
        from .kernels.logprob_fdiv import logprob_fdiv_backward, logprob_fdiv_forward

        targets = self.asarray(targets)
        saved = logprob_fdiv_forward(logits, None, targets, ignore_index=ignore_index)

        def backward(w):
            return logprob_fdiv_backward(logits, None, targets, saved, w.to(torch.float32), None,
                                         ignore_index=ignore_index)

        return saved.logp.to(logits.dtype), backward

    def token_fdiv(self, logits_p, logits_q, f, ref_grad):
        """D_f(softmax(z)‖softmax(r)) per row by the fused Triton kernel: (D [N], backward(u [N]) -> (dz, dr or
        None)); the reference gradient (Eq. 8.15) is written in the same pass when ``ref_grad``."""
        if not self._kernels_take(logits_p, logits_q):
            return None
        from .kernels.logprob_fdiv import logprob_fdiv_backward, logprob_fdiv_forward

        none = torch.full((logits_p.shape[0],), -100, dtype=torch.int64, device=logits_p.device)
        saved = logprob_fdiv_forward(logits_p, logits_q, none, f=f, ignore_index=-100)

        def backward(u):
            u = u.to(torch.float32)
            out = logprob_fdiv_backward(logits_p, logits_q, none, saved, torch.zeros_like(u), u, f=f,
                                        ignore_index=-100, ref_grad=ref_grad)
            return out if ref_grad else (out, None)

        return saved.div, backward

    def linear_logprobs(self, hidden, weight, targets, ignore_index):
        """log softmax(h Wᵀ)_y per row by the chunked head (kernels/linear_logprob.py) when the vocabulary is at
        least ``linear_logprob_min_vocab``: (logp [N], backward(w [N]) -> (dh, dW)), the chunk logits recomputed
        in the backward. Below it, None: the engine writes the logits and uses :meth:`token_logprobs`."""
        if weight.shape[0] < self.linear_logprob_min_vocab or not self._kernels_take(hidden, weight):
            return None
        from .kernels.linear_logprob import linear_logprob_backward, linear_logprob_forward

        targets = self.asarray(targets)
        logp, lse = linear_logprob_forward(hidden, weight, targets, ignore_index=ignore_index)

        def backward(w):
            return linear_logprob_backward(hidden, weight, targets, lse, w.to(torch.float32), ignore_index=ignore_index)

        return logp, backward
