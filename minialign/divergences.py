"""The f-divergence family, its log-space forms and Monte-Carlo estimators (chapter 03).

Convention (used everywhere in minialign): D_f(P‖Q) = Σ_x Q(x) f(P(x)/Q(x)), f convex, f(1) = 0.
Pure NumPy in, NumPy out. Distributions lie on the last axis; any leading axes are a batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from .logspace import logsumexp, softplus

LOG2 = float(np.log(2.0))
NAMES = ("kl", "reverse_kl", "js", "tv", "chi2", "hellinger", "alpha:<value>")

Array = np.ndarray
Fn = Callable[[Array], Array]
ScaledFn = Callable[[Array, Array], Array]


# ---------------------------------------------------------------- the generator record


@dataclass(frozen=True)
class FDivergence:
    """Eq. (3.2): one member of the family: a convex generator f with f(1) = 0 and what computing with it needs.

    f, f_prime        f(t) and f'(t) for t ≥ 0 (t = 0 gives the limit f(0+)).
    f_conjugate       f*(t) = t f(1/t), the generator of D_{f*}(P‖Q) = D_f(Q‖P).
    f_at_zero         f(0+): a point with P = 0 < Q contributes Q·f(0+).
    slope_at_infinity lim_{t→∞} f(t)/t: a point with Q = 0 < P contributes P·slope_at_infinity.
    f_log, f_prime_log  f(e^l) and f'(e^l) from l = log t, with no intermediate overflow: a value
                      beyond the float range comes out as ±inf, never as NaN.
    scaled_log        (log w, l) ↦ w·f(e^l), the same care taken with the weight inside the exponent.
    conjugate_name    the registry name of f* when f* is a member, else None.
    """

    name: str
    f: Fn
    f_prime: Fn
    f_conjugate: Fn
    f_at_zero: float
    slope_at_infinity: float
    f_log: Fn
    f_prime_log: Fn
    scaled_log: ScaledFn
    conjugate_name: str | None = None

    def conjugate(self) -> "FDivergence":
        """Eq. (3.3): the conjugate generator f*(t) = t f(1/t), as a full record."""
        if self.conjugate_name is not None:
            return get(self.conjugate_name)
        if self.name in _NON_MEMBER_CONJUGATES:
            return _NON_MEMBER_CONJUGATES[self.name]
        return _generic_conjugate(self)


def _at_zero(formula: Fn, f0: float) -> Fn:
    """Wrap a formula valid for t > 0 so that t = 0 returns the limit f(0+)."""

    def f(t):
        t = np.asarray(t, dtype=np.float64)
        safe = np.where(t > 0, t, 1.0)
        with np.errstate(over="ignore", invalid="ignore"):
            return np.where(t > 0, formula(safe), f0)

    return f


def _conjugate_callable(f: Fn, slope: float) -> Fn:
    def f_star(t):
        t = np.asarray(t, dtype=np.float64)
        safe = np.where(t > 0, t, 1.0)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return np.where(t > 0, safe * f(1.0 / safe), slope)

    return f_star


def _exp(x):
    with np.errstate(over="ignore"):
        return np.exp(x)


def _default_scaled(f_log: Fn) -> ScaledFn:
    def scaled(log_w, log_t):
        w = _exp(np.asarray(log_w, dtype=np.float64))
        v = f_log(log_t)
        with np.errstate(invalid="ignore", over="ignore"):
            return np.where(w == 0, 0.0, w * v)

    return scaled


def _squared_difference_scaled(c: float, a: float) -> ScaledFn:
    """w·c·(t^a − 1)² from (log w, log t), for tv-like and chi2-like generators."""

    def scaled(log_w, log_t):
        lw = np.asarray(log_w, dtype=np.float64)
        lt = np.asarray(log_t, dtype=np.float64)
        near = np.abs(a * lt) < 1.0
        ln = np.where(near, lt, 0.0)
        with np.errstate(over="ignore", invalid="ignore"):
            near_value = c * _exp(lw) * np.expm1(a * ln) ** 2
            far_value = c * (_exp(0.5 * lw + a * lt) - _exp(0.5 * lw)) ** 2
        return np.where(near, near_value, far_value)

    return scaled


def _quiet(formula: Fn) -> Fn:
    """Evaluate a formula on float64 with overflow and 1/0 left to IEEE rules (±inf), unreported."""

    def g(x):
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            return formula(np.asarray(x, dtype=np.float64))

    return g


def _log_at_zero(f_log: Fn, f0: float) -> Fn:
    """f(e^l) with l = −inf (zero mass) sent to the limit f(0+)."""

    def g(l):
        l = np.asarray(l, dtype=np.float64)
        zero = l == -np.inf
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            return np.where(zero, f0, f_log(np.where(zero, 0.0, l)))

    return g


def _make(name, f_formula, f_prime_formula, f0, slope, f_log, f_prime_log, scaled=None, conjugate_name=None):
    f = _at_zero(f_formula, f0)
    return FDivergence(
        name=name,
        f=f,
        f_prime=_quiet(f_prime_formula),
        f_conjugate=_conjugate_callable(f, slope),
        f_at_zero=float(f0),
        slope_at_infinity=float(slope),
        f_log=_log_at_zero(f_log, f0),
        f_prime_log=_quiet(f_prime_log),
        scaled_log=scaled if scaled is not None else _default_scaled(f_log),
        conjugate_name=conjugate_name,
    )


def _as(x):
    return np.asarray(x, dtype=np.float64)


# ---------------------------------------------------------------- the members


def _kl():
    def scaled(log_w, log_t):
        lw, lt = _as(log_w), _as(log_t)
        with np.errstate(over="ignore", invalid="ignore"):
            return np.where(lt == 0, 0.0, _exp(lw + lt) * lt)

    return _make(
        "kl",
        lambda t: t * np.log(t),
        lambda t: np.log(t) + 1.0,
        0.0,
        np.inf,
        lambda l: scaled(0.0, l),
        lambda l: _as(l) + 1.0,
        scaled,
        "reverse_kl",
    )


def _reverse_kl():
    def scaled(log_w, log_t):
        return -_exp(_as(log_w)) * _as(log_t)

    return _make(
        "reverse_kl",
        lambda t: -np.log(t),
        lambda t: -1.0 / t,
        np.inf,
        0.0,
        lambda l: -_as(l),
        lambda l: -_exp(-_as(l)),
        scaled,
        "kl",
    )


def _js():
    # f(t) = ½[t log(2t/(1+t)) + log(2/(1+t))], with log(2t/(1+t)) = log 2 − softplus(−l)
    # and log(2/(1+t)) = log 2 − softplus(l): every piece stays finite for finite l.
    def scaled(log_w, log_t):
        lw, lt = _as(log_w), _as(log_t)
        with np.errstate(over="ignore", invalid="ignore"):
            return 0.5 * (_exp(lw + lt) * (LOG2 - softplus(-lt)) + _exp(lw) * (LOG2 - softplus(lt)))

    return _make(
        "js",
        lambda t: 0.5 * (t * np.log(t) - (1.0 + t) * np.log((1.0 + t) / 2.0)),
        lambda t: 0.5 * np.log(2.0 * t / (1.0 + t)),
        0.5 * LOG2,
        0.5 * LOG2,
        lambda l: scaled(0.0, l),
        lambda l: 0.5 * (LOG2 - softplus(-_as(l))),
        scaled,
        "js",
    )


def _tv():
    def scaled(log_w, log_t):
        lw, lt = _as(log_w), _as(log_t)
        near = np.abs(lt) < 1.0
        with np.errstate(over="ignore", invalid="ignore"):
            near_value = 0.5 * _exp(lw) * np.abs(np.expm1(np.where(near, lt, 0.0)))
            far_value = 0.5 * np.abs(_exp(lw + lt) - _exp(lw))
        return np.where(near, near_value, far_value)

    return _make(
        "tv",
        lambda t: 0.5 * np.abs(t - 1.0),
        lambda t: 0.5 * np.sign(t - 1.0),
        0.5,
        0.5,
        lambda l: scaled(0.0, l),
        lambda l: 0.5 * np.sign(_as(l)),
        scaled,
        "tv",
    )


def _chi2():
    scaled = _squared_difference_scaled(1.0, 1.0)
    return _make(
        "chi2",
        lambda t: (t - 1.0) ** 2,
        lambda t: 2.0 * (t - 1.0),
        1.0,
        np.inf,
        lambda l: scaled(0.0, l),
        lambda l: 2.0 * np.expm1(_as(l)),
        scaled,
        None,
    )


def _neyman_chi2():
    # (1 − t)²/t = (t^{1/2} − t^{−1/2})²: the conjugate of Pearson's χ², Neyman's χ².
    def scaled(log_w, log_t):
        lw, lt = _as(log_w), _as(log_t)
        near = np.abs(lt) < 1.0
        with np.errstate(over="ignore", invalid="ignore"):
            near_value = _exp(lw - np.where(near, lt, 0.0)) * np.expm1(np.where(near, lt, 0.0)) ** 2
            far_value = (_exp(0.5 * (lw + lt)) - _exp(0.5 * (lw - lt))) ** 2
        return np.where(near, near_value, far_value)

    return _make(
        "neyman_chi2",
        lambda t: (1.0 - t) ** 2 / t,
        lambda t: 1.0 - 1.0 / t**2,
        np.inf,
        1.0,
        lambda l: scaled(0.0, l),
        lambda l: -np.expm1(-2.0 * _as(l)),
        scaled,
        None,
    )


def _hellinger():
    scaled = _squared_difference_scaled(0.5, 0.5)
    return _make(
        "hellinger",
        lambda t: 0.5 * (np.sqrt(t) - 1.0) ** 2,
        lambda t: 0.5 * (1.0 - 1.0 / np.sqrt(t)),
        0.5,
        0.5,
        lambda l: scaled(0.0, l),
        lambda l: -0.5 * np.expm1(-0.5 * _as(l)),
        scaled,
        "hellinger",
    )


def _alpha(alpha: float, name: str):
    a = float(alpha)
    denom = a * (a - 1.0)

    def scaled(log_w, log_t):
        lw, lt = _as(log_w), _as(log_t)
        near = np.abs(lt) < 1.0
        ln = np.where(near, lt, 0.0)
        # t^α − αt − (1−α) = expm1(αl) − α·expm1(l): no cancellation near t = 1.
        near_value = _exp(lw) * (np.expm1(a * ln) - a * np.expm1(ln)) / denom
        # away from t = 1 factor out the largest exponent so the bracket stays finite.
        m = np.maximum(np.maximum(a * lt, lt), 0.0)
        with np.errstate(over="ignore", invalid="ignore"):
            bracket = np.exp(a * lt - m) - a * np.exp(lt - m) - (1.0 - a) * np.exp(-m)
            far_value = _exp(lw + m) * (bracket / denom)
        return np.where(near, near_value, far_value)

    f0 = 1.0 / a if a > 0 else np.inf
    slope = 1.0 / (1.0 - a) if a < 1 else np.inf
    return _make(
        name,
        lambda t: (t**a - a * t - (1.0 - a)) / denom,
        lambda t: (t ** (a - 1.0) - 1.0) / (a - 1.0),
        f0,
        slope,
        lambda l: scaled(0.0, l),
        lambda l: np.expm1((a - 1.0) * _as(l)) / (a - 1.0),
        scaled,
        f"alpha:{_format_alpha(1.0 - a)}",
    )


def _format_alpha(a: float) -> str:
    return repr(float(a))


_FIXED = {"kl": _kl(), "reverse_kl": _reverse_kl(), "js": _js(), "tv": _tv(), "chi2": _chi2(),
          "hellinger": _hellinger()}
_NON_MEMBER_CONJUGATES = {"chi2": _neyman_chi2()}


def _generic_conjugate(fd: FDivergence) -> FDivergence:
    def scaled(log_w, log_t):
        lt = _as(log_t)
        return fd.scaled_log(_as(log_w) + lt, -lt)

    f_star = fd.f_conjugate

    def f_star_prime(t):
        t = _as(t)
        return fd.f(1.0 / t) - fd.f_prime(1.0 / t) / t

    return FDivergence(
        name=f"{fd.name}*",
        f=f_star,
        f_prime=f_star_prime,
        f_conjugate=fd.f,
        f_at_zero=fd.slope_at_infinity,
        slope_at_infinity=fd.f_at_zero,
        f_log=_log_at_zero(lambda l: scaled(0.0, l), fd.slope_at_infinity),
        f_prime_log=_quiet(lambda l: f_star_prime(_exp(l))),
        scaled_log=scaled,
        conjugate_name=fd.name if fd.name in _FIXED else None,
    )


def from_generator(name: str, f: Fn, f_prime: Fn, f_at_zero: float, slope_at_infinity: float) -> FDivergence:
    """Eqs. (3.1) and (3.7): D_f for a generator of your own, e.g. f + c(t − 1), from f, f' on t > 0 and the two
    zero-mass limits.

    The log forms are the plain compositions f(e^l), so they carry no overflow protection.
    """
    f_full = _at_zero(f, f_at_zero)
    return _make(name, f, f_prime, f_at_zero, slope_at_infinity,
                 f_log=lambda l: f_full(_exp(l)), f_prime_log=lambda l: f_prime(_exp(l)))


def get(name: str) -> FDivergence:
    """Eq. (3.2): the generator table — kl, reverse_kl, js, tv, chi2, hellinger and alpha:<α>.

    An FDivergence passed in is returned unchanged, so every function here takes a name or a record.
    """
    if isinstance(name, FDivergence):
        return name
    if not isinstance(name, str):
        raise ValueError(f"divergence name must be a string, one of {', '.join(NAMES)}; got {name!r}")
    if name in _FIXED:
        return _FIXED[name]
    if name.startswith("alpha:"):
        text = name[len("alpha:"):]
        try:
            a = float(text)
        except ValueError:
            raise ValueError(f"alpha divergence needs a number after 'alpha:', e.g. 'alpha:0.5'; got {name!r}") \
                from None
        if not np.isfinite(a):
            raise ValueError(f"alpha must be a finite number; got {name!r}")
        if a in (0.0, 1.0):
            raise ValueError(
                f"alpha must not be 0 or 1 (those limits are 'reverse_kl' and 'kl'); got {name!r}"
            )
        return _alpha(a, f"alpha:{_format_alpha(a)}")
    raise ValueError(f"unknown f-divergence {name!r}; known names: {', '.join(NAMES)}")


# ---------------------------------------------------------------- validation


def _tolerance(dtype) -> float:
    return 1e-4 if np.dtype(dtype).itemsize <= 4 else 1e-6


def _real_array(x, label: str, what: str, axis_note: str = "") -> tuple[Array, np.dtype]:
    """``x`` as float64 (and its original dtype), after the checks every input shares: real numbers, at least one
    axis, no NaN."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{label} must be an array of real {what}; got dtype {arr.dtype}")
    if arr.ndim == 0:
        raise ValueError(f"{label} must have at least one axis{axis_note}; got a scalar")
    out = arr.astype(np.float64)
    if np.isnan(out).any():
        raise ValueError(f"{label} must not contain NaN; got {int(np.isnan(out).sum())} NaN entries")
    return out, arr.dtype


