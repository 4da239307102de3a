"""GDC's target (chapter 06): constraints, the energy-based model, and λ by moment matching.

Generation with Distributional Control (Khalifa, Elsahar & Dymetman, ICLR 2021) states what the aligned
model should be as constraints on a distribution p over sequences x:

    pointwise       b(x) ∈ {0, 1} holds on every sample: p(b(x) = 1) = 1,
    distributional  E_{x∼p}[φ_i(x)] = μ̄_i for i = 1..k (e.g. φ = "is a female name", μ̄ = 0.5).   (6.1)

Among the distributions C that meet them it takes the one closest to the base model a, the
I-projection (Csiszár 1975)

    p = argmin_{q ∈ C} KL(q ‖ a),                                                               (6.2)

which has the energy-based form

    P(x) = a(x) b(x) exp(λ·φ(x)),   p(x) = P(x)/Z,   Z = Σ_x P(x).                                (6.3)

λ is found by moment matching. The dual

    L(λ) = log Z(λ) − λ·μ̄,   ∇L = E_{p_λ}[φ] − μ̄,   ∇²L = Cov_{p_λ}(φ)                             (6.4)

is convex, and its minimiser is the λ whose moments equal μ̄. On the exact lab every sum is a sum over
the enumeration; on real tasks the expectation comes from samples x_i ∼ a by self-normalised importance
sampling (SNIS):

    E_{p_λ}[φ] ≈ Σ_i w_i φ(x_i) / Σ_i w_i,   w_i = b(x_i) e^{λ·φ(x_i)},   Z ≈ (1/n) Σ_i w_i.          (6.5)

This is the exact problem again with a replaced by the empirical distribution of the sample, so one
Newton solver serves both. With pointwise constraints only, λ is empty, p = a(·|b = 1) and Z is the
acceptance rate E_a[b] of a under b.

A solution exists only if μ̄ lies in the interior of the set of means φ can take on the support of a·b:
μ̄ = 1 for a binary feature that no supported x has, or any μ̄ beyond [min φ, max φ] there, or on its
boundary, would need λ = ±∞. The solvers say so instead of returning a huge λ.
"""
from __future__ import annotations

import math
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .logspace import logsumexp

__all__ = [
    "Feature", "Pointwise", "EBM", "LambdaFit", "FitReport", "KNOWN_CONSTRAINTS", "DEFAULT_POINTWISE",
    "DEFAULT_DISTRIBUTIONAL", "predicate", "feature", "pointwise", "parse_constraint", "log_scores", "dual",
    "fit_lambda_exact", "fit_lambda_snis", "fit_names_ebm", "names_of",
]

# ------------------------------------------------------------------------------------------ features


def _as_names(names) -> list[str]:
    if isinstance(names, str):
        raise TypeError("expected a sequence of names, not a single str")
    names = list(names)
    for n in names:
        if not isinstance(n, str):
            raise TypeError(f"names must be str; got {type(n).__name__} ({n!r})")
    return names


@dataclass(frozen=True)
class Feature:
    """A distributional feature φ: decoded names → float64 values ``[n]`` (Eq. (6.1), right).

    ``binary`` features take values in {0, 1}, so their target moments μ̄ lie in [0, 1].
    """

    name: str
    fn: Callable[[list[str]], Sequence[float]]
    binary: bool = False

    def __call__(self, names) -> np.ndarray:
        names = _as_names(names)
        values = np.asarray(self.fn(names), dtype=np.float64)
        if values.shape != (len(names),):
            raise ValueError(f"feature {self.name!r} must give one value per name, shape ({len(names)},); "
                             f"got {values.shape}")
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"feature {self.name!r} gave {values[i]} for name {names[i]!r}; "
                             "features must be finite")
        if self.binary and not np.isin(values, (0.0, 1.0)).all():
            i = int(np.flatnonzero(~np.isin(values, (0.0, 1.0)))[0])
            raise ValueError(f"binary feature {self.name!r} gave {values[i]} for name {names[i]!r}; expected 0 or 1")
        return values


