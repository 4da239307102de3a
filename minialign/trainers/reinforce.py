"""REINFORCE on a reward, with no KL term (chapter 04, Eq. 4.3): the reward-maximisation contrast to GDC and to
KL-regularised RLHF in chapter 06."""
from __future__ import annotations

import numpy as np

from .common import Batch, Method
from .policy_gradient import checked_rewards, leave_one_out_baseline, weighted_surrogate


class Reinforce(Method):
    """Eq. (4.3) alone: maximise E_π[r(x)] by REINFORCE with the leave-one-out baseline and no KL term —
    the reward-maximisation contrast to GDC in chapter 06."""

    name = "reinforce"
    leave_one_out = True

    def __init__(self, ref, reward_fn, tokenizer=None):
        self.ref, self.reward_fn, self.tokenizer = ref, reward_fn, tokenizer

    def loss(self, policy, batch: Batch):
        r = checked_rewards(self.reward_fn, batch)
        adv = r if batch.exact else r - leave_one_out_baseline(r, batch.group)
        logp = batch.logprob(policy)
        return weighted_surrogate(logp, batch.weights * adv), {"reward": float(np.sum(batch.weights * r))}
