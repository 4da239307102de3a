"""Fused ops: hand-written backwards against finite differences (float64) and torch autograd.

The finite-difference checks need nothing but NumPy; each torch check is a test of its own that requests the
``torch`` fixture (conftest.py), so without torch only the oracle tests are skipped.
"""
import numpy as np
import pytest
from helpers import assert_close, check_against_torch, t64
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from strategies import float_arrays, small_shapes

from minialign import Tensor, gradcheck
from minialign import functional as F


@pytest.mark.task1_5
@given(x=float_arrays(small_shapes), data=st.data())
def test_softmax_and_log_softmax_gradients(x, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    assert gradcheck(lambda t: F.softmax(t, axis), t64(x))
    assert gradcheck(lambda t: F.log_softmax(t, axis), t64(x))


@given(x=float_arrays(small_shapes), data=st.data())
def test_softmax_log_softmax_and_logsumexp_match_torch(x, data, torch):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    check_against_torch(lambda t: F.softmax(t, axis), lambda t: torch.softmax(t, axis), x)
    check_against_torch(lambda t: F.log_softmax(t, axis), lambda t: torch.log_softmax(t, axis), x)
    check_against_torch(lambda t: F.logsumexp(t, axis), lambda t: torch.logsumexp(t, axis), x)


@given(x=float_arrays(small_shapes, low=-50, high=50))
def test_softmax_sums_to_one(x):
    np.testing.assert_allclose(F.softmax(Tensor(x)).numpy().sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.exp(F.log_softmax(Tensor(x)).numpy()).sum(-1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_softmax_and_cross_entropy_are_finite_for_huge_logits(dtype):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], dtype=dtype)
    logits = Tensor(z, requires_grad=True)
    ls = F.log_softmax(logits).numpy()
    assert np.isfinite(ls).all()
    np.testing.assert_allclose(ls[0], [0.0, -2e4, -1e4], rtol=1e-6)
    loss = F.cross_entropy(logits, np.array([1, 0, 2]))
    loss.backward()
    assert np.isfinite(loss.item()) and np.isfinite(logits.grad).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_of_huge_logits_matches_torch(dtype, torch):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], dtype=dtype)
    loss = F.cross_entropy(Tensor(z, requires_grad=True), np.array([1, 0, 2]))
    expected = torch.nn.functional.cross_entropy(torch.tensor(z, dtype=torch.float64), torch.tensor([1, 0, 2])).item()
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-6)


@st.composite
def logits_and_targets(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=4))
    v = draw(st.integers(2, 6))
    z = draw(float_arrays(shape + (v,), low=-5, high=5))
    y = draw(hnp.arrays(np.int64, shape, elements=st.integers(-1, v - 1)))
    y = np.where(y < 0, -100, y)  # some targets are ignored
    return z, y


def counted_targets(reduction, y):
    if reduction == "mean" and (y == -100).all():  # a mean over no target is undefined: count one
        y = y.copy()
        y.reshape(-1)[0] = 0
    return y


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(zy=logits_and_targets())
def test_cross_entropy_with_ignore_index_gradient_matches_finite_differences(reduction, zy):
    z, y = zy
    y = counted_targets(reduction, y)
    assert gradcheck(lambda t: F.cross_entropy(t, y, ignore_index=-100, reduction=reduction), t64(z))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(zy=logits_and_targets())
def test_cross_entropy_with_ignore_index_matches_torch(reduction, zy, torch):
    z, y = zy
    y = counted_targets(reduction, y)
    ours = lambda t: F.cross_entropy(t, y, ignore_index=-100, reduction=reduction)  # noqa: E731
    theirs = lambda t: torch.nn.functional.cross_entropy(  # noqa: E731
        t.reshape(-1, z.shape[-1]), torch.tensor(y.reshape(-1)), ignore_index=-100, reduction=reduction
    ).reshape(y.shape if reduction == "none" else ())
    check_against_torch(ours, theirs, z)


