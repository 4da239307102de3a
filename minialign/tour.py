"""The tour: the course's main job in one run — base model, reward model, RLHF, DPO, GDC and f-DPG on names —
writing ``report.md`` with its plots and printing how long each stage took."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np


class Stages:
    """Times named stages and prints each one's duration as it ends."""

    def __init__(self):
        self.seconds = {}

    def __call__(self, name):
        stages = self

        class _Stage:
            def __enter__(self):
                print(f"\n== {name}", flush=True)
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                stages.seconds[name] = time.perf_counter() - self.t0
                print(f"stage {name}: {stages.seconds[name]:.1f} s", flush=True)

        return _Stage()


def _plots(out, base_hist, bigram, rlhf_runs, gdc_hist, cal_hist, fdpg_hist, rein_hist, dpo_hist):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    if base_hist is not None:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(base_hist["step"], base_hist["val_loss"], marker="o", label="GPT validation")
        ax.axhline(bigram, color="gray", ls="--", label="bigram (counts)")
        ax.set_xlabel("step"), ax.set_ylabel("nats / token"), ax.legend()
        fig.tight_layout(), fig.savefig(out / "pretrain_loss.png", dpi=100), plt.close(fig)
        paths["pretrain"] = "pretrain_loss.png"

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for beta, hist in rlhf_runs.items():
        ax.plot(hist["kl_k3"], hist["reward"], marker=".", ms=3, label=f"RLHF β={beta}")
        ax.annotate(f"β={beta}", (hist["kl_k3"][-1], hist["reward"][-1]), fontsize=8)
    ax.set_xlabel("KL(π‖a) (k3 estimate, nats)"), ax.set_ylabel("reward-model reward (normalised)")
    ax.set_title("reward–KL frontier over training"), ax.legend(fontsize=8)
    fig.tight_layout(), fig.savefig(out / "reward_kl.png", dpi=100), plt.close(fig)
    paths["frontier"] = "reward_kl.png"

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    for name, hist in (("GDC (DPG)", gdc_hist), ("GDC, λ on π", cal_hist), ("f-DPG (JS)", fdpg_hist),
                       ("REINFORCE on φ", rein_hist)):
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
    paths["constraint"] = "constraint.png"

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, hist in (("GDC (DPG)", gdc_hist), ("f-DPG (JS)", fdpg_hist)):
        ax.plot(hist["kl_p_pi_est"], label=name)
    ax.set_xlabel("step"), ax.set_ylabel("KL(p‖π) (importance-sampling estimate)"), ax.legend()
    fig.tight_layout(), fig.savefig(out / "kl_p_pi.png", dpi=100), plt.close(fig)
    paths["kl_p_pi"] = "kl_p_pi.png"

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(dpo_hist["pair_accuracy"], label="DPO: training pair accuracy")
    ax.set_xlabel("step"), ax.legend()
    fig.tight_layout(), fig.savefig(out / "dpo.png", dpi=100), plt.close(fig)
    paths["dpo"] = "dpo.png"
    return paths