def _check_probabilities(x, label: str) -> Array:
    arr, dtype = _real_array(x, label, "probabilities", " (the support on the last axis)")
    if arr.shape[-1] == 0:
        raise ValueError(f"{label} must have a non-empty last axis (the support); got shape {arr.shape}")
    tol = _tolerance(dtype) if dtype.kind == "f" else 1e-6
    if np.isinf(arr).any():
        raise ValueError(f"{label} must be finite; got {int(np.isinf(arr).sum())} infinite entries")
    if (arr < 0).any():
        raise ValueError(f"{label} must be nonnegative; got a minimum entry of {arr.min():.3g}")
    sums = arr.sum(axis=-1)
    if np.any(np.abs(sums - 1.0) > tol):
        raise ValueError(
            f"{label} must sum to 1 along the last axis (relative tolerance {tol:g}); "
            f"got sums in [{sums.min():.6g}, {sums.max():.6g}]"
        )
    return arr


def _check_shapes(a: Array, b: Array, la: str, lb: str) -> None:
    message = (
        f"{la} and {lb} must share the last axis (the support) and have broadcastable batch axes; "
        f"got shapes {a.shape} and {b.shape}"
    )
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(message)
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(message) from None


def _check_logs(x, label: str) -> Array:
    arr, _ = _real_array(x, label, "log-probabilities")
    if (arr == np.inf).any():
        raise ValueError(f"{label} must be < +inf (−inf marks zero mass); got {int((arr == np.inf).sum())} +inf "
                         "entries")
    return arr


