"""Modules: containers of parameters that find each other, and the layers the GPT is made of."""
from __future__ import annotations

import math

import numpy as np

from . import functional as F
from .tensor import Tensor


class Parameter(Tensor):
    """A tensor that a Module owns and an optimizer updates."""

    def __init__(self, data, dtype=None):
        super().__init__(data, requires_grad=True, dtype=dtype)


class Module:
    """Finds its parameters by walking its attributes (modules, parameters, lists of modules)."""

    training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def named_children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{name}.{i}", item

    def named_parameters(self, prefix=""):
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
        for name, child in self.named_children():
            yield from child.named_parameters(prefix + name + ".")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(prefix + name + ".")

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def train(self, mode: bool = True):
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def state_dict(self) -> dict:
        """Parameter name → a copy of its array (as NumPy)."""
        return {name: np.array(p.numpy(), copy=True) for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict, strict: bool = True):
        """Copy arrays into the parameters, checking names and shapes."""
        own = dict(self.named_parameters())
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if strict and (missing or unexpected):
            raise ValueError("the weights do not match the model: " + "; ".join(
                f"{len(names)} {what} ({', '.join(names[:3])}{', …' if len(names) > 3 else ''})"
                for what, names in (("missing", missing), ("unexpected", unexpected)) if names))
        values = {}
        for name, p in own.items():
            if name not in state:
                continue
            value = np.asarray(state[name])
            if value.shape != p.shape:
                raise ValueError(f"parameter {name!r} has shape {p.shape}; the weights give {value.shape}")
            if value.dtype.kind not in "fiu":
                raise ValueError(f"parameter {name!r} is given as {value.dtype} values; expected numbers")
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                nan, inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
                what = " and ".join(f"{n} {w}" for n, w in ((nan, "NaN"), (inf, "infinite (inf)")) if n)
                raise ValueError(f"parameter {name!r} holds {what} value{'s' if nan + inf > 1 else ''} of {value.size} "
                                 "(weights of a run that diverged); refusing to load them")
            values[name] = value
        for name, value in values.items():  # all or nothing: nothing changes if any entry is refused
            p = own[name]
            p.data = p.bk.from_numpy(value.astype(p.numpy().dtype), like=p.data)
        return self

    def astype(self, dtype):
        """Cast every parameter to ``dtype`` (float64 for exact enumerations and gradient checks)."""
        for p in self.parameters():
            p.data = p.bk.astype(p.data, dtype)
        return self

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def to(self, backend):
        """Move every parameter onto another backend (e.g. the torch backend on a GPU)."""
        for p in self.parameters():
            p.data = backend.from_numpy(p.numpy(), like=None)
            p.bk = backend
        return self


class Linear(Module):
    """y = x Wᵀ + b, W of shape [out, in], initialised N(0, 0.02²) as in GPT-2."""

    def __init__(self, in_features, out_features, bias=True, rng=None, std=0.02, dtype=np.float32):
        rng = np.random.default_rng(rng)
        self.weight = Parameter(rng.normal(0.0, std, (out_features, in_features)).astype(dtype))
        self.bias = Parameter(np.zeros(out_features, dtype=dtype)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Embedding(Module):
    """A table of vectors looked up by integer ids."""

    def __init__(self, num_embeddings, dim, rng=None, std=0.02, dtype=np.float32):
        rng = np.random.default_rng(rng)
        self.weight = Parameter(rng.normal(0.0, std, (num_embeddings, dim)).astype(dtype))

    def forward(self, idx):
        return F.embedding(idx, self.weight)


class LayerNorm(Module):
    def __init__(self, dim, eps=1e-5, dtype=np.float32):
        self.weight = Parameter(np.ones(dim, dtype=dtype))
        self.bias = Parameter(np.zeros(dim, dtype=dtype))
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)


class Dropout(Module):
    """Dropout with its own seeded generator, so that runs repeat exactly."""

    def __init__(self, p=0.0, seed=0):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1); got {p}")
        self.p = p
        self.rng = np.random.default_rng(seed)

    def forward(self, x):
        return F.dropout(x, self.p, self.rng, self.training)


def init_std(n_layer: int) -> float:
    """GPT-2's scaled init for residual projections: 0.02/√(2·n_layer)."""
    return 0.02 / math.sqrt(2 * n_layer)
