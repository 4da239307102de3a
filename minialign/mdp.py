"""Tabular MDPs: value iteration, policy evaluation and Q-learning, and seed 004's example repaired.

Equations (chapter 04):
  Eq. (4.5)  Bellman expectation, for a policy π:
             V^π(s) = Σ_a π(a|s) Σ_{s'} P(s'|s,a) [R(s,a,s') + γ V^π(s')]
  Eq. (4.6)  Bellman optimality:
             Q*(s,a) = Σ_{s'} P(s'|s,a) [R(s,a,s') + γ max_{a'} Q*(s',a')]
  Eq. (4.7)  Q-learning, after observing (s, a, r, s'):
             Q(s,a) ← Q(s,a) + α [r + γ max_{a'} Q(s',a') − Q(s,a)]

Seed 004, section 4.5 ("举例说明", worked example), as written
--------------------------------------------------------------
- States s ∈ {1, 2, 3}; actions a ∈ {U, D} (the agent "moves up or down").
- Reward: 1 when the agent reaches state 3, 0 otherwise, written R(s,a,s') = 1 if s' = 3 else 0.
- Discount γ = 0.9. The learning rate is never named; its arithmetic uses α = 0.1.
- "Transition probabilities", with the case index on the *current* state s:
      P(s'|s,U) = 0.8 if s = 1,  0.1 if s = 2,  0.1 if s = 3
      P(s'|s,D) = 0.1 if s = 1,  0.8 if s = 2,  0.1 if s = 3
- Initial values Q(s,a) = 0 for all pairs.
- One update per pair, in this order, with these next states:
      (1,U)→2, (1,D)→1, (2,U)→1, (2,D)→3, (3,U)→2, (3,D)→3.
  Each is first written with Eq. (4.7) and then evaluated as Q(s,a) + α·R + γ·max_{a'} Q(s',a'), e.g.
  "Q(2,D) ← 0 + 0.1×1 + 0.9×max Q(3,·) = 0 + 0.1 + 0.9×1 = 0.1 + 0.9 = 0.9".
- Values it reports: Q(1,U) = 0, Q(1,D) = 0, Q(2,U) = 0, Q(2,D) = 0.9, Q(3,U) = 0, Q(3,D) = 0.9.
- Conclusion: D is the optimal action in all three states "because Q(s,D) > Q(s,U)".
- Its section 4.4 writes V*(s) = max_a Σ_{s'} P(s'|s,a) Σ_r r P(r|s') V*(s'), a product of reward and value.

What is wrong with it
- P(s'|s,a) as written depends on s only, so for fixed (s, a) it is one number, not a distribution over s'.
- α multiplies the reward alone and the old Q(s,a) is kept in full: Q + αR + γ max Q' instead of Eq. (4.7).
  Iterated, that rule has no fixed point for any r > 0 (it adds Q to itself) and grows without bound.
- It uses max Q(3,·) = 1 although every Q starts at 0 and Q(3,·) has not been updated yet.
- 0.1 + 0.9 is 1.0, not 0.9.
- In state 1 its own numbers give Q(1,D) = Q(1,U) = 0, so "Q(1,D) > Q(1,U)" is false; and under the true Q*
  (below) U and D tie in every state.
- The Bellman equation of section 4.4 multiplies reward by value; Eq. (4.6) adds them.

The repair (the smallest change that gives a Markov decision process)
Each of the two case lists sums to 1 over the three states (0.8 + 0.1 + 0.1 and 0.1 + 0.8 + 0.1), so they
are read as distributions over the next state s' instead of the current one:
      P(· | s, U) = (0.8, 0.1, 0.1),   P(· | s, D) = (0.1, 0.8, 0.1)   over s' = (1, 2, 3), for every s.
Rewards, γ = 0.9 and α = 0.1 are kept, and the six transitions of the worked example become six sampled
transitions (each has probability 0.1 or 0.8 under the repair, so each can occur). A reading in which those
six moves are the "intended" ones would need a rule the seed does not state, and they follow no up/down
pattern (U takes 1→2 but 2→1), so it is not used.

Under the repair neither P nor R depends on s, so V* is one number v with v = 0.1·1 + 0.9·v, i.e. v = 1,
and Q*(s,a) = Σ_{s'} P(s'|s,a)[1{s'=3} + 0.9·1] = 0.1 + 0.9 = 1 for every (s, a): both actions are
optimal in every state. (The seed's max Q(3,·) = 1 happens to be the true value, which Q-learning from
zero only reaches in the limit.)

States and actions are indexed from 0 in the arrays: state k is the seed's state k + 1; action 0 is U, 1 is D.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable

import numpy as np

# ---------------------------------------------------------------------------------------------- MDP


@dataclass(frozen=True)
class TabularMDP:
    """A finite MDP: P[s, a, s'] = P(s'|s,a), R[s, a, s'] (or R[s, a]) the reward, discount gamma."""

    P: np.ndarray
    R: np.ndarray
    gamma: float
    state_names: tuple | None = None
    action_names: tuple | None = None

    def __post_init__(self):
        P = np.array(self.P, dtype=np.float64)
        R = np.array(self.R, dtype=np.float64)
        if P.ndim != 3 or P.shape[0] != P.shape[2] or 0 in P.shape:
            raise ValueError(f"P must have shape [S, A, S] with S, A >= 1; got shape {P.shape}")
        S, A, _ = P.shape
        if R.shape not in ((S, A, S), (S, A)):
            raise ValueError(f"R must have shape {(S, A, S)} or {(S, A)} to match P; got shape {R.shape}")
        if not np.isfinite(P).all() or (P < 0).any():
            raise ValueError("P must be finite and non-negative; got entries outside [0, inf)")
        sums = P.sum(axis=2)
        if not np.allclose(sums, 1.0, rtol=0, atol=1e-9):
            s, a = np.unravel_index(np.argmax(np.abs(sums - 1.0)), sums.shape)
            raise ValueError(
                "each row P[s, a, :] must sum to 1 over next states; "
                f"got sums in [{sums.min():.6g}, {sums.max():.6g}] (worst: s={s}, a={a}, sum={sums[s, a]:.6g})"
            )
        if not np.isfinite(R).all():
            raise ValueError("R must be finite; got NaN or inf")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1]; got {self.gamma}")
        for names, n, what in ((self.state_names, S, "state_names"), (self.action_names, A, "action_names")):
            if names is not None and len(names) != n:
                raise ValueError(f"{what} must have {n} entries; got {len(names)}")
        P.setflags(write=False)
        R.setflags(write=False)
        object.__setattr__(self, "P", P)
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "gamma", float(self.gamma))

    @property
    def n_states(self) -> int:
        return self.P.shape[0]

    @property
    def n_actions(self) -> int:
        return self.P.shape[1]

    def expected_reward(self) -> np.ndarray:
        """r(s,a) = Σ_{s'} P(s'|s,a) R(s,a,s'), shape [S, A]."""
        return (self.P * self.R).sum(axis=2) if self.R.ndim == 3 else self.R.copy()

    def reward(self, s: int, a: int, s_next: int) -> float:
        return float(self.R[s, a, s_next] if self.R.ndim == 3 else self.R[s, a])


