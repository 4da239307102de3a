"""Tabular MDPs: Bellman optimality (Eq. 4.6), Q-learning (Eq. 4.7), and seed 004's example repaired."""
import time

import numpy as np
import pytest
from helpers import assert_close, assert_equal, names_shape
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minialign.mdp import (
    SEED004_STATED_Q,
    TabularMDP,
    bellman_optimality_backup,
    evaluate_policy,
    greedy_policy,
    optimal_actions,
    q_learning,
    q_update,
    seed004_mdp,
    seed004_q_update,
    seed004_worked_example,
    value_iteration,
)


@st.composite
def random_mdps(draw, max_states=5, max_actions=3):
    S = draw(st.integers(1, max_states))
    A = draw(st.integers(1, max_actions))
    weights = draw(hnp.arrays(np.float64, (S, A, S), elements=st.floats(0.0, 1.0)))
    weights = weights + 1e-3  # keep every row's total positive
    R = draw(hnp.arrays(np.float64, (S, A, S), elements=st.floats(-1.0, 1.0)))
    gamma = draw(st.floats(0.0, 0.95))
    return TabularMDP(weights / weights.sum(axis=2, keepdims=True), R, gamma)


def fixed_random_mdp(seed=7, S=4, A=2, gamma=0.8):
    rng = np.random.default_rng(seed)
    return TabularMDP(rng.dirichlet(np.ones(S), size=(S, A)), rng.normal(size=(S, A, S)), gamma)


def bellman_residual(mdp, Q):
    """max |Q − TQ| computed by explicit loops over (s, a, s'), independently of the vectorised backup."""
    worst = 0.0
    for s in range(mdp.n_states):
        for a in range(mdp.n_actions):
            rhs = sum(
                mdp.P[s, a, t] * (mdp.R[s, a, t] + mdp.gamma * max(Q[t])) for t in range(mdp.n_states)
            )
            worst = max(worst, abs(Q[s, a] - rhs))
    return worst


# ------------------------------------------------------------------------------- value iteration


@pytest.mark.task4_1
@pytest.mark.parametrize("mdp", [seed004_mdp(), fixed_random_mdp()], ids=["seed004", "random"])
def test_value_iteration_satisfies_bellman_optimality(mdp):
    Q, V, pi = value_iteration(mdp, tol=1e-12)
    assert bellman_residual(mdp, Q) < 1e-10
    assert_equal(V, Q.max(axis=1))
    assert_equal(pi, Q.argmax(axis=1))


@given(random_mdps())
def test_value_iteration_is_a_fixed_point_and_its_greedy_policy_attains_v_star(mdp):
    Q, V, pi = value_iteration(mdp, tol=1e-12)
    np.testing.assert_allclose(bellman_optimality_backup(mdp, Q), Q, rtol=0, atol=1e-10)
    np.testing.assert_allclose(evaluate_policy(mdp, pi), V, rtol=0, atol=1e-9)


@pytest.mark.task4_2
@given(random_mdps(), st.data())
def test_no_deterministic_policy_beats_v_star(mdp, data):
    _, V, _ = value_iteration(mdp, tol=1e-12)
    policy = np.array(data.draw(st.lists(st.integers(0, mdp.n_actions - 1), min_size=mdp.n_states,
                                         max_size=mdp.n_states)))
    assert (evaluate_policy(mdp, policy) <= V + 1e-9).all()


@pytest.mark.task4_2
def test_policy_evaluation_on_a_two_state_chain_by_hand():
    # State 0 pays 1 and moves to 1; state 1 pays 0 and stays. V(1) = 0, V(0) = 1.
    # With a self-loop paying 1 in state 1 instead: V(1) = 1/(1-γ) = 2 for γ = 0.5, V(0) = 1 + 0.5·2 = 2.
    P = np.array([[[0.0, 1.0]], [[0.0, 1.0]]])
    assert_close(evaluate_policy(TabularMDP(P, np.array([[1.0], [0.0]]), 0.5), [0, 0]), [1.0, 0.0], rtol=1e-7)
    assert_close(evaluate_policy(TabularMDP(P, np.array([[1.0], [1.0]]), 0.5), [0, 0]), [2.0, 2.0], rtol=1e-7)


# ------------------------------------------------------------------------------------ the seed's MDP


def test_repaired_seed_mdp_reads_the_stated_numbers_as_next_state_rows():
    mdp = seed004_mdp()
    for s in range(3):
        np.testing.assert_array_equal(mdp.P[s, 0], [0.8, 0.1, 0.1])  # U
        np.testing.assert_array_equal(mdp.P[s, 1], [0.1, 0.8, 0.1])  # D
    np.testing.assert_array_equal(mdp.expected_reward(), np.full((3, 2), 0.1))  # reach state 3 w.p. 0.1
    assert mdp.gamma == 0.9


