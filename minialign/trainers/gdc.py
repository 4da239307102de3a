"""GDC: distributional control by the distributional policy gradient (chapter 06).

Khalifa, Elsahar & Dymetman (ICLR 2021), Algorithm 1: the target is an EBM P(x) = a(x) b(x) e^{λ·φ(x)};
π_θ starts at a and follows DPG,

    ∇_θ KL(p‖π_θ) = −E_{x∼q}[ P(x) / (Z q(x)) ∇_θ log π_θ(x) ],

with samples from a proposal q that is replaced by π_θ whenever π_θ has come closer to p (the KL-adaptive
update, in ``proposal.py`` with the estimates of Z and KL(p‖π)). GDC++ (Korbak et al. 2022) subtracts the
baseline π_θ(x)/q(x), whose expectation against ∇ log π under q is zero.
"""
from __future__ import annotations

import numpy as np

from .common import Batch, Sampling
from .policy_gradient import weighted_surrogate
from .proposal import ProposalMethod, target_ratio


class DPG(ProposalMethod):
    """Eq. (6.7)–(6.8): DPG with coefficients P(x)/(Z q(x)) (or, with ``baseline``, GDC++'s
    (P(x)/Z − π(x))/q(x)) on samples of q.

    ``target_fn(batch)`` gives log P(x); a :class:`~minialign.trainers.proposal.MomentCalibration` may stand in
    for it, and then λ follows the policy's moments (Eq. 6.11). ``log_z`` is an exact log Z if known; ``sampling``
    (``common.Sampling``) the prompts, group size and tokenizer. With prompts, CDPG (Korbak et al. 2022): the same
    coefficients with each prompt's Z(x), Eq. (6.16)."""

    name = "gdc"

    def __init__(self, ref, policy_init, target_fn, proposal: str = "adaptive", baseline: bool = False,
                 log_z: float | None = None, sampling: Sampling | None = None):
        super().__init__(ref, policy_init, target_fn, proposal, log_z, sampling)
        self.baseline = baseline

    def coefficients(self, policy, batch: Batch):
        """The batch scored against the target, and each sample's coefficient w·P/(Zq) (− w·π/q with GDC++)."""
        s = self.score(policy, batch)
        known, weight = target_ratio(s, batch)  # p(x)/q(x) where Z (or the prompt's Z(x)) is known
        if not known.any():  # no mass seen yet: this batch carries no signal
            return s, np.zeros(len(batch))
        if self.baseline:
            # BEGIN SOLUTION gdcpp
            weight = weight - np.where(known, np.exp(s.logp_pi - batch.log_q), 0.0)  # − π(x)/q(x)
            # END SOLUTION
        return s, batch.weights * weight

    def loss(self, policy, batch: Batch):
        s, coef = self.coefficients(policy, batch)
        metrics = {}
        self.adapt(policy, batch, s, metrics)
        return weighted_surrogate(s.logp, coef), metrics

    def label(self) -> str:
        return ("gdc++" if self.baseline else "gdc") + (" (λ on π)" if self.calibration is not None else "")

    def settings(self) -> dict:
        return {**super().settings(), "baseline": self.baseline}
