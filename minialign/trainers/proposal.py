"""Sampling from a proposal, the target's normaliser, and λ calibration: what DPG and f-DPG share (chapters 06–07).

Both methods minimise a divergence to a target p = P/Z known only through its log-scores log P(x). They draw
from a proposal q (a frozen copy of π_θ, or π_θ itself), estimate Z = E_q[P/q] by importance sampling from
the same samples, and — Khalifa et al. (ICLR 2021), Algorithm 1 — replace q by π_θ whenever the estimated
KL(p‖π_θ) falls below KL(p‖q) (the KL-adaptive update). :class:`ProposalMethod` holds that machinery; a
method on it supplies only its coefficients (gdc.py, fdpg.py).

With prompts (chapter 06, §10; Korbak et al. 2022, CDPG) the target is conditional, p(y|x) = P(x, y)/Z(x), with
one normaliser per prompt: :class:`PromptLogZ` keeps a running estimate of each Z(x), and an exact batch of the
prompted lab gives every Z(x) exactly.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..logspace import log_mean_exp, logsumexp
from ..tensor import Tensor
from .common import Batch, Method, Sampling, frozen_copy, sample_batch


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


class PromptLogZ:
    """Eq. (6.15), CDPG's normalisers: one running importance-sampling estimate of
    log Z(x) = log E_{y∼q(·|x)}[P(x, y)/q(y|x)] per prompt, averaged over every group drawn for x so far.

    A prompt whose groups have shown no mass yet has log Z(x) = −inf: its rows carry no signal. If after
    ``patience`` batches no prompt has shown any mass, the target has no mass where the proposal samples: an error.
    """

    def __init__(self, length: int = 0, patience: int = 10):
        self.length = length  # the prompts' number of tokens
        self.estimates: dict[bytes, RunningLogZ] = {}
        self.tokens: dict[bytes, np.ndarray] = {}
        self.patience, self.batches = patience, 0

    def update(self, batch, log_p_over_q) -> np.ndarray:
        """Average the batch's groups into their prompts' estimates; returns each row's log Z(x)."""
        out = np.empty(len(batch))
        for g in np.unique(batch.group):
            at = np.flatnonzero(batch.group == g)
            prompt = batch.tokens[at[0], :batch.prompt_len[at[0]]]
            key = prompt.tobytes()
            self.tokens[key] = prompt
            out[at] = self.estimates.setdefault(key, RunningLogZ(patience=np.inf)).update(log_p_over_q[at])
        self.batches += 1
        if self.batches >= self.patience and not any(np.isfinite(e.log_sum) for e in self.estimates.values()):
            raise FloatingPointError(f"every importance weight P/q has been 0 for {self.batches} batches, for every "
                                     "prompt: the target has no mass where the proposal samples")
        return out

    def value(self, prompt) -> float:
        """The current estimate of log Z(x) for the prompt's tokens (−inf if never seen with mass)."""
        e = self.estimates.get(np.asarray(prompt, dtype=np.int64).tobytes())
        return -np.inf if e is None else e.value

    def state(self) -> dict:
        keys = list(self.estimates)
        return {"prompts": np.array([self.tokens[k] for k in keys], dtype=np.int64).reshape(len(keys), self.length),
                "log_sum": np.array([self.estimates[k].log_sum for k in keys]),
                "count": np.array([self.estimates[k].count for k in keys]), "batches": self.batches}

    def load_state(self, state) -> None:
        self.estimates, self.tokens = {}, {}
        prompts = np.asarray(state["prompts"], dtype=np.int64)
        for prompt, log_sum, count in zip(prompts, state["log_sum"], state["count"]):
            e = self.estimates[prompt.tobytes()] = RunningLogZ(patience=np.inf)
            e.log_sum, e.count, self.tokens[prompt.tobytes()] = float(log_sum), int(count), prompt
        self.batches = int(state["batches"])


