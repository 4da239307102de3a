"""Quasi-rejection sampling (chapter 06, §11): the distribution it samples, its acceptance rate, its divergences to
the target as closed forms and as estimates from proposal samples, and the sampler itself."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minialign import qrs
from minialign.lab import ExactLab, lab_model
from minialign.logspace import logsumexp


def ebm_on_a_lab(seed=0, lam=1.5):
    """A proposal q (a tiny GPT's exact distribution on the lab's 15 sequences) and an EBM P = a'·e^{λφ}, a' another
    tiny GPT (other weights) and φ = "two letters": P/q is bounded (on a finite set) but far from constant."""
    q_model = lab_model(seed, vocab_size=3, block_size=4, scale=0.5)
    a_model = lab_model(seed, vocab_size=3, block_size=4, scale=0.5, noise_seed=seed + 999)
    lab = ExactLab.for_model(q_model)
    log_q = np.log(lab.distribution(q_model))
    log_P = np.log(lab.distribution(a_model)) + lam * (lab.lengths == 2)
    return lab, q_model, log_P, log_q


def test_qrs_distribution_and_its_rejection_sampling_limit():
    """Eq. (6.17): p_β ∝ min(q, P/β), A_β = Σ min(q, P/β); for β ≥ max P/q it is p itself with A_β = Z/β."""
    lab, _, log_P, log_q = ebm_on_a_lab(0)
    w = np.exp(log_P - log_q)
    for beta in (0.3, 1.0, float(np.median(w))):
        log_pb, acc = qrs.distribution(log_P, log_q, beta)
        kept = np.minimum(np.exp(log_q), np.exp(log_P) / beta)
        np.testing.assert_allclose(np.exp(log_pb), kept / kept.sum(), rtol=1e-12)
        assert acc == pytest.approx(kept.sum(), rel=1e-12)
    log_p = log_P - logsumexp(log_P)
    for beta in (w.max(), 3 * w.max()):
        log_pb, acc = qrs.distribution(log_P, log_q, beta)
        np.testing.assert_allclose(log_pb, log_p, atol=1e-12)
        assert acc == pytest.approx(np.exp(logsumexp(log_P)) / beta, rel=1e-12)
        d = qrs.exact(log_P, log_q, beta)
        assert d.tv < 1e-12 and d.kl < 1e-12


def test_tv_and_kl_are_the_expectations_under_q_of_eq_617():
    """Eq. (6.18) as written (expectations under q and p of w = P/q) equals the direct sums over p and p_β."""
    lab, _, log_P, log_q = ebm_on_a_lab(1)
    q, w = np.exp(log_q), np.exp(log_P - log_q)
    z = np.exp(logsumexp(log_P))
    for beta in (0.2, 0.7, 2.0):
        d = qrs.exact(log_P, log_q, beta)
        acc = np.sum(q * np.minimum(1, w / beta))
        tv = 0.5 * np.sum(q * np.abs(w / z - np.minimum(1, w / beta) / acc))
        kl = np.log(acc / z) + np.sum(q * w / z * np.log(np.maximum(beta, w)))
        assert d.acceptance == pytest.approx(acc, rel=1e-12)
        assert d.tv == pytest.approx(tv, rel=1e-10) and d.kl == pytest.approx(kl, rel=1e-9, abs=1e-14)


@given(st.integers(0, 10_000), st.integers(2, 12))
def test_divergences_fall_and_acceptance_falls_as_beta_grows(seed, n):
    """TV(p, p_β) and KL(p‖p_β) never increase with β, nor does the acceptance rate, and both divergences are 0
    from β = max P/q on."""
    rng = np.random.default_rng(seed)
    log_q = np.log(rng.dirichlet(np.ones(n)))
    log_P = np.log(rng.dirichlet(np.ones(n) * 0.5) + 1e-12) + rng.normal()
    w_max = float(np.exp(log_P - log_q).max())
    betas = np.geomspace(w_max * 1e-3, w_max * 1.5, 40)
    rows = [qrs.exact(log_P, log_q, b) for b in betas]
    for before, after in zip(rows, rows[1:]):
        assert after.tv <= before.tv + 1e-12 and after.kl <= before.kl + 1e-12
        assert after.acceptance <= before.acceptance + 1e-12
    assert rows[-1].tv < 1e-12 and rows[-1].kl < 1e-12


def test_the_sampler_draws_from_p_beta_at_the_acceptance_rate():
    """QRS run with a GPT as the proposal (``generate``) and β = Z, a tenth of max P/q (acceptance 0.57, TV(p, p_β)
    0.12): the 30 000 kept samples follow p_β (every count within 5 binomial standard errors), not p, and the number
    of proposals per kept sample matches 1/A_β within 5 standard errors."""
    lab, q_model, log_P, log_q = ebm_on_a_lab(0)
    beta = float(np.exp(logsumexp(log_P)))

    def propose(m, rng):
        ids, lq = q_model.generate(m, rng=rng)
        return lab.index_of(ids), lq

    out = qrs.sample(propose, lambda idx: log_P[idx], beta, 30_000, rng=0, batch_size=4096)
    log_pb, acc = qrs.distribution(log_P, log_q, beta)
    pb = np.exp(log_pb)
    counts = np.bincount(out.kept, minlength=len(lab))
    n = len(out.kept)
    assert n == 30_000
    assert np.all(np.abs(counts - n * pb) <= 5 * np.sqrt(n * pb * (1 - pb)) + 1)
    p = np.exp(log_P - logsumexp(log_P))
    assert np.abs(counts / n - p).max() > 10 * np.sqrt(0.25 / n)  # and it is measurably not p at this β
    se = np.sqrt((1 - acc) / acc ** 2 / n)  # the geometric number of proposals per kept sample
    assert abs(out.proposals / n - 1 / acc) < 5 * se, (out.proposals / n, 1 / acc)
    assert out.acceptance == pytest.approx(n / out.proposals) and out.per_second > 0


def test_estimates_from_proposal_samples_converge_to_the_closed_forms():
    """Eq. (6.19): from one set of samples of q, the acceptance rate, TV and KL at every β; with 400 000 samples each
    estimate is within 0.01 of the exact value, and the errors are larger with 4 000."""
    lab, _, log_P, log_q = ebm_on_a_lab(3)
    betas = [0.3, 1.0, 3.0]
    exact = [qrs.exact(log_P, log_q, b) for b in betas]
    errors = {}
    for n in (4_000, 400_000):
        idx = np.random.default_rng(n).choice(len(lab), size=n, p=np.exp(log_q))
        est = qrs.estimates(log_P[idx], log_q[idx], betas)
        errors[n] = max(abs(getattr(e, f) - getattr(x, f))
                        for e, x in zip(est, exact) for f in ("acceptance", "tv", "kl"))
    assert errors[400_000] < 0.01 and errors[4_000] > errors[400_000], errors


def test_qrs_refuses_bad_input():
    lab, q_model, log_P, log_q = ebm_on_a_lab(0)
    for beta in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="β > 0"):
            qrs.exact(log_P, log_q, beta)
        with pytest.raises(ValueError, match="β > 0"):
            qrs.sample(lambda m, rng: (np.zeros(m, int), np.zeros(m)), lambda x: np.zeros(len(x)), beta, 10, rng=0)
    with pytest.raises(ValueError, match="β > 0"):
        qrs.estimates(log_P, log_q, [1.0, 0.0])
    with pytest.raises(ValueError, match="no mass"):
        qrs.exact(np.full(len(lab), -np.inf), log_q, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        qrs.exact(np.where(np.arange(len(lab)) == 0, np.nan, log_P), log_q, 1.0)
    with pytest.raises(ValueError, match="probability 0 to points of the target"):
        qrs.exact(log_P, np.where(np.arange(len(lab)) == 0, -np.inf, log_q), 1.0)
    with pytest.raises(ValueError, match="one length"):
        qrs.exact(log_P, log_q[:-1], 1.0)
    with pytest.raises(ValueError, match="whole number"):
        qrs.sample(lambda m, rng: (np.zeros(m, int), np.zeros(m)), lambda x: np.zeros(len(x)), 1.0, 0, rng=0)
    with pytest.raises(RuntimeError, match="acceptance rate is too low"):
        qrs.sample(lambda m, rng: (np.zeros(m, int), np.zeros(m)), lambda x: np.full(len(x), -np.inf), 1.0, 1,
                   rng=0, batch_size=10, max_proposals=100)