def _scalar_or_array(x: Array):
    return x[()] if isinstance(x, np.ndarray) and x.ndim == 0 else x


# ---------------------------------------------------------------- exact divergences


def divergence(name, P, Q):
    """Eq. (3.1): D_f(P‖Q) = Σ_x Q(x) f(P(x)/Q(x)), exactly, with the zero-mass conventions of Eq. (3.4).

    P, Q: probabilities on the last axis (sums within 1e-6 relative of 1 for float64 inputs, 1e-4 for
    float32); leading batch axes broadcast against each other. A point with Q = 0 < P adds
    P·lim f(t)/t, one with P = 0 < Q adds Q·f(0+), one with P = Q = 0 adds nothing; the result is
    +inf where the truth is. Terms with P > Q are computed as P f*(Q/P) (equal by Eq. 3.3), so the
    generator only sees ratios in (0, 1]. `name` is a registry name or an FDivergence record. Returns
    float64 of the broadcast batch shape (a 0-d value for single distributions).
    """
    fd = get(name)
    P = _check_probabilities(P, "P")
    Q = _check_probabilities(Q, "Q")
    _check_shapes(P, Q, "P", "Q")
    P, Q = np.broadcast_arrays(P, Q)
    both = (P > 0) & (Q > 0)
    only_p = (P > 0) & (Q == 0)
    only_q = (P == 0) & (Q > 0)
    # Q f(P/Q) where P ≤ Q and the equal P f*(Q/P) where P > Q: the generator only ever sees ratios
    # in (0, 1], so a tiny Q cannot overflow P/Q.
    below = both & (P <= Q)
    above = both & (P > Q)
    conj = fd.conjugate()
    terms = np.zeros(P.shape)
    with np.errstate(over="ignore"):
        terms[below] = Q[below] * fd.f(P[below] / Q[below])
        terms[above] = P[above] * conj.f(Q[above] / P[above])
    terms[only_p] = P[only_p] * fd.slope_at_infinity
    terms[only_q] = Q[only_q] * fd.f_at_zero
    return _scalar_or_array(terms.sum(axis=-1))


