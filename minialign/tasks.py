"""The names tasks: the base model, rewards and EBM targets on names, wired to the trainers.

Each ``run_*`` function builds one method on the committed base model, trains it on the shared path of
``trainers/common.py``, and returns the trained policy with its history. The ingredients the methods need —
preference pairs, a reward model, an EBM fitted to constraints — are made here too, once, so that the
command line, the tour and the notebooks make them the same way. The math lives in the trainers,
``rewards.py`` and ``ebm.py``; the table of methods that the faces use is ``methods.py``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .data import DATA_DIR, CharTokenizer, load_names
from .gpt import GPT
from .io import fingerprint
from .metrics import self_bleu
from .trainers.common import (
    Hooks,
    RunContext,
    Sampling,
    TrainConfig,
    logprobs,
    train,
    trainable_copy,
)

BASE_CHECKPOINT = DATA_DIR / "base.npz"


def load_base(path=None, backend=None) -> GPT:
    """The base (reference) model a: the committed checkpoint unless another path is given; on ``backend``
    (``device.backend_for``) when one is given."""
    from .device import place

    path = BASE_CHECKPOINT if path is None else path
    model = place(GPT.load(path), backend)
    tok = CharTokenizer()
    if model.config.vocab_size != tok.vocab_size:
        raise ValueError(f"{path} holds a GPT over a vocabulary of {model.config.vocab_size} tokens, not a names "
                         f"model: the names tokenizer has {tok.vocab_size} ('.' and a-z)")
    return model.eval()


def check_same_vocabulary(reward_model, policy) -> None:
    """A reward model reads the policy's samples through its own embedding table: the vocabularies must match."""
    v_r, v_p = reward_model.config.vocab_size, policy.config.vocab_size
    if v_r != v_p:
        raise ValueError(f"the reward model has a vocabulary of {v_r} tokens but the policy has {v_p}; "
                         "they must read the same tokens")


