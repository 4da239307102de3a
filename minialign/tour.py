"""The tour: the course's main job in one run, writing a short report with plots."""
from __future__ import annotations

import time
from pathlib import Path


def _plot_losses(history, bigram, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(history["step"], history["train_loss"], label="GPT train (running mean)")
    ax.plot(history["step"], history["val_loss"], marker="o", label="GPT validation")
    ax.axhline(bigram, color="gray", ls="--", label="bigram (counts), validation")
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_tour(out="runs/tour", quick: bool = False) -> int:
    """Pretrain the GPT on names (resuming if a checkpoint is there), compare with the bigram baseline,
    sample, and write ``report.md`` with its plot. Prints how long each stage took."""
    from .data import CharTokenizer
    from .pretrain import PretrainConfig, bigram_baseline, pretrain

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    cfg = PretrainConfig()
    if quick:
        cfg.steps, cfg.eval_every = 30, 15

    t0 = time.perf_counter()
    model, history = pretrain(cfg, out=out / "base.npz")
    timings["pretrain"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    bigram = bigram_baseline(cfg.model.block_size, seed=cfg.seed)
    tok = CharTokenizer()
    ids, logp = model.generate(20, rng=cfg.seed)
    samples = tok.decode_batch(ids)
    _plot_losses(history, bigram, out / "pretrain_loss.png")
    timings["evaluate + sample"] = time.perf_counter() - t0

    val = history["val_loss"][-1]
    lines = [
        "# minialign tour report", "",
        "## Pretraining", "",
        f"GPT ({cfg.model.n_layer} layers, {cfg.model.n_head} heads, n_embd {cfg.model.n_embd}, "
        f"{model.num_parameters():,} parameters), {cfg.steps} steps of batch {cfg.batch_size}.", "",
        "| model | validation loss (nats/token) |", "|---|---|",
        f"| GPT | {val:.4f} |", f"| bigram (counts, add-1) | {bigram:.4f} |", "",
        "![pretraining loss](pretrain_loss.png)", "",
        "## Samples (temperature 1)", "",
        ", ".join(s or "(empty)" for s in samples), "",
        "## Timings", "",
        *(f"- {k}: {v:.1f} s" for k, v in timings.items()),
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print(f"\nvalidation loss: GPT {val:.4f} vs bigram {bigram:.4f} nats/token")
    print("samples:", ", ".join(s or "(empty)" for s in samples))
    for k, v in timings.items():
        print(f"stage {k}: {v:.1f} s")
    print(f"report: {out / 'report.md'}")
    return 0
