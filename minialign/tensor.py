"""Reverse-mode automatic differentiation on arrays (chapter 01).

A ``Tensor`` holds an array and, when it was computed from tensors that need gradients, the parents it
came from and a ``_backward`` closure that pushes its gradient into them. Each operation below defines its
forward result and, right beside it, its backward. ``backward()`` sorts the graph topologically and walks
it in reverse (Eq. 1.2).
"""
from __future__ import annotations

import contextlib
import numbers

import numpy as np

from .backend import NUMPY, backend_of

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Inside this block no graph is recorded: results have ``requires_grad=False``."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled() -> bool:
    return _grad_enabled


def unbroadcast(grad, shape, bk=NUMPY):
    """Eq. (1.3): sum ``grad`` over the axes that broadcasting added or stretched, back to ``shape``."""
    if tuple(grad.shape) == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = bk.sum(grad, axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = bk.sum(grad, axis=stretched, keepdims=True)
    return grad


class Tensor:
    """An array with an optional gradient and the graph that produced it."""

    __array_priority__ = 1000  # so that ``ndarray * Tensor`` defers to Tensor.__rmul__
    _freed = False  # set once backward() has released this node's graph

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        bk = backend_of(data)
        data = bk.asarray(data, dtype=dtype)
        if requires_grad and not bk.is_floating(data):
            raise TypeError(f"only floating-point tensors can require gradients; got dtype {data.dtype}")
        self.data = data
        self.bk = bk
        self.requires_grad = requires_grad
        self.grad = None
        self._parents: tuple = ()
        self._backward = None
        self.op = ""

    # ------------------------------------------------------------------ graph plumbing
    @classmethod
    def _result(cls, data, parents, backward, op):
        """The output of an op: it joins the graph only if grad mode is on and some parent needs a gradient."""
        out = cls.__new__(cls)
        out.data = data
        out.bk = parents[0].bk
        out.grad = None
        out.op = op
        if _grad_enabled and any(p.requires_grad for p in parents):
            out.requires_grad = True
            out._parents = parents
            out._backward = backward
        else:
            out.requires_grad = False
            out._parents = ()
            out._backward = None
        return out

    def _accumulate(self, g):
        if self.requires_grad:
            self.grad = g if self.grad is None else self.grad + g

    def backward(self, grad=None, retain_graph: bool = False):
        """Eq. (1.2): accumulate d(self)/d(leaf) into every leaf's ``.grad``, walking the graph in reverse
        topological order. A non-scalar tensor needs ``grad`` (the vector of the vector-Jacobian product)."""
        if not self.requires_grad:
            raise ValueError("backward() called on a tensor that does not require grad (no graph was recorded)")
        if self._freed:
            raise RuntimeError("backward() through a graph that an earlier backward() already freed; "
                               "pass retain_graph=True to the first call to walk it twice")
        if grad is None:
            if self.size != 1:
                raise ValueError(
                    f"backward() without a gradient needs a scalar (one-element) tensor; got shape {self.shape}. "
                    "Pass grad= an array of the same shape."
                )
            grad = self.bk.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else self.bk.asarray(grad, dtype=self.data.dtype)
            if tuple(grad.shape) != self.shape:
                raise ValueError(f"grad must have the tensor's shape {self.shape}; got {tuple(grad.shape)}")
        order = self._topological_order()
        self.grad = grad if self.grad is None else self.grad + grad
        # BEGIN SOLUTION walk
        for node in reversed(order):
            if node._backward is not None and node.grad is not None:
                node._backward(node.grad)
            if node._parents:  # an interior node: its gradient has been passed on to its parents
                node.grad = None
            if not retain_graph and node._parents:
                node._backward = None
                node._parents = ()
                node._freed = True
        # END SOLUTION

    def _topological_order(self):
        order, seen, stack = [], set(), [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            for p in node._parents:
                if id(p) not in seen:
                    stack.append((p, False))
        return order

    def detach(self) -> "Tensor":
        """The same array, cut from the graph."""
        return Tensor(self.data)

    def zero_grad(self):
        self.grad = None

    # ------------------------------------------------------------------ array facts
    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        n = 1
        for s in self.data.shape:
            n *= s
        return n

    @property
    def dtype(self):
        return self.data.dtype

    def numpy(self):
        return self.bk.to_numpy(self.data)

    def item(self):
        return float(self.numpy().reshape(-1)[0]) if self.size == 1 else self._not_scalar("item")

    def _not_scalar(self, what):
        raise ValueError(f"{what}() needs a one-element tensor; got shape {self.shape}")

    def __len__(self):
        return self.data.shape[0]

    def __repr__(self):
        g = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.numpy()!r}{g})"

    def astype(self, dtype) -> "Tensor":
        data = self.bk.astype(self.data, dtype)
        src = self.data.dtype
        return Tensor._result(data, (self,), lambda g: self._accumulate(self.bk.astype(g, src)), "astype")

    # ------------------------------------------------------------------ operand coercion
    def _lift(self, other) -> "Tensor":
        if isinstance(other, Tensor):
            return other
        if isinstance(other, numbers.Number):
            return Tensor(self.bk.asarray(other, dtype=self.data.dtype))
        return Tensor(other)

    # ------------------------------------------------------------------ elementwise arithmetic
    def __add__(self, other):
        other = self._lift(other)
        bk = self.bk

        def backward(g):
            self._accumulate(unbroadcast(g, self.shape, bk))
            other._accumulate(unbroadcast(g, other.shape, bk))

        return Tensor._result(self.data + other.data, (self, other), backward, "+")

    def __mul__(self, other):
        other = self._lift(other)
        bk = self.bk

        def backward(g):
            # BEGIN SOLUTION backward
            if self.requires_grad:
                self._accumulate(unbroadcast(g * other.data, self.shape, bk))
            if other.requires_grad:
                other._accumulate(unbroadcast(g * self.data, other.shape, bk))
            # END SOLUTION

        return Tensor._result(self.data * other.data, (self, other), backward, "*")

    def __truediv__(self, other):
        other = self._lift(other)
        bk = self.bk

        def backward(g):
            # BEGIN SOLUTION backward
            if self.requires_grad:
                self._accumulate(unbroadcast(g / other.data, self.shape, bk))
            if other.requires_grad:
                other._accumulate(unbroadcast(-g * self.data / (other.data * other.data), other.shape, bk))
            # END SOLUTION

        return Tensor._result(self.data / other.data, (self, other), backward, "/")

    def __pow__(self, other):
        other = self._lift(other)
        bk = self.bk
        out = self.data**other.data

        def backward(g):
            # BEGIN SOLUTION backward
            if self.requires_grad:
                self._accumulate(unbroadcast(g * other.data * self.data ** (other.data - 1), self.shape, bk))
            if other.requires_grad:
                other._accumulate(unbroadcast(g * out * bk.log(self.data), other.shape, bk))
            # END SOLUTION

        return Tensor._result(out, (self, other), backward, "**")

    def __neg__(self):
        return Tensor._result(-self.data, (self,), lambda g: self._accumulate(-g), "neg")

    def __sub__(self, other):
        return self + (-self._lift(other))

    def __radd__(self, other):
        return self._lift(other) + self

    def __rsub__(self, other):
        return self._lift(other) - self

    def __rmul__(self, other):
        return self._lift(other) * self

    def __rtruediv__(self, other):
        return self._lift(other) / self

    def __rpow__(self, other):
        return self._lift(other) ** self

    def __matmul__(self, other):
        """Eq. (1.4): C = A B over the last two axes, batch axes broadcast; dA = dC Bᵀ, dB = Aᵀ dC."""
        other = self._lift(other)
        bk = self.bk
        if self.ndim == 0 or other.ndim == 0:
            raise ValueError(f"matmul needs arrays of at least one axis; got shapes {self.shape} and {other.shape}")
        if self.shape[-1] != other.shape[-2 if other.ndim > 1 else 0]:
            raise ValueError(
                f"matmul: inner dimensions differ: {self.shape} @ {other.shape} "
                f"({self.shape[-1]} != {other.shape[-2 if other.ndim > 1 else 0]})"
            )
        a2 = self.data if self.ndim > 1 else bk.reshape(self.data, (1, -1))
        b2 = other.data if other.ndim > 1 else bk.reshape(other.data, (-1, 1))

        def backward(g):
            g2 = g
            if self.ndim == 1:
                g2 = bk.reshape(g2, g2.shape[:-1] + (1,) + g2.shape[-1:]) if other.ndim > 1 else g2
            if other.ndim == 1:
                g2 = bk.reshape(g2, tuple(g2.shape) + (1,))
            if self.ndim == 1 and other.ndim == 1:
                g2 = bk.reshape(g, (1, 1))
            if self.requires_grad:
                ga = unbroadcast(bk.matmul(g2, bk.swapaxes(b2, -1, -2)), a2.shape, bk)
                self._accumulate(bk.reshape(ga, self.shape))
            if other.requires_grad:
                gb = unbroadcast(bk.matmul(bk.swapaxes(a2, -1, -2), g2), b2.shape, bk)
                other._accumulate(bk.reshape(gb, other.shape))

        return Tensor._result(bk.matmul(self.data, other.data), (self, other), backward, "@")

    def __rmatmul__(self, other):
        return self._lift(other) @ self

    # ------------------------------------------------------------------ elementwise functions
    def exp(self):
        out = self.bk.exp(self.data)
        return Tensor._result(out, (self,), lambda g: self._accumulate(g * out), "exp")

    def log(self):
        return Tensor._result(self.bk.log(self.data), (self,), lambda g: self._accumulate(g / self.data), "log")

    def tanh(self):
        out = self.bk.tanh(self.data)
        return Tensor._result(out, (self,), lambda g: self._accumulate(g * (1 - out * out)), "tanh")

    def relu(self):
        mask = self.data > 0
        out = self.data * mask
        return Tensor._result(out, (self,), lambda g: self._accumulate(g * mask), "relu")

    def sigmoid(self):
        out = 1 / (1 + self.bk.exp(-self.data))
        return Tensor._result(out, (self,), lambda g: self._accumulate(g * out * (1 - out)), "sigmoid")

    def sqrt(self):
        return self ** 0.5

    # ------------------------------------------------------------------ reductions
    def sum(self, axis=None, keepdims=False):
        """Eq. (1.5): the gradient of a sum is the output gradient broadcast back over the summed axes."""
        bk = self.bk
        axes = normalise_axes(axis, self.ndim)

        def backward(g):
            # BEGIN SOLUTION backward
            if not keepdims:
                g = bk.reshape(g, _kept_shape(self.shape, axes))
            self._accumulate(bk.broadcast_to(g, self.shape) + bk.zeros_like(self.data))
            # END SOLUTION

        return Tensor._result(bk.sum(self.data, axis=axes, keepdims=keepdims), (self,), backward, "sum")

    def mean(self, axis=None, keepdims=False):
        axes = normalise_axes(axis, self.ndim)
        n = 1
        for a in axes:
            n *= self.shape[a]
        return self.sum(axis=axes, keepdims=keepdims) * (1.0 / max(n, 1))

    def max(self, axis=None, keepdims=False):
        """The gradient flows to the maximal entries; ties share it equally."""
        bk = self.bk
        axes = normalise_axes(axis, self.ndim)
        m = bk.max(self.data, axis=axes, keepdims=True)

        def backward(g):
            # BEGIN SOLUTION backward
            if not keepdims:
                g = bk.reshape(g, _kept_shape(self.shape, axes))
            hit = self.data == m
            hit = hit / bk.sum(hit, axis=axes, keepdims=True)
            self._accumulate(g * hit)
            # END SOLUTION

        out = m if keepdims else bk.reshape(m, tuple(s for i, s in enumerate(self.shape) if i not in axes))
        return Tensor._result(out, (self,), backward, "max")

    # ------------------------------------------------------------------ shapes
    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        bk = self.bk
        return Tensor._result(
            bk.reshape(self.data, tuple(shape)), (self,), lambda g: self._accumulate(bk.reshape(g, self.shape)),
            "reshape"
        )

    def view(self, *shape):
        return self.reshape(*shape)

    def permute(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        axes = tuple(a % self.ndim for a in axes)
        if sorted(axes) != list(range(self.ndim)):
            raise ValueError(f"permute needs a permutation of range({self.ndim}); got {axes}")
        inverse = tuple(int(i) for i in np.argsort(axes))
        bk = self.bk
        return Tensor._result(
            bk.transpose(self.data, axes), (self,), lambda g: self._accumulate(bk.transpose(g, inverse)), "permute"
        )

    def transpose(self, a=-2, b=-1):
        """Swap two axes (the last two by default)."""
        axes = list(range(self.ndim))
        axes[a], axes[b] = axes[b], axes[a]
        return self.permute(axes)

    @property
    def T(self):
        return self.permute(tuple(reversed(range(self.ndim))))

    # ------------------------------------------------------------------ indexing
    def __getitem__(self, key):
        """Any NumPy-style index; the backward adds the gradient back at the indexed places (repeats accumulate)."""
        if isinstance(key, Tensor):
            key = key.data
        bk = self.bk

        def backward(g):
            self._accumulate(bk.index_add(self.shape, g.dtype, key, g, like=self.data))

        return Tensor._result(self.data[key], (self,), backward, "getitem")

    def gather(self, axis, index):
        """out[..., i, ...] = self[..., index[..., i, ...], ...] along ``axis`` (``take_along_axis``)."""
        index = index.data if isinstance(index, Tensor) else index
        bk = self.bk
        if index.ndim != self.ndim:
            raise ValueError(f"gather: index must have {self.ndim} axes like the input; got {index.ndim}")
        axis = axis % self.ndim

        def backward(g):
            grids = bk.index_grids(index.shape, like=index)
            grids[axis] = index
            self._accumulate(bk.index_add(self.shape, g.dtype, tuple(grids), g, like=self.data))

        return Tensor._result(bk.take_along_axis(self.data, index, axis), (self,), backward, "gather")


def normalise_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int):
        axis = (axis,)
    out = []
    for a in axis:
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} axes")
        out.append(a % max(ndim, 1))
    return tuple(sorted(set(out)))


