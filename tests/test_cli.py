"""The command line and the tour, end to end on small settings."""
import re

import numpy as np
import pytest

from minialign.cli import main
from minialign.data import DATA_DIR, CharTokenizer
from minialign.gpt import GPT
from minialign.pretrain import bigram_baseline, evaluate, names_dataset

BASE = DATA_DIR / "base.npz"


def test_pretrain_prints_both_losses_writes_a_checkpoint_and_resumes(tmp_path, capsys):
    out = tmp_path / "m.npz"
    args = ["pretrain", "--steps", "6", "--eval-every", "3", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
            "--out", str(out), "--samples", "3", "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "validation loss  GPT" in text and "bigram (counts)" in text
    assert out.exists()
    assert main(args) == 0  # the same command again: the run is complete
    assert "already complete (6 of 6 steps)" in capsys.readouterr().out
    assert main(args[:2] + ["8"] + args[3:]) == 2  # the cosine schedule depends on --steps: another run
    assert "steps: 6 in the checkpoint, 8 now" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(out), "-n", "4", "--top-k", "5"]) == 0
    assert len([l for l in capsys.readouterr().out.splitlines() if "log π" in l]) == 4


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["sample", "--checkpoint", str(tmp_path / "none.npz")])
    assert stop.value.code == 2
    assert "argument --checkpoint: no file at" in capsys.readouterr().err
    assert main(["pretrain", "--n-embd", "10", "--n-head", "4", "--out", str(tmp_path / "x.npz")]) == 2
    assert "must be divisible" in capsys.readouterr().err


def test_tour_quick_runs_every_stage_and_writes_its_report(tmp_path, capsys):
    assert main(["tour", "--out", str(tmp_path), "--quick"]) == 0
    report = (tmp_path / "report.md").read_text()
    for section in ("## Base model", "## Preferences and the reward model", "## RLHF", "## DPO", "## GDC",
                    "## f-DPG with Jensen–Shannon", "## Prompts: completing first letters", "## Timings"):
        assert section in report, section
    for png in ("pretrain_loss.png", "reward_kl.png", "constraint.png", "kl_p_pi.png", "dpo.png"):
        assert (tmp_path / png).stat().st_size > 1000, png
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    for stage in ("base model", "reward model", "RLHF (RLOO, k1 in the reward)", "DPO", "GDC: 50% female",
                  "f-DPG (JS), same target", "prompts: RLOO and GRPO"):
        [line] = [x for x in lines if x.startswith(stage + ": ")]  # one result line per stage, with its time
        assert re.search(r"\[\d+\.\d s\]$", line), line
        assert stage == "base model" or " ± " in line, line  # an estimate carries its standard error
    assert "it/s" not in captured.err  # progress bars only on a terminal
    page = (tmp_path / "report.html").read_text()
    assert "<table>" in page and "## " not in page
    images = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(images) == report.count("![") and all(src.startswith("data:image/png;base64,") for src in images)


def test_grpo_and_the_conditional_variants_run_on_names(tmp_path, capsys):
    """`align grpo` and --prompts on rlhf, dpo, gdc and f-DPG: a few steps each, with completions of the likeliest
    prompts in the report; GRPO resumes from its checkpoint."""
    run = ["--steps", "2", "--batch-size", "8", "--quiet"]
    grpo = ["align", "grpo", "--reward", "true", "--out", str(tmp_path / "grpo.npz")] + run
    assert main(grpo) == 0
    out = capsys.readouterr().out
    assert "clip_fraction" in out and "completions: m… →" in out
    assert main(grpo[:-5] + ["--steps", "3", "--batch-size", "8", "--quiet"]) == 0
    assert "resumed from" in capsys.readouterr().out
    for method in (["rlhf", "--reward", "true", "--prompts", "first2"],
                   ["dpo", "--prompts", "first1", "--n-pairs", "40"],
                   ["gdc", "--prompts", "first1", "--constraint", "contains:z", "--ebm-samples", "300",
                    "--eval-samples", "50"],
                   ["fdpg", "--prompts", "first1", "--target", "reward", "--reward", "true"]):
        assert main(["align", *method, "--out", str(tmp_path / f"{method[0]}.npz"), *run]) == 0, method
        out = capsys.readouterr().out
        assert "completions: " in out, method
    assert "satisfied by" not in out  # f-DPG towards a reward target reports no constraint


