"""Policy-gradient pieces the trainers share (chapters 04–05): surrogates, baselines, PPO-clip, token-level KL.

A trainer turns a batch into per-sample (or per-token) coefficients c and minimises the surrogate −Σ c·log π,
whose gradient is the policy-gradient estimate (Eq. 4.3). What differs between methods is how c is made;
the pieces below are the ways the course's methods make it.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from .. import functional as F
from ..tensor import Tensor, constant, no_grad


def weighted_surrogate(logp: Tensor, coefficients) -> Tensor:
    """−Σ c·log π over every entry (per sequence ``[B]`` or per token ``[B, L]``): its gradient is −Σ c ∇ log π,
    the REINFORCE form (Eq. 4.3)."""
    c = np.asarray(coefficients, dtype=np.float64)
    if not np.isfinite(c).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(c))[0])
        raise FloatingPointError(f"a policy-gradient coefficient is {c[bad]} (sample {bad[0]}); "
                                 "check the rewards or the target's log-scores for NaN or inf")
    return -(logp * constant(c, like=logp)).sum()


def checked_rewards(reward_fn, batch) -> np.ndarray:
    """``reward_fn(batch)`` as float64 ``[B]``, refusing a wrong shape or a NaN/inf reward."""
    r = np.asarray(reward_fn(batch), dtype=np.float64)
    if r.shape != (len(batch),):
        raise ValueError(f"the reward function returned shape {r.shape}; expected ({len(batch)},)")
    if not np.isfinite(r).all():
        raise ValueError(f"the reward function returned NaN or inf for {int((~np.isfinite(r)).sum())} samples")
    return r


def leave_one_out_baseline(values, group=None) -> np.ndarray:
    """Eq. (4.4), RLOO (Ahmadian et al. 2024): b_i = mean of the other samples' values (0 for a single sample).

    With ``group`` (one id per sample), Eq. (5.20): the mean of the other samples *of the same group* — the other
    responses to the same prompt — so that the baseline does not depend on y_i but does on x."""
    values = np.asarray(values, dtype=np.float64)
    if group is not None:
        return _per_group(leave_one_out_baseline, values, group)
    n = len(values)
    if n < 2:
        return np.zeros(n)
    return (values.sum() - values) / (n - 1)


def leave_one_out_weighted_baseline(values, rho, group=None) -> np.ndarray:
    """b_i = Σ_{j≠i} ρ_j v_j / Σ_{j≠i} ρ_j: the leave-one-out mean with importance weights ρ = π/q, which does not
    depend on x_i and so keeps an off-policy gradient's expectation (chapter 07); within each group if given."""
    if group is not None:
        return _per_group(leave_one_out_weighted_baseline, np.asarray(values, np.float64), group, np.asarray(rho))
    return _others_sum(np.asarray(rho) * values) / np.maximum(_others_sum(rho), 1e-300)


def _per_group(fn, values, group, *more) -> np.ndarray:
    """``fn`` applied to each group's values (and the matching entries of ``more``) separately."""
    group = np.asarray(group)
    if group.shape != values.shape:
        raise ValueError(f"one group id per value: got {group.shape} ids for {values.shape} values")
    out = np.zeros_like(values)
    for g in np.unique(group):
        at = group == g
        out[at] = fn(values[at], *[m[at] for m in more])
    return out


def group_normalised_advantages(values, group, scale: bool = True, eps: float = 1e-4) -> np.ndarray:
    """Eq. (5.22), GRPO (Shao et al. 2024): A_i = (r_i − mean_g r) / (std_g r + ε) within each prompt's group g
    (std with the k − 1 divisor; ε = 1e-4 keeps a group of equal rewards at A = 0). ``scale=False`` leaves out
    the division: A_i = r_i − mean_g r. A group of one response has no standard deviation: an error."""
    values, group = np.asarray(values, dtype=np.float64), np.asarray(group)
    sizes = np.unique(group, return_counts=True)[1]
    if (sizes < 2).any():
        raise ValueError(f"group normalisation needs at least 2 responses per prompt (a group of 1 has no standard "
                         f"deviation); got a group of {int(sizes.min())}")

    def normalise(v):
        centred = v - v.mean()
        return centred / (v.std(ddof=1) + eps) if scale else centred

    return _per_group(normalise, values, group)


