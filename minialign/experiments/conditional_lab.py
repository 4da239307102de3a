"""The exact-lab studies of the conditional setting (chapter 05, §12; chapter 06, §10), shared by tests and notebooks.

On the prompted lab (``lab.PromptedLab``) every response of every prompt is enumerated, so every per-prompt
quantity — Z(x), the optimum π*(y|x) ∝ a(y|x) e^{r(x,y)/β}, KL averaged over prompts — is a finite sum, and
a trainer's loss on an exact batch has as gradient the exact expectation of its Monte-Carlo gradient. Here:

* ``prompted_lab``: a base model a, a policy π near it, the prompted lab (ρ not uniform), a reward r(x, y);
* ``conditional_optimum`` / ``conditional_objective``: Eqs. (5.19)–(5.20) per prompt;
* ``grpo_gradients``: GRPO's exact expected gradient (Eq. 5.23) against the true KL-control gradient, split into
  its reward part and its KL part, with and without the division by the group's std — the table of §12;
* ``grpo_fixed_point``: where GRPO's expected update vanishes for a policy that can represent anything
  (Eq. 5.24): π(y|x) ∝ a(y|x) e^{ā_π(x,y)/β}, with ā the expected group advantage;
* ``pass_fail_update``: GRPO's exact expected update of a pass/fail prompt's logit at solve rate p (the std's
  difficulty bias, Liu et al. 2025);
* ``aggregation_gradient`` / ``length_lab`` / ``tabular_lengths``: the three ways of adding up a response's
  token terms (Eq. 5.26) — their exact expected updates and the lengths of right and wrong responses they lead to;
* ``train_exact``: a trainer run on exact batches — its expected gradient, with no sampling noise.
"""
from __future__ import annotations

import numpy as np

from ..lab import PromptedLab, autograd_of, exact_grad, lab_fn, lab_model
from ..optim import AdamW
from ..tensor import Tensor
from ..trainers.common import Sampling, exact_batch, frozen_copy
from ..trainers.grpo import GRPO, GRPOOptions, response_lengths
from ..trainers.policy_gradient import expected_group_advantage

GRPO_SEEDS = range(10)


# ------------------------------------------------------------------------------ the lab
def prompted_lab(seed=0, vocab_size=3, block_size=5, beta=0.5, scale=0.3, prompt_length=1, noise=0.3):
    """A base model a (``lab_model``), a policy π: a copy of a moved by ``noise``·N(0, 1) on every weight, the
    prompted lab (every prompt of ``prompt_length`` letters, ρ drawn from a Dirichlet(2) so that prompts differ in
    weight) and a reward r(x, y) ~ N(0, 1) per (prompt, response) row.

    Returns (a, π, plab, r, β)."""
    a = lab_model(seed, vocab_size=vocab_size, block_size=block_size, scale=scale)
    policy = lab_model(seed, vocab_size=vocab_size, block_size=block_size, scale=scale)
    rng = np.random.default_rng(seed + 11)
    for p in policy.parameters():
        p.data = p.data + noise * rng.standard_normal(p.shape)
    n_prompts = (vocab_size - 1) ** prompt_length
    plab = PromptedLab.first_tokens(a, prompt_length, weights=rng.dirichlet(2.0 * np.ones(n_prompts)))
    return a, policy, plab, rng.normal(size=len(plab)), beta


def trainable(model):
    """A copy of ``model`` whose parameters train."""
    twin = frozen_copy(model)
    for p in twin.parameters():
        p.requires_grad = True
    return twin


def conditional_optimum(plab, log_a, r, beta):
    """Eq. (5.20) per prompt: π*(y|x) = a(y|x) e^{r(x,y)/β} / Z(x). Returns (log π* over the rows, log Z(x) [m])."""
    return plab.normalise(np.asarray(log_a, np.float64) + np.asarray(r, np.float64) / beta)


def conditional_objective(plab, p, p_ref, r, beta) -> float:
    """J(π) = Σ_x ρ(x) (E_{π(·|x)}[r(x, ·)] − β KL(π(·|x) ‖ a(·|x))), exactly."""
    reward = float(np.sum(plab.row_prompt_probs * p * r))
    return reward - beta * plab.mean_divergence("kl", p, p_ref)


