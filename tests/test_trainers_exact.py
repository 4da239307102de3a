"""Trainers on the exact lab: RLHF against its closed-form optimum, the KL estimators' gradients measured,
and the unification of RLHF and GDC as special cases of f-DPG (chapters 05–07).

An *exact batch* holds every sequence of the lab weighted by its probability under the sampler, so a
trainer's loss on it has as gradient the exact expectation of its Monte-Carlo gradient.
"""
import numpy as np
import pytest
from helpers import FAMILY, assert_close, assert_near, close, rlhf_target

from minialign import divergences as D
from minialign.experiments.rlhf_lab import kl_penalty_gradients, relative_error, tiny_lab
from minialign.lab import autograd_of, exact_grad, fdiv_to_target, lab_fn
from minialign.trainers.common import Hooks, TrainConfig, exact_batch, frozen_copy, sample_batch, train
from minialign.trainers.fdpg import FDPG, FDPGOptions
from minialign.trainers.gdc import DPG
from minialign.trainers.policy_gradient import checked_rewards
from minialign.trainers.rlhf import RLHF, RLHFOptions, kl_control_objective, kl_control_optimum


# ------------------------------------------------------------------------------------------- RLHF (chapter 05)
def test_best_objective_is_beta_log_z_reached_at_the_tilted_optimum():
    """Eq. (5.6)–(5.7): max_π J(π) = β log Z at π* = a e^{r/β}/Z, and J(π) = β log Z − β KL(π‖π*) for every π."""
    a, policy, lab, r, beta = tiny_lab(1)
    p_a = lab.distribution(a)
    log_star, best = kl_control_optimum(np.log(p_a), r, beta)
    p_star = np.exp(log_star)
    np.testing.assert_allclose(kl_control_objective(p_star, p_a, r, beta), best, rtol=1e-12)
    rng = np.random.default_rng(0)
    for p in [lab.distribution(policy), p_a] + [rng.dirichlet(np.ones(len(lab))) for _ in range(5)]:
        j = kl_control_objective(p, p_a, r, beta)
        np.testing.assert_allclose(j, best - beta * lab.divergence("kl", p, p_star), rtol=1e-10, atol=1e-12)
        assert j <= best + 1e-12


@pytest.mark.parametrize("kl", [pytest.param("k1_seq", marks=pytest.mark.task5_2), "full_token"])
def test_rloo_drives_the_policy_to_the_kl_control_optimum(kl):
    """From the base model, RLOO with the k1 penalty in the reward (or the analytic per-token KL with its
    score-function part, Eq. 5.11) brings the exact KL(π*‖π_θ) from above 1 nat to below 0.05 nats. The
    threshold leaves room for Monte-Carlo noise at batch 64 with a small learning rate: the remaining KL is
    what the last steps' gradient noise keeps stirring."""
    a, _, lab, r, beta = tiny_lab(2, beta=0.5, scale=0.3)
    r = 2.0 * (lab.sequences[:, 0] == 1) - 1.0 * (lab.lengths > 2)  # a taste a reader can state
    policy = frozen_copy(a)
    for p in policy.parameters():
        p.requires_grad = True
    log_star, _ = kl_control_optimum(np.log(lab.distribution(a)), r, beta)
    start = lab.divergence("kl", np.exp(log_star), lab.distribution(policy))
    method = RLHF(a, lab_fn(lab, r), RLHFOptions(beta=beta, kl=kl, algo="rloo"))
    train(method, policy, TrainConfig(steps=150, batch_size=64, lr=3e-2, seed=0), progress=False)
    end = lab.divergence("kl", np.exp(log_star), lab.distribution(policy))
    assert start > 1.0 and end < 0.05, (start, end)


@pytest.mark.task5_3
def test_ppo_clip_improves_the_objective():
    a, _, lab, r, beta = tiny_lab(3, beta=0.5, scale=0.3)
    assert lab.entropy(lab.distribution(a)) > 0.5  # a base model that explores
    policy = frozen_copy(a)
    for p in policy.parameters():
        p.requires_grad = True
    p_a = lab.distribution(a)
    _, best = kl_control_optimum(np.log(p_a), r, beta)
    before = kl_control_objective(lab.distribution(policy), p_a, r, beta)
    method = RLHF(a, lab_fn(lab, r), RLHFOptions(beta=beta, algo="ppo", ppo_epochs=4))
    hist = train(method, policy, TrainConfig(steps=80, batch_size=64, lr=2e-2, seed=1), progress=False)
    after = kl_control_objective(lab.distribution(policy), p_a, r, beta)
    assert after > before + 0.5 * (best - before), (before, after, best)
    assert max(hist["clip_fraction"]) > 0  # the clip was active at times


