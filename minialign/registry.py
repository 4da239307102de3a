"""The registry of alignment methods: name → its options, the ingredients it needs, and how to run it.

The command line (``minialign align NAME``) and the tour read the same :data:`METHODS`, so a method is
registered once: a :class:`MethodSpec` names the method's own options (each with its type, default and the
check that refuses a bad value before any work starts), the ingredients it needs (a reward, preference
pairs, or constraints; :func:`prepare` makes them), and a ``run`` function that trains it and returns a
:class:`Result` whose ``report`` lines the faces print as they are.

Adding a method: write its trainer (``trainers/NAME.py``), a ``run_NAME`` in ``tasks.py`` if it needs the
names task's wiring, and one ``MethodSpec`` below.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import divergences
from .argtypes import clip_range, constraint, count, f_divergence, group_size, pairs_file, positive_float, positive_int
from .metrics import check_moments, last_steps


# ----------------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Option:
    """One command-line option of a method: ``flag`` with argparse's keywords, and whether it defines the run
    (recorded in its checkpoints, so that a resume with another value is refused)."""

    flag: str
    kwargs: dict
    defines_run: bool = True

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest", self.flag.lstrip("-").replace("-", "_"))


@dataclass
class Result:
    """A trained policy, its history, and what the run has to say about itself (lines the faces print)."""

    policy: Any
    history: dict
    report: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    help: str
    needs: tuple          # ingredients: "reward", "pairs", "constraints", "target"
    options: tuple        # Option, …
    run: Callable         # (Ingredients, options dict, TrainConfig, base, out, fresh, progress) → Result
    check: Callable | None = None  # (options dict) → None or raises ValueError: cross-option checks
    check_train: Callable | None = None  # (options dict, TrainConfig) → None or raises: checks against --batch-size

    def defaults(self, **overrides) -> dict:
        """The method's options at their defaults, with ``overrides`` (by option name) applied."""
        opts = {o.dest: o.kwargs.get("default") for o in self.options}
        unknown = set(overrides) - set(opts)
        if unknown:
            raise ValueError(f"{self.name} has no option {', '.join(sorted(unknown))}; its options: {', '.join(opts)}")
        return {**opts, **overrides}

    def identity(self, opts: dict) -> dict:
        """The command and the options that define a run of this method, as JSON-able values."""
        return {"command": f"align {self.name}",
                **{o.dest: str(opts[o.dest]) if isinstance(opts[o.dest], Path) else opts[o.dest]
                   for o in self.options if o.defines_run and o.dest in opts}}


BATCH_LIMIT = 65_536  # samples per step; beyond it one step's activations outgrow a machine's memory
SAMPLES_LIMIT = 10_000_000  # names drawn at once to fit an EBM (kept in memory with their features)

REWARD_OPTIONS = (
    Option("--reward", dict(choices=["true", "model"], default="model",
                            help="the hidden true reward r*, or a reward model fitted to preferences (default: model)")),
    Option("--pairs", dict(type=pairs_file, default=None, metavar="CSV",
                           help="a preferences CSV (columns chosen,rejected); default: simulate them")),
    Option("--n-pairs", dict(type=count(2, 1_000_000, "a quarter of the pairs is held out"), default=3000, metavar="N",
                             help="simulated preference pairs (default: 3000)")),
)
CONSTRAINT_OPTIONS = (
    Option("--constraint", dict(type=constraint, action="append", default=[], metavar="SPEC",
                                help="e.g. female=0.5 (distributional) or contains:z (pointwise); repeatable")),
    Option("--ebm-samples", dict(type=count(1, SAMPLES_LIMIT), default=20000, metavar="N",
                                 help="samples of a for fitting λ by moment matching (default: 20000)")),
    Option("--eval-samples", dict(type=count(2, 1_000_000, "a standard error needs at least two"), default=1000, metavar="N",
                                  help="fresh samples for the final moments and KL (default: 1000)"), defines_run=False),
)


def _prompt_options(default="none", group=4, group_type=None):
    """--prompts and --group-size: the conditional setting on names (chapter 05, §12)."""
    from .prompts import KINDS

    return (Option("--prompts", dict(choices=list(KINDS), default=default,
                                     help="prompts the model completes: none, the first letter (first1) or the first "
                                          f"two letters (first2) of corpus names, ρ ∝ names per prefix (default: "
                                          f"{default})")),
            Option("--group-size", dict(type=group_type or positive_int, default=group,
                                        help="completions per prompt in a batch, with prompts; --batch-size must be a "
                                             f"multiple (default: {group})")))