def reward_std(plab, p, r) -> np.ndarray:
    """σ_π(x): the standard deviation of r(x, ·) under π(·|x), per prompt — the limit of GRPO's group std."""
    mean = plab.group_sum(p * r)
    return np.sqrt(np.maximum(plab.group_sum(p * r * r) - mean ** 2, 0.0))


# ------------------------------------------------------------------------------ GRPO's gradient (§12)
def grpo_gradients(plab, a, policy, r, beta, k, clip=0.2, which=None):
    """GRPO's exact expected loss gradient (Eq. 5.23) next to the truths it is compared with, all flattened.

    Returns a dict (only the keys in ``which``, if given): ``grpo`` (as published: std, k3 in the loss),
    ``grpo_no_std`` (k3, no division), ``grpo_k1`` (std, k1 in the reward), ``grpo_k1_no_std``; their reward
    parts ``reward_std`` and ``reward_no_std`` (β = 0) and KL part ``kl_k3`` (reward 0); and the truths by
    autograd through the enumeration: ``true`` = −∇J (J of Eq. 5.20), ``true_reward`` = −∇ Σ_x ρ E_π[r],
    ``true_kl`` = β∇ Σ_x ρ KL(π‖a), ``true_kl_forward`` = β∇ Σ_x ρ KL(a‖π), and ``sigma_reward`` =
    −∇ Σ_x ρ(x) E_π[r]/σ_π(x) with σ held fixed (Eq. 5.25).
    """
    batch = exact_batch(plab, policy, ref=a)
    reward, zero = lab_fn(plab, r), (lambda b: np.zeros(len(b)))
    log_a = np.log(plab.distribution(a))
    sigma = reward_std(plab, plab.distribution(policy), r)
    row_rho = Tensor(plab.row_prompt_probs)

    def grpo(reward_fn, beta_, kl, scale):
        options = GRPOOptions(beta=beta_, clip=clip, kl=kl, scale=scale)
        return lambda: exact_grad(GRPO(a, reward_fn, options, Sampling(plab.prompts, k)), policy, batch)

    def expected(values):  # −∇ Σ_x ρ(x) Σ_y π(y|x) values(x, y)
        return lambda: autograd_of(policy, lambda: -(plab.log_probs(policy).exp() * row_rho * Tensor(values)).sum())

    def kl(name):
        return lambda: beta * autograd_of(policy, lambda: plab.mean_fdiv(name, plab.log_probs(policy), log_a))

    recipes = {
        "grpo": grpo(reward, beta, "k3_loss", True), "grpo_no_std": grpo(reward, beta, "k3_loss", False),
        "grpo_k1": grpo(reward, beta, "k1_reward", True), "grpo_k1_no_std": grpo(reward, beta, "k1_reward", False),
        "reward_std": grpo(reward, 0.0, "k3_loss", True), "reward_no_std": grpo(reward, 0.0, "k3_loss", False),
        "kl_k3": grpo(zero, beta, "k3_loss", True), "true_reward": expected(r),
        "sigma_reward": expected(r / sigma[plab.group]), "true_kl": kl("kl"), "true_kl_forward": kl("reverse_kl"),
    }
    wanted = set(recipes) | {"true"} if which is None else set(which)
    out = {key: recipes[key]() for key in recipes if key in wanted or (key in ("true_reward", "true_kl")
                                                                       and "true" in wanted)}
    if "true" in wanted:
        out["true"] = out["true_reward"] + out["true_kl"]
    return out


def relative_error(g, truth) -> float:
    """‖g − truth‖ / ‖truth‖."""
    return float(np.linalg.norm(g - truth) / np.linalg.norm(truth))


def scaled_error(g, truth) -> float:
    """The relative error of g against the best multiple of ``truth``: how far g is from pointing the same way."""
    c = float(g @ truth / (truth @ truth))
    return relative_error(g, c * truth)


