"""GDC: distributional control by the distributional policy gradient (chapter 06).

Khalifa, Elsahar & Dymetman (ICLR 2021), Algorithm 1: the target is an EBM P(x) = a(x) b(x) e^{λ·φ(x)};
π_θ starts at a and follows DPG,

    ∇_θ KL(p‖π_θ) = −E_{x∼q}[ P(x) / (Z q(x)) ∇_θ log π_θ(x) ],

with samples from a proposal q that is replaced by π_θ whenever π_θ has come closer to p (the KL-adaptive
update). GDC++ (Korbak et al. 2022) subtracts the baseline π_θ(x)/q(x), whose expectation against ∇ log π
under q is zero. Z and KL(p‖π) are estimated by importance sampling from the same samples.
"""
from __future__ import annotations

import numpy as np

from .common import Batch, Method, frozen_copy, log_mean_exp, sample_batch, weighted_surrogate


class RunningLogZ:
    """A running importance-sampling estimate of log Z = log E_q[P/q], averaged over all batches so far
    (in log space), or a fixed exact value.

    A batch in which no sample has mass under the target (every P(x) = 0: likely for a rare pointwise
    constraint) is a valid estimate of 0 and is averaged in. If after ``patience`` batches the estimate is
    still 0, the target has no mass where the proposal samples, and that is an error.
    """

    def __init__(self, exact: float | None = None, patience: int = 10):
        self.exact, self.log_sum, self.count, self.patience = exact, -np.inf, 0, patience

    def update(self, log_p_over_q) -> float:
        if self.exact is not None:
            return self.exact
        self.log_sum = np.logaddexp(self.log_sum, log_mean_exp(log_p_over_q))
        self.count += 1
        if not np.isfinite(self.log_sum) and self.count >= self.patience:
            raise FloatingPointError(
                f"every importance weight P/q has been 0 for {self.count} batches: the estimate of Z underflowed; "
                "the target has no mass where the proposal samples")
        return float(self.log_sum - np.log(self.count))

    @property
    def value(self) -> float:
        return self.exact if self.exact is not None else float(self.log_sum - np.log(max(self.count, 1)))


class ProposalMixin:
    """Sampling from a proposal q (a frozen copy of π), replaced by π when the estimated KL(p‖π) < KL(p‖q)."""

    def _init_proposal(self, policy_init, proposal: str, log_z: float | None):
        if proposal not in ("adaptive", "fixed", "policy"):
            raise ValueError(f"proposal must be 'adaptive', 'fixed' or 'policy'; got {proposal!r}")
        self.proposal = proposal
        self.q = frozen_copy(policy_init) if proposal != "policy" else None
        self.log_z = RunningLogZ(log_z)
        self.replacements = 0

    def log_target(self, batch: Batch) -> np.ndarray:
        log_p = np.asarray(self.target_fn(batch), dtype=np.float64)
        if log_p.shape != (len(batch),):
            raise ValueError(f"the target returned shape {log_p.shape}; expected ({len(batch)},)")
        if np.isnan(log_p).any() or np.isposinf(log_p).any():
            raise ValueError("the target's log-scores log P(x) contain NaN or +inf")
        return log_p

    def draw(self, policy, n, rng) -> Batch:
        return sample_batch(self.q if self.q is not None else policy, n, rng, ref=self.ref, tokenizer=self.tokenizer)

    def importance(self, policy, batch, logp_pi):
        """log P, log Z and the weights P/(Zq) of the batch (exact batches use the exact Z)."""
        log_p = self.log_target(batch)
        log_z = self.log_z.exact if batch.exact else self.log_z.update(log_p - batch.log_q)
        return log_p, log_z

    def adapt(self, policy, batch, log_p, log_z, logp_pi, metrics):
        """Eq. (6.9): estimate KL(p‖π) and KL(p‖q) by importance sampling; q ← π if π is closer."""
        if not np.isfinite(log_z):
            metrics.update(log_z=log_z, replacements=self.replacements)
            return
        w = np.exp(log_p - log_z - batch.log_q) * batch.weights
        log_p = np.where(w > 0, log_p, 0.0)  # points of zero target mass contribute 0·log 0 = 0
        kl_p_pi = float(np.sum(w * (log_p - log_z - logp_pi)))
        kl_p_q = float(np.sum(w * (log_p - log_z - batch.log_q)))
        metrics.update(kl_p_pi_est=kl_p_pi, kl_p_q_est=kl_p_q, log_z=log_z, replacements=self.replacements)
        if self.proposal == "adaptive" and not batch.exact and kl_p_pi < kl_p_q:
            self.q = frozen_copy(policy)
            self.replacements += 1

    def state(self):
        out = {"log_z_sum": self.log_z.log_sum, "log_z_count": self.log_z.count, "replacements": self.replacements}
        if self.q is not None:
            out["proposal"] = self.q.state_dict()
        return out

    def load_state(self, state):
        self.log_z.log_sum = float(state.get("log_z_sum", self.log_z.log_sum))
        self.log_z.count = int(state.get("log_z_count", self.log_z.count))
        self.replacements = int(state.get("replacements", 0))
        if self.q is not None and "proposal" in state:
            self.q.load_state_dict(state["proposal"])


class DPG(ProposalMixin, Method):
    """Eq. (6.7)–(6.8): DPG with coefficients P(x)/(Z q(x)) (or, with ``baseline``, GDC++'s
    (P(x)/Z − π(x))/q(x)) on samples of q."""

    name = "gdc"

    def __init__(self, ref, policy_init, target_fn, proposal: str = "adaptive", baseline: bool = False,
                 log_z: float | None = None, tokenizer=None):
        self.ref, self.target_fn, self.baseline, self.tokenizer = ref, target_fn, baseline, tokenizer
        self._init_proposal(policy_init, proposal, log_z)

    def coefficients(self, policy, batch: Batch):
        logp = policy.sequence_logprob(batch.tokens)
        log_p, log_z = self.importance(policy, batch, None)
        logp_pi = logp.numpy().astype(np.float64)
        batch.extra["logp_pi"] = logp_pi
        if not np.isfinite(log_z):  # no mass seen yet: this batch carries no signal
            return logp, np.zeros(len(batch)), (log_p, log_z, logp_pi)
        weight = np.exp(log_p - log_z - batch.log_q)  # p(x)/q(x)
        if self.baseline:
            weight = weight - np.exp(logp_pi - batch.log_q)  # − π(x)/q(x)
        return logp, batch.weights * weight, (log_p, log_z, logp_pi)

    def loss(self, policy, batch: Batch):
        logp, coef, (log_p, log_z, logp_pi) = self.coefficients(policy, batch)
        metrics = {}
        self.adapt(policy, batch, log_p, log_z, logp_pi, metrics)
        return weighted_surrogate(logp, coef), metrics