def _check_groups(opts, cfg):
    """With prompts, a batch is whole groups: --batch-size a multiple of --group-size."""
    if opts.get("prompts", "none") != "none":
        _check_grpo_groups(opts, cfg)


def _check_grpo_groups(opts, cfg):
    """GRPO's batches are whole groups, with prompts or without."""
    if cfg.batch_size < opts["group_size"] or cfg.batch_size % opts["group_size"]:
        raise ValueError(f"--batch-size {cfg.batch_size} is not a multiple of --group-size {opts['group_size']}: a "
                         "batch is whole groups of completions of one prompt each")


def _beta(default, what):
    return Option("--beta", dict(type=positive_float, default=default, metavar="X", help=what))


def _proposal(default):
    return Option("--proposal", dict(choices=["adaptive", "fixed", "policy"], default=default,
                                     help=f"what to sample from: a copy of π updated when π is closer to p "
                                          f"(adaptive), the initial copy (fixed) or π itself (default: {default})"))


# ----------------------------------------------------------------------------------- ingredients
@dataclass
class Ingredients:
    """What :func:`prepare` made for a method: a reward (names → rewards), preference pairs (the training
    part), an EBM, and an f-DPG target (batch → log P)."""

    reward: Callable | None = None
    pairs: Any = None
    ebm: Any = None
    target: Callable | None = None
    identity: dict = field(default_factory=dict)


def prepare(spec: MethodSpec, opts: dict, base, seed: int, progress: bool, say=print) -> Ingredients:
    """Make the ingredients ``spec`` needs, printing what was measured on the way (the reward model's held-out
    accuracy, the EBM's fit)."""
    from . import tasks
    from .ebm import fit_names_ebm, parse_constraint
    from .prompts import names_prompts
    from .rewards import load_pairs, simulate_preferences, true_reward

    out = Ingredients()
    needs = set(spec.needs)
    if "target" in needs:
        needs.add("constraints" if opts.get("target") == "constraints" else "reward")
    if {"reward", "pairs"} & needs:
        if opts.get("pairs") is not None:
            try:
                pairs = load_pairs(opts["pairs"], base.config.block_size)
            except ValueError as e:
                raise ValueError(f"argument --pairs: {e}") from None
            out.identity["pairs_sha256"] = hashlib.sha256(Path(opts["pairs"]).read_bytes()).hexdigest()[:16]
        else:
            pairs = None
        if "pairs" in needs and pairs is None and opts.get("prompts", "none") != "none":  # triples: (x, y_w, y_l)
            pairs = tasks.simulate_conditional_preferences(base, names_prompts(opts["prompts"]), opts["n_pairs"],
                                                           seed=seed)
        if "pairs" in needs or opts.get("reward") == "model":
            pairs = pairs if pairs is not None else simulate_preferences(base, opts["n_pairs"], seed=seed,
                                                                                 progress=progress)
            out.pairs = tasks.split_pairs(pairs)[0]
        out.reward = true_reward
        if "reward" in needs and opts.get("reward") == "model":
            fit = tasks.fit_names_reward_model(base, pairs, seed=seed, progress=progress)
            say(str(fit))
            out.reward = fit.model.score
    if "constraints" in needs:
        ebm, report = fit_names_ebm(base, [parse_constraint(c) for c in opts["constraint"]],
                                    n_samples=opts["ebm_samples"], seed=seed, progress=progress)
        say(str(report))
        out.ebm = ebm
    if "target" in needs:
        out.target = tasks.ebm_target(out.ebm) if out.ebm is not None else tasks.tilted_target(out.reward, opts["beta"])
    return out


# ----------------------------------------------------------------------------------- the methods
def _summary(history, keys, k=10) -> str:
    """Each metric as its mean ± standard error over the last ``k`` steps (never one batch)."""
    parts = [f"{key} {last_steps(history, key, k)}" for key in keys if history.get(key)]
    return f"over the last {min(k, len(next(iter(history.values()))))} steps: " + "  ".join(parts)


def _prompts(opts):
    from .prompts import names_prompts

    return names_prompts(opts.get("prompts", "none"))


def _prompted_lines(policy, prompts, seed) -> list:
    """Completions of the likeliest prompts, for a conditional run's report."""
    from . import tasks

    if prompts is None or prompts.length == 0:
        return []
    samples = tasks.prompted_samples(policy, prompts, seed=seed)
    return ["completions: " + "; ".join(f"{x}… → {', '.join(names)}" for x, names in samples.items())]


