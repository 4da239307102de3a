"""Studies that produce the course's tables and plots.

``python -m minialign.experiments fdpg_study [--out runs/fdpg_study] [--quick] [--no-names]``

The divergence study of chapter 07 (after Go et al. 2023, made exact). On the exact lab, f-DPG with each
f ∈ {kl, reverse_kl, js, tv} — KL(π‖p), KL(p‖π), Jensen–Shannon, total variation — trains a small GPT from
π = a towards three targets, in two arms: *sampled* (on-policy, 32 samples a step, the estimator (7.4)) and
*exact* (every step's gradient is the exact expectation of (7.4), ∇D_f itself: the f without the sampling).
Both arms use AdamW at ``LR``, the rate ``choose_lr`` picks from ``first_step_scan`` over ``LR_GRID``: the
largest at which the first sampled step lowers KL(p‖π) wherever some rate's does and every exact first step
lowers the f's own D_f. Every step, step 0 (π = a)
included, records the exact KL(p‖π), KL(π‖p), TV, entropy and, on the two-mode target, the mass on the mode
that a under-covers. ``first_step_geometry`` measures why the first step is the same for every f on some
targets (Eq. 7.12–7.13). Then the same comparison by Monte Carlo on the names targets of chapters 05 and 06.
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..gpt import GPT
from ..lab import ExactLab, exact_grad, fdiv_to_target, lab_model
from ..logspace import logsumexp
from ..tensor import no_grad
from ..trainers.common import (
    Hooks,
    RunContext,
    TrainConfig,
    exact_batch,
    train,
    trainable_copy,
)
from ..trainers.fdpg import FDPG, FDPGOptions

STUDY_FS = {"kl": "KL(π‖p) (reverse KL)", "reverse_kl": "KL(p‖π) (forward KL)", "js": "JS", "tv": "TV"}
TARGETS = ("reward", "constraint", "two_modes")
ARMS = {"sampled": "on-policy, 32 samples a step", "exact": "exact expected gradient"}
THRESHOLD = 0.05  # nats of KL(p‖π)
LOG_T_MAX = 20.0
LR = 5e-4  # AdamW; the learning rate choose_lr picks from LR_GRID (chapter 07 §8)
LR_GRID = (1e-2, 3e-3, 1e-3, 5e-4, 2.5e-4)
STEPS = 300  # per run, both arms
LAST = 25  # "at the end" = the mean over the last LAST steps
COVERED = 0.9  # a mode counts as covered once π puts 90% of the target's mass on it
COLORS = {"kl": "C3", "reverse_kl": "C0", "js": "C2", "tv": "C1"}


# ---------------------------------------------------------------------------------------------- the lab problems
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


@dataclass
class LabProblem:
    """One (seed, target) of the study: the base model a, the lab, the target p and its modes.

    ``neglected`` names, on the two-mode target, the mode that a under-covers most (smallest a(S)/p(S));
    it changes with the seed, which is why coverage is read per seed and never averaged by mode name."""

    seed: int
    target: str
    a: GPT
    lab: ExactLab
    p_a: np.ndarray
    log_scores: np.ndarray
    log_p: np.ndarray
    log_z: float
    modes: dict
    neglected: str | None

    @property
    def p(self) -> np.ndarray:
        return np.exp(self.log_p)

    def target_fn(self, batch) -> np.ndarray:
        return self.log_scores[self.lab.index_of(batch.tokens)]

    def covered(self, pi) -> float:
        """π(S)/p(S) for the neglected mode S: 1 when π gives it the target's mass."""
        mask = self.modes[self.neglected]
        return float(pi[mask].sum() / self.p[mask].sum())


def lab_problem(seed: int, target: str) -> LabProblem:
    a = lab_base(seed)
    lab = ExactLab.for_model(a)
    p_a = lab.distribution(a)
    log_scores, modes = lab_targets(lab, np.log(p_a))[target]
    log_p, log_z = lab.normalise(log_scores)
    p = np.exp(log_p)
    neglected = min(modes, key=lambda k: p_a[modes[k]].sum() / p[modes[k]].sum()) if target == "two_modes" else None
    return LabProblem(seed, target, a, lab, p_a, log_scores, log_p, log_z, modes, neglected)


