"""The names tasks: the base model, rewards and EBM targets on names, wired to the trainers.

Each ``run_*`` function builds one method on the committed base model, trains it on the shared path of
``trainers/common.py``, and returns the trained policy with its history. The command line and the tour call
these; the math lives in the trainers, ``rewards.py`` and ``ebm.py``.
"""
from __future__ import annotations

import numpy as np

from .data import DATA_DIR, CharTokenizer, load_names
from .gpt import GPT
from .trainers.common import TrainConfig, frozen_copy, self_bleu, train

BASE_CHECKPOINT = DATA_DIR / "base.npz"


def load_base(path=None) -> GPT:
    """The base (reference) model a: the committed checkpoint unless another path is given."""
    path = BASE_CHECKPOINT if path is None else path
    model = GPT.load(path)
    tok = CharTokenizer()
    if model.config.vocab_size != tok.vocab_size:
        raise ValueError(f"the base model's vocabulary ({model.config.vocab_size} tokens) does not match the names "
                         f"tokenizer's ({tok.vocab_size})")
    return model.eval()


def trainable_copy(model: GPT) -> GPT:
    policy = frozen_copy(model)
    for p in policy.parameters():
        p.requires_grad = True
    return policy.eval()  # trainable, but with dropout off: the trainers need the model's own log π


def check_same_vocabulary(reward_model, policy) -> None:
    """A reward model reads the policy's samples through its own embedding table: the vocabularies must match."""
    v_r, v_p = reward_model.config.vocab_size, policy.config.vocab_size
    if v_r != v_p:
        raise ValueError(f"the reward model has a vocabulary of {v_r} tokens but the policy has {v_p}; "
                         "they must read the same tokens")


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


def tilted_target(reward, beta: float) -> callable:
    """The RLHF target as an EBM: log P(x) = log a(x) + r(x)/β, so that p = π* (Eq. 5.6)."""
    def fn(batch):
        return batch.log_ref + np.asarray(reward(batch.names), dtype=np.float64) / beta

    return fn


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


def _train(method, policy, cfg, out, metrics_fn, progress):
    return train(method, policy, cfg, out=out, corpus=load_names(), metrics_fn=metrics_fn, progress=progress)


def run_rlhf(reward, beta=0.1, kl="k1_seq", algo="rloo", kl_target=None, cfg: TrainConfig | None = None,
             base=None, out=None, progress=True):
    from .trainers.rlhf import RLHF

    base = base or load_base()
    owner = getattr(reward, "__self__", None)
    if owner is not None and hasattr(owner, "config"):
        check_same_vocabulary(owner, base)
    policy = trainable_copy(base)
    method = RLHF(base, names_reward(reward), beta=beta, kl=kl, algo=algo, kl_target=kl_target,
                  tokenizer=CharTokenizer())
    history = _train(method, policy, cfg or TrainConfig(), out, constraint_metrics(reward=reward), progress)
    return policy, history


def run_dpo(pairs, beta=0.1, cfg: TrainConfig | None = None, base=None, out=None, progress=True):
    from .trainers.dpo import DPO

    base = base or load_base()
    tok = CharTokenizer()
    length = base.config.block_size
    method = DPO(base, tok.encode_batch(list(pairs.chosen), length), tok.encode_batch(list(pairs.rejected), length),
                 beta=beta)
    policy = trainable_copy(base)
    history = train(method, policy, cfg or TrainConfig(), out=out, progress=progress)
    return policy, history


def run_gdc(ebm, proposal="adaptive", baseline=False, cfg: TrainConfig | None = None, base=None, out=None,
            progress=True):
    from .trainers.gdc import DPG

    base = base or load_base()
    policy = trainable_copy(base)
    method = DPG(base, policy, ebm_target(ebm), proposal=proposal, baseline=baseline, tokenizer=CharTokenizer())
    history = _train(method, policy, cfg or TrainConfig(), out, constraint_metrics(ebm=ebm), progress)
    return policy, history


def run_fdpg(f, target_fn, ebm=None, reward=None, proposal="policy", cfg: TrainConfig | None = None, base=None,
             out=None, progress=True):
    from .trainers.fdpg import FDPG

    base = base or load_base()
    policy = trainable_copy(base)
    method = FDPG(base, policy, target_fn, f=f, proposal=proposal, tokenizer=CharTokenizer())
    history = _train(method, policy, cfg or TrainConfig(), out, constraint_metrics(ebm=ebm, reward=reward), progress)
    return policy, history


def run_reinforce_on_feature(feature, sign=1.0, until=None, cfg: TrainConfig | None = None, base=None,
                             progress=True):
    """REINFORCE (RLOO baseline, no KL term) with the feature itself as the reward, sign·φ(x): the
    reward-maximisation contrast of GDC. Stops early once E[φ] crosses ``until`` (if given)."""
    from .trainers.rlhf import Reinforce

    base = base or load_base()
    policy = trainable_copy(base)
    method = Reinforce(base, names_reward(lambda names: sign * feature(names)), tokenizer=CharTokenizer())
    method.name = f"reinforce-{feature.name}"
    cfg = cfg or TrainConfig()
    metrics = constraint_metrics(reward=lambda names: feature(names))

    def stop(step, m):
        return until is not None and (m["reward_est"] - until) * sign >= 0

    history = train(method, policy, cfg, corpus=load_names(), metrics_fn=metrics, progress=progress, stop_fn=stop)
    return policy, history


def samples(model, n=20, seed=0) -> list[str]:
    ids, _ = model.generate(n, rng=seed)
    return CharTokenizer().decode_batch(ids)
