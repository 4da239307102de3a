"""Fused log-prob + token-level f-divergence kernels (chapter 08, Eqs. 8.9-8.14).

Oracles: the plain PyTorch reference in float64 (``log_softmax`` and the generators of chapter 03, Eq. 3.2),
torch autograd through that reference for the gradients, ``torch.nn.functional.cross_entropy`` and
``torch.distributions.Categorical`` for log-probabilities and entropies, and
``minialign.divergences.divergence`` for the divergences.

Tolerances, as ``max|kernel - reference| / max(max|reference|, 1)`` with the reference computed in float64
from the same (rounded) logits: fp32 1e-5, fp16 2e-3, bf16 2e-2 (the row statistics are float32 for
every input dtype; the 16-bit budgets matter for the gradient, which is stored in the logits' dtype).
For logits of size |z| the float32 inputs themselves are only known to about 6e-8 |z|, so the tests with
logits of 1e4 scale the absolute tolerance by the largest |z|.
"""
import math
from functools import partial

import numpy as np
import pytest
from helpers import dtype_tolerance, installed, rel_err, torch_device

from minialign import divergences

KERNELS = installed("torch", "triton")
if KERNELS:  # without them, the `triton` fixture skips (or fails) each test
    import torch

    from minialign.kernels.logprob_fdiv import (
        F_NAMES as KERNEL_F_NAMES,
    )
    from minialign.kernels.logprob_fdiv import (
        LogprobFdivOutput,
        logprob_fdiv,
        logprob_fdiv_backward,
        logprob_fdiv_forward,
        logprob_fdiv_reference,
    )

pytestmark = pytest.mark.usefixtures("triton")
DEVICE = torch_device(KERNELS)
TOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}
tol = partial(dtype_tolerance, TOL)  # the tolerance of a torch dtype
F_NAMES = ("kl", "reverse_kl", "js", "tv")  # the kernel's members; test_the_kernel_offers_these_members checks it
FIELDS = ("logp", "ref_logp", "entropy", "div", "lse", "ref_lse", "row_scalar", "ref_row_scalar")

# (N, V, block_v): V = 37 is one masked block; V = 1000 with 128-wide blocks runs the vocabulary loop
# eight times with a ragged tail; V = 50_257 (GPT-2) is a large vocabulary with the default blocks.
SIZES = [(5, 37, None), (4, 1000, 128), (2, 50_257, None)]
if DEVICE == "cuda":
    SIZES += [(512, 50_257, None), (64, 128_256, None)]


def make_inputs(n, v, dtype=None, seed=0, spread=3.0, n_ignored=1):
    dtype = torch.float32 if dtype is None else dtype
    gen = torch.Generator().manual_seed(seed)
    z = (spread * torch.randn(n, v, generator=gen)).to(device=DEVICE, dtype=dtype)
    r = (spread * torch.randn(n, v, generator=gen)).to(device=DEVICE, dtype=dtype)
    y = torch.randint(0, v, (n,), generator=gen)
    y[:n_ignored] = -100
    return z, r, y.to(DEVICE)


def reference_grad(z, r, y, f, w, u):
    leaf = z.detach().double().requires_grad_()
    ref = logprob_fdiv_reference(leaf, r, y, f=f)
    loss = (w.double() * ref.logp).sum()
    if r is not None:
        loss = loss + (u.double() * ref.div).sum()
    loss.backward()
    return leaf.grad


def reference_ref_grad(z, r, y, f, u):
    """d/dr of sum_n u_n D_f(pi_n || a_n) by autograd through the float64 reference."""
    leaf = r.detach().double().requires_grad_()
    (u.double() * logprob_fdiv_reference(z, leaf, y, f=f).div).sum().backward()
    return leaf.grad


def test_the_kernel_offers_these_members():
    assert tuple(KERNEL_F_NAMES) == F_NAMES