def _normaliser(log_x: Array, log_z, label: str) -> Array:
    if log_z is None:
        log_z = logsumexp(log_x, keepdims=True)
        if np.any(log_z == -np.inf):
            raise ValueError(f"{label} has no mass: every entry is −inf along the last axis")
        return log_z
    log_z = np.asarray(log_z, dtype=np.float64)
    if not np.all(np.isfinite(log_z)):
        raise ValueError(f"the normaliser of {label} must be finite; got {log_z}")
    return log_z[..., None]


def divergence_from_logs(name, log_p, log_q, log_zp=None, log_zq=None):
    """Eq. (3.14): D_f(P‖Q) from log-probabilities, stable for logits of magnitude 1e4.

    log_p, log_q: log-probabilities on the last axis, possibly unnormalised; −inf marks zero mass.
    log_zp, log_zq: their log-normalisers (batch shape) when known — used as given, not checked —
    otherwise computed by logsumexp over the last axis. With l = log(P/Q) each term is Q f(e^l)
    for l ≤ 0 and P f*(e^{−l}) for l > 0 (since Q f(t) = P f(t)/t = P f*(1/t)), so a generator
    is only ever evaluated at ratios in (0, 1], times a weight kept inside the exponent.
    """
    fd = get(name)
    lp = _check_logs(log_p, "log_p")
    lq = _check_logs(log_q, "log_q")
    _check_shapes(lp, lq, "log_p", "log_q")
    lp = lp - _normaliser(lp, log_zp, "log_p")
    lq = lq - _normaliser(lq, log_zq, "log_q")
    lp, lq = np.broadcast_arrays(lp, lq)
    conj = fd.conjugate()
    fin_p, fin_q = np.isfinite(lp), np.isfinite(lq)
    both = fin_p & fin_q
    with np.errstate(invalid="ignore"):
        l = np.where(both, lp - lq, 0.0)
    below = both & (l <= 0)
    above = both & (l > 0)
    terms = np.zeros(lp.shape)
    terms[below] = fd.scaled_log(lq[below], l[below])
    terms[above] = conj.scaled_log(lp[above], -l[above])
    only_p = fin_p & ~fin_q
    only_q = fin_q & ~fin_p
    terms[only_p] = np.exp(lp[only_p]) * fd.slope_at_infinity
    terms[only_q] = np.exp(lq[only_q]) * fd.f_at_zero
    return _scalar_or_array(terms.sum(axis=-1))


