"""Chapter 07 (f-DPG): the checks the chapter needs beyond the unification tests of ``test_trainers_exact.py``.

* the pseudo-reward R = −f'(t) of every member, against a central difference of a generator written out
  here by hand (not the library's), and the closed forms of chapter 07's Eq. (7.5) as identities on arrays;
* the special cases: f = kl with P = a·e^{r/β} gives the KL-control reward over β plus a constant; f =
  reverse_kl gives DPG's weight P/(Zq), and with the constant baseline 1 GDC++'s (P/Z − π)/q;
* off-policy f-DPG: its exact expectation under any proposal q is the on-policy gradient;
* the trainer's baseline (the batch mean, the sample's own reward included) scales the on-policy
  expectation by (n − 1)/n, and off-policy shrinks and tilts it, measured exactly over every batch of two;
* the KL-adaptive proposal's estimates, and a run of f-DPG (js) with it;
* the divergence study's first step (7.12)–(7.13): on the constraint target every f has the same first
  gradient direction and Adam takes the same first step; the study's learning rate makes the first step a
  descent where one is possible; where a hides a mode, the first step moves away for reasons that are not
  the optimiser's; with exact gradients KL(p‖π) never gives up the neglected mode;
* seed 000, §3–4: its objective (two θ-dependent distributions, no fixed target) and its derivative used as
  a pseudo-reward, next to the right ones.
"""
import itertools
import re

import numpy as np
import pytest
from helpers import assert_close, assert_equal, assert_near, central_difference, close, rlhf_target

from minialign import divergences as D
from minialign.experiments.rlhf_lab import tiny_lab
from minialign.lab import ExactLab, autograd_of, exact_grad, fdiv_to_target, lab_fn, lab_model, score_function_gradient
from minialign.tensor import Tensor
from minialign.trainers.common import Batch, exact_batch, trainable_copy
from minialign.trainers.fdpg import FDPG, FDPGOptions
from minialign.trainers.gdc import DPG

# Generators written out from the table of chapter 03 (Eq. 3.2), independently of minialign/divergences.py.
HAND = {
    "kl": lambda t: t * np.log(t),
    "reverse_kl": lambda t: -np.log(t),
    "js": lambda t: 0.5 * (t * np.log(t) - (1 + t) * np.log((1 + t) / 2)),
    "tv": lambda t: 0.5 * np.abs(t - 1),
    "hellinger": lambda t: 0.5 * (np.sqrt(t) - 1) ** 2,
    "chi2": lambda t: (t - 1) ** 2,
    "alpha:0.5": lambda t: (t**0.5 - 0.5 * t - 0.5) / (0.5 * -0.5),
    "alpha:-1": lambda t: (t**-1.0 + t - 2.0) / 2.0,
}


def pseudo_reward(f, log_pi, log_P, log_z):
    """The trainer's pseudo-reward, called as the trainer calls it."""
    return FDPG(None, None, None, FDPGOptions(f=f, proposal="policy", log_z=log_z)).pseudo_reward(log_pi, log_P, log_z)


def random_logs(rng, n=400, spread=3.0):
    """log π (normalised), unnormalised log P and its log Z, with t = Zπ/P spread over e^{±several}."""
    log_pi = rng.normal(size=n) * spread
    log_pi -= np.logaddexp.reduce(log_pi)
    log_P = rng.normal(size=n) * spread + 5.0  # an arbitrary scale: only P/Z matters
    log_z = float(np.logaddexp.reduce(log_P))
    return log_pi, log_P, log_z


# ------------------------------------------------------------------------------ Eq. (7.3), (7.5): pseudo-rewards
@pytest.mark.task7_1
@pytest.mark.parametrize("f", list(HAND))
def test_pseudo_reward_is_minus_f_prime_by_central_differences(f):
    """R(x) = −f'(t) with t = Z π(x)/P(x): the trainer's value against a central difference of the generator
    written out by hand. The step h = 1e-5·t has truncation error ~1e-10 relative; rounding adds about
    ε·|f(t)|/h, which dominates where f(t) is large next to h (small t with f(0) ≠ 0, as for chi2), so the
    tolerance is 1e-6 relative plus 100·ε·(|f(t)| + 1)/h. TV's kink at t = 1 is avoided."""
    rng = np.random.default_rng(0)
    log_pi, log_P, log_z = random_logs(rng)
    log_t = log_pi - log_P + log_z
    keep = np.abs(log_t) > 1e-3
    t = np.exp(log_t[keep])
    h = 1e-5 * t
    numeric = (HAND[f](t + h) - HAND[f](t - h)) / (2 * h)
    r = pseudo_reward(f, log_pi[keep], log_P[keep], log_z)
    allowed = 1e-6 * np.abs(numeric) + 100 * np.finfo(float).eps * (np.abs(HAND[f](t)) + 1) / h
    assert (np.abs(r + numeric) <= allowed).all(), np.max(np.abs(r + numeric) / allowed)
    assert np.ptp(log_t) > 6  # the ratios really are spread out (not all near t = 1)


