"""The tour: the course's main job in one run — base model, reward model, RLHF, DPO, GDC, f-DPG and, with prompts,
GRPO on names — writing ``report.md`` with its plots and printing how long each stage took. One function per stage;
each returns the lines it adds to the report. The methods run through the registry, as on the command line."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import registry as R
from . import tasks
from .trainers.common import TrainConfig


@dataclass
class Tour:
    """The settings of one tour and what its stages hand on to each other."""

    out: Path
    quick: bool
    pretrain: bool
    cfg: TrainConfig = None
    gdc_cfg: TrainConfig = None
    base: object = None
    seconds: dict = field(default_factory=dict)
    runs: dict = field(default_factory=dict)  # stage results used by later stages and the plots

    def __post_init__(self):
        self.cfg = TrainConfig(steps=8 if self.quick else 80, batch_size=32 if self.quick else 64, lr=3e-4, seed=0,
                               checkpoint_every=10**9)
        # the distributional target moves slowly (chapter 06): more steps, larger batches, GDC++'s baseline
        self.gdc_cfg = self.cfg if self.quick else TrainConfig(steps=250, batch_size=128, lr=5e-4, seed=0,
                                                               checkpoint_every=10**9)

    def stage(self, name, fn):
        print(f"\n== {name}", flush=True)
        t0 = time.perf_counter()
        lines = fn(self)
        self.seconds[name] = time.perf_counter() - t0
        print(f"stage {name}: {self.seconds[name]:.1f} s", flush=True)
        return lines


def base_stage(t: Tour) -> list:
    from .pretrain import PretrainConfig, bigram_baseline, evaluate, names_dataset
    from .pretrain import pretrain as run_pretrain

    t.runs["pretrain"] = None
    if t.pretrain or t.quick:
        pcfg = PretrainConfig()
        if t.quick:
            pcfg.steps, pcfg.eval_every = 20, 10
        t.base, t.runs["pretrain"] = run_pretrain(pcfg, out=t.out / "base.npz", fresh=True)
        if t.quick:  # a 20-step model is too weak to align; the quick run aligns the committed base
            t.base = tasks.load_base()
    else:
        t.base = tasks.load_base()
    _, _, val_ids = names_dataset(t.base.config.block_size)
    val = evaluate(t.base, val_ids)
    t.runs["bigram"] = bigram = bigram_baseline(t.base.config.block_size)
    print(f"validation loss: GPT {val:.4f} vs bigram {bigram:.4f} nats/token")
    origin = "pretrained in this run" if t.pretrain else "the committed checkpoint, trained by `minialign pretrain`"
    return ["## Base model", "", f"GPT with {t.base.num_parameters():,} parameters ({origin}).", "",
            "| model | validation loss (nats/token) |", "|---|---|", f"| GPT | {val:.4f} |",
            f"| bigram (counts, add-1) | {bigram:.4f} |", "", "Samples: " + ", ".join(tasks.samples(t.base, 16, 0)), ""]


def reward_stage(t: Tour) -> list:
    from .rewards import simulate_preferences

    pairs = simulate_preferences(t.base, 600 if t.quick else 3000, seed=0)
    fit = tasks.fit_names_reward_model(t.base, pairs, steps=40 if t.quick else 300, progress=False,
                                       normalise_samples=1024 if t.quick else 4096)
    print(fit)
    t.runs["reward"], t.runs["pairs"] = fit.model, tasks.split_pairs(pairs)[0]
    return ["## Preferences and the reward model", "",
            f"{len(pairs)} pairs of base-model samples labelled by a simulated Bradley–Terry annotator with the "
            "hidden reward r*(x) = 2·[ends in a vowel] + [contains l] − ½|len − 6|.",
            f"Held-out pair accuracy of the reward model: **{fit.accuracy:.3f}**; the annotator's ceiling on the same "
            f"pairs: {fit.ceiling.expected:.3f} expected (Bayes), {fit.ceiling.realised:.3f} realised by r* itself.", ""]


def rlhf_stage(t: Tour) -> list:
    from .rewards import true_reward

    spec = R.METHODS["rlhf"]
    rows, runs = [], {}
    for beta in ((0.3, 0.1) if t.quick else (1.0, 0.3, 0.1, 0.03)):
        result = spec.run(R.Ingredients(reward=t.runs["reward"].score), spec.defaults(beta=beta), t.cfg, t.base,
                          None, False, not t.quick, {})
        hist, names = result.history, tasks.samples(result.policy, 200, 1)
        runs[beta] = hist
        rows.append((beta, hist["reward"][-1], float(np.mean(true_reward(names))), hist["kl_k3"][-1],
                     hist["distinct_2"][-1], hist["in_corpus"][-1], names[:12]))
    t.runs["rlhf"] = runs
    lines = ["## RLHF", "", "RLOO with the sequence-level k1 penalty in the reward, against the reward model. "
             "As β falls the policy moves further from the base model (KL(π‖a) grows) and its samples grow alike "
             "(distinct-2 and the share of real names fall). Whether the true reward r* keeps up with the reward "
             "model's measures how far the reward model can be trusted: where r* stalls while the model's reward "
             "climbs, the policy is exploiting the reward model (reward hacking; chapter 05 shows it with a "
             "weaker reward model).", "",
             "| β | reward model (last batch) | true reward r* (200 samples) | KL(π‖a) k3 | distinct-2 | in corpus |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {b} | {r:.3f} | {tr:.3f} | {k:.3f} | {d:.3f} | {c:.3f} |" for b, r, tr, k, d, c, _ in rows]
    lines += ["", "![reward–KL](reward_kl.png)", ""]
    return lines + [f"- β = {b}: " + ", ".join(s) for b, *_, s in rows] + [""]


def dpo_stage(t: Tour) -> list:
    from .rewards import true_reward

    spec = R.METHODS["dpo"]
    result = spec.run(R.Ingredients(pairs=t.runs["pairs"]), spec.defaults(beta=0.1), t.cfg, t.base, None, False,
                      not t.quick, {})
    t.runs["dpo"] = result.history
    names = tasks.samples(result.policy, 200, 1)
    dpo_true, base_true = float(np.mean(true_reward(names))), float(np.mean(true_reward(tasks.samples(t.base, 200, 1))))
    return ["## DPO", "", f"DPO (β = 0.1) on the same training pairs, no reward model and no sampling: mean true "
            f"reward {dpo_true:.3f} on 200 samples (base model: {base_true:.3f}); training pair accuracy "
            f"{result.history['pair_accuracy'][-1]:.3f} on the last batch.", "", "Samples: " + ", ".join(names[:12]), ""]


def gdc_stage(t: Tour) -> list:
    from .ebm import feature, fit_names_ebm, parse_constraint

    ebm, report = fit_names_ebm(t.base, [parse_constraint("female=0.5")], n_samples=2000 if t.quick else 10000)
    print(report)
    t.runs["ebm"] = ebm
    n_eval, female, spec = 200 if t.quick else 1000, feature("female"), R.METHODS["gdc"]
    rows, hists = {}, {}
    for name, calibrate in (("GDC, λ of the I-projection", None), ("GDC, λ on π's moment", 0.1)):
        result = spec.run(R.Ingredients(ebm=ebm), spec.defaults(baseline=True, calibrate=calibrate,
                                                                eval_samples=n_eval), t.gdc_cfg, t.base, None, False,
                          not t.quick, {})
        names, kl, se = result.extra["fresh"]
        rows[name], hists[name] = (names, float(np.mean(female(names))), kl, se), result.history
    cal_frac = rows["GDC, λ on π's moment"][1]
    # the contrast at the same satisfaction: REINFORCE on the feature, stopped at GDC's fraction
    rein = "REINFORCE, φ as the reward"
    _, hists[rein], rows[rein] = tasks.compare_reinforce(female, cal_frac, t.base, n_eval=n_eval, seed=0,
                                                         batch_size=t.gdc_cfg.batch_size, progress=not t.quick)
    t.runs["gdc"] = hists
    gdc_hist, cal_hist = hists["GDC, λ of the I-projection"], hists["GDC, λ on π's moment"]
    tol = 2 * np.sqrt(0.25 / n_eval)
    lines = ["## GDC: half the names female", "", "```", str(report), "```", "",
             f"{len(gdc_hist['loss'])} DPG steps (GDC++ baseline, KL-adaptive proposal) towards the I-projection p "
             f"bring the female fraction of {n_eval} fresh samples to {rows['GDC, λ of the I-projection'][1]:.3f}: "
             "this model cannot represent p, and DPG stops at the closest policy it can reach (chapter 06). "
             f"With λ moved by dual ascent on the policy's own moment (rate 0.1; final λ "
             f"{cal_hist['lambda_0'][-1]:.3f} against the I-projection's {ebm.lam[0]:.3f}) it is "
             f"**{cal_frac:.3f}** (target 0.5; two binomial standard errors at this sample size: ±{tol:.3f}).",
             f"REINFORCE with the feature itself as the reward (lr 1e-4) is stopped when the female fraction of "
             f"{n_eval} fresh samples reaches that ({len(hists[rein]['loss'])} steps). KL(π‖a) is estimated on each "
             "model's fresh samples (± one standard error); distinct-2 and Self-BLEU are from the last training batch.",
             "", "| | female fraction | KL(π‖a) | distinct-2 | Self-BLEU |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {frac:.3f} | {kl:.3f} ± {se:.3f} | {hists[name]['distinct_2'][-1]:.3f} | "
              f"{hists[name]['self_bleu'][-1]:.3f} |" for name, (_, frac, kl, se) in rows.items()]
    return lines + [""] + [f"Samples ({name}): " + ", ".join(row[0][:12]) for name, row in rows.items()] + [""]


def fdpg_stage(t: Tour) -> list:
    from .ebm import feature

    ebm, spec = t.runs["ebm"], R.METHODS["fdpg"]
    result = spec.run(R.Ingredients(ebm=ebm, target=tasks.ebm_target(ebm)), spec.defaults(f="js"), t.gdc_cfg, t.base,
                      None, False, not t.quick, {})
    hist = t.runs["fdpg"] = result.history
    frac = float(np.mean(feature("female")(tasks.samples(result.policy, 200 if t.quick else 1000, 1))))
    gdc_hist = t.runs["gdc"]["GDC, λ of the I-projection"]
    return ["## f-DPG with Jensen–Shannon", "", f"The same target, minimising JS(π‖p) instead of KL(p‖π): female "
            f"fraction {frac:.3f}, KL(p‖π) estimate {hist['kl_p_pi_est'][-1]:.3f} (GDC: "
            f"{gdc_hist['kl_p_pi_est'][-1]:.3f}), KL(π‖a) {hist['kl_pi_a_est'][-1]:.3f}.", "",
            "![constraint](constraint.png)", "", "![KL(p‖π)](kl_p_pi.png)", ""]


def conditional_stage(t: Tour) -> list:
    """Prompts: each name's first letter is given and the model completes it; RLOO with the baseline within each
    prompt's group, and GRPO (chapter 05, §12)."""
    from .metrics import mean_se
    from .prompts import first_letters
    from .rewards import true_reward

    prompts = first_letters(1)
    cfg = TrainConfig(steps=4 if t.quick else 30, batch_size=16 if t.quick else 64, lr=3e-4, seed=0,
                      checkpoint_every=10**9)
    ingredients = R.Ingredients(reward=t.runs["reward"].score)
    models, hists = {"base a": t.base}, {}
    for name, method in (("RLOO, k1 in the reward", "rlhf"), ("GRPO (std, k3 in the loss)", "grpo")):
        spec = R.METHODS[method]
        result = spec.run(ingredients, spec.defaults(prompts="first1", group_size=4, beta=0.1), cfg, t.base, None,
                          False, not t.quick, {})
        models[name], hists[name] = result.policy, result.history
    t.runs["conditional"] = hists
    n = 200 if t.quick else 1000
    rows = []
    for name, model in models.items():
        names, kl, se = tasks.fresh_prompted_samples(model, t.base, prompts, n, seed=1)
        rows.append(f"| {name} | {mean_se(t.runs['reward'].score(names))} | {mean_se(true_reward(names))} | "
                    f"{kl:.3f} ± {se:.3f} |")
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
    paths = _plots(t)
    if "pretrain" in paths:
        lines.insert(3, f"![pretraining]({paths['pretrain']})\n")
    lines += ["## Timings", ""] + [f"- {k}: {v:.1f} s" for k, v in t.seconds.items()]
    (t.out / "report.md").write_text("\n".join(lines) + "\n")


