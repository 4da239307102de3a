"""The exact-lab studies of chapter 05 (RLHF), shared by its tests and its notebook.

On the exact lab (``minialign.lab``) every sequence of a tiny vocabulary is enumerated, so every expectation is
a dot product and every expected gradient is one backward pass. Here:

* ``tiny_lab``: a base model a, a policy π_θ near it, the lab and a random reward — the setting of §3–5;
* ``kl_penalty_gradients`` / ``kl_gradient_survey``: the exact expected gradient of each place the KL term can
  go (Eqs. 5.8–5.9, 5.17) against β∇KL(π‖a) and β∇KL(a‖π), over random pairs (π, a) — the table of §5;
* ``kl_gradient_variance`` / ``kl_variance_survey``: the exact variance of each choice's one-sample gradient;
* ``goodhart_curve``: the optimum π*_β (Eq. 5.6) of a misspecified reward as β falls — §8;
* ``dpo_lab``: the lab of DPO's fixed point (Eqs. 5.14–5.15) — §9;
* seed 002 (§11): ``elbo_terms`` (Eq. 5.17) on the worked example ``WORKED_PRIOR``, ``WORKED_LIKELIHOOD``,
  and the sampling layer, ``reparameterised_sample`` (Eq. 5.18) against ``seed002_sample``.
"""
from __future__ import annotations

import numpy as np

from ..lab import ExactLab, autograd_of, exact_grad, fdiv_to_target, lab_model
from ..trainers.common import Batch, exact_batch
from ..trainers.policy_gradient import token_kl_terms, weighted_sum
from ..trainers.rlhf import KL_MODES, RLHF, RLHFOptions, kl_control_optimum

# the rows of §5's table: the trainer's KL modes, and the analytic per-token KL in the loss alone (full_token
# without its score-function part), to show what that part is for
ANALYTIC_IN_LOSS = "full_token_loss_only"
TABLE_ROWS = KL_MODES + (ANALYTIC_IN_LOSS,)

# the two settings of the chapter's KL-gradient table: sequences of up to three letters, and one categorical step
SEQUENCES = dict(vocab_size=3, block_size=4)
ONE_STEP = dict(vocab_size=5, block_size=2)
SURVEY_SEEDS = range(10)

# the worked example of §11 (seed 002): three latent values, one observation x
WORKED_PRIOR = np.array([0.5, 0.3, 0.2])  # p(z)
WORKED_LIKELIHOOD = np.array([0.1, 0.6, 0.3])  # p(x | z) for the observed x


# ------------------------------------------------------------------------------ the lab
def tiny_lab(seed=0, vocab_size=3, block_size=4, beta=0.5, scale=1.0):
    """A base model a (``lab_model``), a policy π_θ: a copy of a moved by 0.3·N(0, 1) on every weight (so that
    every term of a gradient is alive), the exact lab of a, and a reward r ~ N(0, 2²) per enumerated sequence.

    Returns (a, π_θ, lab, r, β).
    """
    a = lab_model(seed, vocab_size=vocab_size, block_size=block_size, scale=scale)
    policy = lab_model(seed, vocab_size=vocab_size, block_size=block_size, scale=scale)
    rng = np.random.default_rng(seed + 7)
    for p in policy.parameters():
        p.data = p.data + 0.3 * rng.standard_normal(p.shape)
    lab = ExactLab.for_model(a)
    rewards = rng.normal(size=len(lab)) * 2.0
    return a, policy, lab, rewards, beta