# ------------------------------------------------------------------------------------ planning


def bellman_optimality_backup(mdp: TabularMDP, Q: np.ndarray) -> np.ndarray:
    """Eq. (4.6), right-hand side: (TQ)(s,a) = Σ_{s'} P(s'|s,a)[R(s,a,s') + γ max_{a'} Q(s',a')]."""
    Q = np.asarray(Q, dtype=np.float64)
    if Q.shape != (mdp.n_states, mdp.n_actions):
        raise ValueError(f"Q must have shape {(mdp.n_states, mdp.n_actions)}; got {Q.shape}")
    return mdp.expected_reward() + mdp.gamma * mdp.P @ Q.max(axis=1)


def greedy_policy(Q: np.ndarray) -> np.ndarray:
    """argmax_a Q(s,a) per state (ties go to the lowest action index)."""
    return np.asarray(Q).argmax(axis=1)


def optimal_actions(Q: np.ndarray, atol: float = 1e-9) -> np.ndarray:
    """Boolean [S, A]: the actions within atol of the best value in each state (all of them on a tie)."""
    Q = np.asarray(Q)
    return Q >= Q.max(axis=1, keepdims=True) - atol


def value_iteration(mdp: TabularMDP, tol: float = 1e-12, max_iter: int = 100_000):
    """Iterate Eq. (4.6) from Q = 0 until max |Q_{k+1} − Q_k| < tol. Returns (Q*, V*, greedy policy).

    The Bellman residual of the result is at most γ·tol. Needs γ < 1 (the backup is then a γ-contraction).
    """
    if not mdp.gamma < 1.0:
        raise ValueError(f"value iteration needs gamma < 1 to converge; got {mdp.gamma}")
    Q = np.zeros((mdp.n_states, mdp.n_actions))
    for _ in range(max_iter):
        Q_next = bellman_optimality_backup(mdp, Q)
        done = np.abs(Q_next - Q).max() < tol
        Q = Q_next
        if done:
            return Q, Q.max(axis=1), greedy_policy(Q)
    raise RuntimeError(f"value iteration did not reach tol={tol} in {max_iter} iterations")