@pytest.mark.task8_2
@pytest.mark.parametrize("n,v,block_v", SIZES)
@pytest.mark.parametrize("f", F_NAMES)
def test_forward_matches_reference(f, n, v, block_v):
    z, r, y = make_inputs(n, v, seed=1)
    out = logprob_fdiv_forward(z, r, y, f=f, block_v=block_v)
    ref = logprob_fdiv_reference(z, r, y, f=f)
    for name in FIELDS:
        got = getattr(out, name)
        assert got.shape == (n,) and got.dtype == torch.float32, name
        assert rel_err(got, getattr(ref, name)) <= tol(torch.float32), name


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("f", F_NAMES)
def test_forward_in_16_bit_matches_reference_on_the_same_rounded_logits(f, dtype):
    dtype = getattr(torch, dtype)
    z, r, y = make_inputs(6, 1000, dtype=dtype, seed=2)
    out = logprob_fdiv_forward(z, r, y, f=f, block_v=256)
    ref = logprob_fdiv_reference(z, r, y, f=f)
    for name in FIELDS:
        assert rel_err(getattr(out, name), getattr(ref, name)) <= tol(dtype), name


@pytest.mark.parametrize("n,v,block_v", SIZES[:2])
@pytest.mark.parametrize("f", F_NAMES)
def test_backward_matches_autograd_of_reference(f, n, v, block_v):
    z, r, y = make_inputs(n, v, seed=3)
    gen = torch.Generator().manual_seed(4)
    w, u = torch.randn(n, generator=gen).to(DEVICE), torch.randn(n, generator=gen).to(DEVICE)
    out = logprob_fdiv_forward(z, r, y, f=f, block_v=block_v)
    dz = logprob_fdiv_backward(z, r, y, out, w, u, f=f, block_v=block_v)
    assert dz.shape == z.shape and dz.dtype == z.dtype
    assert rel_err(dz, reference_grad(z, r, y, f, w, u)) <= tol(torch.float32)


@pytest.mark.parametrize("n,v,block_v", SIZES[:2])
@pytest.mark.parametrize("f", F_NAMES)
def test_reference_gradient_matches_autograd_of_reference(f, n, v, block_v):
    """Eq. (8.15): dL/dr_k = u a_k (g(t_k) - G), written beside dL/dz in the same pass; dz is unchanged by it."""
    z, r, y = make_inputs(n, v, seed=31)
    gen = torch.Generator().manual_seed(32)
    w, u = torch.randn(n, generator=gen).to(DEVICE), torch.randn(n, generator=gen).to(DEVICE)
    out = logprob_fdiv_forward(z, r, y, f=f, block_v=block_v)
    dz, dr = logprob_fdiv_backward(z, r, y, out, w, u, f=f, block_v=block_v, ref_grad=True)
    assert dr.shape == r.shape and dr.dtype == r.dtype
    assert torch.equal(dz, logprob_fdiv_backward(z, r, y, out, w, u, f=f, block_v=block_v))
    assert rel_err(dr, reference_ref_grad(z, r, y, f, u)) <= tol(torch.float32)
    assert dr.sum(-1).abs().max().item() <= 1e-5  # a shift of all of a row's logits changes nothing


@pytest.mark.parametrize("f", F_NAMES)
def test_reference_gradient_matches_central_finite_differences(f):
    n, v = 2, 19
    z, r, y = make_inputs(n, v, seed=33, n_ignored=0)
    u = torch.tensor([0.9, -1.4], device=DEVICE)
    out = logprob_fdiv_forward(z, r, y, f=f, block_v=16)
    _, dr = logprob_fdiv_backward(z, r, y, out, torch.zeros(n, device=DEVICE), u, f=f, block_v=16, ref_grad=True)

    def loss(rr):
        return (u.double() * logprob_fdiv_reference(z, rr, y, f=f).div).sum().item()

    h, r64 = 1e-6, r.double()
    fd = torch.zeros(n, v, dtype=torch.float64)
    for i in range(n):
        for k in range(v):
            e = torch.zeros_like(r64)
            e[i, k] = h
            fd[i, k] = (loss(r64 + e) - loss(r64 - e)) / (2 * h)
    assert rel_err(dr.double().cpu(), fd) <= 1e-5


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_reference_gradient_needs_a_reference_and_refuses_infinite_rows():
    z, r, y = _disjoint_rows()
    out = logprob_fdiv_forward(z, None, y)
    with pytest.raises(ValueError, match="ref_grad=True asks for the gradient with respect to ref_logits"):
        logprob_fdiv_backward(z, None, y, out, torch.ones(2, device=DEVICE), None, ref_grad=True)
    # reverse_kl on disjoint supports: dz is finite (S = -1), the reference side is not
    out = logprob_fdiv_forward(z, r, y, f="reverse_kl")
    w, u = torch.zeros(2, device=DEVICE), torch.ones(2, device=DEVICE)
    assert torch.isfinite(logprob_fdiv_backward(z, r, y, out, w, u, f="reverse_kl")).all()
    with pytest.raises(ValueError, match=r"infinite in rows \[0\]"):
        logprob_fdiv_backward(z, r, y, out, w, u, f="reverse_kl", ref_grad=True)
    _, dr = logprob_fdiv_backward(z, r, y, out, w, torch.tensor([0.0, 1.0], device=DEVICE), f="reverse_kl",
                                  ref_grad=True)
    assert torch.count_nonzero(dr[0]) == 0 and torch.isfinite(dr).all()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("f", ["kl", "js"])
