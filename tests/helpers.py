"""Helpers shared by the test modules (hypothesis strategies live in strategies.py, fixtures in conftest.py).

No test module imports another: what two of them need lives here, or in the library when a notebook needs it
too (``minialign.lab``, ``minialign.experiments``). torch is imported only inside the functions that use it;
a test that calls them requests the ``torch`` fixture of conftest.py, which skips it (or fails it, when the
run selects course tasks) where torch is not installed.
"""
import importlib.util

import numpy as np

from minialign import Tensor
from minialign import functional as F
from minialign.divergences import NAMES

# every member of the f family, with three concrete α for the parametrised one: the one list the tests share
FAMILY = [n for n in NAMES if not n.startswith("alpha:")] + ["alpha:0.5", "alpha:-1", "alpha:2.5"]


def installed(*modules) -> bool:
    """Whether every named top-level module can be imported (without importing it)."""
    return all(importlib.util.find_spec(m) is not None for m in modules)


# ---------------------------------------------------------------- kernels against their references
def torch_device(available: bool) -> str:
    """Where the torch tests run: the GPU when torch (``available``) sees one, else the CPU (the kernels under
    Triton's interpreter)."""
    if not available:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def rel_err(actual, expected, floor: float = 1.0) -> float:
    """max|actual − expected| / max(max|expected|, floor), in float64: the error relative to the largest reference
    entry, absolute where every entry is below ``floor``."""
    expected = expected.double()
    return (actual.double() - expected).abs().max().item() / max(expected.abs().max().item(), floor)


def dtype_tolerance(table: dict, dtype) -> float:
    """The tolerance of a torch dtype in a table keyed by the dtype's name (so that it exists without torch)."""
    return table[str(dtype).removeprefix("torch.")]


# ---------------------------------------------------------------- the engine against torch autograd
def t64(a):
    """A float64 leaf Tensor that requires gradients."""
    return Tensor(np.array(a, dtype=np.float64), requires_grad=True)


def torch_grads(fn, *arrays):
    """Gradients of ⟨fn(*inputs), c⟩ by torch autograd, with the same c that gradcheck-style checks use."""
    import torch

    xs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    out = fn(*xs)
    c = torch.tensor(np.random.default_rng(1).standard_normal(tuple(out.shape)))
    (out * c).sum().backward()
    return [x.grad.numpy() if x.grad is not None else np.zeros(x.shape) for x in xs], out.detach().numpy(), c.numpy()


def ours_grads(fn, *arrays, c):
    """Our output and the gradients of ⟨fn(*inputs), c⟩ by the engine."""
    xs = [t64(a) for a in arrays]
    out = fn(*xs)
    out.backward(c)
    return [x.grad if x.grad is not None else np.zeros(x.shape) for x in xs], out.numpy()


def check_against_torch(ours, theirs, *arrays, atol=1e-10):
    """``ours`` on Tensors and ``theirs`` on torch tensors agree in value and gradient, in float64."""
    tg, tout, c = torch_grads(theirs, *arrays)
    og, oout = ours_grads(ours, *arrays, c=c)
    np.testing.assert_allclose(oout, tout, rtol=1e-10, atol=atol)
    for a, b in zip(og, tg):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=atol)


# ---------------------------------------------------------------- numbers
def central_difference(fn, x, h=1e-6):
    """The gradient of a scalar function of a vector by central differences, (fn(x + h e_i) − fn(x − h e_i)) / 2h."""
    grad = np.zeros_like(x)
    for i in range(len(x)):
        e = np.zeros_like(x)
        e[i] = h
        grad[i] = (fn(x + e) - fn(x - e)) / (2 * h)
    return grad


def close(a, b, rel=1e-8):
    """max |a − b| ≤ rel · max |b|: two gradient vectors agree relative to the size of the second."""
    return np.abs(a - b).max() <= rel * np.abs(b).max()


# ---------------------------------------------------------------- the exact lab
def rlhf_target(lab, a, r, beta):
    """The RLHF target as an EBM on the lab: log P = log a + r/β, with its normalised log p and log Z."""
    log_scores = np.log(lab.distribution(a)) + r / beta
    log_p, log_z = lab.normalise(log_scores)
    return log_scores, log_p, log_z


# ---------------------------------------------------------------------- policies that can be any distribution
class TabularPolicy:
    """π(x) = softmax(θ)_x over the enumeration of a lab: a policy that can be *any* distribution."""

    def __init__(self, lab, logits):
        self.lab = lab
        self.logits = Tensor(np.array(logits, dtype=np.float64), requires_grad=True)

    def sequence_logprob(self, tokens):
        return F.log_softmax(self.logits, axis=-1)[self.lab.index_of(tokens)]

    def zero_grad(self):
        self.logits.grad = None


class ConditionalTabular:
    """π(y|x) = softmax of one logit per (x, y) row within each prompt's group: any conditional distribution."""

    def __init__(self, plab, log_probs):
        self.plab = plab
        self.logits = Tensor(np.array(log_probs, dtype=np.float64), requires_grad=True)

    def sequence_logprob(self, tokens, prompt_len=None):
        assert prompt_len is not None and (np.asarray(prompt_len) == self.plab.prompts.length).all()
        out = self.logits
        for g in range(self.plab.n_prompts):  # log π(y|x) = θ_{x,y} − log Σ_{y'} e^{θ_{x,y'}}
            at = self.plab.group == g
            out = out - Tensor(at.astype(np.float64)) * F.logsumexp(self.logits[np.flatnonzero(at)], axis=0)
        return out[self.plab.index_of(tokens)]

    def zero_grad(self):
        self.logits.grad = None