def evaluate_policy(mdp: TabularMDP, policy: np.ndarray) -> np.ndarray:
    """Eq. (4.5) solved exactly: V^π = (I − γ P_π)^{-1} r_π.

    ``policy`` is either deterministic (action index per state, shape [S]) or stochastic (π(a|s), [S, A]).
    """
    policy = np.asarray(policy)
    S, A = mdp.n_states, mdp.n_actions
    if policy.shape == (S,):
        if policy.dtype.kind not in "iu" or (policy < 0).any() or (policy >= A).any():
            raise ValueError(f"a deterministic policy must hold action indices in [0, {A}); got {policy}")
        pi = np.eye(A)[policy]
    elif policy.shape == (S, A):
        pi = policy.astype(np.float64)
        if (pi < 0).any() or not np.allclose(pi.sum(axis=1), 1.0, atol=1e-9):
            raise ValueError("a stochastic policy must be non-negative with rows summing to 1")
    else:
        raise ValueError(f"policy must have shape {(S,)} or {(S, A)}; got {policy.shape}")
    r_pi = (pi * mdp.expected_reward()).sum(axis=1)
    P_pi = np.einsum("sa,sat->st", pi, mdp.P)
    return np.linalg.solve(np.eye(S) - mdp.gamma * P_pi, r_pi)


# ---------------------------------------------------------------------------------- Q-learning


def q_update(Q: np.ndarray, s: int, a: int, r: float, s_next: int, alpha: float, gamma: float) -> float:
    """Eq. (4.7): the new Q(s,a) = Q(s,a) + α[r + γ max_{a'} Q(s',a') − Q(s,a)]."""
    return float(Q[s, a] + alpha * (r + gamma * np.max(Q[s_next]) - Q[s, a]))