@pytest.mark.task7_1
def test_pseudo_rewards_match_the_closed_forms_of_each_member():
    """Eq. (7.5): the special forms of chapter 07, §3 as identities on arrays (t = Zπ/P)."""
    rng = np.random.default_rng(1)
    log_pi, log_P, log_z = random_logs(rng)
    t = np.exp(log_pi - log_P + log_z)
    forms = {
        "kl": log_P - log_pi - log_z - 1.0,  # KL(π‖p): log p − log π − 1
        "reverse_kl": np.exp(log_P - log_z - log_pi),  # KL(p‖π): P/(Zπ)
        "js": -0.5 * np.log(2 * t / (1 + t)),
        "tv": -0.5 * np.sign(t - 1),
        "alpha:0.5": -(t**-0.5 - 1) / (0.5 - 1),
    }
    for f, expected in forms.items():
        np.testing.assert_allclose(pseudo_reward(f, log_pi, log_P, log_z), expected, rtol=1e-12, atol=1e-12, err_msg=f)


@pytest.mark.task7_1
def test_pseudo_reward_ranges_bounded_and_unbounded():
    """TV's pseudo-reward is ±½, JS's is bounded below by −½ log 2 (as t → ∞) and grows like −½ log t as
    t → 0; reverse_kl's is positive; kl's is unbounded both ways, and −∞ where the target has no mass."""
    log_t = np.linspace(-40, 40, 801)
    zeros = np.zeros_like(log_t)
    r = {f: pseudo_reward(f, log_t, zeros, 0.0) for f in ("kl", "reverse_kl", "js", "tv")}
    assert set(np.unique(r["tv"])) == {-0.5, 0.0, 0.5}
    assert -0.5 * np.log(2) - 1e-15 <= r["js"].min() < -0.5 * np.log(2) + 1e-12
    assert_close(r["js"][0], 20.0 + 0.5 * np.log(0.5), rtol=1e-10)  # −½ log(2t/(1+t)) at t = e^{−40}
    assert (r["reverse_kl"] > 0).all() and r["reverse_kl"].max() > 1e17
    assert r["kl"].min() < -40 and r["kl"].max() > 38
    # zero target mass: kl's pseudo-reward is −∞ (the trainer refuses it unless log t is capped) ...
    with pytest.raises(ValueError):  # its message must name the count: see the test of log_t_max below
        pseudo_reward("kl", np.array([-1.0]), np.array([-np.inf]), 0.0)
    capped_fdpg = FDPG(None, None, None, FDPGOptions(f="kl", log_z=0.0, log_t_max=20.0))
    capped = capped_fdpg.pseudo_reward(np.array([-1.0]), np.array([-np.inf]), 0.0)
    assert_close(capped, -21.0, rtol=1e-7)
    # ... while the bounded members take the limit −lim f'(t)
    for f, limit in (("js", -0.5 * np.log(2)), ("tv", -0.5), ("reverse_kl", 0.0)):
        assert_close(pseudo_reward(f, np.array([-1.0]), np.array([-np.inf]), 0.0), limit, atol=1e-15, rtol=1e-7)


# ------------------------------------------------------------------------------ Eq. (7.6)–(7.8): RLHF and DPG
@pytest.mark.task7_1
def test_kl_pseudo_reward_is_the_kl_control_reward_over_beta_plus_a_constant():
    """Eq. (7.6): f = kl, log P = log a + r/β: R = (r − β log(π/a))/β − log Z − 1, sample by sample."""
    rng = np.random.default_rng(2)
    n, beta = 300, 0.3
    log_a = rng.normal(size=n) * 2
    log_pi = rng.normal(size=n) * 2
    r = rng.normal(size=n)
    log_P = log_a + r / beta
    log_z = float(np.logaddexp.reduce(log_P))
    R = pseudo_reward("kl", log_pi, log_P, log_z)
    rlhf = r - beta * (log_pi - log_a)  # the KL-control reward with the sequence-level k1 penalty
    assert_close(R, rlhf / beta - log_z - 1.0, rtol=1e-12, atol=1e-12)
    assert np.ptp(R - rlhf) > 1.0  # without the 1/β the two differ by more than a constant


def test_kl_divergence_to_the_tilted_target_is_the_negated_objective_over_beta():
    """Eq. (7.7): KL(π‖π*) = log Z − J(π)/β for every π on the lab, so min KL(π‖π*) = max J."""
    from minialign.trainers.rlhf import kl_control_objective

    a, policy, lab, r, beta = tiny_lab(12)
    _, log_p, log_z = rlhf_target(lab, a, r, beta)
    p_a = lab.distribution(a)
    rng = np.random.default_rng(3)
    for pi in [lab.distribution(policy), p_a] + [rng.dirichlet(np.ones(len(lab))) for _ in range(5)]:
        kl = lab.divergence("kl", pi, np.exp(log_p))
        np.testing.assert_allclose(kl, log_z - kl_control_objective(pi, p_a, r, beta) / beta, rtol=1e-10, atol=1e-12)


