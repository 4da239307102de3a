"""The array seam: every array operation the engine performs goes through a backend.

:class:`NumpyBackend` is the default and, method by method, the declaration of the seam: a backend for
another array library (``torch_backend.TorchBackend``, for the GPU path) subclasses it and overrides every
method for its own arrays. The engine (``tensor.py``, ``functional.py``) never imports an array library
other than NumPy and never asks which backend it has; ``backend_of(array)`` picks the backend from the
array's type.

The contract has three parts:

* array operations (creation, elementwise, reductions, shapes, indexing, randomness), each with NumPy's
  meaning;
* ``index_grids`` and ``embedding_grad``, the two scatter/gather helpers whose fast form differs by library;
* fused hooks — ``flash_attention``, ``token_logprobs``, ``token_fdiv`` and ``linear_logprobs`` — which
  return None here ("not available"). A backend with a fused kernel returns the result and a backward closure
  instead; the engine calls the hook and computes the same quantity with the operations above when it gets
  None (chapter 08).
"""
from __future__ import annotations

import ctypes
import sys

import numpy as np


class NumpyBackend:
    """The array operations of the engine, on NumPy arrays."""

    name = "numpy"
    float32 = np.float32
    float64 = np.float64

    # creation and conversion
    def asarray(self, x, dtype=None):
        return np.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        return np.asarray(x)

    def from_numpy(self, x, like=None):
        return np.array(x, copy=True)

    def zeros(self, shape, dtype, like=None):
        return np.zeros(shape, dtype=dtype)

    def zeros_like(self, x):
        return np.zeros_like(x)

    def ones_like(self, x):
        return np.ones_like(x)

    def full(self, shape, value, dtype, like=None):
        return np.full(shape, value, dtype=dtype)

    def arange(self, n, like=None):
        return np.arange(n)

    def is_floating(self, x):
        return np.issubdtype(x.dtype, np.floating)

    def is_integer(self, x):
        return np.issubdtype(x.dtype, np.integer)

    def astype(self, x, dtype):
        return x.astype(dtype, copy=False)

    # elementwise
    exp = staticmethod(np.exp)
    log = staticmethod(np.log)
    log1p = staticmethod(np.log1p)
    tanh = staticmethod(np.tanh)
    sqrt = staticmethod(np.sqrt)
    abs = staticmethod(np.abs)
    sign = staticmethod(np.sign)
    maximum = staticmethod(np.maximum)
    minimum = staticmethod(np.minimum)
    where = staticmethod(np.where)
    isfinite = staticmethod(np.isfinite)
    logaddexp = staticmethod(np.logaddexp)

    # reductions: numpy spells them axis/keepdims
    def sum(self, x, axis=None, keepdims=False):
        return x.sum(axis=axis, keepdims=keepdims)

    def max(self, x, axis=None, keepdims=False):
        return x.max(axis=axis, keepdims=keepdims)

    def any(self, x):
        return bool(x.any())

    # shapes
    def reshape(self, x, shape):
        return x.reshape(shape)

    def transpose(self, x, axes):
        return x.transpose(axes)

    def swapaxes(self, x, a, b):
        return np.swapaxes(x, a, b)

    def broadcast_to(self, x, shape):
        return np.broadcast_to(x, shape)

    def concatenate(self, xs, axis):
        return np.concatenate(xs, axis=axis)

    def split_at(self, x, indices, axis):
        return np.split(x, indices, axis=axis)

    def matmul(self, a, b):
        return np.matmul(a, b)

    # indexing
    def take_along_axis(self, x, index, axis):
        return np.take_along_axis(x, index, axis=axis)

    def index_add(self, shape, dtype, key, values, like=None):
        """A zero array of ``shape`` with ``values`` added at ``key`` (repeated indices accumulate)."""
        out = np.zeros(shape, dtype=dtype)
        if _is_basic_index(key):  # slices and integers cannot repeat a position: plain assignment is exact
            out[key] = values
        else:
            np.add.at(out, key, values)
        return out

    def embedding_grad(self, idx, grad, num_embeddings):
        """Rows of ``grad`` summed into a [num_embeddings, D] table by the ids ``idx`` (the backward of a lookup)."""
        d = grad.shape[-1]
        flat = idx.reshape(-1)
        g = grad.reshape(-1, d)
        out = np.zeros((num_embeddings, d), dtype=grad.dtype)
        # a sparse scatter-add as a dense product is far faster than np.add.at for small tables
        if num_embeddings * flat.size <= 1 << 24:
            onehot = np.zeros((flat.size, num_embeddings), dtype=grad.dtype)
            onehot[np.arange(flat.size), flat] = 1
            return onehot.T @ g
        np.add.at(out, flat, g)
        return out

    def index_grids(self, shape, like=None):
        """Open index grids for an array of ``shape`` (``np.indices(shape, sparse=True)``), for scatters."""
        return list(np.indices(shape, sparse=True))

    # randomness: masks are drawn from a NumPy generator on every backend, so seeds mean the same thing
    def bernoulli_mask(self, rng, shape, keep, dtype, like=None):
        return (rng.random(shape) < keep).astype(dtype)

    def causal_mask(self, tq, tk, like=None):
        """Boolean [tq, tk]: True where query i (at absolute position tk - tq + i) may not see key j."""
        return np.triu(np.ones((tq, tk), dtype=bool), k=tk - tq + 1)

    # fused hooks: not available on NumPy (the engine then computes the same with the operations above)
    def flash_attention(self, q, k, v, scale):
        """Causal attention O = softmax(QKᵀ·s + M)V by a fused kernel, as (O, backward(dO) → (dQ, dK, dV));
        None here."""
        return None

    def token_logprobs(self, logits, targets, ignore_index):
        """log π(y_n) per row of ``logits [N, V]`` by a fused kernel that writes no [N, V] softmax, as
        (logp [N], backward(w [N]) → d logits of Σ w_n log π(y_n)); None here."""
        return None

    def token_fdiv(self, logits_p, logits_q, f, ref_grad):
        """D_f(softmax(z_n)‖softmax(r_n)) per row of ``logits_p, logits_q [N, V]`` by a fused kernel, as
        (D [N], backward(u [N]) → (d logits_p, d logits_q or None)) for the loss Σ u_n D_n; the second gradient
        only when ``ref_grad``. None here."""
        return None

    def linear_logprobs(self, hidden, weight, targets, ignore_index):
        """log softmax(h_n Wᵀ)_{y_n} per row of ``hidden [N, d]`` by a kernel that never holds all [N, V]
        logits, as (logp [N], backward(w [N]) → (d hidden, d weight)) for Σ w_n log π(y_n); None here."""
        return None


