"""f-DPG (Go et al., ICML 2023): minimise D_f(π_θ‖p) for any f-divergence (chapter 07).

    ∇_θ D_f(π_θ‖p) = E_{x∼π_θ}[ f'(π_θ(x)/p(x)) ∇_θ log π_θ(x) ],

so f-DPG is REINFORCE with the pseudo-reward R_θ(x) = −f'(Z π_θ(x)/P(x)), computed in log space from
log π, log P and log Z. Off-policy from a proposal q, each term is weighted by π(x)/q(x). With f = kl
(D_f(π‖p) = KL(π‖p)) and P = a e^{r/β} it is KL-control RLHF; with f = reverse_kl (D_f(π‖p) = KL(p‖π)) it
is DPG. The proposal, Z and the KL-adaptive update are the shared ones of ``proposal.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import divergences
from .common import Batch, Sampling
from .policy_gradient import leave_one_out_weighted_baseline, weighted_surrogate
from .proposal import MomentCalibration, ProposalMethod, check_proposal, target_ratio


@dataclass(frozen=True)
class FDPGOptions:
    """f-DPG's hyper-parameters.

    f          the f-divergence D_f(π‖p): a registry name (``divergences.get``) or an ``FDivergence`` of one's own
    proposal   what to sample from: ``policy`` (π itself), ``adaptive`` or ``fixed`` (a copy of π; ``proposal.py``)
    baseline   centre the pseudo-rewards by the weighted leave-one-out baseline
    log_z      the target's exact log Z if known (None: estimated from the samples)
    log_t_max  a cap on log t (for an f with unbounded f', where the target has no mass); None: no cap
    """

    f: str | divergences.FDivergence = "js"
    proposal: str = "policy"
    baseline: bool = True
    log_z: float | None = None
    log_t_max: float | None = None

    def __post_init__(self):
        if not isinstance(self.f, divergences.FDivergence):
            divergences.get(self.f)  # an unknown name raises, listing the known ones
        check_proposal(self.proposal)


class FDPG(ProposalMethod):
    """Eq. (7.3)–(7.4): coefficients (π/q)·(R − b) with R = −f'(t), log t = log π − log P + log Z.

    ``options`` (:class:`FDPGOptions`, None: the defaults) are its hyper-parameters, copied onto the method;
    ``sampling`` (``common.Sampling``) its prompts, group size and tokenizer."""

    name = "fdpg"

    def __init__(self, ref, policy_init, target_fn, options: FDPGOptions | None = None,
                 sampling: Sampling | None = None):
        o = options if options is not None else FDPGOptions()
        # a registry name or an FDivergence of one's own
        self.fd = o.f if isinstance(o.f, divergences.FDivergence) else divergences.get(o.f)
        self.f = self.fd.name
        if isinstance(target_fn, MomentCalibration):
            raise TypeError("λ calibration is implemented for GDC (DPG) only; give f-DPG a fixed target")
        super().__init__(ref, policy_init, target_fn, o.proposal, o.log_z, sampling)
        self.baseline, self.log_t_max = o.baseline, o.log_t_max
        self.name = f"fdpg-{self.f}"

    @property
    def leave_one_out(self) -> bool:
        """Whether the pseudo-rewards are centred by the weighted leave-one-out baseline."""
        return self.baseline

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
        """The batch scored against the target, each sample's coefficient w·(π/q)·(R − b), and R − b."""
        s = self.score(policy, batch)
        known, _ = target_ratio(s, batch)  # where Z (with prompts: the row's Z(x)) is known
        if not known.any():  # no mass seen yet: this batch carries no signal
            return s, np.zeros(len(batch)), np.zeros(len(batch))
        reward = np.zeros(len(batch))
        reward[known] = self.pseudo_reward(s.logp_pi[known], s.log_p[known], s.row_log_z()[known])
        rho = np.exp(s.logp_pi - batch.log_q)  # π(x)/q(x): 1 on-policy
        if self.baseline and not batch.exact and len(reward) > 1:  # within each prompt's group, with prompts
            reward = reward - leave_one_out_weighted_baseline(reward, rho, batch.group)
        return s, np.where(known, batch.weights * rho * reward, 0.0), reward

    def loss(self, policy, batch: Batch):
        s, coef, reward = self.coefficients(policy, batch)
        metrics = {"pseudo_reward": float(np.mean(reward[np.isfinite(reward)])) if np.isfinite(reward).any() else 0.0}
        self.adapt(policy, batch, s, metrics)
        return weighted_surrogate(s.logp, coef), metrics

    def settings(self) -> dict:
        return {**super().settings(), "f": self.f, "baseline": self.baseline, "log_t_max": self.log_t_max}