@pytest.mark.task4_1
def test_seed_mdp_true_q_star_is_one_and_u_ties_d_everywhere():
    # Nothing depends on s, so V* is one number v = 0.1·1 + 0.9·v, hence v = 1 and Q* = 0.1 + 0.9·1 = 1.
    Q, V, _ = value_iteration(seed004_mdp(), tol=1e-13)
    assert_close(Q, np.ones((3, 2)), rtol=0, atol=1e-11)
    assert_close(V, np.ones(3), rtol=0, atol=1e-11)
    assert optimal_actions(Q).all()  # both actions optimal in every state
    assert not (Q[:, 1] > Q[:, 0] + 1e-9).any()  # "Q(s,D) > Q(s,U)" holds in no state


def test_seed_stated_values_are_not_the_optimum():
    Q, _, _ = value_iteration(seed004_mdp())
    assert np.abs(SEED004_STATED_Q - Q).max() > 0.9


# --------------------------------------------------------------------------------------- Q-learning


@pytest.mark.task4_3
def test_q_learning_converges_to_q_star_on_the_repaired_seed_mdp():
    mdp = seed004_mdp()
    Q_star, _, _ = value_iteration(mdp)
    t0 = time.perf_counter()
    Q = q_learning(mdp, alpha=lambda n: n**-0.8, steps=500_000, epsilon=0.2, seed=0)
    assert time.perf_counter() - t0 < 10.0
    assert np.abs(Q - Q_star).max() < 0.03, Q


@pytest.mark.task4_3
def test_q_learning_recovers_the_optimal_policy_on_a_random_mdp():
    mdp = fixed_random_mdp()
    Q_star, _, pi_star = value_iteration(mdp)
    Q = q_learning(mdp, alpha=lambda n: n**-0.8, steps=500_000, epsilon=0.3, seed=1, episode_length=50)
    assert np.abs(Q - Q_star).max() < 0.03, (Q, Q_star)
    assert_equal(greedy_policy(Q), pi_star)


@pytest.mark.task4_3
def test_q_learning_is_reproducible_and_zero_steps_returns_the_start():
    mdp = seed004_mdp()
    a = q_learning(mdp, alpha=0.1, steps=2000, seed=3)
    assert_equal(a, q_learning(mdp, alpha=0.1, steps=2000, seed=3))
    assert_equal(q_learning(mdp, steps=0, Q0=np.full((3, 2), 2.0)), np.full((3, 2), 2.0))


# -------------------------------------------------------------------------------- the seed's update


def test_seed_update_misplaces_alpha_on_a_concrete_step():
    Q = np.array([[0.5, 0.0], [0.2, -1.0]])  # update (s=0, a=0) with r = 1 landing in s' = 1
    # Eq. (4.7): 0.5 + 0.1·(1 + 0.9·0.2 − 0.5) = 0.5 + 0.1·0.68 = 0.568.
    assert q_update(Q, 0, 0, 1.0, 1, alpha=0.1, gamma=0.9) == pytest.approx(0.568, abs=1e-12)
    # The seed's rule: 0.5 + 0.1·1 + 0.9·0.2 = 0.78.
    assert seed004_q_update(Q, 0, 0, 1.0, 1, alpha=0.1, gamma=0.9) == pytest.approx(0.78, abs=1e-12)
    assert seed004_q_update(Q, 0, 0, 1.0, 1, alpha=0.1, gamma=0.9) != pytest.approx(0.568, abs=1e-6)


def test_seed_arithmetic_with_its_own_premise_gives_one_not_point_nine():
    # The seed takes max Q(3,·) = 1 for the update of Q(2,D): 0 + 0.1·1 + 0.9·1 = 1.0, printed as 0.9.
    Q = np.zeros((3, 2))
    Q[2] = 1.0
    assert seed004_q_update(Q, 1, 1, 1.0, 2, alpha=0.1, gamma=0.9) == pytest.approx(1.0, abs=1e-12)
    assert SEED004_STATED_Q[1, 1] == 0.9


