"""Chapter 06 (GDC): the statements the chapter makes beyond tests/test_ebm.py and tests/test_gdc_exact.py.

- The I-projection is an exponential family: at the fitted λ the Lagrangian's stationarity condition holds
  (log p − log a − λ·φ is one constant, −log Z, on the support of a·b), and strong duality holds:
  KL(p‖a) = λ·μ̄ − log Z = −min_λ L(λ) (Eq. 6.3–6.4).
- Sampling an EBM by rejection costs 1/acceptance proposals per sample (Eq. 6.6), and its samples are exactly p.
- DPG's expected gradient is −∇KL(p‖π) for any proposal q, with and without GDC++'s baseline (Eq. 6.7–6.8).
- The importance-sampling estimates of Z and KL(p‖π) (Eq. 6.10) converge to the exact values.
- The tolerance the chapter accepts for "E_π[φ] = 0.5" (two binomial standard errors) has the coverage it claims.
- GDC's target for one distributional constraint is the optimum of KL-penalised RLHF with r = sign(λ)·φ and
  β = 1/|λ| (Eq. 6.12), exactly on the lab and sample by sample on names.

Everything but the names check of Eq. (6.12) runs on the exact lab (a tiny float64 GPT whose every sequence
is enumerated), so "exact" means a sum over the enumeration, not a large sample.
"""
import numpy as np
import pytest
from helpers import assert_close, assert_near

from minialign.ebm import dual, fit_lambda_exact, log_scores
from minialign.lab import ExactLab, autograd_of, exact_grad, fdiv_to_target, lab_fn, lab_model
from minialign.trainers.common import exact_batch, sample_batch
from minialign.trainers.gdc import DPG
from minialign.trainers.proposal import Scored


def lab_instance(seed=0):
    """a = a tiny float64 GPT (vocab 4 with EOS, horizon 5: 121 sequences); b = 'starts with token 1 or 2';
    φ = (number of 3s, length) — two features with a reachable target μ̄ (the moments of a random tilt)."""
    a = lab_model(seed, vocab_size=4, block_size=5, scale=0.5)
    lab = ExactLab.for_model(a)
    log_a = lab.log_probs(a).numpy()
    b = np.isin(lab.sequences[:, 0], (1, 2))
    phi = np.stack([(lab.sequences == 3).sum(axis=1), lab.lengths], axis=1).astype(float)
    lam_true = np.array([0.7, -0.4])
    log_p, _ = lab.normalise(log_scores(log_a, b, phi, lam_true))
    return a, lab, log_a, b, phi, np.exp(log_p) @ phi


def kl(p, q):
    on = p > 0
    return float(np.sum(p[on] * (np.log(p[on]) - np.log(q[on]))))


