"""Chapter 03: the f-divergence family, its identities, log-space forms and Monte-Carlo estimators.

Tolerances: exact identities in float64 are checked to 1e-10 relative (plus 1e-12 absolute);
inequalities are allowed 1e-12 of rounding slack; finite differences to 1e-6.
"""
import itertools

import numpy as np
import pytest
from helpers import FAMILY, central_difference
from helpers import assert_close as assert_entries_close
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr
from strategies import distribution_pairs, distributions, markov_kernels, rational_distributions

from minialign import divergences as dv

RTOL, ATOL = 1e-10, 1e-12
LOG2 = np.log(2.0)

# The generator table written out independently of the library: (f on t > 0, f(0+), lim f(t)/t).
HAND = {
    "kl": (lambda t: t * np.log(t), 0.0, np.inf),
    "reverse_kl": (lambda t: -np.log(t), np.inf, 0.0),
    "js": (lambda t: 0.5 * (t * np.log(t) - (1 + t) * np.log((1 + t) / 2)), 0.5 * LOG2, 0.5 * LOG2),
    "tv": (lambda t: 0.5 * abs(t - 1), 0.5, 0.5),
    "chi2": (lambda t: (t - 1) ** 2, 1.0, np.inf),
    "hellinger": (lambda t: 0.5 * (np.sqrt(t) - 1) ** 2, 0.5, 0.5),
    "alpha:0.5": (lambda t: (t**0.5 - 0.5 * t - 0.5) / (0.5 * -0.5), 2.0, 2.0),
    "alpha:-1": (lambda t: (t**-1.0 + t - 2.0) / 2.0, np.inf, 0.5),
    "alpha:2.5": (lambda t: (t**2.5 - 2.5 * t + 1.5) / (2.5 * 1.5), 0.4, np.inf),
}


def assert_close(a, b, rtol=RTOL, atol=ATOL):
    """Equal to rounding entry by entry, where +inf must match +inf exactly; a failure names the entries."""
    assert_entries_close(a, b, rtol=rtol, atol=atol, what="divergence")


def safe_log(x):
    x = np.asarray(x, dtype=float)
    return np.where(x > 0, np.log(np.where(x > 0, x, 1.0)), -np.inf)


def by_hand(name, P, Q):
    f, f0, slope = HAND[name]
    total = 0.0
    for p, q in zip(P, Q):
        if p > 0 and q > 0:
            total += q * f(p / q)
        elif p > 0:
            total += p * slope
        elif q > 0:
            total += q * f0
    return total


# ---------------------------------------------------------------- the definition and the table


@pytest.mark.task3_1
@pytest.mark.parametrize("name", FAMILY)
@given(pair=distribution_pairs())
def test_matches_generator_definition(name, pair):
    P, Q = pair
    assert_close(dv.divergence(name, P, Q), by_hand(name, P, Q))


@pytest.mark.parametrize("name", FAMILY)
def test_generator_table_matches_hand_written_generators(name):
    fd = dv.get(name)
    f, f0, slope = HAND[name]
    t = np.geomspace(1e-4, 1e4, 57)
    assert_close(fd.f(t), f(t))
    assert fd.f(np.array(1.0)) == 0.0
    assert fd.f_at_zero == f0 and fd.slope_at_infinity == slope
    assert_close(fd.f(np.array(0.0)), f0)


@pytest.mark.parametrize("name", FAMILY)
def test_zero_mass_limits_match_the_generator(name):
    fd = dv.get(name)
    small, big = 1e-12, 1e12
    if np.isfinite(fd.f_at_zero):
        assert abs(fd.f(small) - fd.f_at_zero) < 1e-5
    else:
        assert fd.f(small) > 20 and fd.f(small) > fd.f(1e-6)
    if np.isfinite(fd.slope_at_infinity):
        assert abs(fd.f(big) / big - fd.slope_at_infinity) < 1e-5
    else:
        assert fd.f(big) / big > 20 and fd.f(big) / big > fd.f(1e6) / 1e6