@dataclass(frozen=True)
class Pointwise:
    """A pointwise constraint: a predicate b(x) on decoded names → bool ``[n]`` (Eq. (6.1), left)."""

    name: str
    fn: Callable[[list[str]], Sequence[bool]]

    def __call__(self, names) -> np.ndarray:
        names = _as_names(names)
        values = np.asarray(self.fn(names))
        if values.shape != (len(names),):
            raise ValueError(f"pointwise constraint {self.name!r} must give one value per name, "
                             f"shape ({len(names)},); got {values.shape}")
        if values.dtype != bool:
            if not np.isin(values, (0, 1)).all():
                raise ValueError(f"pointwise constraint {self.name!r} must give booleans (or 0/1); "
                                 f"got values such as {values[~np.isin(values, (0, 1))][0]!r}")
            values = values.astype(bool)
        return values

    def log_b(self, names) -> np.ndarray:
        """log b(x): 0 where the predicate holds, −inf where it does not."""
        return np.where(self(names), 0.0, -np.inf)


# ------------------------------------------------------------------------------------------ registry

KNOWN_CONSTRAINTS = {
    "female": "the name is female: its census label, or the gender classifier's decision for names "
              "outside the corpus (minialign.gender.female_feature)",
    "contains:<letters>": "the name contains the letters, e.g. contains:z",
    "startswith:<prefix>": "the name starts with the prefix, e.g. startswith:k",
    "endswith:<suffix>": "the name ends with the suffix, e.g. endswith:o",
}
# A pointwise constraint with a low base rate under the pre-trained names model (2.4% of its samples
# contain a z: 481 of 20,000 with seed 0), and a distributional constraint in the spirit of the GDC paper's
# gender experiment (the base model's samples are about 80% female names).
DEFAULT_POINTWISE = "contains:z"
DEFAULT_DISTRIBUTIONAL = "female=0.5"

_LETTERS = re.compile(r"[a-z]+")


def _known() -> str:
    return ", ".join(KNOWN_CONSTRAINTS)


def predicate(name: str) -> Callable[[list[str]], np.ndarray]:
    """The 0/1 function of names behind a registry name (``female``, ``contains:z``, ...)."""
    if not isinstance(name, str):
        raise TypeError(f"a constraint name must be a str; got {type(name).__name__}")
    if name == "female":
        def female(names):
            from .gender import female_feature  # loaded on first use: it reads the corpus and the classifier

            return female_feature(names)

        return female
    kind, sep, arg = name.partition(":")
    tests = {"contains": lambda s: arg in s, "startswith": lambda s: s.startswith(arg),
             "endswith": lambda s: s.endswith(arg)}
    if not sep or kind not in tests:
        raise ValueError(f"unknown constraint {name!r}; known: {_known()}")
    if not _LETTERS.fullmatch(arg):
        raise ValueError(f"constraint {name!r} needs one or more letters a-z after '{kind}:'; got {arg!r}")
    test = tests[kind]
    return lambda names: np.array([test(s) for s in names], dtype=bool)


def feature(name: str) -> Feature:
    """The binary distributional feature φ(x) = 1[predicate holds] of a registry name."""
    fn = predicate(name)
    return Feature(name, lambda names: np.asarray(fn(names), dtype=np.float64), binary=True)


def pointwise(name: str) -> Pointwise:
    """The pointwise constraint b(x) = 1[predicate holds] of a registry name."""
    fn = predicate(name)
    return Pointwise(name, lambda names: np.asarray(fn(names), dtype=bool))


