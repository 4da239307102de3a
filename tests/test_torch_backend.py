"""The GPU path: the engine on torch tensors behind the backend seam, dispatching to the Triton kernels.

On a machine without CUDA the kernels run under TRITON_INTERPRET=1 (set in conftest.py), so the whole path
is exercised on the CPU; the same tests run unchanged on a GPU.
"""
import numpy as np
import pytest
from helpers import installed, torch_device

from minialign import functional as F
from minialign.gpt import GPT, GPTConfig
from minialign.optim import AdamW
from minialign.tensor import Tensor

TORCH = installed("torch")
if TORCH:  # without it, the `torch` fixture skips (or fails) each test
    import torch

    from minialign.torch_backend import TorchBackend

DEVICE = torch_device(TORCH)
CFG = GPTConfig(n_layer=2, n_head=2, n_embd=32)  # head dim 16, the smallest the attention kernel takes


def batch(seed=0, n=4):
    x = np.random.default_rng(seed).integers(1, CFG.vocab_size, (n, CFG.block_size))
    lengths = np.random.default_rng(seed + 1).integers(1, CFG.block_size, n)
    x[np.arange(CFG.block_size)[None, :] >= lengths[:, None]] = CFG.eos_id
    return x


@pytest.mark.parametrize("use_kernels", [False, True])
def test_gpt_loss_and_gradients_on_the_torch_backend_equal_the_numpy_engine(use_kernels, torch, request):
    if use_kernels:
        request.getfixturevalue("triton")
    x = batch()
    ref = GPT(CFG, seed=0)
    model = GPT(CFG, seed=0).to(TorchBackend(DEVICE, use_kernels=use_kernels))
    assert isinstance(model.wte.weight.data, torch.Tensor)
    loss_ref, loss = ref.loss(x), model.loss(x)
    loss_ref.backward()
    loss.backward()
    np.testing.assert_allclose(loss.item(), loss_ref.item(), rtol=1e-5)
    for (name, p), q in zip(ref.named_parameters(), model.parameters()):
        # float32 on both sides; the kernels reorder sums, so agreement is to float32 round-off
        np.testing.assert_allclose(q.bk.to_numpy(q.grad), p.grad, rtol=1e-3, atol=2e-5, err_msg=name)


def test_the_kernels_are_actually_used(triton):
    bk = TorchBackend(DEVICE)
    q = Tensor(torch.randn(1, 2, 5, 16, device=DEVICE), requires_grad=True)
    out = F.scaled_dot_product_attention(q, q, q)
    assert out.op == "flash_attention"
    logits = Tensor(torch.randn(6, 27, device=DEVICE), requires_grad=True)
    loss = F.cross_entropy(logits, np.array([1, 2, 3, -100, 0, 26]))
    loss.backward()
    expected = torch.nn.functional.cross_entropy(logits.data, torch.tensor([1, 2, 3, -100, 0, 26], device=DEVICE))
    np.testing.assert_allclose(loss.item(), expected.item(), rtol=1e-5)
    assert bk.use_kernels


def test_gpt_trains_through_the_torch_backend_with_kernels(triton):
    x = batch(3, n=4)
    model = GPT(CFG, seed=1).to(TorchBackend(DEVICE))
    opt = AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(4):
        loss = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses  # four steps on one batch: memorisation starts at once
    rows, logp = model.generate(4, rng=0)
    np.testing.assert_allclose(logp, model.sequence_logprob(rows).numpy(), rtol=1e-4, atol=1e-4)
