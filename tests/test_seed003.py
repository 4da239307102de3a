"""Seed 003 audit (chapter 02, "What seed 003 gets wrong"): each claim of the seed checked numerically.

The seed's code snippets are transcribed character for character into ``SEED_*`` strings and run in a fresh
namespace, so a test exercises exactly what the seed printed. Every test passes for the correct statement
and would fail if the seed's statement were true.
"""
import math
import textwrap

import numpy as np
import pytest

from minialign import functional as F
from minialign.nn import Parameter
from minialign.optim import SGD
from minialign.tensor import Tensor

# ------------------------------------------------------------------ the seed's code (seed 003, §2.1.1–§2.3.2)

SEED_MATRIX_MULTIPLY = textwrap.dedent(
    """
    def matrix_multiply(A, B):
        m = len(A)
        n = len(A[0])
        p = len(B[0])

        C = [[0 for _ in range(p)] for _ in range(m)]

        for i in range(m):
            for j in range(p):
                for k in range(n):
                    C[i][j] += A[i][k] * B[k][j]

        return C
    """
)

SEED_MATRIX_DERIVATIVE = textwrap.dedent(
    """
    def matrix_derivative(matrix, x):
        n = len(matrix)

        derivative = [[0 for _ in range(n)] for _ in range(n)]

        for i in range(n):
            for j in range(n):
                for k in range(n):
                    # 使用链式法则求导
                    derivative[i][j] += matrix[i][k] * derivative_matrix[k][x]

        return derivative
    """
)

SEED_GRADIENT_DESCENT = textwrap.dedent(
    """
    def gradient_descent(params, gradients, learning_rate):
        for param, grad in zip(params, gradients):
            param -= learning_rate * grad
    """
)

SEED_SGD = textwrap.dedent(
    """
    def stochastic_gradient_descent(data, params, learning_rate, batch_size):
        for batch in data:
            gradients = compute_gradients(batch, params)
            params -= learning_rate * gradients
    """
)


def seed_function(source, name, **globals_):
    """Define the seed's function in a namespace holding only ``globals_`` and return it."""
    namespace = dict(globals_)
    exec(compile(source, f"<seed 003: {name}>", "exec"), namespace)
    return namespace[name]


# ------------------------------------------------------------------ §2.1 eigendecomposition


def test_eigendecomposition_is_q_lambda_q_inverse_and_covers_singular_matrices():
    """Seed 003, §2.1: "eigendecomposition factors a matrix into the product of two invertible matrices".
    It is A = Q Λ Q⁻¹ (three factors, Λ diagonal). A singular matrix has one (an eigenvalue 0), yet it can
    never be a product of two invertible matrices, since det(BC) = det B · det C ≠ 0."""
    rng = np.random.default_rng(0)
    b = rng.standard_normal((4, 3))
    a = b @ b.T  # symmetric 4x4 of rank 3: singular
    lam, q = np.linalg.eig(a)
    np.testing.assert_allclose(q @ np.diag(lam) @ np.linalg.inv(q), a, atol=1e-10)
    assert np.min(np.abs(lam)) < 1e-10  # one eigenvalue is zero ...
    assert abs(np.linalg.det(a)) < 1e-10  # ... so det A = 0: A is not B·C with B, C invertible


def test_not_every_matrix_has_an_eigendecomposition():
    """The Jordan block [[1, 1], [0, 1]] is invertible but not diagonalisable: its eigenvectors are parallel,
    so Q is singular and A = Q Λ Q⁻¹ does not exist. "Factorisation into invertible matrices" would hold
    trivially (A = A·I) and so says nothing about eigenvalues."""
    a = np.array([[1.0, 1.0], [0.0, 1.0]])
    lam, q = np.linalg.eig(a)
    np.testing.assert_allclose(lam, [1.0, 1.0])
    assert abs(np.linalg.det(q)) < 1e-12
    assert np.linalg.matrix_rank(a - np.eye(2)) == 1  # one eigenvector direction for a double eigenvalue


# ------------------------------------------------------------------ §2.1.1 matrix multiplication (right)


def test_seed_matrix_multiply_is_correct():
    """Seed 003, §2.1.1: the triple loop is a correct (if slow) matrix product."""
    matrix_multiply = seed_function(SEED_MATRIX_MULTIPLY, "matrix_multiply")
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, 5)), rng.standard_normal((5, 2))
    np.testing.assert_allclose(np.array(matrix_multiply(a.tolist(), b.tolist())), a @ b, atol=1e-12)


# ------------------------------------------------------------------ §2.1.2 "matrix derivative"


