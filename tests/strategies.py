"""Hypothesis strategies shared by the whole suite: shapes, arrays, broadcastable pairs, distributions."""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# ---------------------------------------------------------------- shapes and arrays (the engine)

small_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


def float_arrays(shape, low=-3.0, high=3.0, dtype=np.float64):
    """Arrays of finite floats of the given shape (a shape or a strategy of shapes)."""
    return hnp.arrays(dtype, shape, elements=st.floats(low, high, allow_nan=False, width=64))


@st.composite
def broadcastable_pair(draw, max_dims=3):
    """Two shapes that broadcast together, and arrays of those shapes."""
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=1, max_dims=max_dims, max_side=4))
    a, b = shapes.input_shapes
    return draw(float_arrays(a)), draw(float_arrays(b))


@st.composite
def array_and_axis(draw, shape=small_shapes):
    """An array and an axis of it (or None for all axes), with a keepdims flag."""
    x = draw(float_arrays(shape))
    axis = draw(st.one_of(st.none(), st.integers(-x.ndim, x.ndim - 1)))
    return x, axis, draw(st.booleans())


# ---------------------------------------------------------------- distributions (f-divergences, chapter 03)


@st.composite
def distributions(draw, size=None, min_size=1, max_size=8, allow_zeros=True, min_weight=1e-3):
    """A probability vector on the last axis; some entries exactly 0 when allow_zeros.

    Positive weights are drawn from [min_weight, 1] before normalisation, so ratios stay within
    about 1/min_weight and exact identities can be checked to float64 rounding.
    """
    n = size if size is not None else draw(st.integers(min_size, max_size))
    weights = np.array(draw(st.lists(st.floats(min_weight, 1.0), min_size=n, max_size=n)))
    if allow_zeros and n > 1:
        zero = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        if zero.all():
            zero[draw(st.integers(0, n - 1))] = False
        weights = np.where(zero, 0.0, weights)
    return weights / weights.sum()


@st.composite
def distribution_pairs(draw, min_size=1, max_size=8, allow_zeros=True):
    """Two distributions (P, Q) on the same support of random size."""
    n = draw(st.integers(min_size, max_size))
    return draw(distributions(size=n, allow_zeros=allow_zeros)), draw(distributions(size=n, allow_zeros=allow_zeros))


@st.composite
def markov_kernels(draw, n, m=None):
    """A row-stochastic n×m matrix K (K[x, y] = K(y | x)), zeros allowed within rows."""
    m = m if m is not None else draw(st.integers(1, 6))
    return np.stack([draw(distributions(size=m)) for _ in range(n)])


@st.composite
def rational_distributions(draw, size=None, min_size=1, max_size=8, max_count=6):
    """Integer counts c (all ≥ 1) and q = c/Σc: repeating atom x c[x] times gives a sample whose
    empirical mean is an exact expectation under q."""
    n = size if size is not None else draw(st.integers(min_size, max_size))
    counts = np.array(draw(st.lists(st.integers(1, max_count), min_size=n, max_size=n)))
    return counts, counts / counts.sum()