# ------------------------------------------------------------------------------ the exponential family


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_i_projection_satisfies_the_lagrangian_stationarity_condition(seed):
    """∂/∂q(x) [KL(q‖a) − λ·(E_q φ − μ̄) − ν(Σq − 1)] = log(q/a) + 1 − λ·φ − ν = 0 on supp(a·b): at the
    fitted λ, log p(x) − log a(x) − λ·φ(x) is the same number, −log Z, for every supported x. A distribution
    that meets the same constraints but is not the tilt (a mixture of two other tilts) fails the condition."""
    a, lab, log_a, b, phi, mu_bar = lab_instance(seed)
    fit = fit_lambda_exact(log_a, b, phi, mu_bar)
    log_p, log_z = lab.normalise(log_scores(log_a, b, phi, fit.lam))
    residual = log_p[b] - log_a[b] - phi[b] @ fit.lam
    np.testing.assert_allclose(residual, -log_z, rtol=0, atol=1e-10)
    assert np.all(np.isneginf(log_p[~b]))  # b(x) = 0: no mass, the constraint is pointwise
    # a feasible non-tilt: mix two tilts (λ ± δ along the first feature) so the first moment is met, then
    # check that the residual is no longer constant
    d = np.array([0.8, 0.0])
    hi = np.exp(lab.normalise(log_scores(log_a, b, phi, fit.lam + d))[0])
    lo = np.exp(lab.normalise(log_scores(log_a, b, phi, fit.lam - d))[0])
    alpha = (mu_bar[0] - lo @ phi[:, 0]) / (hi @ phi[:, 0] - lo @ phi[:, 0])
    q = alpha * hi + (1 - alpha) * lo
    r_q = np.log(q[b]) - log_a[b] - phi[b] @ fit.lam
    assert np.ptp(r_q) > 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_strong_duality_kl_of_the_projection_is_minus_the_dual_minimum(seed):
    """KL(p‖a) = E_p[log(P/(Za))] = λ·μ̄ − log Z = −L(λ*): the dual's minimum value is the KL cost of the
    constraints. (The chapter reads KL(p‖a) on names off the SNIS fit this way.)"""
    a, lab, log_a, b, phi, mu_bar = lab_instance(seed)
    fit = fit_lambda_exact(log_a, b, phi, mu_bar)
    p = np.exp(lab.normalise(log_scores(log_a, b, phi, fit.lam))[0])
    value, grad, _ = dual(log_a, b, phi, mu_bar, fit.lam)
    np.testing.assert_allclose(kl(p, np.exp(log_a)), -value, rtol=1e-10)
    np.testing.assert_allclose(kl(p, np.exp(log_a)), fit.lam @ mu_bar - fit.log_z, rtol=1e-10)
    # weak duality: every other λ gives a lower bound −L(λ) < KL(p‖a)
    rng = np.random.default_rng(seed)
    for _ in range(20):
        other = fit.lam + rng.normal(size=2)
        assert -dual(log_a, b, phi, mu_bar, other)[0] < kl(p, np.exp(log_a))


def test_pointwise_only_kl_cost_is_minus_log_acceptance_rate():
    """With b only, p = a(·|b) and KL(p‖a) = −log Z = −log P_a(b): a rare constraint is an expensive one."""
    a, lab, log_a, b, _, _ = lab_instance(0)
    z = np.exp(log_a)[b].sum()
    p = np.where(b, np.exp(log_a), 0.0) / z
    np.testing.assert_allclose(kl(p, np.exp(log_a)), -np.log(z), rtol=1e-12)


# ------------------------------------------------------------------------------ rejection sampling


def rejection_sample(rng, p_a, log_accept, n_accept):
    """Draw x ∼ a, keep it with probability e^{log_accept(x)} ≤ 1, until n_accept are kept.
    Returns (indices kept, proposals used)."""
    kept, used, chunk = [], 0, 4096
    accept = np.exp(log_accept)
    while len(kept) < n_accept:
        x = rng.choice(len(p_a), size=chunk, p=p_a)
        hits = np.flatnonzero(rng.random(chunk) < accept[x])
        need = n_accept - len(kept)
        if len(hits) >= need:  # done inside this chunk: count proposals up to the last one kept
            kept.extend(x[hits[:need]])
            used += int(hits[need - 1]) + 1
        else:
            kept.extend(x[hits])
            used += chunk
    return np.array(kept), used


