"""The engine's primitive ops: each gradient equals central finite differences (float64) and torch autograd.

The finite-difference checks need nothing but NumPy; each torch check is a test of its own that requests the
``torch`` fixture (conftest.py), so without torch only the oracle tests are skipped.
"""
import numpy as np
import pytest
from helpers import assert_close, check_against_torch, t64
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from strategies import array_and_axis, broadcastable_pair, float_arrays, small_shapes

from minialign import GradcheckError, Tensor, concatenate, gradcheck, no_grad, stack
from minialign.tensor import unbroadcast

BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: a + b),
    "sub": (lambda a, b: a - b, lambda a, b: a - b),
    "mul": (lambda a, b: a * b, lambda a, b: a * b),
    "div": (lambda a, b: a / b, lambda a, b: a / b),
}


def binary_operands(name, pair):
    a, b = pair
    if name == "div":
        b = np.where(np.abs(b) < 0.5, 0.5 + np.abs(b), b)
    return a, b


# course tasks: the backwards of * and / are task 1.2's; + and − need only unbroadcast, task 1.3's
BINARY_TASK = {"add": pytest.mark.task1_3, "sub": pytest.mark.task1_3, "mul": pytest.mark.task1_2,
               "div": pytest.mark.task1_2}


@pytest.mark.parametrize("name", [pytest.param(n, marks=BINARY_TASK[n]) for n in sorted(BINARY)])
@given(pair=broadcastable_pair())
def test_binary_op_gradients_match_finite_differences(name, pair):
    a, b = binary_operands(name, pair)
    assert gradcheck(BINARY[name][0], t64(a), t64(b))


@pytest.mark.parametrize("name", sorted(BINARY))
@given(pair=broadcastable_pair())
def test_binary_op_gradients_match_torch(name, pair, torch):
    a, b = binary_operands(name, pair)
    ours, theirs = BINARY[name]
    check_against_torch(ours, theirs, a, b)


def positive_base(pair):
    a, b = pair
    return np.abs(a) + 0.5, b  # a positive base so that a**b and log a are defined


@pytest.mark.task1_2
@given(pair=broadcastable_pair())
def test_pow_gradients_in_base_and_exponent(pair):
    a, b = positive_base(pair)
    assert gradcheck(lambda x, y: x**y, t64(a), t64(b))


@given(pair=broadcastable_pair())
def test_pow_gradients_match_torch(pair, torch):
    a, b = positive_base(pair)
    check_against_torch(lambda x, y: x**y, lambda x, y: x**y, a, b)


# ours, theirs (a function on torch tensors, or the name of one in torch), domain
UNARY = {
    "neg": (lambda x: -x, lambda x: -x, None),
    "exp": (lambda x: x.exp(), "exp", None),
    "log": (lambda x: x.log(), "log", "positive"),
    "tanh": (lambda x: x.tanh(), "tanh", None),
    "relu": (lambda x: x.relu(), "relu", "away_from_zero"),
    "sigmoid": (lambda x: x.sigmoid(), "sigmoid", None),
    "sqrt": (lambda x: x.sqrt(), "sqrt", "positive"),
    "square": (lambda x: x**2, lambda x: x**2, None),
}


def in_domain(domain, x):
    if domain == "positive":
        return np.abs(x) + 0.1
    if domain == "away_from_zero":  # relu has no derivative at 0; finite differences straddle it
        return np.where(np.abs(x) < 1e-3, 0.5, x)
    return x


@pytest.mark.parametrize("name", sorted(UNARY))
@given(x=float_arrays(small_shapes))
def test_unary_op_gradients_match_finite_differences(name, x):
    ours, _, domain = UNARY[name]
    assert gradcheck(ours, t64(in_domain(domain, x)))


@pytest.mark.parametrize("name", sorted(UNARY))
@given(x=float_arrays(small_shapes))
def test_unary_op_gradients_match_torch(name, x, torch):
    ours, theirs, domain = UNARY[name]
    theirs = getattr(torch, theirs) if isinstance(theirs, str) else theirs
    check_against_torch(ours, theirs, in_domain(domain, x))


@pytest.mark.task1_3
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=1, max_dims=3, max_side=4))
def test_unbroadcast_sums_back_to_the_input_shape(shapes):
    a_shape, _ = shapes.input_shapes
    g = np.random.default_rng(0).standard_normal(shapes.result_shape)
    out = unbroadcast(g, a_shape)
    assert out.shape == tuple(a_shape)
    # the total is preserved: unbroadcasting only sums
    assert_close(out.sum(), g.sum(), rtol=1e-12, atol=1e-12)
    # and it is the adjoint of broadcasting: <broadcast(a), g> = <a, unbroadcast(g)>
    a = np.random.default_rng(1).standard_normal(a_shape)
    assert_close((np.broadcast_to(a, g.shape) * g).sum(), (a * out).sum(), rtol=1e-10, atol=1e-10)