def test_backward_in_16_bit(f, dtype):
    """(Both gradients: the reference's, Eq. 8.15, is stored in the reference's dtype.)"""
    dtype = getattr(torch, dtype)
    z, r, y = make_inputs(4, 300, dtype=dtype, seed=5)
    w, u = torch.ones(4, device=DEVICE), torch.full((4,), 0.5, device=DEVICE)
    out = logprob_fdiv_forward(z, r, y, f=f)
    dz = logprob_fdiv_backward(z, r, y, out, w, u, f=f)
    assert dz.dtype == dtype
    assert rel_err(dz, reference_grad(z, r, y, f, w, u)) <= tol(dtype)
    dz2, dr = logprob_fdiv_backward(z, r, y, out, w, u, f=f, ref_grad=True)
    assert torch.equal(dz2, dz) and dr.dtype == dtype
    assert rel_err(dr, reference_ref_grad(z, r, y, f, u)) <= tol(dtype)


def test_large_vocabulary_backward():
    z, r, y = make_inputs(2, 50_257, seed=6)
    w, u = torch.tensor([1.0, -2.0], device=DEVICE), torch.tensor([0.3, 1.5], device=DEVICE)
    out = logprob_fdiv_forward(z, r, y, f="js")
    dz = logprob_fdiv_backward(z, r, y, out, w, u, f="js")
    assert rel_err(dz, reference_grad(z, r, y, "js", w, u)) <= tol(torch.float32)


@pytest.mark.parametrize("f", F_NAMES)
def test_gradient_at_the_t_to_zero_and_t_to_infinity_limits(f):
    """Entries with pi/a = e^{-40} and e^{+40}: f'(t) is extreme there and the formula must still hold."""
    n, v = 3, 40
    z, r, y = make_inputs(n, v, seed=7, n_ignored=0)
    z[:, :5] -= 40.0  # pi << a on these entries (t -> 0)
    r[:, 5:10] -= 40.0  # a << pi on these entries (t -> infinity)
    w, u = torch.zeros(n, device=DEVICE), torch.ones(n, device=DEVICE)
    out = logprob_fdiv_forward(z, r, y, f=f, block_v=16)
    ref = logprob_fdiv_reference(z, r, y, f=f)
    assert rel_err(out.div, ref.div) <= tol(torch.float32)
    dz = logprob_fdiv_backward(z, r, y, out, w, u, f=f, block_v=16)
    assert rel_err(dz, reference_grad(z, r, y, f, w, u)) <= tol(torch.float32)


@pytest.mark.parametrize("f", F_NAMES)
def test_backward_matches_central_finite_differences(f):
    """An oracle that does not use autograd: (L(z + h e_k) - L(z - h e_k)) / 2h in float64."""
    n, v = 2, 23
    z, r, y = make_inputs(n, v, seed=8, n_ignored=0)
    w, u = torch.tensor([0.7, -1.1], device=DEVICE), torch.tensor([1.3, 0.4], device=DEVICE)
    out = logprob_fdiv_forward(z, r, y, f=f, block_v=16)
    dz = logprob_fdiv_backward(z, r, y, out, w, u, f=f, block_v=16).double().cpu()

    def loss(zz):
        ref = logprob_fdiv_reference(zz, r, y, f=f)
        return ((w.double() * ref.logp).sum() + (u.double() * ref.div).sum()).item()

    h = 1e-6
    z64 = z.double()
    fd = torch.zeros(n, v, dtype=torch.float64)
    for i in range(n):
        for k in range(v):
            e = torch.zeros_like(z64)
            e[i, k] = h
            fd[i, k] = (loss(z64 + e) - loss(z64 - e)) / (2 * h)
    assert rel_err(dz, fd) <= 1e-5