def expected_group_advantage(probs, values, k: int, scale: bool = True, eps: float = 1e-4,
                             max_multisets: int = 2_000_000) -> np.ndarray:
    """Eq. (5.23), exactly: ā(y) = E[A_1 | y_1 = y] for a group of k responses y_1..y_k drawn independently from
    ``probs`` (one prompt's distribution over its responses, with ``values`` r(y)), A from
    :func:`group_normalised_advantages`. By exchangeability the expected GRPO gradient is Σ_y π(y) ā(y) ∇log π(y).

    The other k − 1 responses are enumerated as multisets with their multinomial probabilities."""
    probs, values = np.asarray(probs, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if k < 2:
        raise ValueError(f"group normalisation needs groups of at least 2 responses; got k = {k}")
    support = np.flatnonzero(probs > 0)
    count = math.comb(len(support) + k - 2, k - 1)
    if count > max_multisets:
        raise ValueError(f"{count:,} multisets of {k - 1} responses out of {len(support)}: too many to enumerate")
    others = np.array(list(itertools.combinations_with_replacement(range(len(support)), k - 1)), dtype=np.int64)
    counts = np.stack([np.bincount(row, minlength=len(support)) for row in others])  # [M, S]
    log_coef = math.lgamma(k) - np.sum([[math.lgamma(c + 1) for c in row] for row in counts], axis=1)
    log_p = np.log(probs[support])
    weight = np.exp(log_coef + counts @ log_p)  # multinomial probability of each multiset
    v = values[support]
    s1, s2 = counts @ v, counts @ (v * v)  # Σ and Σ² of the others' values
    mean = (values[:, None] + s1[None, :]) / k  # [Y, M]
    centred = values[:, None] - mean
    if scale:
        var = (values[:, None] ** 2 + s2[None, :] - k * mean ** 2) / (k - 1)
        centred = centred / (np.sqrt(np.maximum(var, 0.0)) + eps)
    return centred @ weight


def _others_sum(v) -> np.ndarray:
    """Σ_{j≠i} v_j for every i, from prefix and suffix sums (no cancellation when one v_i dominates)."""
    v = np.asarray(v, dtype=np.float64)
    before = np.concatenate([[0.0], np.cumsum(v)[:-1]])
    after = np.concatenate([np.cumsum(v[::-1])[::-1][1:], [0.0]])
    return before + after


def whiten(adv) -> np.ndarray:
    """(A − mean A)/(std A + 1e-8) over the batch: the advantage normalisation PPO implementations apply."""
    adv = np.asarray(adv, dtype=np.float64)
    return (adv - adv.mean()) / (adv.std() + 1e-8) if len(adv) > 1 else adv


def ppo_clip_coefficients(logp: Tensor, log_old, adv, weights, clip: float):
    """Eq. (5.12): PPO-clip, E[min(ρA, clip(ρ, 1−ε, 1+ε)A)] with ρ = π/π_old. The gradient of the chosen term is
    A·ρ·∇log π where the unclipped term is the minimum, and zero where the clip is active; returns the
    coefficients w·A·ρ·[unclipped] for :func:`weighted_surrogate` and the fraction of clipped samples."""
    ratio = np.exp(logp.numpy().astype(np.float64) - log_old)
    clipped = np.clip(ratio, 1 - clip, 1 + clip)
    active = ratio * adv <= clipped * adv
    return weights * adv * ratio * active, float(1 - active.mean())


def ref_token_logprobs(ref, batch) -> np.ndarray:
    """log a(x_t | x_<t) of every token of the batch under the frozen reference, computed once per batch."""
    if "ref_tok" not in batch.extra:
        with no_grad():
            batch.extra["ref_tok"] = np.asarray(batch.token_logprobs(ref).numpy(), np.float64)
    return batch.extra["ref_tok"]


def kl_to_go(logp_tok: Tensor, ref_tok) -> np.ndarray:
    """Σ_{t' ≥ t} (log π_t' − log a_t') for every token t: the sampled k1 penalty still to come (Eq. 5.8 per token)."""
    k1 = logp_tok.numpy().astype(np.float64) - ref_tok
    return np.cumsum(k1[:, ::-1], axis=1)[:, ::-1]


def kl_loss(logp_tok: Tensor, ref_tok, weights, kind: str) -> Tensor:
    """Eq. (5.9): Σ_i w_i Σ_t k(log π_t, log a_t) with k = k2 (½ d²) or k3 (e^d − 1 − d), d = log a_t − log π_t,
    differentiated through log π_t (the prefixes are not)."""
    if kind not in ("k2_loss", "k3_loss"):
        raise ValueError(f"a KL term in the loss is 'k2_loss' or 'k3_loss'; got {kind!r}")
    d = constant(ref_tok, like=logp_tok) - logp_tok  # log ρ_t = log a_t − log π_t
    per_token = 0.5 * d * d if kind == "k2_loss" else d.exp() - 1.0 - d  # 0 at padding, where d = 0
    return (per_token.sum(axis=1) * constant(weights, like=logp_tok)).sum()


def token_fdiv_terms(policy, ref, tokens, f: str, prompt_len=None) -> tuple[Tensor, Tensor]:
    """From one forward of π over rows ``tokens [B, L]``: log π(x_t | x_<t) ``[B, L]``, and the per-token
    D_f(π(·|x_<t) ‖ a(·|x_<t)) = Σ_v a f(π/a) ``[B, L]`` over the whole vocabulary at every visited prefix,
    differentiable through π's next-token distribution at the fixed prefix (``F.token_fdiv``: the fused
    kernel on the torch backend); the frozen ``ref`` is read without a graph. Both are 0 at padding and at
    the forced EOS, and in the prompt when ``prompt_len`` is given (the response's tokens only)."""
    logits, targets = policy.next_token_logits(tokens, prompt_len)
    with no_grad():
        ref_logits, _ = ref.next_token_logits(tokens, prompt_len)
    logp = -F.cross_entropy(logits, targets, ignore_index=-100, reduction="none")
    return logp, F.token_fdiv(logits, ref_logits, f, targets != -100)


def token_kl_terms(policy, ref, tokens, prompt_len=None) -> tuple[Tensor, Tensor]:
    """:func:`token_fdiv_terms` with f = kl: log π(x_t | x_<t) and the analytic per-token KL_t of Eq. (5.10)."""
    return token_fdiv_terms(policy, ref, tokens, "kl", prompt_len)


def kl_after(kl_tok: Tensor) -> np.ndarray:
    """Σ_{t' > t} KL_t' for every token t (strictly after t): the future KL that the choice of token t leads to,
    which its score-function coefficient carries in the full-token estimator (Eq. 5.11)."""
    k = kl_tok.numpy().astype(np.float64)
    return np.cumsum(k[:, ::-1], axis=1)[:, ::-1] - k


def weighted_sum(per_sequence: Tensor, weights) -> Tensor:
    """Σ_i w_i v_i for a per-sequence Tensor v ``[B]`` and fixed weights w."""
    return (per_sequence * constant(weights, like=per_sequence)).sum()