# ------------------------------------------------------------------------------ where the KL term goes (§5)
def kl_penalty_gradients(lab, a, policy, beta):
    """The exact expected gradient of each KL choice of ``RLHF`` (reward 0): k1 in the reward per sequence or
    per token (Eq. 5.8), k2 or k3 per token in the loss (Eq. 5.9), the analytic per-token KL with its
    score-function part (full_token, Eq. 5.11) and without it (β Σ_t KL_t in the loss alone), each on an
    exact batch.

    Returns ({row: gradient}, β∇KL(π‖a), β∇KL(a‖π)), the last two by autograd through the enumeration.
    """
    batch = exact_batch(lab, policy, ref=a)
    log_a = np.log(lab.distribution(a))
    reverse = beta * autograd_of(policy, lambda: fdiv_to_target("kl", lab.log_probs(policy), log_a))
    forward = beta * autograd_of(policy, lambda: fdiv_to_target("reverse_kl", lab.log_probs(policy), log_a))
    grads = {kl: exact_grad(_kl_only(a, beta, kl), policy, batch) for kl in KL_MODES}
    grads[ANALYTIC_IN_LOSS] = autograd_of(policy, lambda: _analytic_kl_in_loss(a, policy, batch, beta))
    return grads, reverse, forward


def _kl_only(a, beta, kl):
    """RLHF with reward 0 and no baseline: its gradient is the KL term's alone."""
    return RLHF(a, lambda batch: np.zeros(len(batch)), RLHFOptions(beta=beta, kl=kl, algo="reinforce"))


def _analytic_kl_in_loss(a, policy, batch, beta):
    """β Σ_i w_i Σ_t KL_t(x_i,<t): the analytic per-token KL as a loss term, prefixes not differentiated."""
    return beta * weighted_sum(token_kl_terms(policy, a, batch.tokens)[1].sum(axis=1), batch.weights)


def kl_gradient_variance(lab, a, policy, beta):
    """The exact variance of each KL choice's one-sample gradient estimate (reward 0, no baseline):
    tr Cov = Σ_x π(x) ‖g(x)‖² − ‖Σ_x π(x) g(x)‖², with g(x) the gradient of the loss on the batch {x} alone.
    Returns {mode: trace of the covariance}."""
    p = lab.distribution(policy)
    log_q, log_a = np.log(p), np.log(lab.distribution(a))
    out = {}
    for kl in KL_MODES:
        method = _kl_only(a, beta, kl)
        g = np.array([exact_grad(method, policy, Batch(lab.sequences[i:i + 1], np.ones(1), log_q[i:i + 1],
                                                       log_a[i:i + 1])) for i in range(len(lab))])
        mean = p @ g
        out[kl] = float(p @ np.sum(g * g, axis=1) - mean @ mean)
    return out


def relative_error(g, truth) -> float:
    """‖g − truth‖ / ‖truth‖."""
    return float(np.linalg.norm(g - truth) / np.linalg.norm(truth))


def kl_gradient_table(seed, vocab_size, block_size, scale=0.3):
    """Relative error of each KL choice's exact expected gradient against β∇KL(π‖a) and
    against β∇KL(a‖π), on one random pair (π, a) of tiny GPTs. Returns {mode: (error against ∇KL(π‖a), error
    against ∇KL(a‖π))}.

    scale 0.3 keeps the models stochastic at every step (entropies of 0.3–2.3 nats over the enumeration);
    with larger weights many random GPTs are nearly deterministic after the first token, and a sequence
    then behaves like one categorical step."""
    a, policy, lab, _, beta = tiny_lab(seed, vocab_size=vocab_size, block_size=block_size, scale=scale)
    grads, truth, forward = kl_penalty_gradients(lab, a, policy, beta)
    return {k: (relative_error(g, truth), relative_error(g, forward)) for k, g in grads.items()}


def kl_gradient_survey(setting, seeds=SURVEY_SEEDS):
    """{row: array [len(seeds), 2]} of (reverse, forward) relative errors over random pairs (π, a);
    ``setting`` is ``SEQUENCES`` or ``ONE_STEP`` (the lab's vocabulary size and horizon)."""
    tables = [kl_gradient_table(s, **setting) for s in seeds]
    return {k: np.array([t[k] for t in tables]) for k in TABLE_ROWS}