def partial_derivatives(name, P, Q):
    """Eq. (3.5): ∂D_f/∂P(x) = f'(t) and ∂D_f/∂Q(x) = f(t) − t f'(t), t = P(x)/Q(x), P and Q free.

    The partials treat every P(x) and Q(x) as an independent positive variable (no normalisation
    constraint), which is what a chain rule through a parametrised P or Q needs. Both arrays must be
    strictly positive and of the same shape; no normalisation is required.
    """
    fd = get(name)
    P = np.asarray(P, dtype=np.float64)
    Q = np.asarray(Q, dtype=np.float64)
    if P.shape != Q.shape:
        raise ValueError(f"P and Q must have the same shape; got {P.shape} and {Q.shape}")
    if not (np.all(P > 0) and np.all(Q > 0)):
        raise ValueError("P and Q must be strictly positive for the partial derivatives to exist; got zeros or "
                         "negatives")
    t = P / Q
    d_p = fd.f_prime(t)
    return d_p, fd.f(t) - t * d_p


# ---------------------------------------------------------------- Monte-Carlo estimators of KL(q‖p)


def _log_ratio(log_q, log_p) -> Array:
    lq = _check_logs(log_q, "log_q")
    lp = _check_logs(log_p, "log_p")
    if lq.shape != lp.shape:
        raise ValueError(f"log_q and log_p must have the same shape (one entry per sample); got {lq.shape} and "
                         f"{lp.shape}")
    if np.any(lq == -np.inf):
        raise ValueError("log_q must be finite at samples drawn from q; got −inf entries")
    with np.errstate(invalid="ignore"):
        return lp - lq