def grpo_gradient_table(seed, k=4, **lab_kwargs) -> dict:
    """The relative errors of §12's table on one random (π, a, ρ, r) (see :func:`grpo_gradients`)."""
    a, policy, plab, r, beta = prompted_lab(seed, **lab_kwargs)
    g = grpo_gradients(plab, a, policy, r, beta, k)
    no_std_reward = g["true_reward"] * (k - 1) / k
    return {
        "grpo vs true": relative_error(g["grpo"], g["true"]),
        "k1, no std vs true·": relative_error(g["grpo_k1_no_std"], no_std_reward + g["true_kl"]),
        "k3, no std vs true·": relative_error(g["grpo_no_std"], no_std_reward + g["true_kl"]),
        "reward, no std vs (k−1)/k·true": relative_error(g["reward_no_std"], no_std_reward),
        "reward, std vs true (direction)": scaled_error(g["reward_std"], g["true_reward"]),
        "reward, std vs σ-weighted (direction)": scaled_error(g["reward_std"], g["sigma_reward"]),
        "kl k3 vs ∇KL(π‖a)": relative_error(g["kl_k3"], g["true_kl"]),
        "kl k3 vs ∇KL(a‖π)": relative_error(g["kl_k3"], g["true_kl_forward"]),
    }


def grpo_gradient_survey(seeds=GRPO_SEEDS, k=4, **lab_kwargs) -> dict:
    """{row: array over seeds} of :func:`grpo_gradient_table`."""
    tables = [grpo_gradient_table(s, k, **lab_kwargs) for s in seeds]
    return {key: np.array([t[key] for t in tables]) for key in tables[0]}


# ------------------------------------------------------------------------------ what GRPO converges to
def grpo_fixed_point(plab, log_a, r, beta, k, scale=True, damping=0.5, tol=1e-12, max_iter=10_000):
    """Eq. (5.24): the conditional distribution at which GRPO's expected update (k1 in the reward, or any exact
    KL gradient) vanishes for a policy that can represent every π(·|x): π(y|x) ∝ a(y|x) exp(ā_π(x, y)/β), with
    ā_π the expected group advantage of Eq. (5.23) under π itself, prompt by prompt (:func:`group_fixed_point`).
    Returns log π over the rows.

    Without the division by the std, ā = (k−1)/k·(r − E_π r) and the fixed point is π* at β·k/(k−1); with it,
    for large k, ā → (r − E_π r)/σ_π(x) and it is the KL-control optimum at a per-prompt β·σ_π(x)."""
    log_a, r = np.asarray(log_a, dtype=np.float64), np.asarray(r, dtype=np.float64)
    out = np.empty(len(plab))
    for g in range(plab.n_prompts):
        at = plab.group == g
        out[at] = group_fixed_point(log_a[at], r[at], beta, k, scale, damping, tol, max_iter)
    return out


def group_fixed_point(log_a, r, beta, k, scale=True, damping=0.5, tol=1e-12, max_iter=10_000):
    """Eq. (5.24) for one prompt: log π with π ∝ a·exp(ā_π/β), by damped fixed-point iteration in log space."""
    log_a, r = np.asarray(log_a, dtype=np.float64), np.asarray(r, dtype=np.float64)
    log_pi = log_a - np.logaddexp.reduce(log_a)
    for _ in range(max_iter):
        target = log_a + expected_group_advantage(np.exp(log_pi), r, k, scale=scale) / beta
        new = (1 - damping) * log_pi + damping * (target - np.logaddexp.reduce(target))
        new -= np.logaddexp.reduce(new)
        if np.abs(new - log_pi).max() < tol:
            return new
        log_pi = new
    raise RuntimeError(f"the fixed-point iteration did not converge in {max_iter} steps")


# ------------------------------------------------------------------------------ the std's difficulty bias
def pass_fail_update(p, k, scale=True) -> float:
    """GRPO's exact expected update of the logit θ of a pass/fail prompt, π(right) = p = σ(θ), reward 1 or 0:
    Σ_y π(y) ā(y) ∂log π(y)/∂θ = p(1 − p)·(ā(right) − ā(wrong)), with ā of Eq. (5.23) for groups of k.

    Without the std it is (k−1)/k·p(1 − p); with it, as k → ∞, p(1 − p)/σ = √(p(1 − p)) (Eq. 5.25's 1/σ)."""
    probs = np.array([1.0 - p, p])
    adv = expected_group_advantage(probs, np.array([0.0, 1.0]), k, scale=scale)
    return float(p * (1 - p) * (adv[1] - adv[0]))


