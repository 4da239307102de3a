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
        if key.strip() in out:
            raise argparse.ArgumentTypeError(f"{key.strip()} is given twice in {text!r}; give each size once")
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
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a directory; expected a {suffix} file")
        if not path.is_file():
            raise argparse.ArgumentTypeError(f"{text} is not a regular file (a device, a pipe or a socket); expected a "
                                             f"{suffix} file")
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


# ------------------------------------------------------------------------------------------- budgets
ENGINE_FLOPS = 1e10  # operations per second of the NumPy engine on one core: pretrain steps of 0.1-3 M parameters
#                     measured 9-26 GFLOP/s on the development machine, so estimates err towards longer
TIME_LIMIT = 3600.0  # seconds a run may be estimated to take before it is refused (unless --i-know)
LONG_RUN = 600.0  # beyond this estimate a run says, before it starts, about how long it will take
I_KNOW = "--i-know"


def memory_limit() -> float:
    """Bytes a run may use: 80 % of the memory this machine has available now (8 GB where that is unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return 0.8 * int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return 0.4 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8e9


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.0f} MB"


def _duration(s: float) -> str:
    return f"{s / 3600:,.1f} h" if s >= 3600 else f"{s / 60:,.0f} min" if s >= 60 else f"{s:.0f} s"


class OverBudget(ValueError):
    """A run that would not fit in this machine's memory or would take hours, refused before any work."""


def gpt_activation_bytes(n_layer: int, n_head: int, n_embd: int, block_size: int, vocab_size: int = 27) -> float:
    """Bytes one sequence keeps for the backward pass (float32): per layer about 64·d values a position (a measured
    bound: attention, MLP and LayerNorm inputs and outputs) and H·T attention weights, and the logits."""
    return 4.0 * block_size * (n_layer * (64 * n_embd + 3 * n_head * block_size) + 4 * vocab_size)


def check_budget(what: str, seconds: float, memory: float, lower: str, i_know: bool = False) -> None:
    """Refuse (:class:`OverBudget`) work estimated to take more than :data:`TIME_LIMIT` or more memory than
    :func:`memory_limit` allows, with a line that gives the estimate, the limit, what to lower and ``--i-know``."""
    limit = memory_limit()
    if memory > limit and not i_know:
        raise OverBudget(f"{what} needs about {_gb(memory)} of memory, and this machine has {_gb(limit)} to give: "
                         f"lower {lower}, or add {I_KNOW} to try anyway")
    if seconds > TIME_LIMIT and not i_know:
        raise OverBudget(f"{what} would take about {_duration(seconds)} on this engine (at ~{ENGINE_FLOPS / 1e9:g} "
                         f"GFLOP/s; the limit without {I_KNOW} is {_duration(TIME_LIMIT)}): lower {lower}, or add "
                         f"{I_KNOW} to run it anyway")
    if seconds > LONG_RUN:  # it runs: say so before it starts
        import sys

        print(f"minialign: {what} will take about {_duration(seconds)} by the size estimate (at ~"
              f"{ENGINE_FLOPS / 1e9:g} GFLOP/s)", file=sys.stderr)


def gpt_flops(cfg, sequences: float, passes: float) -> float:
    """Operations of ``passes`` passes over ``sequences`` sequences of a GPT of config ``cfg`` (2 per weight and
    token forward; a training step is 6: forward and backward)."""
    params = gpt_parameters(cfg.n_layer, cfg.n_embd, cfg.block_size, cfg.vocab_size)
    return passes * params * sequences * cfg.block_size


def generation_bytes(cfg, n: float) -> float:
    """Peak bytes of sampling (or scoring without gradients) ``n`` sequences at once: the KV cache, one layer's
    values and the logits, float32."""
    return 4.0 * n * cfg.block_size * (2 * cfg.n_layer * cfg.n_embd + 16 * cfg.n_embd + 4 * cfg.vocab_size)


def train_bytes(cfg, batch: float) -> float:
    """Bytes of a training step on ``batch`` sequences: weights, gradients and AdamW's moments, and activations."""
    params = gpt_parameters(cfg.n_layer, cfg.n_embd, cfg.block_size, cfg.vocab_size)
    return 16.0 * params + batch * gpt_activation_bytes(cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size,
                                                        cfg.vocab_size)


def shape_nxv(text) -> str:
    """A logits shape ``NxV`` (rows × vocabulary, positive whole numbers), e.g. 4096x32000."""
    n, sep, v = str(text).lower().partition("x")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected a shape NxV such as 4096x32000; got {text!r}")
    try:
        rows, vocab = int(n), int(v)
    except ValueError:
        rows = vocab = 0
    if not (1 <= rows <= 1 << 24 and 1 <= vocab <= 1 << 24):
        raise argparse.ArgumentTypeError(f"expected a shape NxV of whole numbers from 1 to {1 << 24:,}; got {text!r}")
    return f"{rows}x{vocab}"


# ------------------------------------------------------------------------------------------- help
def with_default(text: str, default) -> str:
    """``text`` with its default at the end as "(default: X)", wherever and however the text wrote it."""
    import re

    said = re.search(r"\s*\(default:? ([^()]*(?:\([^()]*\)[^()]*)*)\)", text)
    if said:
        text = text[:said.start()] + text[said.end():]
    else:
        said = re.search(r"[;,]\s*default:? ([^()]*?)(\)|$)", text)
        if said:
            text = text[:said.start()] + said.group(2) + text[said.end():]
    if said:
        phrase = said.group(1).strip()
    elif default is None or default is False or default == argparse.SUPPRESS or default in ([], {}):
        return text
    else:
        phrase = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
    text = re.sub(r"\s+([;,.])", r"\1", text).strip()
    return f"{text} (default: {phrase})"