def parse_constraint(spec: str):
    """``"name=μ̄"`` → (Feature, μ̄), a distributional constraint; ``"name"`` → Pointwise, a pointwise one.

    Every registry name works both ways: ``"female=0.5"`` asks for half female names, ``"female"`` for
    female names only; ``"contains:z"`` for names with a z only, ``"contains:z=0.2"`` for a fifth of them.
    """
    if not isinstance(spec, str):
        raise TypeError(f"a constraint is a str such as 'female=0.5' or 'contains:z'; got {type(spec).__name__}")
    spec = spec.strip()
    name, eq, value = spec.partition("=")
    name = name.strip()
    if not eq:
        return pointwise(name)
    phi = feature(name)
    try:
        mu_bar = float(value)
    except ValueError:
        raise ValueError(f"constraint {spec!r}: the target moment after '=' must be a number; "
                         f"got {value.strip()!r}") from None
    if not (0.0 <= mu_bar <= 1.0):  # NaN fails this too
        raise ValueError(f"constraint {spec!r}: the feature {name!r} is binary, so its target moment μ̄ must lie "
                         f"in [0, 1]; got {mu_bar}")
    if mu_bar == 1.0:
        raise ValueError(f"constraint {spec!r}: μ̄ = 1 asks that every name be {name}, which the tilt e^{{λφ}} reaches "
                         f"only at λ = +∞; use the pointwise constraint {name!r} for that")
    if mu_bar == 0.0:
        raise ValueError(f"constraint {spec!r}: μ̄ = 0 asks that no name be {name}, which needs λ = −∞ (a pointwise "
                         f"constraint can require {name!r} but not forbid it); ask for a small fraction instead, "
                         f"e.g. {name}=0.05")
    return phi, mu_bar


# ------------------------------------------------------------------------------------------ the EBM


def _log_a_array(log_a, n: int | None = None) -> np.ndarray:
    """log a as float64 ``[n]`` (from an array or a Tensor); NaN and +inf are errors, −inf is zero mass."""
    if hasattr(log_a, "numpy") and not isinstance(log_a, np.ndarray):
        log_a = log_a.numpy()
    log_a = np.asarray(log_a, dtype=np.float64)
    if n is None:
        if log_a.ndim != 1:
            raise ValueError(f"log a must be one-dimensional, one entry per sequence; got shape {log_a.shape}")
        n = log_a.shape[0]
    if log_a.shape != (n,):
        raise ValueError(f"log a must have one entry per sequence, shape ({n},); got {log_a.shape}")
    if np.isnan(log_a).any() or np.isposinf(log_a).any():
        raise ValueError("log a contains NaN or +inf; expected log-probabilities (−inf for zero mass)")
    return log_a


def log_scores(log_a, b, phi, lam) -> np.ndarray:
    """Eq. (6.3) on arrays: log P(x) = log a(x) + log b(x) + λ·φ(x), −inf where b(x) = 0.

    ``log_a [N]``, ``b [N]`` booleans (None: no pointwise constraint), ``phi [N, k]`` (or ``[N]``), ``lam [k]``.
    """
    log_a = _log_a_array(log_a)
    n = log_a.shape[0]
    b = _b_array(b, n)
    phi = _phi_array(phi, n)
    lam = _mu_array(lam, phi.shape[1], "λ")
    energy = phi @ lam if phi.shape[1] else np.zeros(n)
    return np.where(b, log_a + energy, -np.inf)


