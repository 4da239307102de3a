"""GDC: distributional control by the distributional policy gradient (chapter 06).

Khalifa, Elsahar & Dymetman (ICLR 2021), Algorithm 1: the target is an EBM P(x) = a(x) b(x) e^{λ·φ(x)};
π_θ starts at a and follows DPG,

    ∇_θ KL(p‖π_θ) = −E_{x∼q}[ P(x) / (Z q(x)) ∇_θ log π_θ(x) ],

with samples from a proposal q that is replaced by π_θ whenever π_θ has come closer to p (the KL-adaptive
update). GDC++ (Korbak et al. 2022) subtracts the baseline π_θ(x)/q(x), whose expectation against ∇ log π
under q is zero. Z and KL(p‖π) are estimated by importance sampling from the same samples.

When the policy family cannot represent p, π_θ stops where it is closest to p in KL(p‖π) and its moments can
miss μ̄. :class:`MomentCalibration` then moves λ by dual ascent on the policy's own moments (Eq. 6.11), so
that the trained π_θ, not p, meets the constraint.
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


class MomentCalibration:
    """Eq. (6.11): λ fitted to the policy's own moments. The target is

        log P_λ(x) = log P_0(x) + λ·φ(x)        (P_0 = a·b: the base model and the pointwise constraints)

    and after every step

        m ← (1 − ρ) m + ρ Ê_π[φ],    λ ← λ + η (μ̄ − m),

    with Ê_π[φ] the batch's self-normalised estimate (weights π/q). If π_θ can represent every P_λ, DPG keeps
    π_θ ≈ p_λ, m ≈ E_{p_λ}[φ], and the fixed point is the I-projection's λ (Eq. 6.4): nothing changes. If it
    cannot, λ keeps moving until π_θ itself meets μ̄; the target is then a p_λ beyond the I-projection, and
    π_θ is the member of the family that DPG reaches from it.

    Changing λ changes Z. Every sample seen so far is kept (its log P_0/q and φ), so log Z(λ) is re-estimated
    by importance sampling from all of them at the current λ (each is unbiased under its own proposal). They
    take (k + 1) floats per sample in memory and in every checkpoint: about 0.5 MB for 250 steps of 128 here.

    log_base(batch) → log P_0 per row; phi(batch) → φ, ``[B, k]``.
    """

    def __init__(self, log_base, phi, lam, mu_bar, rate: float = 0.1, decay: float = 0.9, patience: int = 10):
        self.log_base, self.phi = log_base, phi
        self.lam = np.array(lam, dtype=np.float64).reshape(-1)
        self.mu_bar = np.array(mu_bar, dtype=np.float64).reshape(-1)
        if self.lam.shape != self.mu_bar.shape:
            raise ValueError(f"λ has {self.lam.size} entries but μ̄ has {self.mu_bar.size}")
        if not np.isfinite(self.lam).all() or not np.isfinite(self.mu_bar).all():
            raise ValueError(f"λ and μ̄ must be finite; got λ = {self.lam}, μ̄ = {self.mu_bar}")
        if not rate > 0:
            raise ValueError(f"the calibration rate η must be > 0; got {rate}")
        if not 0 <= decay < 1:
            raise ValueError(f"the moving-average decay must be in [0, 1); got {decay}")
        self.rate, self.decay, self.patience = rate, decay, patience
        self.moment = None
        self._seen = np.zeros(0)        # log P_0(x)/q(x) + log w (the batch weight) of every sample so far
        self._seen_phi = np.zeros((0, self.lam.size))
        self._batches = 0

    def _features(self, batch) -> np.ndarray:
        if "phi" not in batch.extra:
            phi = np.asarray(self.phi(batch), dtype=np.float64).reshape(len(batch), -1)
            if phi.shape[1] != self.lam.size:
                raise ValueError(f"φ has {phi.shape[1]} features per row; λ has {self.lam.size}")
            if not np.isfinite(phi).all():
                raise ValueError("the features φ(x) contain NaN or inf")
            batch.extra["phi"] = phi
        return batch.extra["phi"]

    def __call__(self, batch) -> np.ndarray:
        """log P_λ(x) for the batch at the current λ."""
        return np.asarray(self.log_base(batch), dtype=np.float64) + self._features(batch) @ self.lam

    def log_z(self, batch, log_p) -> float:
        """Add the batch (with log P_λ(x) = ``log_p`` at the current λ) to the samples seen, and return
        log Z(λ) = log mean over batches of Σ_i w_i P_λ(x_i)/q(x_i). An exact batch (weights q(x) over the whole
        enumeration) gives Z exactly and is not kept."""
        if batch.exact:
            return log_mean_exp(log_p - batch.log_q, batch.weights)
        with np.errstate(divide="ignore"):  # log P_0(x)/q(x) + log w
            seen = log_p - self._features(batch) @ self.lam - batch.log_q + np.log(batch.weights)
        self._seen = np.concatenate([self._seen, seen])
        self._seen_phi = np.concatenate([self._seen_phi, self._features(batch)])
        self._batches += 1
        return self.value

    @property
    def value(self) -> float:
        if self._batches == 0:
            return -np.inf
        terms = self._seen + self._seen_phi @ self.lam
        log_sum = log_mean_exp(terms, np.ones(len(terms)))
        if not np.isfinite(log_sum) and self._batches >= self.patience:
            raise FloatingPointError(
                f"every importance weight P/q has been 0 for {self._batches} batches: the target has no mass "
                "where the proposal samples")
        return log_sum - np.log(self._batches)

    def update(self, batch, logp_pi) -> None:
        """One dual-ascent step on the policy's moments (Eq. 6.11)."""
        w = batch.weights * np.exp(logp_pi - batch.log_q)
        if not w.sum() > 0:
            raise FloatingPointError("every weight π/q of the batch underflowed: the policy has moved too far from "
                                     "the proposal to estimate its moments")
        estimate = (w / w.sum()) @ self._features(batch)
        self.moment = estimate if self.moment is None else self.decay * self.moment + (1 - self.decay) * estimate
        self.lam = self.lam + self.rate * (self.mu_bar - self.moment)

    def metrics(self) -> dict:
        out = {f"lambda_{i}": float(l) for i, l in enumerate(self.lam)}
        if self.moment is not None:
            out.update({f"moment_{i}": float(m) for i, m in enumerate(self.moment)})
        return out

    def state(self) -> dict:
        return {"lam": self.lam, "moment": self.lam * np.nan if self.moment is None else self.moment,
                "seen": self._seen, "seen_phi": self._seen_phi, "batches": self._batches}

    def load_state(self, state) -> None:
        self.lam = np.asarray(state["lam"], dtype=np.float64).reshape(-1)
        moment = np.asarray(state["moment"], dtype=np.float64).reshape(-1)
        self.moment = None if np.isnan(moment).all() else moment
        self._seen = np.asarray(state["seen"], dtype=np.float64).reshape(-1)
        self._seen_phi = np.asarray(state["seen_phi"], dtype=np.float64).reshape(len(self._seen), self.lam.size)
        self._batches = int(state["batches"])


