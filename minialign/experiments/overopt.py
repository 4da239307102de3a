"""Reward over-optimisation on the exact lab (chapter 05, §13; Gao, Schulman & Hilton 2023).

A hidden *gold* reward g(x) on every sequence of the lab plays the simulated annotator's taste; the annotator
labels pairs of base-model samples by Bradley–Terry (Eq. 5.2) with it. A *proxy* reward model is fitted to N
labelled pairs (Eq. 5.3, a table with one score per sequence and a standard normal prior on each score: the
maximum a posteriori fit). The proxy is then optimised two ways, both exactly on the enumeration:

* best-of-n: draw n samples from a, keep the one the proxy scores highest (ties broken at random): the
  distribution ``best_of_n``, whose KL(π_n‖a) is at most log n − (n−1)/n (``bon_kl_bound``), with
  equality in the limit of a continuous score;
* RLHF: the KL-control optimum π_β = a·e^{s/β}/Z (Eq. 5.6) for many β.

Gold and proxy reward (each measured from its value under a) are plotted against d = √KL(π‖a), and the two
functional forms of Gao et al. are fitted (Eq. 5.28): best-of-n R(d) = d(u − v·d), RL R(d) = d(u − v·log d).

``python -m minialign.experiments overopt [--out DIR] [--quick]`` prints the tables and writes the figure.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from ..lab import ExactLab, lab_model

N_PAIRS = (30, 100, 300, 1000, 3000, 10000)
DATA_SEEDS = range(8)
BON_NS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
BETAS = np.geomspace(20.0, 0.02, 40)


# ------------------------------------------------------------------------------ the lab, the gold reward, the proxies
def overopt_lab(seed=0, vocab_size=4, block_size=5, scale=0.5):
    """A tiny GPT a on the lab (EOS and three letters, up to four letters: 121 sequences), a over the enumeration,
    and the gold reward g(x) ~ N(0, 1), one independent value per sequence. Returns (lab, p_a, g)."""
    a = lab_model(seed, vocab_size=vocab_size, block_size=block_size, scale=scale)
    lab = ExactLab.for_model(a)
    gold = np.random.default_rng([seed, 7]).standard_normal(len(lab))
    return lab, lab.distribution(a), gold


def annotated_pairs(p_a, gold, n, rng):
    """n pairs of independent samples of a, each labelled by the Bradley–Terry annotator with the gold reward
    (Eq. 5.2). Returns (winners, losers) as indices into the enumeration."""
    x = rng.choice(len(p_a), size=n, p=p_a)
    y = rng.choice(len(p_a), size=n, p=p_a)
    x_wins = rng.random(n) < 1.0 / (1.0 + np.exp(-(gold[x] - gold[y])))
    return np.where(x_wins, x, y), np.where(x_wins, y, x)


def fit_proxy(n_seq, winners, losers, weights=None, prior=1.0, tol=1e-9, max_iter=200) -> np.ndarray:
    """The reward model: one score s(x) per sequence minimising Σ_i w_i·(−log σ(s(winner_i) − s(loser_i))) (Eq. 5.3,
    summed) + prior/2·‖s‖² — the maximum a posteriori table under a N(0, 1/prior) prior. Convex; Newton's method
    with a backtracking line search."""
    w = np.ones(len(winners)) if weights is None else np.asarray(weights, np.float64)

    def objective(s):
        return float(w @ np.logaddexp(0.0, -(s[winners] - s[losers])) + 0.5 * prior * s @ s)

    with threadpool_limits(limits=1, user_api="blas"):  # a 121 × 121 solve: extra BLAS threads only slow it down
        return _newton(n_seq, winners, losers, w, prior, objective, tol, max_iter)


def _newton(n_seq, winners, losers, w, prior, objective, tol, max_iter) -> np.ndarray:
    s = np.zeros(n_seq)
    for _ in range(max_iter):
        sig = 1.0 / (1.0 + np.exp(-(s[winners] - s[losers])))
        g_pair = -w * (1.0 - sig)  # d/dm of −w log σ(m)
        grad = prior * s + np.bincount(winners, g_pair, n_seq) - np.bincount(losers, g_pair, n_seq)
        h_pair = w * sig * (1.0 - sig)
        hess = prior * np.eye(n_seq)
        np.add.at(hess, (winners, winners), h_pair)
        np.add.at(hess, (losers, losers), h_pair)
        np.add.at(hess, (winners, losers), -h_pair)
        np.add.at(hess, (losers, winners), -h_pair)
        step, t, f0 = np.linalg.solve(hess, grad), 1.0, objective(s)
        while objective(s - t * step) > f0 - 0.25 * t * grad @ step and t > 1e-8:
            t /= 2
        s = s - t * step
        if np.abs(t * step).max() < tol * max(1.0, np.abs(s).max()):
            return s
    raise RuntimeError(f"Newton's method did not converge in {max_iter} steps")


def infinite_data_proxy(p_a, gold, n_pairs=1e12, prior=1.0) -> np.ndarray:
    """The proxy fitted to ``n_pairs`` pairs in exact proportion: every ordered pair (x, y) weighted by
    n_pairs·a(x)a(y)·P(x ≻ y). As n_pairs → ∞ the prior fades and the fit is the gold reward up to a constant."""
    x, y = np.meshgrid(np.arange(len(p_a)), np.arange(len(p_a)), indexing="ij")
    x, y = x.ravel(), y.ravel()
    w = n_pairs * p_a[x] * p_a[y] / (1.0 + np.exp(-(gold[x] - gold[y])))
    keep = (x != y) & (w > 0)
    return fit_proxy(len(p_a), x[keep], y[keep], w[keep], prior=prior)


# ------------------------------------------------------------------------------ two ways of optimising the proxy
def best_of_n(p, score, n) -> np.ndarray:
    """Eq. (5.27): the exact distribution of the best of n independent samples of p by ``score``, ties broken uniformly:
    a block of sequences with equal score s is reached with probability F(s)^n − F(s⁻)^n (F the CDF of the score
    under p), shared within the block in proportion to p."""
    p, score = np.asarray(p, np.float64), np.asarray(score, np.float64)
    levels, block = np.unique(score, return_inverse=True)
    mass = np.bincount(block, p, len(levels))
    upper = np.minimum(np.cumsum(mass), 1.0)
    lower = np.concatenate([[0.0], upper[:-1]])
    reach = upper ** n - lower ** n
    return np.where(mass[block] > 0, p * reach[block] / np.where(mass[block] > 0, mass[block], 1.0), 0.0)


def bon_kl_bound(n) -> float:
    """Eq. (5.27): log n − (n−1)/n, KL(best-of-n ‖ p) for a continuous score and an upper bound when it has atoms."""
    return float(np.log(n) - (n - 1) / n)


def tilted(p, score, beta) -> np.ndarray:
    """Eqs. (5.6), (5.27) on the enumeration: π_β = p·e^{s/β}/Z."""
    logits = np.log(p) + np.asarray(score, np.float64) / beta
    return np.exp(logits - np.logaddexp.reduce(logits))


def kl(p, q) -> float:
    """KL(p‖q) over the enumeration (0·log 0 = 0)."""
    at = p > 0
    return float(np.sum(p[at] * (np.log(p[at]) - np.log(q[at]))))


def sampled_best_of_n(proxy, gold, ns) -> np.ndarray:
    """Best-of-n estimated from samples (on names, where nothing is enumerated): ``proxy`` and ``gold`` are the scores
    of [groups, max(ns)] independent draws from a; for each n the first n draws of every group compete
    (ties to the first), so the groups are nested in n. Returns rows (n, √(log n − (n−1)/n), mean gold of the winners,
    its standard error over the groups, mean proxy of the winners); √(log n − (n−1)/n) bounds √KL from above."""
    proxy, gold = np.asarray(proxy, np.float64), np.asarray(gold, np.float64)
    if proxy.shape != gold.shape or proxy.ndim != 2 or proxy.shape[1] < max(ns):
        raise ValueError(f"proxy and gold must be [groups, ≥ {max(ns)}] arrays; got {proxy.shape} and {gold.shape}")
    rows = []
    for n in ns:
        win = proxy[:, :n].argmax(axis=1)
        g = gold[np.arange(len(gold)), win]
        rows.append((n, np.sqrt(bon_kl_bound(n)), g.mean(), g.std(ddof=1) / np.sqrt(len(g)),
                     proxy[np.arange(len(proxy)), win].mean()))
    return np.array(rows)


# ------------------------------------------------------------------------------ the curves and the fits
def curve_points(p_a, gold, proxy, how):
    """(d = √KL(π‖a), gold gain, proxy gain) for each n of ``BON_NS`` (``how`` = "bon") or β of ``BETAS`` ("rl"),
    the gains measured from the rewards' expectations under a."""
    pis = [best_of_n(p_a, proxy, n) for n in BON_NS] if how == "bon" else [tilted(p_a, proxy, b) for b in BETAS]
    g0, s0 = p_a @ gold, p_a @ proxy
    return np.array([(np.sqrt(max(kl(pi, p_a), 0.0)), pi @ gold - g0, pi @ proxy - s0) for pi in pis])


