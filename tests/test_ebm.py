"""GDC's target (chapter 06): the EBM of Eq. (6.3), moment matching by the dual of Eq. (6.4), SNIS (Eq. 6.5).

The exact lab holds every sequence of a tiny float64 GPT a, so expectations, Z and KL are exact sums and
the I-projection property can be checked directly.
"""
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close, assert_equal
from hypothesis import given, settings
from hypothesis import strategies as st

from minialign import ebm
from minialign.ebm import (
    DEFAULT_POINTWISE,
    EBM,
    Feature,
    Pointwise,
    dual,
    fit_lambda_exact,
    fit_lambda_snis,
    fit_names_ebm,
    log_scores,
    parse_constraint,
)
from minialign.gpt import GPT, GPTConfig
from minialign.lab import ExactLab
from minialign.tensor import Tensor

BASE_NPZ = Path(ebm.__file__).parent / "data" / "base.npz"


def tiny_base(seed=0, vocab_size=4, block_size=5, scale=0.5):
    """A tiny float64 GPT with weights pushed away from the init, so that a is far from uniform."""
    cfg = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=8)
    model = GPT(cfg, seed=seed).astype(np.float64)
    rng = np.random.default_rng(seed + 100)
    for p in model.parameters():
        p.data = p.data + scale * rng.standard_normal(p.shape)
    return model


def lab_and_base(seed=0):
    """A tiny float64 GPT (vocab 4, horizon 5: 121 sequences) as a, its lab and log a."""
    model = tiny_base(seed)
    lab = ExactLab.for_model(model)
    return lab, lab.log_probs(model).numpy()


def random_instance(seed, k, with_b=True):
    """Random features φ [S, k], a random pointwise mask b (≈70% of sequences) and a reachable μ̄: the
    moments of the tilt of a·b by a random λ (so μ̄ lies strictly inside the reachable set)."""
    lab, log_a = lab_and_base(seed % 3)
    rng = np.random.default_rng(seed)
    phi = rng.normal(size=(len(lab), k))
    b = rng.random(len(lab)) < 0.7 if with_b else np.ones(len(lab), dtype=bool)
    lam_true = rng.normal(size=k) * 0.5
    log_p, _ = lab.normalise(log_scores(log_a, b, phi, lam_true))
    mu_bar = np.exp(log_p) @ phi
    return lab, log_a, b, phi, mu_bar, lam_true


def kl(log_q, log_p):
    """KL(q‖p) = Σ_x q(x) (log q(x) − log p(x)) from normalised logs, 0·log 0 = 0."""
    q = np.exp(log_q)
    on = q > 0
    return float(np.sum(q[on] * (log_q[on] - log_p[on])))


def target(lab, log_a, b, phi, lam):
    return lab.normalise(log_scores(log_a, b, phi, lam))


# ------------------------------------------------------------------------------------ moment matching


@pytest.mark.task6_1
@pytest.mark.parametrize("seed,k,with_b", [(0, 1, True), (1, 2, True), (2, 3, False), (3, 4, True)])
def test_fitted_lambda_matches_the_moments(seed, k, with_b):
    lab, log_a, b, phi, mu_bar, lam_true = random_instance(seed, k, with_b)
    fit = fit_lambda_exact(log_a, b, phi, mu_bar)
    log_p, log_z = target(lab, log_a, b, phi, fit.lam)
    assert_close(np.exp(log_p) @ phi, mu_bar, rtol=0, atol=1e-9)
    assert fit.moment_error <= 1e-10
    assert_close(fit.log_z, log_z, rtol=0, atol=1e-12)
    # Cov_p(φ) is non-singular here, so the minimiser is unique: the λ that produced μ̄
    assert_close(fit.lam, lam_true, rtol=0, atol=1e-7)
    lam, err = fit  # unpacks as (λ, moment error)
    assert lam is fit.lam and err == fit.moment_error
    # log a may come straight from the lab as a Tensor
    assert_equal(fit_lambda_exact(Tensor(log_a), b, phi, mu_bar).lam, fit.lam)


