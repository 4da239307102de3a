"""The one path every trainer shares (chapters 04–07): draw a batch, score it, build a surrogate loss, step.

A trainer is a :class:`Method` with one job: turn a batch of sequences into a loss whose gradient is the
method's gradient estimate. Everything else — sampling with log-probabilities, the reference model's
log-probabilities (the same ``sequence_logprob`` code path for policy and reference), the optimizer,
metrics, progress, checkpoints and resume (``minialign.loop``) — lives here.

Prompts (chapter 05, §12): a method with ``prompts`` (a ``prompts.Prompts``) draws groups of ``group_size``
responses per prompt; its batches carry each row's prompt length (``prompt_len``, so that every log-probability
is log π(y|x)) and its group (``group``, for baselines and normalisations within a prompt's group).

Every batch carries per-sequence weights. A Monte-Carlo batch of n samples has weights 1/n; an *exact*
batch (:func:`exact_batch`) holds every sequence of the exact lab with its probability under the sampling
distribution as its weight. The same loss code then gives, for the exact batch, the exact expectation of
the Monte-Carlo gradient — which is how the tests compare trainers with each other and with the truth.
"""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np

from ..loop import LoopConfig, fit
from ..metrics import name_metrics
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
    prompt_len [B]  the prompt's length in each row (None: no prompts); log_q and log_ref are then log q(y|x)
    group    [B]    the group of each row (rows drawn for the same prompt draw), or None
    """

    tokens: np.ndarray
    weights: np.ndarray
    log_q: np.ndarray
    log_ref: np.ndarray
    names: list | None = None
    exact: bool = False
    extra: dict = field(default_factory=dict)
    prompt_len: np.ndarray | None = None
    group: np.ndarray | None = None

    def __len__(self):
        return len(self.tokens)

    def logprob(self, model):
        """log π(x), or log π(y|x) with prompts, of every row: a differentiable Tensor ``[B]``."""
        if self.prompt_len is None:  # any model with sequence_logprob(tokens) will do
            return model.sequence_logprob(self.tokens)
        return model.sequence_logprob(self.tokens, self.prompt_len)

    def token_logprobs(self, model):
        """log π(x_t | x_<t) of every row's counted tokens (the response's, with prompts): a Tensor ``[B, L]``."""
        if self.prompt_len is None:
            return model.token_logprobs(self.tokens)
        return model.token_logprobs(self.tokens, self.prompt_len)


def logprobs(model, tokens, prompt_len=None) -> np.ndarray:
    """log π(x) per row (log π(y|x) with ``prompt_len``), without a graph (float64)."""
    with no_grad():
        logp = model.sequence_logprob(tokens) if prompt_len is None else model.sequence_logprob(tokens, prompt_len)
        return np.asarray(logp.numpy(), dtype=np.float64)


def sample_batch(sampler, n: int, rng, ref=None, tokenizer=None, prompts=None, group_size: int = 1) -> Batch:
    """n samples from ``sampler`` (temperature 1, no top-k) with their exact log-probabilities under the
    sampler and, if given, under the reference model ``ref``.

    With ``prompts`` (a ``prompts.Prompts``): n / ``group_size`` prompts drawn from ρ, and ``group_size``
    responses to each (Eq. 5.20's groups); the log-probabilities are then log q(y|x) and log a(y|x)."""
    if prompts is None:
        tokens, log_q = sampler.generate(n, rng=rng)
        prompt_len = group = None
    else:
        groups = check_group_batch(n, group_size)
        which = prompts.sample(groups, rng)
        group = np.repeat(np.arange(groups), group_size)
        tokens, log_q = sampler.generate(n, rng=rng, prompts=prompts.tokens[which[group]])
        prompt_len = np.full(n, prompts.length, dtype=np.int64)
    log_ref = logprobs(ref, tokens, prompt_len) if ref is not None else np.zeros(n)
    names = tokenizer.decode_batch(tokens) if tokenizer is not None else None
    return Batch(tokens, np.full(n, 1.0 / n), np.asarray(log_q, np.float64), log_ref, names, prompt_len=prompt_len,
                 group=group)


def check_group_batch(n: int, group_size: int) -> int:
    """The number of groups in a batch of n responses, ``group_size`` per prompt; n must be a multiple."""
    if int(group_size) != group_size or group_size < 1:
        raise ValueError(f"the group size (responses per prompt) must be a whole number ≥ 1; got {group_size}")
    if n < group_size or n % group_size:
        raise ValueError(f"a batch of {n} responses cannot be cut into groups of {group_size} responses per prompt: "
                         "the batch size must be a multiple of the group size")
    return n // group_size


def exact_batch(lab, sampler, ref=None, tokenizer=None) -> Batch:
    """The whole enumeration of ``lab`` weighted by the sampler's exact probabilities: a loss built on it
    has as its gradient the exact expectation of the Monte-Carlo gradient under that sampler.

    On a ``lab.PromptedLab`` the rows are every (x, y), weighted by ρ(x) q(y|x), grouped by prompt."""
    prompt_len = getattr(lab, "prompt_len", None)
    log_q = logprobs(sampler, lab.sequences, prompt_len)
    log_ref = logprobs(ref, lab.sequences, prompt_len) if ref is not None else np.zeros(len(lab))
    names = tokenizer.decode_batch(lab.sequences) if tokenizer is not None else None
    weights = np.exp(log_q) if prompt_len is None else lab.row_prompt_probs * np.exp(log_q)
    return Batch(lab.sequences, weights, log_q, log_ref, names, exact=True, prompt_len=prompt_len,
                 group=getattr(lab, "group", None))


def batch_state(batch: Batch) -> dict:
    """The arrays of a batch, for a method's checkpointed state (a batch reused over several steps)."""
    out = {"tokens": batch.tokens, "weights": batch.weights, "log_q": batch.log_q, "log_ref": batch.log_ref}
    if batch.prompt_len is not None:
        out.update(prompt_len=batch.prompt_len, group=batch.group)
    return out


def batch_from_state(state: dict, tokenizer=None) -> Batch:
    """The batch :func:`batch_state` saved."""
    tokens = np.asarray(state["tokens"])
    names = tokenizer.decode_batch(tokens) if tokenizer is not None else None
    prompts = {k: np.asarray(state[k]) for k in ("prompt_len", "group") if k in state}
    return Batch(tokens, np.asarray(state["weights"]), np.asarray(state["log_q"]), np.asarray(state["log_ref"]), names,
                 **prompts)


# ---------------------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class Sampling:
    """How a method draws and reads its samples.

    prompts     the prompts to condition on: a ``prompts.Prompts`` (or a prompted lab's ``prompts``); None: none
    group_size  responses drawn per prompt (a batch is whole groups: a multiple of it)
    tokenizer   decodes the samples into names (for name tasks); None: the samples are not decoded
    """

    prompts: object = None
    group_size: int = 1
    tokenizer: object = None

    def __post_init__(self):
        if int(self.group_size) != self.group_size or self.group_size < 1:
            raise ValueError(f"the group size (responses per prompt) must be a whole number ≥ 1; got {self.group_size}")
        object.__setattr__(self, "group_size", int(self.group_size))


class Method:
    """A trainer's own part: a loss from a batch, the batch to draw, and state to update after a step."""

    name = "method"
    ref = None        # the frozen reference model a
    tokenizer = None  # decodes rows into names for name tasks
    leave_one_out = False  # whether its advantage subtracts a leave-one-out baseline (a batch of 1 leaves it none)
    prompts = None    # a prompts.Prompts: the conditional setting (groups of group_size responses per prompt)
    group_size = 1

    def draw(self, policy, n, rng) -> Batch:
        """The next batch; by default n samples from the policy itself (on-policy), in groups of
        ``group_size`` responses per prompt when the method has prompts."""
        return sample_batch(policy, n, rng, ref=self.ref, tokenizer=self.tokenizer, prompts=self.prompts,
                            group_size=self.group_size)

    def set_sampling(self, sampling: Sampling | None) -> None:
        """Draw and read samples as ``sampling`` says (None: ``Sampling()``, unconditional and undecoded): with
        prompts, the method is conditional and draws ``group_size`` responses per prompt."""
        sampling = sampling if sampling is not None else Sampling()
        self.prompts, self.group_size, self.tokenizer = sampling.prompts, sampling.group_size, sampling.tokenizer

    def loss(self, policy, batch: Batch) -> tuple[Tensor, dict]:
        raise NotImplementedError

    def after_step(self, policy, batch: Batch, metrics: dict) -> None:
        """Update the method's own state (an adaptive β, a proposal, a running Z)."""

    def settings(self) -> dict:
        """The hyper-parameters that define a run of this method (recorded in its checkpoints)."""
        return {}

    def label(self) -> str:
        """How progress bars name a run of this method (with the settings that tell runs apart)."""
        return self.name

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


@dataclass
class TrainConfig:
    steps: int = 100
    batch_size: int = 64
    lr: float = 1e-4
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    log_every: int = 1

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "seed"):
            v = getattr(self, name)
            least = 0 if name == "seed" else 1
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least:
                raise ValueError(f"TrainConfig.{name} must be a whole number ≥ {least}; got {v!r}")
        for name in ("lr", "grad_clip"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float, np.number)) and np.isfinite(v) and v > 0):
                raise ValueError(f"TrainConfig.{name} must be a finite number > 0; got {v!r}")

    def identity(self) -> dict:
        """The settings that define a run (how long it runs and how often it is saved do not)."""
        return {k: v for k, v in asdict(self).items() if k not in ("steps", "checkpoint_every", "log_every")}


