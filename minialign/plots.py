"""The tour's figures: every one titled, its axes labelled, its legend off the data, error bars where a standard
error was measured. Presentation only: the numbers come from the runs (``tasks.evaluate``, the histories)."""
from __future__ import annotations

import numpy as np

DPI = 110


def moving_average(values, k: int = 10) -> np.ndarray:
    """The mean of each window of ``k`` consecutive values (the first k − 1 points average what there is)."""
    v = np.asarray(values, dtype=np.float64)
    c = np.cumsum(np.concatenate([[0.0], v]))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - k, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Matplotlib writes its version into every PNG ("Software") and a date into PDF and SVG files: without these
# keys the same figure gives the same bytes on every run and every machine with the same pixels, so re-running
# a notebook leaves an unchanged figure unchanged in git.
_FIXED_METADATA = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
                   "svg": {"Creator": None, "Date": None}}


def save_figure(fig, path, dpi: int = DPI, **kwargs):
    """``fig.savefig`` with metadata that do not change between runs (no software version, no date)."""
    from pathlib import Path

    fmt = kwargs.get("format") or Path(str(path)).suffix.lstrip(".").lower() or "png"
    meta = dict(_FIXED_METADATA.get(fmt, {}))
    meta.update(kwargs.pop("metadata", None) or {})
    fig.savefig(path, dpi=dpi, metadata=meta or None, **kwargs)


def _save(fig, path):
    fig.tight_layout()
    save_figure(fig, path)
    import matplotlib.pyplot as plt

    plt.close(fig)


def _training_curve(ax, values, label, color, k=10):
    ax.plot(values, color=color, alpha=0.25, lw=0.8)
    ax.plot(moving_average(values, k), color=color, lw=1.6, label=f"{label} (mean of {k} steps)")


def tour_plots(t) -> dict:
    """Draw the tour's figures into ``t.out``; returns {name: file} of the optional ones drawn."""
    plt = _pyplot()
    out, paths = t.out, {}
    if t.runs.get("pretrain") is not None:
        hist = t.runs["pretrain"]
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        ax.plot(hist["step"], hist["val_loss"], marker="o", label="GPT, validation names")
        ax.axhline(t.runs["bigram"], color="gray", ls="--", label="bigram (counts), same names")
        ax.set(xlabel="training step", ylabel="cross-entropy (nats/token)", title="pretraining on census names")
        ax.legend(loc="upper right")
        _save(fig, out / "pretrain_loss.png")
        paths["pretrain"] = "pretrain_loss.png"

    evals = t.runs["rlhf"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    keys = list(evals)
    kl = np.array([evals[k].kl.mean for k in keys])
    kl_se = np.array([evals[k].kl.se for k in keys])
    for j, (reward, marker) in enumerate(zip(evals[keys[0]].rewards, ("o", "s"))):
        y = np.array([evals[k].rewards[reward].mean for k in keys])
        se = np.array([evals[k].rewards[reward].se for k in keys])
        ax.errorbar(kl, y, xerr=kl_se, yerr=se, marker=marker, capsize=2, label=reward)
        if j == 0:
            for i, k in enumerate(keys):
                ax.annotate(k.replace("RLHF ", ""), (kl[i], y[i]), xytext=(6, -12 if i % 2 else 6),
                            textcoords="offset points", fontsize=8)
    ax.set(xlabel=f"KL(π‖a) on {evals[keys[0]].n} fresh samples (nats)", ylabel="mean reward on the same samples",
           title="reward–KL frontier: the base model and RLHF at each β")
    ax.legend(loc="lower right")
    _save(fig, out / "reward_kl.png")

    gdc = t.runs["gdc"]
    series = (("GDC, λ of the I-projection", gdc["GDC, λ of the I-projection"], "C0"),
              ("GDC, λ on π's moment", gdc["GDC, λ on π's moment"], "C1"), ("f-DPG (JS)", t.runs["fdpg"], "C2"),
              ("REINFORCE, φ as the reward", gdc["REINFORCE, φ as the reward"], "C3"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for name, hist, color in series:
        _training_curve(axes[0], hist["E[female]"] if "E[female]" in hist else hist["reward_est"], name, color)
        _training_curve(axes[1], hist["kl_pi_a_est"], name, color)
    axes[0].axhline(0.5, color="black", ls="--", lw=1, label="target μ̄ = 0.5")
    axes[0].set(xlabel="training step", ylabel="female fraction (batch estimate)", title="the constraint over training")
    axes[1].set(xlabel="training step", ylabel="KL(π‖a) (batch estimate, nats)",
                title="distance from the base model\n(an unbiased batch estimate can dip below 0)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    save_figure(fig, out / "constraint.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, hist, color in series[:1] + series[2:3]:
        _training_curve(ax, hist["kl_p_pi_est"], name, color)
    ax.set(xlabel="training step", ylabel="KL(p‖π), importance-sampling estimate (nats)",
           title="distance to the target p over training")
    ax.legend(loc="upper right", fontsize=8)
    _save(fig, out / "kl_p_pi.png")

    fig, ax = plt.subplots(figsize=(6, 3.6))
    _training_curve(ax, t.runs["dpo"]["pair_accuracy"], "DPO, training pair accuracy", "C0")
    ax.axhline(0.5, color="gray", ls=":", lw=1, label="chance")
    ax.set(xlabel="training step", ylabel="accuracy on the step's pairs", title="DPO on the preference pairs",
           ylim=(0, 1))
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, out / "dpo.png")
    return paths
