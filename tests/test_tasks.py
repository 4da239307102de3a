"""The names tasks and `minialign align`, end to end on small settings."""
import numpy as np
import pytest

from minialign import tasks
from minialign.cli import main
from minialign.ebm import feature, fit_names_ebm, parse_constraint
from minialign.metrics import distinct_n, self_bleu
from minialign.rewards import true_reward
from minialign.trainers.common import RunContext, TrainConfig

CFG = TrainConfig(steps=4, batch_size=16, lr=3e-4, seed=0, checkpoint_every=2)


@pytest.fixture(scope="module")
def base():
    return tasks.load_base()


def test_rlhf_on_names_logs_the_metrics_and_checkpoints(base, tmp_path):
    ctx = RunContext(CFG, base, tmp_path / "r.npz", progress=False)
    policy, hist = tasks.run_rlhf(true_reward, ctx, beta=0.1)
    for key in ("reward", "kl_k1", "kl_k2", "kl_k3", "entropy_est", "distinct_2", "in_corpus", "self_bleu", "loss"):
        assert len(hist[key]) == CFG.steps and np.isfinite(hist[key]).all(), key
    assert (tmp_path / "r.npz").exists()
    # resuming from the finished checkpoint runs no further step and keeps the history
    _, again = tasks.run_rlhf(true_reward, ctx, beta=0.1)
    assert again["loss"] == hist["loss"]


def test_gdc_on_names_reports_the_constraint(base):
    ebm, report = fit_names_ebm(base, [parse_constraint("female=0.5")], n_samples=1000, seed=0)
    assert abs(report.moments["female"] - 0.5) < 1e-8
    _, hist = tasks.run_gdc(ebm, RunContext(CFG, base, progress=False))
    for key in ("E[female]", "kl_p_pi_est", "kl_pi_a_est", "entropy_est", "log_z", "self_bleu", "distinct_2",
                "in_corpus"):
        assert np.isfinite(hist[key]).all(), key


def test_calibrated_gdc_moves_lambda_towards_the_policy_moment(base):
    ebm, _ = fit_names_ebm(base, [parse_constraint("female=0.5")], n_samples=1000, seed=0)
    _, hist = tasks.run_gdc(ebm, RunContext(CFG, base, progress=False), calibrate=0.5)
    # the policy starts near a's 80% female, above μ̄ = 0.5: every step makes λ more negative
    assert np.all(np.diff([ebm.lam[0]] + hist["lambda_0"]) < 0), hist["lambda_0"]
    assert np.all(np.array(hist["moment_0"]) > 0.5)
    with pytest.raises(ValueError, match="distributional constraints"):
        tasks.calibrated_target(fit_names_ebm(base, [parse_constraint("contains:a")], n_samples=500)[0])


def test_calibrate_is_refused_outside_gdc(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["align", "fdpg", "--constraint", "female=0.5", "--calibrate", "0.1", "--out", str(tmp_path / "x.npz")])
    assert e.value.code == 2


def test_reinforce_on_a_feature_stops_when_it_crosses_the_level(base):
    female = feature("female")
    cfg = TrainConfig(steps=50, batch_size=32, lr=1e-3, seed=0)
    _, hist = tasks.run_reinforce_on_feature(female, sign=-1.0, until=0.75, cfg=cfg, base=base, progress=False)
    assert hist["reward_est"][-1] <= 0.75 and len(hist["loss"]) < 50


def test_diversity_metrics():
    assert distinct_n(["abab", "abab"], 2) == pytest.approx(2 / 6)
    assert distinct_n(["abc", "def"], 2) == 1.0
    assert self_bleu(["anna", "anna", "anna"]) == pytest.approx(1.0)
    assert self_bleu(["abc", "xyz", "klm"]) < 0.2


