"""``python -m minialign.bench kernels --smoke``: every comparison of the GPU benchmark runs at tiny sizes (on the
CPU through Triton's interpreter when there is no GPU), so the code that produces chapter 08's table is
exercised in CI. Its timings mean nothing; the test checks that each section ran and that the fused paths
agree with their references."""
import re

import pytest


def test_the_kernel_benchmark_runs_every_section_in_smoke_mode(capsys, triton):
    from minialign.bench import main

    assert main(["kernels", "--smoke"]) == 0
    text = capsys.readouterr().out
    for header in ("(a) fused log-prob + f-divergence", "(b) the output head", "(c) causal attention",
                   "(d) GPT training step", "(e) tour"):
        assert header in text, header
    for path in ("fused (Triton)", "torch eager", "torch.compile", "fused, divergence only", "Liger log_softmax"):
        assert path in text, path
    assert "of copy bandwidth" in text and "time crossover" in text and "flash vs SDPA-flash speed" in text
    errors = [float(e) for e in re.findall(r"max relative error ([0-9.e+-]+)", text)]
    assert len(errors) == 2 and max(errors) < 2e-2, errors  # bf16 gradients vs eager, the kernel tests' bf16 budget
    attention_row = re.search(r"^\s+32\s+16\s+1\s+2\s.*$", text, re.M).group(0)  # T = 32, D = 16, B = 1, H = 2
    fp32 = "(c) causal attention, forward + backward, float32" in text  # the CPU smoke run; bf16 on a GPU
    assert float(attention_row.split()[-1]) < (1e-5 if fp32 else 2e-2), attention_row  # flash against SDPA


@pytest.mark.parametrize("argv", [[], ["--only", "attention"]])
def test_without_cuda_and_without_smoke_nothing_is_measured_and_the_exit_status_says_so(argv, capsys, triton):
    import torch

    from minialign.bench import main
    from minialign.kernels.benchmark import main as kernels_main

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the benchmark would measure")
    assert main(["kernels"] + argv) == 1
    err = capsys.readouterr().err
    assert "nothing was measured" in err and "CUDA" in err and len(err.strip().splitlines()) == 1
    assert kernels_main(argv) == 1
    assert "nothing was measured" in capsys.readouterr().err
