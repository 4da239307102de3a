"""Studies that produce the course's tables and plots.

``python -m minialign.experiments fdpg_study [--out runs/fdpg_study] [--quick]``

The divergence study of chapter 07 (after Go et al. 2023, made exact): on the exact lab, f-DPG with each
f ∈ {kl, reverse_kl, js, tv} — KL(π‖p), KL(p‖π), Jensen–Shannon, total variation — trains a small GPT
towards three targets with the same sample budget over several seeds, and every step the exact KL(p‖π),
KL(π‖p), TV, entropy and the mass on each mode are recorded; then the same comparison by Monte Carlo on
the names targets of chapters 05 and 06.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ..gpt import GPT
from ..lab import ExactLab, lab_model
from ..logspace import logsumexp
from ..trainers.common import TrainConfig, frozen_copy, train
from ..trainers.fdpg import FDPG

STUDY_FS = {"kl": "KL(π‖p) (reverse KL)", "reverse_kl": "KL(p‖π) (forward KL)", "js": "JS", "tv": "TV"}
THRESHOLD = 0.05  # nats of KL(p‖π)
LOG_T_MAX = 20.0


def lab_base(seed: int = 0, vocab_size: int = 3, block_size: int = 5) -> GPT:
    """A small float64 GPT with a peaked but not degenerate distribution over the lab's sequences."""
    return lab_model(seed, vocab_size, block_size, scale=0.3, n_embd=16, noise_seed=1000 + seed).eval()


def lab_targets(lab: ExactLab, log_a: np.ndarray) -> dict:
    """Three targets on the enumeration, each as (log P, modes): modes are named sets of sequences.

    reward       p ∝ a·e^{r/β}: r = +1 per token 1, −1 per token 2, β = 0.5 (a reward-based target)
    constraint   p = a(·|b), b = "starts with token 2" (a pointwise constraint, GDC's EBM)
    two_modes    p ∝ a·(e^{4·[all 1s, ≥ 2 tokens]} + e^{4·[all 2s, ≥ 2 tokens]})/…, reweighted so the two
                 modes carry equal mass although a favours one of them: a target a under-covers
    """
    seqs, lengths = lab.sequences, lab.lengths
    count1 = (seqs == 1).sum(1)
    count2 = (seqs == 2).sum(1)
    ones = (count1 == lengths) & (lengths >= 2)
    twos = (count2 == lengths) & (lengths >= 2)
    reward = (count1 - count2) / 0.5
    starts2 = seqs[:, 0] == 2
    two = log_a + 4.0 * (ones | twos)
    # equalise the two modes' mass, whatever a thinks of them
    m1, m2 = logsumexp(two[ones]), logsumexp(two[twos])
    two = two - np.where(ones, m1 - 0.5 * (m1 + m2), 0.0) - np.where(twos, m2 - 0.5 * (m1 + m2), 0.0)
    return {
        "reward": (log_a + reward, {"mostly 1s": count1 > count2, "mostly 2s": count2 > count1}),
        "constraint": (np.where(starts2, log_a, -np.inf), {"starts with 2": starts2}),
        "two_modes": (two, {"all 1s": ones, "all 2s": twos}),
    }


def samples_to_threshold(history, batch_size, key="exact_kl_p_pi", threshold=THRESHOLD):
    values = history.get(key, [])
    for i, v in enumerate(values):
        if v <= threshold:
            return (i + 1) * batch_size
    return None


def run_lab_study(seeds=(0, 1, 2), steps=150, batch_size=32, lr=1e-2, progress=True):
    """Every (target, f, seed) run on the exact lab; returns a list of records with full histories."""
    from tqdm.auto import tqdm

    records = []
    jobs = [(s, t, f) for s in seeds for t in ("reward", "constraint", "two_modes") for f in STUDY_FS]
    bar = tqdm(jobs, desc="fdpg study (exact lab)", disable=not progress)
    for seed, target_name, f in bar:
        a = lab_base(seed)
        lab = ExactLab.for_model(a)
        log_a = np.log(lab.distribution(a))
        log_scores, modes = lab_targets(lab, log_a)[target_name]
        log_p, log_z = lab.normalise(log_scores)
        policy = frozen_copy(a)
        for p in policy.parameters():
            p.requires_grad = True
        index = lab.index_of
        # log t is capped at 20 so that KL(π‖p) (f = kl, unbounded f') can train on the zero-mass target
        method = FDPG(a, policy, lambda batch, v=log_scores: v[index(batch.tokens)], f=f, proposal="policy",
                      log_t_max=LOG_T_MAX)
        mode_mass = {}

        def log_modes(step, metrics, policy=policy):
            pi = lab.distribution(policy)
            for name, mask in modes.items():
                mode_mass.setdefault(name, []).append(float(pi[mask].sum()))

        hist = train(method, policy, TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed), lab=lab,
                     target_log_p=log_p, progress=False, log_fn=log_modes)
        p = np.exp(log_p)
        records.append({
            "target": target_name, "f": f, "seed": seed, "history": hist, "mode_mass": mode_mass,
            "target_mode_mass": {name: float(p[mask].sum()) for name, mask in modes.items()},
            "target_entropy": lab.entropy(p), "base_kl_p_a": lab.divergence("kl", p, np.exp(log_a)),
            "samples_to_threshold": samples_to_threshold(hist, batch_size),
        })
    return records