@st.composite
def matmul_operands(draw):
    batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, max_side=3))
    n, k, m = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    a_shape, b_shape = batch.input_shapes[0] + (n, k), batch.input_shapes[1] + (k, m)
    if draw(st.booleans()):
        a_shape = (k,)  # a vector on the left
    elif draw(st.booleans()):
        b_shape = (k,)  # a vector on the right
    return draw(float_arrays(a_shape)), draw(float_arrays(b_shape))


@given(ab=matmul_operands())
def test_batched_matmul_gradients_match_finite_differences(ab):
    a, b = ab
    assert gradcheck(lambda x, y: x @ y, t64(a), t64(b))


@given(ab=matmul_operands())
def test_batched_matmul_gradients_match_torch(ab, torch):
    a, b = ab
    check_against_torch(lambda x, y: x @ y, lambda x, y: x @ y, a, b)


def test_matmul_rejects_mismatched_inner_dimensions():
    with pytest.raises(ValueError, match=r"inner dimensions differ: \(2, 3\) @ \(4, 5\)"):
        Tensor(np.ones((2, 3))) @ Tensor(np.ones((4, 5)))


def reduction_input(reduction, x):
    if reduction == "max":  # distinct values, well separated, so the max is unique and differentiable
        return x + np.arange(x.size).reshape(x.shape) * 0.01
    return x


@pytest.mark.task1_3
@pytest.mark.parametrize("g_shape, shape", [((2, 3), (2, 1)), ((4, 2, 3), (2, 3)), ((4, 2, 3), (1, 3)),
                                            ((5, 2, 3), (1, 1, 3)), ((3,), (1,)), ((2, 3), (2, 3))])
def test_unbroadcast_entry_by_entry_on_the_numpy_and_the_torch_backend(g_shape, shape, torch):
    """Each entry of unbroadcast(g, shape) is the sum of the entries of g that broadcasting copied it to — with the
    backend's own sums (torch's sum over an empty tuple of axes sums everything, numpy's nothing)."""
    from helpers import torch_device

    from minialign.torch_backend import TorchBackend

    g = np.random.default_rng(2).standard_normal(g_shape)
    index = np.broadcast_to(np.arange(int(np.prod(shape))).reshape(shape), g_shape)
    expected = np.bincount(index.ravel(), weights=g.ravel(), minlength=int(np.prod(shape))).reshape(shape)
    assert_close(unbroadcast(g, shape), expected, rtol=1e-12, atol=1e-14, what=f"unbroadcast {g_shape} → {shape}")
    bk = TorchBackend(torch_device(True))
    got = bk.to_numpy(unbroadcast(bk.asarray(g), shape, bk))
    assert_close(got, expected, rtol=1e-12, atol=1e-14, what=f"unbroadcast {g_shape} → {shape} on the torch backend")


@pytest.mark.task1_4
@pytest.mark.parametrize("reduction", ["sum", "mean", "max"])
@given(data=array_and_axis())
def test_reduction_gradients_match_finite_differences(reduction, data):
    x, axis, keepdims = data
    assert gradcheck(lambda t: getattr(t, reduction)(axis=axis, keepdims=keepdims), t64(reduction_input(reduction, x)))


@pytest.mark.parametrize("reduction", ["sum", "mean", "max"])
@given(data=array_and_axis())
def test_reduction_gradients_match_torch(reduction, data, torch):
    x, axis, keepdims = data
    x = reduction_input(reduction, x)

    def ours(t):
        return getattr(t, reduction)(axis=axis, keepdims=keepdims)

    def theirs(t):
        dims = tuple(range(t.ndim)) if axis is None else axis
        if reduction == "max":
            dims = (dims,) if isinstance(dims, int) else dims
            out = t
            for d in sorted((d % t.ndim for d in dims), reverse=True):
                out = out.max(dim=d, keepdim=True).values
            reduced = {d % t.ndim for d in dims}
            return out if keepdims else out.reshape([s for i, s in enumerate(t.shape) if i not in reduced])
        return getattr(torch, reduction)(t, dim=dims, keepdim=keepdims)

    check_against_torch(ours, theirs, x)


@pytest.mark.task1_4
def test_max_shares_gradient_between_ties():
    x = t64([1.0, 3.0, 3.0])
    x.max().backward()
    assert_close(x.grad, [0.0, 0.5, 0.5], rtol=1e-7)