class ExactFDPG(FDPG):
    """f-DPG whose every batch is the whole enumeration weighted by π (``exact_batch``), with the exact log Z:
    its loss has as gradient the exact expectation of (7.4), which is ∇D_f(π‖p) of (7.2) — the f's own
    direction, without the sampling (the baseline is off on exact batches)."""

    def __init__(self, lab: ExactLab, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lab = lab
        self._log_ref = exact_batch(lab, self.ref).log_q  # log a over the enumeration, computed once

    def draw(self, policy, n, rng):
        batch = exact_batch(self.lab, policy)
        batch.log_ref = self._log_ref
        return batch


def make_method(problem: LabProblem, policy, f: str, arm: str) -> FDPG:
    """The study's trainer for one run: on-policy f-DPG (Z estimated as it goes), or its exact-gradient twin.
    log t is capped at 20 so that KL(π‖p) (f = kl, unbounded f') can train on the zero-mass target."""
    if arm == "sampled":
        return FDPG(problem.a, policy, problem.target_fn, FDPGOptions(f=f, proposal="policy", log_t_max=LOG_T_MAX))
    if arm == "exact":
        return ExactFDPG(problem.lab, problem.a, policy, problem.target_fn,
                         FDPGOptions(f=f, proposal="policy", log_t_max=LOG_T_MAX, log_z=problem.log_z))
    raise ValueError(f"arm must be one of {list(ARMS)}; got {arm!r}")


def distribution(lab: ExactLab, model) -> np.ndarray:
    """π over the enumeration, without recording a graph (the study only reads it)."""
    with no_grad():
        return lab.distribution(model)


def lab_point(problem: LabProblem, pi: np.ndarray) -> dict:
    """The exact metrics of one model π against the problem's target."""
    p, lab = problem.p, problem.lab
    out = {"kl_p_pi": lab.divergence("kl", p, pi), "kl_pi_p": lab.divergence("kl", pi, p),
           "tv": lab.divergence("tv", pi, p), "entropy": lab.entropy(pi)}
    if problem.neglected is not None:
        out["covered"] = problem.covered(pi)
    return out


# ---------------------------------------------------------------------------------------------- the first step
def flat_params(model) -> np.ndarray:
    return np.concatenate([np.ravel(p.data) for p in model.parameters()])


def first_batch(problem: LabProblem, batch_size: int = 32):
    """The batch the sampled arm's first step draws (the trainer seeds step s with [seed, s]): the same for
    every f, since π = a for all of them."""
    policy = trainable_copy(problem.a)
    method = make_method(problem, policy, "js", "sampled")
    return method.draw(policy, batch_size, np.random.default_rng([problem.seed, 0]))


def first_step(problem: LabProblem, f: str, arm: str, lr: float, batch_size: int = 32) -> dict:
    """One step of the study's training from π = a, through the shared loop: KL(p‖π) and the f's own
    D_f(π‖p) before and after (D_f is ∞ for f = kl on the zero-mass target), and the parameter step Δθ."""
    policy = trainable_copy(problem.a)
    before = flat_params(policy)
    train(make_method(problem, policy, f, arm), policy,
          TrainConfig(steps=1, batch_size=batch_size, lr=lr, seed=problem.seed), progress=False)
    pi, p = distribution(problem.lab, policy), problem.p
    out = {"kl_before": problem.lab.divergence("kl", p, problem.p_a), "kl_after": problem.lab.divergence("kl", p, pi),
           "df_before": problem.lab.divergence(f, problem.p_a, p), "df_after": problem.lab.divergence(f, pi, p),
           "step": flat_params(policy) - before}
    if problem.neglected is not None:
        out.update(covered_before=problem.covered(problem.p_a), covered_after=problem.covered(pi))
    return out


def _cos(u, v) -> float:
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def first_step_geometry(problem: LabProblem, lr: float = LR, batch_size: int = 32) -> dict:
    """Eq. (7.12)–(7.13) measured at π = a: how many values t = π/p takes (on the enumeration and on the first
    batch), the cosines between the f's gradients — exact ∇D_f and the first batch's estimate — and with
    ∇KL(p‖π), and how far apart Adam's first steps are (largest ‖Δθ_f − Δθ_g‖/‖Δθ_g‖ over pairs)."""
    lab, a = problem.lab, problem.a
    policy = trainable_copy(a)
    exact = exact_batch(lab, policy, ref=a)
    batch = first_batch(problem, batch_size)
    g_exact = {f: exact_grad(make_method(problem, policy, f, "exact"), policy, exact) for f in STUDY_FS}
    g_sampled = {f: exact_grad(make_method(problem, policy, f, "sampled"), policy, batch) for f in STUDY_FS}
    policy.zero_grad()
    fdiv_to_target("reverse_kl", lab.log_probs(policy), problem.log_p).backward()
    g_kl_p_pi = np.concatenate([np.ravel(p.grad) for p in policy.parameters()])
    policy.zero_grad()
    log_t = np.minimum(np.log(problem.p_a) - problem.log_p, LOG_T_MAX)  # the trainer's cap; log p = −∞ → 20
    rows = lab.index_of(batch.tokens)
    steps = {f: first_step(problem, f, "sampled", lr, batch_size)["step"] for f in STUDY_FS}
    pairs = list(itertools.combinations(STUDY_FS, 2))
    out = {
        "target": problem.target, "seed": problem.seed,
        "t_values": int(len(np.unique(np.round(log_t, 9)))),
        "t_values_batch": int(len(np.unique(np.round(log_t[rows], 9)))),
        "min_cos_exact": min(_cos(g_exact[f], g_exact[g]) for f, g in pairs),
        "min_cos_sampled": min(_cos(g_sampled[f], g_sampled[g]) for f, g in pairs),
        "cos_to_kl_p_pi": {f: _cos(g_exact[f], g_kl_p_pi) for f in STUDY_FS},
        "grad_norm_exact": {f: float(np.linalg.norm(g_exact[f])) for f in STUDY_FS},
        "adam_step_spread": max(np.linalg.norm(steps[f] - steps[g])
                                / min(np.linalg.norm(steps[f]), np.linalg.norm(steps[g])) for f, g in pairs),
    }
    if problem.neglected is not None:
        out["neglected_in_batch"] = int(problem.modes[problem.neglected][rows].sum())
        out["neglected_a_mass"] = float(problem.p_a[problem.modes[problem.neglected]].sum())
    return out


def first_step_scan(problems, lrs=LR_GRID, batch_size: int = 32) -> list:
    """For every learning rate, arm, problem and f: does the first AdamW step lower KL(p‖π)? its own D_f?"""
    rows = []
    for lr in lrs:
        for arm in ARMS:
            for problem in problems:
                for f in STUDY_FS:
                    r = first_step(problem, f, arm, lr, batch_size)
                    rows.append({"lr": lr, "arm": arm, "target": problem.target, "seed": problem.seed, "f": f,
                                 **{k: v for k, v in r.items() if k != "step"}})
    return rows


# ---------------------------------------------------------------------------------------------- the paths
def run_lab(problem: LabProblem, f: str, arm: str, steps: int, lr: float = LR, batch_size: int = 32) -> dict:
    """One run from π = a; its curve holds step 0 (π = a, before any update) and every step after it."""
    policy = trainable_copy(problem.a)
    method = make_method(problem, policy, f, arm)
    curve: dict = {}

    def record(pi):
        for k, v in lab_point(problem, pi).items():
            curve.setdefault(k, []).append(v)

    record(problem.p_a)
    t0 = time.perf_counter()
    train(method, policy, TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=problem.seed), progress=False,
          hooks=Hooks(log_fn=lambda step, metrics: record(distribution(problem.lab, policy))))
    return {"target": problem.target, "f": f, "seed": problem.seed, "arm": arm, "curve": curve, "lr": lr,
            "batch_size": batch_size, "seconds": time.perf_counter() - t0,
            "target_entropy": problem.lab.entropy(problem.p), "neglected": problem.neglected}


