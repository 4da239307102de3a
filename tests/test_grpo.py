"""GRPO (chapter 05, §12): group-normalised advantages, their exact expectation, GRPO's gradient against the true
KL-control gradient on the exact lab, and what the division by the group's std makes it optimise."""
import numpy as np
import pytest

from minialign.experiments.conditional_lab import (
    aggregation_gradient,
    conditional_optimum,
    grpo_fixed_point,
    grpo_gradient_survey,
    grpo_gradients,
    length_lab,
    pass_fail_fixed_point,
    pass_fail_update,
    prompted_lab,
    relative_error,
    scaled_error,
    tabular_lengths,
    train_exact,
    trainable,
)
from minialign.lab import autograd_of, exact_grad, flat_grad, lab_fn
from minialign.tensor import Tensor
from minialign.trainers.common import Sampling, TrainConfig, exact_batch, train
from minialign.trainers.grpo import GRPO, GRPOOptions, response_lengths
from minialign.trainers.policy_gradient import expected_group_advantage, group_normalised_advantages


# ------------------------------------------------------------------------------ the advantage (Eqs. 5.22–5.23)
def test_group_normalised_advantages_by_hand():
    """Eq. (5.22): (r − mean)/(std + 1e-4) within each group, std with the k − 1 divisor; equal rewards give 0."""
    r = np.array([1.0, 2.0, 3.0, 5.0, 5.0, 0.0, 4.0])
    g = np.array([0, 0, 0, 1, 1, 2, 2])
    a = group_normalised_advantages(r, g)
    np.testing.assert_allclose(a[:3], np.array([-1.0, 0.0, 1.0]) / (1.0 + 1e-4), rtol=1e-14)
    np.testing.assert_array_equal(a[3:5], 0.0)
    np.testing.assert_allclose(a[5:], np.array([-2.0, 2.0]) / (np.sqrt(8.0) + 1e-4), rtol=1e-14)
    np.testing.assert_allclose(group_normalised_advantages(r, g, scale=False), [-1, 0, 1, 0, 0, -2, 2])
    with pytest.raises(ValueError, match="at least 2 responses per prompt"):
        group_normalised_advantages(r, np.array([0, 0, 0, 1, 1, 2, 3]))


@pytest.mark.parametrize("k", [2, 3, 5])
def test_expected_group_advantage_matches_monte_carlo(k):
    """Eq. (5.23): ā(y) = E[A_1 | y_1 = y], by enumerating the other k − 1 responses, against 40 000 simulated
    groups per response (each estimate within 5 of its standard errors)."""
    rng = np.random.default_rng(k)
    p, r = rng.dirichlet(np.ones(5)), rng.normal(size=5)
    exact = expected_group_advantage(p, r, k)
    for y in range(5):
        others = r[rng.choice(5, size=(40_000, k - 1), p=p)]
        vals = np.concatenate([np.full((40_000, 1), r[y]), others], axis=1)
        a = (vals[:, 0] - vals.mean(axis=1)) / (vals.std(axis=1, ddof=1) + 1e-4)
        assert abs(a.mean() - exact[y]) < 5 * a.std() / np.sqrt(len(a)) + 1e-12, (y, a.mean(), exact[y])


def test_without_the_std_the_expected_advantage_is_the_centred_reward_times_k_minus_one_over_k():
    """The group mean contains r_i itself: r_i − mean = (k−1)/k·(r_i − mean of the others), so
    ā(y) = (k−1)/k·(r(y) − E r) exactly."""
    rng = np.random.default_rng(0)
    p, r = rng.dirichlet(np.ones(6)), rng.normal(size=6)
    for k in (2, 4, 7):
        np.testing.assert_allclose(expected_group_advantage(p, r, k, scale=False), (k - 1) / k * (r - p @ r),
                                   atol=1e-14)
    with pytest.raises(ValueError, match="at least 2"):
        expected_group_advantage(p, r, 1)


def test_grpo_exact_batch_gradient_is_the_expectation_of_its_monte_carlo_gradient():
    """The loss on an exact batch of the prompted lab (advantages of Eq. 5.23, k3 in the loss) has as gradient the
    mean of GRPO's gradient over sampled batches of groups: 400 batches of 16 groups of 4, every coordinate within 5
    standard errors (and the two vectors within 5% of each other)."""
    a, policy, plab, r, beta = prompted_lab(1, block_size=4)
    method = GRPO(a, lab_fn(plab, r), GRPOOptions(beta=beta), Sampling(plab.prompts, 4))
    assert_exact_batch_is_the_mean_of_sampled_ones(method, policy, plab, a, batches=400, seed=1, within=0.05)