class EBM:
    """Eq. (6.3): P(x) = a(x) b(x) exp(λ·φ(x)) on decoded names, b the product of the pointwise predicates.

    ``features`` (k of them) and ``lam`` (k numbers) give the exponential tilt; ``mu_bar`` records the target
    moments λ was fitted to (optional).
    """

    def __init__(self, features: Sequence[Feature] = (), lam=None, pointwise: Sequence[Pointwise] = (), mu_bar=None):
        self.features = tuple(features)
        self.pointwise = tuple(pointwise)
        for f in self.features:
            if not isinstance(f, Feature):
                raise TypeError(f"features must be Feature objects; got {type(f).__name__}")
        for c in self.pointwise:
            if not isinstance(c, Pointwise):
                raise TypeError(f"pointwise constraints must be Pointwise objects; got {type(c).__name__}")
        k = len(self.features)
        self.lam = _mu_array(np.zeros(k) if lam is None else lam, k, "λ")
        self.mu_bar = None if mu_bar is None else _mu_array(mu_bar, k, "μ̄")

    @property
    def k(self) -> int:
        return len(self.features)

    def phi(self, names) -> np.ndarray:
        """φ(x) for each name: ``[n, k]`` float64."""
        names = _as_names(names)
        if not self.features:
            return np.zeros((len(names), 0))
        return np.stack([f(names) for f in self.features], axis=1)

    def b(self, names) -> np.ndarray:
        """b(x) = Π_j b_j(x) for each name: bool ``[n]`` (all True without pointwise constraints)."""
        names = _as_names(names)
        out = np.ones(len(names), dtype=bool)
        for c in self.pointwise:
            out &= c(names)
        return out

    def log_score(self, names, log_a) -> np.ndarray:
        """Eq. (6.3): log P(x) = log a(x) + log b(x) + λ·φ(x) for each name, with log b ∈ {0, −inf}."""
        names = _as_names(names)
        log_a = _log_a_array(log_a, len(names))
        energy = np.zeros(len(names))
        for f, l in zip(self.features, self.lam):
            with np.errstate(over="ignore", invalid="ignore"):
                term = l * f(names)
            if np.isnan(term).any() or np.isinf(term).any():
                raise ValueError(f"the energy λ·φ of feature {f.name!r} is not finite (λ = {l})")
            energy += term
        return np.where(self.b(names), log_a + energy, -np.inf)

    def __repr__(self) -> str:
        parts = ["a(x)"] + [f"1[{c.name}]" for c in self.pointwise]
        tilt = " + ".join(f"{l:.4g}·{f.name}" for f, l in zip(self.features, self.lam))
        if tilt:
            parts.append(f"exp({tilt})")
        return f"EBM(P(x) = {' · '.join(parts)})"


# ------------------------------------------------------------------------------------------ moment matching


@dataclass
class LambdaFit:
    """The result of moment matching. Unpacks as ``lam, moment_error = fit``.

    lam           λ, float64 ``[k]``.
    moment_error  max_i |E_{p_λ}[φ_i] − μ̄_i| at the returned λ (on the sample, for SNIS).
    moments       E_{p_λ}[φ], ``[k]``.
    log_z         log Z(λ) = log Σ_x a(x) b(x) e^{λ·φ(x)} (exact), or log (1/n) Σ_i w_i (SNIS, Eq. (6.5)).
    iterations    Newton steps taken.
    n_support     points with a(x) b(x) > 0 (exact) or samples with b = 1 (SNIS).
    ess           effective sample size (Σ w)²/Σ w² of the SNIS weights (for exact fits: 1/Σ p_λ²).
    """

    lam: np.ndarray
    moment_error: float
    moments: np.ndarray
    log_z: float
    iterations: int
    n_support: int
    ess: float

    def __iter__(self):
        yield self.lam
        yield self.moment_error


def _b_array(b, n: int) -> np.ndarray:
    if b is None:
        return np.ones(n, dtype=bool)
    b = np.asarray(b)
    if b.shape != (n,):
        raise ValueError(f"b must have one entry per sequence, shape ({n},); got {b.shape}")
    if b.dtype != bool:
        if not np.isin(b, (0, 1)).all():
            raise ValueError("b must be booleans (or 0/1): b(x) = 1 where the pointwise constraints hold")
        b = b.astype(bool)
    return b


def _phi_array(phi, n: int) -> np.ndarray:
    phi = np.asarray(phi, dtype=np.float64)
    if phi.ndim == 1:
        phi = phi[:, None]
    if phi.ndim != 2 or phi.shape[0] != n:
        raise ValueError(f"φ must have shape [{n}, k] (or [{n}]) — one row per sequence; got {phi.shape}")
    bad = ~np.isfinite(phi)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"φ has a non-finite value ({phi[row, col]}) in feature column {col} at row {row}")
    return phi