def k1(log_q, log_p) -> Array:
    """Eq. (3.16): k1 = −log ρ, ρ = p(x)/q(x), x ∼ q, per sample; its mean estimates KL(q‖p).

    Unbiased (E_q[−log ρ] = KL(q‖p)); high variance; single samples can be negative.
    """
    return -_log_ratio(log_q, log_p)


def k2(log_q, log_p) -> Array:
    """Eq. (3.17): k2 = ½(log ρ)², per sample; its mean estimates KL(q‖p) with a bias.

    Biased: E_q[k2] = Σ_x q ½(log(p/q))², which equals KL(q‖p) only to second order as p → q.
    Every sample is ≥ 0; low variance when q ≈ p.
    """
    r = _log_ratio(log_q, log_p)
    return 0.5 * r * r


def k3(log_q, log_p) -> Array:
    """Eq. (3.18): k3 = (ρ − 1) − log ρ, per sample; its mean estimates KL(q‖p).

    Unbiased (E_q ρ = 1 adds nothing to k1's mean); every sample is ≥ 0 since e^u ≥ 1 + u;
    low variance when q ≈ p. Computed as expm1(log ρ) − log ρ.
    """
    r = _log_ratio(log_q, log_p)
    with np.errstate(over="ignore"):
        return np.expm1(r) - r


