"""GDC on the exact lab (chapter 06): DPG reaches the EBM target, the KL-adaptive proposal and the GDC++
baseline lower the variance of the gradient estimate, and reward maximisation collapses where GDC does not."""
import numpy as np

from minialign.lab import ExactLab, fdiv_to_target
from minialign.optim import AdamW
from minialign.trainers.common import TrainConfig, frozen_copy, train
from minialign.trainers.gdc import DPG
from minialign.trainers.rlhf import Reinforce
from test_gpt import tiny_gpt
from test_trainers_exact import autograd_of, exact_grad, lab_fn


def base(seed=0):
    a = tiny_gpt(seed, vocab_size=3, block_size=4, scale=0.3)
    return a, ExactLab.for_model(a)


def trainable(model):
    twin = frozen_copy(model)
    for p in twin.parameters():
        p.requires_grad = True
    return twin.train()


def ebm_target(lab, a, pointwise=True, lam=0.0):
    """log P = log a + log b + λφ on the enumeration: b = 'the sequence starts with token 1',
    φ = 'the sequence has exactly two tokens before its EOS'."""
    log_a = np.log(lab.distribution(a))
    b = lab.sequences[:, 0] == 1
    phi = (lab.lengths == 2).astype(float)
    log_scores = log_a + lam * phi + (np.where(b, 0.0, -np.inf) if pointwise else 0.0)
    log_p, log_z = lab.normalise(log_scores)
    return log_scores, log_p, log_z, b, phi


def test_dpg_drives_the_exact_forward_kl_to_the_target_below_threshold():
    """From π = a, DPG with the KL-adaptive proposal takes KL(p‖π) from about half a nat to below 0.05 nats
    in 200 steps of 64 samples. At that
    batch size the gradient noise near the optimum keeps KL(p‖π) at the order of 10⁻²; 0.05 leaves a
    factor-of-a-few margin while still demanding that most of the initial 1 nat is gone."""
    a, lab = base(0)
    log_scores, log_p, log_z, b, _ = ebm_target(lab, a, pointwise=True, lam=1.0)
    policy = trainable(a)
    start = lab.divergence("kl", np.exp(log_p), lab.distribution(policy))
    method = DPG(a, policy, lab_fn(lab, log_scores), proposal="adaptive")
    hist = train(method, policy, TrainConfig(steps=200, batch_size=64, lr=3e-2, seed=0), lab=lab,
                 target_log_p=log_p, progress=False)
    end = hist["exact_kl_p_pi"][-1]
    assert start > 0.4 and end < 0.05, (start, end)
    assert hist["replacements"][-1] > 0  # the proposal was updated along the way
    np.testing.assert_allclose(hist["log_z"][-1], log_z, atol=0.1)  # the running IS estimate of log Z


def gradient_mse(method, policy, truth, n_batches=300, batch_size=16, seed=0):
    errors = []
    for i in range(n_batches):
        batch = method.draw(policy, batch_size, np.random.default_rng([seed, i]))
        errors.append(np.sum((exact_grad(method, policy, batch) - truth) ** 2))
    return float(np.mean(errors))


def test_adaptive_proposal_and_gdcpp_baseline_lower_the_gradient_variance():
    """Near the target (after 150 DPG steps), compare the mean squared error of the DPG gradient estimate
    (batches of 16) against the exact ∇KL(p‖π), with the exact Z everywhere to isolate the proposal and the
    baseline. Sampling from π — what the KL-adaptive rule switches to once π is closer to p than a — beats
    sampling from the original proposal a, and GDC++'s baseline lowers the error much further. Measured
    here: q=a 1.69, q=π 0.51, q=π with GDC++ 0.15 (squared norm of the true gradient: 0.05). The test asks
    for factors of 0.8 and 0.5, leaving room for the Monte-Carlo error of 300 batches per estimate."""
    a, lab = base(1)
    log_scores, log_p, log_z, _, _ = ebm_target(lab, a, pointwise=True, lam=1.0)
    policy = trainable(a)
    method = DPG(a, policy, lab_fn(lab, log_scores), proposal="policy", log_z=log_z)
    train(method, policy, TrainConfig(steps=150, batch_size=64, lr=3e-2, seed=1), progress=False)
    p_a, p_pi, p = lab.distribution(a), lab.distribution(policy), np.exp(log_p)
    assert lab.divergence("kl", p, p_pi) < lab.divergence("kl", p, p_a)  # π is now closer: q ← π applies
    truth = autograd_of(policy, lambda: fdiv_to_target("reverse_kl", lab.log_probs(policy), log_p))
    target = lab_fn(lab, log_scores)
    mse = {
        "q=a": gradient_mse(DPG(a, a, target, proposal="fixed", log_z=log_z), policy, truth),
        "q=pi": gradient_mse(DPG(a, policy, target, proposal="policy", log_z=log_z), policy, truth),
        "q=pi, GDC++": gradient_mse(DPG(a, policy, target, proposal="policy", baseline=True, log_z=log_z), policy, truth),
    }
    print({k: round(v, 4) for k, v in mse.items()})
    assert mse["q=pi"] < 0.8 * mse["q=a"], mse
    assert mse["q=pi, GDC++"] < 0.5 * mse["q=pi"], mse


def test_reward_maximisation_collapses_where_gdc_keeps_diversity():
    """The paper's central contrast, exact: train GDC towards a(·|b) and REINFORCE on b as a reward until
    each satisfies b on 95% of its mass; at that point REINFORCE is farther from a and has lower entropy."""
    a, lab = base(2)
    log_scores, log_p, _, b, _ = ebm_target(lab, a, pointwise=True)
    target = lab_fn(lab, log_scores)

    gdc_policy = trainable(a)
    pi_gdc, s_gdc = _until(DPG(a, gdc_policy, target, proposal="adaptive"), gdc_policy, lab, b, 3e-2)
    rl_policy = trainable(a)
    pi_rl, s_rl = _until(Reinforce(a, lambda batch: b[lab.index_of(batch.tokens)].astype(float)),
                         rl_policy, lab, b, 3e-2)
    p_a = lab.distribution(a)
    kl_gdc, kl_rl = lab.divergence("kl", pi_gdc, p_a), lab.divergence("kl", pi_rl, p_a)
    h_gdc, h_rl = lab.entropy(pi_gdc), lab.entropy(pi_rl)
    print(f"GDC: KL(π‖a) {kl_gdc:.3f}, H {h_gdc:.3f} ({s_gdc} steps); REINFORCE: KL(π‖a) {kl_rl:.3f}, H {h_rl:.3f} ({s_rl} steps)")
    assert kl_rl > kl_gdc + 0.1 and h_rl < h_gdc - 0.1


def _until(method, policy, lab, b, lr, level=0.95, max_steps=600):
    opt = AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    for step in range(max_steps):
        pi = lab.distribution(policy)
        if pi[b].sum() >= level:
            return pi, step
        batch = method.draw(policy, 64, np.random.default_rng(step))
        loss, _ = method.loss(policy, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    raise AssertionError(f"{method.name} did not reach {level:.0%} satisfaction in {max_steps} steps")
