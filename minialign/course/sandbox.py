"""The grader's trust boundary: what enters from a student, and the process their code runs in.

**What enters.** Only the bodies of a manifest's units (``read_student_file``, ``splice``): a student's file is
read only when it is a regular file inside the tree (no symlink on the way, nothing but a file, at most
``MAX_FILE_BYTES``); each unit's body is cut out of it and spliced into the instructor's copy of the file, so
that the module's imports, its module-level code and every other function are the instructor's. Each body is
checked against the written policy (``policy.py``) before anything runs; a violation, a file that does not parse
or a unit that cannot be found gives that task 0 with the file, the line and the reason. A region unit's
function must be the handout's outside the region.

**The process** (``run``): pytest runs in its own session and process group, with limits on CPU time, address
space, file size and core files, and — when the grader runs as root, as on Gradescope — as an unprivileged user
(``$MINIALIGN_GRADER_USER``, default ``nobody``, also capped in processes) in a grading copy it cannot write.
Its stdout and stderr go to a file, never to a pipe a stray child could hold open. The only outcome channel is
a pipe the parent creates: the course plugin writes one JSON line per test phase to it. The parent reads it
until the child exits or the wall-clock limit passes, then kills the whole group, then every process that still
carries the run's token in its environment (a child that left the group with ``setsid``), and only then returns.
What the parent makes of the events (``grade.py``): expected tests come from a collection run in the
instructor's copy, every outcome starts as "not run", and a test is passed only when its three phases reported
and none failed; whatever did not report fails with the run's end named (exit status, signal, timeout).

Why it holds: a student's body can name only what ``policy.py`` allows — no module that reaches the system, no
frame, no file, no pytest object, no attribute assignment on a module-level object — so it can neither write to
the pipe nor patch the harness that does; and should a body escape the policy, its process still cannot outlive
the run, write the results (the parent does, after every child is dead), or touch the grading copy when run
unprivileged. The limits (README, "The grader's policy and its limits"): one process runs all of a task's
tests, so code that escaped the policy could forge that task's outcomes; a container or per-test processes
with seccomp would close that.
"""
from __future__ import annotations

import ast
import functools
import json
import os
import resource
import secrets
import select
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import policy
from .cut import _find_function, _function_end, locate, split_spec
from .manifest import HANDOUT, CourseError, Task

MAX_FILE_BYTES = 2_000_000
MAX_CHANNEL_BYTES = 64 << 20
CHANNEL_ENV = "MINIALIGN_COURSE_FD"
TOKEN_ENV = "MINIALIGN_SANDBOX_TOKEN"
DEFAULT_LIMITS = {"memory_bytes": 6 << 30, "file_bytes": 64 << 20, "processes": 2048}


# ============================================================================ what enters from a student


