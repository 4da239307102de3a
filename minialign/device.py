"""Where the engine runs (chapter 08): ``--device cpu`` is the NumPy engine; ``--device cuda`` is the torch
backend on a CUDA GPU, whose fused hooks call the Triton kernels. Same code, same seeds: random draws always
come from NumPy generators, so a run on either device samples the same way."""
from __future__ import annotations

import importlib.util

from .backend import NUMPY

DEVICES = ("cpu", "cuda")


def backend_for(device: str, flag: str = "--device"):
    """The backend of ``device``: NumPy for "cpu"; for "cuda" a ``TorchBackend("cuda")`` with the kernels, or a
    ValueError naming ``flag`` and what is missing (torch, triton, or a CUDA GPU)."""
    if device == "cpu":
        return NUMPY
    if device != "cuda":
        raise ValueError(f"{flag} must be one of {', '.join(DEVICES)}; got {device!r}")
    missing = [m for m in ("torch", "triton") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"{flag} cuda needs torch and triton, and {' and '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not installed: pip install torch -e '.[kernels]' "
                         f"(or use {flag} cpu)")
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"{flag} cuda needs a CUDA GPU, and torch {torch.__version__} sees none here "
                         f"(use {flag} cpu)")
    from .torch_backend import TorchBackend

    return TorchBackend("cuda")


def place(model, backend=None):
    """``model`` with its parameters on ``backend`` (None or NumPy: left where it is)."""
    return model if backend is None or backend is NUMPY else model.to(backend)
