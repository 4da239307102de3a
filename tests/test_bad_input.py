"""Bad input is refused plainly, before any work: a table of everyday mistakes, through the command line and the API.

Every row is one mistake. A command-line row is a ``minialign`` command (``{name}`` stands for one of the files
made below); it must end with a non-zero exit status and one ``error:`` line that contains every phrase the row
names (the flag or argument, the value it got, what it expects), without a traceback, without writing any file,
and within :data:`LIMIT` seconds. An API row calls the library; it must raise the row's exception with a message
that contains the row's phrases, within the same limit. A few rows run again as real processes, to show that
nothing but the message reaches the terminal.

To add a row: append it to :data:`CLI` (a command line and the phrases of its message) or :data:`API` (an id, a
function of the files, the phrases, and the exception when it is not a ValueError). The rows of numeric flags and
of ``--prompts`` and ``--device`` are read from the parser (:func:`numeric_options`, :func:`flag_commands`), so a
new method's options are covered unasked; a new numeric argument type needs its kind in :func:`numeric_kind`, a
new file of another shape goes into :func:`files`.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest
from helpers import installed

from minialign import argtypes as A
from minialign import divergences
from minialign.cli import main
from minialign.ebm import fit_names_ebm, parse_constraint
from minialign.gender import GenderClassifier
from minialign.gpt import GPT, GPTConfig
from minialign.io import NotACheckpoint
from minialign.io import load as load_checkpoint
from minialign.lab import ExactLab, lab_model
from minialign.methods import METHODS
from minialign.metrics import distinct_n
from minialign.optim import SGD, AdamW, clip_grad_norm
from minialign.pretrain import PretrainConfig
from minialign.rewards import RewardModel, fit_reward_model, load_pairs
from minialign.tasks import load_base
from minialign.trainers.common import Sampling, TrainConfig
from minialign.trainers.dpo import DPO
from minialign.trainers.fdpg import FDPG, FDPGOptions
from minialign.trainers.gdc import DPG
from minialign.trainers.grpo import GRPO, GRPOOptions
from minialign.trainers.proposal import MomentCalibration
from minialign.trainers.rlhf import RLHF, RLHFOptions, kl_control_optimum

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 2.0     # seconds a refusal may take (a refusal comes before any work)
HANG = 15.0     # seconds after which a case is stopped and counted as a hang


class Row(NamedTuple):
    id: str
    run: str | Callable   # a command line (str) or an API call f(files)
    says: tuple           # phrases the message must contain
    raises: type = ValueError


def cli(argv: str, *says) -> Row:
    return Row(argv, argv, says)


def api(id: str, call: Callable, *says, raises=ValueError) -> Row:
    return Row(id, call, says, raises)


# ------------------------------------------------------------------------------------------- files
def tiny_gpt(**config) -> GPT:
    return GPT(GPTConfig(**{"n_layer": 1, "n_head": 2, "n_embd": 8, **config}), seed=0)


def _flip_a_byte(data: bytes, path: Path) -> bytes:
    """The checkpoint with one byte of an array's data changed (inside a member, so the zip's CRC catches it)."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.compress_size)
    at = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:]


def _pairs(rows, header="chosen,rejected"):
    return "\n".join([header] + [",".join(r) for r in rows]) + "\n"