@pytest.mark.parametrize("which", ["pointwise", "tilted"])
def test_rejection_sampling_costs_one_over_the_acceptance_rate(which):
    """Rejection sampling from a with acceptance probability P(x)/(M a(x)), M = max_x P(x)/a(x), returns exact
    samples of p and needs M/Z proposals per accepted sample on average (the acceptance rate is Z/M; for a
    pointwise constraint M = 1 and the rate is Z = P_a(b)). Simulated cost within 4 standard errors of the
    geometric mean 1/rate (SE from the geometric variance (1 − rate)/rate² over the accepted samples), and the
    kept samples match p by a chi-square test at level 10⁻³."""
    a, lab, log_a, b, phi, mu_bar = lab_instance(1)
    p_a = np.exp(log_a)
    p_a = p_a / p_a.sum()
    if which == "pointwise":
        log_ratio = np.where(b, 0.0, -np.inf)  # P/a = b
    else:
        lam = fit_lambda_exact(log_a, b, phi, mu_bar).lam
        log_ratio = np.where(b, phi @ lam, -np.inf)  # P/a = b e^{λ·φ}
    log_m = log_ratio[np.isfinite(log_ratio)].max()
    log_accept = log_ratio - log_m
    log_p, log_z = lab.normalise(log_a + log_ratio)
    rate = float(np.exp(log_z - log_m))  # Σ_x a(x) P(x)/(M a(x)) = Z/M
    n = 20_000
    kept, used = rejection_sample(np.random.default_rng(0), p_a, log_accept, n)
    cost, se = used / n, np.sqrt((1 - rate) / rate**2 / n)
    assert abs(cost - 1 / rate) < 4 * se, (cost, 1 / rate, se)
    if which == "pointwise":
        np.testing.assert_allclose(rate, p_a[b].sum(), rtol=1e-12)
    stats = pytest.importorskip("scipy.stats")
    p = np.exp(log_p)
    counts = np.bincount(kept, minlength=len(lab))
    support = p > 0
    assert counts[~support].sum() == 0
    big = support & (p * n >= 5)  # pool cells with expected count < 5
    obs = np.append(counts[big], counts[support & ~big].sum())
    exp = np.append(p[big] * n, p[support & ~big].sum() * n)
    keep = exp > 0
    assert stats.chisquare(obs[keep], exp[keep]).pvalue > 1e-3


def test_rejection_sampling_cost_grows_as_the_constraint_gets_rarer():
    """The same pointwise rule on rarer constraints: cost = 1/P_a(b) exactly (the geometric mean), so a
    constraint met by 5% of a's samples costs 20 proposals per sample."""
    a, lab, log_a, _, _, _ = lab_instance(2)
    p_a = np.exp(log_a)
    order = np.argsort(p_a)  # b = the k least likely sequences: rarer and rarer as k shrinks (17%, 10%, 5%)
    rates = []
    for k in (110, 100, 90):
        b = np.zeros(len(lab), dtype=bool)
        b[order[:k]] = True
        rate = p_a[b].sum()
        _, used = rejection_sample(np.random.default_rng(k), p_a / p_a.sum(), np.where(b, 0.0, -np.inf), 3000)
        se = np.sqrt((1 - rate) / rate**2 / 3000)
        assert abs(used / 3000 - 1 / rate) < 4 * se
        rates.append(rate)
    assert rates[0] > rates[1] > rates[2]


# ------------------------------------------------------------------------------ DPG and GDC++


@pytest.mark.parametrize("baseline", [pytest.param(False, marks=pytest.mark.task6_2),
                                      pytest.param(True, marks=pytest.mark.task6_3)])
def test_dpg_expected_gradient_is_minus_grad_kl_p_pi_from_any_proposal(baseline):
    """Eq. (6.7)–(6.8) exactly: on the exact batch of a proposal q (here q = a, while π ≠ a), the DPG loss's
    gradient is Σ_x q(x)·[P(x)/(Z q(x))]·(−∇ log π(x)) = ∇KL(p‖π), and GDC++'s baseline −π/q changes nothing in
    expectation. Compared with autograd through the whole enumeration of KL(p‖π), to 10⁻⁸ relative."""
    a, lab, log_a, b, phi, mu_bar = lab_instance(0)
    policy = lab_model(0, vocab_size=4, block_size=5, scale=0.5)
    rng = np.random.default_rng(3)
    for p in policy.parameters():
        p.data = p.data + 0.3 * rng.standard_normal(p.shape)
        p.requires_grad = True
    lam = fit_lambda_exact(log_a, b, phi, mu_bar).lam
    scores = log_scores(log_a, b, phi, lam)
    log_p, log_z = lab.normalise(scores)
    method = DPG(a, a, lab_fn(lab, scores), proposal="fixed", baseline=baseline, log_z=log_z)
    g = exact_grad(method, policy, exact_batch(lab, a, ref=a))
    truth = autograd_of(policy, lambda: fdiv_to_target("reverse_kl", lab.log_probs(policy), log_p))
    assert_near(g, truth, rel=1e-8)
    # the gradient is not trivially small: π is far from p
    assert np.linalg.norm(truth) > 1e-2


