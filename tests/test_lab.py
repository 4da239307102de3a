"""The exact lab: enumeration, normalisation, Monte-Carlo estimators against the truth, the gradient identity."""
import numpy as np
import pytest
from helpers import FAMILY

from minialign import divergences as D
from minialign.lab import ExactLab, fdiv_to_target, lab_model, score_function_gradient


def test_enumeration_counts_and_pads_every_sequence():
    lab = ExactLab(vocab_size=3, horizon=4)
    assert len(lab) == 1 + 2 + 4 + 8
    assert len({r.tobytes() for r in lab.sequences}) == len(lab)
    assert all((r[lab.lengths[i]:] == 0).all() and (r[:lab.lengths[i]] != 0).all() for i, r in enumerate(lab.sequences))
    np.testing.assert_array_equal(lab.index_of(lab.sequences), np.arange(len(lab)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_random_gpt_exact_distribution_sums_to_one(seed):
    model = lab_model(seed, vocab_size=4, block_size=4, scale=1.5)
    p = ExactLab.for_model(model).distribution(model)
    assert (p > 0).all()
    np.testing.assert_allclose(p.sum(), 1.0, rtol=0, atol=1e-12)


def test_normalise_returns_log_p_and_log_z():
    lab = ExactLab(3, 3)
    scores = np.random.default_rng(0).normal(size=len(lab)) * 3
    scores[2] = -np.inf
    log_p, log_z = lab.normalise(scores)
    np.testing.assert_allclose(np.exp(log_p).sum(), 1.0, rtol=1e-13)
    np.testing.assert_allclose(log_z, np.log(np.exp(scores).sum()), rtol=1e-13)
    assert np.exp(log_p[2]) == 0.0
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        lab.normalise(np.full(len(lab), np.nan))
    with pytest.raises(ValueError, match="no mass"):
        lab.normalise(np.full(len(lab), -np.inf))
    with pytest.raises(ValueError, match="one entry per enumerated sequence"):
        lab.normalise(np.zeros(3))


def test_lab_rejects_a_model_of_another_shape():
    with pytest.raises(ValueError, match="does not match the lab"):
        ExactLab(3, 5).log_probs(lab_model(0, vocab_size=3, block_size=4))


def test_exact_sampling_matches_the_vector():
    lab = ExactLab(3, 3)
    p = np.random.default_rng(1).dirichlet(np.ones(len(lab)))
    n = 40_000
    counts = np.bincount(lab.sample(p, n, rng=0), minlength=len(lab))
    assert np.all(np.abs(counts - n * p) <= 5 * np.sqrt(n * p * (1 - p)) + 1)


def close_pair(seed, block_size):
    """A model π and a = π with perturbed weights: close enough that the ratio a/π has light tails, so that
    sample standard deviations are trustworthy confidence bounds."""
    pi = lab_model(seed, vocab_size=3, block_size=block_size, scale=0.8)
    a = lab_model(seed, vocab_size=3, block_size=block_size, scale=0.8)
    rng = np.random.default_rng(seed + 1)
    for p in a.parameters():
        p.data = p.data + 0.15 * rng.standard_normal(p.shape)
    return pi, a


def test_monte_carlo_kl_estimators_converge_to_the_exact_value():
    """k1 and k3 from the model's own samples (via generate) are unbiased for KL(π‖a): the sample mean lies
    within 5 standard errors of the exact value; k2 converges to its own (biased) exact mean."""
    pi, a = close_pair(3, block_size=4)
    lab = ExactLab.for_model(pi)
    p_pi, p_a = lab.distribution(pi), lab.distribution(a)
    exact_kl = lab.divergence("kl", p_pi, p_a)
    rows, logq = pi.generate(20_000, rng=5)
    logp = a.sequence_logprob(rows).numpy()
    est = D.kl_estimators(logq, logp)
    n = len(rows)
    for name in ("k1", "k3"):
        values = getattr(est, name)
        assert abs(values.mean() - exact_kl) < 5 * values.std() / np.sqrt(n), name
    k2_exact = float(np.sum(p_pi * 0.5 * (np.log(p_a) - np.log(p_pi)) ** 2))
    assert abs(est.k2.mean() - k2_exact) < 5 * est.k2.std() / np.sqrt(n)
    assert 0.01 < exact_kl < 1.0


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "js", "tv", "hellinger"])
def test_monte_carlo_f_divergence_from_samples_converges(name):
    pi, a = close_pair(6, block_size=3)
    lab = ExactLab.for_model(pi)
    exact = lab.divergence(name, lab.distribution(a), lab.distribution(pi))  # D_f(a‖π) = E_π[f(a/π)]
    rows, log_pi = pi.generate(20_000, rng=8)
    log_a = a.sequence_logprob(rows).numpy()
    values = D.get(name).f_log(log_a - log_pi)
    estimate = D.mc_divergence(name, log_a, log_pi, from_="q")
    np.testing.assert_allclose(estimate, values.mean(), rtol=1e-12)
    assert abs(estimate - exact) < 5 * values.std() / np.sqrt(len(rows)) + 1e-12


@pytest.mark.parametrize("name", FAMILY)
def test_divergence_to_target_matches_the_exact_divergence(name):
    model = lab_model(9, vocab_size=3, block_size=4, scale=1.0)
    lab = ExactLab.for_model(model)
    log_p, _ = lab.normalise(np.random.default_rng(9).normal(size=len(lab)) * 2)
    value = fdiv_to_target(name, lab.log_probs(model), log_p).item()
    np.testing.assert_allclose(value, lab.divergence(name, lab.distribution(model), np.exp(log_p)), rtol=1e-10)


@pytest.mark.parametrize("name", FAMILY)
def test_gradient_identity_holds_for_every_f(name):
    """Eq. (3.21): ∇_θ D_f(π_θ‖p) (autograd through the enumeration) = E_{π_θ}[f'(π_θ/p) ∇_θ log π_θ]."""
    model = lab_model(10, vocab_size=3, block_size=4, scale=1.0)
    lab = ExactLab.for_model(model)
    log_p, _ = lab.normalise(np.random.default_rng(10).normal(size=len(lab)) * 2)
    model.zero_grad()
    fdiv_to_target(name, lab.log_probs(model), log_p).backward()
    autograd = {n: np.array(p.grad) for n, p in model.named_parameters()}
    pi = lab.distribution(model)
    weights = pi * D.get(name).f_prime(pi / np.exp(log_p))
    score = score_function_gradient(model, lab, weights)
    scale = max(np.abs(g).max() for g in autograd.values())
    assert scale > 1e-3  # the gradient is not trivially zero
    for n in autograd:  # float64 round-off relative to the largest gradient entry
        np.testing.assert_allclose(score[n], autograd[n], rtol=1e-8, atol=1e-10 * scale, err_msg=n)


def test_gradient_identity_would_fail_with_a_wrong_derivative():
    """The check has teeth: using f instead of f' as the pseudo-reward gives a different gradient."""
    model = lab_model(11, vocab_size=3, block_size=3, scale=1.0)
    lab = ExactLab.for_model(model)
    log_p, _ = lab.normalise(np.random.default_rng(11).normal(size=len(lab)))
    model.zero_grad()
    fdiv_to_target("js", lab.log_probs(model), log_p).backward()
    autograd = np.concatenate([np.ravel(p.grad) for p in model.parameters()])
    pi = lab.distribution(model)
    wrong = score_function_gradient(model, lab, pi * D.get("js").f(pi / np.exp(log_p)))
    wrong = np.concatenate([np.ravel(wrong[n]) for n, _ in model.named_parameters()])
    assert np.abs(wrong - autograd).max() > 1e-3