def assert_exact_batch_is_the_mean_of_sampled_ones(method, policy, plab, a, batches, seed, within):
    """The gradient on the exact batch equals the mean gradient of ``batches`` sampled batches of 16 groups of 4:
    every coordinate within 5 standard errors, and the two vectors within ``within`` of each other."""
    exact = exact_grad(method, policy, exact_batch(plab, policy, ref=a))
    grads = np.array([exact_grad(method, policy, method.draw(policy, 64, np.random.default_rng([seed, i])))
                      for i in range(batches)])
    mean, se = grads.mean(axis=0), grads.std(axis=0, ddof=1) / np.sqrt(len(grads))
    assert np.all(np.abs(mean - exact) <= 5 * se + 1e-12)
    assert relative_error(mean, exact) < within, relative_error(mean, exact)


# ------------------------------------------------------------------------------ the gradient against the truth (§12)
def test_grpo_gradient_against_the_true_kl_control_gradient():
    """The table of §12 on five random (π, a, ρ, r), k = 4, exactly:
    - reward part without the std: (k−1)/k times the true ∇Σρ E_π r, to rounding;
    - k1 in the reward, no std: (k−1)/k ∇(reward) + β∇KL(π‖a), to rounding — unbiased up to the reward's scale;
    - k3 in the loss: the KL part is off ∇KL(π‖a) by more than 5% for every pair (the bias of chapter 05, §5);
    - as published (std, k3): off the true gradient by more than 5% for every pair."""
    survey = grpo_gradient_survey(range(5), k=4, block_size=4)
    assert survey["reward, no std vs (k−1)/k·true"].max() < 1e-10
    assert survey["k1, no std vs true·"].max() < 1e-10
    assert survey["kl k3 vs ∇KL(π‖a)"].min() > 0.05 and np.median(survey["kl k3 vs ∇KL(π‖a)"]) > 0.2
    assert survey["grpo vs true"].min() > 0.05