@pytest.mark.task6_1
def test_dual_gradient_is_moment_gap_and_hessian_is_covariance():
    """Eq. (6.4) checked against central differences of L(λ) = log Z(λ) − λ·μ̄."""
    lab, log_a, b, phi, mu_bar, _ = random_instance(5, 3)
    lam = np.array([0.3, -0.2, 0.1])
    value, grad, hess = dual(log_a, b, phi, mu_bar, lam)
    log_p, log_z = target(lab, log_a, b, phi, lam)
    p = np.exp(log_p)
    assert_close(value, log_z - lam @ mu_bar, rtol=1e-13)
    assert_close(grad, p @ phi - mu_bar, atol=1e-13, rtol=1e-7)
    h = 1e-5
    eye = np.eye(3)
    fd_grad = [(dual(log_a, b, phi, mu_bar, lam + h * e)[0] - dual(log_a, b, phi, mu_bar, lam - h * e)[0]) / (2 * h)
               for e in eye]
    fd_hess = [(dual(log_a, b, phi, mu_bar, lam + h * e)[1] - dual(log_a, b, phi, mu_bar, lam - h * e)[1]) / (2 * h)
               for e in eye]
    assert_close(fd_grad, grad, atol=1e-8, rtol=1e-7)
    assert_close(fd_hess, hess, atol=1e-8, rtol=1e-7)
    assert np.linalg.eigvalsh(hess).min() > 0  # convex


def test_dual_minimiser_agrees_with_scipy():
    optimize = pytest.importorskip("scipy.optimize")
    lab, log_a, b, phi, mu_bar, _ = random_instance(11, 3)
    fit = fit_lambda_exact(log_a, b, phi, mu_bar)
    res = optimize.minimize(lambda l: dual(log_a, b, phi, mu_bar, l)[0], np.zeros(3),
                            jac=lambda l: dual(log_a, b, phi, mu_bar, l)[1], method="BFGS", options={"gtol": 1e-10})
    np.testing.assert_allclose(fit.lam, res.x, rtol=0, atol=1e-6)
    assert dual(log_a, b, phi, mu_bar, fit.lam)[0] <= res.fun + 1e-12


def test_linearly_dependent_features_are_handled():
    """φ₂ = 1 − φ₁ on every sequence: the Hessian is singular, λ is not unique, the moments still match."""
    lab, log_a, b, phi, _, _ = random_instance(4, 1)
    ind = (phi[:, 0] > 0).astype(float)
    both = np.stack([ind, 1 - ind], axis=1)
    fit = fit_lambda_exact(log_a, b, both, [0.3, 0.7])
    log_p, _ = target(lab, log_a, b, both, fit.lam)
    np.testing.assert_allclose(np.exp(log_p) @ both, [0.3, 0.7], atol=1e-9)


# ------------------------------------------------------------------------------------ the I-projection


@settings(max_examples=25)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 3))
def test_pythagorean_identity_for_every_feasible_q(seed, k):
    """For q meeting the constraints, KL(q‖a) = KL(q‖p) + KL(p‖a), so p (Eq. 6.3) is the I-projection (6.2).

    Feasible q ≠ p: reweight p by a random positive function, then tilt the result back onto the
    constraints (an I-projection of that distribution, fitted by the same solver).
    """
    lab, log_a, b, phi, mu_bar, _ = random_instance(seed, k)
    fit = fit_lambda_exact(log_a, b, phi, mu_bar)
    log_p, _ = target(lab, log_a, b, phi, fit.lam)
    rng = np.random.default_rng(seed + 1)
    log_r = log_p + rng.normal(size=len(lab))  # −inf stays −inf where b = 0
    back = fit_lambda_exact(log_r, b, phi, mu_bar)
    log_q, _ = target(lab, log_r, b, phi, back.lam)
    np.testing.assert_allclose(np.exp(log_q) @ phi, mu_bar, atol=1e-9)  # q is feasible
    kl_qa, kl_qp, kl_pa = kl(log_q, log_a), kl(log_q, log_p), kl(log_p, log_a)
    np.testing.assert_allclose(kl_qa, kl_qp + kl_pa, rtol=1e-9, atol=1e-10)
    assert kl_qp > 1e-6 and kl_qa > kl_pa


def test_p_beats_mixtures_of_perturbed_tilts_that_meet_the_constraint():
    """q = α p_{λ+δ} + (1−α) p_{λ−δ} with α chosen so that E_q[φ] = μ̄: a feasible q that is not an
    exponential tilt of a; KL(q‖a) exceeds KL(p‖a) by at least KL(q‖p) (and the library's KL agrees)."""
    lab, log_a, b, phi, mu_bar, _ = random_instance(7, 1)
    lam = fit_lambda_exact(log_a, b, phi, mu_bar).lam
    log_p, _ = target(lab, log_a, b, phi, lam)
    p, a = np.exp(log_p), np.exp(log_a)
    for delta in (0.05, 0.5, 2.0):
        hi = np.exp(target(lab, log_a, b, phi, lam + delta)[0])
        lo = np.exp(target(lab, log_a, b, phi, lam - delta)[0])
        m_hi, m_lo = hi @ phi[:, 0], lo @ phi[:, 0]
        assert m_lo < mu_bar[0] < m_hi  # the moment increases with λ (its derivative is a variance)
        alpha = (mu_bar[0] - m_lo) / (m_hi - m_lo)
        q = alpha * hi + (1 - alpha) * lo
        np.testing.assert_allclose(q @ phi[:, 0], mu_bar[0], atol=1e-12)
        kl_qa, kl_pa = lab.divergence("kl", q, a), lab.divergence("kl", p, a)
        np.testing.assert_allclose(kl_pa, kl(log_p, log_a), rtol=1e-10)
        np.testing.assert_allclose(kl_qa, lab.divergence("kl", q, p) + kl_pa, rtol=1e-9)
        assert kl_qa > kl_pa