def test_conditional_options_are_checked_before_any_work(tmp_path, capsys):
    out = ["--out", str(tmp_path / "x.npz")]
    for args, message in ((["grpo", "--group-size", "1"], "argument --group-size: expected a whole number ≥ 2"),
                          (["grpo", "--clip", "0"], "argument --clip: expected a number in (0, 1)"),
                          (["rlhf", "--prompts", "first3"], "argument --prompts: invalid choice"),
                          (["grpo", "--scale", "batch"], "argument --scale: invalid choice")):
        with pytest.raises(SystemExit):
            main(["align", *args, *out])
        assert message in capsys.readouterr().err, args
    assert main(["align", "grpo", "--batch-size", "30", *out]) == 2
    assert "is not a multiple of --group-size 4" in capsys.readouterr().err
    assert main(["align", "rlhf", "--prompts", "first1", "--group-size", "5", *out]) == 2
    assert "--batch-size 64 is not a multiple of --group-size 5" in capsys.readouterr().err
    assert main(["align", "gdc", "--prompts", "first1", "--constraint", "female=0.5", *out]) == 2
    assert "pointwise constraints only" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.skipif(not BASE.exists(), reason="no committed base checkpoint")
def test_committed_base_model_beats_the_bigram_baseline():
    """The base checkpoint was trained by the default `minialign pretrain`; it must beat counts on validation."""
    model = GPT.load(BASE)
    _, _, val_ids = names_dataset(model.config.block_size)
    gpt = evaluate(model, val_ids)
    bigram = bigram_baseline(model.config.block_size)
    assert gpt < bigram - 0.1, (gpt, bigram)
    names = CharTokenizer().decode_batch(model.generate(200, rng=0)[0])
    assert np.mean([2 <= len(n) <= 11 for n in names]) > 0.9


def test_ctrl_c_saves_one_line_exit_130_and_the_same_command_resumes_to_the_same_weights(tmp_path, capsys):
    """A real SIGINT to a running `minialign align`: one line naming the checkpoint and how to resume, exit status
    130, no temporary files; the same command again resumes (`resumed from X at step N`) and ends with the weights
    of a run that was never interrupted, bit for bit."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from minialign.io import load

    run = ["align", "rlhf", "--reward", "true", "--steps", "60", "--batch-size", "8", "--checkpoint-every", "2",
           "--quiet"]
    out = tmp_path / "stopped.npz"
    command = [sys.executable, "-m", "minialign", *run, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)  # training has started: its first checkpoint is on disk
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    stopped = load(out)["step"]
    assert 2 <= stopped < 60
    assert err.splitlines() == [f"minialign align rlhf: interrupted: the state after step {stopped} is saved in {out}; "
                                "rerun the same command to resume"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stopped.npz"]  # no temporary file left behind

    again = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"resumed from {out} at step {stopped}" in again.stdout
    assert main(run + ["--out", str(tmp_path / "whole.npz")]) == 0
    resumed, whole = load(out), load(tmp_path / "whole.npz")
    assert resumed["step"] == whole["step"] == 60
    for name, value in whole["weights"].items():
        np.testing.assert_array_equal(resumed["weights"][name], value, err_msg=name)


def test_sample_prints_many_names_as_they_come_in_chunks(monkeypatch, capsys):
    import minialign.cli as cli

    monkeypatch.setattr(cli, "SAMPLE_CHUNK", 3)
    assert main(["sample", "-n", "7", "--seed", "5"]) == 0
    seven = [l for l in capsys.readouterr().out.splitlines() if "log π" in l]
    monkeypatch.setattr(cli, "SAMPLE_CHUNK", 4096)
    assert main(["sample", "-n", "3", "--seed", "5"]) == 0
    assert len(seven) == 7 and seven[:3] == [l for l in capsys.readouterr().out.splitlines() if "log π" in l]