@pytest.mark.task8_2
def test_without_reference_only_logp_entropy_and_lse():
    z, _, y = make_inputs(5, 37, seed=9)
    out = logprob_fdiv_forward(z, None, y)
    ref = logprob_fdiv_reference(z, None, y)
    for name in ("logp", "entropy", "lse"):
        assert rel_err(getattr(out, name), getattr(ref, name)) <= tol(torch.float32)
    for name in ("ref_logp", "div", "ref_lse", "row_scalar", "ref_row_scalar"):
        assert torch.count_nonzero(getattr(out, name)) == 0
    w = torch.linspace(-1, 1, 5, device=DEVICE)
    dz = logprob_fdiv_backward(z, None, y, out, w, None)
    assert rel_err(dz, reference_grad(z, None, y, "kl", w, None)) <= tol(torch.float32)


def test_logp_and_entropy_agree_with_cross_entropy_and_categorical():
    z, r, y = make_inputs(7, 1000, seed=10)
    out = logprob_fdiv_forward(z, r, y, block_v=128)
    ce = torch.nn.functional.cross_entropy(z.double(), y, ignore_index=-100, reduction="none")
    assert rel_err(out.logp, -ce) <= tol(torch.float32)
    ent = torch.distributions.Categorical(logits=z.double()).entropy()
    assert rel_err(out.entropy, ent) <= tol(torch.float32)


def test_ignored_rows_have_zero_logp_and_no_gradient_from_the_w_term():
    z, r, y = make_inputs(4, 37, seed=11, n_ignored=2)
    out = logprob_fdiv_forward(z, r, y)
    assert torch.count_nonzero(out.logp[:2]) == 0 and torch.count_nonzero(out.ref_logp[:2]) == 0
    assert (out.logp[2:] < 0).all()
    w, u = torch.ones(4, device=DEVICE), torch.zeros(4, device=DEVICE)
    dz = logprob_fdiv_backward(z, r, y, out, w, u)
    assert torch.count_nonzero(dz[:2]) == 0
    assert torch.count_nonzero(dz[2:]) > 0


@pytest.mark.parametrize("f", F_NAMES)
def test_extreme_logits_stay_finite_and_match_reference(f):
    """Rows of logits +-1e4 (one-hot-ish policies and references): no overflow, no NaN."""
    n, v = 4, 70
    z, r, y = make_inputs(n, v, seed=12, n_ignored=0)
    z[0] = -1e4
    z[0, 3] = 1e4  # one-hot policy
    r[1] = 1e4 * torch.sign(torch.randn(v, generator=torch.Generator().manual_seed(13))).to(DEVICE)
    z[2] = 1e4 * torch.rand(v, generator=torch.Generator().manual_seed(14)).to(DEVICE)
    r[3] = -1e4
    r[3, 0] = 1e4  # one-hot reference
    y = torch.tensor([3, 5, 9, 0], device=DEVICE)
    out = logprob_fdiv_forward(z, r, y, f=f, block_v=32)
    ref = logprob_fdiv_reference(z, r, y, f=f)
    zmax = 1e4
    for name in FIELDS:
        got = getattr(out, name)
        assert torch.isfinite(got).all(), name
        assert rel_err(got, getattr(ref, name)) <= tol(torch.float32) * zmax, name
    assert abs(out.logp[0].item()) <= 1e-6  # the one-hot row puts all its mass on its target
    w, u = torch.ones(n, device=DEVICE), torch.ones(n, device=DEVICE)
    dz = logprob_fdiv_backward(z, r, y, out, w, u, f=f, block_v=32)
    assert torch.isfinite(dz).all()
    assert rel_err(dz, reference_grad(z, r, y, f, w, u)) <= tol(torch.float32)