def test_seed_matrix_derivative_does_not_run():
    """Seed 003, §2.1.2: ``matrix_derivative`` reads ``derivative_matrix``, a name defined nowhere."""
    matrix_derivative = seed_function(SEED_MATRIX_DERIVATIVE, "matrix_derivative")
    with pytest.raises(NameError, match="derivative_matrix"):
        matrix_derivative([[1.0, 2.0], [3.0, 4.0]], 0)


def test_seed_matrix_derivative_is_a_product_not_a_derivative():
    """Even with the missing name supplied, the loop computes M·D[:, x] copied into every column: a
    matrix-vector product, which does not depend on j. The derivative of L = Σ G∘(AB) with respect to A is
    G Bᵀ (Eq. 1.4), which central differences confirm and the seed's output does not match."""
    rng = np.random.default_rng(2)
    a, b, g = rng.standard_normal((3, 3)), rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    matrix_derivative = seed_function(SEED_MATRIX_DERIVATIVE, "matrix_derivative", derivative_matrix=b.tolist())
    seed = np.array(matrix_derivative(a.tolist(), 1))
    np.testing.assert_allclose(seed, np.repeat((a @ b[:, 1])[:, None], 3, axis=1), atol=1e-12)
    assert np.allclose(seed, seed[:, :1])  # every column the same: no dependence on the entry differentiated

    loss = lambda m: float(np.sum(g * (m @ b)))  # noqa: E731
    eps, numeric = 1e-6, np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        up, down = a.copy(), a.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (loss(up) - loss(down)) / (2 * eps)
    at = Tensor(a, requires_grad=True)
    ((at @ Tensor(b)) * Tensor(g)).sum().backward()
    np.testing.assert_allclose(at.grad, g @ b.T, atol=1e-12)
    np.testing.assert_allclose(at.grad, numeric, atol=1e-6)
    assert not np.allclose(seed, numeric, atol=1e-3)


# ------------------------------------------------------------------ §2.3.1 gradient descent


def test_seed_gradient_descent_leaves_python_floats_unchanged():
    """Seed 003, §2.3.1: ``param -= lr * grad`` inside the loop rebinds the loop variable. On Python floats
    (immutable) the caller's list is untouched: no step is taken at all."""
    gradient_descent = seed_function(SEED_GRADIENT_DESCENT, "gradient_descent")
    params, grads = [1.0, -2.0, 3.0], [0.5, 0.5, 0.5]
    gradient_descent(params, grads, 0.1)
    assert params == [1.0, -2.0, 3.0]


def test_seed_gradient_descent_leaves_a_flat_numpy_vector_unchanged():
    """Iterating a 1-D NumPy array yields immutable NumPy scalars, so the same loop does nothing to a
    parameter vector either."""
    gradient_descent = seed_function(SEED_GRADIENT_DESCENT, "gradient_descent")
    params = np.array([1.0, -2.0, 3.0])
    gradient_descent(params, np.full(3, 0.5), 0.1)
    np.testing.assert_array_equal(params, [1.0, -2.0, 3.0])


def test_seed_gradient_descent_works_in_place_only_on_a_list_of_arrays():
    """On a list of mutable arrays, ``-=`` is an in-place update and the step happens."""
    gradient_descent = seed_function(SEED_GRADIENT_DESCENT, "gradient_descent")
    params = [np.array([1.0, -2.0]), np.array([[3.0]])]
    gradient_descent(params, [np.array([0.5, 0.5]), np.array([[1.0]])], 0.1)
    np.testing.assert_allclose(params[0], [0.95, -2.05])
    np.testing.assert_allclose(params[1], [[2.9]])


def test_gradient_descent_by_rebinding_the_parameter_attribute_descends():
    """The correct loop stores the new value where the caller sees it (here ``p.data = p.data − lr·g``, as
    minialign's optimizers do). On f(θ) = ½‖θ − c‖² every step moves θ a fraction lr of the way to c."""
    c = np.array([2.0, -1.0, 0.5])
    theta = Parameter(np.zeros(3))
    opt = SGD([theta], lr=0.1)
    for _ in range(50):
        opt.zero_grad()
        (((theta - Tensor(c)) ** 2.0).sum() * 0.5).backward()
        opt.step()
    np.testing.assert_allclose(theta.data, c * (1 - 0.9**50), atol=1e-12)


# ------------------------------------------------------------------ §2.3.2 stochastic gradient descent


