"""RLHF: maximise E_π[r(x)] − β·KL(π‖a) with the reference a frozen (chapter 05).

Policy gradient with a leave-one-out baseline (RLOO) or PPO-clip epochs over each batch; the KL term in the
reward (k1, per sequence or per token), in the loss (k2 or k3 per token), or analytic over the vocabulary at
every visited prefix (full_token); β fixed or adapted by the controller of Ziegler et al. (2019). The pieces are
the shared ones of ``policy_gradient.py``. With prompts (chapter 05, §12) the objective is averaged over them and
RLOO's baseline is taken within each prompt's group.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..divergences import divergence
from ..logspace import log_normalise
from ..metrics import kl_estimates
from .common import Batch, Method, Sampling, batch_from_state, batch_state
from .policy_gradient import (
    checked_rewards,
    kl_after,
    kl_loss,
    kl_to_go,
    leave_one_out_baseline,
    ppo_clip_coefficients,
    ref_token_logprobs,
    token_kl_terms,
    weighted_sum,
    weighted_surrogate,
    whiten,
)

KL_MODES = ("k1_seq", "k1_token", "k2_loss", "k3_loss", "full_token")
ALGOS = ("rloo", "reinforce", "ppo")


@dataclass(frozen=True)
class RLHFOptions:
    """RLHF's hyper-parameters.

    beta       the KL coefficient β (its start, with ``kl_target``)
    kl         where the KL penalty enters: k1 in the reward per sequence (``k1_seq``) or per token (``k1_token``),
               k2 or k3 per token in the loss (``k2_loss``, ``k3_loss``), or analytic at every prefix (``full_token``)
    algo       ``rloo`` (leave-one-out baseline), ``reinforce`` (no baseline) or ``ppo`` (PPO-clip epochs)
    ppo_epochs PPO's optimizer steps on each batch
    clip       PPO's ε: ratios are clipped to [1 − ε, 1 + ε]
    kl_target  adapt β towards this KL(π‖a) (Ziegler et al. 2019); None: β fixed
    horizon_k  the adaptive β's gain K
    """

    beta: float = 0.1
    kl: str = "k1_seq"
    algo: str = "rloo"
    ppo_epochs: int = 4
    clip: float = 0.2
    kl_target: float | None = None
    horizon_k: float = 0.1

    def __post_init__(self):
        beta, kl, algo, kl_target = self.beta, self.kl, self.algo, self.kl_target
        ppo_epochs, clip, horizon_k = self.ppo_epochs, self.clip, self.horizon_k
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
        if isinstance(ppo_epochs, bool) or not isinstance(ppo_epochs, (int, np.integer)) or ppo_epochs < 1:
            raise ValueError(f"ppo_epochs must be a whole number ≥ 1; got {ppo_epochs!r}")
        if not (0 < clip < 1):  # NaN fails this too
            raise ValueError(f"clip (PPO's ε: ratios are clipped to [1 − ε, 1 + ε]) must be in (0, 1); got {clip!r}")
        if not (horizon_k > 0 and np.isfinite(horizon_k)):
            raise ValueError(f"horizon_k (the adaptive β's gain) must be a finite number > 0; got {horizon_k!r}")


class RLHF(Method):
    """Eq. (5.5): J(π) = E_π[r(x)] − β KL(π‖a), whose maximiser is π*(x) = a(x) e^{r(x)/β} / Z (Eq. 5.6).

    ``options`` (:class:`RLHFOptions`, None: the defaults) are its hyper-parameters, copied onto the method
    (``self.beta`` moves with an adaptive β); ``sampling`` (``common.Sampling``) its prompts, group size and
    tokenizer — with prompts, the baseline is taken within each prompt's group."""

    name = "rlhf"

    def __init__(self, ref, reward_fn, options: RLHFOptions | None = None, sampling: Sampling | None = None):
        o = options if options is not None else RLHFOptions()
        self.ref, self.reward_fn, self.beta, self.kl, self.algo = ref, reward_fn, float(o.beta), o.kl, o.algo
        self.ppo_epochs, self.clip, self.kl_target, self.horizon_k = o.ppo_epochs, o.clip, o.kl_target, o.horizon_k
        self.set_sampling(sampling)
        self._ppo_batch, self._ppo_left = None, 0

    def draw(self, policy, n, rng) -> Batch:
        """PPO: several epochs (optimizer steps) over one batch drawn from π_old."""
        if self.algo != "ppo":
            return super().draw(policy, n, rng)
        if self._ppo_left == 0:
            self._ppo_batch, self._ppo_left = super().draw(policy, n, rng), self.ppo_epochs
        self._ppo_left -= 1
        return self._ppo_batch

    @property
    def leave_one_out(self) -> bool:
        """Whether the advantage subtracts the leave-one-out baseline (every algorithm but plain REINFORCE)."""
        return self.algo != "reinforce"

    def _baseline(self, values, batch):
        if batch.exact or self.algo == "reinforce":
            return np.zeros_like(values)
        return leave_one_out_baseline(values, batch.group)

    def loss(self, policy, batch: Batch):
        r = checked_rewards(self.reward_fn, batch)
        w = batch.weights
        metrics = {"reward": float(np.sum(w * r)), "beta": self.beta, "entropy_est": float(-np.sum(w * batch.log_q))}
        if not batch.exact:
            metrics.update(kl_estimates(batch.log_q, batch.log_ref))
        if self.kl == "full_token":
            return self._full_token_loss(policy, batch, r, metrics)
        logp_tok = batch.token_logprobs(policy)  # one forward for every term (the response's tokens only)
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
            adv = adv if batch.exact else whiten(adv)
            coef, metrics["clip_fraction"] = ppo_clip_coefficients(logp, batch.log_q, adv, w, self.clip)
            return weighted_surrogate(logp, coef), metrics
        loss = weighted_surrogate(logp, w * adv)
        if self.kl != "k1_seq":
            loss = loss + self.beta * kl_loss(logp_tok, ref_token_logprobs(self.ref, batch), w, self.kl)
        return loss, metrics

    def _full_token_loss(self, policy, batch, r, metrics):
        """Eq. (5.11): β Σ_t KL_t at the visited prefixes, and token t credited with r − β Σ_{t' > t} KL_t'."""
        w, (logp_tok, kl_tok) = batch.weights, token_kl_terms(policy, self.ref, batch.tokens, batch.prompt_len)
        returns = r[:, None] - self.beta * kl_after(kl_tok)
        adv = returns - self._baseline(returns[:, 0], batch)[:, None]
        kl_seq = kl_tok.sum(axis=1)
        metrics["kl_full_token"] = float(np.sum(w * kl_seq.numpy()))  # E_π Σ_t KL_t = KL(π‖a) (Eq. 5.10)
        return weighted_surrogate(logp_tok, w[:, None] * adv) + self.beta * weighted_sum(kl_seq, w), metrics

    def after_step(self, policy, batch, metrics):
        """Ziegler et al. (2019): β ← β(1 + K·clip(KL/KL_target − 1, −0.2, 0.2)) once per batch (under PPO,
        after the batch's last epoch)."""
        if self.algo == "ppo" and self._ppo_left > 0:
            return
        if self.kl_target is not None and "kl_k3" in metrics:
            error = np.clip(metrics["kl_k3"] / self.kl_target - 1.0, -0.2, 0.2)
            self.beta *= 1.0 + self.horizon_k * error

    def label(self) -> str:
        return f"rlhf β={self.beta:g}" + ("" if self.algo == "rloo" else f" {self.algo}")

    def settings(self) -> dict:
        return {"beta": self.beta, "kl": self.kl, "algo": self.algo,
                "ppo_epochs": self.ppo_epochs, "clip": self.clip, "kl_target": self.kl_target}

    def state(self):
        out = {"beta": self.beta, "ppo_left": self._ppo_left}
        if self._ppo_left:  # the batch still being reused by PPO's epochs
            out["ppo_batch"] = batch_state(self._ppo_batch)
        return out

    def load_state(self, state):
        self.beta = float(state.get("beta", self.beta))
        self._ppo_left = int(state.get("ppo_left", 0))
        if self._ppo_left:
            self._ppo_batch = batch_from_state(state["ppo_batch"], self.tokenizer)


def kl_control_optimum(log_ref, rewards, beta):
    """Eq. (5.6)–(5.7): π* = a·e^{r/β}/Z exactly on an enumeration; returns (log π*, β log Z = max J)."""
    if not (beta > 0 and np.isfinite(beta)):
        raise ValueError(f"beta must be a finite number > 0; got {beta}")
    log_ref, rewards = np.asarray(log_ref, np.float64), np.asarray(rewards, np.float64)
    log_pi_star, log_z = log_normalise(log_ref + rewards / beta)
    return log_pi_star, beta * float(log_z)


def kl_control_objective(p, p_ref, rewards, beta) -> float:
    """Eq. (5.5) exactly: J(π) = Σ π r − β KL(π‖a)."""
    return float(np.sum(p * rewards) - beta * divergence("kl", p, p_ref))
