"""The tour: the course's main job in one run — base model, reward model, RLHF, DPO, GDC, f-DPG and, with prompts,
RLOO and GRPO on names — writing ``report.md`` with its plots and, self-contained, ``report.html``, and printing one
line per stage: its result (the number that matters, with its standard error) and how long it took.

One function per stage; each returns the lines it adds to the report. The methods run through the method table,
as on the command line. Every figure in the report is measured in this run: policies are compared on fresh
samples (``tasks.evaluate``: means with standard errors, diversity at one fixed sample size) or by means over
the last training steps with their standard errors — never by one batch.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import methods as M
from . import tasks
from .ingredients import Ingredients
from .metrics import DIVERSITY_N, SELF_BLEU_N, Estimate, MomentCheck, binomial_tolerance, last_steps
from .trainers.common import RunContext, TrainConfig

LAST = 20  # training steps over which a training metric is averaged in the report


@dataclass
class Tour:
    """The settings of one tour and what its stages hand on to each other."""

    out: Path
    quick: bool
    pretrain: bool
    backend: object = None  # None: the NumPy engine; device.backend_for("cuda"): the GPU path
    cfg: TrainConfig = None
    gdc_cfg: TrainConfig = None
    n_eval: int = 1000
    base: object = None
    seconds: dict = field(default_factory=dict)
    runs: dict = field(default_factory=dict)  # stage results used by later stages and the plots
    result: str = ""  # the stage's one result line for the terminal: the number that matters, with its SE

    def __post_init__(self):
        self.cfg = TrainConfig(steps=8 if self.quick else 80, batch_size=32 if self.quick else 64, lr=3e-4, seed=0,
                               checkpoint_every=10**9)
        # the distributional target moves slowly (chapter 06): more steps, larger batches, GDC++'s baseline
        self.gdc_cfg = self.cfg if self.quick else TrainConfig(steps=250, batch_size=128, lr=5e-4, seed=0,
                                                               checkpoint_every=10**9)
        self.n_eval = DIVERSITY_N if self.quick else 1000

    def context(self, cfg: TrainConfig) -> RunContext:
        """The run context of a tour's training run: the tour's base model, no checkpoint, progress unless quick."""
        return RunContext(cfg, self.base, progress=not self.quick, backend=self.backend)

    def stage(self, name, fn):
        """Run one stage; print one line: its result and how long it took."""
        t0, self.result = time.perf_counter(), ""
        lines = fn(self)
        self.seconds[name] = time.perf_counter() - t0
        print(f"{name}: {self.result} [{self.seconds[name]:.1f} s]", flush=True)
        return lines


def _row(label, e, rewards=(), fractions=()):
    """One report row of an Evaluation: rewards and fractions ± SE, KL(π‖a) ± SE, diversity."""
    cells = [str(e.rewards[r]) for r in rewards] + [str(e.fractions[f]) for f in fractions]
    return (f"| {label} | " + " | ".join(cells + [str(e.kl), f"{e.distinct_2:.3f}", f"{e.self_bleu:.3f}",
                                                  f"{e.unique:.3f}", f"{e.in_corpus:.3f}"]) + " |")


def _binomial(p: float, n: int) -> Estimate:
    """A fraction of n independent draws, with its binomial standard error √(p(1−p)/n)."""
    return Estimate(p, math.sqrt(p * (1 - p) / n), n)


def _header(*first):
    cols = list(first) + ["KL(π‖a)", f"distinct-2 ({DIVERSITY_N})", f"Self-BLEU ({SELF_BLEU_N})", "unique", "in corpus"]
    return ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]


def base_stage(t: Tour) -> list:
    from .pretrain import PretrainConfig, bigram_baseline, evaluate, names_dataset
    from .pretrain import pretrain as run_pretrain

    t.runs["pretrain"] = None
    if t.pretrain or t.quick:
        pcfg = PretrainConfig()
        if t.quick:
            pcfg.steps, pcfg.eval_every = 20, 10
        t.base, t.runs["pretrain"] = run_pretrain(pcfg, out=t.out / "base.npz", fresh=True, backend=t.backend)
        if t.quick:  # a 20-step model is too weak to align; the quick run aligns the committed base
            t.base = tasks.load_base(backend=t.backend)
    else:
        t.base = tasks.load_base(backend=t.backend)
    _, _, val_ids = names_dataset(t.base.config.block_size)
    val = evaluate(t.base, val_ids)
    t.runs["bigram"] = bigram = bigram_baseline(t.base.config.block_size)
    t.result = f"validation loss GPT {val:.4f} vs bigram {bigram:.4f} nats/token (all validation names, exact)"
    origin = "pretrained in this run" if t.pretrain else "the committed checkpoint, trained by `minialign pretrain`"
    return ["## Base model", "", f"GPT with {t.base.num_parameters():,} parameters ({origin}).", "",
            "| model | validation loss (nats/token, all validation names) |", "|---|---|", f"| GPT | {val:.4f} |",
            f"| bigram (counts, add-1) | {bigram:.4f} |", "", "Samples: " + ", ".join(tasks.samples(t.base, 16, 0)), ""]


def reward_stage(t: Tour) -> list:
    from .rewards import simulate_preferences

    pairs = simulate_preferences(t.base, 600 if t.quick else 3000, seed=0)
    fit = tasks.fit_names_reward_model(t.base, pairs, steps=40 if t.quick else 300, progress=False,
                                       normalise_samples=1024 if t.quick else 4096)
    t.result = (f"held-out pair accuracy {_binomial(fit.accuracy, fit.n_val)} on {fit.n_val} pairs (the annotator's "
                f"ceiling {fit.ceiling.expected:.3f})")
    t.runs["reward"], t.runs["pairs"] = fit.model, tasks.split_pairs(pairs)[0]
    return ["## Preferences and the reward model", "",
            f"{len(pairs)} pairs of base-model samples labelled by a simulated Bradley–Terry annotator with the "
            "hidden reward r*(x) = 2·[ends in a vowel] + [contains l] − ½|len − 6|.",
            f"Held-out pair accuracy of the reward model on {fit.n_val} pairs: **{fit.accuracy:.3f}**; the "
            f"annotator's ceiling on the same pairs: {fit.ceiling.expected:.3f} expected (Bayes), "
            f"{fit.ceiling.realised:.3f} realised by r* itself.", ""]


def rlhf_stage(t: Tour) -> list:
    from .rewards import true_reward

    spec, rm = M.METHODS["rlhf"], t.runs["reward"]
    rewards = {"reward model r̂": rm.score, "true reward r*": true_reward}
    evals = {"base model a": tasks.evaluate(t.base, t.base, t.n_eval, rewards=rewards)}
    for beta in ((0.3, 0.1) if t.quick else (1.0, 0.3, 0.1, 0.03)):
        result = spec.run(Ingredients(reward=rm.score), spec.defaults(beta=beta), t.context(t.cfg))
        evals[f"RLHF β = {beta}"] = tasks.evaluate(result.policy, t.base, t.n_eval, rewards=rewards)
    t.runs["rlhf"] = evals
    e, a = evals["RLHF β = 0.1"], evals["base model a"]
    t.result = (f"β = 0.1: true reward r* {e.rewards['true reward r*']} (base {a.rewards['true reward r*']}), "
                f"KL(π‖a) {e.kl} on {e.n} fresh samples")
    lines = ["## RLHF", "", f"RLOO with the sequence-level k1 penalty in the reward, against the reward model, "
             f"{t.cfg.steps} steps of {t.cfg.batch_size} samples per β. Every column is measured on {t.n_eval} fresh "
             "samples of each policy (± one standard error). Where the true reward r* stops following the reward "
             "model's r̂ as β falls, the policy is exploiting the reward model's errors (chapter 05).", ""]
    lines += _header(*rewards) + [_row(k, e, rewards) for k, e in evals.items()]
    lines += ["", "![reward–KL](reward_kl.png)", ""]
    return lines + [f"- {k}: " + ", ".join(e.names[:12]) for k, e in evals.items()] + [""]


def dpo_stage(t: Tour) -> list:
    from .rewards import true_reward

    spec = M.METHODS["dpo"]
    result = spec.run(Ingredients(pairs=t.runs["pairs"]), spec.defaults(beta=0.1), t.context(t.cfg))
    t.runs["dpo"] = result.history
    rewards = {"true reward r*": true_reward}
    evals = {"base model a": t.runs["rlhf"]["base model a"],
             "DPO β = 0.1": tasks.evaluate(result.policy, t.base, t.n_eval, rewards=rewards)}
    accuracy = last_steps(result.history, "pair_accuracy", LAST)
    e, a = evals["DPO β = 0.1"], evals["base model a"]
    t.result = (f"true reward r* {e.rewards['true reward r*']} (base {a.rewards['true reward r*']}), KL(π‖a) {e.kl} "
                f"on {e.n} fresh samples")
    return ["## DPO", "", f"DPO (β = 0.1) on the reward model's training pairs ({len(t.runs['pairs'])}), with no "
            f"reward model and no sampling; training pair accuracy {accuracy} (mean over the last {LAST} steps). On "
            f"{t.n_eval} fresh samples:", ""] + _header(*rewards) + [_row(k, e, rewards) for k, e in evals.items()] \
        + ["", "Samples: " + ", ".join(evals["DPO β = 0.1"].names[:12]), ""]


def gdc_stage(t: Tour) -> list:
    from .ebm import feature, fit_names_ebm, parse_constraint

    ebm, report = fit_names_ebm(t.base, [parse_constraint("female=0.5")], n_samples=2000 if t.quick else 10000)
    t.runs["ebm"] = ebm
    # one figure for the base model's rate: the EBM's sample of a, the largest, with its standard error
    base_rate = _binomial(report.base_rates["female"], report.n_samples)
    female, spec = feature("female"), M.METHODS["gdc"]
    evals, hists = {"base model a": tasks.evaluate(t.base, t.base, t.n_eval, features=[female])}, {}
    for name, calibrate in (("GDC, λ of the I-projection", None), ("GDC, λ on π's moment", 0.1)):
        result = spec.run(Ingredients(ebm=ebm), spec.defaults(baseline=True, calibrate=calibrate,
                                                                eval_samples=t.n_eval), t.context(t.gdc_cfg))
        evals[name] = tasks.evaluate(result.policy, t.base, t.n_eval, features=[female])
        hists[name] = result.history
    calibrated = evals["GDC, λ on π's moment"].fractions["female"].mean
    # the contrast at the same satisfaction: REINFORCE on the feature, stopped at GDC's fraction
    rein = "REINFORCE, φ as the reward"
    policy, hists[rein], _ = tasks.compare_reinforce(female, calibrated, t.base, n_eval=t.n_eval, seed=0,
                                                     batch_size=t.gdc_cfg.batch_size, progress=not t.quick)
    evals[rein] = tasks.evaluate(policy, t.base, t.n_eval, features=[female])
    t.runs["gdc"], t.runs["gdc_evals"] = hists, evals
    plain = evals["GDC, λ of the I-projection"].fractions["female"]
    cal, cal_hist = evals["GDC, λ on π's moment"].fractions["female"], hists["GDC, λ on π's moment"]
    check = MomentCheck("female", calibrated, 0.5, binomial_tolerance(t.n_eval), t.n_eval)
    tol, verdict = check.tolerance, "within" if check.met else "outside"
    kl_cal = evals["GDC, λ on π's moment"].kl
    t.result = (f"female fraction {cal} with λ on π's moment, {plain} towards p (base a {base_rate}); KL(π‖a) "
                f"{kl_cal} vs REINFORCE's {evals[rein].kl} at that fraction")
    fit = "\n".join(line for line in str(report).splitlines() if "base rate" not in line)
    lines = ["## GDC: half the names female", "", "```", fit, "```", "",
             f"{t.gdc_cfg.steps} DPG steps of {t.gdc_cfg.batch_size} (GDC++ baseline, KL-adaptive proposal). Towards "
             f"the I-projection p the female fraction of {t.n_eval} fresh samples is {plain}; with λ moved by dual "
             f"ascent on the policy's own moment (rate 0.1; λ {cal_hist['lambda_0'][-1]:.3f} at the end, against "
             f"the I-projection's {ebm.lam[0]:.3f}) it is {cal}, "
             f"{verdict} the target 0.5 ± {tol:.3f} (two binomial standard errors). REINFORCE with the feature as the "
             f"reward (lr 1e-4) is stopped after {len(hists[rein]['loss'])} steps, when {t.n_eval} fresh samples reach "
             f"that fraction. Every column is measured on {t.n_eval} new fresh samples, but the base model's female "
             f"fraction: {base_rate}, on the {report.n_samples:,} samples of a that fit λ (one figure, the most "
             "precise).", ""]
    base_row = evals["base model a"]._replace(fractions={"female": base_rate})
    lines += _header("female fraction") + [_row(k, base_row if k == "base model a" else e, fractions=["female"])
                                           for k, e in evals.items()]
    return lines + [""] + [f"- Samples ({k}): " + ", ".join(e.names[:12]) for k, e in evals.items()] + [""]


def fdpg_stage(t: Tour) -> list:
    from .ebm import feature

    ebm, spec = t.runs["ebm"], M.METHODS["fdpg"]
    result = spec.run(Ingredients(ebm=ebm, target=tasks.ebm_target(ebm)), spec.defaults(f="js"),
                      t.context(t.gdc_cfg))
    hist = t.runs["fdpg"] = result.history
    e = tasks.evaluate(result.policy, t.base, t.n_eval, features=[feature("female")])
    gdc = t.runs["gdc"]["GDC, λ of the I-projection"]
    last = min(50, len(hist["loss"]))
    t.result = (f"female fraction {e.fractions['female']}, KL(π‖a) {e.kl} on {t.n_eval} fresh samples; KL(p‖π) "
                f"{last_steps(hist, 'kl_p_pi_est', last)} (GDC {last_steps(gdc, 'kl_p_pi_est', last)})")
    return ["## f-DPG with Jensen–Shannon", "", f"The same target, minimising JS(π‖p) instead of KL(p‖π), "
            f"{t.gdc_cfg.steps} steps of {t.gdc_cfg.batch_size}: female fraction {e.fractions['female']} and KL(π‖a) "
            f"{e.kl} on {t.n_eval} fresh samples. KL(p‖π), the importance-sampling estimate averaged over the last "
            f"{last} steps: f-DPG {last_steps(hist, 'kl_p_pi_est', last)}, GDC {last_steps(gdc, 'kl_p_pi_est', last)}.",
            "", "![constraint](constraint.png)", "", "![KL(p‖π)](kl_p_pi.png)", ""]


def conditional_stage(t: Tour) -> list:
    """Prompts: each name's first letter is given and the model completes it; RLOO with the baseline within each
    prompt's group, and GRPO (chapter 05, §12)."""
    from .metrics import mean_se
    from .prompts import first_letters
    from .rewards import true_reward

    prompts = first_letters(1)
    cfg = TrainConfig(steps=4 if t.quick else 30, batch_size=16 if t.quick else 64, lr=3e-4, seed=0,
                      checkpoint_every=10**9)
    ingredients = Ingredients(reward=t.runs["reward"].score)
    models, hists = {"base a": t.base}, {}
    for name, method in (("RLOO, k1 in the reward", "rlhf"), ("GRPO (std, k3 in the loss)", "grpo")):
        spec = M.METHODS[method]
        result = spec.run(ingredients, spec.defaults(prompts="first1", group_size=4, beta=0.1), t.context(cfg))
        models[name], hists[name] = result.policy, result.history
    t.runs["conditional"] = hists
    n = 200 if t.quick else 1000
    rows, true = [], {}
    for name, model in models.items():
        names, kl, se = tasks.fresh_prompted_samples(model, t.base, prompts, n, seed=1)
        true[name] = mean_se(true_reward(names))
        rows.append(f"| {name} | {mean_se(t.runs['reward'].score(names))} | {true[name]} | {kl:.3f} ± {se:.3f} |")
    t.result = (f"true reward r* on {n} fresh completions: RLOO {true['RLOO, k1 in the reward']}, GRPO "
                f"{true['GRPO (std, k3 in the loss)']} (base {true['base a']})")
    lines = ["## Prompts: completing first letters", "",
             f"The prompt is a name's first letter, drawn with the share of corpus names that begin with it; the "
             f"model completes it, against the reward model, β = 0.1, 4 completions per prompt, {cfg.steps} steps of "
             f"{cfg.batch_size // 4} prompts. RLOO takes each completion's baseline from the other completions of its "
             f"prompt; GRPO (Shao et al. 2024) standardises the rewards within each group, with PPO-clip and k3 in "
             f"the loss. {n} fresh completions of prompts drawn from ρ (± one standard error):", "",
             "| model | reward model | true reward r* | KL(π‖a) given the prompt, mean over ρ |", "|---|---|---|---|",
             *rows, ""]
    for name in hists:
        completions = tasks.prompted_samples(models[name], prompts, top=3, n=6, seed=0)
        lines.append(f"- {name}: " + "; ".join(f"{x}… → {', '.join(v)}" for x, v in completions.items()))
    return lines + [""]