@pytest.mark.task4_3
def test_worked_example_replayed_from_zero_under_both_rules():
    # Only (2,D)→3, (3,U)→2 and (3,D)→3 can move away from 0; the first three updates see only zeros.
    correct = seed004_worked_example("correct")
    q2d = 0.1 * (1 + 0.9 * 0)
    q3u = 0.1 * (0 + 0.9 * q2d)
    q3d = 0.1 * (1 + 0.9 * max(q3u, 0.0))
    assert_close(correct, [[0, 0], [0, q2d], [q3u, q3d]], rtol=0, atol=1e-15)
    assert (q2d, q3u, q3d) == pytest.approx((0.1, 0.009, 0.10081))
    seed = seed004_worked_example("seed")
    s3u = 0 + 0.1 * 0 + 0.9 * 0.1
    s3d = 0 + 0.1 * 1 + 0.9 * max(s3u, 0.0)
    assert_close(seed, [[0, 0], [0, 0.1], [s3u, s3d]], rtol=0, atol=1e-15)
    assert (s3u, s3d) == pytest.approx((0.09, 0.181))
    with pytest.raises(ValueError, match="'bogus'"):
        seed004_worked_example("bogus")


def test_seed_rule_iterated_diverges_while_eq_4_7_converges():
    # Self-loop (3,D)→3 with reward 1: Eq. (4.7) tends to r/(1−γ) = 10, the seed's rule multiplies by 1.9.
    Q_right, Q_seed = np.zeros((3, 2)), np.zeros((3, 2))
    for _ in range(5000):  # each step shrinks the error by 1 − α(1 − γ) = 0.99
        Q_right[2, 1] = q_update(Q_right, 2, 1, 1.0, 2, alpha=0.1, gamma=0.9)
    for _ in range(20):
        Q_seed[2, 1] = seed004_q_update(Q_seed, 2, 1, 1.0, 2, alpha=0.1, gamma=0.9)
    assert Q_right[2, 1] == pytest.approx(10.0, abs=1e-9)
    assert Q_seed[2, 1] > 1e4


# ----------------------------------------------------------------------------------------- validation


def test_the_seed_table_as_written_is_rejected():
    # As written, P(s'|s,U) is 0.8 for every s' when s = 1: the row sums to 2.4, not 1.
    P = np.empty((3, 2, 3))
    P[:, 0, :] = np.array([0.8, 0.1, 0.1])[:, None]
    P[:, 1, :] = np.array([0.1, 0.8, 0.1])[:, None]
    with pytest.raises(ValueError, match=r"sum to 1.*\[0\.3, 2\.4\]"):
        TabularMDP(P, np.zeros((3, 2)), 0.9)


def test_bad_inputs_are_rejected():
    P = np.full((2, 1, 2), 0.5)
    with pytest.raises(ValueError, match="non-negative"):
        TabularMDP(np.array([[[1.5, -0.5]], [[0.5, 0.5]]]), np.zeros((2, 1)), 0.9)
    with pytest.raises(ValueError, match=r"shape \[S, A, S\]"):
        TabularMDP(np.full((2, 1, 3), 1 / 3), np.zeros((2, 1)), 0.9)
    with pytest.raises(ValueError, match=r"R must have shape"):
        TabularMDP(P, np.zeros((3, 1)), 0.9)
    with pytest.raises(ValueError, match="gamma"):
        TabularMDP(P, np.zeros((2, 1)), 1.5)
    with pytest.raises(ValueError, match="gamma < 1"):
        value_iteration(TabularMDP(P, np.zeros((2, 1)), 1.0))
    with pytest.raises(ValueError, match="Q must have shape"):
        bellman_optimality_backup(TabularMDP(P, np.zeros((2, 1)), 0.5), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="epsilon"):
        q_learning(TabularMDP(P, np.zeros((2, 1)), 0.5), epsilon=1.5)


# ----------------------------------------------------------------------------- what the handout asks for, by task
def _two_by_two(gamma=0.5):
    """Two states, two actions: action 0 stays (reward 1 in state 0, 0 in state 1), action 1 moves to the other
    state (reward 0 from state 0, 3 from state 1)."""
    P = np.zeros((2, 2, 2))
    P[0, 0, 0] = P[1, 0, 1] = 1.0
    P[0, 1, 1] = P[1, 1, 0] = 1.0
    R = np.array([[1.0, 0.0], [0.0, 3.0]])
    return TabularMDP(P, R, gamma)


@pytest.mark.task4_1
def test_bellman_backup_and_value_iteration_refuse_what_the_handout_names():
    mdp = _two_by_two()
    for shape in [(2,), (3, 2), (2, 3)]:
        with pytest.raises(ValueError):
            bellman_optimality_backup(mdp, np.zeros(shape))
    for gamma in (1.0,):
        with pytest.raises(ValueError, match="(?i)gamma|γ"):
            value_iteration(_two_by_two(gamma))
    with pytest.raises(RuntimeError):
        value_iteration(_two_by_two(0.99), tol=1e-12, max_iter=5)


