"""f-DPG (Go et al., ICML 2023): minimise D_f(π_θ‖p) for any f-divergence (chapter 07).

    ∇_θ D_f(π_θ‖p) = E_{x∼π_θ}[ f'(π_θ(x)/p(x)) ∇_θ log π_θ(x) ],

so f-DPG is REINFORCE with the pseudo-reward R_θ(x) = −f'(Z π_θ(x)/P(x)), computed in log space from
log π, log P and log Z. Off-policy from a proposal q, each term is weighted by π(x)/q(x). With f = kl
(D = KL(π‖p)) and P = a e^{r/β} it is KL-control RLHF; with f = reverse_kl (D = KL(p‖π)) it is DPG.
"""
from __future__ import annotations

import numpy as np

from .common import Batch, Method, weighted_surrogate
from .gdc import MomentCalibration, ProposalMixin
from .. import divergences


class FDPG(ProposalMixin, Method):
    """Eq. (7.3)–(7.4): coefficients (π/q)·(R − b) with R = −f'(t), log t = log π − log P + log Z."""

    name = "fdpg"

    def __init__(self, ref, policy_init, target_fn, f: str = "js", proposal: str = "policy",
                 baseline: bool = True, log_z: float | None = None, tokenizer=None, log_t_max: float | None = None):
        # a registry name (an unknown one raises, listing the known ones) or an FDivergence of one's own
        self.fd = f if isinstance(f, divergences.FDivergence) else divergences.get(f)
        self.f = self.fd.name
        if isinstance(target_fn, MomentCalibration):
            raise TypeError("λ calibration is implemented for GDC (DPG) only; give f-DPG a fixed target")
        self.ref, self.target_fn, self.baseline, self.tokenizer = ref, target_fn, baseline, tokenizer
        self.name = f"fdpg-{self.f}"
        self.log_t_max = log_t_max
        self._init_proposal(policy_init, proposal, log_z)

    def pseudo_reward(self, logp_pi, log_p, log_z) -> np.ndarray:
        """R(x) = −f'(t), t = Z π(x)/P(x), from log t (no overflow); points with P(x) = 0 get the limit
        −lim_{t→∞} f'(t), which is −∞ for f = kl: then ``log_t_max`` (if set) caps log t."""
        log_t = np.where(np.isfinite(log_p), logp_pi - log_p + log_z, np.inf)
        if self.log_t_max is not None:
            log_t = np.minimum(log_t, self.log_t_max)
        r = -np.asarray(self.fd.f_prime_log(log_t), dtype=np.float64)
        if np.isinf(r).any():
            raise ValueError(
                f"f = {self.f} has f'(t) → ∞ as t → ∞, and {int(np.isinf(r).sum())} samples fall where the target "
                "has no mass (log P = −inf): their pseudo-reward is infinite. Use a target with full support, an f "
                "with bounded f' (js, tv, reverse_kl, hellinger), or cap log t with log_t_max."
            )
        return r

    def coefficients(self, policy, batch: Batch):
        logp = policy.sequence_logprob(batch.tokens)
        logp_pi = logp.numpy().astype(np.float64)
        batch.extra["logp_pi"] = logp_pi
        log_p, log_z = self.importance(policy, batch, None)
        if not np.isfinite(log_z):  # no mass seen yet: this batch carries no signal
            return logp, np.zeros(len(batch)), (log_p, log_z, logp_pi, np.zeros(len(batch)))
        reward = self.pseudo_reward(logp_pi, log_p, log_z)
        rho = np.exp(logp_pi - batch.log_q)  # π(x)/q(x): 1 on-policy
        if self.baseline and not batch.exact and len(reward) > 1:
            # leave-one-out: b_i is the ρ-weighted mean of the other samples' pseudo-rewards, so that b_i does
            # not depend on x_i and the expected gradient is unchanged (on- and off-policy)
            b = _others_sum(rho * reward) / np.maximum(_others_sum(rho), 1e-300)
            reward = reward - b
        return logp, batch.weights * rho * reward, (log_p, log_z, logp_pi, reward)

    def loss(self, policy, batch: Batch):
        logp, coef, (log_p, log_z, logp_pi, reward) = self.coefficients(policy, batch)
        metrics = {"pseudo_reward": float(np.mean(reward[np.isfinite(reward)])) if np.isfinite(reward).any() else 0.0}
        self.adapt(policy, batch, log_p, log_z, logp_pi, metrics)
        return weighted_surrogate(logp, coef), metrics


def _others_sum(v) -> np.ndarray:
    """Σ_{j≠i} v_j for every i, from prefix and suffix sums (no cancellation when one v_i dominates)."""
    v = np.asarray(v, dtype=np.float64)
    before = np.concatenate([[0.0], np.cumsum(v)[:-1]])
    after = np.concatenate([np.cumsum(v[::-1])[::-1][1:], [0.0]])
    return before + after