def summarise(records, batch_size):
    """Mean ± std over seeds of the final exact metrics, per target and f."""
    rows = []
    for target in ("reward", "constraint", "two_modes"):
        for f in STUDY_FS:
            rs = [r for r in records if r["target"] == target and r["f"] == f]
            if not rs:
                continue

            def stat(key):
                v = np.array([r["history"][key][-1] for r in rs])
                if not np.isfinite(v).all():
                    return float("inf"), 0.0
                return float(v.mean()), float(v.std())

            reached = [r["samples_to_threshold"] for r in rs]
            mass = {name: float(np.mean([r["mode_mass"][name][-1] for r in rs])) for name in rs[0]["mode_mass"]}
            rows.append({"target": target, "f": f, "kl_p_pi": stat("exact_kl_p_pi"), "kl_pi_p": stat("exact_kl_pi_p"),
                         "tv": stat("exact_tv_pi_p"), "entropy": stat("exact_entropy"),
                         "target_entropy": float(np.mean([r["target_entropy"] for r in rs])), "mode_mass": mass,
                         "target_mode_mass": {name: float(np.mean([r["target_mode_mass"][name] for r in rs]))
                                              for name in rs[0]["target_mode_mass"]},
                         "samples_to_threshold": [x for x in reached],
                         "reached": sum(x is not None for x in reached), "runs": len(rs)})
    return rows


