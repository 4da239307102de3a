"""GRPO (Shao et al. 2024, DeepSeekMath): group-relative policy optimisation (chapter 05, §12).

For each prompt x, k responses y_1..y_k are drawn from π_old(·|x) and scored; a response's advantage is its
reward standardised within its group, A_i = (r_i − mean r)/(std r + ε) (Eq. 5.21) — the other responses to
the same prompt are the baseline, with no value network. π is updated by PPO-clip on π(y|x)/π_old(y|x)
(Eq. 5.10), with the KL to the reference a in the loss as k3 per token (Eq. 5.9), as published; or, as an
option, with the sampled k1 = log π_old(y|x) − log a(y|x) in the reward, after the normalisation (so that β
keeps its meaning as the weight of KL(π‖a)). ``scale=False`` leaves out the division by the group's std.

As in the rest of the course a whole response is one action (one ratio per sequence), and a response's
token terms are summed, not averaged over its length. On an exact batch of the prompted lab the advantage
is its exact expectation over the other k − 1 responses (Eq. 5.22), so the loss's gradient is the exact
expectation of the Monte-Carlo gradient (``experiments/conditional_lab.py`` measures it).
"""
from __future__ import annotations

import numpy as np

from ..metrics import kl_estimates
from ..prompts import Prompts
from .common import Batch, Method, batch_from_state, batch_state
from .policy_gradient import (checked_rewards, expected_group_advantage, group_normalised_advantages, kl_loss,
                              leave_one_out_baseline, ppo_clip_coefficients, ref_token_logprobs, weighted_surrogate)

KL_MODES = ("k3_loss", "k1_reward")


class GRPO(Method):
    """Eq. (5.21)–(5.22): group-normalised advantages, PPO-clip, and β·KL(π‖a) by k3 in the loss or k1 in the reward.

    ``prompts`` None means the one empty prompt: groups of k unconditional samples."""

    name = "grpo"

    def __init__(self, ref, reward_fn, prompts=None, group_size: int = 4, beta: float = 0.04, clip: float = 0.2,
                 kl: str = "k3_loss", scale: bool = True, epochs: int = 1, tokenizer=None):
        if int(group_size) != group_size or group_size < 2:
            raise ValueError(f"GRPO needs groups of at least 2 responses per prompt (the standard deviation of a "
                             f"group of one reward is undefined); got group_size = {group_size}")
        if not (beta >= 0 and np.isfinite(beta)):
            raise ValueError(f"beta must be a finite number ≥ 0; got {beta}")
        if not 0 < clip < 1:
            raise ValueError(f"clip ε must be in (0, 1); got {clip}")
        if kl not in KL_MODES:
            raise ValueError(f"unknown KL mode {kl!r}; GRPO takes one of {KL_MODES}")
        if int(epochs) != epochs or epochs < 1:
            raise ValueError(f"epochs (optimizer steps per batch) must be a whole number ≥ 1; got {epochs}")
        self.ref, self.reward_fn, self.beta, self.clip, self.kl = ref, reward_fn, float(beta), float(clip), kl
        self.scale, self.epochs, self.tokenizer = bool(scale), int(epochs), tokenizer
        self.set_prompts(prompts if prompts is not None else Prompts.empty(ref.config.eos_id), group_size)
        self._batch, self._left = None, 0

    def draw(self, policy, n, rng) -> Batch:
        """A batch of groups from π_old, reused for ``epochs`` optimizer steps."""
        if self._left == 0:
            self._batch, self._left = super().draw(policy, n, rng), self.epochs
        self._left -= 1
        return self._batch

    def advantages(self, r, batch: Batch) -> np.ndarray:
        """Eq. (5.21) on a sampled batch; on an exact batch its expectation given the response, Eq. (5.22)."""
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
        adv = self.advantages(r, batch)
        if self.kl == "k1_reward":  # − β k1, with the leave-one-out baseline of its group (none on an exact batch)
            k1 = batch.log_q - batch.log_ref
            adv = adv - self.beta * (k1 - (0.0 if batch.exact else leave_one_out_baseline(k1, batch.group)))
        logp_tok = batch.token_logprobs(policy)
        logp = logp_tok.sum(axis=1)
        coef, metrics["clip_fraction"] = ppo_clip_coefficients(logp, batch.log_q, adv, w, self.clip)
        loss = weighted_surrogate(logp, coef)
        if self.kl == "k3_loss" and self.beta > 0:
            loss = loss + self.beta * kl_loss(logp_tok, ref_token_logprobs(self.ref, batch), w, "k3_loss")
        return loss, metrics

    def settings(self) -> dict:
        return {"beta": self.beta, "clip": self.clip, "kl": self.kl, "scale": self.scale, "epochs": self.epochs}

    def state(self):
        out = {"left": self._left}
        if self._left:  # the batch still being reused
            out["batch"] = batch_state(self._batch)
        return out

    def load_state(self, state):
        self._left = int(state.get("left", 0))
        if self._left:
            self._batch = batch_from_state(state["batch"], self.tokenizer)