@pytest.mark.task6_4
def test_importance_sampling_estimates_of_z_and_kl_p_pi_converge():
    """Eq. (6.10): Ẑ = mean_q[P/q] and KL̂(p‖π) = mean_q[(P/(Ẑq))(log P − log Ẑ − log π)] from samples of q
    (as ProposalMethod.adapt computes them) converge to the exact log Z and KL(p‖π): error within 5 standard
    errors (delta method, estimated from the sample) at n = 20 000, and shrinking from n = 500."""
    a, lab, log_a, b, phi, mu_bar = lab_instance(2)
    policy = lab_model(5, vocab_size=4, block_size=5, scale=0.5)
    lam = fit_lambda_exact(log_a, b, phi, mu_bar).lam
    scores = log_scores(log_a, b, phi, lam)
    log_p, log_z = lab.normalise(scores)
    p, pi = np.exp(log_p), lab.distribution(policy)
    exact_kl = kl(p, pi)
    log_pi_all = np.log(pi)
    errors = []
    for n in (500, 20_000):
        batch = sample_batch(a, n, np.random.default_rng(n), ref=a)  # q = a
        idx = lab.index_of(batch.tokens)
        r = np.exp(scores[idx] - batch.log_q)  # P/q
        z_hat = r.mean()
        w = r / (n * z_hat)
        terms = np.where(r > 0, scores[idx] - np.log(z_hat) - log_pi_all[idx], 0.0)
        kl_hat = float(np.sum(w * terms))
        # the trainer's own estimate on the same batch
        method = DPG(a, a, lab_fn(lab, scores), proposal="fixed")
        metrics = {}
        method.adapt(policy, batch, Scored(None, log_pi_all[idx], scores[idx], np.log(z_hat)), metrics)
        assert_close(metrics["kl_p_pi_est"], kl_hat, rtol=1e-10)
        se_z = r.std() / np.sqrt(n) / z_hat  # relative SE of Ẑ ≈ SE of log Ẑ
        se_kl = np.sqrt(np.mean((r / z_hat * (terms - kl_hat)) ** 2) / n)
        assert abs(np.log(z_hat) - log_z) < 5 * se_z
        assert abs(kl_hat - exact_kl) < 5 * se_kl + 5 * se_z
        errors.append(abs(kl_hat - exact_kl) + abs(np.log(z_hat) - log_z))
    assert errors[1] < errors[0]


# ------------------------------------------------------------------------------ the tolerance for "0.5"


def two_se_tolerance(n, mu=0.5):
    """The chapter's acceptance band for a measured fraction at evaluation size n: 2·√(μ(1−μ)/n)."""
    return 2 * np.sqrt(mu * (1 - mu) / n)


def test_two_standard_error_band_covers_a_true_half_about_95_percent_of_the_time():
    """A model whose true female fraction is exactly 0.5, evaluated on n = 2000 samples, lands inside
    0.5 ± 2 SE (= ±0.0224) with probability ≈ 95.4%; one at 0.55 is rejected almost always. Checked on
    100 000 simulated evaluations (the coverage estimate has SE 0.0007)."""
    n = 2000
    tol = two_se_tolerance(n)
    np.testing.assert_allclose(tol, 0.02236, atol=1e-5)
    rng = np.random.default_rng(0)
    inside = np.abs(rng.binomial(n, 0.5, size=100_000) / n - 0.5) <= tol
    assert 0.948 < inside.mean() < 0.960
    off = np.abs(rng.binomial(n, 0.55, size=100_000) / n - 0.5) <= tol
    assert off.mean() < 0.01


# ------------------------------------------------------------------------------ GDC's target is RLHF's (6.12)