def _run_rlhf(ing, opts, cfg, base, out, fresh, progress, identity) -> Result:
    from . import tasks

    prompts = _prompts(opts)
    policy, hist = tasks.run_rlhf(ing.reward, beta=opts["beta"], kl=opts["kl"], algo=opts["algo"],
                                  kl_target=opts["kl_target"], cfg=cfg, base=base, out=out, progress=progress,
                                  fresh=fresh, identity=identity, prompts=prompts, group_size=opts["group_size"])
    return Result(policy, hist, [_summary(hist, ["reward", "kl_k1", "kl_k3", "kl_full_token", "entropy_est",
                                                 "distinct_2", "in_corpus"])] + _prompted_lines(policy, prompts, cfg.seed))


def _run_grpo(ing, opts, cfg, base, out, fresh, progress, identity) -> Result:
    from . import tasks

    prompts = _prompts(opts)
    policy, hist = tasks.run_grpo(ing.reward, prompts, opts["group_size"], beta=opts["beta"], clip=opts["clip"],
                                  kl=opts["kl"], scale=opts["scale"] == "group", epochs=opts["epochs"], cfg=cfg,
                                  base=base, out=out, progress=progress, fresh=fresh, identity=identity,
                                  loss_agg=opts["loss_agg"])
    keys = ["reward", "kl_k1", "kl_k3", "clip_fraction", "response_length", "distinct_2", "in_corpus"]
    return Result(policy, hist, [_summary(hist, keys)] + _prompted_lines(policy, prompts, cfg.seed))


def _run_dpo(ing, opts, cfg, base, out, fresh, progress, identity) -> Result:
    from . import tasks

    prompts = _prompts(opts)
    policy, hist = tasks.run_dpo(ing.pairs, beta=opts["beta"], cfg=cfg, base=base, out=out, progress=progress,
                                 fresh=fresh, identity=identity, prompt_length=0 if prompts is None else prompts.length)
    return Result(policy, hist, [_summary(hist, ["loss", "pair_accuracy", "margin"])]
                  + _prompted_lines(policy, prompts, cfg.seed))


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


def _run_gdc(ing, opts, cfg, base, out, fresh, progress, identity) -> Result:
    from . import tasks

    prompts = _prompts(opts)
    policy, hist = tasks.run_gdc(ing.ebm, proposal=opts["proposal"], baseline=opts["baseline"],
                                 calibrate=opts["calibrate"], cfg=cfg, base=base, out=out, progress=progress,
                                 fresh=fresh, identity=identity, prompts=prompts, group_size=opts["group_size"])
    if prompts is not None:
        return Result(policy, hist, _conditional_constraint_lines(ing.ebm, policy, base, prompts, hist, opts, cfg.seed))
    lines, checks, (names, kl, se) = constraint_report(ing.ebm, policy, base, hist, opts["eval_samples"], cfg.seed)
    missed = not all(c.met for c in checks)
    if missed and opts["calibrate"] is None:
        lines.append(f"after {len(hist['loss'])} steps the policy misses μ̄: DPG moves π towards p, and can stop short "
                     "of it with too few steps or a policy that cannot represent p (chapter 06 §6); --calibrate 0.1 "
                     "moves λ until π itself meets μ̄ (this course's extension of GDC, chapter 06 §7)")
    elif missed:
        lines.append(f"after {len(hist['loss'])} steps λ has not yet brought π to μ̄: train longer (chapter 06 §7 uses "
                     "--baseline --steps 250 --batch-size 128 --lr 5e-4)")
    if opts["compare_reinforce"] and ing.ebm.k:
        lines += _reinforce_at(ing.ebm.features[0], checks[0].value, base, opts["eval_samples"], cfg, hist, kl, se,
                               progress)
    lines.append(_summary(hist, [k for k in hist if k.startswith("E[")] + ["satisfied", "kl_p_pi_est", "kl_pi_a_est",
                                                                        "self_bleu", "distinct_2", "in_corpus"]))
    return Result(policy, hist, lines, {"checks": checks, "fresh": (names, kl, se)})


def _conditional_constraint_lines(ebm, policy, base, prompts, hist, opts, seed) -> list:
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
    lines.append(_summary(hist, ["satisfied", "kl_p_pi_est", "kl_pi_a_est", "self_bleu", "distinct_2", "in_corpus"]))
    return lines + _prompted_lines(policy, prompts, seed)