@pytest.mark.task6_3
def test_gdcpp_is_fdpg_reverse_kl_with_the_constant_baseline_one():
    """Eq. (7.9): (π/q)·(P/(Zπ) − 1) = (P/Z − π)/q, GDC++'s weight (Korbak et al. 2022), sample by sample,
    on samples from a proposal q ≠ π."""
    a, policy, lab, r, _ = tiny_lab(13)
    log_scores = np.log(lab.distribution(a)) + 1.2 * (lab.sequences[:, 0] == 1)
    _, log_z = lab.normalise(log_scores)
    target = lab_fn(lab, log_scores)
    q = lab_model(99, vocab_size=3, block_size=4, scale=0.3)
    from minialign.trainers.common import sample_batch

    batch = sample_batch(q, 128, np.random.default_rng(0), ref=a)
    assert len(np.unique(lab.index_of(batch.tokens))) >= 5  # a batch with several distinct sequences
    fd = FDPG(a, policy, target, FDPGOptions(f="reverse_kl", proposal="fixed", baseline=False, log_z=log_z))
    s, c_f, R = fd.coefficients(policy, batch)
    logp_pi = s.logp_pi
    rho = np.exp(logp_pi - batch.log_q)
    _, c_dpg = DPG(a, policy, target, proposal="fixed", baseline=False, log_z=log_z).coefficients(policy, batch)
    _, c_pp = DPG(a, policy, target, proposal="fixed", baseline=True, log_z=log_z).coefficients(policy, batch)
    assert_close(c_f, c_dpg, rtol=1e-10)  # DPG: P/(Zq)
    assert_close(batch.weights * rho * (R - 1.0), c_pp, rtol=1e-9, atol=1e-14)  # GDC++
    assert np.abs(c_pp - c_dpg).max() > 0.1 * np.abs(c_dpg).max()  # the baseline is no rounding-level change


# ------------------------------------------------------------------------------ Eq. (7.4): off-policy and the baseline
@pytest.mark.task7_2
@pytest.mark.parametrize("f", ["kl", "reverse_kl", "js", "tv"])
def test_off_policy_fdpg_has_the_on_policy_expectation(f):
    """Eq. (7.4): with samples from a proposal q (here another model), the weights π/q make the exact
    expectation of the estimator the on-policy one, which is ∇D_f(π‖p) — and without them it is not."""
    a, policy, lab, r, beta = tiny_lab(14)
    log_scores, log_p, log_z = rlhf_target(lab, a, r, beta)
    target = lab_fn(lab, log_scores)
    q = lab_model(98, vocab_size=3, block_size=4, scale=0.5)
    method = FDPG(a, policy, target, FDPGOptions(f=f, proposal="fixed", log_z=log_z))
    g_q = exact_grad(method, policy, exact_batch(lab, q, ref=a))
    truth = autograd_of(policy, lambda: fdiv_to_target(f, lab.log_probs(policy), log_p))
    assert_near(g_q, truth)
    # forgetting π/q: the proposal's expectation of R ∇log π, which is another vector
    pi, p_q = lab.distribution(policy), lab.distribution(q)
    R = pseudo_reward(f, np.log(pi), log_scores, log_z)
    wrong = score_function_gradient(policy, lab, -p_q * R)
    wrong = np.concatenate([np.ravel(wrong[n]) for n, _ in policy.named_parameters()])
    assert not close(wrong, truth, rel=0.05)


def expected_update(method, policy, lab, p_sample, n=2):
    """The exact expected coefficient on ∇ log π(x) of the trainer's estimate over every batch of n samples
    drawn from p_sample, turned into a gradient."""
    w = np.zeros(len(lab))
    for idx in itertools.product(range(len(lab)), repeat=n):
        idx = np.array(idx)
        batch = Batch(lab.sequences[idx], np.full(n, 1.0 / n), np.log(p_sample[idx]), np.zeros(n))
        _, coef, _ = method.coefficients(policy, batch)
        np.add.at(w, idx, np.prod(p_sample[idx]) * coef)
    g = score_function_gradient(policy, lab, -w)
    return np.concatenate([np.ravel(g[k]) for k, _ in policy.named_parameters()])


@pytest.mark.task7_3
def test_leave_one_out_baseline_keeps_the_on_policy_expectation():
    """The trainer's baseline for sample i is the mean of the other samples' pseudo-rewards, which does not
    depend on x_i: over every batch of n = 2 sequences, weighted by its exact probability, the expected
    update is exactly ∇D_f (a mean including the sample's own R would give (1 − 1/n)∇D_f)."""
    a, policy, lab, r, beta = tiny_lab(15)
    log_scores, log_p, log_z = rlhf_target(lab, a, r, beta)
    options = FDPGOptions(f="js", proposal="policy", baseline=True, log_z=log_z)
    method = FDPG(a, policy, lab_fn(lab, log_scores), options)
    g = expected_update(method, policy, lab, lab.distribution(policy))
    truth = autograd_of(policy, lambda: fdiv_to_target("js", lab.log_probs(policy), log_p))
    assert_near(g, truth, rel=1e-8)


# ------------------------------------------------------------------------------ seed 000, §3–4
def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _jacobian(z):
    s = _softmax(z)
    return np.diag(s) - np.outer(s, s)


