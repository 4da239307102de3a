"""One writer per checkpoint: a second run on the same --out is refused at once, naming the running process, and the
first finishes untouched; temporary files belong to their writer; Ctrl-C twice still ends in status 130 with the
checkpoint intact; a finished run says so before it prepares anything.

The runs here are real processes (``python -m minialign …``) with small sizes, as a user would start them twice.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minialign import io
from minialign.cli import main
from minialign.lock import hold, lock_path

ROOT = Path(__file__).resolve().parent.parent
RLHF = ["align", "rlhf", "--reward", "true", "--batch-size", "8", "--checkpoint-every", "5", "--quiet"]


def start(argv, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "minialign", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc, limit=60.0):
    start_time = time.perf_counter()
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the first run ended before the test could start the second: {proc.communicate()}")
        if time.perf_counter() - start_time > limit:
            proc.kill()
            pytest.fail("the first run never took its lock")
        time.sleep(0.05)


def identity(path):
    return json.loads(io.load(path)["run"]["identity"])


@pytest.mark.parametrize("second", [[], ["--beta", "0.3"]], ids=["same settings", "different beta"])
def test_a_second_run_on_the_same_out_is_refused_at_once_and_the_first_finishes_untouched(second, tmp_path):
    out = tmp_path / "run.npz"
    first = start(RLHF + ["--steps", "200", "--out", str(out)], tmp_path)
    wait_for(lambda: lock_path(out).exists() and out.exists(), first)  # running, with a checkpoint on disk
    t0 = time.perf_counter()
    other = start(RLHF + ["--steps", "200", "--out", str(out)] + second, tmp_path)
    _, err = other.communicate(timeout=60)
    refused_in = time.perf_counter() - t0
    assert first.poll() is None, "the first run had finished: the test proves nothing"
    assert other.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"process {first.pid}" in lines[0] and "still running" in lines[0], err
    assert "another --out" in lines[0] and str(out) in lines[0]
    assert refused_in < 10, f"the refusal took {refused_in:.1f} s"
    stdout, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert f"checkpoint: {out}" in stdout
    saved = io.load(out)
    assert saved["step"] == 200 and identity(out)["beta"] == 0.1
    assert not lock_path(out).exists(), "the lock outlived its run"
    assert not list(tmp_path.glob("*.tmp")), "a temporary file was left behind"


def test_two_distillations_with_different_f_on_one_out_are_not_both_accepted(tmp_path):
    teacher = ROOT / "minialign" / "data" / "base.npz"
    out = tmp_path / "student.npz"
    common = ["distill", "--teacher", str(teacher), "--batch-size", "8", "--eval-samples", "20", "--quiet", "--out",
              str(out)]
    first = start(common + ["--f", "js", "--steps", "150", "--checkpoint-every", "5"], tmp_path)
    wait_for(lambda: lock_path(out).exists() and out.exists(), first)
    other = start(common + ["--f", "kl", "--steps", "5"], tmp_path)
    _, err = other.communicate(timeout=60)
    assert first.poll() is None
    assert other.returncode == 2 and f"process {first.pid}" in err, err
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert io.load(out)["step"] == 150


def test_distilling_into_the_teacher_is_refused_and_the_teacher_is_untouched(tmp_path, capsys):
    teacher = tmp_path / "teacher.npz"
    teacher.write_bytes((ROOT / "minialign" / "data" / "base.npz").read_bytes())
    before = teacher.read_bytes()
    assert main(["distill", "--teacher", str(teacher), "--out", str(teacher), "--steps", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--teacher" in err and "it is the teacher" in err, err
    assert len(err.strip().splitlines()) == 1 and len(err) < 300, err
    assert teacher.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher.npz"]


def test_the_lock_is_reentrant_in_one_process_and_refuses_another_holder(tmp_path):
    out = tmp_path / "x.npz"
    with hold(out):
        with hold(out):  # the command line holds it, and the loop it calls takes it again
            assert lock_path(out).exists()
        assert lock_path(out).exists()
        code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from minialign.lock import acquire, Locked\n"
                f"try:\n    acquire({str(out)!r})\nexcept Locked as e:\n    print(e); sys.exit(3)")
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert child.returncode == 3 and f"process {os.getpid()}" in child.stdout, child
    assert not lock_path(out).exists()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "x.npz"
    code = (f"import os, sys; sys.path.insert(0, {str(ROOT)!r}); from minialign.lock import acquire\n"
            f"acquire({str(out)!r}); os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", code], timeout=60)
    assert lock_path(out).exists()  # killed with its lock file in place
    with hold(out):
        assert lock_path(out).read_text().split()[0] == str(os.getpid())


def test_a_writer_removes_only_the_temporary_files_of_writers_that_are_gone(tmp_path):
    out = tmp_path / "x.npz"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / f"x.npz.{sleeper.pid}.abc.tmp"
        live.write_bytes(b"half a checkpoint")
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        orphan = tmp_path / f"x.npz.{int(dead.stdout)}.def.tmp"
        orphan.write_bytes(b"left by a killed write")
        io.save(out, {"a": np.arange(3)})
        assert live.exists(), "a live writer's temporary file was deleted"
        assert not orphan.exists(), "a dead writer's temporary file was kept"
        assert list(io.load(out)["a"]) == [0, 1, 2]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_an_unwritable_out_is_refused_before_any_work_naming_the_users_path(tmp_path, capsys):
    t0 = time.perf_counter()
    assert main(["pretrain", "--steps", "2", "--quiet", "--out", "/proc/x.npz"]) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - t0 < 5
    assert "--out" in err and "cannot write /proc/x.npz:" in err and len(err.strip().splitlines()) == 1, err
    assert ".tmp" not in err and ".lock" not in err, err


def test_a_failed_write_names_the_users_path_never_the_temporary_file(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(OSError, match="No space left on device") as e:
        io.save(tmp_path / "x.npz", {"a": np.zeros(2)})
    assert str(tmp_path / "x.npz") in str(e.value) and ".tmp" not in str(e.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("gap", [0.0, 0.2], ids=["inside the step", "while the run ends"])
def test_ctrl_c_twice_exits_130_with_the_checkpoint_intact(gap, tmp_path):
    """The second Ctrl-C lands inside the step the first one waits for, or while the run prints and exits (it used to
    end the process by the signal there, status −2)."""
    out = tmp_path / "run.npz"
    run = start(RLHF + ["--steps", "400", "--out", str(out)], tmp_path)
    wait_for(lambda: out.exists(), run)
    run.send_signal(signal.SIGINT)
    time.sleep(gap)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, (run.returncode, err)
    assert "Traceback" not in err and "interrupted" in err, err
    assert 0 < io.load(out)["step"] < 400
    assert not lock_path(out).exists()


def test_a_finished_run_says_so_before_preparing_anything(tmp_path, capsys):
    out = tmp_path / "gdc.npz"
    argv = ["align", "gdc", "--constraint", "contains:a", "--ebm-samples", "200", "--eval-samples", "20",
            "--steps", "2", "--batch-size", "4", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "effective sample size" in first  # the first run fits its EBM
    assert main(argv) == 0
    again = capsys.readouterr().out.splitlines()
    assert "already complete (2 of 2 steps)" in again[0]
    assert not any("effective sample size" in line or "base samples" in line for line in again), again
    assert again[1] == f"checkpoint: {out}" and first.splitlines()[-1] == again[-1]  # the same aligned samples


@pytest.mark.parametrize("first, second, says", [
    (["--beta", "0.1"], ["--beta", "0.2"], "--beta: 0.1 in the checkpoint, 0.2 now"),
    ([], ["--kl", "k3_loss"], "--kl: k1_seq in the checkpoint, k3_loss now"),
    ([], ["--seed", "1", "--lr", "1e-3"], "--lr: 0.0003 in the checkpoint, 0.001 now; --seed: 0 in the checkpoint"),
    ([], ["--prompts", "first1"], "--prompts: none in the checkpoint, first1 now"),
])
def test_a_resume_of_another_run_is_refused_in_a_short_line_naming_the_flags(first, second, says, tmp_path, capsys):
    out = tmp_path / "r.npz"
    base = ["align", "rlhf", "--reward", "true", "--steps", "1", "--batch-size", "4", "--quiet", "--out", str(out)]
    assert main(base + first) == 0
    capsys.readouterr()
    assert main(base + second) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "--fresh" in err and "another --out" in err, err
    assert len(err.splitlines()) == 1 and len(err) - len(str(out)) < 300, f"{len(err)} characters: {err}"


def test_a_checkpoint_of_another_command_is_refused_naming_only_that(tmp_path, capsys):
    out = tmp_path / "r.npz"
    assert main(["align", "rlhf", "--reward", "true", "--steps", "1", "--batch-size", "4", "--quiet", "--out",
                 str(out)]) == 0
    capsys.readouterr()
    assert main(["align", "dpo", "--n-pairs", "8", "--steps", "1", "--batch-size", "2", "--quiet", "--out",
                 str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "command: align rlhf in the checkpoint, align dpo now" in err and "--beta" not in err, err
    assert len(err) - len(str(out)) < 300