def _reinforce_at(feature, reached, base, n, cfg, hist, kl, se, progress) -> list:
    """REINFORCE with the feature as the reward, stopped at GDC's fraction; both KLs on fresh samples."""
    from . import tasks

    _, rein, (_, value, rein_kl, rein_se) = tasks.compare_reinforce(feature, reached, base, n_eval=n, seed=cfg.seed,
                                                                    batch_size=cfg.batch_size, progress=progress)
    steps = len(rein["loss"])
    first = (f"REINFORCE with {feature.name} as the reward (lr 1e-4), stopped after {steps} steps when {n} fresh "
             f"samples reached E[{feature.name}] = {reached:.3f}: {value:.3f} on new samples"
             if steps < tasks.COMPARE_STEPS else
             f"REINFORCE with {feature.name} as the reward (lr 1e-4) did not reach E[{feature.name}] = {reached:.3f} in "
             f"{tasks.COMPARE_STEPS} steps: {value:.3f} on fresh samples; the comparison is not at equal fraction")
    return [first, f"KL(π‖a) on fresh samples: GDC {kl:.3f} ± {se:.3f} | REINFORCE {rein_kl:.3f} ± {rein_se:.3f}"]


def _run_fdpg(ing, opts, cfg, base, out, fresh, progress, identity) -> Result:
    from . import tasks

    reward = ing.reward if opts["target"] == "reward" else None
    prompts = _prompts(opts)
    policy, hist = tasks.run_fdpg(opts["f"], ing.target, ebm=ing.ebm, reward=reward, proposal=opts["proposal"],
                                  cfg=cfg, base=base, out=out, progress=progress, fresh=fresh, identity=identity,
                                  prompts=prompts, group_size=opts["group_size"])
    if prompts is not None and ing.ebm is not None:
        return Result(policy, hist, _conditional_constraint_lines(ing.ebm, policy, base, prompts, hist, opts, cfg.seed))
    keys = [k for k in hist if k.startswith("E[")] + ["satisfied", "reward_est", "kl_p_pi_est", "kl_pi_a_est",
                                                      "self_bleu", "distinct_2", "in_corpus"]
    return Result(policy, hist, [_summary(hist, keys)] + _prompted_lines(policy, prompts, cfg.seed))


def _check_constraints(opts):
    if not opts.get("constraint"):
        raise ValueError("give at least one --constraint, e.g. --constraint female=0.5 or --constraint contains:z")
    given = {}
    for c in opts["constraint"]:
        given.setdefault(c.partition("=")[0].strip(), []).append(c)
    for name, specs in given.items():
        if len(specs) > 1:
            raise ValueError(f"--constraint {name} is given twice ({', '.join(specs)}): a feature can be held to one "
                             "target only; give each constraint once")


def _check_rlhf(opts):
    if opts["algo"] == "ppo" and opts["kl"] != "k1_seq":
        raise ValueError(f"--algo ppo takes the KL penalty in the reward, per sequence: use --kl k1_seq (the default) "
                         f"with it; got --kl {opts['kl']}")


def _check_conditional_constraints(opts):
    if opts.get("prompts", "none") != "none" and any("=" in c for c in opts.get("constraint", [])):
        raise ValueError("with --prompts, give pointwise constraints only (e.g. --constraint contains:z): a "
                         "distributional one such as female=0.5 would need its own λ for every prompt")


def _check_gdc(opts):
    _check_constraints(opts)
    _check_conditional_constraints(opts)
    if opts["calibrate"] is not None and not any("=" in c for c in opts["constraint"]):
        raise ValueError("--calibrate moves λ towards distributional targets; give one, e.g. --constraint female=0.5")


def _check_fdpg(opts):
    if opts["target"] != "constraints":
        return
    _check_constraints(opts)
    _check_conditional_constraints(opts)
    fd = divergences.get(opts["f"])
    if not math.isfinite(fd.slope_at_infinity) and any("=" not in c for c in opts["constraint"]):
        raise ValueError(f"--f {opts['f']} has f'(t) → ∞ as t → ∞, so samples outside a pointwise constraint "
                         "(where p = 0) would get an infinite pseudo-reward; use --f js, tv, reverse_kl or hellinger "
                         "with a pointwise constraint")


TRAIN_DEFAULTS = {"steps": 100, "batch_size": 64, "lr": 3e-4}

