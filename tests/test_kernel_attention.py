"""Flash attention kernels (chapter 08, Eqs. 8.1-8.8) against plain fp32 attention and torch autograd.

Without a GPU the kernels run under Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1);
the same tests run unchanged on a CUDA device, with a few larger shapes added there.

Tolerances, as ``max|kernel - reference| / max|reference|`` against the reference computed in fp32 from
the same (rounded) inputs: fp32 1e-5, fp16 2e-3, bf16 2e-2. The low-precision budgets cover rounding the
output to 8 or 11 mantissa bits and, on a GPU, 16-bit products inside the tensor-core matmuls.
"""
import math
from functools import partial

import pytest
from helpers import dtype_tolerance, installed, torch_device
from helpers import rel_err as relative_error

KERNELS = installed("torch", "triton")
if KERNELS:  # without them, the `triton` fixture skips (or fails) each test
    import torch

    from minialign.kernels.attention import (
        attention_reference,
        flash_attention,
        flash_attention_backward,
        flash_attention_forward,
    )

pytestmark = pytest.mark.usefixtures("triton")
DEVICE = torch_device(KERNELS)
TOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}
tol = partial(dtype_tolerance, TOL)  # the tolerance of a torch dtype
DTYPES = list(TOL)

# (B, H, T, D): T = 1, 7, 33 and 40 are not multiples of the 16-row blocks used under the interpreter.
SHAPES = [(1, 1, 1, 16), (1, 2, 7, 32), (2, 1, 33, 16), (1, 1, 40, 64)]
if DEVICE == "cuda":
    SHAPES += [(2, 3, 1000, 64), (1, 2, 1031, 128)]


def rel_err(actual, expected):
    """Relative to the largest reference entry; absolute where every entry is below 1e-3."""
    return relative_error(actual, expected, floor=1e-3)


def make_qkv(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(device=DEVICE, dtype=dtype) for _ in range(3)]


def reference_grads(q, k, v, do, causal, scale=None):
    leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    o = attention_reference(*leaves, causal=causal, scale=scale)
    o.backward(do.float())
    return o.detach(), [t.grad for t in leaves]


def assert_forward_and_backward_match(q, k, v, causal=True, scale=None, grad_tol=None, **blocks):
    """Run both kernels on fp32 inputs and compare O, dQ, dK, dV with the reference; returns (O, lse)."""
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(0)).to(device=q.device, dtype=q.dtype)
    o, lse = flash_attention_forward(q, k, v, causal=causal, scale=scale, **blocks)
    dq, dk, dv = flash_attention_backward(q, k, v, o, lse, do, causal=causal, scale=scale, **blocks)
    o_ref, (gq, gk, gv) = reference_grads(q, k, v, do, causal, scale=scale)
    assert rel_err(o, o_ref) <= tol(torch.float32)
    for name, got, want in (("dq", dq, gq), ("dk", dk, gk), ("dv", dv, gv)):
        assert rel_err(got, want) <= (grad_tol or tol(torch.float32)), name
    return o, lse


@pytest.mark.task8_1
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_reference_output_and_lse(dtype, shape, causal):
    dtype = getattr(torch, dtype)
    q, k, v = make_qkv(shape, dtype)
    o, lse = flash_attention_forward(q, k, v, causal=causal)
    o_ref, lse_ref = attention_reference(q, k, v, causal=causal, return_lse=True)
    assert o.shape == q.shape and o.dtype == dtype
    assert lse.shape == shape[:3] and lse.dtype == torch.float32
    assert rel_err(o, o_ref) <= tol(dtype)
    assert (lse.double() - lse_ref.double()).abs().max().item() <= 1e-5 * max(1.0, lse_ref.abs().max().item())


@pytest.mark.task8_3
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", SHAPES[1:])
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_autograd_of_reference(dtype, shape, causal):
    dtype = getattr(torch, dtype)
    q, k, v = make_qkv(shape, dtype, seed=1)
    do = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(device=DEVICE, dtype=dtype)
    o, lse = flash_attention_forward(q, k, v, causal=causal)
    dq, dk, dv = flash_attention_backward(q, k, v, o, lse, do, causal=causal)
    _, (gq, gk, gv) = reference_grads(q, k, v, do, causal)
    for name, got, want in (("dq", dq, gq), ("dk", dk, gk), ("dv", dv, gv)):
        assert got.dtype == dtype and got.shape == q.shape
        assert rel_err(got, want) <= tol(dtype), name