@pytest.mark.task4_1
def test_bellman_backup_entry_by_entry_on_a_two_by_two_mdp():
    """(TQ)(s,a) = r(s,a) + γ max_a' Q(s', a') with s' the deterministic next state, for a Q whose maxima lie in
    different columns (a backup that takes the max over states, or the min, gives other numbers)."""
    mdp = _two_by_two(0.5)
    mdp = TabularMDP(mdp.P, np.array([[1.2, 0.0], [0.0, 3.0]]), 0.5)
    Q = np.array([[2.0, -1.0], [0.5, 4.0]])
    expected = np.array([[1.2 + 0.5 * 2.0, 0 + 0.5 * 4.0], [0 + 0.5 * 4.0, 3 + 0.5 * 2.0]])
    assert_close(bellman_optimality_backup(mdp, Q), expected, rtol=1e-12, what="(TQ)(s, a)")
    Q_star, V_star, greedy = value_iteration(mdp)
    # staying in 0 is worth 1.2/(1 − γ) = 2.4 > γ V*(1); V*(1) = 3 + γ V*(0) = 4.2
    assert_close(V_star, [2.4, 4.2], rtol=1e-9, what="V*")
    assert_close(Q_star, [[2.4, 0.5 * 4.2], [0.5 * 4.2, 4.2]], rtol=1e-9, what="Q*")
    assert_equal(greedy, [0, 1], what="greedy policy")


@pytest.mark.task4_1
def test_value_iteration_stops_at_the_first_difference_strictly_below_tol():
    """One state, one action, reward 1, γ = ½: the iterates 0, 1, 1.5, 1.75, 1.875, … differ by 1, ½, ¼, ⅛, …,
    exactly in float64. "Until successive tables differ by less than tol": a difference equal to tol is not yet
    below it, so tol = ¼ stops at 1.875 (difference ⅛), not at 1.75 (difference ¼)."""
    mdp = TabularMDP(np.ones((1, 1, 1)), np.ones((1, 1)), 0.5)
    for tol, q in ((1.0, 1.5), (0.5, 1.75), (0.25, 1.875), (0.3, 1.75)):
        Q_star, V_star, greedy = value_iteration(mdp, tol=tol)
        assert_equal(Q_star, [[q]], what=f"Q returned for tol={tol}")
        assert_equal(V_star, [q], what=f"V returned for tol={tol}")
        assert_equal(greedy, [0], what="greedy policy")
    with pytest.raises(RuntimeError):  # the difference ¼ is reached at the third iteration, but is not below ¼
        value_iteration(mdp, tol=0.25, max_iter=3)


@pytest.mark.task4_2
def test_evaluate_policy_accepts_stochastic_policies_with_zero_probabilities():
    """π(a|s) = 0 is a probability like any other: a deterministic policy written as a [S, A] table (one-hot rows)
    has the value of its action indices, and a row may exclude an action while another row mixes."""
    mdp = _two_by_two(0.5)
    assert_close(evaluate_policy(mdp, np.array([[1.0, 0.0], [0.0, 1.0]])), [2.0, 4.0], rtol=1e-12,
                 what="V^π of the one-hot table of [stay, move]")
    assert_close(evaluate_policy(mdp, np.array([[0.0, 1.0], [1.0, 0.0]])),
                 evaluate_policy(mdp, np.array([1, 0])), rtol=1e-12, atol=1e-15,
                 what="V^π of the one-hot table of [move, stay]")
    pi = np.array([[0.25, 0.75], [0.0, 1.0]])
    expected = np.linalg.solve(np.eye(2) - 0.5 * np.array([[0.25, 0.75], [1.0, 0.0]]), [0.25, 3.0])
    assert_close(evaluate_policy(mdp, pi), expected, rtol=1e-12, what="V^π with a zero in one row")


@pytest.mark.task4_2
def test_evaluate_policy_refuses_what_is_not_a_policy_naming_the_expected_shapes():
    mdp = _two_by_two()
    for bad in ([0, 2], [-1, 0], np.array([0.0, 1.0])):  # an action out of range, a negative one, not integers
        with pytest.raises(ValueError):
            evaluate_policy(mdp, np.asarray(bad))
    for bad in ([[0.5, 0.6], [1.0, 0.0]], [[1.5, -0.5], [0.0, 1.0]]):  # rows not summing to 1, a negative entry
        with pytest.raises(ValueError):
            evaluate_policy(mdp, np.array(bad))
    with pytest.raises(ValueError) as e:
        evaluate_policy(mdp, np.zeros((3, 2)))
    assert names_shape(str(e.value), (2,)) and names_shape(str(e.value), (2, 2)), \
        f"the error must name the expected shapes (2,) and (2, 2); it says {str(e.value)!r}"