def test_seed_sgd_does_not_run_as_printed():
    """Seed 003, §2.3.2: ``compute_gradients`` is defined nowhere."""
    sgd = seed_function(SEED_SGD, "stochastic_gradient_descent")
    with pytest.raises(NameError, match="compute_gradients"):
        sgd([[1.0]], np.zeros(1), 0.1, 1)


def test_seed_sgd_fails_on_a_list_of_parameters():
    """With the gradient function supplied, ``params -= lr * gradients`` on lists is ``float * list``: a
    TypeError. It only runs when params and gradients are single arrays."""
    grads = lambda batch, params: [2.0 * p for p in params]  # noqa: E731
    sgd = seed_function(SEED_SGD, "stochastic_gradient_descent", compute_gradients=grads)
    with pytest.raises(TypeError):
        sgd([[1.0], [2.0]], [1.0, 2.0], 0.1, 1)


def test_seed_sgd_ignores_batch_size():
    """The text says SGD uses one sample's gradient, yet the code loops over ``batch in data`` and never
    reads ``batch_size``: any batch size gives the same result, bit for bit."""
    data = [np.array([1.0, 2.0]), np.array([3.0]), np.array([0.5, 0.5, 0.5])]
    grads = lambda batch, params: params - batch.mean()  # noqa: E731  (gradient of ½(θ − mean)²)
    sgd = seed_function(SEED_SGD, "stochastic_gradient_descent", compute_gradients=grads)
    results = []
    for batch_size in (1, 2, 100):
        params = np.array([0.0])
        sgd(data, params, 0.5, batch_size)
        results.append(params.copy())
    assert results[0][0] != 0.0  # on an array the step does happen (in place) ...
    assert all(np.array_equal(results[0], r) for r in results)  # ... and batch_size changes nothing


# ------------------------------------------------------------------ §1.3 word embeddings


def test_embedding_is_a_one_hot_product_into_fewer_dimensions():
    """Seed 003, §1.3 says only that an embedding maps words "into a high-dimensional vector space". An
    embedding is a learned linear map: the row lookup W[i] = onehot(i)ᵀ W takes the V-dimensional one-hot
    space into d dimensions (for word vocabularies d ≪ V: GPT-2 has d = 768, V = 50 257). Its gradient is
    the scatter-add onehotᵀ G, so repeated ids add their gradients."""
    rng = np.random.default_rng(3)
    v, d = 27, 8
    w = Tensor(rng.standard_normal((v, d)), requires_grad=True)
    ids = np.array([[0, 5, 5, 26]])
    out = F.embedding(ids, w)
    onehot = np.eye(v)[ids]  # [1, 4, V]
    np.testing.assert_allclose(out.data, onehot @ w.data, atol=1e-12)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    np.testing.assert_allclose(w.grad, onehot[0].T @ g[0], atol=1e-12)
    np.testing.assert_allclose(w.grad[5], g[0, 1] + g[0, 2], atol=1e-12)
    assert out.shape[-1] < v


# ------------------------------------------------------------------ §1.3 / §2.2: softmax and attention


def test_causal_attention_never_reads_the_future():
    """Seed 003, §1.3 describes self-attention only as "capturing dependencies between positions" and the
    Transformer as a sequence-to-sequence model. A GPT is a decoder-only stack whose attention is causally
    masked (Radford et al. 2019): changing a later token must leave every earlier output unchanged. Without
    the mask (the encoder's attention) it does not."""
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((1, 5, 4)) for _ in range(3))
    k2, v2 = k.copy(), v.copy()
    k2[:, 3:], v2[:, 3:] = rng.standard_normal((1, 2, 4)), rng.standard_normal((1, 2, 4))
    causal = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), causal=True).data
    causal2 = F.scaled_dot_product_attention(Tensor(q), Tensor(k2), Tensor(v2), causal=True).data
    np.testing.assert_allclose(causal[:, :3], causal2[:, :3], atol=1e-12)
    full = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), causal=False).data
    full2 = F.scaled_dot_product_attention(Tensor(q), Tensor(k2), Tensor(v2), causal=False).data
    assert not np.allclose(full[:, :3], full2[:, :3])


def test_attention_scale_keeps_score_variance_near_one():
    """Vaswani et al. (2017) divide scores by √d: for unit-variance q and k, q·k has variance d, so without
    the scale the softmax saturates as d grows."""
    rng = np.random.default_rng(5)
    for d in (16, 256):
        q, k = rng.standard_normal((20000, d)), rng.standard_normal((20000, d))
        scores = np.sum(q * k, axis=1)
        assert abs(scores.var() / d - 1.0) < 0.05
        assert abs((scores / math.sqrt(d)).var() - 1.0) < 0.05
