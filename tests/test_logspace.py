"""Log-space numerics, written once: against scipy's and the direct formulas, at the extremes where the direct
formulas fail, and the Tensor log σ against finite differences."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import special

from minialign import Tensor, gradcheck, logspace
from minialign import functional as F

finite = st.floats(-700, 700, allow_nan=False, width=64)
with_neg_inf = st.one_of(finite, st.just(-math.inf))


@given(x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), elements=with_neg_inf),
       data=st.data())
def test_logsumexp_matches_scipy_with_and_without_kept_axes(x, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    keep = data.draw(st.booleans())
    with np.errstate(divide="ignore"):
        expected = special.logsumexp(x, axis=axis, keepdims=keep)
    np.testing.assert_allclose(logspace.logsumexp(x, axis=axis, keepdims=keep), expected, rtol=1e-12, atol=1e-12)


def test_logsumexp_of_no_mass_is_minus_infinity_and_of_huge_logits_is_finite():
    assert logspace.logsumexp(np.full(4, -np.inf)) == -np.inf
    np.testing.assert_allclose(logspace.logsumexp(np.array([1e4, 1e4])), 1e4 + math.log(2), rtol=1e-15)


@given(x=hnp.arrays(np.float64, st.integers(1, 8), elements=with_neg_inf))
def test_log_normalise_gives_log_probabilities_that_sum_to_one(x):
    if np.isneginf(x).all():
        return
    log_p, log_z = logspace.log_normalise(x)
    np.testing.assert_allclose(np.exp(log_p).sum(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(log_p + log_z, x, rtol=1e-12, atol=1e-9)


@given(x=hnp.arrays(np.float64, st.integers(1, 8), elements=st.floats(-50, 50, width=64)),
       w=hnp.arrays(np.float64, 8, elements=st.floats(0, 1, width=64)))
def test_log_mean_exp_is_the_log_of_the_weighted_mean(x, w):
    w = w[: len(x)]
    np.testing.assert_allclose(logspace.log_mean_exp(x), math.log(np.mean(np.exp(x))), rtol=1e-12, atol=1e-12)
    if w.sum() > 0:
        np.testing.assert_allclose(logspace.log_mean_exp(x, w), math.log(np.sum(w * np.exp(x))), rtol=1e-10, atol=1e-12)
    else:
        assert logspace.log_mean_exp(x, w) == -math.inf


def test_softplus_log_sigmoid_and_sigmoid_agree_with_their_definitions_and_survive_the_extremes():
    x = np.linspace(-30, 30, 61)
    np.testing.assert_allclose(logspace.softplus(x), np.log1p(np.exp(x)), rtol=1e-13)
    np.testing.assert_allclose(logspace.log_sigmoid(x), -np.log1p(np.exp(-x)), rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(logspace.sigmoid(x), special.expit(x), rtol=1e-14)
    big = np.array([-1e4, 1e4])
    np.testing.assert_array_equal(logspace.log_sigmoid(big), [-1e4, 0.0])
    np.testing.assert_array_equal(logspace.sigmoid(big), [0.0, 1.0])


@pytest.mark.skipif(np.finfo(np.longdouble).eps > 1e-18, reason="needs extended precision as the oracle")
@given(x=hnp.arrays(np.float64, 6, elements=st.floats(-745, 0, width=64)))
def test_log1mexp_matches_extended_precision(x):
    with np.errstate(divide="ignore"):
        expected = np.log(-np.expm1(x.astype(np.longdouble))).astype(np.float64)
    np.testing.assert_allclose(logspace.log1mexp(x), expected, rtol=1e-13, atol=1e-16)


def test_log1mexp_is_accurate_where_the_naive_formula_is_not_and_refuses_positive_input():
    # log(1 − e^{−40}) = −e^{−40} − …: the naive log(1 − exp(x)) rounds it to 0
    assert math.log(1 - math.exp(-40)) == 0.0
    np.testing.assert_allclose(logspace.log1mexp(np.array(-40.0)), -math.exp(-40), rtol=1e-14)
    assert logspace.log1mexp(np.array(0.0)) == -np.inf
    with pytest.raises(ValueError, match="x ≤ 0"):
        logspace.log1mexp(np.array([0.5]))


@given(x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=4),
                    elements=st.floats(-20, 20, width=64)))
def test_tensor_log_sigmoid_matches_numpy_and_finite_differences(x):
    # the Tensor form computes log(1 + e^{−|x|}) directly: absolute, not relative, accuracy near log σ = 0
    np.testing.assert_allclose(F.log_sigmoid(Tensor(x)).numpy(), logspace.log_sigmoid(x), rtol=1e-13, atol=1e-15)
    assert gradcheck(F.log_sigmoid, Tensor(x, requires_grad=True))


def test_tensor_log_sigmoid_is_finite_with_the_right_gradient_at_the_extremes_and_at_zero():
    x = Tensor(np.array([-1e4, -30.0, 0.0, 30.0, 1e4]), requires_grad=True)
    y = F.log_sigmoid(x)
    y.sum().backward()
    np.testing.assert_allclose(y.numpy(), [-1e4, -30 - math.log1p(math.exp(-30)), -math.log(2), -math.exp(-30), 0.0],
                               rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(x.grad, special.expit(-x.numpy()), rtol=1e-13)  # d log σ(x)/dx = σ(−x)