@pytest.mark.task1_4
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", [1, (0, 2), -1])
def test_sum_and_max_gradients_entry_by_entry_over_interior_axes_with_ties(axis, keepdims):
    """Eq. (1.5) on a [2, 3, 4] array reduced over interior axes, with and without keepdims: the sum's gradient is
    the output gradient broadcast back; the max's goes to the maximal entries of each reduced slice, shared
    equally between ties (the array has ties inside slices)."""
    data = np.array([[[1.0, 5.0, 2.0, 2.0], [5.0, 0.0, 2.0, 7.0], [3.0, 5.0, -1.0, 7.0]],
                     [[4.0, 4.0, 4.0, 0.0], [4.0, 1.0, 9.0, 0.0], [-2.0, 4.0, 9.0, 0.0]]])
    axes = (axis % 3,) if isinstance(axis, int) else axis
    out_shape = tuple(1 if i in axes else n for i, n in enumerate(data.shape))
    c = np.random.default_rng(0).standard_normal(out_shape)
    g = c if keepdims else c.reshape(tuple(n for i, n in enumerate(data.shape) if i not in axes))
    x = t64(data)
    x.sum(axis=axis, keepdims=keepdims).backward(g)
    assert_close(x.grad, np.broadcast_to(c, data.shape), rtol=1e-12, what=f"sum(axis={axis}, keepdims={keepdims})")
    hit = data == data.max(axis=axes, keepdims=True)
    x = t64(data)
    x.max(axis=axis, keepdims=keepdims).backward(g)
    assert_close(x.grad, c * hit / hit.sum(axis=axes, keepdims=True), rtol=1e-12,
                 what=f"max(axis={axis}, keepdims={keepdims}) with ties")


@given(x=float_arrays(hnp.array_shapes(min_dims=2, max_dims=4, max_side=3)), data=st.data())
def test_reshape_and_permute_gradients_match_finite_differences(x, data):
    perm = data.draw(st.permutations(range(x.ndim)))
    assert gradcheck(lambda t: t.permute(perm).reshape(-1, x.shape[perm[-1]]) * 2.0, t64(x))


@given(x=float_arrays(hnp.array_shapes(min_dims=2, max_dims=4, max_side=3)), data=st.data())
def test_reshape_and_permute_gradients_match_torch(x, data, torch):
    perm = data.draw(st.permutations(range(x.ndim)))

    def ours(t):
        return t.permute(perm).reshape(-1, x.shape[perm[-1]]) * 2.0

    def theirs(t):
        return t.permute(*perm).reshape(-1, x.shape[perm[-1]]) * 2.0

    check_against_torch(ours, theirs, x)
    check_against_torch(lambda t: t.transpose(0, -1), lambda t: t.transpose(0, -1), x)


def index_keys(data):
    rows = np.array(data.draw(st.lists(st.integers(0, 4), min_size=1, max_size=7)))
    return [rows, (slice(1, 4), 2), (rows, slice(None, None, 2)), (Ellipsis, -1)]


@given(x=float_arrays((5, 4)), data=st.data())
def test_indexing_with_repeated_indices_accumulates_gradients(x, data):
    for key in index_keys(data):
        assert gradcheck(lambda t: t[key] * 3.0, t64(x))


@given(x=float_arrays((5, 4)), data=st.data())
def test_indexing_with_repeated_indices_matches_torch(x, data, torch):
    for key in index_keys(data):
        check_against_torch(lambda t: t[key] * 3.0, lambda t: t[key if not isinstance(key, tuple) else key] * 3.0, x)


def gather_index(x, data):
    axis = data.draw(st.sampled_from([0, 1, -1]))
    n_out = data.draw(st.integers(1, 6))
    shape = (n_out, 5) if axis == 0 else (3, n_out)
    return axis, np.array(data.draw(hnp.arrays(np.int64, shape, elements=st.integers(0, x.shape[axis] - 1))))


@given(x=float_arrays((3, 5)), data=st.data())
def test_gather_gradient_matches_finite_differences(x, data):
    axis, index = gather_index(x, data)
    assert gradcheck(lambda t: t.gather(axis, index), t64(x))


@given(x=float_arrays((3, 5)), data=st.data())
def test_gather_gradient_matches_torch(x, data, torch):
    axis, index = gather_index(x, data)
    check_against_torch(lambda t: t.gather(axis, index), lambda t: torch.gather(t, axis, torch.tensor(index)), x)


@given(a=float_arrays((2, 3)), b=float_arrays((2, 1)), c=float_arrays((2, 4)))
def test_concatenate_and_stack_split_the_gradient_back(a, b, c):
    assert gradcheck(lambda x, y, z: concatenate([x, y, z], axis=1), t64(a), t64(b), t64(c))