def fit_form(d, gain, how) -> tuple[float, float, float]:
    """Eq. (5.28) by least squares (points with d > 0): best-of-n R = d(u − v·d), RL R = d(u − v·log d) (Gao et al.).
    Returns (u, v, R² of the fit)."""
    d, gain = np.asarray(d), np.asarray(gain)
    at = d > 1e-9
    d, gain = d[at], gain[at]
    cols = np.stack([d, -d * d if how == "bon" else -d * np.log(d)], axis=1)
    (u, v), *_ = np.linalg.lstsq(cols, gain, rcond=None)
    resid = gain - cols @ np.array([u, v])
    return float(u), float(v), float(1.0 - resid @ resid / np.sum((gain - gain.mean()) ** 2))


def overopt_curves(n_pairs=N_PAIRS, seeds=DATA_SEEDS, lab_seed=0, with_gold=True) -> dict:
    """For each N: the points of both optimisers for every data seed (``points[how]``: [seeds, steps, 3]), the gold
    peak of each seed (d and gain), and the fits on all seeds' points; with ``with_gold``, under the key "gold", the
    curves of the infinite-data proxy (the gold reward up to a constant)."""
    _, p_a, gold = overopt_lab(lab_seed)
    out = {}
    for n in n_pairs:
        proxies = [fit_proxy(len(p_a), *annotated_pairs(p_a, gold, n, np.random.default_rng([lab_seed, n, s])))
                   for s in seeds]
        rec = {}
        for how in ("bon", "rl"):
            pts = np.array([curve_points(p_a, gold, s, how) for s in proxies])
            best = pts[:, :, 1].argmax(axis=1)
            rec[how] = {"points": pts, "peak_d": pts[np.arange(len(pts)), best, 0],
                        "peak_gold": pts[np.arange(len(pts)), best, 1],
                        "fit": fit_form(pts[:, :, 0].ravel(), pts[:, :, 1].ravel(), how)}
        rec["proxy_gold_corr"] = np.array([np.corrcoef(s, gold)[0, 1] for s in proxies])
        out[n] = rec
    if with_gold:
        truth = infinite_data_proxy(p_a, gold)
        out["gold"] = {how: {"points": curve_points(p_a, gold, truth, how)[None]} for how in ("bon", "rl")}
    return out


