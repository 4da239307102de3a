"""What every pair method shares (chapter 05): preference pairs as chosen and rejected token arrays, their reference
log-probabilities (computed once), the batches of pairs, and the margins of log-ratios.

A pair method (DPO, IPO) learns from pairs (y_w, y_l), y_w preferred, without a reward model or sampling. Its
batch holds the n chosen rows, then the n rejected ones, with log a(y) in ``batch.log_ref``; with prompts
(chapter 05, §12) the pairs are triples (x, y_w, y_l) and every log-probability is conditional, log π(y|x). The
log-ratio of a sequence is h(y) = log π(y) − log a(y); what a pair method fits is the margin h(y_w) − h(y_l).
"""
from __future__ import annotations

import numpy as np

from ..tensor import constant
from .common import Batch, Method, logprobs


class PairMethod(Method):
    """A method trained on preference pairs: ``chosen`` and ``rejected`` token arrays of one shape [pairs, L], a
    temperature ``beta`` > 0, and with ``prompt_len`` (one per pair) triples whose two responses share the prompt.
    A subclass writes ``loss``."""

    name = "pairs"

    def __init__(self, ref, chosen, rejected, beta: float = 0.1, prompt_len=None):
        chosen, rejected = np.asarray(chosen), np.asarray(rejected)
        if not (beta > 0 and np.isfinite(beta)):
            raise ValueError(f"beta must be a finite number > 0; got {beta}")
        if chosen.shape != rejected.shape or chosen.ndim != 2 or len(chosen) == 0:
            raise ValueError(f"chosen and rejected must be token arrays of one shape [pairs, L]; got {chosen.shape} "
                             f"and {rejected.shape}")
        if prompt_len is not None:
            prompt_len = np.asarray(prompt_len)
            if prompt_len.shape != (len(chosen),):
                raise ValueError(f"one prompt length per pair: expected shape ({len(chosen)},), got {prompt_len.shape}")
            if (chosen != rejected)[np.arange(chosen.shape[1])[None, :] < prompt_len[:, None]].any():
                raise ValueError("the chosen and the rejected response of a triple must share its prompt")
        self.ref, self.beta, self.prompt_len = ref, float(beta), prompt_len
        self.chosen, self.rejected = chosen, rejected
        self.ref_chosen, self.ref_rejected = logprobs(ref, chosen, prompt_len), logprobs(ref, rejected, prompt_len)

    def draw(self, policy, n, rng) -> Batch:
        """n pairs drawn without replacement (all of them when there are fewer): the chosen rows, then the
        rejected ones, each pair weighted 1/n."""
        idx = rng.choice(len(self.chosen), size=min(n, len(self.chosen)), replace=False)
        tokens = np.concatenate([self.chosen[idx], self.rejected[idx]])
        log_ref = np.concatenate([self.ref_chosen[idx], self.ref_rejected[idx]])
        prompt_len = None if self.prompt_len is None else np.tile(self.prompt_len[idx], 2)
        return Batch(tokens, np.full(len(tokens), 1.0 / len(idx)), np.zeros(len(tokens)), log_ref,
                     prompt_len=prompt_len)

    def label(self) -> str:
        return f"{self.name} β={self.beta:g}"

    def settings(self) -> dict:
        return {"beta": self.beta, "pairs": len(self.chosen), **({} if self.prompt_len is None else {"prompted": True})}


def log_ratio_margins(policy, batch: Batch):
    """h(y_w) − h(y_l) for every pair of a pair batch, h = log π − log a: a differentiable Tensor ``[n]``."""
    n = len(batch) // 2
    logp = batch.logprob(policy)
    ratio = logp - constant(batch.log_ref, like=logp)
    return ratio[:n] - ratio[n:]


def margin_metrics(margin: np.ndarray) -> dict:
    """The fraction of pairs the policy ranks as the annotator did (a positive margin), and the mean margin."""
    return {"pair_accuracy": float((margin > 0).mean()), "margin": float(margin.mean())}