def _disjoint_rows(v=20):
    """Row 0: pi and a on disjoint halves of the vocabulary; row 1: identical distributions."""
    z = torch.full((2, v), float("-inf"))
    r = torch.full((2, v), float("-inf"))
    z[0, : v // 2] = torch.linspace(-1, 1, v // 2)
    r[0, v // 2 :] = torch.linspace(1, -1, v // 2)
    z[1] = r[1] = torch.linspace(-2, 2, v)
    return z.to(DEVICE), r.to(DEVICE), torch.tensor([0, 3], device=DEVICE)


def test_zero_mass_conventions_on_disjoint_supports():
    """Chapter 03, Eq. (3.4): a = 0 < pi costs pi lim f(t)/t, pi = 0 < a costs a f(0), 0 f(0/0) = 0."""
    z, r, y = _disjoint_rows()
    expected = {"kl": math.inf, "reverse_kl": math.inf, "js": math.log(2.0), "tv": 1.0}
    for f, value in expected.items():
        out = logprob_fdiv_forward(z, r, y, f=f, block_v=16)
        if math.isinf(value):
            assert math.isinf(out.div[0].item()) and out.div[0].item() > 0, f
        else:
            assert out.div[0].item() == pytest.approx(value, rel=1e-6), f
        assert abs(out.div[1].item()) <= 1e-6, f
        assert torch.isfinite(out.entropy).all()


@pytest.mark.parametrize("f", F_NAMES)
def test_equal_distributions_have_zero_divergence_and_zero_gradient(f):
    z, _, y = make_inputs(3, 100, seed=15)
    out = logprob_fdiv_forward(z, z.clone(), y, f=f, block_v=32)
    assert out.div.abs().max().item() <= 1e-6
    dz = logprob_fdiv_backward(z, z.clone(), y, out, torch.zeros(3, device=DEVICE), torch.ones(3, device=DEVICE), f=f)
    assert dz.abs().max().item() <= 1e-6


@pytest.mark.parametrize("f", F_NAMES)
def test_divergences_lie_in_their_ranges(f):
    z, r, y = make_inputs(16, 37, seed=16, spread=6.0)
    div = logprob_fdiv_forward(z, r, y, f=f).div
    upper = {"js": math.log(2.0), "tv": 1.0}.get(f, math.inf)
    assert (div >= -1e-6).all() and (div <= upper + 1e-6).all()


# The infinite row forms inf - 0 * inf in the branch the kernel's where() discards; numpy warns about it.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_backward_refuses_rows_whose_divergence_is_infinite():
    z, r, y = _disjoint_rows()
    out = logprob_fdiv_forward(z, r, y, f="kl")
    with pytest.raises(ValueError, match=r"infinite in rows \[0\]"):
        logprob_fdiv_backward(z, r, y, out, torch.ones(2, device=DEVICE), torch.ones(2, device=DEVICE), f="kl")
    w, u = torch.ones(2, device=DEVICE), torch.tensor([0.0, 1.0], device=DEVICE)
    dz = logprob_fdiv_backward(z, r, y, out, w, u)
    assert torch.isfinite(dz).all()
    w_only = logprob_fdiv_backward(z, r, y, out, w, torch.zeros(2, device=DEVICE))
    assert torch.equal(dz[0], w_only[0])  # u = 0 leaves the row's log-prob gradient alone


@pytest.mark.parametrize("f", F_NAMES)
def test_autograd_wrapper_matches_reference_gradient(f):
    z, r, y = make_inputs(4, 300, seed=17)
    w = torch.tensor([0.0, 1.0, -0.5, 2.0], device=DEVICE)
    u = torch.tensor([1.0, 0.25, 3.0, -1.0], device=DEVICE)
    leaf = z.clone().requires_grad_()
    loss = logprob_fdiv(leaf, r, y, f, w, u)
    (3.0 * loss).backward()
    ref = logprob_fdiv_reference(z, r, y, f=f)
    assert loss.item() == pytest.approx(((w.double() * ref.logp).sum() + (u.double() * ref.div).sum()).item(), rel=1e-5)
    assert rel_err(leaf.grad, 3.0 * reference_grad(z, r, y, f, w, u)) <= tol(torch.float32)
    both, ref_leaf = z.clone().requires_grad_(), r.clone().requires_grad_()
    (3.0 * logprob_fdiv(both, ref_leaf, y, f, w, u)).backward()
    assert torch.equal(both.grad, leaf.grad)
    assert rel_err(ref_leaf.grad, 3.0 * reference_ref_grad(z, r, y, f, u)) <= tol(torch.float32)


@pytest.mark.parametrize("f", F_NAMES)
def test_matches_the_divergences_module(f):
    z, r, y = make_inputs(6, 37, seed=18)
    out = logprob_fdiv_forward(z, r, y, f=f)
    P = torch.softmax(z.double(), -1).cpu().numpy()
    Q = torch.softmax(r.double(), -1).cpu().numpy()
    expected = np.asarray(divergences.divergence(f, P, Q), dtype=np.float64)
    assert expected.shape == (6,)
    np.testing.assert_allclose(out.div.cpu().numpy(), expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------- validation


def test_rejects_logits_that_are_not_2d():
    with pytest.raises(ValueError, match=r"logits must be 2-D \[N, V\]; got shape \(2, 3, 4\)"):
        logprob_fdiv_forward(torch.zeros(2, 3, 4, device=DEVICE), None, torch.zeros(2, dtype=torch.long, device=DEVICE))


def test_rejects_mismatched_reference_and_targets():
    z = torch.zeros(3, 10, device=DEVICE)
    y = torch.zeros(3, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match=r"ref_logits must have the shape of logits \(3, 10\); got \(3, 11\)"):
        logprob_fdiv_forward(z, torch.zeros(3, 11, device=DEVICE), y)
    with pytest.raises(ValueError, match=r"targets must have shape \(3,\).*got \(4,\)"):
        logprob_fdiv_forward(z, z, torch.zeros(4, dtype=torch.long, device=DEVICE))
    with pytest.raises(TypeError, match=r"targets must be int64; got torch.int32"):
        logprob_fdiv_forward(z, z, y.int())
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 10\) or equal ignore_index=-100; got 10"):
        logprob_fdiv_forward(z, z, torch.tensor([0, 10, -100], device=DEVICE))


def test_rejects_unknown_divergences_and_dtypes():
    z = torch.zeros(3, 10, device=DEVICE)
    y = torch.zeros(3, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match=r"f must be one of \('kl', 'reverse_kl', 'js', 'tv'\); got 'chi2'"):
        logprob_fdiv_forward(z, z, y, f="chi2")
    with pytest.raises(TypeError, match=r"logits must be float32, float16 or bfloat16; got torch.float64"):
        logprob_fdiv_forward(z.double(), None, y)


def test_backward_rejects_wrong_weights():
    z, r, y = make_inputs(3, 10, seed=19)
    out = logprob_fdiv_forward(z, r, y)
    with pytest.raises(ValueError, match=r"u must be a tensor of shape \(3,\); got \(2,\)"):
        logprob_fdiv_backward(z, r, y, out, torch.ones(3, device=DEVICE), torch.ones(2, device=DEVICE))
    with pytest.raises(TypeError, match=r"saved must be the LogprobFdivOutput"):
        logprob_fdiv_backward(z, r, y, tuple(out), torch.ones(3, device=DEVICE), torch.ones(3, device=DEVICE))


def test_rejects_cpu_tensors_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    z = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"need a CUDA device.*got tensors on cpu"):
        logprob_fdiv_forward(z, z, torch.zeros(2, dtype=torch.long))


def test_output_is_a_named_tuple_of_row_statistics():
    z, r, y = make_inputs(2, 37, seed=20)
    out = logprob_fdiv_forward(z, r, y)
    assert isinstance(out, LogprobFdivOutput) and out._fields == FIELDS


@pytest.mark.parametrize("f", F_NAMES)
def test_matches_the_divergences_module_from_logs_at_extremes(f):
    """Logits of +-1e4 and -inf entries against ``divergence_from_logs`` (its own log-space route)."""
    z, r, y = _disjoint_rows()
    gen = torch.Generator().manual_seed(21)
    z2 = (1e4 * torch.rand(2, 20, generator=gen)).to(DEVICE)
    r2 = (1e4 * torch.rand(2, 20, generator=gen)).to(DEVICE)
    z, r = torch.cat([z, z2]), torch.cat([r, r2])
    y = torch.tensor([0, 3, 1, 2], device=DEVICE)
    out = logprob_fdiv_forward(z, r, y, f=f, block_v=16)
    lp = torch.log_softmax(z.double(), -1).cpu().numpy()
    la = torch.log_softmax(r.double(), -1).cpu().numpy()
    expected = np.asarray(divergences.divergence_from_logs(f, lp, la), dtype=np.float64)
    got = out.div.cpu().numpy().astype(np.float64)
    assert np.array_equal(np.isinf(got), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-5, atol=1e-5)


def test_a_softmax_over_one_logit_is_constant_so_nothing_trains():
    """Seed 000 ends its model in ``Dense(1, activation='softmax')``: with V = 1 the probability is exactly 1
    for every input, log pi = 0, and the gradient w (1 - pi) vanishes, so the printed training cannot happen."""
    gen = torch.Generator().manual_seed(22)
    z = (10 * torch.randn(5, 1, generator=gen)).to(DEVICE)
    y = torch.zeros(5, dtype=torch.long, device=DEVICE)
    out = logprob_fdiv_forward(z, None, y)
    assert torch.count_nonzero(out.logp) == 0 and torch.count_nonzero(out.entropy) == 0
    dz = logprob_fdiv_backward(z, None, y, out, torch.ones(5, device=DEVICE), None)
    assert torch.count_nonzero(dz) == 0


@pytest.mark.skipif(DEVICE == "cuda", reason="checks the message printed where there is no CUDA device")
def test_benchmark_without_cuda_says_so_and_exits_nonzero(capsys):
    from minialign.kernels.benchmark import main

    assert main([]) == 1  # nothing was measured: not a success
    assert "need a CUDA device" in capsys.readouterr().err


def test_row_strided_views_are_read_in_place_and_transposes_are_copied():
    gen = torch.Generator().manual_seed(23)
    wide = (3 * torch.randn(5, 120, generator=gen)).to(DEVICE)
    z, r = wide[:, :50], wide[:, 60:110]  # stride (120, 1): views into one buffer
    y = torch.tensor([0, 5, 49, -100, 7], device=DEVICE)
    w, u = torch.ones(5, device=DEVICE), torch.full((5,), 0.5, device=DEVICE)
    out = logprob_fdiv_forward(z, r, y, f="js", block_v=16)
    out_c = logprob_fdiv_forward(z.contiguous(), r.contiguous(), y, f="js", block_v=16)
    for name in FIELDS:
        assert torch.equal(getattr(out, name), getattr(out_c, name)), name
    dz = logprob_fdiv_backward(z, r, y, out, w, u, f="js", block_v=16)
    assert torch.equal(dz, logprob_fdiv_backward(z.contiguous(), r.contiguous(), y, out_c, w, u, f="js", block_v=16))
    zt = z.contiguous().T.contiguous().T  # same values, column-major
    assert torch.equal(logprob_fdiv_forward(zt, r, y, f="js", block_v=16).div, out.div)


@pytest.mark.task8_2
@pytest.mark.parametrize("spread", [3.0, 3000.0])
@pytest.mark.parametrize("f", F_NAMES)
def test_a_whole_block_of_minus_infinity_logits_changes_nothing_and_makes_no_nan(f, spread):
    """Masked entries are −inf, and a whole block of them (the first, a middle one, the last) must leave the running
    maximum at −inf while it lasts and every output equal to the reference: no NaN from −inf − (−inf), and no
    overflow from logits in the thousands (the shift is the running maximum wherever it is finite)."""
    v, block_v = 40, 16
    z, r, _ = make_inputs(3, v, seed=23, spread=spread)
    masked = [slice(0, 16), slice(16, 32), slice(32, 40)]
    for row, cols in enumerate(masked):
        z[row, cols] = float("-inf")
        r[row, cols] = float("-inf")
    y = torch.tensor([20, 5, 3], device=DEVICE)
    out = logprob_fdiv_forward(z, r, y, f=f, block_v=block_v)
    ref = logprob_fdiv_reference(z, r, y, f=f)
    for name in FIELDS:
        got = getattr(out, name)
        assert torch.isfinite(got).all(), f"{name} is not finite where a block of logits is −inf: {got.tolist()}"
        assert rel_err(got, getattr(ref, name)) <= tol(torch.float32), \
            f"{name}: expected {getattr(ref, name).tolist()}, got {got.tolist()} (tolerance {tol(torch.float32):g})"