@pytest.mark.task8_3
def test_single_token_has_zero_query_and_key_gradients():
    q, k, v = make_qkv((1, 1, 1, 16), torch.float32)
    do = torch.randn_like(q)
    o, lse = flash_attention_forward(q, k, v)
    dq, dk, dv = flash_attention_backward(q, k, v, o, lse, do)
    assert torch.equal(o, v)  # one allowed key: softmax weight exactly 1
    assert dq.abs().max().item() <= 1e-6 and dk.abs().max().item() <= 1e-6
    assert torch.allclose(dv, do)


@pytest.mark.parametrize("scale", [None, 2.0])
def test_dq_and_dk_carry_the_softmax_scale(scale):
    """Eq. (8.8): dQ = s·dS·K and dK = s·dSᵀQ, with dS built by hand from Eqs. (8.5)-(8.7) in float64
    (P = e^{S − LSE}, dP = dO Vᵀ, D = rowsum(dO ∘ O), dS = P ∘ (dP − D)). The kernels' dQ and dK match the
    scaled products and are far from the unscaled ones, at the default s = 1/√D = 0.25 and at s = 2. (With one
    token dS = 0 and the factor cannot show; here T = 9.)"""
    q, k, v = make_qkv((1, 1, 9, 16), torch.float32, seed=9)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(10)).to(DEVICE)
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    o, lse = flash_attention_forward(q, k, v, scale=scale)
    dq, dk, _ = flash_attention_backward(q, k, v, o, lse, do, scale=scale)
    q64, k64, v64, do64 = (t.double().cpu()[0, 0] for t in (q, k, v, do))
    scores = s * q64 @ k64.T
    scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
    p = torch.softmax(scores, dim=-1)
    o64 = p @ v64
    dp = do64 @ v64.T
    d_row = (do64 * o64).sum(-1, keepdim=True)
    ds = p * (dp - d_row)
    assert ds.abs().max().item() > 0.1  # the score gradient is not trivially zero here
    for got, unscaled in ((dq, ds @ k64), (dk, ds.T @ q64)):
        got = got.double().cpu()[0, 0]
        assert rel_err(got, s * unscaled) <= tol(torch.float32)
        assert rel_err(got, unscaled) > 0.5


@pytest.mark.parametrize("block_m,block_n", [(16, 32), (32, 16)])
@pytest.mark.parametrize("causal", [True, False])
def test_unequal_query_and_key_blocks(block_m, block_n, causal):
    """The causal loop bounds must hold when query and key blocks differ (the GPU uses 128 x 64)."""
    q, k, v = make_qkv((1, 2, 45, 32), torch.float32, seed=3)
    assert_forward_and_backward_match(q, k, v, causal=causal, block_m=block_m, block_n=block_n)


def test_head_dim_128():
    q, k, v = make_qkv((1, 1, 20, 128), torch.float32, seed=4)
    assert_forward_and_backward_match(q, k, v)


@pytest.mark.parametrize("head_dim", [24, 48])
def test_head_dims_that_are_not_powers_of_two_are_padded_and_masked(head_dim):
    q, k, v = make_qkv((1, 2, 19, head_dim), torch.float32, seed=5)
    assert_forward_and_backward_match(q, k, v)


def test_custom_scale_and_large_scores():
    """A large softmax scale makes the rows nearly one-hot; the online max keeps every exp finite."""
    q, k, v = make_qkv((1, 1, 23, 16), torch.float32, seed=6)
    # scores of size ~1e3: the gradients' error is their condition number times fp32 epsilon
    o, lse = assert_forward_and_backward_match(q, k, v, scale=50.0, grad_tol=1e-4)
    assert torch.isfinite(o).all() and torch.isfinite(lse).all()


def test_causal_rows_ignore_future_keys_and_values():
    shape = (1, 1, 29, 16)
    q, k, v = make_qkv(shape, torch.float32, seed=7)
    o1, _ = flash_attention_forward(q, k, v)
    k2, v2 = k.clone(), v.clone()
    k2[..., 20:, :] += 3.0
    v2[..., 20:, :] -= 5.0
    o2, _ = flash_attention_forward(q, k2, v2)
    assert torch.equal(o1[..., :20, :], o2[..., :20, :])
    assert not torch.allclose(o1[..., 20:, :], o2[..., 20:, :])