@given(a=float_arrays((2, 3)), b=float_arrays((2, 1)), c=float_arrays((2, 4)))
def test_concatenate_and_stack_match_torch(a, b, c, torch):
    check_against_torch(lambda x, y, z: concatenate([x, y, z], axis=-1), lambda x, y, z: torch.cat([x, y, z], -1),
                        a, b, c)
    check_against_torch(lambda x, y: stack([x, y], axis=1), lambda x, y: torch.stack([x, y], 1), a, a * 2)


def test_concatenate_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes must agree elsewhere"):
        concatenate([Tensor(np.ones((2, 3))), Tensor(np.ones((3, 3)))], axis=1)


@pytest.mark.task1_1
def test_a_value_used_twice_accumulates_both_gradients():
    # d/dx (x·x + x) = 2x + 1: the graph walk must add the contributions of every use
    x = t64([1.5, -2.0])
    y = x * x + x
    y.backward(np.ones(2))
    assert_close(x.grad, 2 * x.data + 1, rtol=1e-7)


@pytest.mark.task1_1
def test_an_interior_node_used_three_times_passes_on_the_sum_of_its_uses():
    """Question 1.C's graph: L = (y·y + y)·y with y = 2x, so dL/dx = 2(3y² + 2y). The interior node y must be
    walked once, after every node that uses it (a walk that reaches it early, or twice, gets another number)."""
    x = t64([0.7, -1.3, 2.0])
    y = x * 2.0
    loss = (y * y + y) * y
    loss.backward(np.ones(3))
    y_ = 2 * x.data
    assert_close(x.grad, 2 * (3 * y_**2 + 2 * y_), rtol=1e-12, what="dL/dx through an interior node used 3 times")


@pytest.mark.task1_1
def test_topological_order_lists_every_reachable_node_once_each_after_its_parents():
    x, w = t64([1.0, 2.0]), t64([0.5, -1.0])
    h = x * w               # interior, used by three nodes below
    a, b = h + x, h * h
    top = (a * b + h).sum()
    order = top._topological_order()
    ids = [id(n) for n in order]
    assert len(ids) == len(set(ids)), f"a node appears more than once: {len(ids)} entries, {len(set(ids))} nodes"
    reachable, todo = set(), [top]
    while todo:
        n = todo.pop()
        if id(n) not in reachable:
            reachable.add(id(n))
            todo += list(n._parents)
    assert set(ids) == reachable, f"expected the {len(reachable)} reachable nodes, got {len(set(ids))}"
    where = {i: k for k, i in enumerate(ids)}
    for n in order:
        for p in n._parents:
            assert where[id(p)] < where[id(n)], "a node comes before one of its parents"
    assert order[-1] is top


@pytest.mark.task1_1
def test_backward_on_a_deep_chain_does_not_recurse():
    x = t64([0.5])
    y = x
    for _ in range(5000):
        y = y * 1.0
    y.sum().backward()
    assert_close(x.grad, [1.0], rtol=1e-7)


def test_no_grad_records_nothing_and_detach_cuts_the_graph():
    x = t64([1.0, 2.0])
    with no_grad():
        y = x * 3.0
    assert not y.requires_grad and y._parents == ()
    z = (x * 2.0).detach()
    assert not z.requires_grad
    w = x * 2.0
    assert w.requires_grad


def test_non_scalar_backward_without_gradient_is_an_error():
    y = t64([1.0, 2.0]) * 2.0
    with pytest.raises(ValueError, match=r"needs a scalar .* got shape \(2,\)"):
        y.backward()
    with pytest.raises(ValueError, match=r"grad must have the tensor's shape \(2,\); got \(3,\)"):
        y.backward(np.ones(3))


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match="only floating-point tensors can require gradients"):
        Tensor(np.arange(3), requires_grad=True)


def test_scalars_take_the_tensor_dtype():
    x = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    assert (x * 2.5 + 1).dtype == np.float32
    assert (1.0 / x).dtype == np.float32


def test_gradcheck_catches_a_wrong_backward():
    """gradcheck must fail when a backward is wrong: here a deliberately broken exp."""

    def broken_exp(t):
        out = np.exp(t.data)
        return Tensor._result(out, (t,), lambda g: t._accumulate(g * out * 1.01), "bad_exp")

    with pytest.raises(GradcheckError, match=r"input 0 .* at index .*analytic .* numerical"):
        gradcheck(broken_exp, t64([0.3, -0.2, 1.0]))


def test_gradcheck_requires_float64():
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda t: t * 2, Tensor(np.ones(2, dtype=np.float32), requires_grad=True))


@pytest.mark.task1_1
def test_a_second_backward_through_a_freed_graph_is_an_error():
    a = t64([1.0, 2.0])
    y = (a * a).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="already freed"):
        y.backward()
    z = (a * a).sum()
    a.grad = None
    z.backward(retain_graph=True)
    z.backward()
    assert_close(a.grad, 4 * a.data, rtol=1e-7)  # two walks, each adding 2a
