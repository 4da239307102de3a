"""GDC on the exact lab (chapter 06): DPG reaches the EBM target, the KL-adaptive proposal and the GDC++
baseline lower the variance of the gradient estimate, and reward maximisation collapses where GDC does not."""
import numpy as np
import pytest

from minialign.ebm import fit_lambda_exact
from minialign.lab import ExactLab, autograd_of, exact_grad, fdiv_to_target, lab_fn, lab_model
from minialign.optim import AdamW
from minialign.trainers.common import Hooks, TrainConfig, exact_batch, frozen_copy, sample_batch, train
from minialign.trainers.fdpg import FDPG
from minialign.trainers.gdc import DPG
from minialign.trainers.proposal import MomentCalibration
from minialign.trainers.reinforce import Reinforce


def base(seed=0):
    a = lab_model(seed, vocab_size=3, block_size=4, scale=0.3)
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


def test_dpg_drives_the_exact_kl_p_pi_below_threshold():
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
                 hooks=Hooks(target_log_p=log_p), progress=False)
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
        "q=pi, GDC++": gradient_mse(DPG(a, policy, target, proposal="policy", baseline=True, log_z=log_z),
                                    policy, truth),
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
    print(f"GDC: KL(π‖a) {kl_gdc:.3f}, H {h_gdc:.3f} ({s_gdc} steps); "
          f"REINFORCE: KL(π‖a) {kl_rl:.3f}, H {h_rl:.3f} ({s_rl} steps)")
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