def kl_variance_survey(setting, seeds=SURVEY_SEEDS, scale=0.3):
    """{mode: array [len(seeds)]} of each KL choice's one-sample gradient variance divided by k1_seq's, over
    the random pairs of :func:`kl_gradient_survey`."""
    ratios = []
    for seed in seeds:
        a, policy, lab, _, beta = tiny_lab(seed, scale=scale, **setting)
        var = kl_gradient_variance(lab, a, policy, beta)
        ratios.append({k: v / var["k1_seq"] for k, v in var.items()})
    return {k: np.array([r[k] for r in ratios]) for k in KL_MODES}


# ------------------------------------------------------------------------------ over-optimisation (§8)
def goodhart_curve(betas, seed=3, bump=1.6):
    """A proxy reward r̂ = r + error, wrong by +bump on the one sequence whose true reward is lowest among
    the longest ones; for each β the optimum π*_β of the proxy (Eq. 5.6), exactly.

    Returns ([(β, E_{π*_β}[r̂], E_{π*_β}[r], KL(π*_β‖a)) for each β], max_x r(x)).
    """
    a, _, lab, _, _ = tiny_lab(seed, scale=0.3)  # a base model that explores
    log_a = np.log(lab.distribution(a))
    r = 1.0 * (lab.sequences[:, 0] == 1) - 0.5 * np.abs(lab.lengths - 2)  # a taste on the lab
    proxy = r.copy()
    longest = np.flatnonzero(lab.lengths == lab.lengths.max())
    proxy[longest[np.argmin(r[longest])]] += bump
    rows = []
    for beta in betas:
        log_star, _ = kl_control_optimum(log_a, proxy, beta)
        p = np.exp(log_star)
        rows.append((beta, float(p @ proxy), float(p @ r), lab.divergence("kl", p, np.exp(log_a))))
    return rows, float(r.max())


# ------------------------------------------------------------------------------ DPO (§9)
def dpo_lab(seed=0, beta=0.5):
    """The lab of DPO's fixed point (Eqs. 5.14–5.15): a base model a (weights scale 0.5), its exact lab, and a
    reward r ~ N(0, 1) per enumerated sequence. Returns (a, lab, r, β)."""
    a = lab_model(seed, vocab_size=3, block_size=4, scale=0.5)
    lab = ExactLab.for_model(a)
    r = np.random.default_rng(seed + 1).normal(size=len(lab))
    return a, lab, r, beta


# ------------------------------------------------------------------------------ seed 002: the ELBO (§11)
def elbo_terms(log_prior, log_likelihood, q):
    """One observation x of a discrete latent-variable model p(z) p(x|z), and an encoder distribution q(z|x).

    Returns (log p(x), E_q[log p(x|z)], KL(q‖p(z)), KL(q‖p(z|x))), with Eq. (5.17):
    log p(x) = E_q[log p(x|z)] − KL(q‖p(z)) + KL(q‖p(z|x)).
    """
    log_prior, log_likelihood, q = (np.asarray(v, dtype=np.float64) for v in (log_prior, log_likelihood, q))
    log_joint = log_prior + log_likelihood
    log_px = np.logaddexp.reduce(log_joint)
    log_post = log_joint - log_px
    on = q > 0
    recon = float(np.sum(q[on] * log_likelihood[on]))
    kl_prior = float(np.sum(q[on] * (np.log(q[on]) - log_prior[on])))
    kl_post = float(np.sum(q[on] * (np.log(q[on]) - log_post[on])))
    return float(log_px), recon, kl_prior, kl_post


def reparameterised_sample(mu, log_sigma, eps):
    """Eq. (5.18): z = μ + σ·ε with σ = e^{log σ} and ε ~ N(0, 1): z ~ N(μ, σ²), differentiable in μ and log σ."""
    return mu + log_sigma.exp() * eps


def seed002_sample(mu, log_sigma, eps):
    """Seed 002's sampling layer, ``z = z_log_sigma + noise``: z ~ N(log σ, 1), and μ is never used."""
    return log_sigma + eps
