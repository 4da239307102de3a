"""Token-level f-divergence distillation: a student fitted to a teacher's next-token distributions (chapter 07, §9).

    L(θ) = E_x Σ_t D_f(π_θ(·|x_<t) ‖ p(·|x_<t)),     D_f(π‖p) = Σ_v p_v f(π_v/p_v)   (Eq. 7.14)

per token over the whole vocabulary, on rows x drawn from the teacher p (off-policy: the prefixes do not move
with θ, so this is the gradient of L exactly) or from the student itself (on-policy, as in generalised
knowledge distillation; the prefixes are not differentiated). With the course's convention f = reverse_kl is
KL(p‖π) per token — classic distillation with the teacher's soft targets — and f = kl is KL(π‖p). f-DPG
(``fdpg.py``) minimises D_f(π‖p) over whole sequences; how the two levels relate is Eq. (7.15).
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .common import Batch, Method, sample_batch
from .policy_gradient import token_fdiv_terms, weighted_sum

SAMPLES = ("teacher", "student")
STUDENT_SIZE = {"n_layer": 2, "n_head": 2, "n_embd": 32}  # the default student: an eighth of the base model


class Distill(Method):
    """Eq. (7.14): minimise Σ_i w_i Σ_t D_f(π_θ,t ‖ p_t) on teacher (or student) samples; the teacher is the
    method's ``ref``, so the exact lab's metrics report KL(π‖p)."""

    name = "distill"

    def __init__(self, teacher, f: str = "js", samples: str = "teacher", tokenizer=None):
        if f not in F.FDIV_NAMES:
            raise ValueError(f"distillation's f must be one of {', '.join(F.FDIV_NAMES)} (the fused kernel's "
                             f"members); got {f!r}")
        if samples not in SAMPLES:
            raise ValueError(f"samples must be one of {', '.join(SAMPLES)}; got {samples!r}")
        self.ref, self.f, self.samples, self.tokenizer = teacher, f, samples, tokenizer
        self.name = f"distill-{f}"

    def draw(self, policy, n, rng) -> Batch:
        sampler = self.ref if self.samples == "teacher" else policy
        return sample_batch(sampler, n, rng, ref=self.ref, tokenizer=self.tokenizer)

    def loss(self, policy, batch: Batch):
        logp_tok, div_tok = token_fdiv_terms(policy, self.ref, batch.tokens, self.f)
        per_sequence = div_tok.sum(axis=1)
        w = batch.weights
        log_pi = logp_tok.numpy().astype(np.float64).sum(axis=1)
        metrics = {"token_div": float(np.sum(w * per_sequence.numpy()))}
        if self.samples == "teacher":  # x ~ p: log p − log π estimates KL(p‖π)
            metrics["kl_p_pi_est"] = float(np.sum(w * (batch.log_ref - log_pi)))
        else:  # x ~ π: log π − log p estimates KL(π‖p)
            metrics["kl_pi_p_est"] = float(np.sum(w * (log_pi - batch.log_ref)))
        return weighted_sum(per_sequence, w), metrics

    def settings(self) -> dict:
        return {"f": self.f, "samples": self.samples}