def report_stage(t: Tour, lines: list) -> None:
    from .plots import tour_plots
    from .report import write_html

    paths = tour_plots(t)
    if "pretrain" in paths:
        lines.insert(3, f"![pretraining]({paths['pretrain']})\n")
    lines += ["## Timings", ""] + [f"- {k}: {v:.1f} s" for k, v in t.seconds.items()]
    (t.out / "report.md").write_text("\n".join(lines) + "\n")
    html = write_html(t.out / "report.md", title="minialign tour report")
    t.result = f"{t.out / 'report.md'} and, self-contained, {html}"


def run_tour(out="runs/tour", quick: bool = False, pretrain: bool = False, backend=None) -> int:
    """The whole course on names, in a few minutes on 2 CPU cores (``quick``: a smoke run of seconds); with
    ``backend`` (``device.backend_for("cuda")``) the models train on the GPU path."""
    t = Tour(Path(out), quick, pretrain, backend)
    t.out.mkdir(parents=True, exist_ok=True)
    lines = ["# minialign tour report", ""]
    for name, fn in (("base model", base_stage), ("reward model", reward_stage),
                     ("RLHF (RLOO, k1 in the reward)", rlhf_stage), ("DPO", dpo_stage), ("GDC: 50% female", gdc_stage),
                     ("f-DPG (JS), same target", fdpg_stage), ("prompts: RLOO and GRPO", conditional_stage)):
        lines += t.stage(name, fn)
    t.stage("report", lambda t: report_stage(t, lines))
    print(f"tour finished in {sum(t.seconds.values()):.0f} s; report: {t.out / 'report.html'}")
    return 0
