"""The token-level f-divergence op, F.token_fdiv (chapter 08, Eqs. 8.10, 8.13 and 8.15), and the head fused with
the log-probabilities, F.linear_logprobs (Eq. 8.16).

Oracles: central finite differences in float64 (``gradcheck``), torch autograd through the plain formulas,
``minialign.divergences`` on the softmaxes, and — for the torch backend — the NumPy engine itself: the fused
kernels (on the CPU under Triton's interpreter) must give the same values and both gradients.
"""
import math

import numpy as np
import pytest
from helpers import check_against_torch, installed, t64, torch_device
from hypothesis import given
from hypothesis import strategies as st
from strategies import float_arrays

from minialign import Tensor, divergences, gradcheck
from minialign import functional as F
from minialign.gpt import GPT, GPTConfig

F_NAMES = ("kl", "reverse_kl", "js", "tv")
KERNELS = installed("torch", "triton")
if KERNELS:

    from minialign.torch_backend import TorchBackend
DEVICE = torch_device(KERNELS)


def logits(shape, seed, spread=2.0):
    return spread * np.random.default_rng(seed).standard_normal(shape)


def torch_fdiv(z, r, f):
    """The same divergence written plainly in torch (the autograd oracle)."""
    import torch

    lp, la = torch.log_softmax(z, -1), torch.log_softmax(r, -1)
    p, a = lp.exp(), la.exp()
    if f == "kl":
        return (p * (lp - la)).sum(-1)
    if f == "reverse_kl":
        return (a * (la - lp)).sum(-1)
    if f == "js":
        lm = torch.logaddexp(lp, la) - math.log(2.0)
        return 0.5 * (p * (lp - lm) + a * (la - lm)).sum(-1)
    return 0.5 * (p - a).abs().sum(-1)


def test_the_op_offers_the_kernels_members(triton):
    from minialign.kernels.logprob_fdiv import F_NAMES as KERNEL_F_NAMES

    assert F.FDIV_NAMES == tuple(KERNEL_F_NAMES) == F_NAMES


# ------------------------------------------------------------------------------- the NumPy engine
@pytest.mark.parametrize("f", F_NAMES)
def test_gradcheck_in_both_logits_with_a_mask(f):
    """Eqs. (8.13) and (8.15) against central differences; masked positions get neither value nor gradient."""
    z, r = t64(logits((2, 3, 5), 0)), t64(logits((2, 3, 5), 1))
    mask = np.array([[True, False, True], [True, True, False]])
    assert gradcheck(lambda a, b: F.token_fdiv(a, b, f, mask), z, r)
    out = F.token_fdiv(z, r, f, mask)
    assert (out.numpy()[~mask] == 0).all() and (out.numpy()[mask] > 0).all()


@pytest.mark.parametrize("f", F_NAMES)
def test_matches_torch_autograd(f, torch):
    check_against_torch(lambda a, b: F.token_fdiv(a, b, f), lambda a, b: torch_fdiv(a, b, f),
                        logits((4, 7), 2), logits((4, 7), 3))


@pytest.mark.parametrize("f", F_NAMES)
def test_values_are_the_divergences_module_on_the_softmaxes(f):
    z, r = logits((6, 9), 4), logits((6, 9), 5)
    p = np.exp(z - np.logaddexp.reduce(z, -1, keepdims=True))
    q = np.exp(r - np.logaddexp.reduce(r, -1, keepdims=True))
    np.testing.assert_allclose(F.token_fdiv(Tensor(z), Tensor(r), f).numpy(),
                               divergences.divergence(f, p, q), rtol=1e-10, atol=1e-13)


@given(z=float_arrays((3, 6), low=-8, high=8), r=float_arrays((3, 6), low=-8, high=8),
       shift=st.floats(-50, 50), f=st.sampled_from(F_NAMES))
