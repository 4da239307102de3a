"""The one path every trainer shares (chapters 04–07): sample, score, build a surrogate loss, step, log.

A trainer is a ``Method`` with one job: turn a batch of sequences into a loss whose gradient is the
method's gradient estimate. Everything else — sampling with log-probabilities, the reference model's
log-probabilities (the same ``sequence_logprob`` code path for policy and reference), the optimizer,
metrics, progress, checkpoints — lives here.

Every batch carries per-sequence weights. A Monte-Carlo batch of n samples has weights 1/n; an *exact*
batch (:func:`exact_batch`) holds every sequence of the exact lab with its probability under the sampling
distribution as its weight. The same loss code then gives, for the exact batch, the exact expectation of
the Monte-Carlo gradient — which is how the tests compare trainers with each other and with the truth.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import resume
from ..optim import AdamW, clip_grad_norm
from ..tensor import Tensor, no_grad


# ---------------------------------------------------------------------------------------------- batches
@dataclass
class Batch:
    """Sequences with everything a loss needs that does not depend on the current parameters.

    tokens   [B, L] rows padded with EOS after their end
    weights  [B]    1/n for n Monte-Carlo samples; the sampling probability for an exact batch
    log_q    [B]    log-probability under the distribution the rows were drawn from (π_old, or a proposal q)
    log_ref  [B]    log a(x) under the frozen reference (base) model
    names    decoded rows (for name tasks), or None
    exact    True when the batch is the whole enumeration of the exact lab
    """

    tokens: np.ndarray
    weights: np.ndarray
    log_q: np.ndarray
    log_ref: np.ndarray
    names: list | None = None
    exact: bool = False
    extra: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.tokens)


def logprobs(model, tokens) -> np.ndarray:
    """log π(x) per row, without a graph (float64)."""
    with no_grad():
        return np.asarray(model.sequence_logprob(tokens).numpy(), dtype=np.float64)


def sample_batch(sampler, n: int, rng, ref=None, tokenizer=None) -> Batch:
    """n samples from ``sampler`` (temperature 1, no top-k) with their exact log-probabilities under the
    sampler and, if given, under the reference model ``ref``."""
    tokens, log_q = sampler.generate(n, rng=rng)
    log_ref = logprobs(ref, tokens) if ref is not None else np.zeros(n)
    names = tokenizer.decode_batch(tokens) if tokenizer is not None else None
    return Batch(tokens, np.full(n, 1.0 / n), np.asarray(log_q, np.float64), log_ref, names)


def exact_batch(lab, sampler, ref=None, tokenizer=None) -> Batch:
    """The whole enumeration of ``lab`` weighted by the sampler's exact probabilities: a loss built on it
    has as its gradient the exact expectation of the Monte-Carlo gradient under that sampler."""
    log_q = logprobs(sampler, lab.sequences)
    log_ref = logprobs(ref, lab.sequences) if ref is not None else np.zeros(len(lab))
    names = tokenizer.decode_batch(lab.sequences) if tokenizer is not None else None
    return Batch(lab.sequences, np.exp(log_q), log_q, log_ref, names, exact=True)


def leave_one_out_baseline(values, weights) -> np.ndarray:
    """Eq. (4.4), RLOO (Ahmadian et al. 2024): b_i = mean of the other samples' values. No baseline on exact batches
    (its expectation is zero there, and the tests compare expectations)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n < 2:
        return np.zeros(n)
    return (values.sum() - values) / (n - 1)


def weighted_surrogate(logp: Tensor, coefficients) -> Tensor:
    """−Σ_i c_i log π(x_i): its gradient is −Σ_i c_i ∇ log π(x_i), the REINFORCE form (Eq. 4.3)."""
    c = np.asarray(coefficients, dtype=np.float64)
    if not np.isfinite(c).all():
        bad = int(np.flatnonzero(~np.isfinite(c))[0])
        raise FloatingPointError(f"a policy-gradient coefficient is {c[bad]} (sample {bad}); "
                                 "check the rewards or the target's log-scores for NaN or inf")
    return -(logp * Tensor(c.astype(logp.dtype))).sum()