def run_lab_study(seeds=(0, 1, 2), steps=STEPS, batch_size=32, lr=LR, arms=tuple(ARMS), problems=None, progress=True):
    """Every (target, seed, arm, f) run on the exact lab; returns a list of records with full curves."""
    from tqdm.auto import tqdm

    problems = problems or [lab_problem(s, t) for t in TARGETS for s in seeds]
    jobs = [(pr, arm, f) for pr in problems for arm in arms for f in STUDY_FS]
    return [run_lab(pr, f, arm, steps, lr, batch_size)
            for pr, arm, f in tqdm(jobs, desc="fdpg study (exact lab)", disable=not progress)]


def first_reached(values, ok) -> int | None:
    """The first step (0 = π = a) at which ok(value) holds, or None."""
    return next((i for i, v in enumerate(values) if ok(v)), None)


def effective_last(record, last: int = LAST) -> int:
    """``last`` steps, or the second half of a run shorter than 2·last."""
    return max(1, min(last, (len(record["curve"]["kl_p_pi"]) - 1) // 2))


def run_summary(record, last: int = LAST) -> dict:
    """What the tables read off one run: end values are means over the last ``last`` steps."""
    c = record["curve"]
    last = effective_last(record, last)
    out = {"kl_start": c["kl_p_pi"][0], "kl_step1": c["kl_p_pi"][1], "kl_end": float(np.mean(c["kl_p_pi"][-last:])),
           "dH_end": float(np.mean(c["entropy"][-last:])) - record["target_entropy"],
           "dH_min": float(np.min(c["entropy"])) - record["target_entropy"],
           "to_threshold": first_reached(c["kl_p_pi"], lambda v: v <= THRESHOLD)}
    if "covered" in c:
        out.update(covered_start=c["covered"][0], covered_min=float(np.min(c["covered"])),
                   covered_end=float(np.mean(c["covered"][-last:])),
                   to_covered=first_reached(c["covered"], lambda v: v >= COVERED))
    return out


# ---------------------------------------------------------------------------------------------- tables
def _seeds(records):
    return sorted({r["seed"] for r in records})


def _per_seed(records, target, f, arm, key, fmt) -> str:
    cells = []
    for s in _seeds(records):
        rs = [r for r in records if (r["target"], r["f"], r["arm"], r["seed"]) == (target, f, arm, s)]
        if not rs:
            continue
        v = run_summary(rs[0])[key]
        cells.append("—" if v is None else fmt(v))
    return " / ".join(cells)


def geometry_table(rows) -> str:
    lines = ["At π = a, before any update. 't values': distinct values of log t = log(π/p) on the enumeration "
             "and on the first batch (log t capped at 20 where p = 0); 'min cos': the smallest cosine between "
             "two members' gradients (exact ∇D_f, and the first batch's estimate); 'Adam steps apart': the "
             f"largest ‖Δθ_f − Δθ_g‖/‖Δθ_g‖ between two members' first sampled steps at lr {LR:g}; "
             "cos(∇D_f, ∇KL(p‖π)) > 0 means descending D_f lowers KL(p‖π) at first; ‖∇D_f‖ is the exact "
             "gradient's norm (the step plain SGD would scale with).", "",
             "| target | seed | t values (batch) | neglected samples in batch (a's mass) | min cos, exact | "
             "min cos, first batch | Adam steps apart | cos(∇D_f, ∇KL(p‖π)): kl / reverse_kl / js / tv | "
             "‖∇D_f‖: kl / reverse_kl / js / tv |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        neg = f"{r['neglected_in_batch']} ({r['neglected_a_mass']:.4f})" if "neglected_in_batch" in r else "—"
        cos = " / ".join(f"{r['cos_to_kl_p_pi'][f]:+.2f}" for f in STUDY_FS)
        norm = " / ".join(f"{r['grad_norm_exact'][f]:.3g}" for f in STUDY_FS)
        lines.append(f"| {r['target']} | {r['seed']} | {r['t_values']} ({r['t_values_batch']}) | {neg} | "
                     f"{r['min_cos_exact']:.6f} | {r['min_cos_sampled']:.6f} | {r['adam_step_spread']:.1e} | {cos} | "
                     f"{norm} |")
    return "\n".join(lines)


def scan_table(rows) -> str:
    lines = ["The first AdamW step from π = a, for each learning rate: in how many of the (target, seed, f) runs "
             "it lowers KL(p‖π), and (exact arm) the f's own D_f(π‖p) (finite cases only: D_kl is ∞ on the "
             "constraint target); the runs where KL(p‖π) rises, as target/seed: members.", "",
             "| lr | sampled: lowers KL(p‖π) | exact: lowers KL(p‖π) | exact: lowers own D_f | KL(p‖π) rises (sampled) "
             "| KL(p‖π) rises (exact) |", "|---|---|---|---|---|---|"]
    for lr in sorted({r["lr"] for r in rows}, reverse=True):
        cells = []
        for arm in ARMS:
            rs = [r for r in rows if r["lr"] == lr and r["arm"] == arm]
            cells.append(f"{sum(r['kl_after'] < r['kl_before'] for r in rs)}/{len(rs)}")
        ex = [r for r in rows if r["lr"] == lr and r["arm"] == "exact" and np.isfinite(r["df_before"])]
        cells.append(f"{sum(r['df_after'] < r['df_before'] for r in ex)}/{len(ex)}")
        for arm in ARMS:
            cells.append(_rises([r for r in rows if r["lr"] == lr and r["arm"] == arm]))
        lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    pick = choose_lr(rows)
    shown = "none" if pick is None else f"{pick:g}"
    lines += ["", f"choose_lr picks lr = {shown}: the largest scanned rate whose first sampled step lowers KL(p‖π) "
              "wherever a scanned rate's does, and whose first exact step lowers every f's own D_f."]
    return "\n".join(lines)


def first_step_kl_table(rows, lrs=(1e-2, LR)) -> str:
    """KL(p‖π) after the first step, per (target, seed), at a few learning rates, in both arms; one number
    when the four members agree to 10⁻³, else their range. On the two-mode target also π(S)/p(S) of the
    neglected mode S after the first sampled step."""
    lrs = [lr for lr in lrs if any(r["lr"] == lr for r in rows)]
    head = [f"{arm} {lr:g}" for arm in ARMS for lr in lrs]
    lines = ["KL(p‖π) before (π = a) and after the first AdamW step; a range min–max where the members differ by "
             "more than 10⁻³. 'covered': π(S)/p(S) of the two-mode target's neglected mode S, at π = a → after "
             f"the first sampled step at lr {', '.join(f'{lr:g}' for lr in lrs)}.", "",
             "| target | seed | KL(p‖a) | " + " | ".join(head) + " | covered |",
             "|---|---|---|" + "---|" * len(head) + "---|"]
    keys = sorted({(r["target"], r["seed"]) for r in rows}, key=lambda k: (TARGETS.index(k[0]), k[1]))
    for target, seed in keys:
        rs = [r for r in rows if (r["target"], r["seed"]) == (target, seed)]
        cells = []
        for arm in ARMS:
            for lr in lrs:
                v = [r["kl_after"] for r in rs if r["arm"] == arm and r["lr"] == lr]
                cells.append(f"{min(v):.3f}" if max(v) - min(v) < 1e-3 else f"{min(v):.3f}–{max(v):.3f}")
        covered = "—"
        if "covered_before" in rs[0]:
            after = [" / ".join(sorted({f"{r['covered_after']:.4f}" for r in rs
                                        if r["arm"] == "sampled" and r["lr"] == lr})) for lr in lrs]
            covered = f"{rs[0]['covered_before']:.4f} → " + " ; ".join(after)
        lines.append(f"| {target} | {seed} | {rs[0]['kl_before']:.3f} | " + " | ".join(cells) + f" | {covered} |")
    return "\n".join(lines)


def choose_lr(rows) -> float | None:
    """The largest learning rate of the scan at which (i) the first sampled step lowers KL(p‖π) in every run
    where the first step at some scanned learning rate does, and (ii) the first exact step lowers every f's own
    D_f(π‖p) (where it is finite). None if no scanned rate qualifies."""
    possible = {(r["target"], r["seed"], r["f"]) for r in rows
                if r["arm"] == "sampled" and r["kl_after"] < r["kl_before"]}
    for lr in sorted({r["lr"] for r in rows}, reverse=True):
        sampled = [r for r in rows if r["lr"] == lr and r["arm"] == "sampled"]
        exact = [r for r in rows if r["lr"] == lr and r["arm"] == "exact" and np.isfinite(r["df_before"])]
        if all(r["kl_after"] < r["kl_before"] for r in sampled if (r["target"], r["seed"], r["f"]) in possible) \
                and all(r["df_after"] < r["df_before"] for r in exact):
            return lr
    return None


def _rises(rows) -> str:
    groups: dict = {}
    for r in rows:
        if r["kl_after"] >= r["kl_before"]:
            groups.setdefault((r["target"], r["seed"]), []).append(r["f"])
    if not groups:
        return "none"
    return "; ".join(f"{t}/{s}: {'all' if len(fs) == len(STUDY_FS) else ', '.join(fs)}"
                     for (t, s), fs in groups.items())


def per_seed_table(records, last: int = LAST) -> str:
    seeds = _seeds(records)
    last = effective_last(records[0], last)
    ss = " / ".join(str(s) for s in seeds)
    lines = [f"Per seed ({ss}), each run against its own target. 'step 1': KL(p‖π) after the first update (the "
             f"row π = a gives step 0); 'end': the mean over the last {last} steps; ΔH = H(π) − H(p), at the end and "
             f"its lowest value along the path (step 0 included); 'steps to {THRESHOLD}': the first step with "
             f"KL(p‖π) ≤ {THRESHOLD} (× 32 samples in the sampled arm).", "",
             f"| target | f | arm | KL(p‖π) step 1, seeds {ss} | KL(p‖π) end | ΔH end | ΔH min | "
             f"steps to {THRESHOLD} |",
             "|---|---|---|---|---|---|---|---|"]
    for target in TARGETS:
        rs = [r for r in records if r["target"] == target]
        if not rs:
            continue
        start = " / ".join(f"{run_summary(next(r for r in rs if r['seed'] == s))['kl_start']:.3f}" for s in seeds)
        lines.append(f"| {target} | π = a (step 0) | — | {start} | | | | |")
        for arm in ARMS:
            for f in STUDY_FS:
                if not any(r["arm"] == arm and r["f"] == f for r in rs):
                    continue
                cells = [_per_seed(records, target, f, arm, "kl_step1", lambda v: f"{v:.3f}"),
                         _per_seed(records, target, f, arm, "kl_end", lambda v: f"{v:.3f}"),
                         _per_seed(records, target, f, arm, "dH_end", lambda v: f"{v:+.2f}"),
                         _per_seed(records, target, f, arm, "dH_min", lambda v: f"{v:+.2f}"),
                         _per_seed(records, target, f, arm, "to_threshold", lambda v: f"{v}")]
                lines.append(f"| {target} | {STUDY_FS[f]} | {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def neglected_table(records, last: int = LAST) -> str:
    rs = [r for r in records if r["target"] == "two_modes"]
    if not rs:
        return ""
    seeds = _seeds(rs)
    last = effective_last(rs[0], last)
    ss = " / ".join(str(s) for s in seeds)
    names = " / ".join(next(r["neglected"] for r in rs if r["seed"] == s) for s in seeds)
    start = " / ".join(f"{run_summary(next(r for r in rs if r['seed'] == s))['covered_start']:.4f}" for s in seeds)
    lines = [f"The two-mode target, read per seed ({ss}) against the mode each seed's a under-covers ({names}): "
             "'covered' is π(mode)/p(mode), 1 when π gives it the target's mass. At π = a it is "
             f"{start}. 'min': its smallest value along the path; 'end': the mean over the last {last} steps; "
             f"'steps to {COVERED}': the first step at which it reached {COVERED}.", "",
             f"| f | arm | covered, min along the path, seeds {ss} | covered, end | steps to {COVERED} |",
             "|---|---|---|---|---|"]
    for arm in ARMS:
        for f in STUDY_FS:
            if not any(r["arm"] == arm and r["f"] == f for r in rs):
                continue
            cells = [_per_seed(rs, "two_modes", f, arm, "covered_min", lambda v: f"{v:.4f}"),
                     _per_seed(rs, "two_modes", f, arm, "covered_end", lambda v: f"{v:.2f}"),
                     _per_seed(rs, "two_modes", f, arm, "to_covered", lambda v: f"{v}")]
            lines.append(f"| {STUDY_FS[f]} | {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def overall_table(records, last: int = LAST) -> str:
    """Across all (target, seed) runs of each f and arm: the median and worst end KL(p‖π), the median ΔH."""
    last = effective_last(records[0], last)
    lines = [f"Across the {len(_seeds(records)) * len({r['target'] for r in records})} (target, seed) runs of each "
             f"member: end values (mean over the last {last} steps).", "",
             "| f | arm | median KL(p‖π) end | worst KL(p‖π) end | median ΔH end | runs within 0.05 at the end |",
             "|---|---|---|---|---|---|"]
    for arm in ARMS:
        for f in STUDY_FS:
            rs = [run_summary(r, last) for r in records if r["arm"] == arm and r["f"] == f]
            if not rs:
                continue
            kl = np.array([r["kl_end"] for r in rs])
            dh = np.array([r["dH_end"] for r in rs])
            lines.append(f"| {STUDY_FS[f]} | {arm} | {np.median(kl):.4f} | {kl.max():.3f} | {np.median(dh):+.3f} | "
                         f"{int((kl <= THRESHOLD).sum())}/{len(kl)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- figures
F_STYLES = {"kl": "-", "reverse_kl": "--", "js": "-.", "tv": ":"}  # a second cue beside the colour


def _f_legend(fig, extra=(), bottom=0.0):
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=COLORS[f], ls=F_STYLES[f], lw=1.6, label=STUDY_FS[f]) for f in STUDY_FS]
    handles += list(extra)
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=10, frameon=False,
               bbox_to_anchor=(0.5, bottom))


def _run_of(records, target, f, arm, seed):
    return next((r for r in records if (r["target"], r["f"], r["arm"], r["seed"]) == (target, f, arm, seed)), None)


def plot_lab_curves(records, path, arm="sampled"):
    """One arm's runs, one column per seed and two rows per target — KL(p‖π) (log axis) and H(π) − H(p) —
    so that a panel holds the four members of one (target, seed) only; step 0 (π = a) included."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from ..plots import save_figure

    seeds = _seeds(records)
    fig, axes = plt.subplots(2 * len(TARGETS), len(seeds), figsize=(4.2 * len(seeds), 2.5 * 2 * len(TARGETS)),
                             sharex=True, squeeze=False)
    for i, target in enumerate(TARGETS):
        for j, seed in enumerate(seeds):
            ax_kl, ax_h = axes[2 * i, j], axes[2 * i + 1, j]
            for f in STUDY_FS:
                r = _run_of(records, target, f, arm, seed)
                if r is None:
                    continue
                c = r["curve"]
                ax_kl.plot(c["kl_p_pi"], color=COLORS[f], ls=F_STYLES[f], lw=1.3)
                ax_h.plot(np.array(c["entropy"]) - r["target_entropy"], color=COLORS[f], ls=F_STYLES[f], lw=1.3)
            ax_kl.axhline(THRESHOLD, color="gray", lw=0.8, alpha=0.7)
            ax_kl.set_yscale("log")
            ax_kl.set_title(f"{target}, seed {seed}: KL(p‖π)", fontsize=10)
            ax_h.axhline(0.0, color="black", lw=0.8, alpha=0.7)
            ax_h.set_title(f"{target}, seed {seed}: H(π) − H(p)", fontsize=10)
        axes[2 * i, 0].set_ylabel("KL(p‖π), nats (log)")
        axes[2 * i + 1, 0].set_ylabel("H(π) − H(p), nats")
    for ax in axes[-1]:
        ax.set_xlabel("step (0: π = a)")
    extra = [Line2D([], [], color="gray", lw=0.8, label=f"KL = {THRESHOLD} nats"),
             Line2D([], [], color="black", lw=0.8, label="H(π) = H(p)")]
    fig.suptitle(f"f-DPG on the exact lab, {arm} arm: each panel one target and one seed", fontsize=12)
    _f_legend(fig, extra)
    fig.tight_layout(rect=(0, 0.025, 1, 1))
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_neglected(records, path):
    """The two-mode target: π(S)/p(S) for the mode S each seed's a under-covers; one row per arm, one
    column per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from ..plots import save_figure

    rs = [r for r in records if r["target"] == "two_modes"]
    seeds = _seeds(rs)
    arms = [arm for arm in ARMS if any(r["arm"] == arm for r in rs)]
    fig, axes = plt.subplots(len(arms), len(seeds), figsize=(4.2 * len(seeds), 3.2 * len(arms) + 0.6),
                             sharex=True, sharey=True, squeeze=False)
    for i, arm in enumerate(arms):
        for j, seed in enumerate(seeds):
            ax = axes[i, j]
            for f in STUDY_FS:
                r = _run_of(rs, "two_modes", f, arm, seed)
                if r is not None:
                    ax.plot(r["curve"]["covered"], color=COLORS[f], ls=F_STYLES[f], lw=1.3)
            ax.axhline(1.0, color="black", lw=0.8, alpha=0.7)
            ax.axhline(COVERED, color="gray", lw=0.8, alpha=0.7)
            ax.set_yscale("log")
            ax.set_title(f"{arm} arm, seed {seed}", fontsize=10)
        axes[i, 0].set_ylabel("π(S) / p(S)")
    for ax in axes[-1]:
        ax.set_xlabel("step (0: π = a)")
    extra = [Line2D([], [], color="black", lw=0.8, label="target (1)"),
             Line2D([], [], color="gray", lw=0.8, label=f"covered ({COVERED})")]
    fig.suptitle("two-mode target: the mass on the mode S that each seed's a neglects", fontsize=12)
    _f_legend(fig, extra)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    save_figure(fig, path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- names, by Monte Carlo
NAMES_LAST = 10  # the names metrics: mean ± standard error over the last NAMES_LAST steps' batches


def run_names_study(fs=("kl", "reverse_kl", "js", "tv"), steps=60, batch_size=64, lr=3e-4, seed=0, progress=True,
                    last=NAMES_LAST):
    """The same comparison by Monte Carlo on names: the GDC target "50% female" and the RLHF target
    p ∝ a·e^{r*/β} (β = 1, the true reward of chapter 05). Returns rows of estimated metrics, each the mean
    and standard error over the last ``last`` steps' batches (a fresh batch every step)."""
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
            ctx = RunContext(TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed), progress=progress)
            _, hist = tasks.run_fdpg(f, target, ctx, ebm=e, reward=reward)
            stats = {}
            for k, v in hist.items():
                tail = np.asarray(v[-last:], dtype=np.float64)
                se = float(tail.std(ddof=1) / np.sqrt(len(tail))) if len(tail) > 1 else float("nan")
                stats[k] = (float(tail.mean()), se)
            rows.append({"target": name, "f": f, "last": min(last, steps), **stats})
    return rows


def _num(row, key):
    v = row.get(key)
    if v is None or not np.isfinite(v[0]):
        return "—"
    return f"{v[0]:.3f} ± {v[1]:.3f}" if np.isfinite(v[1]) else f"{v[0]:.3f}"


def names_table(rows):
    last = rows[0]["last"] if rows else NAMES_LAST
    lines = [f"Each cell: mean ± standard error over the last {last} steps' batches (a fresh batch every step; "
             "the model moves between them, so this is the recent average, not one final model's value).", "",
             "| target | f | KL(p‖π) est. | KL(π‖a) est. | E[female] | reward | distinct-2 | Self-BLEU | in corpus |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [_num(r, k) for k in ("kl_p_pi_est", "kl_pi_a_est", "E[female]", "reward_est", "distinct_2",
                                      "self_bleu", "in_corpus")]
        lines.append(f"| {r['target']} | {STUDY_FS[r['f']]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the study
def fdpg_study(out="runs/fdpg_study", quick=False, progress=True, names=True, lr=LR, steps=None):
    """Run the whole study and write ``results.md``, ``lab_curves_sampled.png``, ``lab_curves_exact.png``,
    ``two_modes.png`` and ``results.json`` under ``out``. ``lr`` and ``steps`` change the paths' settings
    (the first-step scan is the same). Returns the lab records."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds, default_steps, lrs = ((0,), 20, (1e-2, LR)) if quick else ((0, 1, 2), STEPS, LR_GRID)
    steps = steps or default_steps
    t0 = time.perf_counter()
    problems = [lab_problem(s, t) for t in TARGETS for s in seeds]
    geometry = [first_step_geometry(pr) for pr in problems]
    scan = first_step_scan(problems, lrs)
    t_first = time.perf_counter() - t0
    records = run_lab_study(steps=steps, lr=lr, problems=problems, progress=progress)
    t_lab = time.perf_counter() - t0 - t_first
    pick = choose_lr(scan)
    chosen = (f"The paths below run at lr {lr:g}, the rate choose_lr picks." if pick == lr else
              f"The paths below run at lr {lr:g}; choose_lr picks {pick}, so their first steps are not all descents.")
    plot_lab_curves(records, out / "lab_curves_sampled.png", "sampled")
    plot_lab_curves(records, out / "lab_curves_exact.png", "exact")
    plot_neglected(records, out / "two_modes.png")
    text = ["# f-DPG divergence study", "",
            f"Exact lab, seeds {', '.join(map(str, seeds))}; AdamW at lr {lr:g}, {steps} steps; sampled arm: "
            "on-policy batches of 32; exact arm: the exact expected gradient.", "",
            "## The first step", "", geometry_table(geometry), "", scan_table(scan), "", first_step_kl_table(scan), "",
            "## The paths", "", chosen, "", per_seed_table(records), "", neglected_table(records), "",
            overall_table(records), "",
            "![sampled arm](lab_curves_sampled.png)", "", "![exact arm](lab_curves_exact.png)", "",
            "![two modes](two_modes.png)", ""]
    if names:
        name_rows = run_names_study(steps=10 if quick else 60, batch_size=32 if quick else 64, progress=progress)
        text += ["## Names (Monte Carlo)", "", names_table(name_rows), ""]
    text.append(f"Ran in {time.perf_counter() - t0:.0f} s (first step {t_first:.0f} s, lab paths {t_lab:.0f} s).")
    (out / "results.md").write_text("\n".join(text) + "\n")
    (out / "results.json").write_text(json.dumps({
        "lr": lr, "steps": steps, "seeds": list(seeds), "geometry": geometry, "scan": scan,
        "runs": [{**{k: r[k] for k in ("target", "f", "seed", "arm", "neglected")}, **run_summary(r),
                  "curve": r["curve"]} for r in records]}, indent=1))
    print("\n".join(text))
    return records


def options(parser=None):
    """The study's command line (``parser``: its subcommand of ``python -m minialign.experiments``, or a new one)."""
    from .. import argtypes as A
    from . import study_parser

    parser = study_parser("fdpg_study", __doc__, "one seed, few steps (for tests)", parser)
    parser.add_argument("--no-names", action="store_true", help="only the exact-lab part")
    parser.add_argument("--lr", type=A.learning_rate, default=LR, metavar="X", help="AdamW learning rate of the paths")
    parser.add_argument("--steps", type=A.count(1, 100_000), default=None, metavar="N",
                        help=f"steps per path (default: {STEPS}; 20 with --quick)")
    parser.set_defaults(run=run)
    return parser


def run(args):
    fdpg_study(args.out, quick=args.quick, names=not args.no_names, lr=args.lr, steps=args.steps)
    return 0


def main(argv=None):
    return run(options().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
