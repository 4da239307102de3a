"""RLHF: maximise E_π[r(x)] − β·KL(π‖a) with the reference a frozen (chapter 05).

Policy gradient with a leave-one-out baseline (RLOO) or PPO-clip epochs over each batch; the KL term in the
reward (k1, per sequence or per token) or in the loss (k2 or k3 per token); β fixed or adapted by the
controller of Ziegler et al. (2019). The loop, sampling and logging are the shared ones of ``common.py``.
"""
from __future__ import annotations

import numpy as np

from .common import Batch, Method, kl_estimates, leave_one_out_baseline, weighted_surrogate
from ..logspace import log_normalise
from ..tensor import Tensor

KL_MODES = ("k1_seq", "k1_token", "k2_loss", "k3_loss")


class RLHF(Method):
    """Eq. (5.5): J(π) = E_π[r(x)] − β KL(π‖a), whose maximiser is π*(x) = a(x) e^{r(x)/β} / Z (Eq. 5.6)."""

    name = "rlhf"

    def __init__(self, ref, reward_fn, beta: float = 0.1, kl: str = "k1_seq", algo: str = "rloo",
                 ppo_epochs: int = 4, clip: float = 0.2, kl_target: float | None = None, horizon_k: float = 0.1,
                 tokenizer=None):
        if not beta > 0:
            raise ValueError(f"beta must be positive; got {beta}")
        if kl not in KL_MODES:
            raise ValueError(f"unknown KL mode {kl!r}; choose one of {KL_MODES}")
        if algo not in ("rloo", "reinforce", "ppo"):
            raise ValueError(f"unknown algorithm {algo!r}; choose 'rloo', 'reinforce' or 'ppo'")
        if algo == "ppo" and kl != "k1_seq":
            raise ValueError("PPO here takes the KL penalty in the reward per sequence (kl='k1_seq')")
        self.ref, self.reward_fn, self.beta, self.kl, self.algo = ref, reward_fn, float(beta), kl, algo
        self.ppo_epochs, self.clip, self.kl_target, self.horizon_k = ppo_epochs, clip, kl_target, horizon_k
        self.tokenizer = tokenizer
        self._ppo_batch, self._ppo_left = None, 0

    # PPO: several epochs (optimizer steps) over one batch drawn from π_old
    def draw(self, policy, n, rng) -> Batch:
        if self.algo != "ppo":
            return super().draw(policy, n, rng)
        if self._ppo_left == 0:
            self._ppo_batch, self._ppo_left = super().draw(policy, n, rng), self.ppo_epochs
        self._ppo_left -= 1
        return self._ppo_batch

    def rewards(self, batch: Batch) -> np.ndarray:
        r = np.asarray(self.reward_fn(batch), dtype=np.float64)
        if r.shape != (len(batch),):
            raise ValueError(f"the reward function returned shape {r.shape}; expected ({len(batch)},)")
        if not np.isfinite(r).all():
            raise ValueError(f"the reward function returned NaN or inf for {int((~np.isfinite(r)).sum())} samples")
        return r

    def _baseline(self, values, batch):
        if batch.exact or self.algo == "reinforce":
            return np.zeros_like(values)
        return leave_one_out_baseline(values, batch.weights)

    def loss(self, policy, batch: Batch):
        r = self.rewards(batch)
        w = batch.weights
        metrics = {"reward": float(np.sum(w * r)), "beta": self.beta, "entropy_est": float(-np.sum(w * batch.log_q))}
        if not batch.exact:
            metrics.update(kl_estimates(batch.log_q, batch.log_ref))
        if self.kl in ("k1_seq", "k2_loss", "k3_loss"):
            if self.kl == "k1_seq":  # Eq. (5.8): the sampled k1 = log π(x) − log a(x) enters the reward
                returns = r - self.beta * (batch.log_q - batch.log_ref)
            else:
                returns = r
            adv = returns - self._baseline(returns, batch)
            logp_tok = policy.token_logprobs(batch.tokens)  # one forward for both terms
            logp = logp_tok.sum(axis=1)
            if self.algo == "ppo":
                return self._ppo_loss(logp, adv, batch, metrics)
            loss = weighted_surrogate(logp, w * adv)
            if self.kl != "k1_seq":
                loss = loss + self.beta * self._kl_loss(logp_tok, batch)
            return loss, metrics
        # k1 per token with rewards-to-go: token t is credited with r − β Σ_{t' ≥ t} (log π_t' − log a_t')
        logp_tok = policy.token_logprobs(batch.tokens)
        ref_tok = self._ref_tokens(batch)
        k1 = logp_tok.numpy().astype(np.float64) - ref_tok
        to_go = np.cumsum(k1[:, ::-1], axis=1)[:, ::-1]
        returns = r[:, None] - self.beta * to_go
        adv = returns - self._baseline(returns[:, 0], batch)[:, None]
        coef = (w[:, None] * adv).astype(logp_tok.dtype)
        return -(logp_tok * Tensor(coef)).sum(), metrics

    def _ref_tokens(self, batch):
        if "ref_tok" not in batch.extra:
            from ..tensor import no_grad

            with no_grad():
                batch.extra["ref_tok"] = np.asarray(self.ref.token_logprobs(batch.tokens).numpy(), np.float64)
        return batch.extra["ref_tok"]

    def _kl_loss(self, logp_tok, batch):
        """Eq. (5.9): Σ_i w_i Σ_t k(log π_t, log a_t), differentiated through log π_t (prefixes not)."""
        ref_tok = Tensor(self._ref_tokens(batch).astype(logp_tok.dtype))
        d = ref_tok - logp_tok  # log ρ_t = log a_t − log π_t
        per_token = 0.5 * d * d if self.kl == "k2_loss" else d.exp() - 1.0 - d  # 0 at padding, where d = 0
        return (per_token.sum(axis=1) * Tensor(batch.weights.astype(logp_tok.dtype))).sum()

    def _ppo_loss(self, logp, adv, batch, metrics):
        """Eq. (5.10): PPO-clip, E[min(ρA, clip(ρ, 1−ε, 1+ε)A)] with ρ = π/π_old; the gradient of the chosen
        term is A·ρ·∇log π where the unclipped term is the minimum, and zero where the clip is active."""
        if not batch.exact and len(adv) > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        ratio = np.exp(logp.numpy().astype(np.float64) - batch.log_q)
        clipped = np.clip(ratio, 1 - self.clip, 1 + self.clip)
        active = ratio * adv <= clipped * adv
        metrics["clip_fraction"] = float(1 - active.mean())
        return weighted_surrogate(logp, batch.weights * adv * ratio * active), metrics

    def after_step(self, policy, batch, metrics):
        """Ziegler et al. (2019): β ← β(1 + K·clip(KL/KL_target − 1, −0.2, 0.2)) once per batch (under PPO,
        after the batch's last epoch)."""
        if self.algo == "ppo" and self._ppo_left > 0:
            return
        if self.kl_target is not None and "kl_k3" in metrics:
            error = np.clip(metrics["kl_k3"] / self.kl_target - 1.0, -0.2, 0.2)
            self.beta *= 1.0 + self.horizon_k * error

    def state(self):
        return {"beta": self.beta}

    def load_state(self, state):
        self.beta = float(state.get("beta", self.beta))


class Reinforce(Method):
    """Eq. (4.3) alone: maximise E_π[r(x)] by REINFORCE with the leave-one-out baseline and no KL term —
    the reward-maximisation contrast to GDC in chapter 06."""

    name = "reinforce"

    def __init__(self, ref, reward_fn, tokenizer=None):
        self.ref, self.reward_fn, self.tokenizer = ref, reward_fn, tokenizer

    def loss(self, policy, batch: Batch):
        r = RLHF.rewards(self, batch)
        adv = r if batch.exact else r - leave_one_out_baseline(r, batch.weights)
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