def log_mean_exp(x, weights=None) -> float:
    """log Σ_i w_i e^{x_i} (w = 1/n by default), computed stably."""
    x = np.asarray(x, dtype=np.float64)
    w = np.full(len(x), 1.0 / len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    finite = np.isfinite(x) & (w > 0)
    if not finite.any():
        return -math.inf
    m = x[finite].max()
    return float(m + np.log(np.sum(w[finite] * np.exp(x[finite] - m))))


# ---------------------------------------------------------------------------------------------- metrics
def distinct_n(names, n: int = 2) -> float:
    """Distinct-n: the fraction of character n-grams in the batch that are unique (Li et al. 2016)."""
    grams = [name[i:i + n] for name in names for i in range(len(name) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


def self_bleu(names, n: int = 3, max_refs: int = 200) -> float:
    """Self-BLEU over character n-grams (Zhu et al. 2018): the mean BLEU of each name against the others.

    BLEU-n with uniform weights over 1..n-grams, counts clipped by the largest count among the *other* names,
    a brevity penalty, and +1 smoothing of the higher orders (Lin & Och 2004); higher means less diverse.
    The clip uses each n-gram's two largest counts, so the whole batch costs one pass over its n-grams.
    """
    from collections import Counter

    names = [s for s in names if s][:max_refs]
    if len(names) < 2:
        return 0.0
    grams = [[Counter(s[i:i + k] for i in range(len(s) - k + 1)) for k in range(1, n + 1)] for s in names]
    top = []  # per order: gram -> (largest count, its name, second largest count)
    for k in range(n):
        best: dict = {}
        for j, g in enumerate(grams):
            for gram, c in g[k].items():
                m1, who, m2 = best.get(gram, (0, -1, 0))
                best[gram] = (c, j, m1) if c > m1 else (m1, who, max(m2, c))
        top.append(best)
    lengths = sorted(len(s) for s in names)
    scores = []
    for i, hyp in enumerate(names):
        logs = []
        for k in range(n):
            clipped = 0
            for gram, c in grams[i][k].items():
                m1, who, m2 = top[k][gram]
                clipped += min(c, m2 if who == i else m1)
            total, smooth = max(len(hyp) - k, 0), (0 if k == 0 else 1)
            if total + smooth == 0 or clipped + smooth == 0:
                logs.append(-math.inf)
                break
            logs.append(math.log((clipped + smooth) / (total + smooth)))
        others = list(lengths)
        others.remove(len(hyp))
        closest = min(others, key=lambda r: (abs(r - len(hyp)), r))
        bp = 1.0 if len(hyp) >= closest else math.exp(1 - closest / max(len(hyp), 1))
        scores.append(bp * math.exp(sum(logs) / n) if all(np.isfinite(logs)) else 0.0)
    return float(np.mean(scores))


def kl_estimates(log_pi, log_ref) -> dict:
    """Schulman's k1, k2, k3 estimates of KL(π‖a) from samples of π (chapter 03, Eq. 3.16–3.18)."""
    from ..divergences import kl_estimators

    est = kl_estimators(log_pi, log_ref)
    return {"kl_k1": float(est.k1.mean()), "kl_k2": float(est.k2.mean()), "kl_k3": float(est.k3.mean())}


def name_metrics(names, corpus=None) -> dict:
    out = {"distinct_2": distinct_n(names, 2), "mean_length": float(np.mean([len(s) for s in names]))}
    if corpus is not None:
        out["in_corpus"] = float(np.mean([s in corpus for s in names]))
    return out


# ---------------------------------------------------------------------------------------------- methods
class Method:
    """A trainer's own part: a loss from a batch, the batch to draw, and state to update after a step."""

    name = "method"

    def draw(self, policy, n, rng) -> Batch:
        """The next batch; by default n samples from the policy itself (on-policy)."""
        return sample_batch(policy, n, rng, ref=self.ref, tokenizer=self.tokenizer)

    def loss(self, policy, batch: Batch) -> tuple[Tensor, dict]:
        raise NotImplementedError

    def after_step(self, policy, batch: Batch, metrics: dict) -> None:
        """Update the method's own state (an adaptive β, a proposal, a running Z)."""

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass

    # set by the subclasses
    ref = None
    tokenizer = None


@dataclass
class TrainConfig:
    steps: int = 100
    batch_size: int = 64
    lr: float = 1e-4
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    log_every: int = 1


def train(method: Method, policy, cfg: TrainConfig, out=None, lab=None, target_log_p=None, corpus=None,
          progress: bool = True, log_fn=None, metrics_fn=None, stop_fn=None):
    """The shared loop: draw a batch, compute the method's loss, step AdamW, log metrics, checkpoint.

    ``lab`` (an ExactLab) adds exact metrics each step: KL(π‖a), entropy, and, with ``target_log_p`` (log p
    over the enumeration), KL(p‖π) and KL(π‖p). ``out`` is an ``.npz`` checkpoint path: written atomically
    every ``checkpoint_every`` steps and at the end, and resumed from if it exists. Returns the history
    (a dict of metric name → list, one entry per step). ``metrics_fn(batch)`` adds task metrics;
    ``stop_fn(step, metrics)`` returning True ends the run early.
    """
    from tqdm.auto import tqdm

    # dropout off: every estimator here needs the model's own log π(x), not a randomly thinned one
    policy.eval()
    opt = AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    history: dict = {}
    start = 0
    out = Path(out) if out else None
    state = resume(out, policy, opt)
    if state is not None:
        method.load_state(state.get("method", {}))
        history = json.loads(state["history"])
        start = int(state["step"])
    p_ref = lab.distribution(method.ref) if lab is not None and method.ref is not None else None

    def checkpoint(step):
        if out is not None:
            policy.save(out, optim=opt.state_dict(), method=method.state(), step=step, history=json.dumps(history))

    bar = tqdm(range(start, cfg.steps), desc=method.name, disable=not progress, initial=start, total=cfg.steps)
    t0 = time.perf_counter()
    done = start
    try:
        for step in bar:
            metrics = _one_step(method, policy, opt, cfg, step, corpus, metrics_fn, lab, p_ref, target_log_p)
            metrics["seconds"] = time.perf_counter() - t0
            for k, v in metrics.items():
                history.setdefault(k, []).append(float(v))
            done = step + 1
            if progress:
                shown = {k: f"{metrics[k]:.3g}" for k in ("reward", "kl_k3", "exact_kl_pi_a", "exact_kl_p_pi") if k in metrics}
                bar.set_postfix(shown)
            if log_fn is not None and done % cfg.log_every == 0:
                log_fn(done, metrics)
            if done % cfg.checkpoint_every == 0:
                checkpoint(done)
            if stop_fn is not None and stop_fn(done, metrics):
                checkpoint(done)
                return history
    except KeyboardInterrupt:
        checkpoint(done)  # keep every finished step; the run resumes from here
        raise
    checkpoint(cfg.steps)
    return history


def _one_step(method, policy, opt, cfg, step, corpus, metrics_fn, lab, p_ref, target_log_p) -> dict:
    """Draw a batch, take one optimizer step on the method's loss, and return the step's metrics."""
    rng = np.random.default_rng([cfg.seed, step])
    batch = method.draw(policy, cfg.batch_size, rng)
    loss, metrics = method.loss(policy, batch)
    opt.zero_grad()
    loss.backward()
    metrics["grad_norm"] = clip_grad_norm(policy.parameters(), cfg.grad_clip)
    opt.step()
    metrics["loss"] = loss.item()
    if batch.names is not None:
        metrics.update(name_metrics(batch.names, corpus))
    if metrics_fn is not None:
        metrics.update(metrics_fn(batch))
    if lab is not None:
        metrics.update(exact_metrics(lab, policy, p_ref, target_log_p))
    method.after_step(policy, batch, metrics)
    return metrics


def exact_metrics(lab, policy, p_ref=None, target_log_p=None) -> dict:
    """The truth on the exact lab: KL(π‖a), entropy of π, and the distances to a target p."""
    pi = lab.distribution(policy)
    out = {"exact_entropy": lab.entropy(pi)}
    if p_ref is not None:
        out["exact_kl_pi_a"] = lab.divergence("kl", pi, p_ref)
    if target_log_p is not None:
        p = np.exp(target_log_p)
        out["exact_kl_p_pi"] = lab.divergence("kl", p, pi)
        out["exact_kl_pi_p"] = lab.divergence("kl", pi, p)
        out["exact_tv_pi_p"] = lab.divergence("tv", pi, p)
    return out


def frozen_copy(model):
    """A copy of ``model`` that no optimizer will touch (the reference a, or a proposal q)."""
    twin = copy.deepcopy(model)
    for p in twin.parameters():
        p.requires_grad = False
        p.grad = None
    return twin.eval()
