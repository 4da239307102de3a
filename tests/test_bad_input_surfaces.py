"""The bad-input table of the surfaces added since the first table: ``distill``, ``align grpo``, the prompted options
of every method, ``--device``, ``python -m minialign.bench …`` and ``python -m minialign.experiments …``.

Each row is a command a user could type and the phrases its refusal must hold. A refusal is one line (after
argparse's usage line, for an option's value) that names the flag and what it expects, with exit status 2 (1 for a
benchmark that has no device to measure on), in well under 2 s, and the run writes nothing. Rows are grouped by the
class of mistake (CLASSES); the count of rows per class is printed by the last test.
"""
import shlex
import signal
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "minialign" / "data" / "base.npz"
PAIRS = "chosen,rejected\nmary,xqzv\nanna,bbbb\nemma,zzzz\nolivia,qqqq\n"
LIMIT_S = 2.0


def row(cls, argv, *says, program="minialign", status=2):
    return pytest.param(cls, program, argv, says, status, id=f"{program.split('.')[-1]} {argv}")


def rows():
    r = []
    # ------------------------------------------------------------------ distill: every option
    d = "distill --teacher {base} --out {tmp}/d.npz"
    r += [row("missing file", "distill --teacher {tmp}/none.npz", "--teacher", "no file at", "none.npz"),
          row("directory", "distill --teacher {folder}", "--teacher", "is a directory"),
          row("wrong suffix", "distill --teacher {pairs}", "--teacher", "expected a .npz file"),
          row("not a checkpoint", "distill --teacher {fake}", "fake.npz", "not a minialign checkpoint"),
          row("out is an input", "distill --teacher {base} --out {base}", "--out", "--teacher", "it is the teacher"),
          row("bad choice", f"{d} --f bogus", "--f", "invalid choice", "bogus"),
          row("bad choice", f"{d} --samples both", "--samples", "invalid choice", "both"),
          row("malformed value", f"{d} --student-config n_layers=2", "--student-config", "KEY in n_layer"),
          row("malformed value", f"{d} --student-config n_layer", "--student-config", "KEY=VALUE"),
          row("duplicate value", f"{d} --student-config n_layer=2,n_layer=3", "--student-config", "given twice"),
          row("inconsistent values", f"{d} --student-config n_head=3", "--student-config", "multiple of n_head"),
          row("out of range", f"{d} --student-config n_layer=0", "--student-config", "≥ 1", "'0'"),
          row("model too large", f"{d} --student-config n_layer=1000,n_embd=4096", "--student-config",
              "parameters", "at most 100,000,000"),
          row("over budget", f"{d} --eval-samples 1000000", "--eval-samples", "memory", "--i-know", "GB"),
          row("out of range", f"{d} --eval-samples 1", "--eval-samples", "standard error", "'1'"),
          row("out of range", f"{d} --eval-samples 2000000", "--eval-samples", "1,000,000"),
          row("out of range", f"{d} --steps 0", "--steps", "≥ 1", "'0'"),
          row("not a number", f"{d} --steps many", "--steps", "whole number", "'many'"),
          row("out of range", f"{d} --batch-size 0", "--batch-size", "'0'"),
          row("out of range", f"{d} --batch-size 100000", "--batch-size", "65,536"),
          row("out of range", f"{d} --lr 0", "--lr", "(0, 1]"),
          row("not a number", f"{d} --lr nan", "--lr", "'nan'"),
          row("out of range", f"{d} --seed -1", "--seed", "'-1'"),
          row("out of range", f"{d} --seed 4294967296", "--seed", "4,294,967,295"),
          row("out of range", f"{d} --checkpoint-every 0", "--checkpoint-every", "'0'"),
          row("unwritable out", "distill --teacher {base} --out {folder}", "--out", "is a directory"),
          row("unwritable out", "distill --teacher {base} --out {tmp}/d.txt", "--out", ".npz"),
          row("unwritable out", "distill --teacher {base} --out {text}/d.npz", "--out", "is a file"),
          row("unwritable out", "distill --teacher {base} --out /proc/x.npz", "--out", "/proc/x.npz"),
          row("bad choice", f"{d} --device tpu", "--device", "invalid choice", "tpu"),
          row("unknown flag", f"{d} --bogus-flag 3", "unrecognized arguments", "--bogus-flag")]
    # ------------------------------------------------------------------ align grpo: every option
    g = "align grpo --reward true --out {tmp}/g.npz"
    r += [row("bad choice", "align grpo --reward maybe", "--reward", "invalid choice"),
          row("missing file", f"{g} --pairs {{tmp}}/none.csv", "--pairs", "no file at"),
          row("wrong suffix", f"{g} --pairs {{base}}", "--pairs", "expected a .csv file"),
          row("not a regular file", f"{g} --pairs /dev/null", "--pairs", "not a regular file", "/dev/null"),
          row("not a regular file", "distill --teacher /dev/null", "--teacher", "not a regular file"),
          row("out of range", f"{g} --n-pairs 1", "--n-pairs", "'1'"),
          row("bad choice", f"{g} --prompts first3", "--prompts", "invalid choice", "first3"),
          row("out of range", f"{g} --group-size 1", "--group-size", "≥ 2"),
          row("inconsistent values", f"{g} --group-size 3", "--batch-size 64", "--group-size 3", "multiple"),
          row("over budget", f"{g} --group-size 65536 --batch-size 65536", "memory", "--i-know", "--batch-size"),
          row("over budget", f"{g} --epochs 1000000 --steps 1", "would take", "h", "--epochs", "--i-know"),
          row("out of range", f"{g} --epochs 0", "--epochs", "'0'"),
          row("out of range", f"{g} --beta 0", "--beta", "> 0"),
          row("not a number", f"{g} --beta inf", "--beta", "'inf'"),
          row("out of range", f"{g} --clip 1", "--clip", "(0, 1)"),
          row("out of range", f"{g} --clip 0", "--clip", "(0, 1)"),
          row("bad choice", f"{g} --kl k2", "--kl", "invalid choice"),
          row("bad choice", f"{g} --scale batch", "--scale", "invalid choice"),
          row("out is an input", "align grpo --reward true --base {base} --out {base}", "--out", "--base"),
          row("bad choice", f"{g} --device tpu", "--device", "invalid choice"),
          row("unknown flag", f"{g} --group 4", "unrecognized arguments", "--group")]
    # ------------------------------------------------------------------ the prompted options of every method
    for m, extra in (("rlhf", "--reward true"), ("dpo", ""), ("gdc", "--constraint contains:a"),
                     ("fdpg", "--constraint contains:a")):
        a = f"align {m} {extra} --out {{tmp}}/{m}.npz"
        r.append(row("bad choice", f"{a} --prompts first9", "--prompts", "invalid choice", "first9"))
        if m != "dpo":
            r += [row("out of range", f"{a} --prompts first1 --group-size 0", "--group-size", "'0'"),
                  row("inconsistent values", f"{a} --prompts first1 --group-size 5", "--batch-size 64",
                      "--group-size 5")]
    r.append(row("inconsistent values", "align gdc --constraint female=0.5 --prompts first1 --out {tmp}/c.npz",
                 "--prompts", "pointwise"))
    # ------------------------------------------------------------------ --device on every command that takes it
    for command in ("pretrain --out {tmp}/p.npz", "align rlhf --reward true --out {tmp}/r.npz", d,
                    "tour --out {tmp}/tour"):
        r.append(row("bad choice", f"{command} --device tpu", "--device", "invalid choice", "tpu"))
    # ------------------------------------------------------------------ the rest of the commands' sizes
    r += [row("over budget", "sample -n 1000000000", "-n", "would take", "--i-know"),
          row("over budget", "pretrain --steps 1000000 --out {tmp}/p.npz", "would take", "--steps", "--i-know"),
          row("over budget", "align rlhf --reward true --steps 100000 --batch-size 4096 --out {tmp}/r.npz",
              "--steps", "--i-know"),
          row("over budget", "align gdc --constraint contains:a --ebm-samples 10000000 --out {tmp}/c.npz",
              "--ebm-samples", "--i-know"),
          row("out of range", "--threads 0 sample", "--threads", "'0'")]
    # ------------------------------------------------------------------ python -m minialign.bench
    b = "python -m minialign.bench"
    r += [row("out of range", "engine --batch-size -5", "--batch-size", "'-5'", program=b),
          row("out of range", "engine --batch-size 0", "--batch-size", "'0'", program=b),
          row("out of range", "engine --batch-size 5000", "--batch-size", "4,096", program=b),
          row("not a number", "engine --batch-size many", "--batch-size", "'many'", program=b),
          row("out of range", "engine --repeats 0", "--repeats", "'0'", program=b),
          row("out of range", "engine --threads 0", "--threads", "'0'", program=b),
          row("out of range", "engine --threads 100000", "--threads", "cores", program=b),
          row("over budget", "engine --batch-size 4096 --repeats 10000", "would take", "--repeats", "--i-know",
              program=b),
          row("unknown flag", "engine --bogus-flag 3", "unrecognized arguments", "--bogus-flag", program=b),
          row("unknown command", "engines", "invalid choice", "engines", program=b),
          row("missing command", "", "required", "BENCH", program=b),
          row("malformed value", "kernels --cases 4096", "--cases", "NxV", program=b),
          row("out of range", "kernels --cases 0x5", "--cases", "'0x5'", program=b),
          row("bad choice", "kernels --dtypes fp8", "--dtypes", "invalid choice", program=b),
          row("bad choice", "kernels --fs chi2", "--fs", "invalid choice", program=b),
          row("bad choice", "kernels --only speed", "--only", "invalid choice", program=b),
          row("out of range", "kernels --linear-vocabs 1", "--linear-vocabs", "'1'", program=b),
          row("out of range", "kernels --linear-tokens 0", "--linear-tokens", "'0'", program=b),
          row("out of range", "kernels --linear-dim 0", "--linear-dim", "'0'", program=b),
          row("out of range", "kernels --seq 0", "--seq", "'0'", program=b),
          row("out of range", "kernels --head-dims 512", "--head-dims", "256", program=b),
          row("out of range", "kernels --attn-tokens 0", "--attn-tokens", "'0'", program=b),
          row("out of range", "kernels --attn-width -1", "--attn-width", "'-1'", program=b),
          row("out of range", "kernels --rep 0", "--rep", "'0'", program=b),
          row("unknown flag", "kernels --smoke --bogus", "unrecognized arguments", "--bogus", program=b)]
    # ------------------------------------------------------------------ python -m minialign.experiments
    e = "python -m minialign.experiments"
    r += [row("unknown command", "nope", "invalid choice", "'nope'", program=e),
          row("missing command", "", "required", "STUDY", program=e),
          row("bad choice", "gdc_study --part some", "--part", "invalid choice", program=e),
          row("out of range", "gdc_study --steps 0", "--steps", "'0'", program=e),
          row("out of range", "gdc_study --batch-size 0", "--batch-size", "'0'", program=e),
          row("out of range", "gdc_study --batch-size 1000000", "--batch-size", "65,536", program=e),
          row("out of range", "gdc_study --lr 2", "--lr", "(0, 1]", program=e),
          row("unwritable out", "gdc_study --out {text}", "--out", "is a file", program=e),
          row("unknown flag", "gdc_study --seeds 3", "unrecognized arguments", "--seeds", program=e),
          row("out of range", "fdpg_study --lr 0", "--lr", "(0, 1]", program=e),
          row("out of range", "fdpg_study --steps 1000000", "--steps", "100,000", program=e),
          row("unwritable out", "fdpg_study --out {text}/sub", "--out", "not a writable folder", program=e),
          row("unknown flag", "fdpg_study --names", "unrecognized arguments", "--names", program=e)]
    return r