def _mu_array(mu, k: int, what: str) -> np.ndarray:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    if mu.shape != (k,):
        raise ValueError(f"{what} must have one entry per feature ({k}); got shape {mu.shape}")
    if not np.isfinite(mu).all():
        raise ValueError(f"{what} must be finite; got {mu}")
    return mu


def _state(log_base, phi, lam, mu_bar):
    """Dual value, gradient and Hessian at λ (Eq. (6.4)), and p_λ on the support."""
    logits = log_base + phi @ lam
    log_z = float(logsumexp(logits))
    p = np.exp(logits - log_z)
    moments = p @ phi
    centred = phi - moments
    hess = centred.T @ (p[:, None] * centred)
    return log_z - lam @ mu_bar, moments - mu_bar, hess, log_z, p, moments


def dual(log_a, b, phi, mu_bar, lam):
    """Eq. (6.4): the dual L(λ) = log Z(λ) − λ·μ̄ with its gradient E_{p_λ}[φ] − μ̄ and Hessian Cov_{p_λ}(φ).

    Returns (value, gradient ``[k]``, Hessian ``[k, k]``) for arrays over an enumeration (as
    :func:`fit_lambda_exact` takes them).
    """
    log_a = _log_a_array(log_a)
    n = log_a.shape[0]
    b, phi = _b_array(b, n), _phi_array(phi, n)
    k = phi.shape[1]
    mu_bar, lam = _mu_array(mu_bar, k, "μ̄"), _mu_array(lam, k, "λ")
    keep = b & np.isfinite(log_a)
    if not keep.any():
        raise ValueError("a·b has no mass: no sequence with a(x) > 0 satisfies the pointwise constraints")
    value, grad, hess, *_ = _state(log_a[keep], phi[keep], lam, mu_bar)
    return value, grad, hess


def _check_reachable(phi: np.ndarray, mu_bar: np.ndarray, where: str, labels: Sequence[str]):
    """μ̄_i must lie strictly inside [min φ_i, max φ_i] over the support (or equal a constant φ_i)."""
    lo, hi = phi.min(axis=0), phi.max(axis=0)
    for i, m, l, h in zip(labels, mu_bar, lo, hi):
        if l == h == m:
            continue
        if m < l or m > h:
            raise ValueError(
                f"infeasible constraint: μ̄[{i}] = {m:g} lies outside [{l:g}, {h:g}], the values feature {i!r} "
                f"takes on {where}; no λ reaches it (it would need λ → ±∞)")
        if m == l or m == h:
            raise ValueError(
                f"infeasible constraint: μ̄[{i}] = {m:g} is on the boundary of [{l:g}, {h:g}], the values feature "
                f"{i!r} takes on {where}; reaching it needs λ[{i}] = {'+' if m == h else '−'}∞ (use a pointwise "
                "constraint to keep only those points)")
    # Exact linear relations v·φ(x) = c on the support (e.g. φ₂ = 1 − φ₁) bind the means too: v·μ̄ must be c.
    centre = phi.mean(axis=0)
    spread = phi - centre
    evals, evecs = np.linalg.eigh(spread.T @ spread / len(phi))
    scale = max(float(evals.max()), 1e-300)
    for val, v in zip(evals, evecs.T):
        if val <= 1e-12 * scale and abs(v @ (centre - mu_bar)) > 1e-9 * (1.0 + np.abs(centre).max()):
            raise ValueError(
                f"infeasible constraint: on {where} the features satisfy the linear relation "
                f"{np.round(v, 6)}·φ(x) = {v @ centre:.6g}, but μ̄ = {mu_bar} gives {v @ mu_bar:.6g}; no λ reaches it")


