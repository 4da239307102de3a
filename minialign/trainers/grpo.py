"""GRPO (Shao et al. 2024, DeepSeekMath): group-relative policy optimisation (chapter 05, §12).

For each prompt c, G responses x_1..x_G are drawn from π_old(·|c) and scored; a response's advantage is its
reward standardised within its group, A_i = (r_i − mean r)/(std r + ε) (Eq. 5.22) — the other responses to
the same prompt are the baseline, with no value network. π is updated by PPO-clip on w = π(x|c)/π_old(x|c)
(Eq. 5.12), with the KL to the reference a in the loss as k3 per token (Eq. 5.9), as published; or, as an
option, with the sampled k1 = log π_old(x|c) − log a(x|c) in the reward, after the normalisation (so that β
keeps its meaning as the weight of KL(π‖a)). ``scale=False`` leaves out the division by the group's std.

``loss_agg`` is how a response's token terms are added up (Eq. 5.26): ``seq_sum`` sums them (the whole response is
one term); ``token_mean`` divides the sum by the response's length |x| (GRPO as published, TRL's ``grpo``);
``constant`` divides it by the largest response length L (Dr. GRPO, Liu et al. 2025; TRL's ``dr_grpo``). On the
first step on a batch the three gradients are Σ_i ν_i A_i ∇log π(x_i|c) with ν_i = 1, 1/|x_i| and 1/L.

As in the rest of the course a whole response is one action (one ratio per sequence). On an exact batch of the
prompted lab the advantage is its exact expectation over the other G − 1 responses (Eq. 5.23), so the loss's
gradient is the exact expectation of the Monte-Carlo gradient (``experiments/conditional_lab.py`` measures it).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..metrics import kl_estimates
from ..prompts import Prompts
from .common import Batch, Method, Sampling, batch_from_state, batch_state
from .policy_gradient import (
    checked_rewards,
    expected_group_advantage,
    group_normalised_advantages,
    kl_loss,
    leave_one_out_baseline,
    ppo_clip_coefficients,
    ref_token_logprobs,
    weighted_surrogate,
)

KL_MODES = ("k3_loss", "k1_reward")
LOSS_AGGS = ("seq_sum", "token_mean", "constant")


def response_lengths(tokens, prompt_len, eos_id: int) -> np.ndarray:
    """|x| of every row: the response's tokens up to and including its first EOS (the prompt's tokens left out)."""
    tokens = np.asarray(tokens)
    start = np.zeros(len(tokens), np.int64) if prompt_len is None else np.asarray(prompt_len, np.int64)
    cols = np.arange(tokens.shape[1])
    eos = (tokens == eos_id) & (cols[None, :] >= start[:, None])
    end = np.where(eos.any(axis=1), eos.argmax(axis=1) + 1, tokens.shape[1])
    return (end - start).astype(np.float64)


def aggregation_weights(loss_agg: str, lengths, max_length: int) -> np.ndarray:
    """Eq. (5.26): the factor ν_i of response i's summed token terms: 1, 1/|x_i| or 1/L."""
    if loss_agg == "seq_sum":
        return np.ones(len(lengths))
    if loss_agg == "token_mean":
        return 1.0 / np.asarray(lengths, np.float64)
    if loss_agg == "constant":
        return np.full(len(lengths), 1.0 / max_length)
    raise ValueError(f"unknown loss aggregation {loss_agg!r}; GRPO takes one of {LOSS_AGGS}")


@dataclass(frozen=True)
class GRPOOptions:
    """GRPO's hyper-parameters.

    beta      the weight β of KL(π‖a)
    clip      PPO's clip ε
    kl        ``k3_loss`` (k3 per token in the loss, as published) or ``k1_reward`` (k1 in the reward)
    scale     divide each advantage by its group's standard deviation (as published)
    epochs    optimizer steps on each batch of groups
    loss_agg  how a response's token terms are added up: ``seq_sum``, ``token_mean`` or ``constant`` (Eq. 5.26)
    """

    beta: float = 0.04
    clip: float = 0.2
    kl: str = "k3_loss"
    scale: bool = True
    epochs: int = 1
    loss_agg: str = "seq_sum"

    def __post_init__(self):
        beta, clip, kl, epochs, loss_agg = self.beta, self.clip, self.kl, self.epochs, self.loss_agg
        if not (beta >= 0 and np.isfinite(beta)):
            raise ValueError(f"beta must be a finite number ≥ 0; got {beta}")
        if not 0 < clip < 1:
            raise ValueError(f"clip ε must be in (0, 1); got {clip}")
        if kl not in KL_MODES:
            raise ValueError(f"unknown KL mode {kl!r}; GRPO takes one of {KL_MODES}")
        if int(epochs) != epochs or epochs < 1:
            raise ValueError(f"epochs (optimizer steps per batch) must be a whole number ≥ 1; got {epochs}")
        if loss_agg not in LOSS_AGGS:
            raise ValueError(f"unknown loss aggregation {loss_agg!r}; GRPO takes one of {LOSS_AGGS}")


