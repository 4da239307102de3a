"""Checkpoints as ``.npz``: written atomically (a temporary file, then a rename), read without unpickling."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

_SEP = "/"


def _flatten(state, prefix=""):
    flat = {}
    for key, value in state.items():
        if not isinstance(key, str) or _SEP in key:
            raise ValueError(f"checkpoint keys must be strings without '{_SEP}'; got {key!r}")
        name = prefix + key
        if isinstance(value, dict):
            flat.update(_flatten(value, name + _SEP))
        elif isinstance(value, str):
            flat[name] = np.array(value)
        elif isinstance(value, (bool, int, float, np.number)):
            flat[name] = np.array(value)
        elif isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError(f"checkpoint entry {name!r} is an object array, which .npz could only pickle")
            flat[name] = value
        elif hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
            flat[name] = value.detach().cpu().numpy()
        else:
            raise TypeError(f"checkpoint entry {name!r} has type {type(value).__name__}; "
                            "expected an array, a number, a string or a dict of those")
    return flat


def save(path, state: dict) -> Path:
    """Write ``state`` (a possibly nested dict of arrays, numbers and strings) to ``path`` as ``.npz``.

    The file appears whole or not at all: data goes to a temporary file in the same folder, which is then
    renamed over ``path``. Interrupting a save leaves any earlier checkpoint intact.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"checkpoints are .npz files; got {path.name!r}")
    flat = _flatten(state)
    return atomic_write(path, lambda fh: np.savez(fh, **flat))


def atomic_write(path, write, binary: bool = True) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, then rename it over ``path``: the file
    appears whole or not at all, and an interrupted write leaves any earlier file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load(path) -> dict:
    """Read a checkpoint written by :func:`save` back into a nested dict (never unpickling anything)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    out: dict = {}
    with np.load(path, allow_pickle=False) as data:
        for name in data.files:
            value = data[name]
            if value.ndim == 0:
                value = value.item() if value.dtype.kind in "biufU" else value
            node = out
            *parents, leaf = name.split(_SEP)
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
    return out


def resume(path, model, optimizer):
    """If a checkpoint exists at ``path``, load its weights and optimizer state into ``model`` and
    ``optimizer`` and return the whole state (step, history, …); otherwise return None."""
    if path is None or not Path(path).exists():
        return None
    state = load(path)
    model.load_state_dict(state["weights"])
    optimizer.load_state_dict(state["optim"])
    return state


def dumps_config(config) -> str:
    """A dataclass config as a JSON string, for storing beside the weights."""
    from dataclasses import asdict

    return json.dumps(asdict(config), sort_keys=True)