@pytest.mark.parametrize("mu_bar", [0.02, 0.6])
def test_kl_control_optimum_with_reward_sign_phi_and_beta_one_over_lambda_is_the_i_projection(mu_bar):
    """Eq. (6.12) exactly on the lab: the I-projection p = a·e^{λ*φ}/Z of "E[φ] = μ̄" (φ = number of 3s, no
    pointwise constraint) and the KL-control optimum a·e^{r/β}/Z (Eq. 5.6) with r = sign(λ*)·φ, β = 1/|λ*|
    are one distribution, to rounding; μ̄ below E_a[φ] = 0.09 gives λ* < 0 (the "female = 0.5" case), above
    it λ* > 0. The optimum meets the moment, and its objective value is β log Z (Eq. 5.7). The wrong sign of
    the reward, or β = 1/λ* taken literally when λ* < 0, gives another distribution."""
    from minialign.trainers.rlhf import RLHF, RLHFOptions, kl_control_objective, kl_control_optimum

    a, lab, log_a, _, phi, _ = lab_instance(0)
    phi = phi[:, 0]
    everywhere = np.ones(len(lab), dtype=bool)
    fit = fit_lambda_exact(log_a, everywhere, phi[:, None], [mu_bar])
    lam = float(fit.lam[0])
    assert (lam < 0) == (mu_bar < np.exp(log_a) @ phi)
    log_p, _ = lab.normalise(log_scores(log_a, everywhere, phi[:, None], fit.lam))
    beta = 1.0 / abs(lam)
    log_star, best = kl_control_optimum(log_a, np.sign(lam) * phi, beta)
    np.testing.assert_allclose(log_star, log_p, rtol=0, atol=1e-12)
    p = np.exp(log_p)
    assert p @ phi == pytest.approx(mu_bar, abs=1e-9)
    assert kl_control_objective(p, np.exp(log_a), np.sign(lam) * phi, beta) == pytest.approx(best, abs=1e-10)
    wrong_sign = np.exp(kl_control_optimum(log_a, -np.sign(lam) * phi, beta)[0])
    assert kl(wrong_sign, p) > 0.1
    if lam < 0:  # β = 1/λ* would be negative: the trainer refuses it
        with pytest.raises(ValueError):
            RLHF(a, lambda batch: np.zeros(len(batch)), RLHFOptions(beta=1.0 / lam))


def test_on_names_the_rlhf_target_and_the_gdc_target_have_the_same_log_ratios_and_snis_moments():
    """Eq. (6.12) on names, where no enumeration exists: for "female = 0.5" fitted by SNIS on samples of the
    committed base model, ``kl_control_equivalent`` gives r = −φ and β = −1/λ (λ < 0). On fresh base samples the
    RLHF target's log P = log a + r/β (``tasks.tilted_target``) equals the EBM's log a + λφ (``tasks.ebm_target``)
    sample by sample, so the log-ratios log p(x) − log p(y) agree for every pair and the SNIS moments
    (Eq. 6.5) coincide — near 0.5. With the reward's sign flipped the moment moves far from 0.5."""
    from minialign.data import CharTokenizer
    from minialign.ebm import fit_names_ebm
    from minialign.tasks import ebm_target, kl_control_equivalent, load_base, tilted_target

    base = load_base()
    ebm, _ = fit_names_ebm(base, ["female=0.5"], n_samples=2000, seed=0)
    reward, beta = kl_control_equivalent(ebm)
    lam = float(ebm.lam[0])
    assert lam < 0 and beta == pytest.approx(-1.0 / lam, rel=1e-15)
    batch = sample_batch(base, 1000, np.random.default_rng(5), ref=base, tokenizer=CharTokenizer())
    phi = ebm.phi(batch.names)[:, 0]
    np.testing.assert_array_equal(reward(batch.names), -phi)
    log_rlhf, log_gdc = tilted_target(reward, beta)(batch), ebm_target(ebm)(batch)
    np.testing.assert_allclose(log_rlhf, log_gdc, rtol=0, atol=1e-12)
    def ratios(lp):
        return lp[:, None] - lp[None, :]

    np.testing.assert_allclose(ratios(log_rlhf - batch.log_ref), ratios(log_gdc - batch.log_ref), rtol=0, atol=1e-12)

    def snis_moment(log_p):  # samples of a: weights P/a
        w = np.exp(log_p - batch.log_ref)
        return float(w @ phi / w.sum())

    assert snis_moment(log_rlhf) == snis_moment(log_gdc)
    assert abs(snis_moment(log_gdc) - 0.5) < 0.06  # a fresh sample of 1000: the SNIS error is about 0.03
    flipped = tilted_target(lambda names: -reward(names), beta)(batch)
    assert snis_moment(flipped) > 0.9