# ------------------------------------------------------------------------------------------- ingredients
def split_pairs(pairs):
    """The training pairs and the held-out last quarter (at least one pair), the split every face uses."""
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 preference pairs to hold some out; got {len(pairs)}")
    return pairs.split(max(len(pairs) // 4, 1))


class RewardFit(NamedTuple):
    """A reward model fitted to preference pairs, with how well it ranks the held-out pairs."""

    model: object
    accuracy: float
    ceiling: object  # rewards.Ceiling: what r* itself reaches on the same pairs
    n_train: int
    n_val: int

    def __str__(self) -> str:
        return (f"reward model: held-out pair accuracy {self.accuracy:.3f} on {self.n_val} pairs (annotator ceiling: "
                f"expected {self.ceiling.expected:.3f}, realised {self.ceiling.realised:.3f}); trained on "
                f"{self.n_train} pairs")


def fit_names_reward_model(base, pairs, seed=0, steps=300, normalise_samples=4096, progress=True) -> RewardFit:
    """Eq. (5.3) on names: fit a reward model to the training part of ``pairs``, measure it on the held-out part,
    and normalise it to mean 0 and standard deviation 1 under the base model."""
    from .rewards import annotator_ceiling, evaluate_pairs, fit_reward_model

    train_pairs, val_pairs = split_pairs(pairs)
    rm, _ = fit_reward_model(train_pairs, val_pairs, steps=steps, seed=seed, progress=progress)
    _, acc = evaluate_pairs(rm, val_pairs)
    ceiling = annotator_ceiling(val_pairs)
    rm.normalise(base, n=normalise_samples, seed=seed)
    return RewardFit(rm, acc, ceiling, len(train_pairs), len(val_pairs))


def names_reward(reward) -> callable:
    """A batch → rewards function from a names → rewards function (``true_reward`` or ``RewardModel.score``)."""
    def fn(batch):
        return np.asarray(reward(batch.names), dtype=np.float64)

    return fn


def ebm_target(ebm) -> callable:
    """A batch → log P(x) function for an EBM on names: log a(x) (from the batch) + log b(x) + λ·φ(x)."""
    def fn(batch):
        return ebm.log_score(batch.names, batch.log_ref)

    return fn


def calibrated_target(ebm, rate: float = 0.1):
    """The EBM's tilt with λ following the policy's own moments (Eq. 6.11), starting from the EBM's λ."""
    from .trainers.proposal import MomentCalibration

    if not ebm.k or ebm.mu_bar is None:
        raise ValueError("moment calibration needs distributional constraints with target moments μ̄ "
                         "(e.g. female=0.5); this EBM has none")

    def log_base(batch):  # log a(x) + log b(x)
        return np.where(ebm.b(batch.names), batch.log_ref, -np.inf)

    return MomentCalibration(log_base, lambda batch: ebm.phi(batch.names), ebm.lam, ebm.mu_bar, rate=rate)


def tilted_target(reward, beta: float) -> callable:
    """The RLHF target as an EBM: log P(x) = log a(x) + r(x)/β, so that p = π* (Eq. 5.6)."""
    def fn(batch):
        return batch.log_ref + np.asarray(reward(batch.names), dtype=np.float64) / beta

    return fn


def kl_control_equivalent(ebm) -> tuple[callable, float]:
    """Eq. (6.12): the RLHF problem whose optimum a·e^{r/β}/Z is this EBM's target a·e^{λφ}/Z (one feature,
    no pointwise constraint): r(x) = sign(λ)·φ(x) and β = 1/|λ|, so that r/β = λφ. Returns (names → r, β).

    For "female=0.5", λ < 0: the reward is −φ ("male names score 1 more") and β = −1/λ."""
    if ebm.pointwise:
        raise ValueError("a pointwise constraint sets P(x) = 0, which no finite reward r(x)/β gives; "
                         f"kl_control_equivalent needs an EBM without one; got {ebm!r}")
    if ebm.k != 1 or ebm.lam[0] == 0:
        raise ValueError(f"kl_control_equivalent needs one feature with λ ≠ 0 (then β = 1/|λ|); got {ebm!r}")
    lam = float(ebm.lam[0])
    sign, phi = float(np.sign(lam)), ebm.features[0]

    def reward(names):
        return sign * phi(names)

    return reward, 1.0 / abs(lam)


def constraint_metrics(ebm=None, reward=None):
    """Per-step metrics on names: E_π[φ] per feature, the pointwise satisfaction rate, the reward, Self-BLEU,
    KL(π‖a) and the entropy of π, all self-normalised with weights π/q when the batch came from a proposal q."""
    def fn(batch):
        logp_pi = batch.extra.get("logp_pi")
        w = np.ones(len(batch)) if logp_pi is None else np.exp(logp_pi - batch.log_q)
        w = w / w.sum()
        out = {"self_bleu": self_bleu(batch.names)}
        log_pi = batch.log_q if logp_pi is None else logp_pi
        out["kl_pi_a_est"] = float(np.sum(w * (log_pi - batch.log_ref)))
        out["entropy_est"] = float(-np.sum(w * log_pi))
        if ebm is not None:
            for f, values in zip(ebm.features, ebm.phi(batch.names).T if ebm.k else []):
                out[f"E[{f.name}]"] = float(np.sum(w * values))
            if ebm.pointwise:
                out["satisfied"] = float(np.sum(w * ebm.b(batch.names)))
        if reward is not None:
            out["reward_est"] = float(np.sum(w * reward(batch.names)))
        return out

    return fn


# ------------------------------------------------------------------------------------------- runs
def _train(method, policy, ctx: RunContext, metrics_fn=None, corpus=True):
    """Train on the run context's settings, with the base model's fingerprint in the run's identity."""
    run = {"base": fingerprint(ctx.base), **ctx.identity}
    hooks = Hooks(metrics_fn=metrics_fn, corpus=load_names() if corpus else None, identity=run, fresh=ctx.fresh)
    return train(method, policy, ctx.cfg, out=ctx.out, progress=ctx.progress, hooks=hooks)


def with_base(ctx: RunContext | None) -> RunContext:
    """``ctx`` with its base model loaded (the committed checkpoint when none is given)."""
    ctx = ctx or RunContext()
    return ctx if ctx.base is not None else ctx.with_(base=load_base(backend=ctx.backend))


def _sampling(options: dict, group_size: int = 4, conditional_only: bool = True) -> tuple[dict, Sampling]:
    """A ``run_*``'s keyword options cut into the trainer's own and its ``Sampling`` (the names tokenizer, the
    ``prompts`` and the ``group_size``, default ``group_size``; with ``conditional_only``, 1 without prompts)."""
    options = dict(options)
    prompts = options.pop("prompts", None)
    group = options.pop("group_size", group_size)
    if conditional_only and prompts is None:
        group = 1
    return options, Sampling(prompts, group, CharTokenizer())


def run_rlhf(reward, ctx: RunContext | None = None, **options):
    """RLHF (chapter 05) against ``reward`` (names → rewards) on the run context's base model; ``options`` are
    ``trainers.rlhf.RLHFOptions``' fields (``beta``, ``kl``, ``algo``, ``kl_target``, …). With ``prompts`` (a
    ``prompts.Prompts``) conditional, ``group_size`` (default 4) completions per prompt, RLOO's baseline within each
    group (chapter 05, §12). The reward is that of the whole name, prompt included. Returns (policy, history)."""
    from .trainers.rlhf import RLHF, RLHFOptions

    ctx = with_base(ctx)
    owner = getattr(reward, "__self__", None)
    if owner is not None and hasattr(owner, "config"):
        check_same_vocabulary(owner, ctx.base)
    policy = trainable_copy(ctx.base)
    options, sampling = _sampling(options)
    method = RLHF(ctx.base, names_reward(reward), RLHFOptions(**options), sampling)
    return policy, _train(method, policy, ctx, constraint_metrics(reward=reward))


def run_dpo(pairs, ctx: RunContext | None = None, beta: float = 0.1, prompt_length: int = 0):
    """DPO (chapter 05) on preference pairs of names; with ``prompt_length`` k > 0, on triples: each pair shares
    its first k letters, the prompt, and the log-ratios are those of the completions (Eq. 5.21)."""
    from .trainers.dpo import DPO

    return run_pairs(DPO, pairs, ctx, beta=beta, prompt_length=prompt_length)


def run_pairs(trainer, pairs, ctx: RunContext | None = None, beta: float = 0.1, prompt_length: int = 0):
    """A pair method (a ``trainers.pairs.PairMethod`` class: DPO, IPO) on preference pairs of names, as
    :func:`run_dpo`. Returns (policy, history)."""
    ctx = with_base(ctx)
    tok = CharTokenizer()
    length = ctx.base.config.block_size
    prompt_len = np.full(len(pairs), prompt_length, dtype=np.int64) if prompt_length else None
    method = trainer(ctx.base, tok.encode_batch(list(pairs.chosen), length),
                     tok.encode_batch(list(pairs.rejected), length), beta=beta, prompt_len=prompt_len)
    policy = trainable_copy(ctx.base)
    return policy, _train(method, policy, ctx, corpus=False)


def run_gdc(ebm, ctx: RunContext | None = None, calibrate: float | None = None, **options):
    """GDC towards the EBM; ``options`` are ``trainers.gdc.DPG``'s (``proposal``, default adaptive, ``baseline``)
    and its ``Sampling``'s (``prompts``, ``group_size``). With ``calibrate`` (a rate η), λ follows the policy's
    moments (Eq. 6.11) and the history records it as ``lambda_i``. With ``prompts``, CDPG (chapter 06, §10): the
    target p(y|x) ∝ a(y|x) b(x, y) per prompt, each with its own Z(x); pointwise constraints only. Returns (policy,
    history)."""
    from .trainers.gdc import DPG

    check_conditional_ebm(ebm, options.get("prompts"), calibrate)
    ctx = with_base(ctx)
    policy = trainable_copy(ctx.base)
    target = ebm_target(ebm) if calibrate is None else calibrated_target(ebm, calibrate)
    options, sampling = _sampling(options)
    method = DPG(ctx.base, policy, target, sampling=sampling, **options)
    return policy, _train(method, policy, ctx, constraint_metrics(ebm=ebm))


def run_fdpg(f, target_fn, ctx: RunContext | None = None, ebm=None, reward=None, **options):
    """f-DPG (chapter 07) towards ``target_fn`` (batch → log P); ``options`` are ``trainers.fdpg.FDPGOptions``'
    fields (``proposal``, default policy, …); with ``prompts``, conditional (one Z(x) per prompt, chapter 06, §10).
    ``ebm`` and ``reward`` only add their metrics. Returns (policy, history)."""
    from .trainers.fdpg import FDPG, FDPGOptions

    if ebm is not None:
        check_conditional_ebm(ebm, options.get("prompts"))
    ctx = with_base(ctx)
    policy = trainable_copy(ctx.base)
    options, sampling = _sampling(options)
    method = FDPG(ctx.base, policy, target_fn, FDPGOptions(f=f, **options), sampling)
    return policy, _train(method, policy, ctx, constraint_metrics(ebm=ebm, reward=reward))


def run_grpo(reward, ctx: RunContext | None = None, **options):
    """GRPO (chapter 05, §12) against ``reward`` (names → rewards, of the whole name); ``options`` are
    ``group_size`` completions per prompt of ``prompts`` (None: the empty prompt, groups of unconditional samples)
    and ``trainers.grpo.GRPOOptions``' fields: ``beta``, ``clip``, ``kl``, ``scale``, ``epochs``,
    ``loss_agg`` (Eq. 5.26). Returns (policy, history)."""
    from .trainers.grpo import GRPO, GRPOOptions

    ctx = with_base(ctx)
    owner = getattr(reward, "__self__", None)
    if owner is not None and hasattr(owner, "config"):
        check_same_vocabulary(owner, ctx.base)
    policy = trainable_copy(ctx.base)
    options, sampling = _sampling(options, conditional_only=False)
    method = GRPO(ctx.base, names_reward(reward), GRPOOptions(**options), sampling)
    return policy, _train(method, policy, ctx, constraint_metrics(reward=reward))


def check_conditional_ebm(ebm, prompts, calibrate=None) -> None:
    """With prompts the EBM's target is per prompt, p(y|x) ∝ a(y|x) b(x, y): only pointwise constraints have that
    meaning without a λ per prompt."""
    if prompts is not None and (ebm.k or calibrate is not None):
        raise ValueError("with prompts, give pointwise constraints only (e.g. contains:z): a distributional constraint "
                         "such as female=0.5 would need its own λ for every prompt")


def simulate_conditional_preferences(base, prompts, n_pairs: int, seed: int = 0, reward=None):
    """Triples for conditional DPO: for each pair a prompt x ∼ ρ, two completions y ∼ a(·|x), and the annotator's
    choice between the two whole names (Eq. 5.2). Returns ``PreferencePairs`` of whole names; every pair shares
    its first ``prompts.length`` letters."""
    from .rewards import PreferencePairs, annotate, true_reward

    if n_pairs < 1:
        raise ValueError(f"n_pairs must be positive; got {n_pairs}")
    rng = np.random.default_rng(seed)
    which = prompts.sample(n_pairs, rng)
    tok = CharTokenizer()
    ids, _ = base.generate(2 * n_pairs, rng=rng, prompts=np.concatenate([prompts.tokens[which]] * 2))
    names = tok.decode_batch(ids)
    first, second = names[:n_pairs], names[n_pairs:]
    wins = annotate(first, second, np.random.default_rng([seed, 1]), reward or true_reward)
    return PreferencePairs(tuple(x if w else y for x, y, w in zip(first, second, wins)),
                           tuple(y if w else x for x, y, w in zip(first, second, wins)))


def prompted_samples(model, prompts, top=3, n=4, seed=0) -> dict:
    """``n`` completions of each of the ``top`` likeliest prompts of ``prompts``: prompt text → names."""
    tok = CharTokenizer()
    out = {}
    for i in np.argsort(-prompts.probs, kind="stable")[:top]:
        ids, _ = model.generate(n, rng=seed, prompts=prompts.tokens[i])
        out[tok.decode(np.append(prompts.tokens[i], tok.eos_id))] = tok.decode_batch(ids)
    return out


def run_reinforce_on_feature(feature, sign=1.0, until=None, cfg: TrainConfig | None = None, base=None,
                             progress=True, check_samples: int | None = None):
    """REINFORCE (RLOO baseline, no KL term) with the feature itself as the reward, sign·φ(x): the
    reward-maximisation contrast of GDC. Stops early once E[φ] crosses ``until`` (if given): on the training
    batch, or, with ``check_samples``, on that many fresh samples, drawn once the batch is within 0.1 of it."""
    from .trainers.reinforce import Reinforce

    base = base or load_base()
    policy = trainable_copy(base)
    method = Reinforce(base, names_reward(lambda names: sign * feature(names)), tokenizer=CharTokenizer())
    method.name = f"reinforce-{feature.name}"
    cfg = cfg or TrainConfig()
    metrics = constraint_metrics(reward=lambda names: feature(names))

    def stop(step, m):
        if until is None or (m["reward_est"] - until) * sign < (-0.1 if check_samples else 0.0):
            return False
        if not check_samples:
            return True
        names = samples(policy, check_samples, seed=[cfg.seed, step])
        return (float(np.mean(feature(names))) - until) * sign >= 0

    history = train(method, policy, cfg, progress=progress,
                    hooks=Hooks(metrics_fn=metrics, corpus=load_names(), stop_fn=stop))
    return policy, history


COMPARE_STEPS = 500


def compare_reinforce(feature, level, base, n_eval=1000, seed=0, batch_size=128, progress=True):
    """The contrast at equal satisfaction (chapter 06): REINFORCE on ``feature`` as the reward, with small
    steps (lr 1e-4) so that it stops close to ``level``, checked on ``n_eval`` fresh samples. Returns the policy,
    its history, and fresh samples with the fraction and KL(π‖a) on them: ``(policy, hist, (names, frac, kl, se))``.
    ``len(hist["loss"]) == COMPARE_STEPS`` means the level was not reached."""
    start = float(np.mean(feature(samples(base, n_eval, seed))))
    sign = 1.0 if level > start else -1.0
    cfg = TrainConfig(steps=COMPARE_STEPS, batch_size=batch_size, lr=1e-4, seed=seed, checkpoint_every=10**9)
    policy, hist = run_reinforce_on_feature(feature, sign=sign, until=level, cfg=cfg, base=base, progress=progress,
                                            check_samples=n_eval)
    names, kl, se = fresh_samples(policy, base, n_eval, seed + 1)
    return policy, hist, (names, float(np.mean(feature(names))), kl, se)


CHUNK = 4096  # samples generated at once: many are drawn in bounded memory, and the first CHUNK do not change


def _generate(model, n, seed):
    """``model.generate`` of n samples, CHUNK at a time from one generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    parts = [model.generate(min(CHUNK, n - start), rng=rng) for start in range(0, n, CHUNK)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def fresh_samples(policy, base, n=1000, seed=0):
    """n fresh samples of π with the Monte-Carlo estimate of KL(π‖a) = E_π[log π − log a] and its standard
    error: ``(names, kl, se)``."""
    if n < 2:
        raise ValueError(f"a standard error needs at least 2 samples; got n={n}")
    ids, log_pi = _generate(policy, n, seed)
    diff = np.asarray(log_pi, np.float64) - np.concatenate([logprobs(base, ids[i:i + CHUNK])
                                                            for i in range(0, n, CHUNK)])
    return CharTokenizer().decode_batch(ids), float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(n))


class Evaluation(NamedTuple):
    """A policy measured on n fresh samples (never a training batch): each mean with its standard error.

    kl         KL(π‖a) = E_π[log π − log a], the k1 estimate: unbiased, so a policy at a can come out slightly
               negative on a finite sample
    rewards    reward name → Estimate of its mean;  fractions: feature name → Estimate (a binomial fraction)
    distinct_2 on the first ``metrics.DIVERSITY_N`` names;  self_bleu on the first ``metrics.SELF_BLEU_N``
    unique     share of distinct names;  in_corpus: share of names found in the census lists
    """

    names: list
    n: int
    kl: object
    rewards: dict
    fractions: dict
    distinct_2: float
    self_bleu: float
    unique: float
    in_corpus: float


def evaluate(policy, base, n: int = 1000, seed: int = 1, rewards: dict | None = None, features=()) -> Evaluation:
    """Measure ``policy`` on ``n`` fresh samples: KL(π‖a), each reward's mean and each feature's fraction (with
    standard errors), and diversity at the fixed sample sizes of ``metrics``."""
    from .metrics import DIVERSITY_N, SELF_BLEU_N, distinct_n, mean_se

    if n < max(DIVERSITY_N, 2):
        raise ValueError(f"evaluate needs at least {DIVERSITY_N} samples (diversity is reported at that size); got {n}")
    ids, log_pi = policy.generate(n, rng=seed)
    names = CharTokenizer().decode_batch(ids)
    corpus = load_names()
    return Evaluation(
        names, n, mean_se(np.asarray(log_pi, np.float64) - logprobs(base, ids)),
        {name: mean_se(fn(names)) for name, fn in (rewards or {}).items()},
        {f.name: mean_se(f(names)) for f in features},
        distinct_n(names[:DIVERSITY_N], 2), self_bleu(names, max_refs=SELF_BLEU_N), len(set(names)) / n,
        float(np.mean([s in corpus for s in names])))


def fresh_prompted_samples(policy, base, prompts, n=1000, seed=0):
    """n fresh completions of prompts drawn from ρ, as whole names, with the Monte-Carlo estimate of the mean
    conditional KL, E_ρ KL(π(·|x)‖a(·|x)) = E[log π(y|x) − log a(y|x)], and its standard error: ``(names, kl, se)``."""
    rng = np.random.default_rng(seed)
    x = prompts.tokens[prompts.sample(n, rng)]
    ids, log_pi = policy.generate(n, rng=rng, prompts=x)
    diff = np.asarray(log_pi, np.float64) - logprobs(base, ids, np.full(n, prompts.length))
    return CharTokenizer().decode_batch(ids), float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(n))


def samples(model, n=20, seed=0) -> list[str]:
    return CharTokenizer().decode_batch(_generate(model, n, seed)[0])


# ------------------------------------------------------------------------------------------- distillation
def run_distill(teacher, ctx: RunContext | None = None, student_config=None, **options):
    """Token-level f-divergence distillation (chapter 07, §9): a student GPT of ``student_config`` (GPTConfig
    fields over ``trainers.distill.STUDENT_SIZE``; its vocabulary and horizon are the teacher's) trained from its
    seeded initialisation towards the frozen ``teacher`` on the teacher's (or its own) samples; ``options`` are
    ``trainers.distill.Distill``'s (``f``, default js, and ``samples``, default teacher). The student lives on the
    teacher's backend; the run context's base model is not used. Returns (student, history)."""
    from dataclasses import asdict

    from .gpt import GPTConfig
    from .trainers.common import frozen_copy
    from .trainers.distill import STUDENT_SIZE, Distill

    ctx = ctx or RunContext()
    t = teacher.config
    config = GPTConfig(**{**STUDENT_SIZE, **(student_config or {}), "vocab_size": t.vocab_size,
                          "block_size": t.block_size, "bos_id": t.bos_id, "eos_id": t.eos_id, "dropout": 0.0})
    student = GPT(config, seed=ctx.seed).to(teacher.parameters()[0].bk)
    teacher = frozen_copy(teacher)
    method = Distill(teacher, tokenizer=CharTokenizer(), **options)
    run = {"kind": "distill", "teacher": fingerprint(teacher), "student_config": asdict(config), **ctx.identity}
    hooks = Hooks(corpus=load_names(), identity=run, fresh=ctx.fresh)
    history = train(method, student, ctx.cfg, out=ctx.out, progress=ctx.progress, hooks=hooks)
    return student, history


def distill_report(student, teacher, f, n=1000, seed=0) -> list[str]:
    """What a distillation reached, on fresh samples (each figure a mean ± its standard error): the per-token
    objective and KL(p‖π) on n teacher samples, KL(π‖p) on n student samples, and the true reward r* of both."""
    from .metrics import mean_se
    from .rewards import true_reward
    from .tensor import no_grad
    from .trainers.policy_gradient import token_fdiv_terms

    tok = CharTokenizer()
    ids_p, log_p = teacher.generate(n, rng=seed)
    ids_s, log_pi = student.generate(n, rng=seed + 1)
    with no_grad():
        token_div = token_fdiv_terms(student, teacher, ids_p, f)[1].numpy().astype(np.float64).sum(axis=1)
    kl_p_pi = mean_se(log_p - logprobs(student, ids_p))
    kl_pi_p = mean_se(log_pi - logprobs(teacher, ids_s))
    r_p, r_s = (mean_se(true_reward(tok.decode_batch(ids))) for ids in (ids_p, ids_s))
    return [f"student: {student.num_parameters():,} parameters (teacher: {teacher.num_parameters():,})",
            f"per-token D_{f}(π‖p) summed over a name, on {n} fresh teacher samples: {mean_se(token_div)}",
            f"KL(p‖π) on {n} fresh teacher samples: {kl_p_pi}  |  KL(π‖p) on {n} fresh student samples: {kl_pi_p}",
            f"true reward r* on {n} fresh samples: teacher {r_p}  |  student {r_s}"]