def q_learning(
    mdp: TabularMDP,
    alpha: float | Callable[[int], float] = 0.1,
    steps: int = 100_000,
    epsilon: float = 0.1,
    seed: int = 0,
    episode_length: int | None = None,
    Q0: np.ndarray | None = None,
) -> np.ndarray:
    """Tabular Q-learning, Eq. (4.7), with an ε-greedy behaviour policy. Returns Q after ``steps`` updates.

    alpha           a constant step size, or a function of n, the number of updates of (s,a) so far
                    including this one (e.g. ``lambda n: n ** -0.8``; Robbins–Monro needs Σα = ∞, Σα² < ∞).
    episode_length  restart from a uniformly drawn state every this many steps (None: one long run).
    """
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must lie in [0, 1]; got {epsilon}")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer; got {steps!r}")
    if episode_length is not None and episode_length < 1:
        raise ValueError(f"episode_length must be a positive integer or None; got {episode_length!r}")
    step_size = alpha if callable(alpha) else (lambda n, c=float(alpha): c)
    S, A = mdp.n_states, mdp.n_actions
    Q = np.zeros((S, A)) if Q0 is None else np.array(Q0, dtype=np.float64)
    if Q.shape != (S, A):
        raise ValueError(f"Q0 must have shape {(S, A)}; got {Q.shape}")
    rng = np.random.default_rng(seed)
    explore = (rng.random(steps) < epsilon).tolist()
    random_action = rng.integers(0, A, size=steps).tolist()
    u_next = rng.random(steps).tolist()
    n_episodes = 1 if episode_length is None else steps // episode_length + 1
    starts = rng.integers(0, S, size=n_episodes).tolist()
    # The loop runs on Python lists: per-element NumPy indexing would cost several times more.
    cdf = np.cumsum(mdp.P, axis=2)
    cdf[..., -1] = 1.0  # guard the last bin against round-off in the cumulative sum
    cdf = cdf.tolist()
    R = (mdp.R if mdp.R.ndim == 3 else np.repeat(mdp.R[:, :, None], S, axis=2)).tolist()
    gamma, q = mdp.gamma, Q.tolist()
    visits = [[0] * A for _ in range(S)]
    actions = range(A)
    s = starts[0]
    for t in range(steps):
        if episode_length is not None and t and t % episode_length == 0:
            s = starts[t // episode_length]
        row = q[s]
        a = random_action[t] if explore[t] else max(actions, key=row.__getitem__)
        s_next = bisect.bisect_right(cdf[s][a], u_next[t])
        visits[s][a] += 1
        # BEGIN SOLUTION update
        target = R[s][a][s_next] + gamma * max(q[s_next])
        row[a] += step_size(visits[s][a]) * (target - row[a])  # Eq. (4.7)
        # END SOLUTION
        s = s_next
    Q[:] = q
    return Q


# ------------------------------------------------------------------------------------- seed 004

SEED004_STATES = (1, 2, 3)
SEED004_ACTIONS = ("U", "D")
SEED004_ALPHA = 0.1
SEED004_GAMMA = 0.9
# The worked example's six updates, (s, a, s') in the seed's labels and order.
SEED004_TRANSITIONS = ((1, "U", 2), (1, "D", 1), (2, "U", 1), (2, "D", 3), (3, "U", 2), (3, "D", 3))
# The values the seed prints after them, rows = states 1..3, columns = (U, D).
SEED004_STATED_Q = np.array([[0.0, 0.0], [0.0, 0.9], [0.0, 0.9]])
SEED004_STATED_Q.setflags(write=False)


def seed004_mdp() -> TabularMDP:
    """Seed 004's 3-state example with its probabilities read as P(s'|s,a) (see the module docstring)."""
    next_state_dist = {"U": (0.8, 0.1, 0.1), "D": (0.1, 0.8, 0.1)}
    P = np.array([[next_state_dist[a] for a in SEED004_ACTIONS] for _ in SEED004_STATES])
    R = np.zeros((3, 2, 3))
    R[:, :, SEED004_STATES.index(3)] = 1.0
    return TabularMDP(P, R, SEED004_GAMMA, state_names=SEED004_STATES, action_names=SEED004_ACTIONS)


def seed004_q_update(Q: np.ndarray, s: int, a: int, r: float, s_next: int, alpha: float, gamma: float) -> float:
    """The seed's rule as its arithmetic applies it: Q(s,a) + α·r + γ·max_{a'} Q(s',a'). Not Eq. (4.7)."""
    return float(Q[s, a] + alpha * r + gamma * np.max(Q[s_next]))


def seed004_worked_example(rule: str = "correct") -> np.ndarray:
    """Replay the seed's six updates in its order from Q = 0, with ``rule`` 'correct' (Eq. (4.7)) or 'seed'.

    Unlike the seed, each update reads the current table (so max Q(3,·) is 0 until Q(3,·) is updated).
    """
    updates = {"correct": q_update, "seed": seed004_q_update}
    if rule not in updates:
        raise ValueError(f"rule must be 'correct' or 'seed'; got {rule!r}")
    mdp = seed004_mdp()
    Q = np.zeros((3, 2))
    for s_label, a_label, s_next_label in SEED004_TRANSITIONS:
        s, a = SEED004_STATES.index(s_label), SEED004_ACTIONS.index(a_label)
        s_next = SEED004_STATES.index(s_next_label)
        Q[s, a] = updates[rule](Q, s, a, mdp.reward(s, a, s_next), s_next, SEED004_ALPHA, SEED004_GAMMA)
    return Q
