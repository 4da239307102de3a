"""The memory arithmetic of chapter 08, Section 1 (kernels/memory.py), against NumPy's byte counts and against what
the fused forward kernel actually returns."""
import numpy as np
import pytest

from minialign.kernels.memory import (
    BYTES_PER_ENTRY,
    COMPULSORY_PASSES,
    FUSED_ROW_STATS,
    compulsory_traffic_bytes,
    fused_state_bytes,
    logits_bytes,
)

SHAPES = [(1, 1), (3, 37), (16, 1000), (129, 257)]


@pytest.mark.parametrize("n, v", SHAPES)
def test_logits_bytes_equal_numpys_nbytes_for_each_width(n, v):
    assert logits_bytes(n, v, "fp32") == np.empty((n, v), np.float32).nbytes
    assert logits_bytes(n, v, "fp16") == np.empty((n, v), np.float16).nbytes
    assert logits_bytes(n, v, "bf16") == logits_bytes(n, v, "fp16")  # bfloat16 is 16 bits too


@pytest.mark.parametrize("n, v", SHAPES)
def test_the_fused_state_grows_with_n_only(n, v):
    assert fused_state_bytes(n) == np.empty((FUSED_ROW_STATS, n), np.float32).nbytes
    assert fused_state_bytes(2 * n) == 2 * fused_state_bytes(n)
    assert compulsory_traffic_bytes(n, v) == COMPULSORY_PASSES * np.empty((n, v), np.float16).nbytes


def test_the_chapters_example_the_logits_dwarf_the_fused_state():
    """N = 16 384 positions, the GPT-2 vocabulary: the ratio of the two is 2V/(4·FUSED_ROW_STATS), independent of N."""
    n, v = 16 * 1024, 50_257
    assert logits_bytes(n, v, "bf16") / fused_state_bytes(n) == pytest.approx(2 * v / (4 * FUSED_ROW_STATS))
    assert logits_bytes(n, v, "fp32") == 2 * logits_bytes(n, v, "bf16")


def test_bad_arguments_are_refused_with_what_was_given():
    with pytest.raises(ValueError, match="fp8"):
        logits_bytes(2, 3, "fp8")
    with pytest.raises(ValueError, match="N = -1"):
        fused_state_bytes(-1)
    assert set(BYTES_PER_ENTRY) == {"bf16", "fp16", "fp32"}


@pytest.mark.usefixtures("triton")
def test_fused_state_bytes_are_what_the_forward_kernel_returns():
    import torch

    from minialign.kernels.logprob_fdiv import LogprobFdivOutput, logprob_fdiv_forward

    device = "cuda" if torch.cuda.is_available() else "cpu"
    n, v = 5, 37
    gen = torch.Generator().manual_seed(0)
    z, r = (torch.randn(n, v, generator=gen).to(device) for _ in range(2))
    y = torch.randint(0, v, (n,), generator=gen).to(device)
    out = logprob_fdiv_forward(z, r, y, f="kl")
    assert len(LogprobFdivOutput._fields) == FUSED_ROW_STATS
    assert sum(t.numel() * t.element_size() for t in out) == fused_state_bytes(n)