def test_kl_control_equivalent_refuses_what_no_finite_reward_can_say():
    """A pointwise constraint sets P(x) = 0, which no finite r(x)/β gives; λ = 0 would need β = ∞."""
    from minialign.ebm import EBM, feature, pointwise
    from minialign.tasks import kl_control_equivalent

    with pytest.raises(ValueError, match="pointwise"):
        kl_control_equivalent(EBM([feature("female")], [-1.0], [pointwise("contains:z")]))
    with pytest.raises(ValueError, match="λ ≠ 0"):
        kl_control_equivalent(EBM([feature("female")], [0.0]))


def test_the_study_s_closed_forms_for_a_binary_tilt_match_the_enumeration():
    """``gdc_study.tilt_log_z`` and ``tilt_kl``: for a binary φ with P_a(φ = 1) = f, log Z(λ) = log(1 − f + f e^λ)
    and KL(p_λ‖a) = λ E_{p_λ}[φ] − log Z (Eq. 6.4 at any λ). Checked against the sums over the lab for
    φ = "length 2", at several λ of both signs."""
    from minialign.experiments.gdc_study import tilt_kl, tilt_log_z

    a, lab, log_a, _, _, _ = lab_instance(1)
    phi = (lab.lengths == 2).astype(float)
    f = np.exp(log_a) @ phi
    for lam in (-2.5, -0.7, 0.3, 1.9):
        log_p, log_z = lab.normalise(log_a + lam * phi)
        assert tilt_log_z(lam, f) == pytest.approx(log_z, abs=1e-12)
        assert tilt_kl(lam, f) == pytest.approx(kl(np.exp(log_p), np.exp(log_a)), abs=1e-12)


def test_the_study_s_rejection_sampler_draws_the_target_on_names():
    """``gdc_study.exact_target_samples`` keeps x ∼ a with probability e^{λφ}/M (Eq. 6.6). For a λ fitted to
    "female = 0.5", the kept names are female at about half (within 4 binomial standard errors of 0.5, plus 0.03
    for the error of λ's 2,000-sample fit), and the proposals per kept name estimate M/Z = 1/Ẑ (λ < 0, M = 1)
    within 25%."""
    from minialign.ebm import fit_names_ebm
    from minialign.experiments.gdc_study import exact_target_samples
    from minialign.tasks import load_base

    base = load_base()
    ebm, report = fit_names_ebm(base, ["female=0.5"], n_samples=2000, seed=3)
    n = 600
    tokens, names, proposals = exact_target_samples(base, ebm, n, seed=4, batch_size=512)
    assert len(names) == len(tokens) == n
    female = ebm.phi(names)[:, 0].mean()
    assert abs(female - 0.5) < 4 * np.sqrt(0.25 / n) + 0.03  # + the SNIS error of λ from 2000 samples
    assert abs(proposals / n - np.exp(-report.log_z)) < 0.25 * np.exp(-report.log_z)


# ------------------------------------------------------------------------------ Eq. (6.7) and (6.9), entry by entry
def _scored_batch(logp_pi, log_z, exact=False):
    """Four samples of q with their log q, batch weights 1/4, log P (one point of zero target mass)."""
    from minialign.trainers.common import Batch

    log_q = np.log([0.1, 0.2, 0.3, 0.4])
    log_p = np.array([-1.0, -np.inf, -0.5, -2.0])
    batch = Batch(np.zeros((4, 5), dtype=np.int64), np.full(4, 0.25), log_q, np.zeros(4), exact=exact)
    return batch, Scored(None, np.asarray(logp_pi, dtype=np.float64), log_p, log_z)


