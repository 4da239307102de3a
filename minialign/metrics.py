"""What the runs report about samples: diversity, the KL estimates, moments with their tolerances (chapters 05–07).

Every figure a run prints about its samples is computed here, once, and the faces (command line, tour,
notebooks) only format it: a mean comes with its standard error, a moment with the binomial tolerance it is
judged by, and the diversity metrics with the sample size they depend on.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import NamedTuple

import numpy as np

DIVERSITY_N = 500  # names over which distinct-2 is reported, so that figures compare at one sample size
SELF_BLEU_N = 200  # names over which Self-BLEU is reported


def distinct_n(names, n: int = 2) -> float:
    """Distinct-n: the fraction of character n-grams in the batch that are unique (Li et al. 2016).

    It falls as the number of names grows (more chances to repeat), so compare it only at one sample size.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (the n-gram length) must be a whole number ≥ 1; got {n!r}")
    grams = [name[i:i + n] for name in names for i in range(len(name) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


def self_bleu(names, n: int = 3, max_refs: int = 200) -> float:
    """Self-BLEU over character n-grams (Zhu et al. 2018): the mean BLEU of each name against the others.

    BLEU-n with uniform weights over 1..n-grams, counts clipped by the largest count among the *other* names,
    a brevity penalty, and +1 smoothing of the higher orders (Lin & Och 2004); higher means less diverse.
    The clip uses each n-gram's two largest counts, so the whole batch costs one pass over its n-grams.
    Like distinct-n it depends on the number of names (at most ``max_refs`` are used).
    """
    names = [s for s in names if s][:max_refs]
    if len(names) < 2:
        return 0.0
    grams = [[Counter(s[i:i + k] for i in range(len(s) - k + 1)) for k in range(1, n + 1)] for s in names]
    top = []  # per order: gram -> (largest count, its name, second largest count)
    for k in range(n):
        best: dict = {}
        for j, g in enumerate(grams):
            for gram, c in g[k].items():
                m1, who, m2 = best.get(gram, (0, -1, 0))
                best[gram] = (c, j, m1) if c > m1 else (m1, who, max(m2, c))
        top.append(best)
    lengths = sorted(len(s) for s in names)
    scores = []
    for i, hyp in enumerate(names):
        logs = []
        for k in range(n):
            clipped = 0
            for gram, c in grams[i][k].items():
                m1, who, m2 = top[k][gram]
                clipped += min(c, m2 if who == i else m1)
            total, smooth = max(len(hyp) - k, 0), (0 if k == 0 else 1)
            if total + smooth == 0 or clipped + smooth == 0:
                logs.append(-math.inf)
                break
            logs.append(math.log((clipped + smooth) / (total + smooth)))
        others = list(lengths)
        others.remove(len(hyp))
        closest = min(others, key=lambda r: (abs(r - len(hyp)), r))
        bp = 1.0 if len(hyp) >= closest else math.exp(1 - closest / max(len(hyp), 1))
        scores.append(bp * math.exp(sum(logs) / n) if all(np.isfinite(logs)) else 0.0)
    return float(np.mean(scores))


def name_metrics(names, corpus=None) -> dict:
    """Distinct-2 and the mean length of a batch of names, and the share found in ``corpus`` if given."""
    out = {"distinct_2": distinct_n(names, 2), "mean_length": float(np.mean([len(s) for s in names]))}
    if corpus is not None:
        out["in_corpus"] = float(np.mean([s in corpus for s in names]))
    return out


def kl_estimates(log_pi, log_ref) -> dict:
    """Schulman's k1, k2, k3 estimates of KL(π‖a) from samples of π (chapter 03, Eq. 3.16–3.18), batch means."""
    from .divergences import kl_estimators

    est = kl_estimators(log_pi, log_ref)
    return {"kl_k1": float(est.k1.mean()), "kl_k2": float(est.k2.mean()), "kl_k3": float(est.k3.mean())}


class Estimate(NamedTuple):
    """A Monte-Carlo mean with its standard error, over n values."""

    mean: float
    se: float
    n: int

    def __str__(self) -> str:
        return f"{round(self.mean, 3) + 0.0:.3f} ± {self.se:.3f}"  # + 0.0: no "-0.000" for a mean of −1e-17


def mean_se(values) -> Estimate:
    """The mean of ``values`` and its standard error s/√n (0 for a single value)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("mean_se needs at least one value")
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else 0.0
    return Estimate(float(v.mean()), se, int(v.size))


def last_steps(history: dict, key: str, k: int = 20) -> Estimate:
    """The mean of a metric over the last ``k`` training steps, with its standard error: how a run's figure is
    reported (never one batch)."""
    if key not in history or not history[key]:
        raise KeyError(f"the run recorded no {key!r}")
    return mean_se(history[key][-k:])


class MomentCheck(NamedTuple):
    """A feature's fraction on fresh samples judged against its target μ̄ within the binomial tolerance."""

    name: str
    value: float
    target: float | None
    tolerance: float
    n: int

    @property
    def met(self) -> bool:
        return self.target is None or abs(self.value - self.target) <= self.tolerance


def binomial_tolerance(n: int) -> float:
    """Two binomial standard errors at the worst case, p = ½: 2·√(¼/n). A policy truly at μ̄ passes ~95% of the time."""
    if n < 1:
        raise ValueError(f"a tolerance needs at least one sample; got n = {n}")
    return 2.0 * math.sqrt(0.25 / n)


def check_moments(features, targets, names) -> list[MomentCheck]:
    """Each feature's mean over ``names`` against its target (None: reported, not judged)."""
    tol = binomial_tolerance(len(names))
    return [MomentCheck(f.name, float(np.mean(f(names))), None if mu is None else float(mu), tol, len(names))
            for f, mu in zip(features, targets)]
