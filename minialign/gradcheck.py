"""Eq. (1.12): numerical gradient checking by central finite differences in float64."""
from __future__ import annotations

import numpy as np

from .tensor import Tensor


class GradcheckError(AssertionError):
    """The analytic gradient disagrees with finite differences; the message names the worst element."""


def gradcheck(fn, *inputs, eps: float = 1e-6, atol: float = 1e-6, rtol: float = 1e-5, seed: int = 0) -> bool:
    """Check the backward of ``fn`` at ``inputs`` against central differences (f(x+ε) − f(x−ε)) / 2ε.

    ``fn`` maps Tensors to a Tensor of any shape; it is reduced to the scalar ⟨fn(inputs), c⟩ with a fixed
    random ``c``, so every output contributes. Inputs must be float64 Tensors; those with
    ``requires_grad=True`` are checked. Raises :class:`GradcheckError` naming the input, the worst element's
    index, and the analytic and numerical values; returns True when all agree within ``atol + rtol·|num|``.
    """
    for i, x in enumerate(inputs):
        if not isinstance(x, Tensor):
            raise TypeError(f"gradcheck inputs must be Tensors; input {i} is {type(x).__name__}")
        if x.requires_grad and x.dtype != np.float64:
            raise TypeError(f"gradcheck needs float64 inputs for finite differences; input {i} is {x.dtype}")
    checked = [i for i, x in enumerate(inputs) if x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True, so there is nothing to check")

    out = fn(*inputs)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor; got {type(out).__name__}")
    c = np.random.default_rng(seed).standard_normal(out.shape)

    def scalar() -> float:
        return float(np.sum(np.asarray(fn(*inputs).numpy(), dtype=np.float64) * c))

    for x in inputs:
        x.grad = None
    out.backward(c.astype(out.dtype))
    for i in checked:
        x = inputs[i]
        analytic = np.zeros(x.shape) if x.grad is None else np.asarray(x.grad, dtype=np.float64)
        numeric = np.zeros(x.shape)
        flat = x.data.reshape(-1)
        for j in range(flat.size):
            orig = flat[j]
            flat[j] = orig + eps
            up = scalar()
            flat[j] = orig - eps
            down = scalar()
            flat[j] = orig
            numeric.reshape(-1)[j] = (up - down) / (2 * eps)
        err = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
        if err.size and err.max() > 0:
            worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(err)), x.shape))
            raise GradcheckError(
                f"gradient of input {i} (shape {x.shape}) disagrees with finite differences at index {worst}: "
                f"analytic {analytic[worst]:.10g}, numerical {numeric[worst]:.10g} "
                f"(tolerance atol={atol}, rtol={rtol})"
            )
    return True