@pytest.mark.task6_2
def test_target_ratio_entry_by_entry_with_one_log_z_and_with_each_rows_own():
    """p/q = exp(log P − log Z − log q) where Z is known (finite), 0 where P = 0 or Z is not known yet; a row's
    own log Z(x) when log Z is an array."""
    from minialign.trainers.proposal import target_ratio

    batch, s = _scored_batch(np.zeros(4), 0.3)
    known, ratio = target_ratio(s, batch)
    assert_close(known, [True] * 4, what="known")
    expected = np.exp(s.log_p - 0.3 - batch.log_q)
    assert_close(ratio, expected, rtol=1e-12, what="p/q with one log Z")
    rows = np.array([0.3, -np.inf, 1.1, -0.4])
    known, ratio = target_ratio(s._replace(log_z=rows), batch)
    assert_close(known, [True, False, True, True], what="known rows")
    assert_close(ratio, [np.exp(-1.0 - 0.3 - batch.log_q[0]), 0.0, np.exp(-0.5 - 1.1 - batch.log_q[2]),
                         np.exp(-2.0 + 0.4 - batch.log_q[3])], rtol=1e-12, what="p/q with each row's log Z(x)")
    known, ratio = target_ratio(s._replace(log_z=-np.inf), batch)
    assert_close(known, [False] * 4, what="known before any mass was seen")
    assert_close(ratio, np.zeros(4), what="p/q before any mass was seen")


def _adapt(proposal, logp_pi, log_z=0.3, exact=False):
    a = lab_model(0, vocab_size=4, block_size=5, scale=0.5)
    policy = lab_model(1, vocab_size=4, block_size=5, scale=0.5)
    method = DPG(a, a, lambda batch: np.zeros(len(batch)), proposal=proposal)
    old_q = method.q
    batch, s = _scored_batch(logp_pi, log_z, exact)
    metrics = {}
    method.adapt(policy, batch, s, metrics)
    return method, old_q, policy, batch, s, metrics


@pytest.mark.task6_4
@pytest.mark.parametrize("closer", [True, False])
def test_adapt_estimates_both_kls_entry_by_entry_and_replaces_q_only_when_pi_is_closer(closer):
    """w = P/(Z q)·(batch weight), 0 where P = 0; KL̂(p‖π) = Σ w (log P − log Z − log π) and KL̂(p‖q) likewise
    with log q. An adaptive proposal on a sampled batch is replaced by a copy of π exactly when KL̂(p‖π) <
    KL̂(p‖q) — both sides of the decision are checked."""
    log_z = 0.3
    log_q = np.log([0.1, 0.2, 0.3, 0.4])
    target = np.array([-1.0, -np.inf, -0.5, -2.0]) - log_z
    logp_pi = np.where(np.isfinite(target), target, -3.0) + (0.01 if closer else -3.0)  # π ≈ p, or far below it
    method, old_q, policy, batch, s, metrics = _adapt("adaptive", logp_pi, log_z)
    w = np.where(np.isfinite(target), np.exp(target - log_q), 0.0) * 0.25
    kl_pi = np.sum(np.where(w > 0, w * (np.where(w > 0, target, 0) - logp_pi), 0.0))
    kl_q = np.sum(np.where(w > 0, w * (np.where(w > 0, target, 0) - log_q), 0.0))
    assert_close(metrics["kl_p_pi_est"], kl_pi, rtol=1e-12, what="KL̂(p‖π)")
    assert_close(metrics["kl_p_q_est"], kl_q, rtol=1e-12, what="KL̂(p‖q)")
    assert (kl_pi < kl_q) == closer
    if closer:
        assert method.q is not old_q and method.replacements == 1, "π is closer to p than q: q must become a copy of π"
        for (name, p), (_, c) in zip(policy.named_parameters(), method.q.named_parameters()):
            assert_close(c.data, p.data, rtol=0, what=f"the new proposal's {name}")
        assert c is not p, "the proposal must be a frozen copy of π, not π itself"
    else:
        assert method.q is old_q and method.replacements == 0, "q is closer to p than π: q must be kept"
    assert metrics["replacements"] == 0 and metrics["log_z"] == pytest.approx(log_z)