def test_pointwise_only_target_is_a_conditioned_on_b_and_z_is_the_acceptance_rate():
    lab, log_a, b, _, _, _ = random_instance(2, 1)
    a = np.exp(log_a)
    fit = fit_lambda_exact(log_a, b, np.zeros((len(lab), 0)), [])
    assert fit.lam.shape == (0,) and fit.moment_error == 0.0
    np.testing.assert_allclose(np.exp(fit.log_z), a[b].sum(), rtol=1e-13)
    log_p, log_z = lab.normalise(log_scores(log_a, b, np.zeros((len(lab), 0)), []))
    np.testing.assert_allclose(np.exp(log_p), np.where(b, a, 0) / a[b].sum(), rtol=1e-12, atol=0)
    np.testing.assert_allclose(log_z, fit.log_z, rtol=1e-13)
    # SNIS with no features: Z is the fraction of samples of a that b accepts
    idx = lab.sample(a, 5000, rng=0)
    snis = fit_lambda_snis(np.zeros((5000, 0)), b[idx], [])
    np.testing.assert_allclose(np.exp(snis.log_z), b[idx].mean(), rtol=1e-13)


# ------------------------------------------------------------------------------------ SNIS


def test_snis_lambda_converges_to_the_exact_lambda():
    """λ̂_n from n samples of a (Eq. 6.5) → λ*. Its asymptotic covariance is H⁻¹ S H⁻¹ / n with
    H = Cov_p(φ) and S = E_a[w² (φ − μ̄)(φ − μ̄)ᵀ]/E_a[w]², computed exactly on the lab; each coordinate
    must lie within 5 standard deviations σ_i/√n of the exact λ, and the error must shrink with n."""
    lab, log_a, b, phi, mu_bar, _ = random_instance(8, 2)
    exact = fit_lambda_exact(log_a, b, phi, mu_bar)
    log_p, _ = target(lab, log_a, b, phi, exact.lam)
    a, p = np.exp(log_a), np.exp(log_p)
    w = np.where(b, np.exp(phi @ exact.lam), 0.0)
    c = phi - mu_bar
    S = np.einsum("x,xi,xj->ij", a * w * w, c, c) / (a @ w) ** 2
    H_inv = np.linalg.inv(np.einsum("x,xi,xj->ij", p, c, c))
    sigma = np.sqrt(np.diag(H_inv @ S @ H_inv))
    rng = np.random.default_rng(0)
    errors = []
    for n in (2_000, 20_000, 200_000):
        idx = lab.sample(a, n, rng)
        fit = fit_lambda_snis(phi[idx], b[idx], mu_bar)
        assert fit.moment_error <= 1e-10  # matched on the sample
        assert np.all(np.abs(fit.lam - exact.lam) <= 5 * sigma / np.sqrt(n)), (n, fit.lam, exact.lam, sigma)
        errors.append(np.abs(fit.lam - exact.lam).max())
    assert errors[-1] < errors[0] / 3


# ------------------------------------------------------------------------------------ errors


