"""Helpers shared by the test modules (hypothesis strategies live in strategies.py, fixtures in conftest.py).

No test module imports another: what two of them need lives here, or in the library when a notebook needs it
too (``minialign.lab``, ``minialign.experiments``). torch is imported only inside the functions that use it;
a test that calls them requests the ``torch`` fixture of conftest.py, which skips it (or fails it, when the
run selects course tasks) where torch is not installed.
"""
import importlib.util
import re

import numpy as np

from minialign import Tensor
from minialign import functional as F
from minialign.divergences import NAMES

# every member of the f family, with three concrete α for the parametrised one: the one list the tests share
FAMILY = [n for n in NAMES if not n.startswith("alpha:")] + ["alpha:0.5", "alpha:-1", "alpha:2.5"]


# ---------------------------------------------------------------- graded assertions: what was expected, what came back
def as_float_array(x) -> np.ndarray:
    """A plain float64 ndarray of a value: a Tensor's data, a torch tensor's numbers, a scalar or a sequence. An
    ndarray subclass is converted too, so its own ``__eq__`` or comparison methods never decide a check."""
    if isinstance(x, Tensor):
        x = x.data
    elif type(x).__module__.startswith("torch"):
        x = x.detach().cpu().double().numpy()
    return np.array(np.asarray(x, dtype=float), dtype=np.float64, copy=True).view(np.ndarray)


def _entries(a: np.ndarray, index) -> str:
    return ", ".join(f"[{', '.join(str(int(k)) for k in i)}] {float(a[i]):.12g}" if i else f"{float(a):.12g}"
                     for i in index)


def assert_close(actual, expected, rtol: float = 1e-10, atol: float = 0.0, what: str = "value", shown: int = 3):
    """|actual − expected| ≤ atol + rtol·|expected| entry by entry, with the same shape and the same non-finite
    entries (±∞ in the same places, NaN where NaN is expected). On failure the message says what was checked,
    the shapes, the tolerance and the first differing entries (index and value, expected then got), on one line
    (the grader shows a failure's first line)."""
    got, want = as_float_array(actual), as_float_array(expected)
    if got.shape != want.shape:
        if want.size == 1 and got.size == 1 and want.ndim + got.ndim <= 1:  # a scalar against a one-entry array
            got, want = got.reshape(()), want.reshape(())
        else:
            raise AssertionError(f"{what}: expected shape {want.shape}, got shape {got.shape}")
    both_nan = np.isnan(got) & np.isnan(want)
    same_inf = np.isinf(want) & (got == want)
    with np.errstate(invalid="ignore", over="ignore"):
        ok = both_nan | same_inf | (np.abs(got - want) <= atol + rtol * np.abs(want))
    if not ok.all():
        bad = list(zip(*np.nonzero(~ok))) if got.ndim else [()]
        err = np.abs(got - want)[~ok].max() if got.ndim else abs(float(got) - float(want))
        raise AssertionError(
            f"{what}: expected {_entries(want, bad[:shown])}; got {_entries(got, bad[:shown])} — {len(bad)} of "
            f"{max(got.size, 1)} entries of shape {got.shape} differ beyond |got − expected| ≤ {atol:g} + "
            f"{rtol:g}·|expected| (largest difference {err:.3g})")


def assert_equal(actual, expected, what: str = "value"):
    """Exactly equal as float64 arrays (integers, indices, counts), with the same message as :func:`assert_close`."""
    assert_close(actual, expected, rtol=0.0, atol=0.0, what=what)


def assert_near(actual, expected, rel: float = 1e-8, what: str = "gradient"):
    """max |actual − expected| ≤ rel · max |expected| (vectors compared relative to their size, as :func:`close`),
    with a message that gives the relative error reached and the entries that differ most."""
    got, want = as_float_array(actual), as_float_array(expected)
    if got.shape != want.shape:
        raise AssertionError(f"{what}: expected shape {want.shape}, got shape {got.shape}")
    err, scale = np.abs(got - want), np.abs(want).max()
    if not err.max() <= rel * scale:
        worst = [np.unravel_index(i, got.shape) for i in np.argsort(-err, axis=None)[:3]]
        raise AssertionError(f"{what}: max |got − expected| = {err.max():.3g}, above {rel:g} × max |expected| = "
                             f"{rel * scale:.3g}; largest differences: expected {_entries(want, worst)}; "
                             f"got {_entries(got, worst)}")


def names_shape(message: str, shape) -> bool:
    """Whether an error message names a shape, written any usual way: (3,), (3), [3], 3 for a vector; (2, 4),
    [2, 4], 2x4 for more axes."""
    dims = [str(d) for d in tuple(shape)]
    if len(dims) == 1:
        pattern = rf"(?<![\d.]){dims[0]}(?![\d.])"
    else:
        pattern = r"[\(\[]?" + r"\s*[,x×]\s*".join(dims) + r"[\)\]]?"
    return re.search(pattern, message) is not None


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