@dataclass(frozen=True)
class RunContext:
    """What every run of a method shares, built once by a face (the command line, the tour) and handed to every
    ``run_*`` and ``MethodSpec.run``; a method's own options stay in its options.

    cfg       the optimiser's settings (steps, batch size, learning rate, seed)
    base      the base (reference) model a, already on its device; None: the committed checkpoint
    out       the checkpoint path (``.npz``), or None for no checkpoints; an existing one is resumed unless ``fresh``
    progress  whether to show progress bars
    identity  the settings that define the run besides the method's and the optimiser's (recorded in checkpoints)
    backend   the array backend the base model lives on (``device.backend_for``); None: the NumPy engine
    """

    cfg: TrainConfig = field(default_factory=TrainConfig)
    base: object = None
    out: object = None
    fresh: bool = False
    progress: bool = True
    identity: dict = field(default_factory=dict)
    backend: object = None

    @property
    def seed(self) -> int:
        return self.cfg.seed

    def with_(self, **changes) -> "RunContext":
        """A copy with ``changes`` (field name → value)."""
        return replace(self, **changes)


@dataclass(frozen=True)
class Hooks:
    """What :func:`train` does besides stepping, all optional: task metrics ``metrics_fn(batch)`` and the share of
    names found in ``corpus``; with a ``lab``, the exact distances to the target ``target_log_p`` (log p over its
    enumeration); ``log_fn(step, metrics)`` every ``log_every``-th step; ``stop_fn(step, metrics)`` → True ends the
    run early; and, for the checkpoint, the ``identity`` of the run (a resume with another is refused unless
    ``fresh``)."""

    metrics_fn: Callable | None = None
    corpus: object = None
    target_log_p: np.ndarray | None = None
    log_fn: Callable | None = None
    stop_fn: Callable | None = None
    identity: dict | None = None
    fresh: bool = False