def test_cross_entropy_rejects_bad_targets():
    z = Tensor(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="integer array of token ids"):
        F.cross_entropy(z, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(2,\) .* got \(3,\)"):
        F.cross_entropy(z, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        F.cross_entropy(z, np.array([0, 3]))
    with pytest.raises(ValueError, match="reduction must be"):
        F.cross_entropy(z, np.array([0, 1]), reduction="avg")


def layer_norm_inputs(x, data):
    x = x + np.linspace(0, 1, x.shape[-1])  # rows with some spread, so the variance is not ~0
    d = x.shape[-1]
    return x, data.draw(float_arrays((d,))), data.draw(float_arrays((d,)))


@pytest.mark.task1_5
@given(x=float_arrays(hnp.array_shapes(min_dims=1, max_dims=3, min_side=2, max_side=5)), data=st.data())
def test_layer_norm_gradients(x, data):
    x, w, b = layer_norm_inputs(x, data)
    assert gradcheck(lambda t, w_, b_: F.layer_norm(t, w_, b_), t64(x), t64(w), t64(b))


@pytest.mark.task1_5
@pytest.mark.parametrize("with_weight, with_bias", [(False, False), (True, False), (False, True)])
def test_layer_norm_gradients_without_weight_or_bias_and_only_for_parents_that_require_them(with_weight, with_bias):
    """Eq. (1.9) when the weight or the bias is absent (then g' = g), on a [2, 3, 4] input; a parameter that does
    not require gradients is never touched, and x's gradient is the same whether or not the others require them."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 4))
    w, b = rng.standard_normal(4) + 1.5, rng.standard_normal(4)
    args = [t64(x), t64(w) if with_weight else None, t64(b) if with_bias else None]
    inputs = [a for a in args if a is not None]
    assert gradcheck(lambda *ts: F.layer_norm(*_fill(args, ts)), *inputs)
    frozen = [t64(x)] + [None if a is None else Tensor(a.data.copy()) for a in args[1:]]
    c = np.random.default_rng(0).standard_normal(x.shape)
    F.layer_norm(*frozen).backward(c)
    live = [t64(x)] + [None if a is None else t64(a.data) for a in args[1:]]
    F.layer_norm(*live).backward(c)
    for t in frozen[1:]:
        assert t is None or t.grad is None, "a parameter that does not require gradients was given one"
    assert_close(frozen[0].grad, live[0].grad, rtol=1e-12, what="dL/dx")


def _fill(args, ts):
    """``args`` with its non-None entries replaced, in order, by ``ts``."""
    it = iter(ts)
    return [None if a is None else next(it) for a in args]


@given(x=float_arrays(hnp.array_shapes(min_dims=1, max_dims=3, min_side=2, max_side=5)), data=st.data())
def test_layer_norm_matches_torch(x, data, torch):
    x, w, b = layer_norm_inputs(x, data)
    d = x.shape[-1]
    tF = torch.nn.functional
    check_against_torch(
        lambda t, w_, b_: F.layer_norm(t, w_, b_), lambda t, w_, b_: tF.layer_norm(t, (d,), w_, b_, 1e-5), x, w, b
    )
    check_against_torch(lambda t: F.layer_norm(t), lambda t: tF.layer_norm(t, (d,), eps=1e-5), x)


@given(x=float_arrays(small_shapes, low=-6, high=6))
def test_gelu_gradient_matches_finite_differences(x):
    assert gradcheck(F.gelu, t64(x))


@given(x=float_arrays(small_shapes, low=-6, high=6))
def test_gelu_gradient_matches_torch_tanh_gelu(x, torch):
    check_against_torch(F.gelu, lambda t: torch.nn.functional.gelu(t, approximate="tanh"), x)


def linear_operands(x, data):
    n_out = data.draw(st.integers(1, 4))
    return x, data.draw(float_arrays((n_out, x.shape[-1]))), data.draw(float_arrays((n_out,)))


@given(x=float_arrays(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4)), data=st.data())
def test_linear_gradients(x, data):
    assert gradcheck(F.linear, *(t64(a) for a in linear_operands(x, data)))


@given(x=float_arrays(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4)), data=st.data())
def test_linear_matches_torch(x, data, torch):
    check_against_torch(F.linear, torch.nn.functional.linear, *linear_operands(x, data))


def test_linear_rejects_mismatched_features():
    with pytest.raises(ValueError, match="input has 3 features but the weight expects 4"):
        F.linear(Tensor(np.ones((2, 3))), Tensor(np.ones((5, 4))))


@given(data=st.data())
def test_embedding_gradient_sums_repeated_ids(data):
    table = data.draw(float_arrays((6, 3)))
    idx = np.array(data.draw(hnp.arrays(np.int64, (2, 4), elements=st.integers(0, 5))))
    assert gradcheck(lambda w: F.embedding(idx, w), t64(table))


@given(data=st.data())
def test_embedding_matches_torch(data, torch):
    table = data.draw(float_arrays((6, 3)))
    idx = np.array(data.draw(hnp.arrays(np.int64, (2, 4), elements=st.integers(0, 5))))
    check_against_torch(lambda w: F.embedding(idx, w),
                        lambda w: torch.nn.functional.embedding(torch.tensor(idx), w), table)


def test_embedding_rejects_out_of_range_and_float_ids():
    w = Tensor(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
        F.embedding(np.array([[0, 4]]), w)
    with pytest.raises(TypeError, match="integer array"):
        F.embedding(np.array([[0.0, 1.0]]), w)


def test_dropout_is_seeded_scaled_and_off_in_eval():
    x = Tensor(np.ones((200, 50)), requires_grad=True)
    a = F.dropout(x, 0.3, np.random.default_rng(5)).numpy()
    b = F.dropout(x, 0.3, np.random.default_rng(5)).numpy()
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) <= {0.0, 1 / 0.7}
    assert abs((a == 0).mean() - 0.3) < 0.02  # 10,000 Bernoulli(0.3) draws: 5 standard deviations is 0.023
    assert F.dropout(x, 0.3, np.random.default_rng(5), training=False) is x
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\)"):
        F.dropout(x, 1.0, np.random.default_rng(0))


@st.composite
def attention_inputs(draw):
    b, h = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    tk, d = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    tq = draw(st.integers(1, tk))
    return (draw(float_arrays((b, h, tq, d))), draw(float_arrays((b, h, tk, d))), draw(float_arrays((b, h, tk, d))))


@pytest.mark.task2_1
@given(qkv=attention_inputs(), causal=st.booleans())
def test_attention_gradients_match_finite_differences(qkv, causal):
    q, k, v = qkv
    ours = lambda q_, k_, v_: F.scaled_dot_product_attention(q_, k_, v_, causal=causal)  # noqa: E731
    assert gradcheck(ours, t64(q), t64(k), t64(v))


@given(qkv=attention_inputs(), causal=st.booleans())
def test_attention_gradients_match_torch(qkv, causal, torch):
    q, k, v = qkv
    tq, tk = q.shape[-2], k.shape[-2]

    def theirs(q_, k_, v_):
        # queries are the last tq positions of tk: query i sees keys j <= tk - tq + i
        mask = torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq) if causal else None
        return torch.nn.functional.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask)

    ours = lambda q_, k_, v_: F.scaled_dot_product_attention(q_, k_, v_, causal=causal)  # noqa: E731
    check_against_torch(ours, theirs, q, k, v)


def test_attention_rejects_bad_shapes():
    with pytest.raises(ValueError, match="attention needs q"):
        F.scaled_dot_product_attention(Tensor(np.ones((1, 2, 3))), Tensor(np.ones((1, 2, 4))),
                                       Tensor(np.ones((1, 2, 4))))
    with pytest.raises(ValueError, match="more queries"):
        F.scaled_dot_product_attention(Tensor(np.ones((1, 3, 2))), Tensor(np.ones((1, 2, 2))),
                                       Tensor(np.ones((1, 2, 2))))


def test_softmax_of_a_row_with_no_finite_entry_is_an_error_not_nan():
    x = Tensor(np.array([[0.0, 1.0], [-np.inf, -np.inf]]))
    for op in (F.softmax, F.log_softmax):
        with pytest.raises(ValueError, match="all -inf"):
            op(x)


@pytest.mark.task2_1
@given(qkv=attention_inputs(), causal=st.booleans(), scale=st.sampled_from([None, 0.7]))
def test_attention_matches_the_masked_softmax_formula(qkv, causal, scale):
    """Eq. (2.4) written out entry by entry, independently of the library: o_i = Σ_j e^{s_ij} v_j / Σ_j e^{s_ij}
    over the keys query i may see (j ≤ Tk − Tq + i when causal), s_ij = q_i·k_j times the scale (1/√D by
    default). A backward consistent with a wrong forward passes the gradient check; this does not."""
    q, k, v = qkv
    tq, tk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    s = 1 / np.sqrt(d) if scale is None else scale
    expected = np.zeros(q.shape)
    for idx in np.ndindex(q.shape[:-2]):
        for i in range(tq):
            seen = range(tk - tq + i + 1) if causal else range(tk)
            w = np.array([np.exp(s * q[idx][i] @ k[idx][j]) for j in seen])
            expected[idx][i] = sum(wj * v[idx][j] for wj, j in zip(w, seen)) / w.sum()
    out = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), causal=causal, scale=scale).numpy()
    assert_close(out, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.task2_1
@pytest.mark.parametrize("causal", [True, False])
def test_attention_is_stable_when_rows_of_scores_lie_thousands_apart(causal):
    """Translating every key by one vector c adds q_i·c to the whole of score row i, which the softmax cancels:
    the output must not change. With c large the rows' scores are thousands, and thousands apart from one
    another, so only a softmax shifted by each row's own maximum stays finite (no shift overflows e^s; a shift by
    the maximum over all rows underflows every entry of the rows far below it, giving 0/0)."""
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(2, 2, 3, 4)), rng.normal(size=(2, 2, 5, 4)), rng.normal(size=(2, 2, 5, 4))
    c = 2000.0 * rng.normal(size=4)
    out = F.scaled_dot_product_attention(Tensor(q), Tensor(k + c), Tensor(v), causal=causal).numpy()
    want = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), causal=causal).numpy()
    assert_close(out, want, rtol=1e-8, atol=1e-10, what="attention with every key moved by c (scores ≈ ±1e3–1e4)")


@pytest.mark.task2_1
@pytest.mark.parametrize("lead", [(), (4,), (1, 2, 2)], ids=["no-batch-axis", "one-batch-axis", "three-batch-axes"])
def test_attention_works_over_the_last_two_axes_with_any_leading_axes(lead):
    """Attention acts on the last two axes, [..., T, D], whatever axes lead (none, [B], [B, H], [B, H, G]): the
    output is that of the same rows laid out as [B, H, T, D], and the backward passes central differences."""
    rng = np.random.default_rng(1)
    n, tq, tk, d = int(np.prod(lead)), 3, 4, 2
    q, k, v = rng.normal(size=(n, 1, tq, d)), rng.normal(size=(n, 1, tk, d)), rng.normal(size=(n, 1, tk, d))
    want = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v)).numpy()
    q_, k_, v_ = q.reshape(*lead, tq, d), k.reshape(*lead, tk, d), v.reshape(*lead, tk, d)
    out = F.scaled_dot_product_attention(Tensor(q_), Tensor(k_), Tensor(v_)).numpy()
    assert_close(out.reshape(want.shape), want, rtol=1e-12, atol=1e-14, what=f"attention of q {q_.shape}")
    assert gradcheck(F.scaled_dot_product_attention, t64(q_), t64(k_), t64(v_))