@pytest.mark.parametrize("f", ["kl", "reverse_kl", "js", "hellinger"])
def test_the_gradient_identity_needs_a_fixed_target(f):
    """Seed 000 (§3.1, §4.1) minimises D(π₁(θ)‖π₂(θ)) with both distributions depending on θ. Then
    E_{π₁}[f'(π₁/π₂)∇log π₁] — f-DPG's estimator, Eq. (7.2) — misses the ∂/∂π₂ term: finite differences
    disagree with it by more than 1e-2. With π₂ fixed (f-DPG's setting) the two agree to 1e-6."""
    rng = np.random.default_rng(4)
    theta = rng.normal(size=6)
    A = rng.normal(size=(6, 6))
    p_fixed = rng.dirichlet(np.ones(6))

    def div(th, moving):
        p1 = _softmax(th)
        p2 = _softmax(A @ th) if moving else p_fixed
        return float(D.divergence(f, p1, p2))

    fd = D.get(f)
    for moving in (False, True):
        p1 = _softmax(theta)
        p2 = _softmax(A @ theta) if moving else p_fixed
        identity = (p1 * fd.f_prime(p1 / p2)) @ (np.eye(6) - p1[None, :])  # Σ_x π₁ f' ∇_θ log π₁(x)
        numeric = central_difference(lambda th: div(th, moving), theta)
        if moving:
            assert np.abs(identity - numeric).max() > 1e-2
            d1, d2 = D.partial_derivatives(f, p1, p2)  # Eq. (3.5): both partials, chained
            np.testing.assert_allclose(d1 @ _jacobian(theta) + d2 @ (_jacobian(A @ theta) @ A), numeric,
                                       rtol=1e-6, atol=1e-8)
        else:
            np.testing.assert_allclose(identity, numeric, rtol=1e-6, atol=1e-8)


def test_seed000_objective_is_minimised_by_a_model_that_prefers_nothing():
    """With both sides functions of θ and no target, D(π₁(θ)‖π₂(θ)) reaches its minimum 0 at θ = 0 for
    every coupling A and every f: the uniform model, which encodes no reward and no constraint. The f-DPG
    objective against a fixed target is positive there."""
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.ones(6))
    for _ in range(5):
        A = rng.normal(size=(6, 6))
        theta = np.zeros(6)
        for f in ("kl", "js", "tv"):
            assert abs(D.divergence(f, _softmax(theta), _softmax(A @ theta))) < 1e-15
            assert D.divergence(f, _softmax(theta), p) > 1e-3


def test_seed000_derivative_as_a_pseudo_reward_trains_the_other_kl():
    """Seed 000 (§4.2) gives ∂/∂π₁ Σπ₁log(π₁/π₂) = 1 − π₂/π₁. Used as f' in the gradient identity with π₁ = π_θ
    and π₂ = p, it gives Σ_x (π − p)∇log π = ∇KL(p‖π): the gradient of KL(p‖π) (DPG), not of the
    KL(π‖p) the seed writes down. The correct derivative log(π/p) + 1 gives ∇KL(π‖p)."""
    model = lab_model(16, vocab_size=3, block_size=4, scale=1.0)
    lab = ExactLab.for_model(model)
    log_p, _ = lab.normalise(np.random.default_rng(16).normal(size=len(lab)) * 2)
    p, pi = np.exp(log_p), lab.distribution(model)

    def flat(g):
        return np.concatenate([np.ravel(g[n]) for n, _ in model.named_parameters()])

    seed = flat(score_function_gradient(model, lab, pi * (1 - p / pi)))
    right = flat(score_function_gradient(model, lab, pi * (np.log(pi / p) + 1)))
    grad_kl = autograd_of(model, lambda: fdiv_to_target("kl", lab.log_probs(model), log_p))  # ∇KL(π‖p)
    grad_fwd = autograd_of(model, lambda: fdiv_to_target("reverse_kl", lab.log_probs(model), log_p))  # ∇KL(p‖π)
    assert_near(right, grad_kl, what="the gradient of Eq. (4.7)'s rule")
    assert_near(seed, grad_fwd, what="the seed's gradient")
    assert not close(seed, grad_kl, rel=0.1)