def train(method: Method, policy, cfg: TrainConfig, out=None, progress: bool = True, lab=None,
          hooks: Hooks | None = None):
    """Train ``policy`` with ``method`` for ``cfg.steps`` AdamW steps through the one loop; returns the history.

    ``lab`` (an ExactLab) adds exact metrics each step: KL(π‖a), entropy, and, with ``hooks.target_log_p`` (log p
    over the enumeration), KL(p‖π), KL(π‖p) and TV. ``out`` is an ``.npz`` checkpoint path: written atomically
    every ``checkpoint_every`` steps, at the end and on Ctrl-C, and resumed from if it exists (a checkpoint of
    another run — other ``hooks.identity``, method settings or training settings — is refused unless
    ``hooks.fresh``). ``hooks`` (:class:`Hooks`) adds task metrics, logging and an early stop.
    """
    hooks = hooks or Hooks()
    policy.eval()  # dropout off: every estimator here needs the model's own log π(x), not a thinned one
    opt = AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    p_ref = lab.distribution(method.ref) if lab is not None and method.ref is not None else None
    conditional = {} if method.prompts is None else {**method.prompts.describe(), "group_size": method.group_size}
    run = {"kind": "align", "method": method.name, **method.settings(), **conditional, **(hooks.identity or {}),
           **cfg.identity()}
    if cfg.batch_size < 2 and method.leave_one_out:
        warnings.warn(f"a batch of {cfg.batch_size} sample leaves {method.name}'s leave-one-out baseline nothing to "
                      "average, so it trains without one (plain REINFORCE, a much noisier gradient); use a batch of "
                      "2 or more (--batch-size)", stacklevel=2)
    t0 = time.perf_counter()
    truth = None if lab is None else (lab, p_ref, hooks.target_log_p)

    def step(i):
        metrics = _one_step(method, policy, opt, cfg, i, hooks, truth)
        metrics["seconds"] = time.perf_counter() - t0
        return metrics

    def on_step(done, metrics):
        if hooks.log_fn is not None and done % cfg.log_every == 0:
            hooks.log_fn(done, metrics)

    def show(metrics):
        return {k: f"{metrics[k]:.3g}" for k in ("reward", "kl_k3", "exact_kl_pi_a", "exact_kl_p_pi") if k in metrics}

    loop = LoopConfig(cfg.steps, out=out, identity=run, checkpoint_every=cfg.checkpoint_every, fresh=hooks.fresh,
                      progress=progress, desc=method.label(), show=show, on_step=on_step, stop=hooks.stop_fn)
    return fit(step, loop, model=policy, optimizer=opt, state=method)