def test_nonnegative_zero_at_equality_and_blind_to_a_shift_of_the_logits(z, r, shift, f):
    d = F.token_fdiv(Tensor(z), Tensor(r), f).numpy()
    assert (d >= -1e-12).all()
    np.testing.assert_allclose(F.token_fdiv(Tensor(z + shift), Tensor(r - shift), f).numpy(), d, atol=1e-9)
    np.testing.assert_allclose(F.token_fdiv(Tensor(z), Tensor(z.copy()), f).numpy(), 0.0, atol=1e-12)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_zero_mass_and_infinite_divergences_under_a_mask():
    """−inf logits: disjoint supports give log 2 (js), 1 (tv), ∞ (kl, reverse_kl). An infinite position has no
    gradient: the backward refuses it, unless the mask leaves it out, when it is 0 with a zero gradient."""
    z = np.array([[0.0, 1.0, -np.inf, -np.inf], [0.5, 0.1, 0.2, 0.3]])
    r = np.array([[-np.inf, -np.inf, 1.0, 0.0], [0.1, 0.5, 0.3, 0.2]])
    for f, value in {"kl": np.inf, "reverse_kl": np.inf, "js": math.log(2.0), "tv": 1.0}.items():
        assert F.token_fdiv(Tensor(z), Tensor(r), f).numpy()[0] == pytest.approx(value)
    a, b = t64(z), t64(r)
    with pytest.raises(ValueError, match="D_kl is infinite at 1 unmasked position"):
        F.token_fdiv(a, b, "kl").sum().backward()
    a, b = t64(z), t64(r)
    out = F.token_fdiv(a, b, "kl", np.array([False, True]))
    out.sum().backward()
    assert out.numpy()[0] == 0 and (a.grad[0] == 0).all() and (b.grad[0] == 0).all()
    assert np.isfinite(a.grad).all() and np.isfinite(b.grad).all()


def test_refuses_bad_arguments():
    z = Tensor(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="f must be one of"):
        F.token_fdiv(z, z, "hellinger")
    with pytest.raises(ValueError, match=r"two logits arrays of one shape \[..., V\]; got \(2, 3\) and \(2, 4\)"):
        F.token_fdiv(z, Tensor(np.zeros((2, 4))), "kl")
    with pytest.raises(ValueError, match=r"mask must have shape \(2,\)"):
        F.token_fdiv(z, z, "kl", np.ones(3, bool))


# ------------------------------------------------------------------------------- the fused kernel behind the hook
# (N, V): a names vocabulary, a ragged multi-block one, GPT-2's with few rows; N odd throughout
AWKWARD = [(5, 27), (3, 1000), (1, 50_257)]


@pytest.mark.parametrize("n,v", AWKWARD)
@pytest.mark.parametrize("f", F_NAMES)
def test_the_kernel_behind_the_torch_backend_equals_the_numpy_engine(f, n, v, triton):
    """Same value and both gradients from the NumPy engine (float64) and from the fused kernel (float32)."""
    bk = TorchBackend(DEVICE)
    z, r = logits((n, v), 6 + v), logits((n, v), 7 + v)
    c = np.random.default_rng(8).standard_normal(n)
    mask = np.arange(n) != 1
    ours = [t64(z), t64(r)]
    ref = F.token_fdiv(*ours, f, mask)
    ref.backward(c)
    theirs = [Tensor(bk.asarray(z, dtype=np.float32), requires_grad=True) for z in (z, r)]
    out = F.token_fdiv(*theirs, f, mask)
    assert bk.token_fdiv(theirs[0].data, theirs[1].data, f, True) is not None  # the kernel, not the fallback
    out.backward(bk.asarray(c, dtype=np.float32))
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
    for a, b in zip(theirs, ours):
        np.testing.assert_allclose(bk.to_numpy(a.grad), b.grad, rtol=1e-4, atol=1e-6 * max(1.0, np.abs(b.grad).max()))


