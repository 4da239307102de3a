"""GRPO (chapter 05, §12): group-normalised advantages, their exact expectation, GRPO's gradient against the true
KL-control gradient on the exact lab, and what the division by the group's std makes it optimise."""
import numpy as np
import pytest

from minialign.experiments.conditional_lab import (conditional_optimum, grpo_fixed_point, grpo_gradient_survey,
                                                   grpo_gradients, prompted_lab, relative_error, scaled_error,
                                                   train_exact, trainable)
from minialign.lab import exact_grad, flat_grad, lab_fn
from minialign.trainers.common import TrainConfig, exact_batch, train
from minialign.trainers.grpo import GRPO
from minialign.trainers.policy_gradient import expected_group_advantage, group_normalised_advantages


# ------------------------------------------------------------------------------ the advantage (Eqs. 5.21–5.22)
def test_group_normalised_advantages_by_hand():
    """Eq. (5.21): (r − mean)/(std + 1e-4) within each group, std with the k − 1 divisor; equal rewards give 0."""
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
    """Eq. (5.22): ā(y) = E[A_1 | y_1 = y], by enumerating the other k − 1 responses, against 40 000 simulated
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
    """The loss on an exact batch of the prompted lab (advantages of Eq. 5.22, k3 in the loss) has as gradient the
    mean of GRPO's gradient over sampled batches of groups: 400 batches of 16 groups of 4, every coordinate within 5
    standard errors (and the two vectors within 5% of each other)."""
    a, policy, plab, r, beta = prompted_lab(1, block_size=4)
    method = GRPO(a, lab_fn(plab, r), plab.prompts, 4, beta=beta)
    exact = exact_grad(method, policy, exact_batch(plab, policy, ref=a))
    grads = np.array([exact_grad(method, policy, method.draw(policy, 64, np.random.default_rng([1, i])))
                      for i in range(400)])
    mean, se = grads.mean(axis=0), grads.std(axis=0, ddof=1) / np.sqrt(len(grads))
    assert np.all(np.abs(mean - exact) <= 5 * se + 1e-12)
    assert relative_error(mean, exact) < 0.05, relative_error(mean, exact)


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
    """As k grows the std-normalised reward gradient points along Σ_x ρ(x)/σ_π(x)·∇E_π[r(x,·)] (Eq. 5.24): its
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


# ------------------------------------------------------------------------------ what GRPO optimises (Eq. 5.23)
@pytest.mark.parametrize("scale", [True, False])
def test_grpo_expected_updates_reach_the_predicted_fixed_point(scale):
    """With k1 in the reward, GRPO's expected update vanishes where π(y|x) ∝ a(y|x) e^{ā_π(x,y)/β} (Eq. 5.23).
    400 steps of exact expected gradients take the tiny GPT there (KL below 1e-4; measured ~1e-6), far from the
    KL-control optimum π* when the std divides (KL(π̃‖π*) 0.27 here). Without the std the fixed point is π* at
    β·k/(k−1), to 1e-10."""
    a, _, plab, r, beta = prompted_lab(0, block_size=4)
    k = 4
    log_a = np.log(plab.distribution(a))
    fixed = np.exp(grpo_fixed_point(plab, log_a, r, beta, k, scale=scale))
    star = np.exp(conditional_optimum(plab, log_a, r, beta)[0])
    policy = trainable(a)
    train_exact(GRPO(a, lab_fn(plab, r), plab.prompts, k, beta=beta, kl="k1_reward", scale=scale), policy, plab,
                400, 3e-2)
    assert plab.mean_divergence("kl", fixed, plab.distribution(policy)) < 1e-4
    if scale:
        assert plab.mean_divergence("kl", fixed, star) > 0.1
    else:
        star_k = np.exp(conditional_optimum(plab, log_a, r, beta * k / (k - 1))[0])
        assert plab.mean_divergence("kl", fixed, star_k) < 1e-10


def test_with_the_std_grpo_ignores_how_large_each_prompts_rewards_are():
    """Dividing by the group's std makes the advantage, and so the fixed point, invariant to rescaling r(x,·) by
    any c(x) > 0 (up to the ε of Eq. 5.21, which leaves a KL of 7e-6 here): the KL-control optimum is not, nor is
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
        train(GRPO(a, lab_fn(plab, r), plab.prompts, 8, beta=beta, kl=kl, scale=scale), policy,
              TrainConfig(steps=150, batch_size=128, lr=3e-2, seed=0), progress=False)
        ends[kl] = plab.distribution(policy)
    fixed = np.exp(grpo_fixed_point(plab, log_a, r, beta, 8, scale=False))
    assert plab.mean_divergence("kl", fixed, ends["k1_reward"]) < 0.01
    published = plab.mean_divergence("kl", star, ends["k3_loss"])
    assert start > 0.8 and 0.01 < published < start / 3, (start, published)


# ------------------------------------------------------------------------------ the trainer itself
def test_grpo_reuses_each_batch_for_its_epochs_and_its_clip_acts():
    a, _, plab, r, beta = prompted_lab(4, block_size=4)
    method = GRPO(a, lab_fn(plab, r), plab.prompts, 4, beta=beta, epochs=3, clip=0.1)
    policy = trainable(a)
    rng = np.random.default_rng(0)
    first = method.draw(policy, 16, rng)
    assert method.draw(policy, 16, rng) is first and method.draw(policy, 16, rng) is first
    assert method.draw(policy, 16, rng) is not first
    hist = train(GRPO(a, lab_fn(plab, r), plab.prompts, 4, beta=beta, epochs=3, clip=0.1), policy,
                 TrainConfig(steps=12, batch_size=32, lr=5e-2, seed=0), progress=False)
    assert hist["clip_fraction"][0] == 0 and max(hist["clip_fraction"]) > 0  # on-policy first, clipped later
    assert flat_grad(policy).size > 0


def test_grpo_refuses_bad_settings():
    a, _, plab, r, _ = prompted_lab(0, block_size=4)
    reward = lab_fn(plab, r)
    with pytest.raises(ValueError, match="at least 2 responses per prompt"):
        GRPO(a, reward, plab.prompts, 1)
    with pytest.raises(ValueError, match="beta"):
        GRPO(a, reward, plab.prompts, 4, beta=-0.1)
    with pytest.raises(ValueError, match="clip"):
        GRPO(a, reward, plab.prompts, 4, clip=1.0)
    with pytest.raises(ValueError, match="unknown KL mode"):
        GRPO(a, reward, plab.prompts, 4, kl="k2_loss")
    with pytest.raises(ValueError, match="epochs"):
        GRPO(a, reward, plab.prompts, 4, epochs=0)
    with pytest.raises(ValueError, match="multiple of the group size"):
        GRPO(a, reward, plab.prompts, 4).draw(a, 10, np.random.default_rng(0))