def pass_fail_fixed_point(p, beta, k, scale=True) -> tuple[float, float]:
    """Eq. (5.24) for a pass/fail prompt that a solves with probability p: (the solve rate at GRPO's fixed point,
    its KL(π̃‖a)), for groups of k."""
    log_a, r = np.log([1.0 - p, p]), np.array([0.0, 1.0])
    log_pi = group_fixed_point(log_a, r, beta, k, scale=scale)
    pi = np.exp(log_pi)
    return float(pi[1]), float(pi @ (log_pi - log_a))


# ------------------------------------------------------------------------------ how a response's tokens add up
def length_lab(seed=0, block_size=5):
    """The prompted lab of :func:`prompted_lab` with responses of one to ``block_size`` − 1 tokens and a pass/fail
    reward: a response is right when its first letter is letter 1 (and not EOS). Returns (a, plab, r, |x|)."""
    a, _, plab, _, _ = prompted_lab(seed, block_size=block_size)
    r = (plab.sequences[:, 1] == 1).astype(np.float64)
    return a, plab, r, response_lengths(plab.sequences, plab.prompt_len, a.config.eos_id)


def aggregation_gradient(plab, a, policy, r, k, loss_agg, scale=True) -> np.ndarray:
    """The exact expected gradient of GRPO's reward part (β = 0) under ``loss_agg`` (Eq. 5.26)."""
    method = GRPO(a, lab_fn(plab, r), GRPOOptions(beta=0.0, scale=scale, loss_agg=loss_agg), Sampling(plab.prompts, k))
    return exact_grad(method, policy, exact_batch(plab, policy, ref=a))


def conditional_length(plab, p, lengths, where) -> float:
    """E[|x| | where] under τ(c)π(x|c): the mean length of the responses that ``where`` selects (e.g. the wrong)."""
    w = plab.row_prompt_probs * p * where
    return float(np.sum(w * lengths) / np.sum(w))


def tabular_lengths(loss_agg, steps=300, lr=0.5, k=4, beta=0.0, scale=True, seed=0):
    """GRPO's exact expected update on a policy with one logit per response (any π(·|x)), in the natural geometry:
    log π(x|c) += lr·(f(x) − E_π f) with f(x) = ν(x)·(ā_π(x) − β(log π(x)/a(x) − KL(π‖a))) — Eq. (5.26)'s ν of
    ``loss_agg``, ā of Eq. (5.23), k1 in the reward with its expected baseline. Under it the odds of two responses
    with equal f never change, so with ``seq_sum`` (ν = 1) and β = 0 the lengths among wrong responses, and among
    right ones, stay where a put them; with ``token_mean`` (ν = 1/|x|) a negative ā favours the long wrong responses
    and a positive one the short right ones. On :func:`length_lab`. Returns arrays ``wrong``, ``right``, ``solved``
    (steps + 1 entries) and ``log_pi`` at the end."""
    a, plab, r, lengths = length_lab(seed)
    log_a = np.log(plab.distribution(a))
    c = {"seq_sum": np.ones(len(plab)), "token_mean": 1.0 / lengths,
         "constant": np.full(len(plab), 1.0 / lengths.max())}[loss_agg]
    log_pi = log_a.copy()
    out = {"wrong": [], "right": [], "solved": []}
    for step in range(steps + 1):
        p = np.exp(log_pi)
        out["wrong"].append(conditional_length(plab, p, lengths, r == 0))
        out["right"].append(conditional_length(plab, p, lengths, r == 1))
        out["solved"].append(float(np.sum(plab.row_prompt_probs * p * r)))
        if step == steps:
            break
        for g in range(plab.n_prompts):
            at = plab.group == g
            k1 = log_pi[at] - log_a[at]
            f = c[at] * (expected_group_advantage(p[at], r[at], k, scale=scale) - beta * (k1 - p[at] @ k1))
            log_pi[at] += lr * (f - p[at] @ f)
            log_pi[at] -= np.logaddexp.reduce(log_pi[at])
    return {key: np.array(v) for key, v in out.items()} | {"log_pi": log_pi}


def train_exact(method, policy, plab, steps, lr, ref=None):
    """``steps`` AdamW steps on the method's loss over exact batches of the prompted lab: its expected gradient,
    with no sampling noise. Returns the policy."""
    opt = AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        loss, _ = method.loss(policy, exact_batch(plab, policy, ref=ref if ref is not None else method.ref))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy
