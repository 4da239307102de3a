"""Pretraining the GPT on names by maximum likelihood (chapter 02), through the one loop (``minialign.loop``)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .data import CharTokenizer, bigram_nll, load_names, split
from .device import place
from .gpt import GPT, GPTConfig
from .loop import LoopConfig, fit
from .optim import AdamW, clip_grad_norm, cosine_lr
from .tensor import no_grad


@dataclass
class PretrainConfig:
    model: GPTConfig = field(default_factory=lambda: GPTConfig(dropout=0.1))
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 250
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "seed" else 1):
                kind = "whole number ≥ 0" if name == "seed" else "positive whole number"
                raise ValueError(f"{name} must be a {kind}; "
                                 f"got {v!r}")
        for name in ("lr", "min_lr", "grad_clip"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0; got {v!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number ≥ 0; got {self.weight_decay!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be a whole number ≥ 0; got {self.warmup!r}")


def names_dataset(block_size: int, val_fraction: float = 0.1, seed: int = 0):
    """Token arrays ``[N, block_size]`` for the fixed train/validation split of the census names."""
    corpus = load_names()
    tok = CharTokenizer()
    train_names, val_names = split(corpus, val_fraction=val_fraction, seed=seed)
    return tok, tok.encode_batch(train_names, block_size), tok.encode_batch(val_names, block_size)


def evaluate(model: GPT, ids, batch_size: int = 512) -> float:
    """Mean per-token cross-entropy (nats) over all rows of ``ids``, EOS included, in eval mode."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    with no_grad():
        for i in range(0, len(ids), batch_size):
            x = ids[i:i + batch_size]
            _, _, counted = model._shift(x)
            n = int(counted.sum())
            total += float(model.loss(x).item()) * n
            count += n
    model.train(was)
    return total / count


def pretrain(cfg: PretrainConfig, out=None, progress: bool = True, log=print, fresh: bool = False, backend=None):
    """Train a GPT on the names corpus; returns (model, history). Resumes from ``out`` if a checkpoint exists.
    With ``backend`` (``device.backend_for``) the model trains there: the same steps, batches and dropout masks.

    Every ``eval_every`` steps the validation loss is measured and the checkpoint is written; an interrupted run
    saves the state after its last finished step (``minialign.loop``). Batches are drawn from a generator seeded
    with ``seed`` and reseeded with (seed, step) after every evaluation.
    """
    tok, train_ids, val_ids = names_dataset(cfg.model.block_size, seed=cfg.seed)
    if cfg.model.vocab_size != tok.vocab_size:
        raise ValueError(f"model vocab_size {cfg.model.vocab_size} does not match the tokenizer's {tok.vocab_size}")
    model = place(GPT(cfg.model, seed=cfg.seed), backend)
    opt = AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    rngs = {"batches": np.random.default_rng(cfg.seed)}
    running = {"loss": None}

    def step(i):
        opt.lr = cosine_lr(i, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr)
        x = train_ids[rngs["batches"].integers(0, len(train_ids), cfg.batch_size)]
        loss = model.loss(x)
        opt.zero_grad()
        loss.backward()
        clip_grad_norm(model.parameters(), cfg.grad_clip)
        opt.step()
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value} at step {i}; lower --lr")
        running["loss"] = value if running["loss"] is None else 0.95 * running["loss"] + 0.05 * value
        done = i + 1
        if done % cfg.eval_every and done != cfg.steps:
            return {}
        rngs["batches"] = np.random.default_rng([cfg.seed, done])
        return {"step": done, "train_loss": running["loss"], "val_loss": evaluate(model, val_ids)}

    def on_step(done, metrics):
        if progress and metrics:
            from tqdm.auto import tqdm

            tqdm.write(f"step {done:5d}  train {metrics['train_loss']:.4f}  val {metrics['val_loss']:.4f}")

    identity = {"kind": "pretrain", **{k: v for k, v in asdict(cfg).items()}}
    loop = LoopConfig(cfg.steps, out=out, identity=identity, checkpoint_every=cfg.eval_every, fresh=fresh,
                      progress=progress, desc="pretrain", show=lambda m: {"loss": f"{running['loss']:.3f}"},
                      on_step=on_step, say=log)
    history = fit(step, loop, model=model, optimizer=opt, rngs=rngs, state=_Running(running))
    for key in ("step", "train_loss", "val_loss"):
        history.setdefault(key, [])
    if history["step"]:
        history["step"] = [int(s) for s in history["step"]]
    return model, history


class _Running:
    """The smoothed training loss shown on the bar: part of the run's state, so that a resumed run shows the same."""

    def __init__(self, holder):
        self.holder = holder

    def state(self):
        return {} if self.holder["loss"] is None else {"loss": self.holder["loss"]}

    def load_state(self, state):
        self.holder["loss"] = float(state["loss"]) if "loss" in state else None


def bigram_baseline(block_size: int = 12, seed: int = 0) -> float:
    """Validation loss (nats/token) of the count-based bigram model on the same split."""
    _, train_ids, val_ids = names_dataset(block_size, seed=seed)
    return bigram_nll(train_ids, val_ids)