def _newton(log_base, phi, mu_bar, where: str, tol: float, max_iter: int, lam0=None, labels=None) -> LambdaFit:
    """Minimise the convex dual of Eq. (6.4) by damped Newton steps with a backtracking (Armijo) line search.

    ``log_base`` are finite log-weights of the supported points (log a + log b, or log b − log n), ``phi``
    their features. Stops when max_i |E_{p_λ}[φ_i] − μ̄_i| ≤ tol.
    """
    n, k = phi.shape
    if k == 0:
        log_z = float(logsumexp(log_base))
        p = np.exp(log_base - log_z)
        return LambdaFit(np.zeros(0), 0.0, np.zeros(0), log_z, 0, n, float(1.0 / np.sum(p * p)))
    labels = [str(i) for i in range(k)] if labels is None else [str(x) for x in labels]
    if len(labels) != k:
        raise ValueError(f"feature_names must name the {k} features; got {len(labels)} names")
    _check_reachable(phi, mu_bar, where, labels)
    span = np.maximum(phi.max(axis=0) - phi.min(axis=0), 1e-300)
    rounding = 1e4 * np.finfo(float).eps * (1.0 + np.abs(phi).max())
    lam = np.zeros(k) if lam0 is None else _mu_array(lam0, k, "initial λ").copy()
    value, grad, hess, log_z, p, moments = _state(log_base, phi, lam, mu_bar)
    it = 0
    while np.max(np.abs(grad)) > tol:
        if it >= max_iter or np.max(np.abs(lam) * span) > 2000.0:
            raise ValueError(
                f"infeasible constraint: moment matching did not reach μ̄ = {mu_bar} (moment error "
                f"{np.max(np.abs(grad)):.3g} after {it} Newton steps, λ = {lam}); μ̄ lies outside or on the "
                f"boundary of the set of means φ can take on {where}, which would need infinite λ")
        it += 1
        step = np.linalg.lstsq(hess, -grad, rcond=1e-13)[0]  # the Newton step (least norm if Cov is singular)
        slope = grad @ step
        if not slope < 0:  # the Hessian cannot see the gradient's direction: fall back to steepest descent
            step, slope = -grad, -(grad @ grad)
        t, slack = 1.0, 8 * np.finfo(float).eps * (1.0 + abs(value))
        while True:
            trial = _state(log_base, phi, lam + t * step, mu_bar)
            if trial[0] <= value + 1e-4 * t * slope + slack:
                break
            t *= 0.5
            if t < 1e-12:
                if np.max(np.abs(grad)) <= rounding:  # as close as float64 gets for features of this size
                    return LambdaFit(lam, float(np.max(np.abs(grad))), moments, log_z, it, n,
                                     float(1.0 / np.sum(p * p)))
                raise ValueError(f"moment matching stalled: no decrease of the dual along the Newton step at λ = "
                                 f"{lam} (moment error {np.max(np.abs(grad)):.3g}); μ̄ = {mu_bar} is probably "
                                 f"on the boundary of what φ can reach on {where}")
        lam = lam + t * step
        value, grad, hess, log_z, p, moments = trial
    return LambdaFit(lam, float(np.max(np.abs(grad))), moments, log_z, it, n, float(1.0 / np.sum(p * p)))


def fit_lambda_exact(log_a, b, phi, mu_bar, *, tol: float = 1e-10, max_iter: int = 100, lam0=None,
                     feature_names=None) -> LambdaFit:
    """λ of Eq. (6.3) by moment matching on an exact enumeration: minimise the dual of Eq. (6.4).

    ``log_a [S]`` log a(x) over all sequences (e.g. ``lab.log_probs(model)``; −inf for zero mass), ``b [S]``
    booleans or None, ``phi [S, k]`` (or ``[S]``), ``mu_bar [k]``. Damped Newton in float64 until the moments
    match to ``tol``. With k = 0 (pointwise only) λ is empty and Z = Σ_x a(x) b(x), the acceptance rate.
    Raises ValueError if a·b has no mass or μ̄ is out of reach (λ would be infinite); ``feature_names``
    label the features in those messages (default: their column numbers). ``lam0`` is the starting λ.
    """
    log_a = _log_a_array(log_a)
    n = log_a.shape[0]
    b, phi = _b_array(b, n), _phi_array(phi, n)
    mu_bar = _mu_array(mu_bar, phi.shape[1], "μ̄")
    keep = b & np.isfinite(log_a)
    if not keep.any():
        raise ValueError(f"no sequence with a(x) > 0 satisfies the pointwise constraints (b = 1 on {int(b.sum())} "
                         f"of {n} sequences, none of them in the support of a): a·b has no mass")
    where = f"the support of a·b ({int(keep.sum())} of {n} sequences)"
    return _newton(log_a[keep], phi[keep], mu_bar, where, tol, max_iter, lam0, feature_names)