@pytest.mark.task6_4
def test_adapt_keeps_q_on_a_tie():
    """π = q, as at the first step (q starts as a copy of π): the two estimates are one number, π is not closer,
    and q stays — the handout replaces q only when KL(p‖π) < KL(p‖q)."""
    log_q = np.log([0.1, 0.2, 0.3, 0.4])
    method, old_q, *_, metrics = _adapt("adaptive", log_q.copy(), 0.3)
    assert metrics["kl_p_pi_est"] == metrics["kl_p_q_est"], metrics
    assert method.q is old_q and method.replacements == 0, "a tie replaced q: π must be strictly closer"


@pytest.mark.task6_4
def test_adapt_keeps_q_when_fixed_or_on_an_exact_batch_and_records_only_log_z_before_mass_is_seen():
    target = np.array([-1.3, -3.0, -0.8, -2.3])
    for proposal, exact in (("fixed", False), ("adaptive", True)):
        method, old_q, *_ , metrics = _adapt(proposal, target, exact=exact)
        assert method.q is old_q and method.replacements == 0, f"a {proposal} proposal (exact={exact}) was replaced"
        assert {"kl_p_pi_est", "kl_p_q_est", "log_z", "replacements"} <= set(metrics)
    method, old_q, *_, metrics = _adapt("adaptive", target, log_z=-np.inf)
    assert method.q is old_q and set(metrics) == {"log_z", "replacements"}, metrics


@pytest.mark.task6_3
def test_gdcpp_coefficients_entry_by_entry_and_zero_where_the_rows_normaliser_is_unknown():
    """w·(P/(Z q) − π/q) on each sample whose Z (with prompts: the row's Z(x)) is known, and exactly 0 on a row
    whose Z(x) is not known yet (no signal there, not −π/q)."""
    class Scripted(DPG):
        def score(self, policy, batch):
            return self.scored

    logp_pi = np.array([-1.3, -2.0, -0.8, -2.3])
    rows = np.array([0.3, -np.inf, 1.1, -0.4])
    batch, s = _scored_batch(logp_pi, rows)
    method = Scripted(None, None, lambda b: s.log_p, proposal="policy", baseline=True)
    method.scored = s
    _, coef = method.coefficients(None, batch)
    known = np.isfinite(rows) & np.isfinite(s.log_p)
    p_over_q = np.exp(np.where(known, s.log_p - np.where(np.isfinite(rows), rows, 0) - batch.log_q, -np.inf))
    expected = np.where(np.isfinite(rows), batch.weights * (p_over_q - np.exp(logp_pi - batch.log_q)), 0.0)
    assert_close(coef, expected, rtol=1e-12, atol=1e-15, what="GDC++ coefficients w·(p/q − π/q)")


@pytest.mark.task6_4
def test_adapt_with_per_row_normalisers_records_their_mean_over_known_rows_or_minus_infinity():
    """With prompts each row has its own log Z(x): the recorded log_z is their mean over the rows where it is
    known, and −inf (nothing known yet) when no row's is; q is then kept."""
    target = np.array([-1.3, -3.0, -0.8, -2.3])
    method, old_q, *_, metrics = _adapt("adaptive", target, log_z=np.full(4, -np.inf))
    assert metrics["log_z"] == -np.inf and set(metrics) == {"log_z", "replacements"}, metrics
    assert method.q is old_q
    rows = np.array([0.5, -np.inf, 1.5, 2.5])
    method, old_q, policy, batch, s, metrics = _adapt("fixed", target, log_z=rows)
    assert metrics["log_z"] == pytest.approx(1.5), metrics
    known = np.isfinite(rows) & np.isfinite(s.log_p)
    z, log_p = np.where(known, rows, 0.0), np.where(known, s.log_p, 0.0)
    w = np.where(known, np.exp(log_p - z - batch.log_q), 0.0) * batch.weights
    assert_close(metrics["kl_p_pi_est"], np.sum(w * (log_p - z - target)), rtol=1e-12,
                 what="KL̂(p‖π) over the rows whose Z(x) is known")
    assert_close(metrics["kl_p_q_est"], np.sum(w * (log_p - z - batch.log_q)), rtol=1e-12,
                 what="KL̂(p‖q) over the rows whose Z(x) is known")
