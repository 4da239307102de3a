"""Chunked output projection + fused log-prob / f-divergence (chapter 08, Eq. 8.16).

Oracle: the full ``[N, V]`` logits in float64 and torch autograd through the log-prob reference.
Tolerances, as ``max|kernel - reference| / max(max|reference|, 1)``: fp32 1e-5 and bf16 2e-2, against the
reference computed in float64 from the same (rounded) inputs. In bf16 the chunk's logits and their
gradient are themselves rounded to bf16 before the matrix products, so the bf16 budget covers two roundings.
"""
from functools import partial

import pytest
from helpers import dtype_tolerance, installed, rel_err, torch_device

KERNELS = installed("torch", "triton")
if KERNELS:  # without them, the `triton` fixture skips (or fails) each test
    import torch

    from minialign.kernels.linear_logprob import (
        default_chunk_size,
        linear_logprob,
        linear_logprob_backward,
        linear_logprob_fdiv,
        linear_logprob_forward,
        linear_logprob_reference,
    )

pytestmark = pytest.mark.usefixtures("triton")
DEVICE = torch_device(KERNELS)
TOL = {"float32": 1e-5, "bfloat16": 2e-2}
tol = partial(dtype_tolerance, TOL)  # the tolerance of a torch dtype


def make(n, d, v, dtype=None, seed=0, with_ref=True):
    dtype = torch.float32 if dtype is None else dtype
    gen = torch.Generator().manual_seed(seed)
    t = lambda *s: torch.randn(*s, generator=gen).to(device=DEVICE, dtype=dtype)  # noqa: E731
    h, W = t(n, d), t(v, d) / d**0.5 * 3
    ref = (t(n, d), t(v, d) / d**0.5 * 3) if with_ref else (None, None)
    y = torch.randint(0, v, (n,), generator=gen)
    y[0] = -100
    w = torch.randn(n, generator=gen).to(DEVICE)
    u = torch.rand(n, generator=gen).to(DEVICE)
    return h, W, y.to(DEVICE), w, u, *ref


def reference(h, W, y, w, u, hr, Wr, f):
    h64, W64 = h.detach().double().requires_grad_(), W.detach().double().requires_grad_()
    loss, stats = linear_logprob_reference(h64, W64, y, w, u, hr, Wr, f=f)
    loss.backward()
    return loss.detach(), stats, h64.grad, W64.grad


@pytest.mark.parametrize("chunk_size", [None, 4, 64])
@pytest.mark.parametrize("f", ["kl", "js", "reverse_kl", "tv"])
def test_chunked_loss_and_gradients_match_full_logits(f, chunk_size):
    h, W, y, w, u, hr, Wr = make(11, 16, 37, seed=1)
    out = linear_logprob_fdiv(h, W, y, w, u, hr, Wr, f=f, chunk_size=chunk_size)
    loss, stats, gh, gW = reference(h, W, y, w, u, hr, Wr, f)
    assert out.loss.item() == pytest.approx(loss.item(), rel=1e-5, abs=1e-5)
    for name in ("logp", "ref_logp", "entropy", "div"):
        assert rel_err(getattr(out, name), getattr(stats, name)) <= tol(torch.float32), name
    assert rel_err(out.d_hidden, gh) <= tol(torch.float32)
    assert rel_err(out.d_weight, gW) <= tol(torch.float32)


def test_without_reference_and_a_ragged_large_vocabulary():
    h, W, y, w, u, _, _ = make(6, 32, 1000, seed=2, with_ref=False)
    out = linear_logprob_fdiv(h, W, y, w, chunk_size=4)
    loss, stats, gh, gW = reference(h, W, y, w, None, None, None, "kl")
    assert rel_err(out.logp, stats.logp) <= tol(torch.float32)
    assert rel_err(out.d_hidden, gh) <= tol(torch.float32)
    assert rel_err(out.d_weight, gW) <= tol(torch.float32)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_forward_then_backward_with_recomputed_chunks_matches_full_logits(chunk_size):
    """The engine's form of Eq. (8.16): the forward keeps log pi(y) and LSE only; the backward, given the
    weights later, recomputes each chunk's logits. Same gradients as the one-pass form and the float64 oracle."""
    h, W, y, w, _, _, _ = make(11, 16, 300, seed=5, with_ref=False)
    logp, lse = linear_logprob_forward(h, W, y, chunk_size=chunk_size)
    _, stats, gh, gW = reference(h, W, y, w, None, None, None, "kl")
    assert rel_err(logp, stats.logp) <= tol(torch.float32)
    assert rel_err(lse, torch.logsumexp(h.double() @ W.double().T, -1)) <= tol(torch.float32)
    d_hidden, d_weight = linear_logprob_backward(h, W, y, lse, w, chunk_size=chunk_size)
    assert rel_err(d_hidden, gh) <= tol(torch.float32) and rel_err(d_weight, gW) <= tol(torch.float32)
    one_pass = linear_logprob_fdiv(h, W, y, w, chunk_size=chunk_size)
    assert torch.allclose(d_hidden, one_pass.d_hidden, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"lse must be the forward's \[N\] = \(11,\) row log-sum-exps"):
        linear_logprob_backward(h, W, y, lse[:3], w)


def test_bf16_inputs():
    h, W, y, w, u, hr, Wr = make(9, 32, 300, dtype=torch.bfloat16, seed=3)
    out = linear_logprob_fdiv(h, W, y, w, u, hr, Wr, f="kl", chunk_size=4)
    _, stats, gh, gW = reference(h, W, y, w, u, hr, Wr, "kl")
    assert out.d_hidden.dtype == torch.bfloat16 and out.d_weight.dtype == torch.bfloat16
    assert rel_err(out.div, stats.div) <= tol(torch.bfloat16)
    assert rel_err(out.d_hidden, gh) <= tol(torch.bfloat16)
    assert rel_err(out.d_weight, gW) <= tol(torch.bfloat16)


def test_autograd_wrapper_scales_the_stored_gradients():
    h, W, y, w, u, hr, Wr = make(7, 16, 50, seed=4)
    h, W = h.clone().requires_grad_(), W.clone().requires_grad_()
    loss = linear_logprob(h, W, y, w, u, hr, Wr, f="js", chunk_size=3)
    (-2.0 * loss).backward()
    _, _, gh, gW = reference(h, W, y, w, u, hr, Wr, "js")
    assert rel_err(h.grad, -2.0 * gh) <= tol(torch.float32)
    assert rel_err(W.grad, -2.0 * gW) <= tol(torch.float32)


def test_default_chunk_keeps_chunk_logits_about_the_size_of_the_hidden_states():
    assert default_chunk_size(16 * 1024, 50_257, 768) == 256
    assert default_chunk_size(5, 37, 16) == 2
    assert default_chunk_size(1, 10, 4) == 1


def test_rejects_mismatched_hidden_and_weight():
    h = torch.zeros(3, 8, device=DEVICE)
    with pytest.raises(ValueError,
                       match=r"hidden \[N, d\] and weight \[V, d\] must share d; got \(3, 8\) and \(5, 9\)"):
        linear_logprob_fdiv(h, torch.zeros(5, 9, device=DEVICE), torch.zeros(3, dtype=torch.long, device=DEVICE),
                            torch.ones(3, device=DEVICE))
    with pytest.raises(ValueError, match=r"ref_hidden and ref_weight must be given together"):
        linear_logprob_fdiv(h, torch.zeros(5, 8, device=DEVICE), torch.zeros(3, dtype=torch.long, device=DEVICE),
                            torch.ones(3, device=DEVICE), torch.ones(3, device=DEVICE), ref_hidden=h)