class ProposalMixin:
    """Sampling from a proposal q (a frozen copy of π), replaced by π when the estimated KL(p‖π) < KL(p‖q)."""

    calibration: MomentCalibration | None = None

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
        if self.calibration is not None:
            log_z = self.calibration.log_z(batch, log_p)
        elif batch.exact:
            log_z = self.log_z.exact
        else:
            log_z = self.log_z.update(log_p - batch.log_q)
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

    def after_step(self, policy, batch, metrics):
        if self.calibration is not None and "logp_pi" in batch.extra:
            self.calibration.update(batch, batch.extra["logp_pi"])
            metrics.update(self.calibration.metrics())

    def state(self):
        out = {"log_z_sum": self.log_z.log_sum, "log_z_count": self.log_z.count, "replacements": self.replacements}
        if self.q is not None:
            out["proposal"] = self.q.state_dict()
        if self.calibration is not None:
            out["calibration"] = self.calibration.state()
        return out

    def load_state(self, state):
        self.log_z.log_sum = float(state.get("log_z_sum", self.log_z.log_sum))
        self.log_z.count = int(state.get("log_z_count", self.log_z.count))
        self.replacements = int(state.get("replacements", 0))
        if self.q is not None and "proposal" in state:
            self.q.load_state_dict(state["proposal"])
        if ("calibration" in state) != (self.calibration is not None):
            raise ValueError("the checkpoint was written by a run " + ("with" if "calibration" in state else "without")
                             + " λ calibration; resume it the same way, or start a new run elsewhere")
        if self.calibration is not None:
            self.calibration.load_state(state["calibration"])


class DPG(ProposalMixin, Method):
    """Eq. (6.7)–(6.8): DPG with coefficients P(x)/(Z q(x)) (or, with ``baseline``, GDC++'s
    (P(x)/Z − π(x))/q(x)) on samples of q.

    ``target_fn(batch)`` gives log P(x); a :class:`MomentCalibration` may stand in for it, and then λ follows
    the policy's moments (Eq. 6.11)."""

    name = "gdc"

    def __init__(self, ref, policy_init, target_fn, proposal: str = "adaptive", baseline: bool = False,
                 log_z: float | None = None, tokenizer=None):
        self.ref, self.target_fn, self.baseline, self.tokenizer = ref, target_fn, baseline, tokenizer
        if isinstance(target_fn, MomentCalibration):
            if log_z is not None:
                raise ValueError("an exact log Z cannot be given with a moment calibration: Z changes with λ")
            self.calibration = target_fn
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