def test_kl_estimator_gradients_on_sequences():
    """Eq. (5.8)–(5.9), measured exactly: k1 in the reward (per sequence, or per token with rewards-to-go)
    is unbiased for ∇KL(π‖a); k2 and k3 per token in the loss are not, on sequences of several tokens."""
    a, policy, lab, _, beta = tiny_lab(4, block_size=4)
    grads, truth, _ = kl_penalty_gradients(lab, a, policy, beta)
    errors = {k: relative_error(g, truth) for k, g in grads.items()}
    assert errors["k1_seq"] < 1e-8 and errors["k1_token"] < 1e-8, errors
    assert errors["k2_loss"] > 0.05 and errors["k3_loss"] > 0.05, errors


def test_full_token_kl_is_unbiased_and_its_loss_part_alone_has_k2s_expectation():
    """Eq. (5.10)–(5.11) measured exactly on sequences: the analytic per-token KL with the future KLs credited to
    each token's score (full_token) is unbiased for ∇KL(π‖a); its loss term alone misses the change of which
    prefixes are reached and has exactly the expected gradient of k2 in the loss (E_{x_t}[∇½ log²(π_t/a_t)] =
    ∇KL_t at the fixed prefix) — the same bias."""
    a, policy, lab, _, beta = tiny_lab(4, block_size=4)
    grads, truth, _ = kl_penalty_gradients(lab, a, policy, beta)
    assert relative_error(grads["full_token"], truth) < 1e-8
    assert relative_error(grads["full_token_loss_only"], grads["k2_loss"]) < 1e-10
    assert relative_error(grads["full_token_loss_only"], truth) > 0.05


@pytest.mark.task5_4
def test_kl_estimator_gradients_on_one_categorical_step():
    """With one free step (horizon 2: a token, then the forced EOS) the classic picture of chapter 03, §9 holds:
    k2 in the loss is unbiased for ∇KL(π‖a), k3 in the loss gives ∇KL(a‖π)."""
    a, policy, lab, _, beta = tiny_lab(5, vocab_size=5, block_size=2)
    grads, truth, forward = kl_penalty_gradients(lab, a, policy, beta)
    assert relative_error(grads["k1_seq"], truth) < 1e-8
    assert relative_error(grads["k2_loss"], truth) < 1e-8
    assert relative_error(grads["full_token"], truth) < 1e-8
    assert relative_error(grads["k3_loss"], forward) < 1e-8
    assert relative_error(grads["k3_loss"], truth) > 0.05


# ------------------------------------------------------------------------------------------- unification (chapter 07)
@pytest.mark.task5_2
def test_fdpg_with_f_kl_minimises_kl_pi_p_as_kl_control_rlhf_does_scaled_by_one_over_beta():
    """(a) f = kl (D_f(π‖p) = KL(π‖p)) with p ∝ a e^{r/β}: its gradient is 1/β times the gradient of the
    RLHF loss (the negated KL-control objective) with the sequence-level k1 penalty in the reward."""
    a, policy, lab, r, beta = tiny_lab(6)
    log_scores, _, log_z = rlhf_target(lab, a, r, beta)
    batch = exact_batch(lab, policy, ref=a)
    g_f = exact_grad(FDPG(a, policy, lab_fn(lab, log_scores), FDPGOptions(f="kl", log_z=log_z)), policy, batch)
    g_r = exact_grad(RLHF(a, lab_fn(lab, r), RLHFOptions(beta=beta, kl="k1_seq", algo="reinforce")), policy, batch)
    assert_near(g_f, g_r / beta)
    assert not close(g_f, g_r, rel=1e-2)  # the scale matters: β = 0.5 here