def test_non_contiguous_inputs_match_contiguous_ones():
    gen = torch.Generator().manual_seed(8)
    qkv = torch.randn(2, 17, 3, 2, 32, generator=gen).to(DEVICE)  # [B, T, 3, H, D]
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [B, H, T, D] views, not contiguous
    assert not q.is_contiguous()
    o, lse = flash_attention_forward(q, k, v)
    o_c, lse_c = flash_attention_forward(q.contiguous(), k.contiguous(), v.contiguous())
    assert torch.equal(o, o_c) and torch.equal(lse, lse_c)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_autograd_wrapper_matches_reference(dtype):
    dtype = getattr(torch, dtype)
    q, k, v = (t.requires_grad_() for t in make_qkv((2, 2, 21, 32), dtype, seed=9))
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(10)).to(device=DEVICE, dtype=dtype)
    o = flash_attention(q, k, v)
    o.backward(do)
    o_ref, (gq, gk, gv) = reference_grads(q, k, v, do, True)
    assert rel_err(o.detach(), o_ref) <= tol(dtype)
    for got, want in ((q.grad, gq), (k.grad, gk), (v.grad, gv)):
        assert rel_err(got, want) <= tol(dtype)


@pytest.mark.task8_1
def test_lse_is_natural_log_of_the_row_normaliser():
    q, k, v = make_qkv((1, 1, 9, 16), torch.float32, seed=11)
    _, lse = flash_attention_forward(q, k, v, causal=False)
    s = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(16)
    assert torch.allclose(lse.double(), torch.log(torch.exp(s).sum(-1)), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------- validation


def test_rejects_tensors_that_are_not_4d():
    q = torch.zeros(2, 5, 16, device=DEVICE)
    with pytest.raises(ValueError, match=r"q must be 4-D \[B, H, T, D\]; got shape \(2, 5, 16\)"):
        flash_attention_forward(q, q, q)


def test_rejects_mismatched_shapes():
    q = torch.zeros(1, 1, 5, 16, device=DEVICE)
    k = torch.zeros(1, 1, 6, 16, device=DEVICE)
    with pytest.raises(ValueError, match=r"k must have the shape of q \(1, 1, 5, 16\); got \(1, 1, 6, 16\)"):
        flash_attention_forward(q, k, q)


def test_rejects_unsupported_and_mixed_dtypes():
    q = torch.zeros(1, 1, 5, 16, device=DEVICE)
    with pytest.raises(TypeError, match=r"q must be float32, float16 or bfloat16; got torch.float64"):
        flash_attention_forward(q.double(), q.double(), q.double())
    with pytest.raises(TypeError, match=r"v must have the dtype of q \(torch.float32\); got torch.float16"):
        flash_attention_forward(q, q, q.half())


def test_rejects_head_dims_beyond_128():
    q = torch.zeros(1, 1, 4, 256, device=DEVICE)
    with pytest.raises(ValueError, match=r"head dim must be between 1 and 128.*got 256"):
        flash_attention_forward(q, q, q)


def test_rejects_cpu_tensors_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.zeros(1, 1, 4, 16)
    with pytest.raises(ValueError, match=r"need a CUDA device.*got tensors on cpu"):
        flash_attention_forward(q, q, q)


def test_backward_rejects_a_wrong_lse():
    q = torch.zeros(1, 1, 4, 16, device=DEVICE)
    with pytest.raises(ValueError, match=r"lse must be a float32 tensor of shape \(1, 1, 4\)"):
        flash_attention_backward(q, q, q, q, torch.zeros(1, 1, 5, device=DEVICE), q)


@pytest.mark.task8_1
@pytest.mark.parametrize("causal", [True, False])
def test_rows_of_very_different_scores_each_keep_their_own_running_maximum(causal):
    """Eq. (8.3) shifts each query row by its own running maximum: in one block, rows whose scores sit near +60
    and rows near −60 must both come out right (a shift shared across rows — the block's maximum, a column's —
    underflows e^{s − m} to 0 for the low rows, and 0/0 follows)."""
    gen = torch.Generator().manual_seed(31)
    b, h, t, d = 1, 1, 16, 16
    direction = torch.ones(d) / math.sqrt(d)
    sign = torch.where(torch.arange(t) % 2 == 0, 1.0, -1.0)
    q = (sign[:, None] * 60.0 * direction * math.sqrt(d) + 0.1 * torch.randn(t, d, generator=gen))
    k = direction + 0.05 * torch.randn(t, d, generator=gen)
    v = torch.randn(t, d, generator=gen)
    q, k, v = (x.reshape(b, h, t, d).to(device=DEVICE, dtype=torch.float32) for x in (q, k, v))
    o, lse = flash_attention_forward(q, k, v, causal=causal)
    o_ref, lse_ref = attention_reference(q, k, v, causal=causal, return_lse=True)
    assert torch.isfinite(o).all() and torch.isfinite(lse).all(), "NaN or inf where scores differ by row"
    assert rel_err(o, o_ref) <= tol(torch.float32), f"output: relative error {rel_err(o, o_ref):.3g}"
    err = (lse.double() - lse_ref.double()).abs().max().item()
    assert err <= 1e-5 * max(1.0, lse_ref.abs().max().item()), f"LSE: max error {err:.3g}"