def markdown_table(rows, steps, batch_size):
    lines = [f"Final exact metrics after {steps} steps of {batch_size} samples (mean ± std over seeds; each seed has "
             "its own base model and so its own target: H(p) and the target's mode masses are averaged the same way); "
             f"'samples to {THRESHOLD}' is the number of samples until KL(p‖π) ≤ {THRESHOLD} nats first held "
             "(median over the seeds that got there; — if none did).", "",
             "| target | f | KL(p‖π) | KL(π‖p) | TV(π, p) | H(π) (H(p)) | mass on modes (target) | samples to 0.05 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reached = [x for x in r["samples_to_threshold"] if x is not None]
        to = f"{int(np.median(reached))} ({r['reached']}/{r['runs']})" if reached else f"— (0/{r['runs']})"
        mass = ", ".join(f"{k}: {v:.2f} ({r['target_mode_mass'][k]:.2f})" for k, v in r["mode_mass"].items())
        lines.append(
            f"| {r['target']} | {STUDY_FS[r['f']]} | {_pm(r['kl_p_pi'])} | {_pm(r['kl_pi_p'])} | {r['tv'][0]:.3f} | "
            f"{r['entropy'][0]:.3f} ({r['target_entropy']:.3f}) | {mass} | {to} |")
    return "\n".join(lines)


def _pm(stat):
    mean, std = stat
    return "∞" if not np.isfinite(mean) else f"{mean:.3f} ± {std:.3f}"


def _num(row, key):
    v = row.get(key)
    return "—" if v is None or not np.isfinite(v) else f"{v:.3f}"


def plot_lab_study(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = ("reward", "constraint", "two_modes")
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), sharex=True)
    colors = {"kl": "C3", "reverse_kl": "C0", "js": "C2", "tv": "C1"}
    for j, target in enumerate(targets):
        for f in STUDY_FS:
            rs = [r for r in records if r["target"] == target and r["f"] == f]
            if not rs:
                continue
            kl = np.mean([r["history"]["exact_kl_p_pi"] for r in rs], axis=0)
            ent = np.mean([r["history"]["exact_entropy"] for r in rs], axis=0)
            axes[0, j].plot(kl, color=colors[f], label=STUDY_FS[f])
            axes[1, j].plot(ent, color=colors[f])
        axes[0, j].axhline(THRESHOLD, color="gray", ls=":")
        axes[0, j].set_yscale("log")
        axes[0, j].set_title(target)
        axes[1, j].axhline(np.mean([r["target_entropy"] for r in rs]), color="black", ls="--", lw=0.8,
                           label="H(p) (mean over seeds)")
        axes[1, j].set_xlabel("step")
    axes[0, 0].set_ylabel("exact KL(p‖π) (nats)")
    axes[1, 0].set_ylabel("exact entropy of π (nats)")
    axes[0, 0].legend(fontsize=8)
    axes[1, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_modes(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    colors = {"kl": "C3", "reverse_kl": "C0", "js": "C2", "tv": "C1"}
    for f in STUDY_FS:
        rs = [r for r in records if r["target"] == "two_modes" and r["f"] == f]
        if not rs:
            continue
        names = list(rs[0]["mode_mass"])
        for name, ls in zip(names, ("-", "--")):
            ax.plot(np.mean([r["mode_mass"][name] for r in rs], axis=0), color=colors[f], ls=ls,
                    label=f"{STUDY_FS[f]}: {name}")
    ax.axhline(np.mean([r["target_mode_mass"][names[0]] for r in rs]), color="gray", ls=":",
               label="target mass per mode (mean over seeds)")
    ax.set_xlabel("step")
    ax.set_ylabel("mass of π on the mode")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_names_study(fs=("kl", "reverse_kl", "js", "tv"), steps=60, batch_size=64, lr=3e-4, seed=0, progress=True):
    """The same comparison by Monte Carlo on names: the GDC target "50% female" and the RLHF target
    p ∝ a·e^{r*/β} (β = 1, the true reward of chapter 05). Returns rows of final estimated metrics."""
    from .. import tasks
    from ..ebm import fit_names_ebm, parse_constraint
    from ..rewards import true_reward

    base = tasks.load_base()
    ebm, _ = fit_names_ebm(base, [parse_constraint("female=0.5")], n_samples=5000, seed=seed)
    targets = {"female=0.5": (tasks.ebm_target(ebm), ebm, None),
               "reward (β=1)": (tasks.tilted_target(true_reward, 1.0), None, true_reward)}
    rows = []
    for name, (target, e, reward) in targets.items():
        for f in fs:
            _, hist = tasks.run_fdpg(f, target, ebm=e, reward=reward,
                                     cfg=TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed),
                                     progress=progress)
            last = {k: float(np.mean(v[-5:])) for k, v in hist.items()}
            rows.append({"target": name, "f": f, **last})
    return rows


def names_table(rows):
    lines = ["| target | f | KL(p‖π) est. | KL(π‖a) est. | E[female] | reward | distinct-2 | Self-BLEU | in corpus |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [_num(r, k) for k in ("kl_p_pi_est", "kl_pi_a_est", "E[female]", "reward_est", "distinct_2",
                                      "self_bleu", "in_corpus")]
        lines.append(f"| {r['target']} | {STUDY_FS[r['f']]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fdpg_study(out="runs/fdpg_study", quick=False, progress=True, names=True):
    """Run the whole study and write ``results.md``, ``lab_curves.png``, ``two_modes.png`` and
    ``results.json`` under ``out``. Returns the summary rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds, steps, batch = ((0,), 25, 32) if quick else ((0, 1, 2), 150, 32)
    t0 = time.perf_counter()
    records = run_lab_study(seeds=seeds, steps=steps, batch_size=batch, progress=progress)
    rows = summarise(records, batch)
    plot_lab_study(records, out / "lab_curves.png")
    plot_modes(records, out / "two_modes.png")
    text = ["# f-DPG divergence study", "", "## Exact lab", "", markdown_table(rows, steps, batch), "",
            "![curves](lab_curves.png)", "", "![two modes](two_modes.png)", ""]
    if names:
        name_rows = run_names_study(steps=10 if quick else 60, batch_size=32 if quick else 64, progress=progress)
        text += ["## Names (Monte Carlo)", "", names_table(name_rows), ""]
    text.append(f"Ran in {time.perf_counter() - t0:.0f} s.")
    (out / "results.md").write_text("\n".join(text) + "\n")
    (out / "results.json").write_text(json.dumps({"rows": rows}, indent=1))
    print("\n".join(text))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minialign.experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=["fdpg_study"])
    parser.add_argument("--out", default="runs/fdpg_study")
    parser.add_argument("--quick", action="store_true", help="one seed, few steps (for tests)")
    parser.add_argument("--no-names", action="store_true", help="only the exact-lab part")
    args = parser.parse_args(argv)
    fdpg_study(args.out, quick=args.quick, names=not args.no_names)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