GOOD_PAIRS = [("anna", "bob"), ("ella", "mark"), ("julia", "tom"), ("mia", "max"), ("lena", "jon"), ("olivia", "ed")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """name → path of every file the rows refer to (made once; the rows must leave them as they are)."""
    d = tmp_path_factory.mktemp("bad")
    f = {}

    def put(name, filename, data):
        path = d / filename
        path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
        f[name] = str(path)

    ok = d / "ok.npz"
    tiny_gpt().save(ok)
    f["ok"] = str(ok)
    raw = ok.read_bytes()
    put("empty", "empty.npz", b"")
    put("text", "text.npz", "this is not a checkpoint\n")
    put("truncated", "truncated.npz", raw[: len(raw) // 2])
    put("bitflip", "bitflip.npz", _flip_a_byte(raw, ok))
    put("pickle", "pickle.npz", pickle.dumps({"config": "{}", "weights": {}}))
    with open(d / "objects.npz", "wb") as fh:
        np.savez(fh, config=np.array([{"n_layer": 1}], dtype=object))
    f["objects"] = str(d / "objects.npz")
    with open(d / "npy.npz", "wb") as fh:
        np.save(fh, np.zeros(3))
    f["npy"] = str(d / "npy.npz")
    np.savez(d / "foreign.npz", a=np.zeros(3), b=np.ones(2))
    f["foreign"] = str(d / "foreign.npz")
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        model = tiny_gpt()
        model.h[0].attn.c_attn.weight.data[0, 0] = value
        model.save(d / f"{name}.npz")
        f[name] = str(d / f"{name}.npz")
    state = load_checkpoint(ok)
    np.savez(d / "badconfig.npz", config=np.array("{not json"),
             **{f"weights/{k}": v for k, v in state["weights"].items()})
    f["badconfig"] = str(d / "badconfig.npz")
    cfg = {**json.loads(state["config"]), "n_wings": 2}
    np.savez(d / "oddconfig.npz", config=np.array(json.dumps(cfg)),
             **{f"weights/{k}": v for k, v in state["weights"].items()})
    f["oddconfig"] = str(d / "oddconfig.npz")
    RewardModel(GPTConfig(n_layer=1, n_head=2, n_embd=8)).save(d / "reward.npz")
    f["reward"] = str(d / "reward.npz")
    tiny_gpt(vocab_size=5).save(d / "vocab5.npz")
    f["vocab5"] = str(d / "vocab5.npz")
    (d / "folder.npz").mkdir()
    f["dir"] = str(d / "folder.npz")
    (d / "folder.csv").mkdir()
    f["csvdir"] = str(d / "folder.csv")
    put("file", "plain.txt", "a plain file\n")
    f["missing"] = str(d / "missing.npz")
    readonly = d / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    f["readonly"] = str(readonly)
    assert main(["align", "rlhf", "--reward", "true", "--steps", "1", "--batch-size", "2", "--quiet", "--out",
                 str(d / "run.npz")]) == 0  # a finished run of another command and other settings
    f["run"] = str(d / "run.npz")
    put("pairs", "pairs.csv", _pairs(GOOD_PAIRS))
    put("pairs_txt", "pairs.txt", _pairs(GOOD_PAIRS))
    put("pairs_empty", "empty.csv", "")
    put("pairs_header", "header.csv", "chosen,rejected\n")
    put("pairs_wrong_header", "wrong.csv", _pairs(GOOD_PAIRS, "winner,loser"))
    put("pairs_three", "three.csv", _pairs(GOOD_PAIRS[:2]) + "anna,bob,carl\n")
    put("pairs_chars", "chars.csv", _pairs(GOOD_PAIRS[:3] + [("Anna", "bob")]))
    put("pairs_digits", "digits.csv", _pairs(GOOD_PAIRS[:3] + [("ann4", "bob")]))
    put("pairs_long", "long.csv", _pairs(GOOD_PAIRS[:3] + [("maximilianus", "bob")]))
    put("pairs_ties", "ties.csv", _pairs([(a, a) for a, _ in GOOD_PAIRS]))
    put("pairs_dup", "dup.csv", _pairs([GOOD_PAIRS[0]] * 8))
    put("pairs_one", "one.csv", _pairs(GOOD_PAIRS[:1]))
    put("pairs_binary", "binary.csv", raw)
    yield f
    readonly.chmod(0o755)


# ------------------------------------------------------------------------------------------- the command line
BAD_NUMBERS = {  # argument kind → (bad values, what the message says is expected)
    "count": (("0", "-1", "2.5", "nan", "inf", "ten", ""), "whole number"),
    "natural": (("-1", "1.5", "nan", "x"), "whole number"),
    "positive": (("0", "-1", "-inf", "nan", "inf", "1e400", "fast"), "number"),
    "unit": (("1", "-0.1", "nan", "inf"), "[0, 1)"),
    "rate": (("0", "-1e-3", "nan", "inf", "1e4", "fast"), "learning rate, a number in (0, 1]"),
    "open": (("0", "1", "-0.1", "nan", "inf", "x"), "number"),
}
def options_of(parser, command=""):
    """(command, flag, action) for every option of the command line that takes a value."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from options_of(sub, f"{command} {name}".strip())
        elif action.option_strings and action.nargs != 0 and not isinstance(action, argparse._HelpAction):
            yield command, action.option_strings[0], action


def _refuses_nan_as_a_number(kind) -> bool:
    import argparse

    try:
        kind("nan")
    except argparse.ArgumentTypeError as e:
        return "number" in str(e)
    except (TypeError, ValueError):
        return False
    return False


def numeric_kind(kind) -> str | None:
    """The kind (a key of :data:`BAD_NUMBERS`) of a numeric argument type of ``minialign.argtypes``: the float
    types by name, the whole-number ones (``count(minimum, …)``) by whether they refuse 0; None for another type."""
    import argparse

    floats = {A.positive_float: "positive", A.learning_rate: "rate", A.clip_range: "open", A.unit_interval: "unit"}
    if kind in floats:
        return floats[kind]
    if getattr(kind, "__qualname__", "").startswith("count."):
        try:
            kind("0")
        except argparse.ArgumentTypeError:
            return "count"
        return "natural"
    return None


def numeric_options() -> dict:
    """Command → its numeric flags and their kinds ("" is the global options, before a command), read from the
    parser (whose ``align`` methods come from the method table): a new method's options get rows unasked. A flag
    whose type has no kind gets the kind None, and the completeness test names it."""
    from minialign.cli import build_parser

    out = {}
    for command, flag, action in options_of(build_parser()):
        if action.choices is None and _refuses_nan_as_a_number(action.type):
            out.setdefault(command, []).append((flag, numeric_kind(action.type)))
    return out


def flag_commands(flag: str) -> list:
    """Every command of the parser that takes ``flag``."""
    from minialign.cli import build_parser

    return [command for command, f, _ in options_of(build_parser()) if f == flag]


def numeric_rows():
    rows = []
    for command, flags in numeric_options().items():
        for flag, kind in flags:
            if kind is None:
                continue  # test_the_table_is_large_and_has_a_row_for_every_option_that_takes_a_value names it
            values, expected = BAD_NUMBERS[kind]
            rows += [cli(f"{command} {flag}={v}" if command else f"{flag}={v} sample", f"argument {flag}", f"got {v!r}",
                         expected) for v in values]
    return rows


CHECKPOINTS = {  # a file given where a checkpoint is expected → what the message says about it
    "empty": "the file is empty", "text": "not an .npz archive", "truncated": "truncated",
    "bitflip": "damaged", "pickle": "not an .npz archive", "objects": "Python objects", "npy": "single NumPy array",
    "foreign": "holds a, b", "badconfig": "configuration", "oddconfig": "n_wings",
    "reward": "reward model", "nan": "NaN", "inf": "inf",
}


def checkpoint_rows():
    rows = []
    for name, why in CHECKPOINTS.items():
        rows.append(cli(f"sample --checkpoint {{{name}}}", f"{name}.npz", why))
        rows.append(cli(f"align rlhf --reward true --base {{{name}}}", f"{name}.npz", why))
    for flag in ("sample --checkpoint", *(f"align {m} --base" for m in METHODS)):
        rows += [cli(f"{flag} {{missing}}", flag.split()[-1], "no file at", "missing.npz"),
                 cli(f"{flag} {{dir}}", flag.split()[-1], "folder.npz", "is a directory"),
                 cli(f"{flag} {{pairs}}", flag.split()[-1], "pairs.csv", "expected a .npz file")]
    for name in ("empty", "truncated", "foreign", "bitflip", "objects"):  # resuming a damaged checkpoint
        rows.append(cli(f"align rlhf --reward true --out {{{name}}}", f"{name}.npz", "not a minialign checkpoint",
                        "--fresh", "another --out"))
        rows.append(cli(f"pretrain --steps 2 --out {{{name}}}", f"{name}.npz", "not a minialign checkpoint", "--fresh"))
    for argv, says in (("align rlhf --reward true --beta 0.2", "beta: 0.1 in the checkpoint, 0.2 now"),
                       ("align rlhf --reward true --seed 1", "seed: 0 in the checkpoint, 1 now"),
                       ("align rlhf --reward true --kl k3_loss", "kl: k1_seq in the checkpoint, k3_loss now"),
                       ("align rlhf --reward model", "reward: true in the checkpoint, model now"),
                       ("align dpo --batch-size 2", "command: align rlhf in the checkpoint, align dpo now"),
                       ("align gdc --constraint female=0.5", "command: align rlhf in the checkpoint, align gdc now"),
                       ("pretrain", "kind: align in the checkpoint, pretrain now")):
        rows.append(cli(f"{argv} --out {{run}}", "run.npz", "different run", says, "--fresh"))
    rows += [cli("align rlhf --reward true --out {reward}", "reward.npz", "--fresh"),
             cli("align rlhf --reward true --out {ok}", "ok.npz", "without a record of the run", "--fresh"),
             cli("align dpo --base {vocab5}", "vocab5.npz", "vocabulary of 5 tokens", "27"),
             cli("sample --checkpoint {vocab5}", "vocab5.npz", "vocabulary of 5 tokens", "not a names model"),
             cli("sample --checkpoint {ok} --top-k 28", "--top-k", "28", "27"),
             cli("align rlhf --reward true --base {ok} --out {ok} --fresh", "--out", "--base", "ok.npz")]
    return rows


def path_rows():
    rows = []
    for command in ("pretrain", *(f"align {m}" for m in METHODS)):
        rows += [cli(f"{command} --out {{dir}}", "argument --out", "folder.npz", "is a directory"),
                 cli(f"{command} --out {{file}}/run.npz", "argument --out", "plain.txt", "is a file"),
                 cli(f"{command} --out {{file}}/sub/run.npz", "argument --out", "plain.txt", "is a file"),
                 cli(f"{command} --out run.txt", "argument --out", "run.txt", ".npz"),
                 cli(f"{command} --out {{readonly}}/run.npz", "argument --out", "readonly", "not writable")]
    rows += [cli("tour --out {file}", "argument --out", "plain.txt", "folder"),
             cli("tour --out {file}/report", "argument --out", "plain.txt", "folder"),
             cli("tour --out {readonly}/tour", "argument --out", "readonly", "writable")]
    return rows


PAIRS = {  # a preferences file → what the message says
    "missing": ("file at", "missing.npz"), "csvdir": ("folder.csv", "is a directory"), "pairs_txt": (".csv",),
    "pairs_empty": ("empty",), "pairs_header": ("no pairs",), "pairs_wrong_header": ("chosen,rejected", "winner"),
    "pairs_three": ("line 4", "3 fields"), "pairs_chars": ("line 5", "'A'", "a-z"), "pairs_digits": ("'4'", "a-z"),
    "pairs_long": ("maximilianus", "12 letters"), "pairs_ties": ("every", "chosen", "same as", "rejected"),
    "pairs_dup": ("one pair", "8"), "pairs_one": ("1 pair", "at least 2"), "pairs_binary": ("not a text",),
}


def pairs_rows():
    rows = []
    pair_methods = [f"align {m}" for m, spec in METHODS.items() if "pairs" in spec.needs]  # dpo, ipo, …
    for name, says in PAIRS.items():
        for command in pair_methods + ["align rlhf"]:
            rows.append(cli(f"{command} --pairs {{{name}}}", "--pairs", *says))
    for name in ("pairs_ties", "pairs_long", "csvdir"):
        rows.append(cli(f"align fdpg --target reward --pairs {{{name}}}", "--pairs", *PAIRS[name]))
    return rows


CONSTRAINTS = {  # a --constraint value → what the message says
    "''": ("unknown constraint",), "male=0.5": ("unknown constraint", "'male'", "female"),
    "female=1.5": ("[0, 1]", "1.5"), "female=nan": ("[0, 1]", "nan"), "female=": ("number", "''"),
    "female=half": ("number", "'half'"), "contains:": ("letters a-z",), "contains:Z": ("letters a-z", "'Z'"),
    "contains:1": ("letters a-z", "'1'"), "=0.5": ("unknown constraint",), "female=1": ("1", "pointwise", "female"),
    "female=0": ("0", "pointwise"), "startswith:=0.5": ("letters a-z",), "endswith:o=0.5=0.2": ("number",),
}


def constraint_rows():
    rows = [cli(f"align gdc --constraint {c}", "argument --constraint", *says) for c, says in CONSTRAINTS.items()]
    rows += [cli(f"align fdpg --constraint {c}", "argument --constraint", *says)
             for c, says in list(CONSTRAINTS.items())[:4]]
    rows += [
        cli("align gdc", "--constraint", "female=0.5"),
        cli("align fdpg --target constraints", "--constraint"),
        cli("align gdc --constraint female=0.5 --constraint female=0.3", "female", "twice"),
        cli("align gdc --constraint contains:z --calibrate 0.1", "--calibrate", "distributional"),
        cli("align fdpg --f kl --constraint contains:z", "--f kl", "pointwise"),
        cli("align fdpg --f chi2 --constraint contains:z", "--f chi2", "pointwise"),
        cli("align gdc --constraint contains:qqq --ebm-samples 200", "no sample meets contains:qqq", "200",
            "--ebm-samples"),
    ]
    return rows


CUDA = installed("torch") and __import__("torch").cuda.is_available()  # a lent GPU really has one
CHOICES = [("align rlhf --kl k4", "--kl", "'k4'", "k1_seq"), ("align rlhf --algo a2c", "--algo", "'a2c'", "rloo"),
           ("align rlhf --reward human", "--reward", "'human'", "true"),
           ("align fdpg --reward human", "--reward", "'human'", "true"),
           ("align fdpg --proposal sometimes", "--proposal", "'sometimes'", "policy"),
           ("align gdc --constraint female=0.5 --proposal sometimes", "--proposal", "'sometimes'", "adaptive"),
           ("align fdpg --target love", "--target", "'love'", "constraints"),
           ("align fdpg --f kl2", "--f", "'kl2'", "reverse_kl"), ("align fdpg --f alpha:1", "--f", "alpha", "kl"),
           ("align fdpg --f alpha:nan", "--f", "alpha", "finite"), ("align fdpg --f alpha:", "--f", "number"),
           ("align grpo2", "invalid choice", "'grpo2'", "rlhf"), ("lecture", "invalid choice", "'lecture'", "pretrain"),
           ("align", "METHOD"), ("align rlhf --algo ppo --kl k3_loss", "--algo ppo", "--kl k1_seq"),
           ("sample --temperature", "--temperature", "expected one argument"),
           ("pretrain --n-embd 10 --n-head 4", "--n-embd", "10", "--n-head", "4", "divisible"),
           ("pretrain --block-size 8", "--block-size", "8", "12"),
           ("pretrain --block-size 100000", "--block-size", "100000", "from 12 to 256"),
           ("pretrain --n-embd 65536", "parameters", "--n-embd"),
           ("pretrain --n-layer 100000", "parameters", "--n-layer"),
           ("pretrain --seed 18446744073709551616", "--seed", "18446744073709551616"),
           ("align dpo --n-pairs 1", "--n-pairs", "'1'", "2"),
           ("align gdc --constraint female=0.5 --eval-samples 1", "--eval-samples", "'1'", "2"),
           ("pretrain --batch-size 100000000", "--batch-size", "100000000", "65,536"),
           ("distill --teacher {ok} --f bogus", "--f", "'bogus'", "js"),
           ("distill --teacher {ok} --samples both", "--samples", "'both'", "teacher"),
           ("distill --teacher {ok} --student-config n_wings=3", "--student-config", "n_wings"),
           ("distill --teacher {ok} --student-config n_embd=10,n_head=4", "--student-config", "multiple of n_head"),
           ("distill --teacher {missing}", "--teacher", "no file at", "missing.npz"),
           ("distill --teacher {dir}", "--teacher", "folder.npz", "is a directory"),
           ("distill --teacher {empty}", "empty.npz", "the file is empty"),
           ("distill --teacher {ok} --out {dir}", "--out", "is a directory"),
           ("distill", "--teacher", "required"),
           ("align grpo --group-size 1", "--group-size", "'1'", "2"),
           ("align grpo --batch-size 10 --group-size 4", "--batch-size", "multiple"),
           ("align grpo --kl k2_loss", "--kl", "'k2_loss'", "k3_loss"),
           ("align grpo --scale max", "--scale", "'max'", "group"),
           ("align grpo --loss-agg mean", "--loss-agg", "'mean'", "token_mean"),
           ("align grpo --reward human", "--reward", "'human'", "true"),
           ("align grpo --pairs {missing}", "--pairs", "missing.npz"),
           ("align rlhf --prompts first1 --batch-size 10", "--batch-size", "multiple"),
           ("course make 99-x --out {missing}", "no assignment", "'99-x'", "05-rlhf"),
           ("course make 05-rlhf", "--out", "required"),
           ("course make 05-rlhf --out {file}", "--out", "plain.txt", "not an empty folder"),
           ("course make 05-rlhf --out {file}/hw5", "--out", "plain.txt", "is a file"),
           ("course make 05-rlhf --out {readonly}/hw5", "--out", "readonly", "cannot be created"),
           ("course grade {missing}", "no student tree", "missing.npz"),
           ("course grade {readonly}", "ASSIGNMENT.md", "--assignment"),
           ("course grade {readonly} --assignment 99-x", "no assignment", "'99-x'"),
           ("course grade {readonly} --assignment 05-rlhf --extra-tests {missing}", "--extra-tests", "missing.npz"),
           ("course grade {readonly} --assignment 05-rlhf --json {file}/results.json", "--json", "plain.txt"),
           ("course grade {readonly} --assignment 05-rlhf --json {dir}", "--json", "a folder"),
           ("course restore {readonly}", "ASSIGNMENT.md", "--assignment"),
           ("course restore {readonly} --assignment 05-rlhf", "readonly", "not a student repository"),
           ("course restore {readonly} --assignment 99-x", "no assignment", "'99-x'"),
           ("course check 99-x", "no assignment", "'99-x'"),
           ("course grade-all {missing} --assignment 05-rlhf --csv g.csv", "SUBMISSIONS", "missing.npz"),
           ("course grade-all {readonly} --assignment 99-x --csv g.csv", "no assignment", "'99-x'"),
           ("course grade-all {readonly} --assignment 05-rlhf --csv {dir}", "--csv", "folder.npz"),
           ("course grade-all {readonly} --assignment 05-rlhf --csv g.csv --extra-tests {missing}", "--extra-tests",
            "missing.npz"),
           ("course grade-all {readonly} --assignment 05-rlhf --csv g.csv", "SUBMISSIONS", "no folder"),
           ("course autograder 05-rlhf --out {file}", "--out", "plain.txt", "not an empty folder"),
           ("course autograder 05-rlhf --out {readonly}/gs --extra-tests {missing}", "--extra-tests", "missing.npz"),
           ("course make 05-rlhf --out {missing} --stub-earlier", "--stub-earlier", "--term")] + \
    [(f"{command} --prompts first9", "--prompts", "'first9'", "first1") for command in flag_commands("--prompts")] + \
    [(f"{command} --device tpu" + (" --teacher {ok}" if command == "distill" else ""), "--device", "'tpu'", "cuda")
     for command in flag_commands("--device")] + \
    ([] if CUDA else [("pretrain --device cuda --steps 1", "--device cuda", "needs")])


CLI = numeric_rows() + checkpoint_rows() + path_rows() + pairs_rows() + constraint_rows() + \
    [cli(argv, *says) for argv, *says in CHOICES]


# ------------------------------------------------------------------------------------------- the API
@lru_cache(maxsize=None)
def ref():
    return lab_model(0, vocab_size=3, block_size=3)


def _rlhf(**kw):
    return RLHF(ref(), lambda batch: np.zeros(len(batch)), RLHFOptions(**kw))


def _gen(**kw):
    return ref().generate(**{"num_samples": 4, "rng": 0, **kw})


def _lam(**kw):
    args = {"log_base": lambda b: b.log_ref, "phi": lambda b: np.zeros((len(b), 1)), "lam": [0.0], "mu_bar": [0.5]}
    return MomentCalibration(**{**args, **kw})


def _ids(n=4):
    return np.zeros((n, 3), dtype=np.int64)


P = np.array([0.5, 0.5])

API = [
    *[api(f"GPT.load {name}", lambda f, n=name: GPT.load(f[n]), f"{name}.npz", why)
      for name, why in CHECKPOINTS.items()],
    api("GPT.load missing", lambda f: GPT.load(f["missing"]), "no checkpoint at", raises=FileNotFoundError),
    api("GPT.load dir", lambda f: GPT.load(f["dir"]), "folder.npz", "directory"),
    api("GPT.load csv", lambda f: GPT.load(f["pairs"]), "pairs.csv", "not a minialign checkpoint"),
    api("io.load pickle", lambda f: load_checkpoint(f["objects"]), "never loads", raises=NotACheckpoint),
    api("RewardModel.load GPT", lambda f: RewardModel.load(f["ok"]), "ok.npz", "reward-model"),
    api("RewardModel.load empty", lambda f: RewardModel.load(f["empty"]), "empty.npz", "empty"),
    api("GenderClassifier.load GPT", lambda f: GenderClassifier.load(f["ok"]), "ok.npz", "gender-classifier"),
    api("GenderClassifier.load truncated", lambda f: GenderClassifier.load(f["truncated"]), "not a minialign"),
    api("load_base vocab 5", lambda f: load_base(f["vocab5"]), "vocabulary", "5", "27"),
    *[api(f"load_pairs {name}", lambda f, n=name: load_pairs(f[n]), *says[-1:],
          raises=FileNotFoundError if name == "missing" else ValueError)
      for name, says in PAIRS.items() if name not in ("pairs_txt",)],
    *[api(f"parse_constraint {c}", lambda f, c=c: parse_constraint(c.strip("'")), *says)
      for c, says in CONSTRAINTS.items()],
    api("parse_constraint None", lambda f: parse_constraint(None), "str", raises=TypeError),
    api("fit_names_ebm n_samples 0", lambda f: fit_names_ebm(tiny_gpt(), ["contains:a"], n_samples=0),
        "n_samples", "0"),
    api("fit_names_ebm n_samples nan", lambda f: fit_names_ebm(tiny_gpt(), ["contains:a"], n_samples=float("nan")),
        "n_samples", "nan"),
    api("fit_names_ebm no constraint type", lambda f: fit_names_ebm(tiny_gpt(), [3]), "constraint", raises=TypeError),
    api("ExactLab(27, 10**6)", lambda f: ExactLab(27, 10**6), "27", "1000000", "max_sequences"),
    api("ExactLab(10**6, 27)", lambda f: ExactLab(10**6, 27), "max_sequences"),
    api("ExactLab(1, 3)", lambda f: ExactLab(1, 3), "vocab_size", "1"),
    api("ExactLab(3, 0)", lambda f: ExactLab(3, 0), "horizon", "0"),
    api("ExactLab(2.5, 3)", lambda f: ExactLab(2.5, 3), "vocab_size", "2.5"),
    api("ExactLab eos 3 of 3", lambda f: ExactLab(3, 3, eos_id=3), "eos_id", "3"),
    api("GPTConfig n_layer 0", lambda f: GPTConfig(n_layer=0), "n_layer", "0"),
    api("GPTConfig n_layer 1.5", lambda f: GPTConfig(n_layer=1.5), "n_layer", "1.5"),
    api("GPTConfig n_embd 10 n_head 4", lambda f: GPTConfig(n_embd=10, n_head=4), "n_embd", "n_head"),
    api("GPTConfig dropout 1", lambda f: GPTConfig(dropout=1.0), "dropout", "[0, 1)"),
    api("GPTConfig dropout nan", lambda f: GPTConfig(dropout=float("nan")), "dropout", "nan"),
    api("GPTConfig eos 27", lambda f: GPTConfig(eos_id=27), "eos_id", "27"),
    api("PretrainConfig steps 0", lambda f: PretrainConfig(steps=0), "steps", "0"),
    api("PretrainConfig batch_size 0", lambda f: PretrainConfig(batch_size=0), "batch_size", "0"),
    api("PretrainConfig lr nan", lambda f: PretrainConfig(lr=float("nan")), "lr", "nan"),
    api("PretrainConfig eval_every 0", lambda f: PretrainConfig(eval_every=0), "eval_every", "0"),
    api("TrainConfig steps 0", lambda f: TrainConfig(steps=0), "steps", "0"),
    api("TrainConfig batch_size 0", lambda f: TrainConfig(batch_size=0), "batch_size", "0"),
    api("TrainConfig lr inf", lambda f: TrainConfig(lr=float("inf")), "lr", "inf"),
    api("TrainConfig grad_clip 0", lambda f: TrainConfig(grad_clip=0), "grad_clip", "0"),
    api("TrainConfig checkpoint_every 0", lambda f: TrainConfig(checkpoint_every=0), "checkpoint_every", "0"),
    api("TrainConfig log_every 0", lambda f: TrainConfig(log_every=0), "log_every", "0"),
    api("TrainConfig seed -1", lambda f: TrainConfig(seed=-1), "seed", "-1"),
    api("RLHF beta nan", lambda f: _rlhf(beta=float("nan")), "beta", "nan"),
    api("RLHF beta 0", lambda f: _rlhf(beta=0.0), "beta", "0"),
    api("RLHF kl k4", lambda f: _rlhf(kl="k4"), "k4", "k1_seq"),
    api("RLHF algo a2c", lambda f: _rlhf(algo="a2c"), "a2c", "rloo"),
    api("RLHF ppo with k3", lambda f: _rlhf(algo="ppo", kl="k3_loss"), "PPO", "k1_seq"),
    api("RLHF kl_target -1", lambda f: _rlhf(kl_target=-1.0), "kl_target", "-1"),
    api("RLHF ppo_epochs 0", lambda f: _rlhf(algo="ppo", ppo_epochs=0), "ppo_epochs", "0"),
    api("RLHF clip 0", lambda f: _rlhf(algo="ppo", clip=0.0), "clip", "0"),
    api("DPO beta -1", lambda f: DPO(ref(), _ids(), _ids(), beta=-1.0), "beta", "-1"),
    api("DPO shapes", lambda f: DPO(ref(), _ids(4), _ids(3)), "chosen", "rejected", "(4, 3)", "(3, 3)"),
    api("DPO empty", lambda f: DPO(ref(), _ids(0), _ids(0)), "chosen", "(0, 3)"),
    api("DPG proposal", lambda f: DPG(ref(), ref(), lambda b: b.log_ref, proposal="sometimes"),
        "proposal", "sometimes"),
    api("FDPG f kl2", lambda f: FDPG(ref(), ref(), lambda b: b.log_ref, FDPGOptions(f="kl2")), "kl2", "reverse_kl"),
    api("FDPG f alpha:1", lambda f: FDPG(ref(), ref(), lambda b: b.log_ref, FDPGOptions(f="alpha:1")), "alpha", "kl"),
    api("FDPG calibrated", lambda f: FDPG(ref(), ref(), _lam()), "calibration", "GDC", raises=TypeError),
    api("FDPG proposal", lambda f: FDPGOptions(proposal="sometimes"), "proposal", "sometimes"),
    api("Sampling group 0", lambda f: Sampling(group_size=0), "group size", "0"),
    api("Sampling group 2.5", lambda f: Sampling(group_size=2.5), "group size", "2.5"),
    api("GRPO group 1", lambda f: GRPO(ref(), lambda b: np.zeros(len(b)), sampling=Sampling(group_size=1)),
        "at least 2", "group_size = 1"),
    api("GRPO epochs 0", lambda f: GRPOOptions(epochs=0), "epochs", "0"),
    api("MomentCalibration rate 0", lambda f: _lam(rate=0.0), "rate", "0"),
    api("MomentCalibration shapes", lambda f: _lam(lam=[0.0, 1.0]), "λ", "μ̄"),
    api("MomentCalibration mu nan", lambda f: _lam(mu_bar=[float("nan")]), "finite"),
    api("generate 0 samples", lambda f: _gen(num_samples=0), "num_samples", "0"),
    api("generate 2.5 samples", lambda f: _gen(num_samples=2.5), "num_samples", "2.5"),
    api("generate temperature 0", lambda f: _gen(temperature=0.0), "temperature", "0"),
    api("generate temperature nan", lambda f: _gen(temperature=float("nan")), "temperature", "nan"),
    api("generate temperature inf", lambda f: _gen(temperature=float("inf")), "temperature", "inf"),
    api("generate top_k 0", lambda f: _gen(top_k=0), "top_k", "0"),
    api("generate top_k 4", lambda f: _gen(top_k=4), "top_k", "4", "[1, 3]"),
    api("generate top_k 1.5", lambda f: _gen(top_k=1.5), "top_k", "1.5"),
    api("GPT forward float ids", lambda f: ref()(np.zeros((2, 2))), "integer", raises=TypeError),
    api("GPT forward id 3", lambda f: ref()(np.full((2, 2), 3)), "[0, 3)", "3"),
    api("GPT forward too long", lambda f: ref()(np.zeros((1, 5), dtype=np.int64)), "5", "block_size"),
    api("load_state_dict NaN", lambda f: tiny_gpt().load_state_dict(
        {k: v * np.nan for k, v in tiny_gpt().state_dict().items()}), "NaN"),
    api("AdamW lr nan", lambda f: AdamW(ref().parameters(), lr=float("nan")), "learning rate", "nan"),
    api("AdamW betas", lambda f: AdamW(ref().parameters(), betas=(1.5, 0.9)), "betas", "1.5"),
    api("AdamW weight_decay -1", lambda f: AdamW(ref().parameters(), weight_decay=-1.0), "weight_decay", "-1"),
    api("SGD momentum 1", lambda f: SGD(ref().parameters(), momentum=1.0), "momentum", "[0, 1)"),
    api("clip_grad_norm 0", lambda f: clip_grad_norm(ref().parameters(), 0.0), "max_norm", "0"),
    api("fit_reward_model lr nan", lambda f: fit_reward_model(load_pairs(f["pairs"])[:4], load_pairs(f["pairs"])[4:],
                                                              steps=1, lr=float("nan"), progress=False),
        "learning rate", "nan"),
    api("PretrainConfig warmup nan", lambda f: PretrainConfig(warmup=float("nan")), "warmup", "nan"),
    api("PretrainConfig seed -1", lambda f: PretrainConfig(seed=-1), "seed", "-1"),
    api("distinct_n 0", lambda f: distinct_n(["anna"], 0), "n-gram", "0"),
    api("kl_control_optimum beta 0", lambda f: kl_control_optimum([0.0, 0.0], [1.0, 2.0], 0.0), "beta", "0"),
    api("ExactLab.sample -1", lambda f: ExactLab(3, 3).sample(np.full(7, 1 / 7), -1, 0), "n", "-1"),
    api("divergence unknown", lambda f: divergences.divergence("kl2", P, P), "kl2", "known"),
    api("divergence not a distribution", lambda f: divergences.divergence("kl", [0.5, 0.6], P), "sum to 1"),
    api("divergence NaN", lambda f: divergences.divergence("kl", [np.nan, 1.0], P), "NaN"),
    api("divergence negative", lambda f: divergences.divergence("js", [-0.5, 1.5], P), "nonnegative"),
    api("divergence shapes", lambda f: divergences.divergence("tv", [1.0], P), "last axis"),
    api("divergence_from_logs +inf", lambda f: divergences.divergence_from_logs("kl", [np.inf, 0.0], [0.0, 0.0]),
        "+inf"),
]


# ------------------------------------------------------------------------------------------- the checks
class Hang(BaseException):
    """A case ran past HANG seconds (BaseException, so that no handler in the code under test swallows it)."""


@contextlib.contextmanager
def deadline(seconds):
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def snapshot(*folders):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for d in folders for p in Path(d).rglob("*")
            if p.is_file()}


def argv_of(row: Row, files) -> list[str]:
    return shlex.split(row.run.format(**files))


@pytest.fixture
def as_unwritable(files, monkeypatch):
    """The read-only folder stays unwritable for a user who can write anywhere (root, where CI may run)."""
    if os.access(files["readonly"], os.W_OK):
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if str(p).startswith(files["readonly"])
                            else real(p, mode, *a, **k))


@pytest.mark.parametrize("row", CLI, ids=[r.id for r in CLI])
def test_the_command_line_refuses_with_a_plain_message(row, files, tmp_path, monkeypatch, capsys, as_unwritable):
    monkeypatch.chdir(tmp_path)  # default output paths (runs/…) land here, where nothing may appear
    before = snapshot(tmp_path, Path(files["ok"]).parent)
    start = time.perf_counter()
    with deadline(HANG):
        try:
            code = main(argv_of(row, files))
        except SystemExit as stop:  # argparse's errors
            code = stop.code
    elapsed = time.perf_counter() - start
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert code not in (0, None), f"accepted: {out}"
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    for phrase in row.says:
        assert phrase in errors[0], f"{phrase!r} not in: {errors[0]}"
    assert "allow_pickle" not in err and "unsafe" not in err
    assert elapsed < LIMIT, f"took {elapsed:.2f} s to refuse"
    assert snapshot(tmp_path, Path(files["ok"]).parent) == before, "a refused run wrote or changed a file"


@pytest.mark.parametrize("row", API, ids=[r.id for r in API])
def test_the_api_refuses_with_a_plain_message(row, files):
    start = time.perf_counter()
    with deadline(HANG), pytest.raises(row.raises) as refused:
        row.run(files)
    elapsed = time.perf_counter() - start
    message = str(refused.value)
    for phrase in row.says:
        assert phrase in message, f"{phrase!r} not in: {message}"
    assert "allow_pickle" not in message and "unsafe" not in message
    assert elapsed < LIMIT, f"took {elapsed:.2f} s to refuse"


def test_the_table_is_large_and_has_a_row_for_every_option_that_takes_a_value():
    """A new option (or a new command) needs rows here: the check lists the ones that have none."""
    from minialign.cli import build_parser

    assert len(CLI) + len(API) >= 150
    assert len({r.id for r in CLI}) == len(CLI) and len({r.id for r in API}) == len(API)
    options = list(options_of(build_parser()))
    words = [shlex.split(r.run) for r in CLI]
    uncovered = [f"{command} {flag}".strip() for command, flag, _ in options
                 if not any(" ".join(w).startswith(command) and any(t == flag or t.startswith(flag + "=") for t in w)
                            for w in words)]
    assert not uncovered, f"no bad-input row for: {', '.join(uncovered)}"
    unknown = [f"{c} {f}".strip() for c, flags in numeric_options().items() for f, kind in flags if kind is None]
    assert not unknown, f"no kind of bad numbers for: {', '.join(unknown)} (add its type to numeric_kind)"
    assert {"align dpo --prompts", "align grpo --device", "tour --device"} <= {
        f"{c} {f}" for c, f, _ in options}, "the parser lost an option the rows are derived for"


AS_PROCESSES = ["pretrain --steps=0", "sample --checkpoint {truncated}", "align rlhf --reward true --out {empty}",
                "align dpo --pairs {pairs_ties}", "align gdc --constraint female=1.5"]


def test_as_real_processes_only_the_message_reaches_the_terminal(files, tmp_path):
    rows = {r.id: r for r in CLI}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [(rows[argv], subprocess.Popen([sys.executable, "-m", "minialign", *argv_of(rows[argv], files)],
                                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True))
             for argv in AS_PROCESSES]
    for row, proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (row.id, out, err)
        assert "Traceback" not in err, err
        assert err.strip().splitlines()[-1].startswith("minialign"), err
        assert all(phrase in err for phrase in row.says), (row.id, err)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------- legal but degenerate
SOME_TIES = _pairs(GOOD_PAIRS + [("eve", "eve")])
DEGENERATE = [  # a legal command whose setting is degenerate → the phrases of its one warning
    ("align rlhf --reward true --batch-size 1", ("a batch of 1", "leave-one-out baseline", "--batch-size")),
    ("align rlhf --reward true --algo ppo --batch-size 1", ("leave-one-out baseline", "--batch-size")),
    ("align fdpg --target reward --reward true --batch-size 1", ("fdpg-js's leave-one-out baseline",)),
    ("align gdc --constraint contains:x --ebm-samples 200 --batch-size 4 --eval-samples 10",
     ("effective sample size of 3.0 of 200", "--ebm-samples")),
    ("align dpo --pairs {ties} --batch-size 2", ("1 of 7 pairs", "same name chosen and rejected")),
]
FINE = ["align rlhf --reward true --algo reinforce --batch-size 1", "align rlhf --reward true --batch-size 2",
        "align dpo --pairs {pairs} --batch-size 2"]


@pytest.mark.parametrize("argv, says", DEGENERATE, ids=[a for a, _ in DEGENERATE])
def test_a_degenerate_setting_is_warned_about_once_in_one_plain_line(argv, says, files, tmp_path, capsys):
    (tmp_path / "ties.csv").write_text(SOME_TIES)
    command = argv.format(ties=tmp_path / "ties.csv", **files)
    assert main(shlex.split(command) + ["--steps", "2", "--quiet", "--out", str(tmp_path / "run.npz")]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if line.strip()]
    assert len(warned) == 1 and warned[0].startswith("minialign: warning: "), err
    assert all(phrase in warned[0] for phrase in says), warned[0]


@pytest.mark.parametrize("argv", FINE)
def test_a_sound_setting_is_not_warned_about(argv, files, tmp_path, capsys):
    command = argv.format(**files)
    assert main(shlex.split(command) + ["--steps", "2", "--quiet", "--out", str(tmp_path / "run.npz")]) == 0
    assert capsys.readouterr().err == ""


def test_the_library_warns_about_a_batch_of_one_and_a_small_effective_sample():
    from minialign.ebm import fit_lambda_snis
    from minialign.trainers.common import train, trainable_copy

    policy = trainable_copy(ref())
    with pytest.warns(UserWarning, match="a batch of 1 sample leaves rlhf's leave-one-out baseline nothing"):
        train(_rlhf(), policy, TrainConfig(steps=1, batch_size=1), progress=False)
    phi = np.arange(40) % 2  # half the samples have the feature
    with pytest.warns(UserWarning, match=r"effective sample size of 4\.0 of 40 samples \(fewer than 10\)"):
        fit_lambda_snis(phi, np.arange(40) < 4, [0.5])  # four samples meet the pointwise constraint
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit_lambda_snis(phi, None, [0.5]).ess == pytest.approx(40)


# ------------------------------------------------------------------------------------------- the machine's failures
def test_the_hang_guard_stops_a_case_that_runs_forever():
    if threading.current_thread() is not threading.main_thread():
        pytest.fail("the guard needs the main thread; the table's time limit would not hold")
    start = time.perf_counter()
    with pytest.raises(Hang), deadline(0.2):
        while True:
            pass
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize("failure, says", [(MemoryError("Unable to allocate 96.0 GiB"), ("out of memory", "96.0 GiB")),
                                           (OSError(28, "No space left on device"), ("No space left on device",))])
def test_running_out_of_memory_or_disk_ends_in_one_line(failure, says, files, tmp_path, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(GPT, "generate", fail)
    monkeypatch.setattr("minialign.gpt.save", fail)
    assert main(["pretrain", "--steps", "2", "--batch-size", "4", "--n-layer", "1", "--n-embd", "8", "--n-head", "2",
                 "--quiet", "--out", str(tmp_path / "run.npz")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert all(phrase in err for phrase in says), err