def run_tour(out="runs/tour", quick: bool = False, pretrain: bool = False) -> int:
    """The whole course on names, in a few minutes on 2 CPU cores (``quick``: a smoke run of seconds)."""
    t = Tour(Path(out), quick, pretrain)
    t.out.mkdir(parents=True, exist_ok=True)
    lines = ["# minialign tour report", ""]
    for name, fn in (("base model", base_stage), ("reward model", reward_stage),
                     ("RLHF (RLOO, k1 in the reward)", rlhf_stage), ("DPO", dpo_stage), ("GDC: 50% female", gdc_stage),
                     ("f-DPG (JS), same target", fdpg_stage), ("prompts: RLOO and GRPO", conditional_stage)):
        lines += t.stage(name, fn)
    t.stage("report", lambda t: report_stage(t, lines))
    print(f"\ntour finished in {sum(t.seconds.values()):.0f} s; report: {t.out / 'report.md'}")
    return 0


def _plots(t: Tour) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, paths = t.out, {}
    base_hist, gdc = t.runs["pretrain"], t.runs["gdc"]
    if base_hist is not None:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(base_hist["step"], base_hist["val_loss"], marker="o", label="GPT validation")
        ax.axhline(t.runs["bigram"], color="gray", ls="--", label="bigram (counts)")
        ax.set_xlabel("step"), ax.set_ylabel("nats / token"), ax.legend()
        fig.tight_layout(), fig.savefig(out / "pretrain_loss.png", dpi=100), plt.close(fig)
        paths["pretrain"] = "pretrain_loss.png"

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for beta, hist in t.runs["rlhf"].items():
        ax.plot(hist["kl_k3"], hist["reward"], marker=".", ms=3, label=f"RLHF β={beta}")
        ax.annotate(f"β={beta}", (hist["kl_k3"][-1], hist["reward"][-1]), fontsize=8)
    ax.set_xlabel("KL(π‖a) (k3 estimate, nats)"), ax.set_ylabel("reward-model reward (normalised)")
    ax.set_title("reward–KL frontier over training"), ax.legend(fontsize=8)
    fig.tight_layout(), fig.savefig(out / "reward_kl.png", dpi=100), plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    for name, hist in (("GDC (DPG)", gdc["GDC, λ of the I-projection"]), ("GDC, λ on π", gdc["GDC, λ on π's moment"]),
                       ("f-DPG (JS)", t.runs["fdpg"]), ("REINFORCE on φ", gdc["REINFORCE, φ as the reward"])):
        axes[0].plot(hist["E[female]"] if "E[female]" in hist else hist["reward_est"], label=name)
        axes[1].plot(hist["kl_pi_a_est"], label=name)
        axes[2].plot(hist["distinct_2"], label=name)
    axes[0].axhline(0.5, color="gray", ls="--")
    axes[0].set_title("female fraction E_π[φ]"), axes[1].set_title("KL(π‖a) (estimate)")
    axes[2].set_title("distinct-2 (diversity)")
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    fig.tight_layout(), fig.savefig(out / "constraint.png", dpi=100), plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, hist in (("GDC (DPG)", gdc["GDC, λ of the I-projection"]), ("f-DPG (JS)", t.runs["fdpg"])):
        ax.plot(hist["kl_p_pi_est"], label=name)
    ax.set_xlabel("step"), ax.set_ylabel("KL(p‖π) (importance-sampling estimate)"), ax.legend()
    fig.tight_layout(), fig.savefig(out / "kl_p_pi.png", dpi=100), plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(t.runs["dpo"]["pair_accuracy"], label="DPO: training pair accuracy")
    ax.set_xlabel("step"), ax.legend()
    fig.tight_layout(), fig.savefig(out / "dpo.png", dpi=100), plt.close(fig)
    return paths