@pytest.mark.parametrize("argv", [
    ["align", "rlhf", "--reward", "true", "--kl", "k3_loss"],
    ["align", "rlhf", "--reward", "true", "--kl", "full_token"],
    ["align", "gdc", "--constraint", "female=0.5", "--ebm-samples", "800", "--baseline", "--compare-reinforce",
     "--eval-samples", "100"],
    ["align", "gdc", "--constraint", "female=0.5", "--ebm-samples", "800", "--calibrate", "0.1",
     "--eval-samples", "100"],
    ["align", "fdpg", "--f", "tv", "--constraint", "contains:a", "--ebm-samples", "800"],
    ["align", "dpo", "--n-pairs", "64"],
])
def test_align_command_line_runs_every_method(argv, tmp_path, capsys):
    out = tmp_path / "run.npz"
    assert main(argv + ["--steps", "2", "--batch-size", "8", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "aligned samples:" in text and out.exists()


def test_a_reward_model_with_another_vocabulary_is_refused(base):
    from minialign.gpt import GPTConfig
    from minialign.rewards import RewardModel

    rm = RewardModel(GPTConfig(vocab_size=30, block_size=12, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match="vocabulary of 30 tokens but the policy has 27"):
        tasks.run_rlhf(rm.score, RunContext(CFG, base, progress=False))


def exit_code(args) -> int:
    """The command line's exit status, whether it returned it or argparse stopped with it."""
    try:
        return main(args)
    except SystemExit as e:
        return e.code


def test_align_reports_bad_input_clearly(tmp_path, capsys):
    assert exit_code(["align", "rlhf", "--beta", "0", "--steps", "1", "--out", str(tmp_path / "x.npz")]) == 2
    assert "argument --beta: expected a finite number > 0; got '0'" in capsys.readouterr().err
    assert exit_code(["align", "gdc", "--constraint", "nosuch=0.5", "--steps", "1",
                      "--out", str(tmp_path / "x.npz")]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert exit_code(["align", "gdc", "--constraint", "female=1.5", "--steps", "1",
                      "--out", str(tmp_path / "x.npz")]) == 2
    assert "[0, 1]" in capsys.readouterr().err
    assert exit_code(["align", "fdpg", "--f", "bogus", "--constraint", "female=0.5", "--ebm-samples", "500",
                      "--steps", "1", "--out", str(tmp_path / "x.npz")]) == 2
    assert "bogus" in capsys.readouterr().err
    bad = tmp_path / "pairs.csv"
    bad.write_text("winner,loser\nanna,bob\n")
    assert exit_code(["align", "dpo", "--pairs", str(bad), "--steps", "1", "--out", str(tmp_path / "x.npz")]) == 2
    assert "chosen" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()  # no half-written checkpoint after a refused run


def test_self_bleu_equals_the_textbook_computation():
    """The one-pass clipping (two largest counts per n-gram) must equal clipping by the maximum over the
    other names, computed naively."""
    import math
    from collections import Counter

    def naive(names, n=3):
        scores = []
        for i, hyp in enumerate(names):
            logs = []
            for k in range(1, n + 1):
                h = Counter(hyp[j:j + k] for j in range(len(hyp) - k + 1))
                ref = Counter()
                for o, other in enumerate(names):
                    if o != i:
                        ref |= Counter(other[j:j + k] for j in range(len(other) - k + 1))
                clipped = sum(min(c, ref[g]) for g, c in h.items())
                total, smooth = max(len(hyp) - k + 1, 0), (0 if k == 1 else 1)
                logs.append(math.log((clipped + smooth) / (total + smooth)) if clipped + smooth else -math.inf)
            lens = [len(o) for o, _ in zip(names, range(len(names))) if True]
            lens.remove(len(hyp))
            closest = min(lens, key=lambda r: (abs(r - len(hyp)), r))
            bp = 1.0 if len(hyp) >= closest else math.exp(1 - closest / len(hyp))
            scores.append(bp * math.exp(sum(logs) / n) if all(math.isfinite(x) for x in logs) else 0.0)
        return float(np.mean(scores))

    rng = np.random.default_rng(0)
    for _ in range(20):
        names = ["".join(rng.choice(list("abcde"), size=rng.integers(1, 7))) for _ in range(rng.integers(2, 12))]
        assert self_bleu(names) == pytest.approx(naive(names), abs=1e-12), names


def test_many_samples_are_drawn_in_chunks_that_keep_the_first_ones(base, monkeypatch):
    """Samples come CHUNK at a time from one generator: as many as asked, in bounded memory, and the first CHUNK
    are those of a smaller request with the same seed."""
    monkeypatch.setattr(tasks, "CHUNK", 4)
    ten = tasks.samples(base, 10, seed=3)
    assert len(ten) == 10 and ten[:4] == tasks.samples(base, 4, seed=3)
    names, kl, se = tasks.fresh_samples(base, base, 10, seed=3)
    assert names == ten and abs(kl) < 1e-5 and se < 1e-5  # π = a: every log-ratio is 0 (to float32 rounding)