class KLEstimates(NamedTuple):
    """Eqs. (3.16)–(3.18): per-sample k1, k2, k3 (average them over the samples)."""

    k1: Array
    k2: Array
    k3: Array


def kl_estimators(log_q, log_p) -> KLEstimates:
    """Eqs. (3.16)–(3.18): the per-sample k1, k2, k3 of KL(q‖p) from samples x ∼ q."""
    return KLEstimates(k1(log_q, log_p), k2(log_q, log_p), k3(log_q, log_p))


# ---------------------------------------------------------------- Monte-Carlo estimators of D_f


def _check_from(from_: str) -> None:
    if from_ not in ("q", "p"):
        raise ValueError(f"from_ must be 'q' (samples of Q) or 'p' (samples of P); got {from_!r}")


def _sample_logs(log_p, log_q):
    lp = _check_logs(log_p, "log_p")
    lq = _check_logs(log_q, "log_q")
    if lp.shape != lq.shape:
        raise ValueError(f"log_p and log_q must have the same shape (samples on the last axis); got {lp.shape} and "
                         f"{lq.shape}")
    return lp, lq


def mc_divergence(name, log_p, log_q, from_: str = "q"):
    """Eq. (3.19): Monte-Carlo D_f(P‖Q) from log P(x_i), log Q(x_i) at samples on the last axis.

    from_="q": x_i ∼ Q, estimate mean_i f(P(x_i)/Q(x_i)); unbiased, misses the mass of P where Q = 0.
    from_="p": x_i ∼ P, estimate mean_i f(t_i)/t_i = mean_i f*(Q(x_i)/P(x_i)); unbiased, misses the
    mass of Q where P = 0. Both need normalised log-probabilities; the variance is Var(f(t))/n
    (resp. Var(f(t)/t)/n) and is unbounded for unbounded generators when the tails differ.
    """
    _check_from(from_)
    fd = get(name)
    lp, lq = _sample_logs(log_p, log_q)
    with np.errstate(invalid="ignore"):
        if from_ == "q":
            values = fd.f_log(lp - lq)
        else:
            values = fd.conjugate().f_log(lq - lp)
    return _scalar_or_array(values.mean(axis=-1))


def mc_divergence_self_normalised(name, log_p_unnormalised, log_q, from_: str = "q"):
    """Eq. (3.20): D_f(p‖Q) for p = P/Z with Z unknown, and the importance-sampling estimate of log Z.

    from_="q": Ẑ = mean_i P(x_i)/Q(x_i) (unbiased for Z), then mean_i f(P(x_i)/(Ẑ Q(x_i))).
    from_="p": x_i ∼ p, 1/Ẑ = mean_i Q(x_i)/P(x_i) (unbiased for 1/Z; high variance when Q has
    heavier tails than p), then mean_i f*(Ẑ Q(x_i)/P(x_i)).
    Both are ratio estimators: consistent, biased at finite n by O(1/n). Returns (estimate, log Ẑ).
    """
    _check_from(from_)
    fd = get(name)
    lp, lq = _sample_logs(log_p_unnormalised, log_q)
    n = lp.shape[-1]
    with np.errstate(invalid="ignore"):
        if from_ == "q":
            log_z = logsumexp(lp - lq, keepdims=True) - np.log(n)
            values = fd.f_log(lp - log_z - lq)
        else:
            log_z = -(logsumexp(lq - lp, keepdims=True) - np.log(n))
            values = fd.conjugate().f_log(lq - lp + log_z)
    return _scalar_or_array(values.mean(axis=-1)), _scalar_or_array(log_z[..., 0])