def _kept_shape(shape, axes):
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


def constant(values, like: Tensor) -> Tensor:
    """``values`` (an array or a number) as a Tensor with no gradient, on ``like``'s backend and in its dtype: the
    coefficients, weights and reference values a loss multiplies a model's output by, wherever the model lives."""
    return Tensor(like.bk.asarray(np.asarray(values), dtype=like.dtype))


def tensor(data, requires_grad=False, dtype=None) -> Tensor:
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def concatenate(tensors, axis=0) -> Tensor:
    """Join tensors along ``axis``; the backward splits the gradient back into the pieces."""
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("concatenate needs at least one tensor")
    bk = tensors[0].bk
    ndim = tensors[0].ndim
    axis = axis % ndim
    for t in tensors:
        if t.ndim != ndim or any(s != r for i, (s, r) in enumerate(zip(t.shape, tensors[0].shape)) if i != axis):
            raise ValueError(
                f"concatenate along axis {axis}: shapes must agree elsewhere; got {[x.shape for x in tensors]}"
            )
    bounds = np.cumsum([t.shape[axis] for t in tensors])[:-1].tolist()

    def backward(g):
        for t, piece in zip(tensors, bk.split_at(g, bounds, axis)):
            t._accumulate(piece)

    return Tensor._result(bk.concatenate([t.data for t in tensors], axis), tuple(tensors), backward, "concat")


def stack(tensors, axis=0) -> Tensor:
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    axis = axis % (tensors[0].ndim + 1)
    return concatenate([t.reshape(t.shape[:axis] + (1,) + t.shape[axis:]) for t in tensors], axis)
