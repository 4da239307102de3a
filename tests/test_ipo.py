"""IPO (Azar et al. 2023) on the exact lab: its loss by hand, and where its optimum lies next to DPO's.

On deterministic preferences (y_w always wins) DPO's loss −log σ(β(h_w − h_l)) falls for ever as the margin grows,
so its optimum runs to the boundary π(y_l) → 0; IPO's (h_w − h_l − 1/(2β))² is minimised at the finite margin
1/(2β). The policy is tabular (any distribution over the lab's enumeration), so the optimum is reachable exactly.
"""
import numpy as np
import pytest
from helpers import TabularPolicy, central_difference

from minialign.experiments.rlhf_lab import dpo_lab
from minialign.trainers.common import Batch
from minialign.trainers.dpo import DPO
from minialign.trainers.ipo import IPO


def pair_batch(lab, log_a, w, lose):
    """The batch of pairs (w[i] ≻ lose[i]): the chosen rows, then the rejected ones, each pair weighted 1/n."""
    n = len(w)
    return Batch(lab.sequences[np.concatenate([w, lose])], np.full(2 * n, 1.0 / n), np.zeros(2 * n),
                 log_a[np.concatenate([w, lose])])


def disjoint_pairs(lab, n, seed):
    """n pairs of distinct sequences, no sequence in two pairs: each pair's margin is free of the others'."""
    order = np.random.default_rng(seed).permutation(len(lab))[:2 * n]
    return order[:n], order[n:]


def test_ipo_loss_is_the_squared_distance_of_the_margin_to_one_over_two_beta():
    """By hand on one batch: the mean over pairs of (h_w − h_l − 1/(2β))², h = log π − log a (a wrong β, sign or
    target fails the value); its gradient in the logits equals central differences of that formula; the metrics
    are the pairs' accuracy and the mean of β(h_w − h_l), as DPO's."""
    a, lab, _, beta = dpo_lab(0)
    log_a = np.log(lab.distribution(a))
    logits = log_a + np.random.default_rng(4).normal(size=len(lab))
    w, lose = disjoint_pairs(lab, 5, seed=1)
    method = IPO(a, lab.sequences[w], lab.sequences[lose], beta=beta)
    policy = TabularPolicy(lab, logits)
    loss, metrics = method.loss(policy, pair_batch(lab, log_a, w, lose))

    def by_hand(theta):
        h = theta - np.logaddexp.reduce(theta) - log_a
        return float(np.mean((h[w] - h[lose] - 1 / (2 * beta)) ** 2))

    assert loss.item() == pytest.approx(by_hand(logits), rel=1e-12)
    loss.backward()
    np.testing.assert_allclose(policy.logits.grad, central_difference(by_hand, logits), rtol=1e-6, atol=1e-8)
    h = logits - np.logaddexp.reduce(logits) - log_a
    assert metrics["margin"] == pytest.approx(beta * np.mean(h[w] - h[lose]), rel=1e-12)
    assert metrics["pair_accuracy"] == np.mean(h[w] > h[lose])


def descend(method, lab, log_a, w, lose, steps, lr=0.5):
    """Plain gradient descent on the method's loss over a tabular policy starting at a; returns, after each number
    of steps in ``steps``, the margins h_w − h_l and the largest gradient entry of the last step."""
    policy = TabularPolicy(lab, log_a)
    batch = pair_batch(lab, log_a, w, lose)
    out = []
    for done in range(1, max(steps) + 1):
        policy.zero_grad()
        loss, _ = method.loss(policy, batch)
        loss.backward()
        grad = np.array(policy.logits.grad)
        policy.logits.data = policy.logits.data - lr * grad
        if done in steps:
            h = policy.logits.data - np.logaddexp.reduce(policy.logits.data) - log_a
            out.append((h[w] - h[lose], np.abs(grad).max()))
    return out


@pytest.mark.parametrize("beta", [0.25, 1.0])
def test_on_deterministic_preferences_ipo_stops_at_one_over_two_beta_and_dpo_runs_to_the_boundary(beta):
    """Three disjoint pairs, each always won by y_w. IPO's margins converge to 1/(2β) (to 1e-6) with a vanishing
    gradient: a finite optimum. DPO's margins are already past 1/(2β) and still growing between 2000 and 4000
    steps, and its gradient never vanishes there: −log σ(βm) has no minimiser, its optimum is π(y_l) → 0."""
    a, lab, _, _ = dpo_lab(0)
    log_a = np.log(lab.distribution(a))
    w, lose = disjoint_pairs(lab, 3, seed=2)
    chosen, rejected = lab.sequences[w], lab.sequences[lose]

    [(ipo, grad)] = descend(IPO(a, chosen, rejected, beta=beta), lab, log_a, w, lose, steps=[2000])
    np.testing.assert_allclose(ipo, 1 / (2 * beta), atol=1e-6)
    assert grad < 1e-6

    (mid, _), (end, grad) = descend(DPO(a, chosen, rejected, beta=beta), lab, log_a, w, lose, steps=[2000, 4000])
    assert (mid > 2 / (2 * beta)).all() and (end > mid + 0.1).all(), (mid, end)
    assert grad > 1e-6