@pytest.mark.parametrize("f", F_NAMES)
def test_the_kernel_with_logits_of_ten_thousand(f, triton):
    """±1e4 logits (near one-hot rows). A float32 log-sum-exp near 1e4 is known to half an ulp, 5e-4, so every
    probability the kernel forms from it carries a relative error of that size: the tolerances scale with the
    logits, 1e-7·|z|max (relative to the largest entry), the problem's condition as in the kernel's own tests."""
    n, v = 3, 70
    rng = np.random.default_rng(9)
    z, r = logits((n, v), 10), logits((n, v), 11)
    z[0] = -1e4
    z[0, 3] = 1e4
    r[1] = 1e4 * np.sign(rng.standard_normal(v))
    z[2] = 1e4 * rng.random(v)
    z, r = z.astype(np.float32), r.astype(np.float32)  # the same rounded inputs on both sides
    bk = TorchBackend(DEVICE)
    ours = [t64(z), t64(r)]
    ref = F.token_fdiv(*ours, f)
    ref.sum().backward()
    theirs = [Tensor(bk.asarray(x), requires_grad=True) for x in (z, r)]
    out = F.token_fdiv(*theirs, f)
    out.sum().backward()
    assert np.isfinite(out.numpy()).all()
    scale = 1e-7 * 1e4
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-5, atol=scale * max(1.0, np.abs(ref.numpy()).max()))
    for a, b in zip(theirs, ours):
        np.testing.assert_allclose(bk.to_numpy(a.grad), b.grad, rtol=1e-5, atol=scale * np.abs(b.grad).max())


def test_the_hooks_decline_float64_and_the_reference_gradient_only_when_asked(triton):
    bk = TorchBackend(DEVICE)
    z = bk.asarray(logits((2, 27), 12))
    assert bk.token_fdiv(z, z, "kl", False) is None and bk.token_logprobs(z, bk.asarray([1, 2]), -100) is None
    z32 = bk.asarray(logits((2, 27), 12), dtype=np.float32)
    div, backward = bk.token_fdiv(z32, z32 + 1, "js", False)
    dz, dr = backward(bk.asarray(np.ones(2), dtype=np.float32))
    assert dr is None and dz.shape == (2, 27)
    frozen = Tensor(z32 * 2.0)  # no gradient asked for the second argument
    a = Tensor(z32, requires_grad=True)
    F.token_fdiv(a, frozen, "js").sum().backward()
    assert frozen.grad is None and a.grad is not None


# ------------------------------------------------------------------------------- the chunked output head
CFG = GPTConfig(vocab_size=300, block_size=8, n_layer=1, n_head=2, n_embd=32)


def _rows(seed=0, n=5):
    x = np.random.default_rng(seed).integers(1, CFG.vocab_size, (n, CFG.block_size))
    lengths = np.random.default_rng(seed + 1).integers(1, CFG.block_size, n)
    x[np.arange(CFG.block_size)[None, :] >= lengths[:, None]] = CFG.eos_id
    return x


@pytest.mark.parametrize("min_vocab,op", [(256, "linear_logprobs"), (None, "neg")])
def test_gpt_token_logprobs_use_the_chunked_head_from_the_crossover_on(min_vocab, op, triton):
    """With V at or above the backend's crossover, GPT.token_logprobs runs the chunked head (no [N, V] logits
    held); below it, the logits and the fused log-prob kernel. Either way: the NumPy engine's values and
    gradients."""
    from minialign.torch_backend import LINEAR_LOGPROB_MIN_VOCAB

    x = _rows()
    ref = GPT(CFG, seed=0)
    kw = {} if min_vocab is None else {"linear_logprob_min_vocab": min_vocab}
    assert min_vocab is not None or CFG.vocab_size < LINEAR_LOGPROB_MIN_VOCAB
    model = GPT(CFG, seed=0).to(TorchBackend(DEVICE, **kw))
    lp_ref, lp = ref.token_logprobs(x), model.token_logprobs(x)
    assert lp.op == op and lp.shape == x.shape
    c = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    lp_ref.backward(c)
    lp.backward(model.wte.weight.bk.asarray(c))
    np.testing.assert_allclose(lp.numpy(), lp_ref.numpy(), rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(ref.named_parameters(), model.parameters()):
        np.testing.assert_allclose(q.bk.to_numpy(q.grad), p.grad, rtol=1e-3, atol=2e-5, err_msg=name)


def test_linear_logprobs_on_numpy_is_the_head_and_cross_entropy():
    h, w = t64(logits((2, 3, 4), 13)), t64(logits((6, 4), 14))
    y = np.array([[1, 5, -100], [0, 2, 3]])
    assert gradcheck(lambda a, b: F.linear_logprobs(a, b, y), h, w)
    expected = -F.cross_entropy(F.linear(h, w), y, reduction="none").numpy()
    np.testing.assert_array_equal(F.linear_logprobs(h, w, y).numpy(), expected)