@pytest.mark.task4_2
def test_evaluate_policy_of_a_stochastic_policy_entry_by_entry():
    """V^π = (I − γP_π)⁻¹ r_π for π mixing the two actions differently in each state, solved by hand; the
    deterministic policies are its corners."""
    mdp = _two_by_two(0.5)
    pi = np.array([[0.25, 0.75], [0.6, 0.4]])
    r = np.array([0.25 * 1.0, 0.4 * 3.0])
    P_pi = np.array([[0.25, 0.75], [0.4, 0.6]])
    expected = np.linalg.solve(np.eye(2) - 0.5 * P_pi, r)
    assert_close(evaluate_policy(mdp, pi), expected, rtol=1e-12, what="V^π of a stochastic policy")
    assert_close(evaluate_policy(mdp, np.array([1, 0])), [0.5 * 0.0 / 1, 0.0], rtol=1e-12, atol=1e-15,
                 what="V^π moving from 0 to the absorbing-at-zero state 1")
    assert_close(evaluate_policy(mdp, np.array([0, 1])), [2.0, 3 + 0.5 * 2.0], rtol=1e-12, what="V^π of [stay, move]")


@pytest.mark.task4_3
def test_q_update_by_hand_from_a_table_that_is_not_zero():
    """Eq. (4.7) on a non-zero table (from zero, Q(s,a) vanishes and a missing −Q(s,a) goes unseen): 2 + 0.3·(0.5 +
    0.9·3 − 2) = 2.36, and on a self-loop, where Q(s', ·) is the row being updated."""
    Q = np.array([[1.0, 2.0], [0.5, 3.0]])
    assert_close(q_update(Q, 0, 1, 0.5, 1, alpha=0.3, gamma=0.9), 2.0 + 0.3 * (0.5 + 0.9 * 3.0 - 2.0), rtol=1e-12,
                 what="Q(0, 1) after one update")
    assert_close(q_update(Q, 1, 0, -1.0, 1, alpha=0.5, gamma=0.5), 0.5 + 0.5 * (-1.0 + 0.5 * 3.0 - 0.5), rtol=1e-12,
                 what="Q(1, 0) after a self-loop")
    assert_equal(Q, [[1.0, 2.0], [0.5, 3.0]], what="the table (q_update returns the value, it does not write it)")


@pytest.mark.task4_3
def test_q_learning_updates_entry_by_entry_against_a_replay_of_eq_4_7():
    """q_learning's own update, Eq. (4.7), on a deterministic MDP with ε = 0 (greedy, no randomness but the start
    state): action 0 moves to the other state, action 1 stays; from a non-zero table, with the step size
    1/(n + 1) of each pair's n-th visit, twelve steps give the table of a replay by hand from one of the two start
    states. A target that bootstraps from Q(s, ·) or Q(s', a), misses γ or −Q(s, a), or a step size not per
    visit is at least 0.3 away from both."""
    P = np.zeros((2, 2, 2))
    P[0, 0, 1] = P[1, 0, 0] = P[0, 1, 0] = P[1, 1, 1] = 1.0
    R = np.array([[2.0, -0.5], [2.0, -1.0]])
    mdp = TabularMDP(P, R, 0.5)
    Q0 = np.array([[0.5, 3.0], [1.5, 3.0]])  # staying looks best at first; from either start all four pairs are updated
    alpha = lambda n: 1.0 / (n + 1)  # noqa: E731
    steps = 12

    def replay(s):
        Q, visits = Q0.copy(), np.zeros((2, 2), dtype=np.int64)
        for _ in range(steps):
            a = int(np.argmax(Q[s]))
            s_next = int(np.argmax(P[s, a]))
            visits[s, a] += 1
            Q[s, a] += alpha(visits[s, a]) * (R[s, a] + 0.5 * Q[s_next].max() - Q[s, a])
            s = s_next
        return Q

    got = q_learning(mdp, alpha=alpha, steps=steps, epsilon=0.0, seed=0, Q0=Q0)
    by_hand = min((replay(0), replay(1)), key=lambda e: np.abs(e - got).max())
    assert_close(got, by_hand, rtol=1e-12, atol=1e-15, what="Q after twelve greedy steps (replayed by hand)")
