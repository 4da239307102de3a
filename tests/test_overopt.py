"""Reward over-optimisation on the exact lab (chapter 05, §13): best-of-n's exact distribution and KL, the proxy
reward model's fit, and where the gold reward peaks as the proxy is optimised."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minialign.experiments.overopt import (
    best_of_n,
    bon_kl_bound,
    curve_points,
    fit_form,
    infinite_data_proxy,
    kl,
    overopt_curves,
    overopt_lab,
    sampled_best_of_n,
    tilted,
)


def test_best_of_n_is_the_distribution_of_the_best_of_n_draws_ties_broken_at_random():
    """Against brute force: every ordered tuple of 3 draws from 4 outcomes (two of them tied), the winner the
    highest score, a tie shared equally among the tied draws."""
    p, score = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.5, 2.0, 0.5, -1.0])
    brute = np.zeros(4)
    for draw in itertools.product(range(4), repeat=3):
        best = max(score[list(draw)])
        winners = [d for d in draw if score[d] == best]
        for d in winners:
            brute[d] += np.prod(p[list(draw)]) / len(winners)
    np.testing.assert_allclose(best_of_n(p, score, 3), brute, atol=1e-15)
    np.testing.assert_allclose(best_of_n(p, score, 1), p, atol=1e-15)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 12), st.integers(1, 200), st.integers(0, 2**31 - 1), st.booleans())
def test_best_of_n_kl_never_exceeds_log_n_minus_n_minus_one_over_n(m, n, seed, ties):
    """KL(best-of-n ‖ p) ≤ log n − (n−1)/n for any p and score, ties or not."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(m))
    score = rng.integers(0, 3, m).astype(float) if ties else rng.standard_normal(m)
    assert kl(best_of_n(p, score, n), p) <= bon_kl_bound(n) + 1e-12


@pytest.mark.parametrize("n", [2, 8, 64])
def test_best_of_n_kl_is_log_n_minus_n_minus_one_over_n_for_a_continuous_score(n):
    """With 100,000 equally likely outcomes of distinct scores (a score without atoms, nearly) the bound is reached
    to 1e-3 — and on the lab, whose outcomes have mass, it is not (0.1 nats short at n = 1024)."""
    p = np.full(100_000, 1e-5)
    assert kl(best_of_n(p, np.arange(100_000.0), n), p) == pytest.approx(bon_kl_bound(n), abs=1e-3)
    _, p_a, gold = overopt_lab(0)
    assert kl(best_of_n(p_a, gold, 1024), p_a) < bon_kl_bound(1024) - 0.1


def test_with_infinitely_many_pairs_the_proxy_is_the_gold_reward_and_gold_never_falls():
    """Fitted to every pair in exact proportion (10^12 pairs), the table reward model is the gold reward up to a
    constant (to 1e-4); optimised by best-of-n or by RLHF, that proxy's gold reward then rises monotonically with KL:
    over-optimisation needs a proxy that is wrong."""
    _, p_a, gold = overopt_lab(0)
    proxy = infinite_data_proxy(p_a, gold)
    assert np.ptp(proxy - gold) < 1e-4
    for how in ("bon", "rl"):
        pts = curve_points(p_a, gold, proxy, how)
        assert np.all(np.diff(pts[:, 0]) > -1e-12) and np.all(np.diff(pts[:, 1]) > -1e-9)


def test_the_rlhf_optimum_gains_exactly_its_proxy_reward_minus_beta_kl():
    """π_β = a e^{s/β}/Z maximises E_π s − β KL(π‖a) (Eq. 5.7): its value is β log Z, above best-of-n at any n."""
    _, p_a, gold = overopt_lab(0)
    for beta in (0.1, 1.0):
        pi = tilted(p_a, gold, beta)
        value = pi @ gold - beta * kl(pi, p_a)
        assert value == pytest.approx(beta * np.logaddexp.reduce(np.log(p_a) + gold / beta), abs=1e-12)
        for n in (2, 16, 256):
            bon = best_of_n(p_a, gold, n)
            assert bon @ gold - beta * kl(bon, p_a) < value


def test_fit_form_recovers_the_coefficients_of_either_form():
    d = np.linspace(0.05, 3.0, 30)
    assert fit_form(d, d * (1.2 - 0.3 * d), "bon") == pytest.approx((1.2, 0.3, 1.0), abs=1e-10)
    assert fit_form(d, d * (0.8 - 0.2 * np.log(d)), "rl") == pytest.approx((0.8, 0.2, 1.0), abs=1e-10)


def test_more_preference_pairs_move_the_gold_peak_out_and_up():
    """Three data seeds at N = 30, 1,000 and 10,000 pairs: the proxy correlates better with the gold reward, and, for
    both optimisers, gold peaks later (larger √KL) and higher as N grows (the study's table: 8 seeds, six N)."""
    curves = overopt_curves((30, 1000, 10000), range(3), with_gold=False)
    ns = (30, 1000, 10000)
    corr = [curves[n]["proxy_gold_corr"].mean() for n in ns]
    assert corr[0] < corr[1] < corr[2]
    for how in ("bon", "rl"):
        d = [curves[n][how]["peak_d"].mean() for n in ns]
        gain = [curves[n][how]["peak_gold"].mean() for n in ns]
        assert d[0] < d[1] < d[2] and gain[0] < gain[1] < gain[2], (how, d, gain)


def test_sampled_best_of_n_with_the_gold_as_proxy_never_loses_gold():
    """With nested groups (the first n draws of each group compete) and proxy = gold, each group's winner can only
    improve as n grows, so the mean gold is non-decreasing; and best-of-1 is the plain sample mean."""
    rng = np.random.default_rng(0)
    gold = rng.standard_normal((500, 64))
    rows = sampled_best_of_n(gold, gold, (1, 2, 4, 16, 64))
    assert rows[0, 2] == pytest.approx(gold[:, 0].mean(), abs=1e-15)
    assert np.all(np.diff(rows[:, 2]) >= 0) and np.all(rows[:, 4] == rows[:, 2])
    with pytest.raises(ValueError, match="groups"):
        sampled_best_of_n(gold[:, :8], gold[:, :8], (16,))