@pytest.mark.task7_2
def test_fdpg_with_f_reverse_kl_minimises_kl_p_pi_as_dpg_does():
    """(b) f = reverse_kl (D_f(π‖p) = KL(p‖π)): the f-DPG gradient is GDC's DPG gradient, exactly."""
    a, policy, lab, r, _ = tiny_lab(7)
    log_scores = np.log(lab.distribution(a)) + 1.5 * (lab.lengths == 2)  # an EBM a·e^{λφ}
    _, log_z = lab.normalise(log_scores)
    batch = exact_batch(lab, policy, ref=a)
    g_f = exact_grad(FDPG(a, policy, lab_fn(lab, log_scores), FDPGOptions(f="reverse_kl", log_z=log_z)), policy, batch)
    g_d = exact_grad(DPG(a, policy, lab_fn(lab, log_scores), proposal="policy", log_z=log_z), policy, batch)
    assert_near(g_f, g_d, rel=1e-10)


@pytest.mark.task7_2
@pytest.mark.parametrize("f", FAMILY)
def test_fdpg_expected_gradient_equals_autograd_of_the_divergence(f):
    """(c) For every f: the f-DPG estimator's expectation equals ∇_θ D_f(π_θ‖p) by autograd through the
    enumeration."""
    a, policy, lab, r, beta = tiny_lab(8)
    log_scores, log_p, log_z = rlhf_target(lab, a, r, beta)
    batch = exact_batch(lab, policy, ref=a)
    g = exact_grad(FDPG(a, policy, lab_fn(lab, log_scores), FDPGOptions(f=f, log_z=log_z)), policy, batch)
    truth = autograd_of(policy, lambda: fdiv_to_target(f, lab.log_probs(policy), log_p))
    assert_near(g, truth)


@pytest.mark.parametrize("f", ["kl", "js", "tv"])
def test_adding_c_times_t_minus_one_to_f_leaves_the_expected_gradient_unchanged(f, c=2.5):
    """(d) f + c(t − 1) shifts the pseudo-reward by −c; E_π[∇ log π] = 0 takes the shift away."""
    a, policy, lab, r, beta = tiny_lab(9)
    log_scores, _, log_z = rlhf_target(lab, a, r, beta)
    fd = D.get(f)
    shifted = D.from_generator(f"{f}+c(t-1)", lambda t: fd.f(t) + c * (t - 1), lambda t: fd.f_prime(t) + c,
                               fd.f_at_zero - c, fd.slope_at_infinity + c)
    batch = exact_batch(lab, policy, ref=a)
    target = lab_fn(lab, log_scores)
    g = exact_grad(FDPG(a, policy, target, FDPGOptions(f=f, log_z=log_z)), policy, batch)
    g_shift = exact_grad(FDPG(a, policy, target, FDPGOptions(f=shifted, log_z=log_z)), policy, batch)
    assert_near(g, g_shift)


def test_monte_carlo_coefficients_agree_sample_by_sample():
    """On shared samples: f-DPG(kl) coefficients are RLHF's divided by β plus one constant (a baseline);
    f-DPG(reverse_kl) coefficients equal DPG's, sample by sample, with the same running Z."""
    a, policy, lab, r, beta = tiny_lab(10)
    log_scores, _, _ = rlhf_target(lab, a, r, beta)
    batch = sample_batch(policy, 256, np.random.default_rng(0), ref=a)
    target = lab_fn(lab, log_scores)
    fk = FDPG(a, policy, target, FDPGOptions(f="kl", baseline=False))
    rl = RLHF(a, lab_fn(lab, r), RLHFOptions(beta=beta, kl="k1_seq", algo="reinforce"))
    _, c_f, _ = fk.coefficients(policy, batch)
    r_batch = checked_rewards(rl.reward_fn, batch)
    c_r = batch.weights * (r_batch - beta * (batch.log_q - batch.log_ref))
    shift = c_f - c_r / beta
    assert np.ptp(shift / batch.weights) < 1e-8  # one constant per sample: log Z + 1 (estimated)
    _, c_fr, _ = FDPG(a, policy, target, FDPGOptions(f="reverse_kl", baseline=False)).coefficients(policy, batch)
    _, c_d = DPG(a, policy, target, proposal="policy").coefficients(policy, batch)
    np.testing.assert_allclose(c_fr, c_d, rtol=1e-10)


