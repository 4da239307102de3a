"""The study behind chapter 06's names tables: GDC against KL-penalised RLHF at the same target, and whether
the names plateau is a limit of the model or of the optimiser.

``python -m minialign.experiments.gdc_study [--out runs/gdc_study] [--quick] [--part compare|budgets|distill|all]``

**compare.** "Half the names female" has the I-projection p = a·e^{λ*φ}/Z with λ* < 0 (Eq. 6.3–6.5). RLHF
with the reward r = −φ and the KL coefficient β = −1/λ* has the optimum a·e^{r/β}/Z = p (Eq. 6.12): the same
target. GDC (DPG, adaptive proposal, GDC++ baseline) and RLHF (RLOO, k1 in the reward, Ziegler et al. 2019)
are trained with the same budget over several seeds and measured on fresh samples: the female fraction,
KL(π‖a), KL(π‖p), KL(p‖π) (on exact samples of p, drawn by rejection from a), Self-BLEU, distinct-2 and the
share of unique names — each a mean with its standard error.

**budgets.** Plain GDC towards the same target with more steps, larger batches or other learning rates (seed 0).

**distill.** Maximum likelihood on exact samples of p, fresh batches from a large pool, with a batch and a
budget far beyond DPG's: the ideal stochastic gradient of KL(p‖π). Held-out KL(p‖π) and the female fraction
of fresh samples are measured along the way.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..data import CharTokenizer
from ..metrics import distinct_n, self_bleu
from ..trainers.common import RunContext, TrainConfig, logprobs

SELF_BLEU_BLOCK = 200  # Self-BLEU of 200 names, averaged over blocks
DISTINCT_BLOCK = 100  # distinct-2 of 100 names, averaged over blocks
UNIQUE_BLOCK = 200  # the share of distinct names among 200, averaged over blocks


def _mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def _blocks(names, size):
    return [names[i:i + size] for i in range(0, len(names) - size + 1, size)]


def _single_tilt(ebm):
    if ebm.k != 1 or ebm.pointwise or not ebm.features[0].binary:
        raise ValueError("this study needs an EBM with one binary feature and no pointwise constraint "
                         f"(such as female=0.5); got {ebm!r}")
    return float(ebm.lam[0])


def exact_target_samples(base, ebm, n: int, seed: int = 0, batch_size: int = 4096):
    """n exact samples of p = a·e^{λφ}/Z (one binary feature) by rejection from a (Eq. 6.6): x ∼ a is kept
    with probability e^{λφ(x)}/M, M = max(1, e^λ). Returns ``(tokens, names, proposals)``: the kept token rows,
    their names, and how many samples of a were drawn (proposals/n estimates M/Z)."""
    lam = _single_tilt(ebm)
    log_m = max(0.0, lam)
    rng = np.random.default_rng(seed)
    tok = CharTokenizer()
    kept_tokens, kept_names, proposals = [], [], 0
    while len(kept_names) < n:
        tokens, _ = base.generate(batch_size, rng=rng)
        names = tok.decode_batch(tokens)
        accept = np.flatnonzero(rng.random(len(names)) < np.exp(lam * ebm.phi(names)[:, 0] - log_m))
        take = accept[:n - len(kept_names)]
        kept_tokens.append(tokens[take])
        kept_names += [names[i] for i in take]
        # proposals spent: the whole batch, or up to the last one kept when this batch completes the sample
        proposals += len(names) if len(kept_names) < n else int(take[-1]) + 1
    return np.concatenate(kept_tokens), kept_names, proposals


def base_rate(base, ebm, n: int = 20_000, seed: int = 1, batch_size: int = 4096) -> tuple[float, float]:
    """P_a(φ = 1) on n fresh samples of a, with its standard error."""
    rng = np.random.default_rng(seed)
    tok = CharTokenizer()
    phi = []
    while len(phi) < n:
        tokens, _ = base.generate(min(batch_size, n - len(phi)), rng=rng)
        phi += list(ebm.phi(tok.decode_batch(tokens))[:, 0])
    return _mean_se(phi)


def tilt_log_z(lam: float, rate: float) -> float:
    """log Z(λ) = log E_a[e^{λφ}] = log(1 − f + f e^λ) for a binary φ with P_a(φ = 1) = f."""
    return float(np.log1p(rate * np.expm1(lam)))


def tilt_kl(lam: float, rate: float) -> float:
    """KL(p_λ‖a) = λ E_{p_λ}[φ] − log Z(λ) for a binary φ with P_a(φ = 1) = f (Eq. 6.4 at any λ)."""
    log_z = tilt_log_z(lam, rate)
    moment = rate * np.exp(lam - log_z)
    return float(lam * moment - log_z)


def names_report(policy, base, ebm, log_z: float, n: int = 2000, seed: int = 12345, p_tokens=None) -> dict:
    """Fresh samples of π, each metric a mean ± standard error (``key`` and ``key_se``):

    female     E_π[φ]
    kl_pi_a    KL(π‖a) = E_π[log π − log a] (k1)
    kl_pi_p    KL(π‖p) = E_π[log π − log a − λφ] + log Z (the RLHF side's divergence, Eq. 5.7)
    kl_p_pi    KL(p‖π) = E_p[log a + λφ − log Z − log π] on the exact samples ``p_tokens`` (GDC's divergence)
    self_bleu  Self-BLEU of 200 names, over the blocks of 200
    distinct_2 distinct-2 of 100 names, over the blocks of 100
    unique     the share of distinct names among 200, over the blocks of 200
    """
    lam = _single_tilt(ebm)
    tok = CharTokenizer()
    tokens, log_pi = policy.generate(n, rng=seed)
    names = tok.decode_batch(tokens)
    phi = ebm.phi(names)[:, 0]
    k1 = np.asarray(log_pi, np.float64) - logprobs(base, tokens)
    out = {"names": names}
    stats = {"female": phi, "kl_pi_a": k1, "kl_pi_p": k1 - lam * phi + log_z,
             "self_bleu": [self_bleu(b) for b in _blocks(names, SELF_BLEU_BLOCK)],
             "distinct_2": [distinct_n(b, 2) for b in _blocks(names, DISTINCT_BLOCK)],
             "unique": [len(set(b)) / len(b) for b in _blocks(names, UNIQUE_BLOCK)]}
    if p_tokens is not None:
        p_names = tok.decode_batch(p_tokens)
        stats["kl_p_pi"] = (logprobs(base, p_tokens) + lam * ebm.phi(p_names)[:, 0] - log_z
                            - logprobs(policy, p_tokens))
    for key, values in stats.items():
        out[key], out[key + "_se"] = _mean_se(values)
    return out


# ------------------------------------------------------------------------------------------ compare


def run_compare(seeds=(0, 1, 2), steps=100, batch_size=64, lr=5e-4, n_eval=2000, n_fit=10_000, n_p=2000,
                progress=False, base=None) -> dict:
    """GDC and RLHF at the same target (Eq. 6.12), trained with the same budget for each seed."""
    from .. import tasks
    from ..ebm import fit_names_ebm

    base = base or tasks.load_base()
    ebm, fit = fit_names_ebm(base, ["female=0.5"], n_samples=n_fit, seed=0)
    lam = float(ebm.lam[0])
    reward, beta = tasks.kl_control_equivalent(ebm)
    rate, rate_se = base_rate(base, ebm, n=max(n_fit, 4 * n_eval))
    log_z = tilt_log_z(lam, rate)
    p_tokens, _, proposals = exact_target_samples(base, ebm, n_p, seed=7)
    out = {"lambda": lam, "beta": beta, "base_rate": rate, "base_rate_se": rate_se, "log_z": log_z,
           "kl_p_a": tilt_kl(lam, rate), "proposals_per_sample": proposals / n_p,
           "config": {"steps": steps, "batch_size": batch_size, "lr": lr, "n_eval": n_eval, "n_p": n_p},
           "base": _strip(names_report(base, base, ebm, log_z, n_eval, p_tokens=p_tokens)), "runs": []}
    for seed in seeds:
        cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, checkpoint_every=10**9)
        for method in ("gdc", "rlhf"):
            t = time.perf_counter()
            if method == "gdc":
                policy, hist = tasks.run_gdc(ebm, RunContext(cfg, base, progress=progress), proposal="adaptive",
                                             baseline=True)
            else:
                policy, hist = tasks.run_rlhf(reward, RunContext(cfg, base, progress=progress), beta=beta,
                                              kl="k1_seq", algo="rloo")
            report = _strip(names_report(policy, base, ebm, log_z, n_eval, seed=12345 + seed, p_tokens=p_tokens))
            # the batch estimate of E_π[φ]: GDC logs it; RLHF logs its reward sign(λ)·φ
            batch = hist["E[female]"] if method == "gdc" else np.sign(lam) * np.asarray(hist["reward_est"])
            report.update(method=method, seed=seed, seconds=time.perf_counter() - t,
                          batch_female=[float(v) for v in batch])
            out["runs"].append(report)
            if progress:
                print(method, seed, {k: round(report[k], 3) for k in ("female", "kl_pi_a", "kl_p_pi", "kl_pi_p")})
    return out


def _strip(report):
    report = dict(report)
    report["samples"] = report.pop("names")[:12]
    return report


METRICS = (("female", "female"), ("kl_pi_a", "KL(π‖a)"), ("kl_p_pi", "KL(p‖π)"), ("kl_pi_p", "KL(π‖p)"),
           ("self_bleu", "Self-BLEU"), ("distinct_2", "distinct-2"), ("unique", "unique"))


def compare_table(result) -> str:
    """Per seed (mean ± SE over that model's fresh samples) and over the seeds (mean ± SE over the seeds)."""
    lines = ["| model | seed | " + " | ".join(label for _, label in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    rows = [("$a$", "—", result["base"])] + [(r["method"].upper(), str(r["seed"]), r) for r in result["runs"]]
    for name, seed, r in rows:
        cells = " | ".join(f"{r[k]:.3f} ± {r[k + '_se']:.3f}" for k, _ in METRICS)
        lines.append(f"| {name} | {seed} | " + cells + " |")
    for method in ("gdc", "rlhf"):
        rs = [r for r in result["runs"] if r["method"] == method]
        cells = []
        for k, _ in METRICS:
            m, se = _mean_se([r[k] for r in rs])
            cells.append(f"{m:.3f} ± {se:.3f}")
        lines.append(f"| {method.upper()}, over seeds | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_differences(result) -> str:
    """GDC − RLHF per metric: the mean over seeds of the per-seed difference, with its standard error over the
    seeds (seed-to-seed variation included) and the within-seed sampling error."""
    lines = ["| metric | GDC − RLHF (mean over seeds) | SE over seeds | per-seed differences |", "|---|---|---|---|"]
    seeds = sorted({r["seed"] for r in result["runs"]})
    by = {(r["method"], r["seed"]): r for r in result["runs"]}
    for k, label in METRICS:
        d = np.array([by["gdc", s][k] - by["rlhf", s][k] for s in seeds])
        se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
        lines.append(f"| {label} | {d.mean():+.3f} | {se:.3f} | " + ", ".join(f"{v:+.3f}" for v in d) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ budgets

BUDGETS = ((100, 64, 5e-4), (300, 64, 3e-4), (300, 64, 5e-4), (300, 64, 2e-3), (100, 256, 5e-4), (1000, 64, 5e-4))


def run_budgets(budgets=BUDGETS, n_eval=2000, n_fit=10_000, seed=0, progress=False, base=None) -> list:
    """Plain GDC towards "female = 0.5" (adaptive proposal, GDC++ baseline) at several (steps, batch, lr), one
    seed; each model on ``n_eval`` fresh samples, and the batch estimate of E_π[φ] averaged over blocks of 50
    steps."""
    from .. import tasks
    from ..ebm import fit_names_ebm

    base = base or tasks.load_base()
    ebm, _ = fit_names_ebm(base, ["female=0.5"], n_samples=n_fit, seed=0)
    rows = []
    for steps, batch_size, lr in budgets:
        t = time.perf_counter()
        cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, checkpoint_every=10**9)
        policy, hist = tasks.run_gdc(ebm, RunContext(cfg, base, progress=progress), proposal="adaptive", baseline=True)
        r = names_report(policy, base, ebm, 0.0, n_eval, seed=12345)
        batch = np.asarray(hist["E[female]"])
        rows.append({"steps": steps, "batch_size": batch_size, "lr": lr, "seconds": time.perf_counter() - t,
                     **{k: r[k] for k in ("female", "female_se", "kl_pi_a", "kl_pi_a_se")},
                     "blocks_of_50": [float(batch[i:i + 50].mean()) for i in range(0, len(batch), 50)]})
    return rows


def budgets_table(rows) -> str:
    lines = ["| steps × batch | learning rate | female | KL(π‖a) |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['steps']} × {r['batch_size']} | {r['lr']:g} | {r['female']:.3f} ± {r['female_se']:.3f} | "
                     f"{r['kl_pi_a']:.2f} ± {r['kl_pi_a_se']:.2f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ distill


def run_distill(steps=1500, batch_size=256, lr=1e-3, pool=100_000, n_heldout=5000, n_eval=2000, eval_every=250,
                n_fit=10_000, progress=False, base=None, seed=0) -> dict:
    """Maximum likelihood of exact samples of p: fresh batches from a pool of ``pool`` exact samples (about
    steps·batch_size/pool epochs), AdamW with a cosine schedule from ``lr``; held-out KL(p‖π) and the female
    fraction of fresh samples every ``eval_every`` steps."""
    from .. import tasks
    from ..ebm import fit_names_ebm
    from ..optim import AdamW, clip_grad_norm, cosine_lr
    from ..trainers.common import weighted_surrogate

    base = base or tasks.load_base()
    ebm, _ = fit_names_ebm(base, ["female=0.5"], n_samples=n_fit, seed=0)
    lam = float(ebm.lam[0])
    rate, _ = base_rate(base, ebm, n=max(n_fit, 4 * n_eval))
    log_z = tilt_log_z(lam, rate)
    t = time.perf_counter()
    tokens, names, proposals = exact_target_samples(base, ebm, pool + n_heldout, seed=11)
    train_tokens, held = tokens[:pool], tokens[pool:]
    sample_seconds = time.perf_counter() - t
    policy = tasks.trainable_copy(base)
    opt = AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    curve = []

    def measure(step):
        r = names_report(policy, base, ebm, log_z, n_eval, seed=12345, p_tokens=held)
        curve.append({"step": step, **{k: r[k] for k in ("female", "female_se", "kl_p_pi", "kl_p_pi_se",
                                                          "kl_pi_a", "kl_pi_a_se", "kl_pi_p", "kl_pi_p_se")}})
        if progress:
            print(f"step {step}: female {r['female']:.3f} ± {r['female_se']:.3f}, KL(p‖π) {r['kl_p_pi']:.3f} ± "
                  f"{r['kl_p_pi_se']:.3f}, KL(π‖a) {r['kl_pi_a']:.3f}", flush=True)

    measure(0)
    t = time.perf_counter()
    train_loss = []
    for step in range(steps):
        opt.lr = cosine_lr(step, steps, lr, warmup=0, lr_min=0.1 * lr)
        batch = train_tokens[rng.integers(0, len(train_tokens), batch_size)]
        loss = weighted_surrogate(policy.sequence_logprob(batch), np.full(batch_size, 1.0 / batch_size))
        opt.zero_grad()
        loss.backward()
        clip_grad_norm(policy.parameters(), 1.0)
        opt.step()
        train_loss.append(loss.item())
        if (step + 1) % eval_every == 0:
            measure(step + 1)
    return {"lambda": lam, "base_rate": rate, "log_z": log_z, "kl_p_a": tilt_kl(lam, rate),
            "config": {"steps": steps, "batch_size": batch_size, "lr": lr, "pool": pool, "n_heldout": n_heldout,
                       "n_eval": n_eval, "epochs": steps * batch_size / pool},
            "proposals_per_sample": proposals / (pool + n_heldout), "sample_seconds": sample_seconds,
            "train_seconds": time.perf_counter() - t, "curve": curve,
            "train_loss_blocks": [float(np.mean(train_loss[i:i + eval_every])) for i in range(0, steps, eval_every)]}


def distill_table(result) -> str:
    lines = ["| step | female | KL(p‖π) held out | KL(π‖a) | KL(π‖p) |", "|---|---|---|---|---|"]
    for c in result["curve"]:
        lines.append(f"| {c['step']} | {c['female']:.3f} ± {c['female_se']:.3f} | {c['kl_p_pi']:.3f} ± "
                     f"{c['kl_p_pi_se']:.3f} | {c['kl_pi_a']:.3f} ± {c['kl_pi_a_se']:.3f} | {c['kl_pi_p']:.3f} ± "
                     f"{c['kl_pi_p_se']:.3f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ entry point


def gdc_study(out="runs/gdc_study", quick=False, part="all", progress=True, compare_kw=None, distill_kw=None) -> dict:
    """Run the study's parts and write ``results.md`` and ``results.json`` under ``out``. ``compare_kw`` and
    ``distill_kw`` override the settings of :func:`run_compare` and :func:`run_distill`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result, text = {}, ["# GDC study (chapter 06)", ""]
    if part in ("compare", "all"):
        kw = dict(seeds=(0,), steps=4, batch_size=16, n_eval=200, n_fit=1000, n_p=200) if quick else {}
        kw.update(compare_kw or {})
        result["compare"] = run_compare(progress=progress, **kw)
        c = result["compare"]
        text += [f"## GDC and RLHF at the same target (λ* = {c['lambda']:.4f}, β = −1/λ* = {c['beta']:.4f})", "",
                 f"P_a(female) = {c['base_rate']:.4f} ± {c['base_rate_se']:.4f}; log Z = {c['log_z']:.4f}; "
                 f"KL(p‖a) = {c['kl_p_a']:.4f}; rejection sampling: {c['proposals_per_sample']:.2f} proposals per "
                 f"exact sample of p", "", compare_table(c), "", paired_differences(c), ""]
    if part in ("budgets", "all"):
        rows = run_budgets(budgets=((4, 16, 5e-4),), n_eval=200, n_fit=1000, progress=progress) if quick else \
            run_budgets(progress=progress)
        result["budgets"] = rows
        text += ["## Plain GDC at several budgets (seed 0)", "", budgets_table(rows), ""]
    if part in ("distill", "all"):
        kw = (dict(steps=6, batch_size=16, pool=500, n_heldout=200, n_eval=200, eval_every=3, n_fit=1000) if quick
              else {})
        kw.update(distill_kw or {})
        result["distill"] = run_distill(progress=progress, **kw)
        d = result["distill"]
        text += ["## Maximum likelihood on exact samples of p", "",
                 f"config {d['config']}; KL(p‖a) = {d['kl_p_a']:.4f}", "", distill_table(d), ""]
    text.append(f"Ran in {time.perf_counter() - t0:.0f} s.")
    (out / "results.md").write_text("\n".join(text) + "\n")
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print("\n".join(text))
    return result


def options(parser=None):
    """The study's command line (``parser``: its subcommand of ``python -m minialign.experiments``, or a new one)."""
    from .. import argtypes as A
    from ..methods import BATCH_LIMIT
    from . import study_parser

    parser = study_parser("gdc_study", __doc__, "tiny settings (seconds), for tests", parser)
    parser.add_argument("--part", choices=("compare", "budgets", "distill", "all"), default="all", metavar="PART",
                        help="compare, budgets, distill or all")
    # --steps, --batch-size and --lr apply to compare and distill; budgets runs its own list (BUDGETS)
    parser.add_argument("--steps", type=A.count(1, 100_000), metavar="N",
                        help="training steps, per run in compare and in all in distill (default: the study's own)")
    parser.add_argument("--batch-size", type=A.count(1, BATCH_LIMIT), metavar="N",
                        help="samples per step (default: the study's own)")
    parser.add_argument("--lr", type=A.learning_rate, metavar="X",
                        help="AdamW learning rate (default: the study's own)")
    parser.set_defaults(run=run)
    return parser


def run(args):
    kw = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr)) if v is not None}
    gdc_study(args.out, quick=args.quick, part=args.part, compare_kw=kw, distill_kw=kw)
    return 0


def main(argv=None):
    return run(options().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
