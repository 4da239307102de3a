"""One writer per checkpoint: a lock file beside the output path, held for as long as a run writes there.

``PATH.lock`` holds the owner's process id and command. It is locked with an advisory ``fcntl.flock``, which the
operating system releases when the owner exits however it exits (kill -9 included), so a lock left by a dead run
is never mistaken for a live one; the file is removed when the lock is released. Where ``fcntl`` does not exist
(Windows), the file is created with ``O_EXCL`` and a lock whose process is gone is taken over.

A second run on the same path is refused at once with :class:`Locked`, which names the running process. Locks are
re-entrant within a process: the command line takes the lock before any work, and the training loop it calls
takes it again without conflict.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["Locked", "hold", "lock_path", "pid_alive"]

_HELD: dict[str, list] = {}  # resolved path → [file descriptor, depth]


class Locked(OSError):
    """Another running process writes the same checkpoint."""


def lock_path(path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".lock")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one we may not signal exists too)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _owner_text() -> str:
    """The owner's pid and command line, as a user would recognise it (``minialign align rlhf …``)."""
    argv = list(sys.argv) or ["python"]
    argv[0] = "minialign" if argv[0].endswith(("minialign", "__main__.py")) else Path(argv[0]).name
    command = " ".join(argv)
    return f"{os.getpid()} {command if len(command) <= 80 else command[:77] + '...'}\n"


def _describe(lock: Path) -> str:
    try:
        pid, _, command = lock.read_text(encoding="utf-8", errors="replace").strip().partition(" ")
    except OSError:
        return "another process"
    return f"process {pid}" + (f" ({command.strip()})" if command.strip() else "") if pid.isdigit() else \
        "another process"


def _refusal(path, lock: Path) -> Locked:
    return Locked(f"{path} is being written by {_describe(lock)}, which is still running: wait for it to finish, "
                  "or choose another --out")


def _acquire_flock(path, lock: Path) -> int:
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refusal(path, lock) from None
        except OSError:  # a file system without flock: the lock cannot be had, and the run goes on without it
            os.close(fd)
            return -1
        try:  # the file may have been released and removed between our open and our lock: then lock the new one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, _owner_text().encode())
            return fd
        os.close(fd)


def _acquire_excl(path, lock: Path) -> int:  # pragma: no cover - Windows
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            text = lock.read_text(errors="replace").split(" ", 1)[0]
            if text.isdigit() and pid_alive(int(text)):
                raise _refusal(path, lock) from None
            lock.unlink(missing_ok=True)  # left by a run that is gone
            continue
        os.write(fd, _owner_text().encode())
        return fd
    raise _refusal(path, lock)


def acquire(path) -> None:
    """Take the lock of ``path`` (re-entrant within a process), or raise :class:`Locked` naming its owner."""
    path = Path(path)
    key = str(path.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return
    lock = lock_path(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire_flock(path, lock) if fcntl is not None else _acquire_excl(path, lock)
    except Locked:
        raise
    except OSError as e:  # the folder cannot hold a new file: say so of the user's path, not of the lock's
        error = OSError(f"cannot write {path}: no file can be made in {lock.parent} ({e.strerror or e})")
        error.errno = e.errno
        raise error from None
    _HELD[key] = [fd, 1, lock]


def release(path) -> None:
    key = str(Path(path).resolve())
    entry = _HELD.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _HELD[key]
    fd, _, lock = entry
    if fd < 0:
        return
    try:
        lock.unlink(missing_ok=True)  # while still locked: a newcomer that opened it sees another inode and retries
    finally:
        os.close(fd)


@contextmanager
def hold(path):
    """Hold the lock of ``path`` inside the block (nothing when ``path`` is None)."""
    if path is None:
        yield
        return
    acquire(path)
    try:
        yield
    finally:
        release(path)


def release_all() -> None:
    """Release every lock this process holds (the command line, when a command ends however it ends)."""
    for key in list(_HELD):
        _HELD[key][1] = 1
        release(key)
