"""IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences"): a
squared loss on the margin of log-ratios, whose optimum stays finite where DPO's does not (chapter 05).

With h(y) = log π(y) − log a(y) (h(y|x) with prompts) and a pair (y_w, y_l), DPO minimises −log σ(β(h_w − h_l))
(Eq. 5.14): a loss that keeps falling as the margin grows, so on a pair whose preference is deterministic its
optimum runs to the boundary, π(y_l) → 0, whatever β. IPO regresses the margin onto a fixed target instead:

    loss = (h_w − h_l − 1/(2β))², averaged over pairs,

the empirical form of Azar et al.'s objective with their regulariser τ written as β. It is minimised at the
finite margin h_w − h_l = 1/(2β) however often y_w wins: β keeps π near a even on deterministic preferences.
Pairs, batches and reference log-probabilities are ``pairs.PairMethod``'s, shared with DPO.
"""
from __future__ import annotations

from .common import Batch
from .pairs import PairMethod, log_ratio_margins, margin_metrics


class IPO(PairMethod):
    """Eq. (5.16): loss = mean over pairs of (h_w − h_l − 1/(2β))², h = log π/a (Azar et al. 2023).

    Its metrics are those of DPO: ``pair_accuracy`` and ``margin`` = β(h_w − h_l), the implicit reward margin,
    whose IPO optimum is 1/2."""

    name = "ipo"

    def loss(self, policy, batch: Batch):
        margin = log_ratio_margins(policy, batch)
        loss = ((margin - 0.5 / self.beta) ** 2).mean()
        return loss, margin_metrics(margin.numpy() * self.beta)