# ------------------------------------------------------------------------------ Eq. (7.11): the KL-adaptive proposal
@pytest.mark.task6_4
def test_kl_adaptive_proposal_estimates_are_exact_on_exact_batches_and_replace_q_as_pi_improves():
    """Eq. (7.11) for an f other than GDC's: the importance-sampling estimates of KL(p‖π) and KL(p‖q) that
    decide q ← π are exact on an exact batch drawn from q; and f-DPG with f = js, sampling from the adaptive
    proposal, takes the lab's reward target from KL(p‖a) = 2.74 nats to below 0.05 in 80 steps of 32
    (measured: 0.008; the threshold is the study's), replacing q along the way."""
    from minialign.experiments import fdpg_study as E
    from minialign.trainers.common import TrainConfig, frozen_copy, train

    a = E.lab_base(0)
    lab = ExactLab.for_model(a)
    log_a = np.log(lab.distribution(a))
    log_scores, _ = E.lab_targets(lab, log_a)["reward"]
    log_p, log_z = lab.normalise(log_scores)
    target = lab_fn(lab, log_scores)
    policy = frozen_copy(a)
    for p in policy.parameters():
        p.requires_grad = True
        p.data = p.data + 0.05 * np.random.default_rng(0).standard_normal(p.shape)
    method = FDPG(a, policy, target, FDPGOptions(f="js", proposal="adaptive", log_z=log_z))
    batch = exact_batch(lab, method.q, ref=a)  # q = a frozen copy of the initial π
    metrics = {}
    scored, _, _ = method.coefficients(policy, batch)
    method.adapt(policy, batch, scored, metrics)
    p, pi, q = np.exp(log_p), lab.distribution(policy), lab.distribution(method.q)
    assert_close(metrics["kl_p_pi_est"], lab.divergence("kl", p, pi), rtol=1e-9)
    assert_close(metrics["kl_p_q_est"], lab.divergence("kl", p, q), rtol=1e-9)
    assert method.replacements == 0  # exact batches never replace q

    policy = frozen_copy(a)
    for p_ in policy.parameters():
        p_.requires_grad = True
    method = FDPG(a, policy, target, FDPGOptions(f="js", proposal="adaptive"))  # Z estimated as it goes
    start = lab.divergence("kl", p, lab.distribution(policy))
    hist = train(method, policy, TrainConfig(steps=80, batch_size=32, lr=1e-2, seed=0), progress=False)
    end = lab.divergence("kl", p, lab.distribution(policy))
    assert start > 2.0 and end < 0.05, (start, end)
    assert hist["replacements"][-1] > 0


@pytest.mark.task7_3
def test_leave_one_out_baseline_keeps_the_off_policy_expectation():
    """Off-policy (batches of two from an unrelated proposal q, weights ρ = π/q), the leave-one-out baseline
    still leaves the expected update equal to ∇D_js exactly. The self-inclusive weighted mean Σρ_jR_j/Σρ_j
    would not: computed on the same batches, it gives a small multiple of ∇D_js plus a component off its
    direction."""
    a, policy, lab, r, beta = tiny_lab(15)
    log_scores, log_p, log_z = rlhf_target(lab, a, r, beta)
    p_q = lab.distribution(lab_model(98, vocab_size=3, block_size=4, scale=0.5))
    target = lab_fn(lab, log_scores)
    truth = autograd_of(policy, lambda: fdiv_to_target("js", lab.log_probs(policy), log_p))
    method = FDPG(a, policy, target, FDPGOptions(f="js", proposal="fixed", baseline=True, log_z=log_z))
    assert_near(expected_update(method, policy, lab, p_q), truth, rel=1e-8, what="expected update")

    class SelfInclusive(FDPG):
        def pseudo_reward(self, logp_pi, log_p, log_z):
            reward = super().pseudo_reward(logp_pi, log_p, log_z)
            rho = np.exp(logp_pi - self._log_q)
            return reward - np.sum(rho * reward) / np.sum(rho) + reward * 0  # the baseline the trainer must avoid

        def coefficients(self, policy, batch):
            self._log_q = batch.log_q
            self.baseline = False
            return super().coefficients(policy, batch)

    biased = SelfInclusive(a, policy, target, FDPGOptions(f="js", proposal="fixed", log_z=log_z))
    g = expected_update(biased, policy, lab, p_q)
    scale = g @ truth / (truth @ truth)
    off = np.linalg.norm(g - scale * truth) / np.linalg.norm(scale * truth)
    assert 0 < scale < 0.5 and off > 0.05, (scale, off)


# ---------------------------------------------------------------------------- Eq. (7.12)–(7.13): the study's first step
def _study():
    from minialign.experiments import fdpg_study as E

    return E


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_on_the_constraint_target_every_f_has_the_same_first_gradient_direction(seed):
    """Eq. (7.12): at π = a, t = π/p takes two values on the constraint target (a(B) on B, the cap e^20 off
    it), so the exact ∇D_f is (f'(a(B)) − f'(e^20))·∇π(B) — the same vector times a positive factor for
    every f — and the first batch's estimate is parallel across the f too (the leave-one-out baseline keeps
    the two-value structure). Checked as values against autograd of π(B), not just as directions."""
    E = _study()
    pr = E.lab_problem(seed, "constraint")
    mask = pr.modes["starts with 2"]
    policy = trainable_copy(pr.a)
    (pr.lab.log_probs(policy).exp() * Tensor(mask.astype(np.float64))).sum().backward()
    grad_mass = np.concatenate([np.ravel(p.grad) for p in policy.parameters()])
    policy.zero_grad()
    a_b = float(pr.p_a[mask].sum())
    batch = exact_batch(pr.lab, policy, ref=pr.a)
    for f in E.STUDY_FS:
        fd = D.get(f)
        factor = float(fd.f_prime_log(np.log(a_b)) - fd.f_prime_log(E.LOG_T_MAX))
        assert factor < 0  # f' increases: descending ∇D_f raises π(B) for every f
        g = exact_grad(E.make_method(pr, policy, f, "exact"), policy, batch)
        np.testing.assert_allclose(g, factor * grad_mass, rtol=1e-7, atol=1e-10 * np.abs(factor * grad_mass).max())
    geo = E.first_step_geometry(pr)
    assert geo["t_values"] == 2 and geo["t_values_batch"] == 2
    assert geo["min_cos_exact"] > 1 - 1e-9 and geo["min_cos_sampled"] > 1 - 1e-9, geo