def read_student_file(student: Path, rel: str) -> str:
    """The text of ``rel`` in a student tree; a symlink anywhere on the way, anything but a regular file, a file
    too large or not UTF-8 is refused (:class:`CourseError`, naming it)."""
    student = Path(student)
    here = student
    for part in Path(rel).parts:
        here = here / part
        try:
            mode = os.lstat(here).st_mode
        except FileNotFoundError:
            raise CourseError(f"the student tree {student} has no {rel}") from None
        if stat.S_ISLNK(mode):
            raise CourseError(f"{rel} in the student tree is a symbolic link ({here.relative_to(student)}); "
                              "hand in the file itself")
    if not stat.S_ISREG(mode):
        raise CourseError(f"{rel} in the student tree is not a regular file")
    if os.lstat(here).st_size > MAX_FILE_BYTES:
        raise CourseError(f"{rel} in the student tree is larger than {MAX_FILE_BYTES} bytes")
    fd = os.open(here, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CourseError(f"{rel} in the student tree is not UTF-8 text (byte {e.start})") from None


@dataclass
class Spliced:
    """The instructor's file with one task's unit bodies from the student, or why it could not be made."""
    source: str
    problems: list = field(default_factory=list)     # strings naming file, line and reason


def _student_body(slines, stree, spec, task, ilines, ifn, icut, rel):
    """The student's lines for one unit: a function's body after its docstring, or a region's lines (the
    function as handed out outside them). Returns (lines, first line number in the student's file) or raises
    CourseError with the reason."""
    _, qualname, region = split_spec(spec)
    try:
        sfn = _find_function(stree, qualname, spec)
    except CourseError:
        raise CourseError(f"{rel} has no function {qualname} (unit {spec})") from None
    if region is None:
        scut = locate("".join(slines), f"{rel}::{qualname}", task)
        return slines[scut.start:scut.stop], scut.start + 1
    lo, hi = min([ifn.lineno] + [d.lineno for d in ifn.decorator_list]) - 1, _function_end(ilines, ifn)
    prefix, suffix = ilines[lo:icut.start], ilines[icut.stop:hi]
    slo = min([sfn.lineno] + [d.lineno for d in sfn.decorator_list]) - 1
    whole = slines[slo:_function_end(slines, sfn)]
    same = [a.rstrip() for a in whole[:len(prefix)]] == [b.rstrip() for b in prefix]
    tail = whole[len(whole) - len(suffix):] if suffix else []
    if not same or [a.rstrip() for a in tail] != [b.rstrip() for b in suffix] or len(whole) < len(prefix) + len(suffix):
        raise CourseError(f"{rel}: {qualname} differs from the handout's outside the lines of region {region!r} "
                          f"(only the stub's place is yours to write)")
    return whole[len(prefix):len(whole) - len(suffix)], slo + len(prefix) + 1


@functools.lru_cache(maxsize=8)
def _privates(root: str) -> frozenset:
    files = [*Path(root, "minialign").rglob("*.py"), *Path(root, "kernels").rglob("*.py")]
    return policy.library_privates(f.read_text(encoding="utf-8") for f in sorted(files) if f.is_file())


def splice(rel: str, instructor: str, student: str, specs, task: Task, package: str, check: bool = True,
           root: Path | None = None) -> Spliced:
    """``instructor`` (the file as in the repository) with the bodies of ``specs`` (units of ``task`` in file
    ``rel``) taken from ``student``, each checked against the policy (unless ``check`` is false: the release
    check's own trees)."""
    try:
        stree = ast.parse(student, filename=rel)
    except SyntaxError as e:
        return Spliced(instructor, [f"SyntaxError in {rel}, line {e.lineno}: {e.msg}"
                                    + (f": {e.text.strip()}" if e.text else "")])
    itree = ast.parse(instructor, filename=rel)
    ilines, slines = instructor.splitlines(keepends=True), student.splitlines(keepends=True)
    pieces, problems = [], []
    for spec in specs:
        _, qualname, _ = split_spec(spec)
        icut = locate(instructor, spec, task)
        ifn = _find_function(itree, qualname, spec)
        try:
            body, first = _student_body(slines, stree, spec, task, ilines, ifn, icut, rel)
        except CourseError as e:
            problems.append(str(e))
            continue
        if not any(line.strip() for line in body):
            problems.append(f"{rel}: the body of {qualname} is empty")
            continue
        body = [line if line.endswith("\n") else line + "\n" for line in body]
        pieces.append((icut, body, first, spec))
    if problems:
        return Spliced(instructor, problems)
    lines = list(ilines)
    for icut, body, _, _ in sorted(pieces, key=lambda p: p[0].start, reverse=True):
        lines[icut.start:icut.stop] = body
    source = "".join(lines)
    try:
        tree = ast.parse(source, filename=rel)
    except SyntaxError as e:
        return Spliced(instructor, [f"{rel}: a unit's lines do not fit their place in the function (indentation?): "
                                    f"{e.msg}"])
    if check:
        module, values = policy.module_names(tree, package), policy.module_values(tree)
        privates = _privates(str(root)) if root is not None else frozenset()
        stubs = frozenset(f"Task {task.id}: {spec} — {task.title}; see {HANDOUT}" for spec in task.units)
        for icut, body, first, spec in pieces:
            fn = _find_function(tree, split_spec(spec)[1], spec)
            try:
                statements = ast.parse(textwrap.dedent("".join(body))).body
            except SyntaxError as e:
                problems.append(f"{rel}, line {first + (e.lineno or 1) - 1}: the body of {split_spec(spec)[1]} "
                                f"does not parse on its own: {e.msg}")
                continue
            problems += [f"{rel}, {v}" for v in policy.check_body(statements, fn, module, first - 1, values, privates,
                                                                     stubs)]
    return Spliced(source if not problems else instructor, problems)


def package_of(rel: str) -> str:
    """The package a repository file's relative imports resolve in: minialign/trainers/x.py → minialign.trainers;
    kernels/x.py → minialign.kernels."""
    parts = list(Path(rel).with_suffix("").parts[:-1])
    if parts and parts[0] == "kernels":
        parts = ["minialign", *parts]
    return ".".join(parts)


# ============================================================================ the process


@dataclass
class Outcome:
    """What came back from one sandboxed run: the plugin's events and how the run ended."""
    events: list
    end: str                # "exit status 0", "killed by signal SIGKILL", "timed out after 60 s"
    returncode: int | None
    timed_out: bool
    seconds: float
    log: str                # the last lines of stdout and stderr (never shown for a hidden pass)
    stray: int = 0          # processes that had left the group and were killed afterwards


@functools.lru_cache(maxsize=None)
def grader_identity() -> tuple:
    """(user, who): ``user`` the (uid, gid) to run students' code as, or None to run it as the grader itself;
    ``who`` says in words whom the tests run as and, when the grader is root and stays root, why.

    As root (Gradescope) the code runs as ``$MINIALIGN_GRADER_USER`` (default ``nobody``; empty: stay root),
    provided that user can run this Python and import its packages (not so for an interpreter under /root, say:
    then the run stays root, and only the policy and the process limits hold)."""
    import pwd

    if os.geteuid() != 0:
        return None, f"{pwd.getpwuid(os.geteuid()).pw_name} (the grader's own user: it is not root)"
    name = os.environ.get("MINIALIGN_GRADER_USER", "nobody")
    if not name:
        return None, "root ($MINIALIGN_GRADER_USER is empty)"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None, f"root (there is no user {name!r} to run students' code as)"
    if entry.pw_uid == 0:
        return None, f"root ($MINIALIGN_GRADER_USER={name} is root)"
    user = (entry.pw_uid, entry.pw_gid)

    def drop():
        os.setgroups([])
        os.setgid(user[1])
        os.setuid(user[0])

    try:
        probe = subprocess.run([sys.executable, "-c", "import numpy, pytest, hypothesis"], cwd="/",
                               capture_output=True, timeout=120, preexec_fn=drop, env={"PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"root ({name} could not start {sys.executable}: {e})"
    if probe.returncode != 0:
        why = (probe.stderr.decode(errors="replace").strip().splitlines() or [f"exit status {probe.returncode}"])[-1]
        return None, f"root ({name} cannot run {sys.executable} with numpy, pytest and hypothesis: {why})"
    return user, f"{name} (uid {user[0]}, unprivileged)"


def lock_tree(tree: Path, user) -> None:
    """Make a grading copy read-only to the process under test: owned by root and not writable when it runs
    unprivileged; otherwise files 0444 and folders 0555 (the owner could undo that, but only with calls the
    policy forbids)."""
    for dirpath, dirnames, filenames in os.walk(tree):
        for f in filenames:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                os.chmod(p, 0o444)
        os.chmod(dirpath, 0o555)


def unlock_tree(tree: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(tree):
        os.chmod(dirpath, 0o755)


def _limits(cpu_seconds, limits, user):
    def apply():
        os.setsid()
        resource.setrlimit(resource.RLIMIT_CPU, (int(cpu_seconds), int(cpu_seconds) + 5))
        resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"], limits["file_bytes"]))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if user is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"], limits["processes"]))
            os.setgroups([])
            os.setgid(user[1])
            os.setuid(user[0])
    return apply


def _carrying(token: str) -> list:
    """Pids of the processes whose environment holds the run's token."""
    needle = f"{TOKEN_ENV}={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def kill_strays(token: str, rounds: int = 200) -> int:
    """Kill every process carrying ``token`` until none is left (a fork bomb re-forks while it is killed)."""
    killed, quiet = set(), 0
    for _ in range(rounds):
        pids = _carrying(token)
        if not pids:
            quiet += 1
            if quiet >= 3:
                break
            time.sleep(0.02)
            continue
        quiet = 0
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
    return len(killed)


def run(cmd, cwd: Path, env: dict, timeout: float, limits=None, user=None, scratch: Path | None = None) -> Outcome:
    """Run ``cmd`` sandboxed (see the module's docstring) and collect the events written to the channel."""
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    token = secrets.token_hex(16)
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    env = {**env, CHANNEL_ENV: str(write_end), TOKEN_ENV: token}
    with tempfile.TemporaryFile() as log:
        return _run(cmd, cwd, env, timeout, limits, user, token, read_end, write_end, log)


def _run(cmd, cwd, env, timeout, limits, user, token, read_end, write_end, log) -> Outcome:
    t0 = time.monotonic()
    deadline = t0 + timeout
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                pass_fds=(write_end,), preexec_fn=_limits(timeout + 5, limits, user), close_fds=True)
    finally:
        os.close(write_end)
    buffer, timed_out = b"", False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([read_end], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(read_end, 1 << 16)
                if not chunk:           # every writer closed: the run is over
                    break
                buffer += chunk
                if len(buffer) > MAX_CHANNEL_BYTES:   # a flood is no report: stop reading, end the run
                    break
            if proc.poll() is not None:  # the run is over, whatever a stray child still holds open
                break
    finally:
        _kill_group(proc)
        returncode = proc.wait()
        # a stray child may still hold the pipe: read what is there for a moment, no longer
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            ready, _, _ = select.select([read_end], [], [], 0.05)
            if not ready:
                break
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                break
            buffer += chunk
        os.close(read_end)
        stray = kill_strays(token)
    seconds = time.monotonic() - t0
    events = []
    for line in buffer.split(b"\n"):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    log.seek(0, os.SEEK_END)
    log.seek(max(0, log.tell() - 20000))
    text = log.read().decode("utf-8", "replace")
    if timed_out:
        end = f"timed out after {timeout:g} s"
    elif returncode < 0:
        end = f"killed by signal {signal.Signals(-returncode).name}"
        if -returncode == signal.SIGXCPU or -returncode == signal.SIGKILL and time.monotonic() - t0 > timeout:
            end += " (CPU time limit)"
    else:
        end = f"exit status {returncode}"
    return Outcome(events, end, returncode, timed_out, seconds, text, stray)


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