def test_unreachable_moments_are_reported_as_infeasible():
    lab, log_a, b, phi, _, _ = random_instance(3, 1)
    with pytest.raises(ValueError, match=r"infeasible constraint: μ̄\[0\] = 100 lies outside \[.*\]"):
        fit_lambda_exact(log_a, b, phi, [100.0])
    ind = (phi[:, 0] > 0).astype(float)
    only_zeros = b & (ind == 0)
    with pytest.raises(ValueError, match=r"μ̄\[0\] = 1 lies outside \[0, 0\].*λ → ±∞"):
        fit_lambda_exact(log_a, only_zeros, ind, [1.0])  # no supported point has φ = 1
    with pytest.raises(ValueError, match=r"on the boundary of \[0, 1\].*\+∞"):
        fit_lambda_exact(log_a, b, ind, [1.0])
    with pytest.raises(ValueError, match=r"on the boundary.*−∞"):
        fit_lambda_snis(ind[:50], None, [0.0])
    # inside each coordinate's range but outside the convex hull: φ₁ = φ₂ everywhere, μ̄ asks for 0.3 and 0.6
    with pytest.raises(ValueError, match="the features satisfy the linear relation .* but μ̄ = .* gives"):
        fit_lambda_exact(log_a, b, np.stack([ind, ind], axis=1), [0.3, 0.6])
    # inside the box [0, 1]² but outside the triangle of the points (0, 0), (1, 0), (0, 1)
    corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]] * 40)
    with pytest.raises(ValueError, match="infeasible constraint: moment matching did not reach μ̄"):
        fit_lambda_snis(corners, None, [0.6, 0.6])
    np.testing.assert_allclose(fit_lambda_snis(corners, None, [0.45, 0.45]).moments, [0.45, 0.45], atol=1e-10)


def test_no_mass_under_the_pointwise_constraints_is_an_error():
    lab, log_a, b, phi, mu_bar, _ = random_instance(3, 1)
    with pytest.raises(ValueError, match="no sequence with a\\(x\\) > 0 satisfies the pointwise constraints"):
        fit_lambda_exact(log_a, np.zeros(len(lab), dtype=bool), phi, mu_bar)
    with pytest.raises(ValueError, match="0 of 500 samples have b = 1"):
        fit_lambda_snis(phi[np.arange(500) % len(lab)], np.zeros(500, dtype=bool), mu_bar)


def test_bad_arrays_are_rejected_with_what_was_expected():
    lab, log_a, b, phi, mu_bar, _ = random_instance(3, 2)
    with pytest.raises(ValueError, match="log a contains NaN or \\+inf"):
        fit_lambda_exact(np.where(b, log_a, np.nan), b, phi, mu_bar)
    with pytest.raises(ValueError, match="μ̄ must have one entry per feature \\(2\\)"):
        fit_lambda_exact(log_a, b, phi, [0.1])
    bad = phi.copy()
    bad[4, 1] = np.inf
    with pytest.raises(ValueError, match="non-finite value \\(inf\\) in feature column 1 at row 4"):
        fit_lambda_exact(log_a, b, bad, mu_bar)
    with pytest.raises(ValueError, match="φ must have shape"):
        fit_lambda_exact(log_a, b, phi[:-1], mu_bar)
    with pytest.raises(ValueError, match="b must be booleans"):
        fit_lambda_exact(log_a, np.full(len(lab), 0.5), phi, mu_bar)


# ------------------------------------------------------------------------------------ constraints on names


def test_registry_predicates():
    names = ["zoe", "mary", "kaz", "", "oz"]
    np.testing.assert_array_equal(parse_constraint("contains:z")(names), [True, False, True, False, True])
    np.testing.assert_array_equal(parse_constraint("startswith:ma")(names), [False, True, False, False, False])
    np.testing.assert_array_equal(parse_constraint("endswith:z").log_b(names), [-np.inf, -np.inf, 0, -np.inf, 0])
    phi, mu = parse_constraint("female=0.5")
    assert isinstance(phi, Feature) and phi.binary and mu == 0.5
    np.testing.assert_array_equal(phi(["mary", "john"]), [1.0, 0.0])
    assert isinstance(parse_constraint("female"), Pointwise)
    phi, mu = parse_constraint(" contains:z = 0.2 ")
    assert phi.name == "contains:z" and mu == 0.2
    np.testing.assert_array_equal(phi(names), [1.0, 0.0, 1.0, 0.0, 1.0])
    assert parse_constraint(DEFAULT_POINTWISE).name == DEFAULT_POINTWISE


def test_constraint_errors_name_what_is_known_and_what_was_given():
    with pytest.raises(ValueError, match="unknown constraint 'male'; known: female, contains:<letters>, "
                                         "startswith:<prefix>, endswith:<suffix>"):
        parse_constraint("male=0.5")
    with pytest.raises(ValueError, match="unknown constraint 'length:3'; known: female"):
        parse_constraint("length:3")
    with pytest.raises(ValueError, match="must lie in \\[0, 1\\]; got 1.5"):
        parse_constraint("female=1.5")
    with pytest.raises(ValueError, match="must lie in \\[0, 1\\]; got -0.1"):
        parse_constraint("contains:z=-0.1")
    with pytest.raises(ValueError, match="must lie in \\[0, 1\\]; got nan"):
        parse_constraint("female=nan")
    with pytest.raises(ValueError, match="must be a number; got 'half'"):
        parse_constraint("female=half")
    with pytest.raises(ValueError, match="needs one or more letters a-z after 'contains:'; got 'Z1'"):
        parse_constraint("contains:Z1")


