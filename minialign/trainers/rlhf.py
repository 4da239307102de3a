"""RLHF: maximise E_π[r(x)] − β·KL(π‖a) with the reference a frozen (chapter 05).

Policy gradient with a leave-one-out baseline (RLOO) or PPO-clip epochs over each batch; the KL term in the
reward (k1, per sequence or per token) or in the loss (k2 or k3 per token); β fixed or adapted by the
controller of Ziegler et al. (2019). The pieces are the shared ones of ``policy_gradient.py``.
"""
from __future__ import annotations

import numpy as np

from ..logspace import log_normalise
from ..metrics import kl_estimates
from .common import Batch, Method
from .policy_gradient import (checked_rewards, kl_loss, kl_to_go, leave_one_out_baseline, ppo_clip_coefficients,
                              ref_token_logprobs, weighted_surrogate, whiten)

KL_MODES = ("k1_seq", "k1_token", "k2_loss", "k3_loss")
ALGOS = ("rloo", "reinforce", "ppo")


class RLHF(Method):
    """Eq. (5.5): J(π) = E_π[r(x)] − β KL(π‖a), whose maximiser is π*(x) = a(x) e^{r(x)/β} / Z (Eq. 5.6)."""

    name = "rlhf"

    def __init__(self, ref, reward_fn, beta: float = 0.1, kl: str = "k1_seq", algo: str = "rloo",
                 ppo_epochs: int = 4, clip: float = 0.2, kl_target: float | None = None, horizon_k: float = 0.1,
                 tokenizer=None):
        if not (beta > 0 and np.isfinite(beta)):
            raise ValueError(f"beta must be a finite number > 0; got {beta}")
        if kl not in KL_MODES:
            raise ValueError(f"unknown KL mode {kl!r}; choose one of {KL_MODES}")
        if algo not in ALGOS:
            raise ValueError(f"unknown algorithm {algo!r}; choose one of {ALGOS}")
        if algo == "ppo" and kl != "k1_seq":
            raise ValueError("PPO here takes the KL penalty in the reward per sequence (kl='k1_seq')")
        if kl_target is not None and not (kl_target > 0 and np.isfinite(kl_target)):
            raise ValueError(f"kl_target (the adaptive β's target KL) must be a finite number > 0; got {kl_target}")
        self.ref, self.reward_fn, self.beta, self.kl, self.algo = ref, reward_fn, float(beta), kl, algo
        self.ppo_epochs, self.clip, self.kl_target, self.horizon_k = ppo_epochs, clip, kl_target, horizon_k
        self.tokenizer = tokenizer
        self._ppo_batch, self._ppo_left = None, 0

    def draw(self, policy, n, rng) -> Batch:
        """PPO: several epochs (optimizer steps) over one batch drawn from π_old."""
        if self.algo != "ppo":
            return super().draw(policy, n, rng)
        if self._ppo_left == 0:
            self._ppo_batch, self._ppo_left = super().draw(policy, n, rng), self.ppo_epochs
        self._ppo_left -= 1
        return self._ppo_batch

    def _baseline(self, values, batch):
        if batch.exact or self.algo == "reinforce":
            return np.zeros_like(values)
        return leave_one_out_baseline(values)

    def loss(self, policy, batch: Batch):
        r = checked_rewards(self.reward_fn, batch)
        w = batch.weights
        metrics = {"reward": float(np.sum(w * r)), "beta": self.beta, "entropy_est": float(-np.sum(w * batch.log_q))}
        if not batch.exact:
            metrics.update(kl_estimates(batch.log_q, batch.log_ref))
        logp_tok = policy.token_logprobs(batch.tokens)  # one forward for every term
        if self.kl == "k1_token":  # token t is credited with r − β Σ_{t' ≥ t} (log π_t' − log a_t')
            returns = r[:, None] - self.beta * kl_to_go(logp_tok, ref_token_logprobs(self.ref, batch))
            adv = returns - self._baseline(returns[:, 0], batch)[:, None]
            return weighted_surrogate(logp_tok, w[:, None] * adv), metrics
        # Eq. (5.8): the sampled k1 = log π(x) − log a(x) enters the reward
        # BEGIN SOLUTION kl-in-reward
        returns = r - self.beta * (batch.log_q - batch.log_ref) if self.kl == "k1_seq" else r
        adv = returns - self._baseline(returns, batch)
        # END SOLUTION
        logp = logp_tok.sum(axis=1)
        if self.algo == "ppo":
            coef, metrics["clip_fraction"] = ppo_clip_coefficients(logp, batch.log_q, adv if batch.exact else whiten(adv),
                                                                   w, self.clip)
            return weighted_surrogate(logp, coef), metrics
        loss = weighted_surrogate(logp, w * adv)
        if self.kl != "k1_seq":
            loss = loss + self.beta * kl_loss(logp_tok, ref_token_logprobs(self.ref, batch), w, self.kl)
        return loss, metrics

    def after_step(self, policy, batch, metrics):
        """Ziegler et al. (2019): β ← β(1 + K·clip(KL/KL_target − 1, −0.2, 0.2)) once per batch (under PPO,
        after the batch's last epoch)."""
        if self.algo == "ppo" and self._ppo_left > 0:
            return
        if self.kl_target is not None and "kl_k3" in metrics:
            error = np.clip(metrics["kl_k3"] / self.kl_target - 1.0, -0.2, 0.2)
            self.beta *= 1.0 + self.horizon_k * error

    def settings(self) -> dict:
        return {"beta": self.beta, "kl": self.kl, "algo": self.algo,
                "ppo_epochs": self.ppo_epochs, "clip": self.clip, "kl_target": self.kl_target}

    def state(self):
        out = {"beta": self.beta, "ppo_left": self._ppo_left}
        if self._ppo_left:  # the batch still being reused by PPO's epochs
            b = self._ppo_batch
            out["ppo_batch"] = {"tokens": b.tokens, "weights": b.weights, "log_q": b.log_q, "log_ref": b.log_ref}
        return out

    def load_state(self, state):
        self.beta = float(state.get("beta", self.beta))
        self._ppo_left = int(state.get("ppo_left", 0))
        if self._ppo_left:
            b = state["ppo_batch"]
            names = self.tokenizer.decode_batch(b["tokens"]) if self.tokenizer is not None else None
            self._ppo_batch = Batch(np.asarray(b["tokens"]), np.asarray(b["weights"]), np.asarray(b["log_q"]),
                                    np.asarray(b["log_ref"]), names)


