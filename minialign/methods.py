"""The method table: name → its options, the ingredients it needs, and how to run it.

The command line (``minialign align NAME``) and the tour read the same :data:`METHODS`, so a method is
registered once: a :class:`MethodSpec` names the method's own options (each with its type, default and the
check that refuses a bad value before any work starts), the ingredients it needs (a reward, preference
pairs, or constraints; ``ingredients.prepare`` makes them), and a ``run`` function that trains it on a
``trainers.common.RunContext`` and returns a ``reports.Result`` whose ``report`` lines the faces print as they are.

Adding a method: write its trainer (``trainers/NAME.py``), a ``run_NAME`` in ``tasks.py`` if it needs the
names task's wiring, and one ``MethodSpec`` below.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import divergences
from .argtypes import clip_range, constraint, count, f_divergence, group_size, pairs_file, positive_float, positive_int
from .reports import Result, conditional_constraint_lines, gdc_lines, prompted_lines, summary


# ----------------------------------------------------------------------------------- the table
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


@dataclass(frozen=True)
class MethodSpec:
    name: str
    help: str
    needs: tuple          # ingredients: "reward", "pairs", "constraints", "target"
    options: tuple        # Option, …
    run: Callable         # (Ingredients, options dict, RunContext) → Result
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
                            help="the hidden true reward r*, or a reward model fitted to preferences "
                                 "(default: model)")),
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
    Option("--eval-samples", dict(type=count(2, 1_000_000, "a standard error needs at least two"), default=1000,
                                  metavar="N", help="fresh samples for the final moments and KL (default: 1000)"),
           defines_run=False),
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


def _prompts(opts):
    from .prompts import names_prompts

    return names_prompts(opts.get("prompts", "none"))


def _run_rlhf(ing, opts, ctx) -> Result:
    from . import tasks

    ctx = tasks.with_base(ctx)
    prompts = _prompts(opts)
    policy, hist = tasks.run_rlhf(ing.reward, ctx, beta=opts["beta"], kl=opts["kl"], algo=opts["algo"],
                                  kl_target=opts["kl_target"], prompts=prompts, group_size=opts["group_size"])
    keys = ["reward", "kl_k1", "kl_k3", "kl_full_token", "entropy_est", "distinct_2", "in_corpus"]
    return Result(policy, hist, [summary(hist, keys)] + prompted_lines(policy, prompts, ctx.seed))


def _run_grpo(ing, opts, ctx) -> Result:
    from . import tasks

    ctx = tasks.with_base(ctx)
    prompts = _prompts(opts)
    policy, hist = tasks.run_grpo(ing.reward, ctx, prompts=prompts, group_size=opts["group_size"], beta=opts["beta"],
                                  clip=opts["clip"], kl=opts["kl"], scale=opts["scale"] == "group",
                                  epochs=opts["epochs"], loss_agg=opts["loss_agg"])
    keys = ["reward", "kl_k1", "kl_k3", "clip_fraction", "response_length", "distinct_2", "in_corpus"]
    return Result(policy, hist, [summary(hist, keys)] + prompted_lines(policy, prompts, ctx.seed))


def _run_dpo(ing, opts, ctx) -> Result:
    from .trainers.dpo import DPO

    return _run_pairs(DPO, ing, opts, ctx)


def _run_ipo(ing, opts, ctx) -> Result:
    from .trainers.ipo import IPO

    return _run_pairs(IPO, ing, opts, ctx)


def _run_pairs(trainer, ing, opts, ctx) -> Result:
    """A pair method (``trainers.pairs.PairMethod``) on the preference pairs, as DPO."""
    from . import tasks

    ctx = tasks.with_base(ctx)
    prompts = _prompts(opts)
    policy, hist = tasks.run_pairs(trainer, ing.pairs, ctx, beta=opts["beta"],
                                   prompt_length=0 if prompts is None else prompts.length)
    return Result(policy, hist, [summary(hist, ["loss", "pair_accuracy", "margin"])]
                  + prompted_lines(policy, prompts, ctx.seed))


def _run_gdc(ing, opts, ctx) -> Result:
    from . import tasks

    ctx = tasks.with_base(ctx)
    prompts = _prompts(opts)
    policy, hist = tasks.run_gdc(ing.ebm, ctx, calibrate=opts["calibrate"], proposal=opts["proposal"],
                                 baseline=opts["baseline"], prompts=prompts, group_size=opts["group_size"])
    base = ctx.base
    if prompts is not None:
        return Result(policy, hist, conditional_constraint_lines(ing.ebm, policy, base, prompts, hist, opts, ctx.seed))
    lines, extra = gdc_lines(ing.ebm, policy, hist, opts, ctx)
    return Result(policy, hist, lines, extra)


def _run_fdpg(ing, opts, ctx) -> Result:
    from . import tasks

    ctx = tasks.with_base(ctx)
    reward = ing.reward if opts["target"] == "reward" else None
    prompts = _prompts(opts)
    policy, hist = tasks.run_fdpg(opts["f"], ing.target, ctx, ebm=ing.ebm, reward=reward, proposal=opts["proposal"],
                                  prompts=prompts, group_size=opts["group_size"])
    if prompts is not None and ing.ebm is not None:
        return Result(policy, hist, conditional_constraint_lines(ing.ebm, policy, ctx.base, prompts, hist, opts,
                                                                  ctx.seed))
    keys = [k for k in hist if k.startswith("E[")] + ["satisfied", "reward_est", "kl_p_pi_est", "kl_pi_a_est",
                                                      "self_bleu", "distinct_2", "in_corpus"]
    return Result(policy, hist, [summary(hist, keys)] + prompted_lines(policy, prompts, ctx.seed))


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
    "ipo": MethodSpec(
        "ipo", "IPO: the margin of log-ratios regressed onto 1/(2β), finite on deterministic preferences (chapter 05)",
        ("pairs",), REWARD_OPTIONS[1:] + (_beta(0.1, "β: the optimum margin of log-ratios is 1/(2β)"),)
        + _prompt_options()[:1], _run_ipo),
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
                                    help="p ∝ a·e^{r/β} (reward) or the EBM of the constraints "
                                         "(default: constraints)")),
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