ROWS = rows()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("surfaces")
    (d / "folder.npz").mkdir()
    (d / "pairs.csv").write_text(PAIRS)
    (d / "fake.npz").write_text(PAIRS)
    (d / "plain.txt").write_text("not a folder")
    return {"base": str(BASE), "folder": str(d / "folder.npz"), "pairs": str(d / "pairs.csv"),
            "fake": str(d / "fake.npz"), "text": str(d / "plain.txt")}


def entry(program):
    if program == "minialign":
        from minialign.cli import main
    elif program.endswith("bench"):
        from minialign.bench import main
    else:
        from minialign.experiments.__main__ import main
    return main


def snapshot(*folders):
    return {p: p.stat().st_mtime_ns for f in folders for p in Path(f).rglob("*")}


class Hang(Exception):
    pass


def run_bounded(fn, seconds=20):
    """``fn()``, stopped with :class:`Hang` after ``seconds`` (a row that starts real work fails instead of hanging)."""
    def stop(signum, frame):
        raise Hang

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def small_machine(monkeypatch):
    """A machine with 8 GB to give, wherever the table runs: the memory rows refuse the same sizes everywhere."""
    from minialign import argtypes

    monkeypatch.setattr(argtypes, "memory_limit", lambda: 8e9)


@pytest.mark.parametrize("cls, program, argv, says, status", ROWS)
def test_a_bad_input_is_refused_at_once_in_one_line_naming_the_flag(cls, program, argv, says, status, files, tmp_path,
                                                                  monkeypatch, capsys, small_machine):
    monkeypatch.chdir(tmp_path)  # default output paths (runs/…) land here, where nothing may appear
    before = snapshot(tmp_path, Path(files["pairs"]).parent)
    args = shlex.split(argv.format(tmp=tmp_path, **files))
    main = entry(program)
    t0 = time.perf_counter()
    try:
        code = run_bounded(lambda: main(args))
    except SystemExit as e:
        code = e.code
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("usage:") and not line.startswith(" ")]
    assert code == status, (code, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for phrase in says:
        assert phrase in lines[0], f"{phrase!r} not in {lines[0]!r}"
    assert seconds < LIMIT_S, f"refused after {seconds:.2f} s"
    assert snapshot(tmp_path, Path(files["pairs"]).parent) == before, "a refused run wrote or changed a file"


def test_bench_kernels_without_a_device_exits_1_naming_the_device(capsys, triton):
    import torch

    from minialign.bench import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the benchmark would measure")
    assert main(["kernels"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA device" in err[0] and "--smoke" in err[0]


@pytest.mark.parametrize("program", ["python -m minialign.bench", "python -m minialign.experiments"])
def test_help_exits_0_and_lists_the_commands_and_options(program, capsys):
    with pytest.raises(SystemExit) as e:
        entry(program)(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    names = ("engine", "kernels") if program.endswith("bench") else ("gdc_study", "fdpg_study", "--part", "--no-names")
    assert all(n in text for n in names), text


def test_the_table_covers_every_class_and_every_surface(capsys):
    classes = {}
    for p in ROWS:
        classes[p.values[0]] = classes.get(p.values[0], 0) + 1
    with capsys.disabled():
        print(f"\n{len(ROWS)} bad inputs in {len(classes)} classes: "
              + ", ".join(f"{c} {n}" for c, n in sorted(classes.items())))
    surfaces = " ".join(f"{p.values[1]} {p.values[2]}" for p in ROWS)
    for surface in ("distill", "align grpo", "--prompts", "--device", "minialign.bench engine", "kernels",
                    "minialign.experiments gdc_study", "fdpg_study"):
        assert surface in surfaces, surface
    assert len(classes) >= 12


def test_a_long_run_inside_the_limits_says_how_long_before_it_starts(tmp_path, monkeypatch, capsys):
    from minialign import argtypes
    from minialign.cli import main

    monkeypatch.setattr(argtypes, "LONG_RUN", 0.0)  # every run is "long": the line must come before any work
    assert main(["align", "rlhf", "--reward", "true", "--steps", "1", "--batch-size", "2", "--quiet", "--out",
                 str(tmp_path / "r.npz")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "align rlhf (1 step of 2 samples) will take about" in err[0] and "by the size estimate" in err[0]


def test_i_know_runs_what_the_budget_refuses(tmp_path, monkeypatch, capsys):
    from minialign import argtypes
    from minialign.cli import main

    monkeypatch.setattr(argtypes, "TIME_LIMIT", 0.0)  # every run is over the limit
    argv = ["align", "rlhf", "--reward", "true", "--steps", "1", "--batch-size", "2", "--quiet", "--out",
            str(tmp_path / "r.npz")]
    assert main(argv) == 2
    assert "--i-know" in capsys.readouterr().err
    assert main(argv + ["--i-know"]) == 0
    assert (tmp_path / "r.npz").exists()
