"""DPO (Rafailov et al. 2023): the KL-control optimum read backwards, trained on preference pairs (chapter 05).

From π*(x) = a(x) e^{r(x)/β}/Z, the reward is r(x) = β log(π*(x)/a(x)) + β log Z; put into Bradley–Terry,
Z cancels, and the preference likelihood becomes a loss on π directly — no reward model, no sampling.
With prompts (chapter 05, §12) the pairs are triples (x, y_w, y_l) and every log-ratio is conditional:
log π(y|x)/a(y|x), Eq. (5.21). The pairs, their batches and reference log-probabilities are ``pairs.PairMethod``'s.
"""
from __future__ import annotations

from .. import functional as F
from ..tensor import constant
from .common import Batch
from .pairs import PairMethod


class DPO(PairMethod):
    """Eq. (5.14): loss = −log σ(β log(π(y_w)/a(y_w)) − β log(π(y_l)/a(y_l))), averaged over pairs."""

    name = "dpo"

    def loss(self, policy, batch: Batch):
        n = len(batch) // 2
        logp = batch.logprob(policy)
        ratio = logp - constant(batch.log_ref, like=logp)  # log π/a
        margin = (ratio[:n] - ratio[n:]) * self.beta
        loss = -F.log_sigmoid(margin).mean()
        m = margin.numpy()
        return loss, {"pair_accuracy": float((m > 0).mean()), "margin": float(m.mean())}