def run_tour(out="runs/tour", quick: bool = False, pretrain: bool = False) -> int:
    """The whole course on names, in a few minutes on 2 CPU cores (``quick``: a smoke run of seconds)."""
    from . import tasks
    from .ebm import feature, fit_names_ebm, parse_constraint
    from .pretrain import PretrainConfig, bigram_baseline, evaluate, names_dataset
    from .pretrain import pretrain as run_pretrain
    from .rewards import annotator_ceiling, evaluate_pairs, fit_reward_model, simulate_preferences, true_reward
    from .trainers.common import TrainConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = Stages()
    steps = 8 if quick else 80
    cfg = TrainConfig(steps=steps, batch_size=32 if quick else 64, lr=3e-4, seed=0, checkpoint_every=10**9)
    betas = (0.3, 0.1) if quick else (1.0, 0.3, 0.1, 0.03)
    # the distributional target moves slowly (chapter 06): more steps, larger batches, GDC++'s baseline
    gdc_cfg = cfg if quick else TrainConfig(steps=250, batch_size=128, lr=5e-4, seed=0, checkpoint_every=10**9)
    lines = ["# minialign tour report", ""]

    with stage("base model"):
        base_hist = None
        if pretrain or quick:
            pcfg = PretrainConfig()
            if quick:
                pcfg.steps, pcfg.eval_every = 20, 10
            base, base_hist = run_pretrain(pcfg, out=out / "base.npz")
            if quick:  # a 20-step model is too weak to align; the quick run aligns the committed base
                base = tasks.load_base()
        else:
            base = tasks.load_base()
        _, _, val_ids = names_dataset(base.config.block_size)
        val = evaluate(base, val_ids)
        bigram = bigram_baseline(base.config.block_size)
        before = tasks.samples(base, 16, 0)
        print(f"validation loss: GPT {val:.4f} vs bigram {bigram:.4f} nats/token")
    lines += ["## Base model", "",
              f"GPT with {base.num_parameters():,} parameters ({'pretrained in this run' if pretrain else 'the committed checkpoint, trained by `minialign pretrain`'}).",
              "", "| model | validation loss (nats/token) |", "|---|---|", f"| GPT | {val:.4f} |",
              f"| bigram (counts, add-1) | {bigram:.4f} |", "", "Samples: " + ", ".join(before), ""]

    with stage("reward model"):
        pairs = simulate_preferences(base, 600 if quick else 3000, seed=0)
        train_pairs, val_pairs = pairs.split(len(pairs) // 4)
        rm, _ = fit_reward_model(train_pairs, val_pairs, steps=40 if quick else 300, progress=False)
        _, acc = evaluate_pairs(rm, val_pairs)
        ceiling = annotator_ceiling(val_pairs)
        rm.normalise(base, n=1024 if quick else 4096)
        print(f"reward model held-out accuracy {acc:.3f}; annotator ceiling {ceiling.expected:.3f} (expected), "
              f"{ceiling.realised:.3f} (realised)")
    lines += ["## Preferences and the reward model", "",
              f"{len(pairs)} pairs of base-model samples labelled by a simulated Bradley–Terry annotator with the "
              "hidden reward r*(x) = 2·[ends in a vowel] + [contains l] − ½|len − 6|.",
              f"Held-out pair accuracy of the reward model: **{acc:.3f}**; the annotator's ceiling on the same pairs: "
              f"{ceiling.expected:.3f} expected (Bayes), {ceiling.realised:.3f} realised by r* itself.", ""]

    rlhf_runs, rlhf_rows, rlhf_samples = {}, [], {}
    with stage("RLHF (RLOO, k1 in the reward)"):
        for beta in betas:
            policy, hist = tasks.run_rlhf(rm.score, beta=beta, cfg=cfg, base=base, progress=not quick)
            rlhf_runs[beta] = hist
            names = tasks.samples(policy, 200, 1)
            rlhf_samples[beta] = names[:12]
            rlhf_rows.append((beta, hist["reward"][-1], float(np.mean(true_reward(names))), hist["kl_k3"][-1],
                              hist["distinct_2"][-1], hist["in_corpus"][-1]))
    lines += ["## RLHF", "", "RLOO with the sequence-level k1 penalty in the reward, against the reward model. "
              "As β falls the policy moves further from the base model (KL(π‖a) grows) and its samples grow alike "
              "(distinct-2 and the share of real names fall). Whether the true reward r* keeps up with the reward "
              "model's measures how far the reward model can be trusted: where r* stalls while the model's reward "
              "climbs, the policy is exploiting the reward model (reward hacking; chapter 05 shows it with a "
              "weaker reward model).", "",
              "| β | reward model (last batch) | true reward r* (200 samples) | KL(π‖a) k3 | distinct-2 | in corpus |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {b} | {r:.3f} | {t:.3f} | {k:.3f} | {d:.3f} | {c:.3f} |" for b, r, t, k, d, c in rlhf_rows]
    lines += ["", "![reward–KL](reward_kl.png)", ""]
    lines += [f"- β = {b}: " + ", ".join(s) for b, s in rlhf_samples.items()] + [""]

    with stage("DPO"):
        dpo_policy, dpo_hist = tasks.run_dpo(train_pairs, beta=0.1, cfg=cfg, base=base, progress=not quick)
        dpo_names = tasks.samples(dpo_policy, 200, 1)
        dpo_true = float(np.mean(true_reward(dpo_names)))
    base_true = float(np.mean(true_reward(tasks.samples(base, 200, 1))))
    lines += ["## DPO", "", f"DPO (β = 0.1) on the same training pairs, no reward model and no sampling: mean true "
              f"reward {dpo_true:.3f} on 200 samples (base model: {base_true:.3f}); training pair accuracy "
              f"{dpo_hist['pair_accuracy'][-1]:.3f} on the last batch.", "", "Samples: " + ", ".join(dpo_names[:12]), ""]

    with stage("GDC: 50% female"):
        ebm, report = fit_names_ebm(base, [parse_constraint("female=0.5")], n_samples=2000 if quick else 10000)
        print(report)
        n_eval = 1000 if not quick else 200
        female = feature("female")
        gdc_policy, gdc_hist = tasks.run_gdc(ebm, baseline=True, cfg=gdc_cfg, base=base, progress=not quick)
        cal_policy, cal_hist = tasks.run_gdc(ebm, baseline=True, calibrate=0.1, cfg=gdc_cfg, base=base,
                                             progress=not quick)
        rows = {}
        for name, policy in (("GDC, λ of the I-projection", gdc_policy), ("GDC, λ on π's moment", cal_policy)):
            names, kl, se = tasks.fresh_samples(policy, base, n_eval, 1)
            rows[name] = (names, float(np.mean(female(names))), kl, se)
        cal_frac = rows["GDC, λ on π's moment"][1]
        # the contrast at the same satisfaction: REINFORCE on the feature, stopped at GDC's fraction
        _, rein_hist, rows["REINFORCE, φ as the reward"] = tasks.compare_reinforce(
            female, cal_frac, base, n_eval=n_eval, seed=0, batch_size=gdc_cfg.batch_size, progress=not quick)
    tol = 2 * np.sqrt(0.25 / n_eval)
    hists = {"GDC, λ of the I-projection": gdc_hist, "GDC, λ on π's moment": cal_hist,
             "REINFORCE, φ as the reward": rein_hist}
    lines += ["## GDC: half the names female", "", "```", str(report), "```", "",
              f"{len(gdc_hist['loss'])} DPG steps (GDC++ baseline, KL-adaptive proposal) towards the I-projection p "
              f"bring the female fraction of {n_eval} fresh samples to {rows['GDC, λ of the I-projection'][1]:.3f}: "
              "this model cannot represent p, and DPG stops at the closest policy it can reach (chapter 06). "
              f"With λ moved by dual ascent on the policy's own moment (rate 0.1; final λ "
              f"{cal_hist['lambda_0'][-1]:.3f} against the I-projection's {ebm.lam[0]:.3f}) it is "
              f"**{cal_frac:.3f}** (target 0.5; two binomial standard errors at this sample size: ±{tol:.3f}).",
              f"REINFORCE with the feature itself as the reward (lr 1e-4) is stopped when the female fraction of "
              f"{n_eval} fresh samples reaches that ({len(rein_hist['loss'])} steps). KL(π‖a) is estimated on each model's fresh samples "
              "(± one standard error); distinct-2 and Self-BLEU are from the last training batch.", "",
              "| | female fraction | KL(π‖a) | distinct-2 | Self-BLEU |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {frac:.3f} | {kl:.3f} ± {se:.3f} | {hists[name]['distinct_2'][-1]:.3f} | "
              f"{hists[name]['self_bleu'][-1]:.3f} |" for name, (_, frac, kl, se) in rows.items()]
    lines += [""] + [f"Samples ({name}): " + ", ".join(row[0][:12]) for name, row in rows.items()] + [""]

    with stage("f-DPG (JS), same target"):
        fdpg_policy, fdpg_hist = tasks.run_fdpg("js", tasks.ebm_target(ebm), ebm=ebm, cfg=gdc_cfg, base=base,
                                                progress=not quick)
        fdpg_frac = float(np.mean(female(tasks.samples(fdpg_policy, n_eval, 1))))
    lines += ["## f-DPG with Jensen–Shannon", "", f"The same target, minimising JS(π‖p) instead of KL(p‖π): female "
              f"fraction {fdpg_frac:.3f}, KL(p‖π) estimate {fdpg_hist['kl_p_pi_est'][-1]:.3f} (GDC: "
              f"{gdc_hist['kl_p_pi_est'][-1]:.3f}), KL(π‖a) {fdpg_hist['kl_pi_a_est'][-1]:.3f}.", "",
              "![constraint](constraint.png)", "", "![KL(p‖π)](kl_p_pi.png)", ""]

    with stage("report"):
        paths = _plots(out, base_hist, bigram, rlhf_runs, gdc_hist, cal_hist, fdpg_hist, rein_hist, dpo_hist)
        if "pretrain" in paths:
            lines.insert(3, f"![pretraining]({paths['pretrain']})\n")
        lines += ["## Timings", ""] + [f"- {k}: {v:.1f} s" for k, v in stage.seconds.items()]
        (out / "report.md").write_text("\n".join(lines) + "\n")
    total = sum(stage.seconds.values())
    print(f"\ntour finished in {total:.0f} s; report: {out / 'report.md'}")
    return 0