def _one_step(method, policy, opt, cfg, step, hooks, truth) -> dict:
    """Draw a batch, take one optimizer step on the method's loss, and return the step's metrics (``truth``: the
    exact lab, the reference's distribution on it and the target's log p, or None)."""
    rng = np.random.default_rng([cfg.seed, step])
    batch = method.draw(policy, cfg.batch_size, rng)
    loss, metrics = method.loss(policy, batch)
    opt.zero_grad()
    loss.backward()
    metrics["grad_norm"] = clip_grad_norm(policy.parameters(), cfg.grad_clip)
    if not (np.isfinite(metrics["grad_norm"]) and np.isfinite(loss.item())):
        raise FloatingPointError(f"{method.name} diverged at step {step + 1}: the loss is {loss.item():.4g} and the "
                                 f"gradient norm {metrics['grad_norm']:.4g}; lower the learning rate (now {cfg.lr:g})")
    opt.step()
    metrics["loss"] = loss.item()
    if batch.names is not None:
        metrics.update(name_metrics(batch.names, hooks.corpus))
    if hooks.metrics_fn is not None:
        metrics.update(hooks.metrics_fn(batch))
    if truth is not None:
        lab, p_ref, target_log_p = truth
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


def trainable_copy(model):
    """A copy of ``model`` to train (the policy π_θ starts as a), with dropout off: the trainers need the
    model's own log π."""
    policy = frozen_copy(model)
    for p in policy.parameters():
        p.requires_grad = True
    return policy