def test_adams_first_step_is_the_same_for_parallel_gradients_and_not_otherwise():
    """Eq. (7.13): Adam's first update is lr·g/(|g| + ε) per parameter — lr·sign(g) wherever |g| ≫ ε — so
    gradients that differ by a positive factor give the same step. Measured through the shared loop at the
    study's learning rate: on the constraint target the four members' first steps agree to 1e-3 relative
    (they differ only where |g| is near ε = 1e-8) and almost every coordinate moves by exactly lr; on the
    reward target, where the gradients are not parallel, they differ by more than 30%."""
    E = _study()
    pr = E.lab_problem(0, "constraint")
    steps = {f: E.first_step(pr, f, "sampled", E.LR)["step"] for f in E.STUDY_FS}
    for f in E.STUDY_FS:
        assert np.linalg.norm(steps[f] - steps["js"]) < 1e-3 * np.linalg.norm(steps["js"]), f
        assert np.mean(np.isclose(np.abs(steps[f]), E.LR, rtol=1e-3)) > 0.95
    assert E.first_step_geometry(E.lab_problem(0, "reward"))["adam_step_spread"] > 0.3


def test_at_the_studys_learning_rate_the_first_step_lowers_kl_p_pi_for_every_f_and_at_1e_2_it_does_not():
    """Chapter 07 §8: with the study's AdamW step (1e-3) the first update lowers KL(p‖π) for every f, in both
    arms, on every target of seed 0 — and lowers each f's own D_f in the exact arm; at the old 1e-2 the first
    sampled step on the two-mode target raises KL(p‖π) (1.41 → 3.02), the same for every f."""
    E = _study()
    for target in E.TARGETS:
        pr = E.lab_problem(0, target)
        for arm in E.ARMS:
            for f in E.STUDY_FS:
                r = E.first_step(pr, f, arm, E.LR)
                assert r["kl_after"] < r["kl_before"], (target, arm, f, r["kl_before"], r["kl_after"])
                if arm == "exact" and np.isfinite(r["df_before"]):
                    assert r["df_after"] < r["df_before"], (target, f)
    pr = E.lab_problem(0, "two_modes")
    after = [E.first_step(pr, f, "sampled", 1e-2)["kl_after"] for f in E.STUDY_FS]
    assert min(after) > 2.0 > 1.5 > pr.lab.divergence("kl", pr.p, pr.p_a)
    assert np.ptp(after) < 1e-6 * after[0]


def test_where_a_hides_a_mode_the_first_step_moves_away_for_a_reason_that_is_not_the_optimiser():
    """Chapter 07 §8, two-mode target of seed 2 (a gives the second mode 4·10⁻⁴ of its mass). Sampled: the
    first batch holds no sequence of that mode, so t takes two values on it, the members' estimates are
    parallel and the first step raises KL(p‖π) for every f at the study's learning rate and at a tenth of
    it. Exact: descending KL(π‖p) or JS also raises it at first (cosine with ∇KL(p‖π) below 0), while
    KL(p‖π)'s own gradient lowers it — mode seeking and mass covering in the f's own direction."""
    E = _study()
    pr = E.lab_problem(2, "two_modes")
    geo = E.first_step_geometry(pr)
    assert geo["neglected_in_batch"] == 0 and geo["t_values_batch"] == 2 and geo["min_cos_sampled"] > 1 - 1e-9
    for lr in (E.LR, E.LR / 10):
        for f in E.STUDY_FS:
            r = E.first_step(pr, f, "sampled", lr)
            assert r["kl_after"] > r["kl_before"], (lr, f)
    cos = geo["cos_to_kl_p_pi"]
    assert cos["reverse_kl"] > 1 - 1e-9 and cos["kl"] < -0.3 and cos["js"] < -0.3, cos
    exact = {f: E.first_step(pr, f, "exact", E.LR) for f in ("kl", "reverse_kl", "js")}
    assert exact["reverse_kl"]["kl_after"] < exact["reverse_kl"]["kl_before"]
    assert exact["kl"]["kl_after"] > exact["kl"]["kl_before"] and exact["js"]["kl_after"] > exact["js"]["kl_before"]