METHODS = {
    "rlhf": MethodSpec(
        "rlhf", "RLHF: maximise E_π[r] − β·KL(π‖a) by policy gradient (chapter 05)", ("reward",),
        REWARD_OPTIONS + (
            _beta(0.1, "KL coefficient β"),
            Option("--kl", dict(choices=["k1_seq", "k1_token", "k2_loss", "k3_loss", "full_token"], default="k1_seq",
                                help="where the KL penalty enters: k1 in the reward per sequence or per token, k2/k3 "
                                     "per token in the loss, or the analytic KL over the vocabulary at every visited "
                                     "prefix (full_token) (default: k1_seq)")),
            Option("--algo", dict(choices=["rloo", "ppo", "reinforce"], default="rloo",
                                  help="RLOO, PPO-clip, or REINFORCE without a baseline (default: rloo)")),
            Option("--kl-target", dict(type=positive_float, default=None, metavar="KL",
                                       help="adapt β towards this KL(π‖a) (Ziegler et al. 2019)")),
        ) + _prompt_options(), _run_rlhf, _check_rlhf, check_train=_check_groups),
    "dpo": MethodSpec(
        "dpo", "DPO: the KL-control optimum fitted to preference pairs directly (chapter 05)", ("pairs",),
        REWARD_OPTIONS[1:] + (_beta(0.1, "KL coefficient β of the implicit reward"),) + _prompt_options()[:1],
        _run_dpo),
    "gdc": MethodSpec(
        "gdc", "GDC: DPG towards the EBM that meets the constraints (chapter 06)", ("constraints",),
        CONSTRAINT_OPTIONS + (
            _proposal("adaptive"),
            Option("--baseline", dict(action="store_true", help="GDC++'s baseline (Korbak et al. 2022)")),
            *_prompt_options(),
            Option("--calibrate", dict(type=positive_float, default=None, metavar="RATE",
                                       help="move λ by dual ascent on the policy's own moments at this rate (e.g. "
                                            "0.1), so that π, not only p, meets the distributional constraints "
                                            "(chapter 06 §7)")),
            Option("--compare-reinforce", dict(action="store_true",
                                               help="also run REINFORCE with the first feature as the reward, to the "
                                                    "same fraction, and print both KLs"), defines_run=False),
        ), _run_gdc, _check_gdc, _check_groups),
    "fdpg": MethodSpec(
        "fdpg", "f-DPG: minimise D_f(π‖p) for any f (chapter 07)", ("target",),
        REWARD_OPTIONS + CONSTRAINT_OPTIONS[:2] + (
            Option("--f", dict(type=f_divergence, default="js", metavar="F",
                               help="the f-divergence D_f(π‖p): " + ", ".join(divergences.NAMES) + " (kl gives "
                                    "KL(π‖p), reverse_kl gives KL(p‖π); default: js)")),
            Option("--target", dict(choices=["reward", "constraints"], default="constraints",
                                    help="p ∝ a·e^{r/β} (reward) or the EBM of the constraints (default: constraints)")),
            _beta(0.1, "temperature β of the reward target p ∝ a·e^{r/β}"),
            _proposal("policy"),
        ) + _prompt_options(), _run_fdpg, _check_fdpg, _check_groups),
    "grpo": MethodSpec(
        "grpo", "GRPO: group-normalised advantages, PPO-clip and a KL to a (chapter 05, §12)", ("reward",),
        REWARD_OPTIONS + _prompt_options("first1", 4, group_size) + (
            _beta(0.04, "KL coefficient β"),
            Option("--clip", dict(type=clip_range, default=0.2, help="PPO's clip ε (default: 0.2)")),
            Option("--kl", dict(choices=["k3_loss", "k1_reward"], default="k3_loss",
                                help="k3 per token in the loss (as published) or k1 per sequence in the reward, after "
                                     "the normalisation (default: k3_loss)")),
            Option("--scale", dict(choices=["group", "none"], default="group",
                                   help="divide each advantage by its group's standard deviation (as published), or "
                                        "not (default: group)")),
            Option("--epochs", dict(type=positive_int, default=1,
                                    help="optimizer steps on each batch (PPO-clip keeps them near π_old; default: 1)")),
            Option("--loss-agg", dict(choices=["seq_sum", "token_mean", "constant"], default="seq_sum",
                                      help="a response's token terms: summed (one term per response), divided by its "
                                           "length (GRPO as published; TRL's grpo) or by the largest length (Dr. "
                                           "GRPO; TRL's dr_grpo) (default: seq_sum)")),
        ), _run_grpo, check_train=_check_grpo_groups),
}
