"""What every launcher checks before it starts a kernel: where the tensors live and whether Triton is
interpreting (on the CPU) or compiling (for a GPU)."""
from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU (TRITON_INTERPRET=1, set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_device(t: torch.Tensor) -> None:
    """CUDA tensors always; CPU tensors only under the interpreter."""
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu" and interpreting():
        return
    raise ValueError(
        f"the Triton kernels need a CUDA device (CPU tensors only with TRITON_INTERPRET=1 set before "
        f"importing triton); got tensors on {t.device}"
    )
