"""The report lines of a method's run: what ``minialign align NAME`` and the tour print after training.

Every figure is measured: a mean over the last steps with its standard error, or fresh samples of the trained
policy (never one batch); a verdict comes with its tolerance (``metrics.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .metrics import check_moments, last_steps


@dataclass
class Result:
    """A trained policy, its history, and what the run has to say about itself (lines the faces print)."""

    policy: Any
    history: dict
    report: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)



def summary(history, keys, k=10) -> str:
    """Each metric as its mean ± standard error over the last ``k`` steps (never one batch)."""
    parts = [f"{key} {last_steps(history, key, k)}" for key in keys if history.get(key)]
    return f"over the last {min(k, len(next(iter(history.values()))))} steps: " + "  ".join(parts)


def prompted_lines(policy, prompts, seed) -> list:
    """Completions of the likeliest prompts, for a conditional run's report."""
    from . import tasks

    if prompts is None or prompts.length == 0:
        return []
    samples = tasks.prompted_samples(policy, prompts, seed=seed)
    return ["completions: " + "; ".join(f"{x}… → {', '.join(names)}" for x, names in samples.items())]


def constraint_report(ebm, policy, base, history, n, seed):
    """Each feature's fraction on ``n`` fresh samples judged against μ̄ (binomial tolerance), the pointwise
    satisfaction, and KL(π‖a) on the same samples; returns (lines, the MomentChecks, (names, kl, se))."""
    from . import tasks

    names, kl, se = tasks.fresh_samples(policy, base, n, seed + 1)
    mus = list(ebm.mu_bar) if ebm.mu_bar is not None else [None] * ebm.k
    checks = check_moments(ebm.features, mus, names)
    lines = []
    for i, c in enumerate(checks):
        verdict = "" if c.target is None else (f" (target {c.target:.3f} ± {c.tolerance:.3f}, two binomial standard "
                                                f"errors: {'met' if c.met else 'not met'})")
        lam = f"; final λ {history[f'lambda_{i}'][-1]:.3f}" if f"lambda_{i}" in history else ""
        lines.append(f"E_π[{c.name}] on {n} fresh samples: {c.value:.3f}{verdict}{lam}")
    for c in ebm.pointwise:
        lines.append(f"pointwise {c.name}: satisfied by {float(np.mean(c(names))):.3f} of {n} fresh samples")
    lines.append(f"KL(π‖a) on the same samples: {kl:.3f} ± {se:.3f}")
    return lines, checks, (names, kl, se)


def gdc_lines(ebm, policy, hist, opts, ctx) -> tuple[list, dict]:
    """What an unconditional GDC run says: each constraint on fresh samples, whether μ̄ was met and what to do
    if not, the REINFORCE contrast when asked, and the last steps; returns (lines, {"checks", "fresh"})."""
    base = ctx.base
    lines, checks, (names, kl, se) = constraint_report(ebm, policy, base, hist, opts["eval_samples"], ctx.seed)
    missed = not all(c.met for c in checks)
    if missed and opts["calibrate"] is None:
        lines.append(f"after {len(hist['loss'])} steps the policy misses μ̄: DPG moves π towards p, and can stop short "
                     "of it with too few steps or a policy that cannot represent p (chapter 06 §6); --calibrate 0.1 "
                     "moves λ until π itself meets μ̄ (this course's extension of GDC, chapter 06 §7)")
    elif missed:
        lines.append(f"after {len(hist['loss'])} steps λ has not yet brought π to μ̄: train longer (chapter 06 §7 uses "
                     "--baseline --steps 250 --batch-size 128 --lr 5e-4)")
    if opts["compare_reinforce"] and ebm.k:
        lines += reinforce_lines(ebm.features[0], checks[0].value, opts["eval_samples"], ctx, hist, (kl, se))
    lines.append(summary(hist, [k for k in hist if k.startswith("E[")] + ["satisfied", "kl_p_pi_est", "kl_pi_a_est",
                                                                        "self_bleu", "distinct_2", "in_corpus"]))
    return lines, {"checks": checks, "fresh": (names, kl, se)}




def conditional_constraint_lines(ebm, policy, base, prompts, hist, opts, seed) -> list:
    """Each pointwise constraint's satisfaction on fresh completions of prompts drawn from ρ (± one standard
    error), the mean conditional KL on the same samples, the run's last steps, and completions of the top prompts."""
    from . import tasks

    n = opts.get("eval_samples", 1000)
    names, kl, se = tasks.fresh_prompted_samples(policy, base, prompts, n, seed + 1)
    lines = []
    for c in ebm.pointwise:
        frac = float(np.mean(c(names)))
        lines.append(f"pointwise {c.name}: satisfied by {frac:.3f} ± {np.sqrt(frac * (1 - frac) / n):.3f} of {n} fresh "
                     f"completions (prompts drawn from ρ: {prompts.name})")
    lines.append(f"E_ρ KL(π(·|x)‖a(·|x)) on the same samples: {kl:.3f} ± {se:.3f}")
    lines.append(summary(hist, ["satisfied", "kl_p_pi_est", "kl_pi_a_est", "self_bleu", "distinct_2", "in_corpus"]))
    return lines + prompted_lines(policy, prompts, seed)


def reinforce_lines(feature, reached, n, ctx, hist, gdc_kl) -> list:
    """REINFORCE with the feature as the reward, stopped at GDC's fraction; both KLs on fresh samples (``gdc_kl``:
    GDC's KL and its standard error)."""
    from . import tasks

    kl, se = gdc_kl
    _, rein, (_, value, rein_kl, rein_se) = tasks.compare_reinforce(feature, reached, ctx.base, n_eval=n,
                                                                    seed=ctx.seed, batch_size=ctx.cfg.batch_size,
                                                                    progress=ctx.progress)
    steps = len(rein["loss"])
    first = (f"REINFORCE with {feature.name} as the reward (lr 1e-4), stopped after {steps} steps when {n} fresh "
             f"samples reached E[{feature.name}] = {reached:.3f}: {value:.3f} on new samples"
             if steps < tasks.COMPARE_STEPS else
             f"REINFORCE with {feature.name} as the reward (lr 1e-4) did not reach E[{feature.name}] = {reached:.3f} "
             "in "
             f"{tasks.COMPARE_STEPS} steps: {value:.3f} on fresh samples; the comparison is not at equal fraction")
    return [first, f"KL(π‖a) on fresh samples: GDC {kl:.3f} ± {se:.3f} | REINFORCE {rein_kl:.3f} ± {rein_se:.3f}"]
