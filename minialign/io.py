"""Checkpoints as ``.npz``: written atomically (a temporary file, then a rename), read without unpickling."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
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
    appears whole or not at all, and an interrupted write leaves any earlier file intact.

    The temporary file's name carries this process's id (``PATH.PID.XXXX.tmp``): each writer has its own, and
    the only ones removed here are those whose writer is gone (killed during a write). An error names ``path``,
    never the temporary file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.{os.getpid()}.", suffix=".tmp")
    except OSError as e:
        raise _naming(path, e) from None
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _naming(path, e) from None
        raise
    return path


def _naming(path, e: OSError) -> OSError:
    """``e`` said of ``path`` (the user's), never of the temporary file beside it; its errno is kept."""
    error = OSError(f"cannot write {path}: {e.strerror or e}")
    error.errno = e.errno
    return error


def _remove_orphans(path: Path) -> None:
    """Remove the temporary files of ``path`` left by writers that no longer run (never a live writer's)."""
    from .lock import pid_alive

    for stale in path.parent.glob(path.name + ".*.tmp"):
        pid = stale.name[len(path.name) + 1:].split(".", 1)[0]
        if not pid.isdigit() or (int(pid) != os.getpid() and not pid_alive(int(pid))):  # no pid: an older version's
            stale.unlink(missing_ok=True)


class NotACheckpoint(ValueError):
    """The file exists but is not a checkpoint that :func:`save` wrote."""


def load(path) -> dict:
    """Read a checkpoint written by :func:`save` back into a nested dict (never unpickling anything).

    A missing path is a FileNotFoundError; a directory, an empty, truncated or corrupted file, or a file of
    another kind is a :class:`NotACheckpoint` that names the path and what was found.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        raise NotACheckpoint(f"{path} is a directory, not a minialign checkpoint (an .npz file)")
    try:
        return _read(path)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        with open(path, "rb") as fh:
            head = fh.read(6)
        if not head:
            why = "the file is empty"
        elif head.startswith(b"\x93NUMPY"):
            why = "it holds a single NumPy array, not an .npz archive"
        elif not head.startswith(b"PK"):
            why = "it is not an .npz archive"
        elif not zipfile.is_zipfile(path):
            why = "it is truncated: an .npz archive cut short"
        elif "pickle" in str(e):
            why = "it holds Python objects, which minialign never loads"
        else:
            why = f"it is damaged: {type(e).__name__}"
        raise NotACheckpoint(f"{path} is not a minialign checkpoint ({why})") from None


def _read(path) -> dict:
    out: dict = {}
    with open(path, "rb") as fh:  # our handle, closed even when NumPy fails half-way through a damaged file
        data = np.load(fh, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an archive")
        with data:
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


def config_from(path, text, config_class):
    """A model's configuration (a dataclass) from the JSON a checkpoint stores, or a :class:`NotACheckpoint`
    naming the path and what is wrong with it."""
    import dataclasses

    try:
        values = json.loads(str(text))
    except ValueError:
        values = None
    if not isinstance(values, dict):
        raise NotACheckpoint(f"{path} is not a minialign checkpoint (its model configuration is not readable: "
                             f"{str(text)[:40]!r})")
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise NotACheckpoint(f"{path} is not a minialign checkpoint of this version (its model configuration has "
                             f"settings it does not know: {', '.join(unknown)})")
    try:
        return config_class(**values)
    except (TypeError, ValueError) as e:
        raise NotACheckpoint(f"{path} is not a usable checkpoint (its model configuration is invalid: {e})") from None


def weights_into(model, state: dict, path):
    """Load ``state['weights']`` into ``model``; a missing, mismatched or non-finite entry is a
    :class:`NotACheckpoint` that names the path and the parameter."""
    weights = state.get("weights")
    if not isinstance(weights, dict):
        raise NotACheckpoint(f"{path} is not a minialign checkpoint (it holds no weights)")
    try:
        return model.load_state_dict(weights)
    except ValueError as e:
        raise NotACheckpoint(f"{path} is not a usable checkpoint: {e}") from None


KINDS = {"gpt": "a GPT (language model)", "reward_model": "a reward model", "gender-classifier": "a gender classifier"}


def kind_error(path, state: dict, what: str):
    """A :class:`NotACheckpoint` for a checkpoint that does not hold ``what`` (a model of another kind, or none)."""
    if "weights" not in state:
        return NotACheckpoint(f"{path} is not {what}: it holds {', '.join(sorted(state)) or 'nothing'}, not a "
                              "model's weights")
    kind = state.get("kind", "gpt")
    return NotACheckpoint(f"{path} is not {what}: it holds {KINDS.get(str(kind), repr(kind))}")


def fingerprint(model) -> str:
    """A short hash of a model's weights (names, shapes, dtypes and bytes): the identity of a base model."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(f"{name}{value.shape}{value.dtype}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()[:16]