class Reinforce(Method):
    """Eq. (4.3) alone: maximise E_π[r(x)] by REINFORCE with the leave-one-out baseline and no KL term —
    the reward-maximisation contrast to GDC in chapter 06."""

    name = "reinforce"

    def __init__(self, ref, reward_fn, tokenizer=None):
        self.ref, self.reward_fn, self.tokenizer = ref, reward_fn, tokenizer

    def loss(self, policy, batch: Batch):
        r = checked_rewards(self.reward_fn, batch)
        adv = r if batch.exact else r - leave_one_out_baseline(r)
        logp = policy.sequence_logprob(batch.tokens)
        return weighted_surrogate(logp, batch.weights * adv), {"reward": float(np.sum(batch.weights * r))}


def kl_control_optimum(log_ref, rewards, beta):
    """Eq. (5.6)–(5.7): π* = a·e^{r/β}/Z exactly on an enumeration; returns (log π*, β log Z = max J)."""
    log_ref, rewards = np.asarray(log_ref, np.float64), np.asarray(rewards, np.float64)
    log_pi_star, log_z = log_normalise(log_ref + rewards / beta)
    return log_pi_star, beta * float(log_z)


def kl_control_objective(p, p_ref, rewards, beta) -> float:
    """Eq. (5.5) exactly: J(π) = Σ π r − β KL(π‖a)."""
    from ..divergences import divergence

    return float(np.sum(p * rewards) - beta * divergence("kl", p, p_ref))
