"""DPO (Rafailov et al. 2023): the KL-control optimum read backwards, trained on preference pairs (chapter 05).

From π*(x) = a(x) e^{r(x)/β}/Z, the reward is r(x) = β log(π*(x)/a(x)) + β log Z; put into Bradley–Terry,
Z cancels, and the preference likelihood becomes a loss on π directly — no reward model, no sampling.
With prompts (chapter 05, §12) the pairs are triples (x, y_w, y_l) and every log-ratio is conditional:
log π(y|x)/a(y|x), Eq. (5.20).
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .common import Batch, Method, logprobs
from ..tensor import constant


class DPO(Method):
    """Eq. (5.14): loss = −log σ(β log(π(y_w)/a(y_w)) − β log(π(y_l)/a(y_l))), averaged over pairs."""

    name = "dpo"

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
        idx = rng.choice(len(self.chosen), size=min(n, len(self.chosen)), replace=False)
        tokens = np.concatenate([self.chosen[idx], self.rejected[idx]])
        log_ref = np.concatenate([self.ref_chosen[idx], self.ref_rejected[idx]])
        prompt_len = None if self.prompt_len is None else np.tile(self.prompt_len[idx], 2)
        return Batch(tokens, np.full(len(tokens), 1.0 / len(idx)), np.zeros(len(tokens)), log_ref, prompt_len=prompt_len)

    def loss(self, policy, batch: Batch):
        n = len(batch) // 2
        logp = batch.logprob(policy)
        ratio = logp - constant(batch.log_ref, like=logp)  # log π/a
        margin = (ratio[:n] - ratio[n:]) * self.beta
        loss = -F.log_sigmoid(margin).mean()
        m = margin.numpy()
        return loss, {"pair_accuracy": float((m > 0).mean()), "margin": float(m.mean())}

    def label(self) -> str:
        return f"dpo β={self.beta:g}"

    def settings(self) -> dict:
        return {"beta": self.beta, "pairs": len(self.chosen), **({} if self.prompt_len is None else {"prompted": True})}
