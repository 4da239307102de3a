"""Optimizers, gradient clipping and the learning-rate schedule."""
from __future__ import annotations

import math


class Optimizer:
    def __init__(self, params, lr):
        self.params = [p for p in params]
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning rate must be a finite number > 0; got {lr!r}")
        self.lr = lr
        self.t = 0

    def zero_grad(self):
        for p in self.params:
            p.grad = None


class SGD(Optimizer):
    """θ ← θ − lr·(g + wd·θ), with optional momentum buffer m ← μ m + g."""

    def __init__(self, params, lr=1e-2, momentum=0.0, weight_decay=0.0):
        super().__init__(params, lr)
        if not 0 <= momentum < 1:  # NaN fails this too
            raise ValueError(f"momentum must be in [0, 1); got {momentum!r}")
        _check_weight_decay(weight_decay)
        self.momentum, self.weight_decay = momentum, weight_decay
        self.buf = [None] * len(self.params)

    def step(self):
        self.t += 1
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
            if self.momentum:
                self.buf[i] = g if self.buf[i] is None else self.momentum * self.buf[i] + g
                g = self.buf[i]
            p.data = p.data - self.lr * g


class AdamW(Optimizer):
    """Eq. (2.9): Adam with decoupled weight decay (Loshchilov & Hutter 2019).

    m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², θ ← θ − lr·(m̂/(√v̂ + ε) + wd·θ), with bias-corrected m̂, v̂.
    Weight decay applies to matrices only (ndim ≥ 2), as in GPT-2 training.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1) (the moments' decay rates); got {betas!r}")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a finite number > 0; got {eps!r}")
        _check_weight_decay(weight_decay)
        self.b1, self.b2 = betas
        self.eps, self.weight_decay = eps, weight_decay
        self.m = [None] * len(self.params)
        self.v = [None] * len(self.params)

    def step(self):
        self.t += 1
        c1 = 1 - self.b1**self.t
        c2 = 1 - self.b2**self.t
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            if self.m[i] is None:
                self.m[i] = p.bk.zeros_like(p.data)
                self.v[i] = p.bk.zeros_like(p.data)
            m, v = self.m[i], self.v[i]
            m *= self.b1
            m += (1 - self.b1) * g
            v *= self.b2
            v += (1 - self.b2) * (g * g)
            update = (m / c1) / (p.bk.sqrt(v / c2) + self.eps)
            if self.weight_decay and p.ndim >= 2:
                update = update + self.weight_decay * p.data
            p.data = p.data - self.lr * update

    def state_dict(self) -> dict:
        state = {"t": self.t, "lr": self.lr}
        for i, p in enumerate(self.params):
            if self.m[i] is not None:
                state[f"m{i}"] = p.bk.to_numpy(self.m[i])
                state[f"v{i}"] = p.bk.to_numpy(self.v[i])
        return state

    def load_state_dict(self, state: dict):
        self.t, self.lr = int(state["t"]), float(state["lr"])
        for i, p in enumerate(self.params):
            if f"m{i}" in state:
                self.m[i] = p.bk.from_numpy(state[f"m{i}"], like=p.data)
                self.v[i] = p.bk.from_numpy(state[f"v{i}"], like=p.data)
        return self


def _check_weight_decay(weight_decay):
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number ≥ 0; got {weight_decay!r}")


def clip_grad_norm(params, max_norm: float) -> float:
    """Scale all gradients by min(1, max_norm/‖g‖) where ‖g‖ is the global L2 norm; returns ‖g‖."""
    if not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be a finite number > 0; got {max_norm!r}")
    grads = [p.grad for p in params if p.grad is not None]
    total = math.sqrt(sum(float((g * g).sum()) for g in grads))
    if not math.isfinite(total):
        raise FloatingPointError(f"gradient norm is {total}; a NaN or inf reached the gradients")
    if total > max_norm:
        scale = max_norm / (total + 1e-12)
        for p in params:
            if p.grad is not None:
                p.grad = p.grad * scale
    return total


def cosine_lr(step: int, total_steps: int, lr_max: float, warmup: int = 0, lr_min: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay from lr_max to lr_min at ``total_steps``."""
    if step < warmup:
        return lr_max * (step + 1) / warmup
    if step >= total_steps:
        return lr_min
    progress = (step - warmup) / max(1, total_steps - warmup)
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * progress))