MIN_ESS = 10  # below this effective sample size an SNIS fit is warned about


def fit_lambda_snis(phi_samples, b_samples, mu_bar, *, tol: float = 1e-10, max_iter: int = 100, lam0=None,
                    feature_names=None) -> LambdaFit:
    """λ by moment matching from samples x_i ∼ a, with the SNIS moments of Eq. (6.5).

    ``phi_samples [n, k]`` (or ``[n]``), ``b_samples [n]`` booleans or None, ``mu_bar [k]``. The weights are
    w_i = b(x_i) e^{λ·φ(x_i)}; the same Newton solver as :func:`fit_lambda_exact` runs on the empirical
    distribution of the sample, so the moments match on the sample to ``tol``. ``log_z`` estimates
    log Z = log E_a[b e^{λ·φ}]; with k = 0 it is the log acceptance rate.
    """
    phi = np.asarray(phi_samples, dtype=np.float64)
    n = phi.shape[0] if phi.ndim else 0
    if n == 0:
        raise ValueError("fit_lambda_snis needs at least one sample of a; got none")
    phi = _phi_array(phi, n)
    b = _b_array(b_samples, n)
    mu_bar = _mu_array(mu_bar, phi.shape[1], "μ̄")
    if not b.any():
        raise ValueError(f"no sample of a satisfies the pointwise constraints (0 of {n} samples have b = 1): "
                         "SNIS has nothing to weight; draw more samples or relax the constraint")
    where = f"the samples with b = 1 ({int(b.sum())} of {n})"
    fit = _newton(np.full(int(b.sum()), -math.log(n)), phi[b], mu_bar, where, tol, max_iter, lam0, feature_names)
    if fit.ess < MIN_ESS:
        warnings.warn(f"the EBM fit rests on an effective sample size of {fit.ess:.1f} of {n} samples (fewer than "
                      f"{MIN_ESS}): its λ and Z are unreliable, and a policy trained towards it sees few samples "
                      "that carry weight; draw more samples (--ebm-samples) or relax the constraints", stacklevel=2)
    return fit


# ------------------------------------------------------------------------------------------ names task


def names_of(tokens) -> list[str]:
    """Decoded names of token rows ``[B, L]`` from ``GPT.generate`` (characters before the first EOS)."""
    from .data import CharTokenizer

    return CharTokenizer().decode_batch(np.asarray(tokens))


@dataclass
class FitReport:
    """What :func:`fit_names_ebm` measured on its sample of a."""

    n_samples: int
    n_accepted: int  # samples meeting every pointwise constraint
    acceptance_rate: float  # n_accepted / n_samples: the SNIS estimate of E_a[b] (Z for pointwise only)
    base_rates: dict  # constraint name → fraction of samples meeting it (pointwise) or E_a[φ] (distributional)
    mu_bar: dict  # feature name → target moment
    moments: dict  # feature name → E_{p_λ}[φ] on the sample after fitting
    lam: dict  # feature name → λ
    moment_error: float
    log_z: float  # log of the SNIS estimate of Z = E_a[b e^{λ·φ}]
    ess: float  # effective sample size of the SNIS weights
    iterations: int
    seconds: float
    examples: list = field(default_factory=list)  # a few accepted sample names

    def __str__(self) -> str:
        lines = [f"{self.n_samples} samples of a; {self.n_accepted} meet the pointwise constraints "
                 f"(acceptance rate {self.acceptance_rate:.4f})"]
        lines += [f"  base rate under a   {name}: {rate:.4f}" for name, rate in self.base_rates.items()]
        lines += [f"  {name}: μ̄ = {self.mu_bar[name]:.4f}, λ = {self.lam[name]:+.4f}, SNIS moment "
                  f"{self.moments[name]:.6f}" for name in self.lam]
        lines.append(f"moment error {self.moment_error:.2e}; log Z ≈ {self.log_z:.4f}; effective sample size "
                     f"{self.ess:.0f}; {self.iterations} Newton steps; {self.seconds:.1f} s")
        return "\n".join(lines)