class MomentCalibration:
    """Eq. (6.11), this course's extension of GDC: λ fitted to the policy's own moments. The target is

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
        if not rate > 0 or not np.isfinite(rate):
            raise ValueError(f"the calibration rate η must be a finite number > 0; got {rate}")
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


class Scored(NamedTuple):
    """A batch scored against the target: log π(x) (differentiable and as float64), log P(x) and log Z (a
    number; with prompts, each row's log Z(x))."""

    logp: Tensor
    logp_pi: np.ndarray
    log_p: np.ndarray
    log_z: float | np.ndarray

    def row_log_z(self) -> np.ndarray:
        return np.broadcast_to(np.asarray(self.log_z, dtype=np.float64), self.log_p.shape)


def target_ratio(s: Scored, batch: Batch):
    """Where the normaliser is known (finite: Z, or the row's Z(x)), and there p(x)/q(x) = P(x)/(Z q(x)); 0 elsewhere.
    Returns (known ``[B]``, p/q ``[B]``)."""
    log_z = s.row_log_z()
    known = np.isfinite(log_z)
    return known, np.where(known, np.exp(s.log_p - np.where(known, log_z, 0.0) - batch.log_q), 0.0)


PROPOSALS = ("adaptive", "fixed", "policy")


def check_proposal(proposal: str) -> None:
    """Refuse a proposal that is not one of :data:`PROPOSALS`."""
    if proposal not in PROPOSALS:
        raise ValueError(f"proposal must be one of {', '.join(PROPOSALS)}; got {proposal!r}")


class ProposalMethod(Method):
    """A method that samples from a proposal q (``adaptive``: a frozen copy of π, replaced by π when the
    estimated KL(p‖π) < KL(p‖q), Eq. 6.9; ``fixed``: the copy is kept; ``policy``: π itself) towards a target
    given by ``target(batch) → log P(x)`` — or by a :class:`MomentCalibration`, whose λ follows π's moments.
    ``log_z`` is an exact log Z if known (None: estimated); ``sampling`` (``common.Sampling``) the prompts, group
    size and tokenizer."""

    def __init__(self, ref, policy_init, target, proposal: str, log_z: float | None,
                 sampling: Sampling | None = None):
        check_proposal(proposal)
        self.set_sampling(sampling)
        self.calibration = target if isinstance(target, MomentCalibration) else None
        if self.calibration is not None and log_z is not None:
            raise ValueError("an exact log Z cannot be given with a moment calibration: Z changes with λ")
        if self.prompts is not None and (self.calibration is not None or log_z is not None):
            raise ValueError("with prompts each prompt has its own Z(x), estimated per prompt (exact on the prompted "
                             "lab's exact batches): neither one exact log Z nor a λ calibration applies")
        self.ref, self.target_fn, self.proposal = ref, target, proposal
        self.q = frozen_copy(policy_init) if proposal != "policy" else None
        self.log_z = RunningLogZ(log_z)
        self.prompt_log_z = PromptLogZ(0 if self.prompts is None else self.prompts.length)
        self.replacements = 0

    def log_target(self, batch: Batch) -> np.ndarray:
        log_p = np.asarray(self.target_fn(batch), dtype=np.float64)
        if log_p.shape != (len(batch),):
            raise ValueError(f"the target returned shape {log_p.shape}; expected ({len(batch)},)")
        if np.isnan(log_p).any() or np.isposinf(log_p).any():
            raise ValueError("the target's log-scores log P(x) contain NaN or +inf")
        return log_p

    def draw(self, policy, n, rng) -> Batch:
        return sample_batch(self.q if self.q is not None else policy, n, rng, ref=self.ref, tokenizer=self.tokenizer,
                            prompts=self.prompts, group_size=self.group_size)

    def score(self, policy, batch: Batch) -> Scored:
        """log π, log P and log Z of the batch (log Z: exact on exact batches, else the running estimate; with
        prompts, each row's log Z(x))."""
        logp = batch.logprob(policy)
        logp_pi = logp.numpy().astype(np.float64)
        batch.extra["logp_pi"] = logp_pi
        log_p = self.log_target(batch)
        if self.calibration is not None:
            log_z = self.calibration.log_z(batch, log_p)
        elif batch.prompt_len is not None and batch.exact:  # every response of every prompt: Z(x) = Σ_y P(x, y)
            sums = {g: logsumexp(log_p[batch.group == g]) for g in np.unique(batch.group)}
            log_z = np.array([sums[g] for g in batch.group])
        elif batch.prompt_len is not None:
            log_z = self.prompt_log_z.update(batch, log_p - batch.log_q)
        elif batch.exact:
            log_z = self.log_z.exact
        else:
            log_z = self.log_z.update(log_p - batch.log_q)
        return Scored(logp, logp_pi, log_p, log_z)

    def adapt(self, policy, batch: Batch, s: Scored, metrics: dict) -> None:
        """Eq. (6.9): estimate KL(p‖π) and KL(p‖q) by importance sampling; q ← π if π is closer."""
        known, ratio = target_ratio(s, batch)
        shown = (float(s.log_z) if np.ndim(s.log_z) == 0
                 else float(np.mean(s.log_z[known])) if known.any() else -np.inf)
        if not known.any():
            metrics.update(log_z=shown, replacements=self.replacements)
            return
        w = ratio * batch.weights  # with prompts: the mean over the batch's prompts of each one's estimate
        log_p = np.where(w > 0, s.log_p, 0.0)  # points of zero target mass contribute 0·log 0 = 0
        log_z = np.where(known, s.row_log_z(), 0.0)
        kl_p_pi = float(np.sum(w * (log_p - log_z - s.logp_pi)))
        kl_p_q = float(np.sum(w * (log_p - log_z - batch.log_q)))
        metrics.update(kl_p_pi_est=kl_p_pi, kl_p_q_est=kl_p_q, log_z=shown, replacements=self.replacements)
        if self.proposal == "adaptive" and not batch.exact and kl_p_pi < kl_p_q:
            self.q = frozen_copy(policy)
            self.replacements += 1

    def after_step(self, policy, batch, metrics):
        if self.calibration is not None and "logp_pi" in batch.extra:
            self.calibration.update(batch, batch.extra["logp_pi"])
            metrics.update(self.calibration.metrics())

    def settings(self) -> dict:
        calibration = (None if self.calibration is None
                       else {"rate": self.calibration.rate, "decay": self.calibration.decay})
        return {"proposal": self.proposal, "calibration": calibration}

    def state(self):
        out = {"log_z_sum": self.log_z.log_sum, "log_z_count": self.log_z.count, "replacements": self.replacements}
        if self.prompts is not None:
            out["prompt_log_z"] = self.prompt_log_z.state()
        if self.q is not None:
            out["proposal"] = self.q.state_dict()
        if self.calibration is not None:
            out["calibration"] = self.calibration.state()
        return out

    def load_state(self, state):
        self.log_z.log_sum = float(state.get("log_z_sum", self.log_z.log_sum))
        self.log_z.count = int(state.get("log_z_count", self.log_z.count))
        self.replacements = int(state.get("replacements", 0))
        if "prompt_log_z" in state:
            self.prompt_log_z.load_state(state["prompt_log_z"])
        if self.q is not None and "proposal" in state:
            self.q.load_state_dict(state["proposal"])
        if ("calibration" in state) != (self.calibration is not None):
            raise ValueError("the checkpoint was written by a run " + ("with" if "calibration" in state else "without")
                             + " λ calibration; resume it the same way, or start a new run elsewhere")
        if self.calibration is not None:
            self.calibration.load_state(state["calibration"])
