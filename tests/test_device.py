"""``--device cpu|cuda``: the same runs on the NumPy engine and on the torch backend with the Triton kernels.

On a machine without a GPU the torch backend runs on the CPU and the kernels under Triton's interpreter
(conftest.py), so these tests prove in CI what ``--device cuda`` does on a GPU: pretraining, RLHF with the
full-token KL (flash attention, the fused log-prob and f-divergence kernels) and distillation take the same
steps on the same samples. Tolerances: every logged metric to 1e-4 relative (1e-6 absolute), and the
trained models' sequence log-probabilities to 1e-4 — float32 round-off through a few hundred ops, the
kernels summing in another order; the samples drawn are identical, token for token. The models are tiny
(one layer, one head of width 16, two rows a batch) because the interpreter runs each kernel program in
Python: a few seconds a run.
"""
import numpy as np
import pytest
from helpers import installed, torch_device

from minialign import device, tasks
from minialign.backend import NUMPY
from minialign.cli import main
from minialign.gpt import GPT, GPTConfig
from minialign.rewards import true_reward
from minialign.trainers.common import RunContext, TrainConfig, logprobs

KERNELS = installed("torch", "triton")
if KERNELS:
    import torch

    from minialign.torch_backend import TorchBackend
DEVICE = torch_device(KERNELS)
TINY = dict(n_layer=1, n_head=1, n_embd=16)
STEPS = TrainConfig(steps=2, batch_size=2, lr=3e-3, seed=0, checkpoint_every=10**9)


@pytest.fixture
def short_validation(monkeypatch):
    """Pretraining evaluates on the first 8 validation names only (the interpreter is slow, not wrong)."""
    import minialign.pretrain as P

    real = P.names_dataset
    monkeypatch.setattr(P, "names_dataset", lambda *a, **k: (lambda t: (t[0], t[1], t[2][:8]))(real(*a, **k)))


def same_history(h_numpy, h_torch, keys):
    for key in keys:
        np.testing.assert_allclose(h_torch[key], h_numpy[key], rtol=1e-4, atol=1e-6, err_msg=key)


def same_model(m_numpy, m_torch):
    rows, logp = m_numpy.generate(3, rng=5)
    rows_t, logp_t = m_torch.generate(3, rng=5)
    np.testing.assert_array_equal(rows_t, rows)
    np.testing.assert_allclose(logprobs(m_torch, rows), logprobs(m_numpy, rows), rtol=1e-4)
    np.testing.assert_allclose(logp_t, logp, rtol=1e-4)


def test_cpu_is_the_numpy_engine():
    assert device.backend_for("cpu") is NUMPY
    with pytest.raises(ValueError, match="--device must be one of cpu, cuda; got 'tpu'"):
        device.backend_for("tpu")


def test_cuda_without_a_gpu_or_the_kernels_fails_naming_the_flag(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    with pytest.raises(ValueError, match=r"--device cuda needs torch and triton, and triton is not installed"):
        device.backend_for("cuda")
    monkeypatch.setattr(importlib.util, "find_spec", real)
    if KERNELS and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: --device cuda is available here")
    if KERNELS:
        with pytest.raises(ValueError, match="--device cuda needs a CUDA GPU"):
            device.backend_for("cuda")
    for argv in (["pretrain", "--steps", "1"], ["align", "rlhf", "--steps", "1"], ["tour", "--quick"],
                 ["distill", "--teacher", str(tasks.BASE_CHECKPOINT), "--steps", "1"]):
        assert main(argv + ["--device", "cuda"]) == 2
        assert "--device cuda needs" in capsys.readouterr().err


def test_pretraining_on_the_torch_backend_matches_the_numpy_engine(short_validation, triton):
    from minialign.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(model=GPTConfig(**TINY, dropout=0.1), steps=2, batch_size=2, eval_every=2, warmup=1)
    m_numpy, h_numpy = pretrain(cfg, progress=False, log=lambda *a: None)
    m_torch, h_torch = pretrain(cfg, progress=False, log=lambda *a: None, backend=TorchBackend(DEVICE))
    assert isinstance(m_torch.wte.weight.data, torch.Tensor)
    same_history(h_numpy, h_torch, ["train_loss", "val_loss"])
    same_model(m_numpy, m_torch)


@pytest.mark.parametrize("run", ["rlhf full_token", "distill js"])
def test_alignment_and_distillation_on_the_torch_backend_match_the_numpy_engine(run, triton):
    """RLHF with the analytic token KL (F.token_fdiv on the fused kernel) and token-level distillation: the
    same samples, losses, rewards, KLs and gradient norms, step by step, and the same trained model."""
    results = []
    for backend in (None, TorchBackend(DEVICE)):
        base = device.place(GPT(GPTConfig(**TINY), seed=3), backend).eval()
        if run == "rlhf full_token":
            model, hist = tasks.run_rlhf(true_reward, RunContext(STEPS, base, progress=False), kl="full_token")
            keys = ["loss", "reward", "kl_full_token", "kl_k1", "grad_norm"]
        else:
            model, hist = tasks.run_distill(base, RunContext(STEPS, progress=False), student_config=TINY, f="js")
            keys = ["loss", "token_div", "kl_p_pi_est", "grad_norm"]
        results.append((model, hist))
    (m_numpy, h_numpy), (m_torch, h_torch) = results
    same_history(h_numpy, h_torch, keys)
    same_model(m_numpy, m_torch)


def test_the_command_line_hands_the_device_to_the_run(short_validation, monkeypatch, tmp_path, capsys, triton):
    """``--device cuda`` reaches the library as the backend ``device.backend_for`` makes (here the torch backend
    on this machine's device, standing in for the GPU)."""
    made = []

    def backend_for(name, flag="--device"):
        made.append(name)
        return TorchBackend(DEVICE) if name == "cuda" else NUMPY

    monkeypatch.setattr(device, "backend_for", backend_for)
    out = tmp_path / "base.npz"
    argv = ["pretrain", "--device", "cuda", "--steps", "1", "--batch-size", "2", "--eval-every", "1", "--n-layer", "1",
            "--n-head", "1", "--n-embd", "16", "--samples", "2", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert made == ["cuda"] and "on cuda" in capsys.readouterr().out and out.exists()
    assert GPT.load(out).config.n_embd == 16  # the checkpoint is NumPy arrays, loadable on either device