def fit_names_ebm(base_model, constraints, n_samples: int = 20_000, seed: int = 0, batch_size: int = 4096,
                  tol: float = 1e-10, progress: bool = False) -> tuple[EBM, FitReport]:
    """Sample a (the base names model), fit λ by SNIS (Eq. (6.5)) and return the EBM of Eq. (6.3) with a report.

    ``constraints``: strings for :func:`parse_constraint` ("female=0.5", "contains:z"), Pointwise objects or
    (Feature, μ̄) pairs. Raises ValueError if no sample meets the pointwise constraints or μ̄ is out of reach
    on the sample; warns if the fit rests on an effective sample size below 10. ``progress`` shows a bar
    while sampling (when more than one batch is drawn).
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    if isinstance(constraints, (str, Pointwise)) or (isinstance(constraints, tuple) and len(constraints) == 2
                                                     and isinstance(constraints[0], Feature)):
        constraints = [constraints]
    features, mu_bar, points = [], [], []
    for c in constraints:
        c = parse_constraint(c) if isinstance(c, str) else c
        if isinstance(c, Pointwise):
            points.append(c)
        elif isinstance(c, tuple) and len(c) == 2 and isinstance(c[0], Feature):
            features.append(c[0])
            mu_bar.append(float(c[1]))
        else:
            raise TypeError(f"a constraint must be a str, a Pointwise or a (Feature, μ̄) pair; got {c!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive whole number; got {n_samples!r}")
    cfg = base_model.config
    if cfg.vocab_size != 27:
        raise ValueError(f"fit_names_ebm needs a names model (vocab_size 27: '.' and a-z); got vocab_size "
                         f"{cfg.vocab_size}")
    rng = np.random.default_rng(seed)
    names: list[str] = []
    shown = None if progress and n_samples > batch_size else True  # None: a bar only on a terminal
    with tqdm(total=int(n_samples), desc="samples of a", disable=shown) as bar:
        while len(names) < n_samples:
            tokens, _ = base_model.generate(min(int(batch_size), int(n_samples) - len(names)), rng)
            names += names_of(tokens)
            bar.update(len(tokens))
    ebm = EBM(features, None, points)
    phi, b = ebm.phi(names), ebm.b(names)
    if not b.any():
        raise ValueError(f"no sample meets {' and '.join(c.name for c in points)}: 0 of {len(names)} samples of a; "
                         "draw more samples (--ebm-samples) or relax the constraint")
    base_rates = {c.name: float(np.mean(c(names))) for c in points}
    base_rates.update({f.name: float(np.mean(phi[:, i])) for i, f in enumerate(features)})
    fit = fit_lambda_snis(phi, b, np.array(mu_bar), tol=tol, feature_names=[f.name for f in features])
    ebm = EBM(features, fit.lam, points, np.array(mu_bar) if features else None)
    accepted = [n for n, keep in zip(names, b) if keep]
    report = FitReport(
        n_samples=len(names), n_accepted=int(b.sum()), acceptance_rate=float(b.mean()), base_rates=base_rates,
        mu_bar={f.name: m for f, m in zip(features, mu_bar)},
        moments={f.name: float(m) for f, m in zip(features, fit.moments)},
        lam={f.name: float(l) for f, l in zip(features, fit.lam)},
        moment_error=fit.moment_error, log_z=fit.log_z, ess=fit.ess, iterations=fit.iterations,
        seconds=time.perf_counter() - start, examples=accepted[:10],
    )
    return ebm, report