def test_bad_inputs_raise_clear_errors():
    a, policy, lab, r, beta = tiny_lab(11)
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        RLHF(a, lab_fn(lab, r), RLHFOptions(beta=0.0))
    with pytest.raises(ValueError, match="unknown KL mode"):
        RLHF(a, lab_fn(lab, r), RLHFOptions(kl="k4"))
    with pytest.raises(ValueError, match="unknown"):
        FDPG(a, policy, lab_fn(lab, r), FDPGOptions(f="bogus"))
    batch = sample_batch(policy, 8, np.random.default_rng(0), ref=a)
    with pytest.raises(ValueError, match="NaN or inf"):
        RLHF(a, lambda b: np.full(len(b), np.nan)).loss(policy, batch)
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        FDPG(a, policy, lambda b: np.full(len(b), np.nan)).loss(policy, batch)
    no_mass = FDPG(a, policy, lambda b: np.full(len(b), -np.inf))
    for _ in range(no_mass.log_z.patience - 1):  # a batch without mass is a valid estimate of Z = 0 ...
        loss, _ = no_mass.loss(policy, batch)
        assert loss.item() == 0.0
    with pytest.raises(FloatingPointError, match="underflowed"):  # ... but not batch after batch
        no_mass.loss(policy, batch)


def test_an_interrupted_run_keeps_its_checkpoint_and_resumes(tmp_path):
    a, policy, lab, r, beta = tiny_lab(12, scale=0.3)
    method = RLHF(a, lab_fn(lab, r), RLHFOptions(beta=beta))
    out = tmp_path / "run.npz"

    def interrupt(batch):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return {}

    calls = []
    with pytest.raises(KeyboardInterrupt):
        train(method, policy, TrainConfig(steps=10, batch_size=8, checkpoint_every=100), out=out, progress=False,
              hooks=Hooks(metrics_fn=interrupt))
    from minialign import load

    state = load(out)
    assert state["step"] == 3  # three finished steps were written although no regular checkpoint was due
    hist = train(method, policy, TrainConfig(steps=10, batch_size=8, checkpoint_every=100), out=out, progress=False)
    assert len(hist["loss"]) == 10 and load(out)["step"] == 10


@pytest.mark.task5_3
def test_ppo_clip_coefficients_are_the_gradient_of_the_clipped_objective():
    """Eq. (5.12): the coefficients are ∂/∂log π_i of Σ_i w_i min(ρ_i A_i, clip(ρ_i, 1−ε, 1+ε) A_i), ρ = e^{log π − log
    π_old}, by central differences, for ratios on both sides of the clip and advantages of both signs; the
    clipped fraction counts the samples whose clip is active."""
    from minialign.tensor import Tensor
    from minialign.trainers.policy_gradient import ppo_clip_coefficients

    rng = np.random.default_rng(0)
    n, clip = 64, 0.2
    log_old = rng.normal(size=n)
    log_ratio = rng.uniform(-0.6, 0.6, size=n)
    log_ratio[np.abs(np.exp(log_ratio) - (1 - clip)) < 1e-3] += 0.01  # keep clear of the kinks
    log_ratio[np.abs(np.exp(log_ratio) - (1 + clip)) < 1e-3] += 0.01
    adv, w = rng.normal(size=n), rng.uniform(0.5, 1.5, size=n)

    def objective(logp):
        rho = np.exp(logp - log_old)
        return np.sum(w * np.minimum(rho * adv, np.clip(rho, 1 - clip, 1 + clip) * adv))

    logp = log_old + log_ratio
    coef, fraction = ppo_clip_coefficients(Tensor(logp), log_old, adv, w, clip)
    numeric = np.array([(objective(logp + 1e-6 * e) - objective(logp - 1e-6 * e)) / 2e-6 for e in np.eye(n)])
    assert_close(coef, numeric, rtol=1e-6, atol=1e-8)
    active = np.sum((np.exp(log_ratio) * adv) > (np.clip(np.exp(log_ratio), 1 - clip, 1 + clip) * adv))
    assert 0 < active < n and fraction == pytest.approx(active / n)


