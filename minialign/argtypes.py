"""Argument value types: each turns the text of one command-line option into its value or refuses it.

Every message reads "expected …; got '…'" (argparse adds "argument --flag:"), so it names the flag, the value it
got and what it expects. The main command line (``cli.py``), the studies (``experiments/``) and the benchmark
parsers share these types, so one option is checked the same way wherever it is given.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from . import divergences

SEED_LIMIT = 2**32  # seeds are stored in checkpoints as 64-bit integers; 2³² of them are plenty


def _parse(text, kind, ok, expected: str):
    try:
        value = kind(text)
    except (TypeError, ValueError, OverflowError):
        value = None
    if value is None or (kind is float and not math.isfinite(value)) or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}")
    return value


def count(minimum: int = 1, maximum: int | None = None, why: str = ""):
    """A whole number in [minimum, maximum] (``why`` says what the bounds are for)."""
    bounds = f"≥ {minimum:,}" if maximum is None else f"from {minimum:,} to {maximum:,}"
    expected = f"a whole number {bounds}" + (f" ({why})" if why else "")

    def check(text) -> int:
        return _parse(text, int, lambda v: v >= minimum and (maximum is None or v <= maximum), expected)
    check.__name__ = "whole number"
    return check


positive_int = count(1)
nonnegative_int = count(0)
seed = count(0, SEED_LIMIT - 1)


def positive_float(text) -> float:
    return _parse(text, float, lambda v: v > 0, "a finite number > 0")


def learning_rate(text) -> float:
    """A step size in (0, 1]: AdamW moves every weight by about lr per step, and beyond 1 a run only diverges."""
    return _parse(text, float, lambda v: 0 < v <= 1, "a learning rate, a number in (0, 1]")


group_size = count(2, why="a group of one response has no standard deviation and no leave-one-out baseline")
group_size.__doc__ = "Responses per prompt for a group-normalised method: at least 2."


def clip_range(text) -> float:
    """PPO's clip ε: a number in (0, 1)."""
    return _parse(text, float, lambda v: 0 < v < 1, "a number in (0, 1)")


def unit_interval(text) -> float:
    """A number in [0, 1) (a dropout probability)."""
    return _parse(text, float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def f_divergence(text) -> str:
    try:
        return divergences.get(text).name
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


GPT_SIZE_FIELDS = ("n_layer", "n_head", "n_embd")


def gpt_size(text) -> dict:
    """A model size as ``n_layer=2,n_head=2,n_embd=32`` (any of the three; positive whole numbers, n_embd a
    multiple of n_head when both are given)."""
    out = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in GPT_SIZE_FIELDS:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE pairs with KEY in {', '.join(GPT_SIZE_FIELDS)}, "
                                             f"separated by commas; got {part!r}")
        out[key.strip()] = positive_int(value.strip())
    if "n_embd" in out and "n_head" in out and out["n_embd"] % out["n_head"]:
        raise argparse.ArgumentTypeError(f"n_embd ({out['n_embd']}) must be a multiple of n_head ({out['n_head']})")
    return out


def constraint(text) -> str:
    from .ebm import parse_constraint

    try:
        parse_constraint(text)
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text.strip()


def input_file(suffix: str):
    """An existing regular file (with ``suffix``, e.g. ".npz" or ".csv")."""
    def check(text) -> Path:
        path = Path(text)
        if not path.exists():
            raise argparse.ArgumentTypeError(f"no file at {text}")
        if not path.is_file():
            raise argparse.ArgumentTypeError(f"{text} is a directory; expected a {suffix} file")
        if path.suffix != suffix:
            raise argparse.ArgumentTypeError(f"expected a {suffix} file; got {text}")
        return path
    check.__name__ = f"{suffix[1:]} file"
    return check


def pairs_file(text) -> Path:
    """An existing preferences CSV that :func:`~minialign.rewards.load_pairs` reads (its names' lengths are
    checked against the base model later, when it is loaded)."""
    from .rewards import load_pairs

    path = input_file(".csv")(text)
    try:
        load_pairs(path, block_size=None)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return path


def output_file(suffix: str):
    """A path where a ``suffix`` file can be written: not a directory, under a folder that is one (or can be made)."""
    def check(text) -> Path:
        path = Path(text)
        if path.suffix != suffix:
            raise argparse.ArgumentTypeError(f"expected a path ending in {suffix}; got {text}")
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a directory; expected a {suffix} file path")
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise argparse.ArgumentTypeError(f"cannot write {text}: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK):
            raise argparse.ArgumentTypeError(f"cannot write {text}: the folder {parent} is not writable")
        return path
    check.__name__ = f"{suffix[1:]} output path"
    return check


def output_dir(text) -> Path:
    """A folder to write into (made if missing): not a file, and under a writable folder."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; expected a folder")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write into {text}: {parent} is not a writable folder")
    return path


PARAMETER_LIMIT = 100_000_000  # weights, gradients and AdamW's two moments: 1.6 GB of float32 at this size


def gpt_parameters(n_layer: int, n_embd: int, block_size: int, vocab_size: int = 27) -> int:
    """The number of weights of a GPT of this shape (embeddings, blocks and the final LayerNorm)."""
    per_block = 12 * n_embd * n_embd + 13 * n_embd
    return (vocab_size + block_size) * n_embd + n_layer * per_block + 2 * n_embd