def test_ebm_log_score_is_log_a_plus_log_b_plus_tilt():
    female, _ = parse_constraint("female=0.5")
    length = Feature("length", lambda names: [len(n) for n in names])
    model = EBM([female, length], [-1.5, 0.25], [parse_constraint("contains:a")])
    names = ["mary", "john", "anna", "zzz"]
    log_a = np.array([-3.0, -4.0, -5.0, -9.0])
    expected = log_a + np.array([-1.5 * 1 + 0.25 * 4, -np.inf, -1.5 * 1 + 0.25 * 4, -np.inf])
    expected[1] = -np.inf  # john has no 'a'
    np.testing.assert_allclose(model.log_score(names, log_a), expected)
    assert "contains:a" in repr(model) and "female" in repr(model)


def test_ebm_rejects_non_finite_energies_naming_the_feature():
    bad = Feature("bad", lambda names: [np.nan] * len(names))
    with pytest.raises(ValueError, match="feature 'bad' gave nan for name 'ann'"):
        EBM([bad], [1.0]).log_score(["ann"], [-1.0])
    big = Feature("big", lambda names: [1e300] * len(names))
    with pytest.raises(ValueError, match="energy λ·φ of feature 'big' is not finite"):
        EBM([big], [1e10]).log_score(["ann"], [-1.0])
    with pytest.raises(ValueError, match="λ must be finite"):
        EBM([big], [np.inf])
    with pytest.raises(ValueError, match="binary feature 'half' gave 0.5"):
        Feature("half", lambda names: [0.5] * len(names), binary=True)(["ann"])
    with pytest.raises(ValueError, match="log a contains NaN or \\+inf"):
        EBM().log_score(["ann"], [np.inf])


def names_gpt(seed=0):
    """A small untrained names-shaped GPT (vocab 27, block 8) with large random weights: it spells random
    strings, so each letter appears in a few percent of its samples."""
    cfg = GPTConfig(vocab_size=27, block_size=8, n_layer=1, n_head=1, n_embd=8)
    model = GPT(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data = p.data + 0.3 * rng.standard_normal(p.shape).astype(p.data.dtype)
    return model


def test_fit_names_ebm_reports_what_it_measured():
    model = names_gpt(1)
    model_ebm, report = fit_names_ebm(model, ["female=0.5", "contains:e"], n_samples=3000, seed=0)
    assert report.n_samples == 3000 and 0 < report.n_accepted < 3000
    assert report.acceptance_rate == report.n_accepted / 3000 == report.base_rates["contains:e"]
    assert report.moment_error <= 1e-10 and abs(report.moments["female"] - 0.5) <= 1e-10
    assert report.lam["female"] == model_ebm.lam[0] and report.mu_bar == {"female": 0.5}
    assert all("e" in n for n in report.examples) and "acceptance rate" in str(report)
    # the same fit from the same seed, by hand
    tokens = np.concatenate([model.generate(3000, np.random.default_rng(0))[0]])
    names = ebm.names_of(tokens)
    fit = fit_lambda_snis(model_ebm.phi(names), model_ebm.b(names), [0.5])
    np.testing.assert_allclose(fit.lam, model_ebm.lam, rtol=1e-12)


def test_fit_names_ebm_rejects_what_its_sample_cannot_meet():
    with pytest.raises(ValueError, match="no sample meets contains:qqqqq: 0 of 300 samples of a"):
        fit_names_ebm(names_gpt(2), ["contains:qqqqq"], n_samples=300, seed=0)
    # every accepted sample ends in e, so the feature "ends in e" is 1 on all of them: μ̄ = 0.5 is out of reach
    with pytest.raises(ValueError, match=r"μ̄\[endswith:e\] = 0.5 lies outside \[1, 1\].*samples with b = 1"):
        fit_names_ebm(names_gpt(2), ["endswith:e", "endswith:e=0.5"], n_samples=300, seed=0)


@pytest.mark.skipif(not BASE_NPZ.exists(), reason="the pretrained base model minialign/data/base.npz is absent")
def test_default_pointwise_constraint_is_rare_under_the_base_model():
    """The default pointwise constraint has a base rate of a few percent under the pretrained model."""
    _, report = fit_names_ebm(GPT.load(BASE_NPZ), [DEFAULT_POINTWISE, "female=0.5"], n_samples=4000, seed=0)
    assert 0.005 <= report.acceptance_rate <= 0.08, report.acceptance_rate
    assert report.moment_error <= 1e-10