@pytest.mark.parametrize("name", FAMILY)
def test_f_prime_matches_finite_differences(name):
    fd = dv.get(name)
    t = np.geomspace(0.05, 20, 31)
    t = t[np.abs(t - 1) > 1e-3]  # tv has a kink at 1
    h = 1e-6 * t
    numeric = (fd.f(t + h) - fd.f(t - h)) / (2 * h)
    np.testing.assert_allclose(fd.f_prime(t), numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", FAMILY)
def test_log_generators_match_generators(name):
    fd = dv.get(name)
    t = np.geomspace(1e-6, 1e6, 61)
    np.testing.assert_allclose(fd.f_log(np.log(t)), fd.f(t), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fd.f_prime_log(np.log(t)), fd.f_prime(t), rtol=1e-9, atol=1e-12)
    assert_close(fd.f_log(np.array(-np.inf)), fd.f_at_zero)


@pytest.mark.parametrize("name", FAMILY)
def test_log_generators_never_return_nan_at_extreme_log_ratios(name):
    fd = dv.get(name)
    l = np.array([-1e4, -800.0, -40.0, 40.0, 800.0, 1e4])
    values, slopes = fd.f_log(l), fd.f_prime_log(l)
    assert not np.isnan(values).any() and not np.isnan(slopes).any()
    if fd.f_prime(np.array(1.0)) == 0:  # then f ≥ 0 everywhere, by convexity and f(1) = 0
        assert (values >= 0).all()
    # where the value is representable it must agree with the generator on t = e^l
    moderate = np.abs(l) <= 40
    np.testing.assert_allclose(values[moderate], fd.f(np.exp(l[moderate])), rtol=1e-9)


# ---------------------------------------------------------------- identities


@pytest.mark.parametrize("name", FAMILY)
@given(pair=distribution_pairs())
def test_divergence_is_nonnegative_and_zero_iff_equal(name, pair):
    P, Q = pair
    d = dv.divergence(name, P, Q)
    assert d >= -ATOL
    assert abs(dv.divergence(name, P, P)) <= ATOL
    if np.max(np.abs(P - Q)) > 1e-4:
        assert d > 0


@pytest.mark.parametrize("name", FAMILY)
@given(pair=distribution_pairs(), c=st.floats(-3, 3))
def test_adding_linear_term_to_generator_changes_nothing(name, pair, c):
    P, Q = pair
    fd = dv.get(name)
    shifted = dv.from_generator(
        f"{name}+c(t-1)",
        lambda t: fd.f(t) + c * (t - 1),
        lambda t: fd.f_prime(t) + c,
        fd.f_at_zero - c,
        fd.slope_at_infinity + c,
    )
    assert_close(dv.divergence(shifted, P, Q), dv.divergence(name, P, Q), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", FAMILY)
@given(pair=distribution_pairs())
def test_conjugate_generator_swaps_arguments(name, pair):
    P, Q = pair
    fd = dv.get(name)
    star = fd.conjugate()
    assert_close(dv.divergence(star, Q, P), dv.divergence(fd, P, Q))
    if fd.conjugate_name is not None:
        assert_close(dv.divergence(fd.conjugate_name, Q, P), dv.divergence(name, P, Q))


@pytest.mark.parametrize("name", FAMILY)
def test_conjugate_callable_is_t_f_of_one_over_t(name):
    fd = dv.get(name)
    t = np.geomspace(1e-3, 1e3, 41)
    f = HAND[name][0]
    np.testing.assert_allclose(fd.f_conjugate(t), t * f(1 / t), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fd.conjugate().f(t), t * f(1 / t), rtol=1e-10, atol=1e-12)
    assert_close(fd.f_conjugate(np.array(0.0)), fd.slope_at_infinity)


def test_registered_conjugate_pairs():
    assert dv.get("kl").conjugate_name == "reverse_kl" and dv.get("reverse_kl").conjugate_name == "kl"
    for name in ("js", "tv", "hellinger"):
        assert dv.get(name).conjugate_name == name
    assert dv.get("alpha:0.25").conjugate_name == "alpha:0.75"
    assert dv.get("alpha:-1").conjugate().name == "alpha:2.0"


@given(pair=distribution_pairs())
def test_js_is_bounded_by_log2(pair):
    P, Q = pair
    assert dv.divergence("js", P, Q) <= LOG2 + ATOL


@given(pair=distribution_pairs())
def test_js_is_the_mixture_form(pair):
    P, Q = pair
    M = (P + Q) / 2
    expected = 0.5 * rel_entr(P, M).sum() + 0.5 * rel_entr(Q, M).sum()
    assert_close(dv.divergence("js", P, Q), expected)


@given(pair=distribution_pairs())
def test_tv_and_hellinger_are_bounded_by_one(pair):
    P, Q = pair
    assert dv.divergence("tv", P, Q) <= 1 + ATOL
    assert dv.divergence("hellinger", P, Q) <= 1 + ATOL
    assert_close(dv.divergence("tv", P, Q), 0.5 * np.abs(P - Q).sum())
    assert_close(dv.divergence("hellinger", P, Q), 0.5 * ((np.sqrt(P) - np.sqrt(Q)) ** 2).sum())


@given(pair=distribution_pairs())
def test_pinsker_inequality(pair):
    P, Q = pair
    assert dv.divergence("tv", P, Q) <= np.sqrt(dv.divergence("kl", P, Q) / 2) + ATOL


@given(pair=distribution_pairs())
def test_hellinger_sandwiches_tv(pair):
    P, Q = pair
    h2, tv = dv.divergence("hellinger", P, Q), dv.divergence("tv", P, Q)
    assert h2 <= tv + ATOL
    assert tv <= np.sqrt(2) * np.sqrt(h2) + ATOL


@given(pair=distribution_pairs())
def test_kl_is_bounded_by_log_one_plus_chi2(pair):
    P, Q = pair
    assert dv.divergence("kl", P, Q) <= np.log1p(dv.divergence("chi2", P, Q)) + ATOL


@given(pair=distribution_pairs())
def test_alpha_members_match_closed_forms(pair):
    P, Q = pair
    # α = ½: 4(1 − Σ√(PQ));  α = 2: ½ χ²(P‖Q);  α = −1: ½ χ²(Q‖P).
    assert_close(dv.divergence("alpha:0.5", P, Q), 4 * (1 - np.sqrt(P * Q).sum()), rtol=1e-9, atol=1e-11)
    assert_close(dv.divergence("alpha:2", P, Q), 0.5 * dv.divergence("chi2", P, Q))
    assert_close(dv.divergence("alpha:-1", P, Q), 0.5 * dv.divergence("chi2", Q, P))


@pytest.mark.parametrize("name", FAMILY)
@given(data=st.data())
def test_data_processing_inequality(name, data):
    P, Q = data.draw(distribution_pairs())
    K = data.draw(markov_kernels(len(P)))
    before = dv.divergence(name, P, Q)
    PK, QK = P @ K, Q @ K
    after = dv.divergence(name, PK / PK.sum(), QK / QK.sum())
    assert after <= before + 1e-12 * (1 + abs(before)) or np.isinf(before)


@pytest.mark.parametrize("name", FAMILY)
@given(data=st.data(), lam=st.floats(0.0, 1.0))
def test_joint_convexity(name, data, lam):
    n = data.draw(st.integers(1, 8))
    P1, Q1, P2, Q2 = (data.draw(distributions(size=n)) for _ in range(4))
    mixed = dv.divergence(name, lam * P1 + (1 - lam) * P2, lam * Q1 + (1 - lam) * Q2)
    d1, d2 = dv.divergence(name, P1, Q1), dv.divergence(name, P2, Q2)
    bound = (lam * d1 if lam > 0 else 0.0) + ((1 - lam) * d2 if lam < 1 else 0.0)
    assert mixed <= bound + 1e-12 * (1 + abs(bound)) or np.isinf(bound)


@given(pair=distribution_pairs(allow_zeros=False))
def test_alpha_divergence_tends_to_kl_and_reverse_kl(pair):
    P, Q = pair
    L = np.log(P / Q)
    kl, rkl = (P * L).sum(), -(Q * L).sum()
    # Expanding t^α around α = 1 and α = 0 gives the first-order terms of the approach:
    #   D_{1−ε} = KL + ε (KL − ½ Σ P L²) + O(ε²),   D_ε = RKL + ε (RKL − ½ Σ Q L²) + O(ε²),  L = log(P/Q)
    slope_1 = kl - 0.5 * (P * L**2).sum()
    slope_0 = rkl - 0.5 * (Q * L**2).sum()
    scale = 1 + (P * np.abs(L) ** 3).sum() + (Q * np.abs(L) ** 3).sum() + (P * L**2).sum() + (Q * L**2).sum()
    for eps in (1e-3, 1e-4):
        near_one = dv.divergence(f"alpha:{1 - eps}", P, Q)
        near_zero = dv.divergence(f"alpha:{eps}", P, Q)
        assert abs((near_one - kl) / eps - slope_1) <= 10 * eps * scale
        assert abs((near_zero - rkl) / eps - slope_0) <= 10 * eps * scale


def test_alpha_generator_limits_carry_a_linear_shift():
    t = np.geomspace(1e-3, 1e3, 41)
    near_one = dv.get("alpha:0.999999").f(t)
    near_zero = dv.get("alpha:1e-06").f(t)
    np.testing.assert_allclose(near_one, t * np.log(t) - t + 1, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(near_zero, -np.log(t) + t - 1, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- the chain rule over sequences

VOCAB, EOS, MAX_LEN = 2, 2, 4  # tokens 0, 1 and EOS = 2; EOS forced at position MAX_LEN


def _prefixes():
    for n in range(MAX_LEN):
        yield from itertools.product(range(VOCAB), repeat=n)


def _conditional(table, prefix):
    if len(prefix) == MAX_LEN - 1:
        return np.eye(VOCAB + 1)[EOS]
    return table[prefix]


def _sequences():
    for n in range(MAX_LEN):
        for body in itertools.product(range(VOCAB), repeat=n):
            yield body + (EOS,)


def _joint(table):
    probs = []
    for seq in _sequences():
        p = 1.0
        for t, token in enumerate(seq):
            p *= _conditional(table, seq[:t])[token]
        probs.append(p)
    return np.array(probs)


@given(data=st.data())
def test_kl_chain_rule_for_autoregressive_sequences(data):
    free = [pre for pre in _prefixes() if len(pre) < MAX_LEN - 1]
    table_p = {pre: data.draw(distributions(size=VOCAB + 1)) for pre in free}
    table_q = {pre: data.draw(distributions(size=VOCAB + 1, allow_zeros=False)) for pre in free}
    joint_p, joint_q = _joint(table_p), _joint(table_q)
    assert abs(joint_p.sum() - 1) < 1e-12 and abs(joint_q.sum() - 1) < 1e-12
    expected_token_kl = 0.0
    for weight, seq in zip(joint_p, _sequences()):
        if weight == 0:
            continue
        steps = [dv.divergence("kl", _conditional(table_p, seq[:t]), _conditional(table_q, seq[:t]))
                 for t in range(len(seq))]
        expected_token_kl += weight * sum(steps)
    assert_close(dv.divergence("kl", joint_p, joint_q), expected_token_kl)


# ---------------------------------------------------------------- log space


@pytest.mark.task3_2
@pytest.mark.parametrize("name", FAMILY)
@given(pair=distribution_pairs(), shift_p=st.floats(-50, 50), shift_q=st.floats(-50, 50))
def test_log_form_equals_probability_form(name, pair, shift_p, shift_q):
    P, Q = pair
    exact = dv.divergence(name, P, Q)
    log_p, log_q = safe_log(P) + shift_p, safe_log(Q) + shift_q
    assert_close(dv.divergence_from_logs(name, log_p, log_q), exact, rtol=1e-9, atol=1e-11)
    assert_close(dv.divergence_from_logs(name, log_p, log_q, log_zp=shift_p, log_zq=shift_q), exact,
                 rtol=1e-9, atol=1e-11)


BOUNDED_BY_LOGITS = ["kl", "reverse_kl", "js", "tv", "hellinger", "alpha:0.5"]


@pytest.mark.task3_2
@pytest.mark.parametrize("name", BOUNDED_BY_LOGITS)
@given(data=st.data())
def test_log_form_is_finite_for_logits_of_magnitude_1e4(name, data):
    n = data.draw(st.integers(1, 8))
    logits = hnp.arrays(np.float64, n, elements=st.floats(-1e4, 1e4))
    log_p, log_q = data.draw(logits), data.draw(logits)
    d = dv.divergence_from_logs(name, log_p, log_q)
    # these members are at most linear in the log-ratio (KL ≤ max |log p − log q| ≤ 4e4), or bounded
    assert np.isfinite(d) and -1e-9 <= d <= 4.1e4


@pytest.mark.task3_2
@pytest.mark.parametrize("name", FAMILY)
def test_log_form_on_nearly_disjoint_logits_matches_closed_form(name):
    a = 1e4
    d = dv.divergence_from_logs(name, np.array([0.0, -a]), np.array([-a, 0.0]))
    # P = (1, ε), Q = (ε, 1) with ε = e^{-1e4} (below float range): each term is its zero-mass limit
    # except where the log-ratio a itself survives, i.e. for kl and reverse_kl (value a up to ε·a).
    fd = dv.get(name)
    if name in ("kl", "reverse_kl"):
        expected = a
    else:
        expected = fd.f_at_zero + fd.slope_at_infinity
    assert_close(d, expected)


@pytest.mark.task3_2
def test_log_form_supports_batches_and_unnormalised_rows():
    rng = np.random.default_rng(3)
    log_p = rng.normal(size=(3, 1, 5)) * 4 + 7
    log_q = rng.normal(size=(4, 5)) * 4 - 2
    got = dv.divergence_from_logs("js", log_p, log_q)
    assert got.shape == (3, 4)
    P = np.exp(log_p - log_p.max(-1, keepdims=True))
    Q = np.exp(log_q - log_q.max(-1, keepdims=True))
    P, Q = P / P.sum(-1, keepdims=True), Q / Q.sum(-1, keepdims=True)
    for i in range(3):
        for j in range(4):
            assert_close(got[i, j], dv.divergence("js", P[i, 0], Q[j]), rtol=1e-9)


@pytest.mark.task3_1
def test_batch_axes_broadcast_in_probability_form():
    rng = np.random.default_rng(4)
    P = rng.dirichlet(np.ones(6), size=(2, 1))
    Q = rng.dirichlet(np.ones(6), size=(3,))
    got = dv.divergence("hellinger", P, Q)
    assert got.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert_close(got[i, j], by_hand("hellinger", P[i, 0], Q[j]))


# ---------------------------------------------------------------- oracles and hand-picked zero mass


@given(pair=distribution_pairs())
def test_kl_matches_scipy_rel_entr(pair):
    P, Q = pair
    assert_close(dv.divergence("kl", P, Q), rel_entr(P, Q).sum())


@given(pair=distribution_pairs())
def test_js_matches_square_of_scipy_jensenshannon(pair):
    P, Q = pair
    assert_close(dv.divergence("js", P, Q), jensenshannon(P, Q) ** 2, rtol=1e-8, atol=1e-12)


@pytest.mark.task3_1
def test_zero_mass_conventions_on_disjoint_supports():
    P, Q = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert dv.divergence("kl", P, Q) == np.inf
    assert dv.divergence("reverse_kl", P, Q) == np.inf
    assert dv.divergence("chi2", P, Q) == np.inf
    assert dv.divergence("js", P, Q) == pytest.approx(LOG2, rel=1e-15)  # ½log2 from each side
    assert dv.divergence("tv", P, Q) == pytest.approx(1.0, rel=1e-15)
    assert dv.divergence("hellinger", P, Q) == pytest.approx(1.0, rel=1e-15)
    assert dv.divergence("alpha:0.5", P, Q) == pytest.approx(4.0, rel=1e-15)


@pytest.mark.task3_1
def test_zero_mass_conventions_when_one_side_is_missing():
    P, Q = np.array([0.5, 0.5]), np.array([1.0, 0.0])  # P has mass where Q has none
    assert dv.divergence("kl", P, Q) == np.inf
    assert dv.divergence("chi2", P, Q) == np.inf
    assert dv.divergence("reverse_kl", P, Q) == pytest.approx(LOG2, rel=1e-14)
    # the point x2 (Q = 0 < P = ½) contributes P·½log2 to js; x1 is an ordinary term
    M = (P + Q) / 2
    js = 0.5 * (0.5 * np.log(0.5 / M[0]) + 0.5 * np.log(0.5 / M[1])) + 0.5 * np.log(1 / M[0])
    assert dv.divergence("js", P, Q) == pytest.approx(js, rel=1e-14)
    assert dv.divergence("tv", P, Q) == pytest.approx(0.5, rel=1e-15)
    assert dv.divergence("chi2", Q, P) == pytest.approx((0.5**2 + 0.5**2) / 0.5, rel=1e-14)
    assert dv.divergence("kl", Q, P) == pytest.approx(LOG2, rel=1e-14)


@pytest.mark.task3_1
def test_points_without_mass_on_either_side_contribute_nothing():
    P, Q = np.array([0.3, 0.0, 0.7]), np.array([0.6, 0.0, 0.4])
    for name in FAMILY:
        assert_close(dv.divergence(name, P, Q), dv.divergence(name, P[[0, 2]], Q[[0, 2]]))


# ---------------------------------------------------------------- errors


def test_unknown_name_lists_the_known_names():
    with pytest.raises(ValueError, match=r"unknown f-divergence 'klx'; "
                                         r"known names: kl, reverse_kl, js, tv, chi2, hellinger, alpha:<value>"):
        dv.get("klx")
    with pytest.raises(ValueError, match="unknown f-divergence"):
        dv.divergence("wasserstein", [1.0], [1.0])


@pytest.mark.parametrize("bad", ["alpha:0", "alpha:1", "alpha:1.0"])
def test_alpha_zero_and_one_point_to_the_kl_members(bad):
    with pytest.raises(ValueError, match=r"alpha must not be 0 or 1 \(those limits are 'reverse_kl' and 'kl'\)"):
        dv.get(bad)


def test_alpha_needs_a_number():
    with pytest.raises(ValueError, match=r"needs a number after 'alpha:'.*got 'alpha:half'"):
        dv.get("alpha:half")


def test_nan_is_rejected():
    with pytest.raises(ValueError, match="P must not contain NaN; got 1 NaN entries"):
        dv.divergence("kl", [0.5, np.nan], [0.5, 0.5])
    with pytest.raises(ValueError, match="log_q must not contain NaN"):
        dv.divergence_from_logs("kl", [0.0, 0.0], [np.nan, 0.0])


def test_negative_entries_are_rejected():
    with pytest.raises(ValueError, match=r"Q must be nonnegative; got a minimum entry of -0.1"):
        dv.divergence("js", [0.5, 0.5], [1.1, -0.1])


def test_unnormalised_input_is_rejected_with_the_sums():
    with pytest.raises(ValueError, match=r"P must sum to 1 along the last axis \(relative tolerance 1e-06\); "
                                         r"got sums in \[0.93, 1.02\]"):
        dv.divergence("tv", [[0.5, 0.43], [0.5, 0.52]], [0.5, 0.5])


def test_normalisation_tolerance_depends_on_dtype():
    P64 = np.array([0.5, 0.50001])
    with pytest.raises(ValueError, match=r"relative tolerance 1e-06"):
        dv.divergence("kl", P64, [0.5, 0.5])
    P32 = P64.astype(np.float32)
    assert np.isfinite(dv.divergence("kl", P32, np.array([0.5, 0.5], dtype=np.float32)))
    with pytest.raises(ValueError, match=r"relative tolerance 0.0001"):
        dv.divergence("kl", np.array([0.5, 0.501], dtype=np.float32), [0.5, 0.5])


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match=r"P and Q must share the last axis .* got shapes \(3,\) and \(4,\)"):
        dv.divergence("kl", np.ones(3) / 3, np.ones(4) / 4)
    with pytest.raises(ValueError, match=r"broadcastable batch axes; got shapes \(2, 3\) and \(4, 3\)"):
        dv.divergence("kl", np.ones((2, 3)) / 3, np.ones((4, 3)) / 3)
    with pytest.raises(ValueError, match=r"log_p and log_q must share the last axis"):
        dv.divergence_from_logs("kl", np.zeros(3), np.zeros(2))


def test_log_form_rejects_plus_infinity_and_empty_mass():
    with pytest.raises(ValueError, match=r"log_p must be < \+inf"):
        dv.divergence_from_logs("kl", [np.inf, 0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match=r"log_q has no mass"):
        dv.divergence_from_logs("kl", [0.0, 0.0], [-np.inf, -np.inf])


# ---------------------------------------------------------------- Monte-Carlo estimators of KL(q‖p)


def _exact_sample(counts):
    """Atom x repeated counts[x] times: a sample whose mean is an exact expectation."""
    return np.repeat(np.arange(len(counts)), counts)


@pytest.mark.task3_4
@given(data=st.data())
def test_k1_and_k3_are_unbiased_by_exact_expectation(data):
    counts, q = data.draw(rational_distributions())
    p = data.draw(distributions(size=len(q), allow_zeros=False))
    x = _exact_sample(counts)
    est = dv.kl_estimators(np.log(q)[x], np.log(p)[x])
    kl = rel_entr(q, p).sum()
    assert_close(est.k1.mean(), kl, rtol=1e-9, atol=1e-12)
    assert_close(est.k3.mean(), kl, rtol=1e-9, atol=1e-12)


@pytest.mark.task3_4
@given(data=st.data())
def test_k2_bias_equals_its_exact_formula(data):
    counts, q = data.draw(rational_distributions())
    p = data.draw(distributions(size=len(q), allow_zeros=False))
    x = _exact_sample(counts)
    mean_k2 = dv.k2(np.log(q)[x], np.log(p)[x]).mean()
    kl = rel_entr(q, p).sum()
    bias = (q * 0.5 * np.log(p / q) ** 2).sum() - kl
    assert_close(mean_k2 - kl, bias, rtol=1e-8, atol=1e-12)


def test_k2_bias_is_third_order_as_p_approaches_q():
    rng = np.random.default_rng(5)
    q = rng.dirichlet(np.ones(6))
    g = rng.normal(size=6)
    ratios = []
    for eps in (1e-1, 1e-2):
        p = q * np.exp(eps * g)
        p /= p.sum()
        kl = rel_entr(q, p).sum()
        bias = (q * dv.k2(np.log(q), np.log(p))).sum() - kl
        ratios.append(abs(bias) / kl)
    # KL is O(ε²) while the bias is O(ε³): bias/KL falls roughly tenfold per tenfold step
    assert ratios[1] < ratios[0] / 5


@given(
    log_q=hnp.arrays(np.float64, 16, elements=st.floats(-30, 0)),
    log_p=hnp.arrays(np.float64, 16, elements=st.floats(-30, 0)),
)
@pytest.mark.task3_4
def test_k2_and_k3_are_nonnegative_samplewise(log_q, log_p):
    assert (dv.k2(log_q, log_p) >= 0).all()
    assert (dv.k3(log_q, log_p) >= 0).all()


@pytest.mark.task3_4
@given(pair=distribution_pairs(min_size=2, allow_zeros=False))
def test_k1_is_negative_on_some_sample_when_p_differs_from_q(pair):
    q, p = pair
    assume(np.max(np.abs(p - q)) > 1e-9)
    assert (dv.k1(np.log(q), np.log(p)) < 0).any()


@given(
    q=distributions(size=6, allow_zeros=False),
    g=hnp.arrays(np.float64, 6, elements=st.floats(-1, 1)),
    eps=st.floats(1e-3, 0.1),
)
@pytest.mark.task3_4
def test_k3_has_lower_variance_than_k1_on_near_distributions(q, g, eps):
    assume(np.ptp(g) > 0.2)
    p = q * np.exp(eps * g)
    p /= p.sum()
    est = dv.kl_estimators(np.log(q), np.log(p))

    def var(k):
        return (q * (k - (q * k).sum()) ** 2).sum()

    assert var(est.k3) < var(est.k1)
    assert var(est.k2) < var(est.k1)


# ---------------------------------------------------------------- Monte-Carlo estimators of D_f


@pytest.mark.parametrize("name", FAMILY)
@given(data=st.data())
def test_mc_divergence_is_unbiased_from_q_and_from_p(name, data):
    n = data.draw(st.integers(1, 6))
    counts_q, q = data.draw(rational_distributions(size=n))
    counts_p, p = data.draw(rational_distributions(size=n))
    exact = dv.divergence(name, p, q)
    xq, xp = _exact_sample(counts_q), _exact_sample(counts_p)
    assert_close(dv.mc_divergence(name, np.log(p)[xq], np.log(q)[xq], from_="q"), exact, rtol=1e-9)
    assert_close(dv.mc_divergence(name, np.log(p)[xp], np.log(q)[xp], from_="p"), exact, rtol=1e-9)


@pytest.mark.parametrize("name", ["kl", "js", "tv", "alpha:0.5"])
@given(data=st.data(), log_z=st.floats(-20, 20))
def test_self_normalised_estimator_is_exact_on_exact_samples(name, data, log_z):
    n = data.draw(st.integers(1, 6))
    counts_q, q = data.draw(rational_distributions(size=n))
    counts_p, p = data.draw(rational_distributions(size=n))
    exact = dv.divergence(name, p, q)
    for frm, counts in (("q", counts_q), ("p", counts_p)):
        x = _exact_sample(counts)
        est, log_z_hat = dv.mc_divergence_self_normalised(name, np.log(p)[x] + log_z, np.log(q)[x], from_=frm)
        assert abs(log_z_hat - log_z) < 1e-9
        assert_close(est, exact, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "js", "hellinger"])
def test_mc_divergence_agrees_with_exact_value_on_random_samples(name):
    rng = np.random.default_rng(7)
    p, q = rng.dirichlet(np.ones(5) * 2), rng.dirichlet(np.ones(5) * 2)
    exact = dv.divergence(name, p, q)
    for frm, source in (("q", q), ("p", p)):
        x = rng.choice(5, size=20000, p=source)
        values = [dv.mc_divergence(name, np.log(p)[x[i::20]], np.log(q)[x[i::20]], from_=frm) for i in range(20)]
        stderr = np.std(values, ddof=1) / np.sqrt(20)
        assert abs(np.mean(values) - exact) < 5 * stderr + 1e-12


def test_mc_estimators_reject_bad_arguments():
    with pytest.raises(ValueError, match=r"from_ must be 'q' \(samples of Q\) or 'p' \(samples of P\); got 'x'"):
        dv.mc_divergence("kl", [0.0], [0.0], from_="x")
    with pytest.raises(ValueError, match=r"log_q and log_p must have the same shape"):
        dv.k1(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match=r"log_q must be finite at samples drawn from q"):
        dv.k3(np.array([-np.inf]), np.array([0.0]))


# ---------------------------------------------------------------- partial derivatives and the seed audit


@pytest.mark.task3_3
@pytest.mark.parametrize("name", FAMILY)
def test_partial_derivatives_match_finite_differences(name):
    rng = np.random.default_rng(11)
    P, Q = rng.uniform(0.2, 1.0, 5), rng.uniform(0.2, 1.0, 5)
    f = HAND[name][0]
    d_p, d_q = dv.partial_derivatives(name, P, Q)
    assert_close(d_p, central_difference(lambda x: (Q * f(x / Q)).sum(), P), rtol=1e-6, atol=1e-8)
    assert_close(d_q, central_difference(lambda y: (y * f(P / y)).sum(), Q), rtol=1e-6, atol=1e-8)


def _kl_free(p1, p2):
    return (p1 * np.log(p1 / p2)).sum()


def test_seed000_kl_partial_derivatives_are_wrong():
    rng = np.random.default_rng(0)
    p1, p2 = rng.uniform(0.1, 1.0, 6), rng.uniform(0.1, 1.0, 6)
    numeric_1 = central_difference(lambda x: _kl_free(x, p2), p1)
    numeric_2 = central_difference(lambda y: _kl_free(p1, y), p2)
    # correct: ∂/∂π₁ = log(π₁/π₂) + 1, ∂/∂π₂ = −π₁/π₂
    np.testing.assert_allclose(np.log(p1 / p2) + 1, numeric_1, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(-p1 / p2, numeric_2, rtol=1e-7, atol=1e-9)
    d_p, d_q = dv.partial_derivatives("kl", p1, p2)
    np.testing.assert_allclose(d_p, numeric_1, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(d_q, numeric_2, rtol=1e-7, atol=1e-9)
    # seed 000, §4.2: ∂/∂π₁ = 1 − π₂/π₁ and ∂/∂π₂ = −1 + π₁/π₂
    assert np.max(np.abs((1 - p2 / p1) - numeric_1)) > 0.5
    assert np.max(np.abs((-1 + p1 / p2) - numeric_2)) > 0.5


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _softmax_jacobian(z):
    s = _softmax(z)
    return np.diag(s) - np.outer(s, s)  # J[x, k] = ∂π(x)/∂z_k


def test_seed000_chain_rule_disagrees_with_finite_differences():
    rng = np.random.default_rng(1)
    theta = rng.normal(size=5)
    A = rng.normal(size=(5, 5))

    def pis(th):
        return _softmax(th), _softmax(A @ th)

    def objective(th):
        return _kl_free(*pis(th))

    numeric = central_difference(objective, theta)
    p1, p2 = pis(theta)
    J1, J2 = _softmax_jacobian(theta), _softmax_jacobian(A @ theta) @ A
    d_p, d_q = dv.partial_derivatives("kl", p1, p2)
    correct = d_p @ J1 + d_q @ J2
    np.testing.assert_allclose(correct, numeric, rtol=1e-6, atol=1e-9)
    # seed 000, §4.2: Σ(1 − π₂/π₁)∂π₁/∂θ − Σ(−1 + π₁/π₂)∂π₂/∂θ
    seed = (1 - p2 / p1) @ J1 - (-1 + p1 / p2) @ J2
    assert np.max(np.abs(seed - numeric)) > 1e-2


# ---------------------------------------------------------------- mode-seeking and mass-covering


def _bump_fits():
    x = np.linspace(-6, 6, 241)
    log_target = np.logaddexp(-((x - 2.5) ** 2) / (2 * 0.6**2), -((x + 2.5) ** 2) / (2 * 0.6**2))
    mus, widths = np.linspace(-4, 4, 81), np.geomspace(0.3, 4, 60)
    log_model = -((x - mus[:, None, None]) ** 2) / (2 * widths[None, :, None] ** 2)
    fits = {}
    for label, (first, second) in {"reverse": (log_model, log_target), "forward": (log_target, log_model)}.items():
        D = dv.divergence_from_logs("kl", first, second)
        i, j = np.unravel_index(np.argmin(D), D.shape)
        fits[label] = (mus[i], widths[j], D[i, j])
    return fits


def test_kl_pi_p_fit_picks_one_mode_kl_p_pi_covers_both():
    fits = _bump_fits()
    mu, width, value = fits["reverse"]  # argmin KL(π‖p)
    assert abs(abs(mu) - 2.5) <= 0.1 and width < 1.0
    assert abs(value - LOG2) < 0.01  # one of two equal, well-separated bumps: KL(π‖p) ≈ log 2
    mu, width, _ = fits["forward"]  # argmin KL(p‖π)
    assert abs(mu) <= 0.1 and width > 2.0


def test_a_subnormal_q_gives_a_finite_alpha_divergence():
    """Chapter 03, Section 4: the code evaluates P·f*(Q/P) where P > Q, so the generator never sees P/Q. With a
    subnormal Q(x) the ratio P/Q overflows to inf, and the naive term Q·f(P/Q) of the α-generator is
    inf − inf = NaN; the divergence itself is finite and equals Amari's closed form 4(1 − Σ√(PQ)) at α = ½."""
    P, Q = np.array([0.5, 0.5]), np.array([1 - 5e-310, 5e-310])
    f = dv.get("alpha:0.5")
    with np.errstate(over="ignore", invalid="ignore"):
        assert np.isinf(P[1] / Q[1]) and np.isnan(Q[1] * f.f(P[1] / Q[1]))
    value = dv.divergence("alpha:0.5", P, Q)
    assert value == pytest.approx(4 * (1 - np.sum(np.sqrt(P * Q))), rel=1e-12)


@pytest.mark.task3_3
def test_partial_derivatives_refuse_other_shapes_and_entries_that_are_not_strictly_positive():
    P = np.array([0.2, 0.3, 0.5])
    with pytest.raises(ValueError):
        dv.partial_derivatives("kl", P, np.array([0.5, 0.5]))
    with pytest.raises(ValueError):
        dv.partial_derivatives("kl", P[None, :], P[:, None])
    for Q in ([0.5, 0.0, 0.5], [0.6, -0.1, 0.5]):
        with pytest.raises(ValueError):
            dv.partial_derivatives("kl", P, np.array(Q))
        with pytest.raises(ValueError):
            dv.partial_derivatives("kl", np.array(Q), P)


@pytest.mark.task3_3
def test_partial_derivatives_of_kl_by_hand_on_unnormalised_arrays():
    """For f = t log t: ∂/∂P = log t + 1 and ∂/∂Q = −t, t = P/Q, entry by entry on arrays that sum to anything."""
    P, Q = np.array([[0.5, 2.0, 1.0], [3.0, 0.25, 4.0]]), np.array([[1.0, 0.5, 1.0], [1.5, 1.0, 0.1]])
    d_p, d_q = dv.partial_derivatives("kl", P, Q)
    assert_entries_close(d_p, np.log(P / Q) + 1, rtol=1e-12, what="∂D_kl/∂P")
    assert_entries_close(d_q, -P / Q, rtol=1e-12, what="∂D_kl/∂Q")


@pytest.mark.task3_4
def test_k1_k2_k3_sample_by_sample():
    """Each estimator on each sample, not only in expectation: with log ρ = log p − log q, k1 = −log ρ,
    k2 = ½(log ρ)², k3 = ρ − 1 − log ρ (written as expm1 so that it keeps its digits near ρ = 1)."""
    log_q = np.array([-1.0, -2.5, -0.3, -7.0, -1.0])
    log_p = np.array([-1.5, -0.5, -0.3 + 1e-9, -1.0, -25.0])
    r = log_p - log_q
    assert_entries_close(dv.k1(log_q, log_p), -r, rtol=1e-12, atol=0, what="k1")
    assert_entries_close(dv.k2(log_q, log_p), 0.5 * r**2, rtol=1e-12, atol=0, what="k2")
    assert_entries_close(dv.k3(log_q, log_p), np.expm1(r) - r, rtol=1e-9, atol=0, what="k3")
    assert_entries_close(dv.k3(log_q[:1], log_q[:1] + 1e-6), [0.5e-12], rtol=1e-5, atol=0, what="k3 near ρ = 1")


@pytest.mark.task3_1
def test_divergence_refuses_distributions_on_different_supports_even_when_numpy_would_broadcast_them():
    """The input checks the handout names: a distribution on 3 points against one on 1 point (which numpy would
    silently broadcast), and batch axes that do not broadcast, are ValueErrors; so is a row that does not sum
    to 1 or a negative entry."""
    P = np.array([0.2, 0.3, 0.5])
    for Q in (np.array([1.0]), np.full((2, 1), 1.0)):
        with pytest.raises(ValueError):
            dv.divergence("kl", P, Q)
        with pytest.raises(ValueError):
            dv.divergence("kl", Q, P)
    with pytest.raises(ValueError):
        dv.divergence("kl", np.tile(P, (2, 1)), np.tile(P, (4, 1)))
    with pytest.raises(ValueError):
        dv.divergence("kl", P, np.array([0.2, 0.3, 0.6]))
    with pytest.raises(ValueError):
        dv.divergence("kl", P, np.array([0.7, 0.4, -0.1]))


@pytest.mark.task3_2
def test_divergence_from_logs_refuses_different_supports_even_when_numpy_would_broadcast_them():
    log_p = np.log(np.array([0.2, 0.3, 0.5]))
    for log_q in (np.array([0.0]), np.zeros((2, 1))):
        with pytest.raises(ValueError):
            dv.divergence_from_logs("kl", log_p, log_q)
        with pytest.raises(ValueError):
            dv.divergence_from_logs("kl", log_q, log_p)
    with pytest.raises(ValueError):
        dv.divergence_from_logs("kl", np.tile(log_p, (2, 1)), np.tile(log_p, (4, 1)))