# ------------------------------------------------------------------------------ λ fitted to the policy
def _calibration_run(a, lab, trainable_names, mu_bar, calibrate, steps=400, rate=0.2, lr=3e-2, lam0=None):
    """DPG on exact batches (each step follows the exact expected gradient) towards φ = 'length 2' at μ̄,
    training only the parameters whose names contain ``trainable_names`` (all of them if None)."""
    log_a = np.log(lab.distribution(a))
    phi = (lab.lengths == 2).astype(float)
    lam_star, _ = fit_lambda_exact(log_a, None, phi[:, None], [mu_bar])
    policy = frozen_copy(a)
    for name, p in policy.named_parameters():
        p.requires_grad = trainable_names is None or trainable_names in name
    if calibrate:
        target = MomentCalibration(lab_fn(lab, log_a), lambda batch: phi[lab.index_of(batch.tokens)][:, None],
                                   lam_star if lam0 is None else [lam0], [mu_bar], rate=rate)
        method = DPG(a, policy, target, proposal="policy")
    else:
        log_scores = log_a + lam_star[0] * phi
        method = DPG(a, policy, lab_fn(lab, log_scores), proposal="policy", log_z=lab.normalise(log_scores)[1])
    opt = AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    for _ in range(steps):
        batch = exact_batch(lab, policy, ref=a)
        loss, metrics = method.loss(policy, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(policy, batch, metrics)
    lam = method.calibration.lam[0] if calibrate else lam_star[0]
    return float(lab.distribution(policy) @ phi), lam, lam_star[0]


def test_calibration_returns_to_the_i_projection_when_the_family_contains_p():
    """Eq. (6.11)'s fixed point: when π_θ can represent every p_λ, the calibrated λ ends at the I-projection's
    λ* (Eq. 6.4) and π_θ at p_{λ*}. Started at λ = 0 (the target is a itself, which π = a already matches), λ
    climbs with the policy's moment. Measured: λ 1.3095 against λ* 1.3093, E_π[φ] = 0.5000."""
    a, lab = base(0)
    moment, lam, lam_star = _calibration_run(a, lab, None, 0.5, calibrate=True, rate=0.5, lam0=0.0)
    assert abs(moment - 0.5) < 1e-3, moment
    assert abs(lam - lam_star) < 1e-2, (lam, lam_star)


def test_calibration_meets_the_moment_where_the_family_cannot_represent_p():
    """A policy family of 8 parameters (only the last MLP's output bias trains): DPG towards p_{λ*} stops at
    the family's closest point in KL(p‖π), whose moment misses μ̄ = 0.35 (measured 0.252, from a's 0.213).
    With λ on the policy's own moment, the policy meets μ̄ (measured 0.3500) with λ = 1.458, beyond λ* = 0.690.
    The rate matters: at 0.5 instead of 0.2, λ and the policy chase each other and still oscillate by ±0.03
    after 1000 steps."""
    a, lab = base(0)
    plain, _, _ = _calibration_run(a, lab, "h.1.mlp.c_proj.bias", 0.35, calibrate=False)
    moment, lam, lam_star = _calibration_run(a, lab, "h.1.mlp.c_proj.bias", 0.35, calibrate=True)
    assert abs(plain - 0.35) > 0.05, plain
    assert abs(moment - 0.35) < 2e-3, moment
    assert lam > lam_star + 0.3, (lam, lam_star)


def _length_calibration(lab, a, lam=0.0, **kw):
    phi = (lab.lengths == 2).astype(float)
    log_a = np.log(lab.distribution(a))
    return MomentCalibration(lab_fn(lab, log_a), lambda batch: phi[lab.index_of(batch.tokens)][:, None], [lam],
                             [0.4], **kw), log_a, phi


def test_calibration_re_estimates_log_z_at_the_current_lambda_from_every_sample_seen():
    a, lab = base(3)
    cal, log_a, phi = _length_calibration(lab, a)
    batches = [sample_batch(a, 256, np.random.default_rng(i), ref=a) for i in range(20)]
    for batch in batches:
        cal.log_z(batch, cal(batch))
    tokens = np.concatenate([b.tokens for b in batches])
    log_q = np.concatenate([b.log_q for b in batches])
    for lam in (0.0, 1.5, -2.0):
        cal.lam = np.array([lam])
        by_hand = np.log(np.mean(np.exp(log_a + lam * phi)[lab.index_of(tokens)] / np.exp(log_q)))
        exact = lab.normalise(log_a + lam * phi)[1]
        assert abs(cal.value - by_hand) < 1e-12
        assert abs(cal.value - exact) < 0.05, (lam, cal.value, exact)  # 5120 samples of a


def test_calibration_state_survives_a_checkpoint(tmp_path):
    from minialign import io

    a, lab = base(3)
    cal, _, _ = _length_calibration(lab, a, lam=0.7)
    for i in range(3):
        batch = sample_batch(a, 64, np.random.default_rng(i), ref=a)
        cal.log_z(batch, cal(batch))
        cal.update(batch, batch.log_q)
    io.save(tmp_path / "c.npz", {"cal": cal.state()})
    twin, _, _ = _length_calibration(lab, a)
    twin.load_state(io.load(tmp_path / "c.npz")["cal"])
    assert np.array_equal(twin.lam, cal.lam) and np.array_equal(twin.moment, cal.moment)
    assert twin.value == cal.value and twin.lam[0] != 0.7  # the updates moved λ


def test_calibration_rejects_bad_input():
    a, lab = base(3)
    log_a = np.log(lab.distribution(a))
    log_base = lab_fn(lab, log_a)
    with pytest.raises(ValueError, match="λ has 2 entries but μ̄ has 1"):
        MomentCalibration(log_base, None, [0.0, 1.0], [0.5])
    with pytest.raises(ValueError, match="rate η must be a finite number > 0"):
        MomentCalibration(log_base, None, [0.0], [0.5], rate=0.0)
    with pytest.raises(ValueError, match="finite"):
        MomentCalibration(log_base, None, [np.nan], [0.5])
    cal = MomentCalibration(log_base, lambda batch: np.full((len(batch), 1), np.nan), [0.0], [0.5])
    with pytest.raises(ValueError, match="NaN"):
        cal(sample_batch(a, 4, np.random.default_rng(0), ref=a))
    cal = MomentCalibration(log_base, lambda batch: np.zeros((len(batch), 2)), [0.0], [0.5])
    with pytest.raises(ValueError, match="2 features per row"):
        cal(sample_batch(a, 4, np.random.default_rng(0), ref=a))
    with pytest.raises(ValueError, match="exact log Z"):
        DPG(a, trainable(a), cal, log_z=0.0)
    with pytest.raises(TypeError, match="GDC"):
        FDPG(a, trainable(a), cal)


def test_a_calibrated_run_resumes_where_it_stopped(tmp_path):
    """Monte-Carlo batches with the KL-adaptive proposal (q ≠ π): 6 steps in one go, and 3 steps then a resume
    from the checkpoint to 6, end with the same λ, moving average and log Z. A checkpoint with calibration
    cannot be resumed without it."""
    a, lab = base(4)

    def run(steps, out):
        cal, _, _ = _length_calibration(lab, a, lam=0.0, rate=0.5)
        policy = trainable(a)
        method = DPG(a, policy, cal, proposal="adaptive")
        train(method, policy, TrainConfig(steps=steps, batch_size=32, lr=3e-2, seed=0, checkpoint_every=1),
              out=out, progress=False)
        return cal

    whole = run(6, tmp_path / "whole.npz")
    run(3, tmp_path / "part.npz")
    resumed = run(6, tmp_path / "part.npz")
    assert whole.lam[0] != 0.0
    np.testing.assert_array_equal(resumed.lam, whole.lam)
    np.testing.assert_array_equal(resumed.moment, whole.moment)
    assert resumed.value == whole.value
    policy = trainable(a)
    plain = DPG(a, policy, lab_fn(lab, np.log(lab.distribution(a))), proposal="adaptive")
    with pytest.raises(ValueError, match=r"written by a different run "
                                         r".*--calibration rate: 0\.5 in the checkpoint, \(not set\) now"):
        train(plain, policy, TrainConfig(steps=7, batch_size=32, seed=0), out=tmp_path / "part.npz", progress=False)