class GRPO(Method):
    """Eq. (5.22)–(5.23): group-normalised advantages, PPO-clip, and β·KL(π‖a) by k3 in the loss or k1 in the reward.

    ``options`` (:class:`GRPOOptions`, None: the defaults) are its hyper-parameters, copied onto the method;
    ``sampling`` (``common.Sampling``; None: groups of 4) its prompts, group size (at least 2) and tokenizer.
    Prompts None means the one empty prompt: groups of k unconditional samples."""

    name = "grpo"

    def __init__(self, ref, reward_fn, options: GRPOOptions | None = None, sampling: Sampling | None = None):
        o = options if options is not None else GRPOOptions()
        sampling = sampling if sampling is not None else Sampling(group_size=4)
        if sampling.group_size < 2:  # a whole number ≥ 1 already (Sampling)
            raise ValueError(f"GRPO needs groups of at least 2 responses per prompt (the standard deviation of a "
                             f"group of one reward is undefined); got group_size = {sampling.group_size}")
        self.ref, self.reward_fn, self.beta, self.clip, self.kl = ref, reward_fn, float(o.beta), float(o.clip), o.kl
        self.scale, self.epochs, self.loss_agg = bool(o.scale), int(o.epochs), o.loss_agg
        if sampling.prompts is None:
            sampling = replace(sampling, prompts=Prompts.empty(ref.config.eos_id))
        self.set_sampling(sampling)
        self._batch, self._left = None, 0

    def draw(self, policy, n, rng) -> Batch:
        """A batch of groups from π_old, reused for ``epochs`` optimizer steps."""
        if self._left == 0:
            self._batch, self._left = super().draw(policy, n, rng), self.epochs
        self._left -= 1
        return self._batch

    def advantages(self, r, batch: Batch) -> np.ndarray:
        """Eq. (5.22) on a sampled batch; on an exact batch its expectation given the response, Eq. (5.23)."""
        if not batch.exact:
            return group_normalised_advantages(r, batch.group, scale=self.scale)
        adv = np.zeros(len(batch))
        for g in np.unique(batch.group):
            at = batch.group == g
            adv[at] = expected_group_advantage(np.exp(batch.log_q[at]), r[at], self.group_size, scale=self.scale)
        return adv

    def loss(self, policy, batch: Batch):
        r = checked_rewards(self.reward_fn, batch)
        w = batch.weights
        metrics = {"reward": float(np.sum(w * r)), "beta": self.beta}
        if not batch.exact:
            metrics.update(kl_estimates(batch.log_q, batch.log_ref))
        lengths = response_lengths(batch.tokens, batch.prompt_len, self.ref.config.eos_id)
        metrics["response_length"] = float(np.sum(w * lengths) / np.sum(w))
        c = aggregation_weights(self.loss_agg, lengths, self.max_response_length(batch))
        adv = self.advantages(r, batch)
        if self.kl == "k1_reward":  # − β k1, with the leave-one-out baseline of its group (its mean on an exact batch)
            k1 = batch.log_q - batch.log_ref
            adv = adv - self.beta * (k1 - (self._expected_per_group(k1, batch) if batch.exact
                                           else leave_one_out_baseline(k1, batch.group)))
        logp_tok = batch.token_logprobs(policy)
        logp = logp_tok.sum(axis=1)
        coef, metrics["clip_fraction"] = ppo_clip_coefficients(logp, batch.log_q, adv, w, self.clip)
        loss = weighted_surrogate(logp, coef * c)
        if self.kl == "k3_loss" and self.beta > 0:
            loss = loss + self.beta * kl_loss(logp_tok, ref_token_logprobs(self.ref, batch), w * c, "k3_loss")
        return loss, metrics

    def max_response_length(self, batch: Batch) -> int:
        """L of Eq. (5.26): the most tokens a response can have, its EOS included (block size − prompt length)."""
        prompt = 0 if batch.prompt_len is None else int(np.max(batch.prompt_len))
        return self.ref.config.block_size - prompt

    @staticmethod
    def _expected_per_group(values, batch: Batch) -> np.ndarray:
        """E_{π_old(·|x)}[values] of each row's prompt on an exact batch: the expectation of the leave-one-out
        baseline (with ``token_mean`` the 1/|x| weights make a baseline change the expected gradient)."""
        q = np.exp(batch.log_q)
        group = np.zeros(len(batch), np.int64) if batch.group is None else batch.group
        return (np.bincount(group, weights=q * values) / np.bincount(group, weights=q))[group]

    def settings(self) -> dict:
        return {"beta": self.beta, "clip": self.clip, "kl": self.kl, "scale": self.scale, "epochs": self.epochs,
                "loss_agg": self.loss_agg}

    def state(self):
        out = {"left": self._left}
        if self._left:  # the batch still being reused
            out["batch"] = batch_state(self._batch)
        return out

    def load_state(self, state):
        self._left = int(state.get("left", 0))
        if self._left:
            self._batch = batch_from_state(state["batch"], self.tokenizer)