def test_with_exact_gradients_kl_p_pi_keeps_the_neglected_mode_and_kl_pi_p_gives_it_up():
    """Chapter 07 §8, exact arm (every step's gradient is ∇D_f itself), two-mode target of seed 0: along
    KL(p‖π)'s path the mass on the mode a under-covers never falls below its value at π = a, while along
    KL(π‖p)'s path it falls more than five-fold before the mode is found (measured over 300 steps: 0.131 →
    0.0115 at step 29; over 300 steps both end up covering it). On the way KL(π‖p)'s model is less diverse
    than the target (entropy 0.60 nats below H(p) at step 39), while KL(p‖π)'s stays above H(p)."""
    E = _study()
    pr = E.lab_problem(0, "two_modes")
    forward = E.run_lab(pr, "reverse_kl", "exact", steps=40)["curve"]
    reverse = E.run_lab(pr, "kl", "exact", steps=40)["curve"]
    start = pr.covered(pr.p_a)
    assert forward["covered"][0] == reverse["covered"][0] == start
    assert min(forward["covered"]) == start and forward["covered"][-1] > 3 * start, forward["covered"][-1]
    assert min(reverse["covered"]) < start / 5, min(reverse["covered"])
    h_p = pr.lab.entropy(pr.p)
    assert min(forward["entropy"]) > h_p and min(reverse["entropy"]) < h_p - 0.5, (h_p, min(reverse["entropy"]))


# ------------------------------------------------------------------------------ the weighted baseline, entry by entry
@pytest.mark.task7_3
def test_weighted_leave_one_out_baseline_entry_by_entry_with_and_without_groups():
    """b_i = Σ_{j≠i} ρ_j v_j / Σ_{j≠i} ρ_j for every i (never the sample's own value, unweighted means or ρ_i):
    checked entry by entry against np.delete, and within groups (a group of one gets 0)."""
    from minialign.trainers.policy_gradient import leave_one_out_weighted_baseline

    v = np.array([1.0, -2.0, 5.0, 0.5, 3.0])
    rho = np.array([0.2, 3.0, 1.0, 0.7, 2.5])
    expected = [np.sum(np.delete(rho * v, i)) / np.sum(np.delete(rho, i)) for i in range(5)]
    assert_close(leave_one_out_weighted_baseline(v, rho), expected, rtol=1e-12, what="weighted baseline")
    group = np.array([1, 0, 1, 0, 2])
    by_group = [v[2], v[3], v[0], v[1], 0.0]  # each of a pair sees only the other; a singleton sees nobody
    assert_close(leave_one_out_weighted_baseline(v, rho, group), by_group, rtol=1e-12,
                 what="weighted baseline in groups")


@pytest.mark.task7_3
def test_others_sum_is_exact_entry_by_entry_even_next_to_a_dominant_value():
    """Σ_{j≠i} v_j by prefix and suffix sums: exact beside a value of 1e20 (a total minus v_i would give 0 or
    garbage), for a single value (0) and for two."""
    from minialign.trainers.policy_gradient import _others_sum

    v = np.array([1e20, 1.0, 2.0, 4.0])
    assert_equal(_others_sum(v), [7.0, 1e20 + 6.0, 1e20 + 5.0, 1e20 + 3.0], what="others' sums")
    assert_equal(_others_sum(np.array([1.0, 2.0, 3.0, 4.0, 5.0])), [14.0, 13.0, 12.0, 11.0, 10.0], what="others' sums")
    assert_equal(_others_sum(np.array([3.0])), [0.0], what="others' sum of one value")
    assert_equal(_others_sum(np.array([3.0, -1.0])), [-1.0, 3.0], what="others' sums of two values")


@pytest.mark.task7_1
def test_log_t_max_caps_only_above_the_cap_entry_by_entry_and_the_refusal_counts_the_samples():
    """With log t = log π − log P + log Z, samples below the cap keep −f'(t) and only those above it (or at P = 0)
    get −f'(e^{log_t_max}); the cap and log Z both enter. Without a cap, f = kl refuses P = 0 naming how many."""
    logp_pi = np.array([-1.0, -2.0, -0.5, -3.0, -1.5])
    log_p = np.array([-4.0, -1.0, -np.inf, -2.0, -1.5])
    log_z = 0.5
    log_t = np.array([3.5, -0.5, np.inf, -0.5, 0.5])
    method = FDPG(None, None, None, FDPGOptions(f="kl", log_z=0.0, log_t_max=1.0))
    expected = -(np.minimum(log_t, 1.0) + 1.0)  # f = t log t: f'(t) = log t + 1
    assert_close(method.pseudo_reward(logp_pi, log_p, log_z), expected, rtol=1e-12,
                 what="kl pseudo-reward with log_t_max = 1")
    uncapped = FDPG(None, None, None, FDPGOptions(f="kl", log_z=0.0))
    finite = np.isfinite(log_p)
    assert_close(uncapped.pseudo_reward(logp_pi[finite], log_p[finite], log_z), -(log_t[finite] + 1.0), rtol=1e-12,
                 what="kl pseudo-reward without a cap")
    with pytest.raises(ValueError) as e:
        uncapped.pseudo_reward(np.array([-1.0, -1.0, -2.0]), np.array([-np.inf, -1.0, -np.inf]), 0.0)
    assert re.search(r"(?<![\d.])2(?![\d.])", str(e.value)), f"the error must name the 2 samples; it says {e.value}"


# ------------------------------------------------------------------------------ Eq. (7.4), entry by entry
class _FreeSequences:
    """A policy stand-in with given log π(x) per row."""

    def __init__(self, logp):
        self.logp = np.asarray(logp, dtype=np.float64)

    def sequence_logprob(self, tokens, prompt_len=None):
        return Tensor(self.logp.copy())


