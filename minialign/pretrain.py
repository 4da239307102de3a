"""Pretraining the GPT on names by maximum likelihood (chapter 02), with validation, checkpoints and resume."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .data import CharTokenizer, bigram_nll, load_names, split
from .gpt import GPT, GPTConfig
from .io import resume
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


def pretrain(cfg: PretrainConfig, out=None, progress: bool = True, log=print):
    """Train a GPT on the names corpus; returns (model, history). Resumes from ``out`` if a checkpoint exists.

    Every ``eval_every`` steps the validation loss is measured and the checkpoint (weights, optimizer state,
    step, history) is written atomically, so an interrupted run loses at most that many steps.
    """
    from tqdm.auto import tqdm

    tok, train_ids, val_ids = names_dataset(cfg.model.block_size, seed=cfg.seed)
    if cfg.model.vocab_size != tok.vocab_size:
        raise ValueError(f"model vocab_size {cfg.model.vocab_size} does not match the tokenizer's {tok.vocab_size}")
    model = GPT(cfg.model, seed=cfg.seed)
    opt = AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    history = {"step": [], "train_loss": [], "val_loss": []}
    start = 0
    out = Path(out) if out else None
    state = resume(out, model, opt)
    if state is not None:
        start = int(state["step"])
        history = json.loads(state["history"])
        rng = np.random.default_rng([cfg.seed, start])
        log(f"resumed from {out} at step {start}")

    bar = tqdm(range(start, cfg.steps), desc="pretrain", disable=not progress, initial=start, total=cfg.steps)
    running, done = None, start

    def checkpoint(step):
        if out is not None:
            model.save(out, optim=opt.state_dict(), step=step, history=json.dumps(history),
                       pretrain=json.dumps({k: v for k, v in asdict(cfg).items() if k != "model"}))

    try:
        for step in bar:
            opt.lr = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr)
            x = train_ids[rng.integers(0, len(train_ids), cfg.batch_size)]
            loss = model.loss(x)
            opt.zero_grad()
            loss.backward()
            clip_grad_norm(model.parameters(), cfg.grad_clip)
            opt.step()
            done = step + 1
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"training loss became {value} at step {step}")
            running = value if running is None else 0.95 * running + 0.05 * value
            bar.set_postfix(loss=f"{running:.3f}")
            if done % cfg.eval_every == 0 or done == cfg.steps:
                val = evaluate(model, val_ids)
                history["step"].append(done)
                history["train_loss"].append(running)
                history["val_loss"].append(val)
                if progress:
                    bar.write(f"step {done:5d}  train {running:.4f}  val {val:.4f}")
                checkpoint(done)
                rng = np.random.default_rng([cfg.seed, done])
    except KeyboardInterrupt:
        checkpoint(done)  # the finished steps are kept; `minialign pretrain` resumes from here
        raise
    return model, history


def bigram_baseline(block_size: int = 12, seed: int = 0) -> float:
    """Validation loss (nats/token) of the count-based bigram model on the same split."""
    _, train_ids, val_ids = names_dataset(block_size, seed=seed)
    return bigram_nll(train_ids, val_ids)