def _is_basic_index(key) -> bool:
    parts = key if isinstance(key, tuple) else (key,)
    return all(isinstance(k, (int, np.integer, slice)) or k is None or k is Ellipsis for k in parts)


NUMPY = NumpyBackend()
_BACKENDS = {np.ndarray: NUMPY}


def register_backend(array_type, backend) -> None:
    """Make ``backend`` handle arrays of ``array_type`` (the torch backend registers itself this way)."""
    _BACKENDS[array_type] = backend


def backend_of(x):
    """The backend that owns array ``x``; NumPy scalars and Python numbers belong to NumPy."""
    b = _BACKENDS.get(type(x))
    if b is not None:
        return b
    for t, b in _BACKENDS.items():
        if isinstance(x, t):
            return b
    return NUMPY


def tune_allocator(mmap_threshold: int = 1 << 25, trim_threshold: int = 1 << 30) -> bool:
    """Let the C allocator keep freed array memory for reuse (glibc only; returns whether it applied).

    The engine allocates many short-lived arrays of a few hundred kilobytes per op. With glibc's defaults such
    a block may get its own ``mmap`` (above the mmap threshold) or come from a heap whose free top is trimmed
    back to the system (above the trim threshold); both thresholds adapt at run time, so how often freed
    pages must be faulted in again depends on the allocation pattern (chapter 01, Section 6). Fixing both
    high makes those arrays come from, and go back to, the process heap, and turns the adaptation off. It
    changes no result, only speed and how soon memory is returned to the system. The command line and the
    benchmark call it.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, mmap_threshold)) and bool(libc.mallopt(m_trim_threshold, trim_threshold))