def test_the_std_turns_the_reward_gradient_towards_one_weighted_by_one_over_sigma():
    """As k grows the std-normalised reward gradient points along Σ_x ρ(x)/σ_π(x)·∇E_π[r(x,·)] (Eq. 5.25): its
    direction error against it falls with k (measured 0.30, 0.23, 0.13, 0.06 at k = 2, 4, 8, 16 on this lab, whose
    prompts have σ_π = 0.13 and 1.34), while against the unweighted reward gradient it stays near 1 (1.20, 1.15,
    1.08, 1.05)."""
    a, policy, plab, r, beta = prompted_lab(0, block_size=4)
    r = r * np.where(plab.group == 0, 0.2, 2.0)  # the two prompts' rewards on very different scales
    errors = []
    for k in (2, 4, 8, 16):
        g = grpo_gradients(plab, a, policy, r, beta, k, which=("reward_std", "sigma_reward", "true_reward"))
        errors.append(scaled_error(g["reward_std"], g["sigma_reward"]))
    assert all(e1 > e2 for e1, e2 in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.1 and scaled_error(g["reward_std"], g["true_reward"]) > 3 * errors[-1], errors


# ------------------------------------------------------------------------------ what GRPO optimises (Eq. 5.24)
@pytest.mark.parametrize("scale", [True, False])
def test_grpo_expected_updates_reach_the_predicted_fixed_point(scale):
    """With k1 in the reward, GRPO's expected update vanishes where π(y|x) ∝ a(y|x) e^{ā_π(x,y)/β} (Eq. 5.24).
    400 steps of exact expected gradients take the tiny GPT there (KL below 1e-4; measured ~1e-6), far from the
    KL-control optimum π* when the std divides (KL(π̃‖π*) 0.27 here). Without the std the fixed point is π* at
    β·k/(k−1), to 1e-10."""
    a, _, plab, r, beta = prompted_lab(0, block_size=4)
    k = 4
    log_a = np.log(plab.distribution(a))
    fixed = np.exp(grpo_fixed_point(plab, log_a, r, beta, k, scale=scale))
    star = np.exp(conditional_optimum(plab, log_a, r, beta)[0])
    policy = trainable(a)
    options = GRPOOptions(beta=beta, kl="k1_reward", scale=scale)
    train_exact(GRPO(a, lab_fn(plab, r), options, Sampling(plab.prompts, k)), policy, plab, 400, 3e-2)
    assert plab.mean_divergence("kl", fixed, plab.distribution(policy)) < 1e-4
    if scale:
        assert plab.mean_divergence("kl", fixed, star) > 0.1
    else:
        star_k = np.exp(conditional_optimum(plab, log_a, r, beta * k / (k - 1))[0])
        assert plab.mean_divergence("kl", fixed, star_k) < 1e-10


def test_with_the_std_grpo_ignores_how_large_each_prompts_rewards_are():
    """Dividing by the group's std makes the advantage, and so the fixed point, invariant to rescaling r(x,·) by
    any c(x) > 0 (up to the ε of Eq. 5.22, which leaves a KL of 7e-6 here): the KL-control optimum is not, nor is
    GRPO without the std (both move by more than 0.05 nats)."""
    a, _, plab, r, beta = prompted_lab(3, block_size=4)
    log_a = np.log(plab.distribution(a))
    c = np.where(plab.group == 0, 0.25, 4.0)

    def gap(fn):
        return plab.mean_divergence("kl", np.exp(fn(r)), np.exp(fn(c * r)))

    assert gap(lambda rr: grpo_fixed_point(plab, log_a, rr, beta, 4, scale=True)) < 1e-4
    assert gap(lambda rr: grpo_fixed_point(plab, log_a, rr, beta, 4, scale=False)) > 0.05
    assert gap(lambda rr: conditional_optimum(plab, log_a, rr, beta)[0]) > 0.05


def test_sampled_grpo_on_the_lab():
    """Monte-Carlo GRPO, 150 steps of 16 groups of 8: without the std and with k1 in the reward it reaches its fixed
    point π* at β·k/(k−1) (KL below 0.01; measured 0.001); as published (std, k3 in the loss) it moves from
    KL(π*‖a) ≈ 1 to well inside a third of it (measured 0.14), not to π*."""
    a, _, plab, _, beta = prompted_lab(2, block_size=4)
    s = plab.sequences
    r = 2.0 * (s[:, 1] == 1) - 1.0 * (s[:, 2] != 0) + 1.5 * (plab.group == 1) * (s[:, 1] == 0)
    log_a = np.log(plab.distribution(a))
    star = np.exp(conditional_optimum(plab, log_a, r, beta)[0])
    start = plab.mean_divergence("kl", star, np.exp(log_a))
    ends = {}
    for kl, scale in (("k1_reward", False), ("k3_loss", True)):
        policy = trainable(a)
        train(GRPO(a, lab_fn(plab, r), GRPOOptions(beta=beta, kl=kl, scale=scale), Sampling(plab.prompts, 8)), policy,
              TrainConfig(steps=150, batch_size=128, lr=3e-2, seed=0), progress=False)
        ends[kl] = plab.distribution(policy)
    fixed = np.exp(grpo_fixed_point(plab, log_a, r, beta, 8, scale=False))
    assert plab.mean_divergence("kl", fixed, ends["k1_reward"]) < 0.01
    published = plab.mean_divergence("kl", star, ends["k3_loss"])
    assert start > 0.8 and 0.01 < published < start / 3, (start, published)


# ------------------------------------------------------------------------------ the trainer itself
def test_grpo_reuses_each_batch_for_its_epochs_and_its_clip_acts():
    a, _, plab, r, beta = prompted_lab(4, block_size=4)
    method = GRPO(a, lab_fn(plab, r), GRPOOptions(beta=beta, epochs=3, clip=0.1), Sampling(plab.prompts, 4))
    policy = trainable(a)
    rng = np.random.default_rng(0)
    first = method.draw(policy, 16, rng)
    assert method.draw(policy, 16, rng) is first and method.draw(policy, 16, rng) is first
    assert method.draw(policy, 16, rng) is not first
    method = GRPO(a, lab_fn(plab, r), GRPOOptions(beta=beta, epochs=3, clip=0.1), Sampling(plab.prompts, 4))
    hist = train(method, policy, TrainConfig(steps=12, batch_size=32, lr=5e-2, seed=0), progress=False)
    assert hist["clip_fraction"][0] == 0 and max(hist["clip_fraction"]) > 0  # on-policy first, clipped later
    assert flat_grad(policy).size > 0


def test_grpo_refuses_bad_settings():
    a, _, plab, r, _ = prompted_lab(0, block_size=4)
    reward = lab_fn(plab, r)
    with pytest.raises(ValueError, match="at least 2 responses per prompt"):
        GRPO(a, reward, sampling=Sampling(plab.prompts, 1))
    with pytest.raises(ValueError, match="beta"):
        GRPO(a, reward, GRPOOptions(beta=-0.1), Sampling(plab.prompts, 4))
    with pytest.raises(ValueError, match="clip"):
        GRPO(a, reward, GRPOOptions(clip=1.0), Sampling(plab.prompts, 4))
    with pytest.raises(ValueError, match="unknown KL mode"):
        GRPO(a, reward, GRPOOptions(kl="k2_loss"), Sampling(plab.prompts, 4))
    with pytest.raises(ValueError, match="epochs"):
        GRPO(a, reward, GRPOOptions(epochs=0), Sampling(plab.prompts, 4))
    with pytest.raises(ValueError, match="unknown loss aggregation 'mean'"):
        GRPO(a, reward, GRPOOptions(loss_agg="mean"), Sampling(plab.prompts, 4))
    with pytest.raises(ValueError, match="multiple of the group size"):
        GRPO(a, reward, sampling=Sampling(plab.prompts, 4)).draw(a, 10, np.random.default_rng(0))


# ------------------------------------------------------------------------------ the std's difficulty bias (§12)
def test_the_std_reweights_a_pass_fail_prompt_by_one_over_sigma_only_as_the_group_grows():
    """A pass/fail prompt with solve rate p: GRPO's exact expected logit update is (k−1)/k·p(1−p) without the std,
    and with it tends to p(1−p)/σ = √(p(1−p)) (Eq. 5.25) as k grows; easy and hard prompts (p and 1 − p) get the
    same update either way. At k = 4 the std barely changes the ratio of a 50% prompt's update to a 1% prompt's
    (23.6 with it, 25.3 without: measured 0.3498/0.0148 and 0.1875/0.0074); it never gives them the same weight."""
    for k in (2, 4, 16):
        for p in (0.01, 0.3, 0.5):
            assert pass_fail_update(p, k, scale=False) == pytest.approx((k - 1) / k * p * (1 - p), rel=1e-12)
            assert pass_fail_update(p, k) == pytest.approx(pass_fail_update(1 - p, k), rel=1e-9)
    ratios = [pass_fail_update(0.5, k) / pass_fail_update(0.01, k) for k in (4, 16, 64)]
    assert all(r1 > r2 for r1, r2 in zip(ratios, ratios[1:])) and ratios[-1] > np.sqrt(0.25 / 0.0099)
    assert pass_fail_update(0.5, 4, scale=False) / pass_fail_update(0.01, 4, scale=False) > ratios[0] > 20
    assert pass_fail_update(0.1, 400) == pytest.approx(np.sqrt(0.09), rel=0.02)


# ------------------------------------------------------------------------------ how a response's tokens add up (5.26)
def test_response_lengths_count_the_response_and_its_eos():
    rows = np.array([[3, 0, 0, 0], [3, 1, 2, 0], [3, 1, 0, 0]])
    np.testing.assert_array_equal(response_lengths(rows, np.array([1, 1, 1]), 0), [1, 3, 2])
    np.testing.assert_array_equal(response_lengths(rows, None, 0), [2, 4, 3])


def test_each_aggregation_has_the_expected_update_it_states():
    """Eq. (5.26) on an exact batch (β = 0, std): ``seq_sum``'s gradient is −Σ_x ρ Σ_y π ā ∇log π(y|x) (autograd through
    the enumeration, ā of Eq. 5.23), ``token_mean``'s the same with ā/|y|, and ``constant``'s is ``seq_sum``'s over
    L = the longest response (block size − prompt length), all to rounding."""
    a, policy, plab, r, _ = prompted_lab(0, block_size=5)
    p = plab.distribution(policy)
    lengths = response_lengths(plab.sequences, plab.prompt_len, a.config.eos_id)
    abar = np.zeros(len(plab))
    for g in range(plab.n_prompts):
        abar[plab.group == g] = expected_group_advantage(p[plab.group == g], r[plab.group == g], 4)
    row_rho = plab.row_prompt_probs

    def truth(values):
        return autograd_of(policy, lambda: -(plab.log_probs(policy) * Tensor(row_rho * p * values)).sum())

    seq = aggregation_gradient(plab, a, policy, r, 4, "seq_sum")
    assert relative_error(seq, truth(abar)) < 1e-10
    assert relative_error(aggregation_gradient(plab, a, policy, r, 4, "token_mean"), truth(abar / lengths)) < 1e-10
    assert relative_error(aggregation_gradient(plab, a, policy, r, 4, "constant"), seq / lengths.max()) < 1e-12
    assert relative_error(truth(abar / lengths), truth(abar)) > 0.05  # the lengths differ, so the weights matter


def test_token_mean_exact_batch_gradient_is_the_expectation_of_its_monte_carlo_gradient():
    """With ``token_mean`` and k1 in the reward, a constant added to every advantage no longer drops out of the
    gradient, so the exact batch must subtract the expectation of the sampled leave-one-out k1 baseline: its
    gradient is the mean of 300 sampled batches' (every coordinate within 5 standard errors, vectors within 6%; leaving
    the baseline out of the exact batch moves its gradient by 12% here)."""
    a, policy, plab, r, _ = prompted_lab(1, block_size=4)
    options = GRPOOptions(beta=2.0, kl="k1_reward", loss_agg="token_mean")
    method = GRPO(a, lab_fn(plab, r), options, Sampling(plab.prompts, 4))
    assert_exact_batch_is_the_mean_of_sampled_ones(method, policy, plab, a, batches=300, seed=2, within=0.06)


def test_the_token_mean_makes_wrong_responses_longer_and_right_ones_shorter():
    """GRPO's expected update with β = 0 on a policy that can represent anything (:func:`tabular_lengths`), pass/fail
    reward: with ``seq_sum`` (and ``constant``) every wrong response gets the same push, so within each prompt the
    mean length of the wrong responses, and of the right ones, never moves (to 1e-12); with ``token_mean`` the
    wrong responses' mean length grows at every step and the right ones' shrinks, while both solve the prompts."""
    a, plab, r, lengths = length_lab(0)
    runs = {agg: tabular_lengths(agg, steps=12) for agg in ("seq_sum", "token_mean")}
    log_a = np.log(plab.distribution(a))
    for g in range(plab.n_prompts):
        at = plab.group == g
        for where in (r[at] == 0, r[at] == 1):
            before = np.exp(log_a[at][where])
            after = np.exp(runs["seq_sum"]["log_pi"][at][where])
            assert abs(before @ lengths[at][where] / before.sum() - after @ lengths[at][where] / after.sum()) < 1e-12
    tm = runs["token_mean"]
    assert np.all(np.diff(tm["wrong"]) > 0) and np.all(np.diff(tm["right"]) < 0), (tm["wrong"], tm["right"])
    assert tm["solved"][-1] > 0.8 and runs["seq_sum"]["solved"][-1] > 0.8


def test_with_k1_in_the_reward_the_token_mean_changes_the_path_not_the_fixed_point():
    """With the KL in the reward (and its baseline) the token mean's update vanishes where (ā − β(log π/a − KL))/|y|
    is constant in y, i.e. log π = log a + ā/β − λ|y|/β + const with λ = E_π[ā]/E_π|y| = 0 (ā has mean 0): the fixed
    point of Eq. (5.24), the same as the sequence sum's (KL below 1e-8 after 400 steps of the exact expected update),
    though on the way the wrong responses first grow longer (by more than 0.2 tokens)."""
    a, plab, r, _ = length_lab(0)
    fixed = np.exp(grpo_fixed_point(plab, np.log(plab.distribution(a)), r, 0.5, 4))
    run = tabular_lengths("token_mean", steps=400, beta=0.5, lr=1.0)
    assert plab.mean_divergence("kl", fixed, np.exp(run["log_pi"])) < 1e-8
    assert run["wrong"].max() > run["wrong"][0] + 0.2 and abs(run["wrong"][-1] - run["wrong"][0]) < 0.1


def test_a_pass_fail_prompts_fixed_point_depends_on_its_solve_rate_with_or_without_the_std():
    """Eq. (5.24) for a two-outcome prompt, β = 0.5, k = 4. Without the std it is π* at β·k/(k−1) in closed form (to
    1e-10). With it, the fixed point is unchanged by rescaling the reward but not by the solve rate: a prompt solved 1%
    of the time by a ends 0.29 nats from a, one solved 10% of the time 0.89 (measured 0.289 and 0.886)."""
    beta, k = 0.5, 4
    for p in (0.01, 0.1, 0.5):
        solved, _ = pass_fail_fixed_point(p, beta, k, scale=False)
        tilt = p * np.exp((k - 1) / (k * beta))
        assert solved == pytest.approx(tilt / (1 - p + tilt), abs=1e-10)
    rare, common = pass_fail_fixed_point(0.01, beta, k)[1], pass_fail_fixed_point(0.1, beta, k)[1]
    assert rare < common / 2, (rare, common)