@pytest.mark.task7_2
@pytest.mark.parametrize("group", [None, [0, 1, 0, 1, 1]])
@pytest.mark.parametrize("baseline, exact", [(True, False), (False, False), (True, True)])
def test_fdpg_coefficients_entry_by_entry(baseline, exact, group):
    """(s, w·ρ·(R − b), R − b) with R = −f'(t) (f = js: −½ log(2t/(1+t))), ρ = π/q, and b the weighted
    leave-one-out mean of the other R of the sample's group — subtracted only when the baseline is on and the
    batch is a sample (not exact); a point where the target has no mass is known (Z is) and gets R's limit."""
    logp_pi = np.array([-1.0, -2.0, -0.5, -3.0, -1.5])
    log_q = np.array([-1.2, -1.0, -1.5, -2.0, -1.1])
    log_p = np.array([-2.0, -0.5, -1.0, -np.inf, -1.0])
    w = np.array([0.1, 0.3, 0.2, 0.15, 0.25])
    log_z = 0.4
    batch = Batch(np.zeros((5, 3), dtype=np.int64), w, log_q, np.zeros(5), exact=exact,
                  group=None if group is None else np.array(group))
    method = FDPG(None, None, lambda b: log_p, FDPGOptions(f="js", proposal="policy", baseline=baseline, log_z=log_z))
    s, coef, centred = method.coefficients(_FreeSequences(logp_pi), batch)
    t = np.exp(np.where(np.isfinite(log_p), logp_pi - log_p + log_z, 0.0))
    reward = np.where(np.isfinite(log_p), -0.5 * np.log(2 * t / (1 + t)), -0.5 * np.log(2.0))  # t → ∞ where P = 0
    rho = np.exp(logp_pi - log_q)
    if baseline and not exact:
        ids = np.zeros(5, dtype=int) if group is None else np.array(group)
        b = np.array([np.sum((rho * reward)[(ids == ids[i]) & (np.arange(5) != i)])
                      / np.sum(rho[(ids == ids[i]) & (np.arange(5) != i)]) for i in range(5)])
        reward = reward - b
    assert_close(centred, reward, rtol=1e-12, atol=1e-15, what="R − b")
    assert_close(coef, w * rho * reward, rtol=1e-12, atol=1e-15, what="w·ρ·(R − b)")
    assert_close(s.logp_pi, logp_pi, rtol=0, what="the scored log π")


@pytest.mark.task7_2
def test_fdpg_coefficients_are_zero_on_the_rows_of_a_prompt_whose_normaliser_is_unknown():
    """With prompts each group has its own Z(x); a group whose Z(x) is not known yet carries no signal: its
    coefficients are exactly 0, and the other groups' are w·ρ·(R − b) with b from their own group."""
    class Scripted(FDPG):
        def score(self, policy, batch):
            return self.scored

    from minialign.trainers.proposal import Scored

    logp_pi = np.array([-1.0, -2.0, -0.5, -3.0, -1.5])
    log_q = np.array([-1.2, -1.0, -1.5, -2.0, -1.1])
    log_p = np.array([-2.0, -0.5, -1.0, -1.2, -1.0])
    group = np.array([0, 1, 0, 1, 1])
    rows = np.where(group == 0, 0.4, -np.inf)  # prompt 1's Z(x) is not known yet
    w = np.array([0.1, 0.3, 0.2, 0.15, 0.25])
    batch = Batch(np.zeros((5, 3), dtype=np.int64), w, log_q, np.zeros(5), group=group)
    method = Scripted(None, None, lambda b: log_p, FDPGOptions(f="js", proposal="policy", baseline=True))
    method.scored = Scored(Tensor(logp_pi), logp_pi, log_p, rows)
    _, coef, _ = method.coefficients(None, batch)
    t = np.exp(logp_pi - log_p + 0.4)
    reward, rho = -0.5 * np.log(2 * t / (1 + t)), np.exp(logp_pi - log_q)
    known = group == 0
    b = np.array([reward[2], 0, reward[0], 0, 0])  # a pair in group 0: each one's baseline is the other's R
    assert_close(coef, np.where(known, w * rho * (reward - b), 0.0), rtol=1e-12, atol=1e-15,
                 what="coefficients with one prompt's Z(x) unknown")


@pytest.mark.task7_1
# log π − log P is −inf − (−inf) in the branch np.where discards; numpy warns about it
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_a_point_where_both_the_policy_and_the_target_have_no_mass_gets_the_limit_not_nan():
    """P(x) = 0 gives log t = +inf whatever log π(x) is — also where π(x) = 0 (an off-policy sample)."""
    for f, limit in (("js", -0.5 * np.log(2)), ("tv", -0.5), ("reverse_kl", 0.0)):
        r = FDPG(None, None, None, FDPGOptions(f=f, log_z=0.0)).pseudo_reward(np.array([-np.inf, -1.0]),
                                                                  np.array([-np.inf, -np.inf]), 0.0)
        assert_close(r, [limit, limit], rtol=1e-12, atol=1e-15, what=f"{f}'s pseudo-reward where P = 0")
