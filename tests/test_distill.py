"""Token-level f-divergence distillation (chapter 07, §9, Eqs. 7.14–7.15): how the per-token divergences relate to
the sequence-level one f-DPG minimises, measured exactly on the exact lab; what the distillation gradient is;
and the ``minialign distill`` command.
"""
import numpy as np
import pytest

from minialign.cli import main
from minialign.experiments.distill_lab import RELATION_COLUMNS, distill_pair, relation_table
from minialign.lab import autograd_of, exact_grad, fdiv_to_target
from minialign.tasks import BASE_CHECKPOINT
from minialign.trainers.common import TrainConfig, exact_batch, train, trainable_copy
from minialign.trainers.distill import Distill

SEEDS = range(5)


@pytest.fixture(scope="module")
def table():
    t = relation_table(SEEDS)
    return {f: dict(zip(RELATION_COLUMNS, a.T)) for f, a in t.items()}


def test_the_chain_rule_makes_token_kls_the_sequence_kl_with_prefixes_from_the_first_argument(table):
    """Eq. (7.15), KL rows: E_{x∼π} Σ_t KL(π_t‖p_t) = KL(π‖p) and E_{x∼p} Σ_t KL(p_t‖π_t) = KL(p‖π), to rounding;
    with the prefixes from the other model the sums are something else (off by more than 5% on every pair)."""
    kl, rkl = table["kl"], table["reverse_kl"]
    np.testing.assert_allclose(kl["tokens_student_prefixes"], kl["sequence"], rtol=1e-10)
    np.testing.assert_allclose(rkl["tokens_teacher_prefixes"], rkl["sequence"], rtol=1e-10)
    assert (np.abs(kl["tokens_teacher_prefixes"] / kl["sequence"] - 1) > 0.05).all(), kl
    assert (np.abs(rkl["tokens_student_prefixes"] / rkl["sequence"] - 1) > 0.05).all(), rkl


def test_tv_and_js_have_no_chain_rule_only_bounds(table):
    """Eq. (7.15), the other members: TV over sequences is at most the summed per-token TVs (strictly less on
    every pair, with either model's prefixes); for JS the summed per-token values fall on both sides of the
    sequence JS across these pairs — no identity and no inequality between them — while √JS, a metric, obeys
    the hybrid bound √JS(π‖p) ≤ Σ_t √(E_x JS_t) with either model's prefixes."""
    tv, js = table["tv"], table["js"]
    for prefixes in ("tokens_student_prefixes", "tokens_teacher_prefixes"):
        assert (tv["sequence"] < tv[prefixes] - 1e-3).all(), tv
    gap = js["tokens_student_prefixes"] - js["sequence"]
    assert (np.abs(gap) > 1e-3).all() and gap.min() < 0 < gap.max(), gap
    for roots in ("root_sum_student", "root_sum_teacher"):
        assert (np.sqrt(js["sequence"]) <= js[roots]).all(), js


def test_distilling_on_teacher_samples_follows_the_gradient_of_kl_p_pi():
    """Eq. (7.14) with x ∼ p: the prefixes do not move with θ, so the exact expected gradient of the loss is
    ∇ E_p Σ_t D_f,t — for f = reverse_kl, by the chain rule, ∇KL(p‖π) exactly. On the student's own samples the
    prefixes are not differentiated and f = kl misses ∇KL(π‖p) (the missing part of chapter 05, Eq. 5.11)."""
    teacher, student, lab = distill_pair(1)
    student = trainable_copy(student)
    log_p = np.log(lab.distribution(teacher))
    forward = autograd_of(student, lambda: fdiv_to_target("reverse_kl", lab.log_probs(student), log_p))
    g = exact_grad(Distill(teacher, f="reverse_kl"), student, exact_batch(lab, teacher, ref=teacher))
    assert np.linalg.norm(g - forward) < 1e-8 * np.linalg.norm(forward)
    reverse = autograd_of(student, lambda: fdiv_to_target("kl", lab.log_probs(student), log_p))
    g = exact_grad(Distill(teacher, f="kl", samples="student"), student, exact_batch(lab, student, ref=teacher))
    assert np.linalg.norm(g - reverse) > 0.05 * np.linalg.norm(reverse)


def test_distillation_fits_a_smaller_student_on_the_lab():
    """Half the width of the teacher, trained on teacher samples with per-token JS: the exact KL(π‖p) falls
    below a tenth of its start (the exact lab's metric of the run, the teacher being the method's ref)."""
    teacher, student, lab = distill_pair(2)
    student = trainable_copy(student)
    hist = train(Distill(teacher, f="js"), student, TrainConfig(steps=80, batch_size=32, lr=3e-2, seed=0), lab=lab,
                 progress=False)
    start = lab.divergence("kl", lab.distribution(distill_pair(2)[1]), lab.distribution(teacher))
    assert hist["exact_kl_pi_a"][-1] < 0.1 * start, (start, hist["exact_kl_pi_a"][-1])
    assert np.mean(hist["token_div"][-5:]) < np.mean(hist["token_div"][:5])


def test_distill_refuses_unknown_members_and_samplers():
    teacher, _, _ = distill_pair(0)
    with pytest.raises(ValueError, match="distillation's f must be one of kl, reverse_kl, js, tv"):
        Distill(teacher, f="hellinger")
    with pytest.raises(ValueError, match="samples must be one of teacher, student; got 'both'"):
        Distill(teacher, samples="both")


def test_distill_command_runs_resumes_and_reports(tmp_path, capsys):
    out = tmp_path / "d.npz"
    argv = ["distill", "--teacher", str(BASE_CHECKPOINT), "--f", "tv", "--samples", "student", "--student-config",
            "n_layer=1,n_embd=16", "--batch-size", "8", "--eval-samples", "50", "--out", str(out), "--quiet"]
    assert main(argv + ["--steps", "2"]) == 0
    text = capsys.readouterr().out
    assert out.exists() and "student: " in text and "KL(p‖π) on 50 fresh teacher samples" in text
    assert "per-token D_tv(π‖p)" in text and "student samples:" in text
    assert main(argv + ["--steps", "3"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert main(argv[:4] + ["js"] + argv[5:] + ["--steps", "3"]) == 2
    assert "f: tv in the checkpoint, js now" in capsys.readouterr().err


def test_distill_command_checks_its_options(tmp_path, capsys):
    base = ["distill", "--teacher", str(BASE_CHECKPOINT), "--out", str(tmp_path / "d.npz")]
    with pytest.raises(SystemExit):
        main(base + ["--student-config", "n_layers=2"])
    assert "KEY in n_layer, n_head, n_embd" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--student-config", "n_head=3,n_embd=32"])
    assert "n_embd (32) must be a multiple of n_head (3)" in capsys.readouterr().err