# ------------------------------------------------------------------------------------------- Eq. (5.9), entry by entry
@pytest.mark.task5_4
@pytest.mark.parametrize("kind", ["k2_loss", "k3_loss"])
def test_kl_loss_value_and_gradient_entry_by_entry_with_weights_and_padding(kind):
    """Σ_i w_i Σ_t k(d_t), d = log a_t − log π_t, k2 = ½d², k3 = e^d − 1 − d, with a different weight per row and
    padding (d = 0); its gradient in log π_t is w_i·(−d) for k2 and w_i·(1 − e^d) for k3, entry by entry. Any
    other kind is refused."""
    from minialign.tensor import Tensor
    from minialign.trainers.policy_gradient import kl_loss

    rng = np.random.default_rng(3)
    logp, ref = rng.normal(-1.5, 0.7, (3, 4)), rng.normal(-1.5, 0.7, (3, 4))
    logp[2, 2:] = ref[2, 2:] = 0.0  # padding
    w = np.array([0.5, 2.0, 1.25])
    d = ref - logp
    per_token = 0.5 * d * d if kind == "k2_loss" else np.exp(d) - 1 - d
    grad = -d if kind == "k2_loss" else 1 - np.exp(d)
    t = Tensor(logp.copy(), requires_grad=True)
    loss = kl_loss(t, ref, w, kind)
    assert_close(loss.item(), (per_token.sum(axis=1) * w).sum(), rtol=1e-12, what=f"{kind} loss")
    loss.backward()
    assert_close(t.grad, w[:, None] * grad, rtol=1e-12, atol=1e-15, what=f"∂({kind})/∂log π_t")
    for bad in ("k1_seq", "k2", "K3_LOSS"):
        with pytest.raises(ValueError):
            kl_loss(Tensor(logp), ref, w, bad)


# ------------------------------------------------------------------------------------------- Eq. (5.8), entry by entry
class _FreeTokens:
    """A policy stand-in whose token log-probabilities are free parameters θ [B, L] (the loss's gradient in θ is
    then each token's coefficient); the reference is one with fixed token log-probabilities."""

    def __init__(self, logp_tok, requires_grad=True):
        from minialign.tensor import Tensor

        self.t = Tensor(np.array(logp_tok, dtype=np.float64), requires_grad=requires_grad)

    def token_logprobs(self, tokens, prompt_len=None):
        return self.t

    def sequence_logprob(self, tokens, prompt_len=None):
        return self.t.sum(axis=1)


@pytest.mark.task5_2
@pytest.mark.parametrize("group", [None, [0, 1, 0, 1, 1]])
@pytest.mark.parametrize("kl", ["k1_seq", "k2_loss", "k3_loss"])
def test_rloo_advantage_entry_by_entry_with_the_kl_in_the_reward_only_when_asked(kl, group):
    """With kl = 'k1_seq' the return is R = r − β(log q − log a), otherwise R = r (the KL then enters the loss,
    whose own gradient is β·w·∂k/∂log π_t); the advantage is R minus the leave-one-out mean of the other R of
    the same group (prompt), checked entry by entry through the loss's gradient in each token's log π."""
    from minialign.trainers.common import Batch
    from minialign.trainers.policy_gradient import leave_one_out_baseline

    rng = np.random.default_rng(4)
    logp_tok, ref_tok = rng.normal(-1.0, 0.5, (5, 3)), rng.normal(-1.0, 0.5, (5, 3))
    logp_tok[:, 2] = ref_tok[:, 2] = 0.0  # a padding column
    r = np.array([1.0, -0.5, 2.0, 0.3, -1.2])
    w = np.full(5, 0.2)
    beta = 0.7
    batch = Batch(np.zeros((5, 3), dtype=np.int64), w, logp_tok.sum(axis=1), ref_tok.sum(axis=1),
                  group=None if group is None else np.array(group))
    policy, ref = _FreeTokens(logp_tok), _FreeTokens(ref_tok, requires_grad=False)
    method = RLHF(ref, lambda b: r, RLHFOptions(beta=beta, kl=kl, algo="rloo"))
    loss, _ = method.loss(policy, batch)
    loss.backward()
    returns = r - beta * (batch.log_q - batch.log_ref) if kl == "k1_seq" else r
    adv = returns - leave_one_out_baseline(returns, None if group is None else np.array(group))
    expected = -np.broadcast_to((w * adv)[:, None], logp_tok.shape).copy()
    d = ref_tok - logp_tok
    if kl != "k1_seq":
        expected += beta * w[:, None] * (-d if kl == "k2_loss" else 1 - np.exp(d))
    assert_close(policy.t.grad, expected, rtol=1e-10, atol=1e-14,
                 what=f"∂loss/∂log π_t (kl={kl}, groups={group}): −w·A plus the KL term's gradient")