def summary(curves) -> str:
    """The table of §13: per N and optimiser, where gold peaks (mean ± standard error over the data seeds) and the
    fitted coefficients."""
    lines = ["| N pairs | corr(proxy, gold) | optimiser | gold peak: √KL | gold gain at the peak | gold gain at the "
             "end | fit u | fit v | fit R² |", "|---|---|---|---|---|---|---|---|---|"]
    for n, rec in curves.items():
        if n == "gold":
            continue
        c = rec["proxy_gold_corr"]
        for how, name in (("bon", "best-of-n"), ("rl", "RLHF")):
            r = rec[how]
            se = np.sqrt(len(r["peak_d"]))
            end = r["points"][:, -1, 1]
            u, v, r2 = r["fit"]
            lines.append(f"| {n:,} | {c.mean():.2f} | {name} | {r['peak_d'].mean():.2f} ± "
                         f"{r['peak_d'].std(ddof=1) / se:.2f} | {r['peak_gold'].mean():.3f} ± "
                         f"{r['peak_gold'].std(ddof=1) / se:.3f} | {end.mean():.3f} ± {end.std(ddof=1) / se:.3f} | "
                         f"{u:.3f} | {v:.3f} | {r2:.2f} |")
    return "\n".join(lines)


def plot(curves, path, shown=(30, 1000, 10000)) -> None:
    """Gold (solid) and proxy (dashed) gain against √KL(π‖a), averaged over the data seeds at each n or β, for the
    proxies fitted on the ``shown`` numbers of pairs; best-of-n left and RLHF right; the fitted forms (5.28) dotted;
    the infinite-data proxy (the gold reward itself) in black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [n for n in shown if n in curves]
    colors = ("C3", "C1", "C0", "C2", "C4", "C5")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    titles = (("bon", "best-of-n on the proxy r̂"), ("rl", "RLHF on the proxy: π_β ∝ a·exp(r̂/β)"))
    for ax, (how, title) in zip(axes, titles):
        for n, col in zip(ns, colors):
            pts = curves[n][how]["points"].mean(axis=0)
            ax.plot(pts[:, 0], pts[:, 1], "-", color=col, lw=1.8, label=f"gold, r̂ from N = {n:,} pairs")
            ax.plot(pts[:, 0], pts[:, 2], "--", color=col, lw=1.0, label=f"proxy, N = {n:,}")
            u, v, _ = curves[n][how]["fit"]
            d = np.linspace(1e-3, pts[:, 0].max(), 100)
            ax.plot(d, d * (u - v * (d if how == "bon" else np.log(d))), ":", color=col, lw=1.2)
        if "gold" in curves:
            g = curves["gold"][how]["points"][0]
            ax.plot(g[:, 0], g[:, 1], "-", color="black", lw=1.2, label="gold, N → ∞ (r̂ = gold)")
        ax.set_title(title)
        ax.set_xlabel("√KL(π‖a)  (nats^½)")
        ax.axhline(0.0, color="grey", lw=0.5)
    axes[0].set_ylabel("reward gain over a (mean of the data sets)")
    axes[1].legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="dotted: fit of (5.28)",
                   title_fontsize=7.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def options(parser=None):
    """The study's command line (``parser``: its subcommand of ``python -m minialign.experiments``, or a new one)."""
    from .. import argtypes as A
    from . import study_parser

    parser = study_parser("overopt", __doc__, "three values of N and three data seeds (seconds), for tests", parser)
    parser.add_argument("--figure", type=A.output_file(".png"), default=None, metavar="PATH",
                        help="where to write the figure (default: OUT/05-overopt.png)")
    parser.set_defaults(run=run)
    return parser


def run(args) -> int:
    curves = overopt_curves((100, 1000, 10000), range(3)) if args.quick else overopt_curves()
    print(summary(curves))
    for how in ("bon", "rl"):
        g = curves["gold"][how]["points"][0]
        print(f"{how}: with the gold reward itself as proxy the gold gain rises to {g[:, 1].max():.3f} at "
              f"√KL {g[-1, 0]:.2f} and never falls by more than {np.max(np.maximum.accumulate(g[:, 1]) - g[:, 1]):.1e}")
    ns = np.array(BON_NS, dtype=float)
    _, p_a, gold = overopt_lab(0)
    exact = np.array([kl(best_of_n(p_a, gold, int(n)), p_a) for n in ns])
    bound = np.array([bon_kl_bound(n) for n in ns])
    print("best-of-n KL on the lab (gold as the score) against log n − (n−1)/n: largest gap "
          f"{np.max(bound - exact):.3f} nats (at n = {int(ns[np.argmax(bound - exact)])}), never above the bound")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = Path(args.figure) if args.figure else out / "05-overopt.png"
    plot(curves, path)
    print(f"figure: {path}")
    return 0


def main(argv=None) -> int:
    return run(options().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
