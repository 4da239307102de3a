"""The exact-lab checks of chapter 07, §9: token-level and sequence-level f-divergences between a student and a
teacher, and what token-level distillation's gradient is.

On the exact lab every sequence is enumerated, so both sides of Eq. (7.15) are sums: the sequence-level
D_f(π‖p) over the enumeration, and E_x Σ_t D_f(π_t‖p_t) with the prefixes x drawn from the student or from
the teacher, step by step.
"""
from __future__ import annotations

import numpy as np

from ..lab import ExactLab, lab_model
from ..trainers.policy_gradient import token_fdiv_terms

PREFIXES = ("student", "teacher")


def distill_pair(seed: int = 0, vocab_size: int = 3, block_size: int = 4):
    """A teacher p (a tiny float64 GPT of width 16) and a smaller, different student π (width 8) on the same
    vocabulary and horizon, both stochastic at every step (weights scale 0.3), and their exact lab.
    Returns (teacher, student, lab)."""
    teacher = lab_model(seed, vocab_size, block_size, scale=0.3, n_embd=16).eval()
    student = lab_model(seed + 50, vocab_size, block_size, scale=0.3, n_embd=8).eval()
    return teacher, student, ExactLab.for_model(teacher)


def token_level(lab, student, teacher, f: str, prefixes: str = "student") -> np.ndarray:
    """E_x D_f(π(·|x_<t) ‖ p(·|x_<t)) for every step t ``[L]``, with x drawn from the student or the teacher,
    exactly: Σ_x w(x) D_t(x_<t) over the enumeration (a prefix's weight is the sum over its completions)."""
    if prefixes not in PREFIXES:
        raise ValueError(f"prefixes must be one of {PREFIXES}; got {prefixes!r}")
    weights = lab.distribution(student if prefixes == "student" else teacher)
    _, div_tok = token_fdiv_terms(student, teacher, lab.sequences, f)
    return weights @ np.asarray(div_tok.numpy(), dtype=np.float64)


def sequence_level(lab, student, teacher, f: str) -> float:
    """D_f(π‖p) = Σ_x p(x) f(π(x)/p(x)) over whole sequences (the divergence f-DPG minimises)."""
    return lab.divergence(f, lab.distribution(student), lab.distribution(teacher))


RELATION_COLUMNS = ("sequence", "tokens_student_prefixes", "tokens_teacher_prefixes", "root_sum_student",
                    "root_sum_teacher")


def relation_table(seeds=range(5), fs=("kl", "reverse_kl", "js", "tv")):
    """For each seed and f, Eq. (7.15)'s sides (:data:`RELATION_COLUMNS`): the sequence-level D_f(π‖p); Σ_t E_x D_t
    with the prefixes from the student and from the teacher; and Σ_t √(E_x D_t) with each. Returns
    {f: array [len(seeds), 5]}."""
    out = {f: [] for f in fs}
    for seed in seeds:
        teacher, student, lab = distill_pair(seed)
        for f in fs:
            on_student, on_teacher = (token_level(lab, student, teacher, f, x) for x in PREFIXES)
            out[f].append((sequence_level(lab, student, teacher, f), on_student.sum(), on_teacher.sum(),
                           np.sqrt(np.maximum(on_student, 0.0)).sum(), np.sqrt(np.maximum(on_teacher, 0.0)).sum()))
    return {f: np.array(rows) for f, rows in out.items()}
