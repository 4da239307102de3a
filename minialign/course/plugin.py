"""The course grader's pytest plugin: for every test phase it writes one JSON line — the test's name, its task
markers, the phase's outcome and, for a failure, the exception's type, the first line of its message (with a
property test's falsifying example) and the course stub whose ``NotImplementedError`` caused it — to the pipe
the grader passed as file descriptor ``$MINIALIGN_COURSE_FD`` (``sandbox.py``). A collection run
(``--collect-only``) writes the selected tests instead. The variable is removed from the environment as the
plugin loads, before any code under test is imported.

It imports nothing from minialign: the grader loads it from the instructor's copy before the tree under test
is on the path. A record never holds a test's source; the grader shows a hidden test's name and pass/fail only.
"""
import json
import os
import re
import sys

import pytest

TASK_MARKER = re.compile(r"^task(\d+)_(\d+)$")
# A stub raises NotImplementedError("Task 5.2: minialign/x.py::Name#region — title; see ASSIGNMENT.md").
STUB_MESSAGE = re.compile(r"^Task (\d+\.\d+): (\S+)")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # a notebook kernel's traceback comes coloured
STUB_IN_TEXT = re.compile(r"NotImplementedError\W{1,3}Task (\d+\.\d+): ([^\s'\"]+)")

_seen = set()
_fd = os.environ.pop("MINIALIGN_COURSE_FD", None)
_CHANNEL = int(_fd) if _fd and _fd.isdigit() else None


def _send(event):
    """One JSON line on the grader's pipe (nothing when run without the grader)."""
    if _CHANNEL is None:
        return
    data = (json.dumps(event) + "\n").encode("utf-8")
    while data:
        data = data[os.write(_CHANNEL, data):]


def _first_stub_in_chain(exc):
    """The earliest raised stub along an exception's chain (``__cause__``/``__context__``): the stub the
    test reached first. Exception groups (several failing examples) contribute one per member."""
    found, chain, seen = set(), [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        for member in getattr(exc, "exceptions", ()) or ():
            if isinstance(member, BaseException):
                found |= _first_stub_in_chain(member)
        exc = exc.__cause__ or exc.__context__
    for e in reversed(chain):
        m = STUB_MESSAGE.match(str(e)) if isinstance(e, NotImplementedError) else None
        if m:
            found.add(f"{m.group(1)} {m.group(2)}")
            break
    return found


def _messages(exc):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield str(exc)
        exc = exc.__cause__ or exc.__context__


def stubs_of(exc, text=""):
    """'task unit' strings of the stubs that made a test fail: from the exception objects, or — for a failure
    raised in another process (a notebook kernel, a subprocess), which arrives as text — from the messages
    and the report's text."""
    found = _first_stub_in_chain(exc) if exc is not None else set()
    if not found:
        for message in [*_messages(exc), text]:
            m = STUB_IN_TEXT.search(ANSI.sub("", message or ""))
            if m:
                found.add(f"{m.group(1)} {m.group(2)}")
                break
    return sorted(found)


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def _example(exc):
    """A property test's falsifying example (hypothesis adds it to the exception's notes), on one line."""
    notes = [n for n in getattr(exc, "__notes__", ()) or () if isinstance(n, str)]
    lines = [line.strip() for n in notes for line in n.splitlines()]
    start = next((i for i, line in enumerate(lines) if line.startswith(("Falsifying example", "Failing test case"))),
                 None)
    if start is None:
        return ""
    text = " ".join(line for line in lines[start:] if line and not line.startswith(("Explanation", "You can")))
    return re.sub(r",?\s+\)", ")", re.sub(r"\(\s+", "(", text))[:500]


def _tasks(item):
    return sorted({m.name for m in item.iter_markers() if TASK_MARKER.match(m.name)})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    event = {"nodeid": item.nodeid, "when": report.when, "tasks": _tasks(item), "outcome": report.outcome,
             "error": "", "message": "", "stubs": []}
    if report.skipped:
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        event["error"], event["message"] = "Skipped", str(reason)[:300]
    elif report.failed:
        exc = call.excinfo.value if call.excinfo is not None else None
        event["error"] = type(exc).__name__ if exc is not None else "Failed"
        message = _first_line(exc) if exc is not None else ""
        example = _example(exc) if exc is not None else ""
        event["message"] = f"{message} — {example}" if message and example else message or example
        event["stubs"] = stubs_of(exc, report.longreprtext)
        _stop_when_every_unit_was_seen(item.session, event["stubs"])
    _send(event)


def _stop_when_every_unit_was_seen(session, stubs):
    """$MINIALIGN_COURSE_UNTIL names units (comma-separated): once a test has failed at each, stop the run (the
    release check only needs one failing test per unit)."""
    wanted = [u for u in os.environ.get("MINIALIGN_COURSE_UNTIL", "").split(",") if u]
    if not wanted:
        return
    _seen.update(s.split(" ", 1)[1] for s in stubs)
    if all(u in _seen for u in wanted):
        session.shouldstop = "every unit named in MINIALIGN_COURSE_UNTIL has made a test fail"


def pytest_collectreport(report):
    if report.failed:
        lines = [line for line in report.longreprtext.strip().splitlines() if line.strip()]
        _send({"collect_error": report.nodeid, "message": lines[-1][:300] if lines else "collection failed"})


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        for item in session.items:
            _send({"collected": item.nodeid, "tasks": _tasks(item)})


def _module_file(name):
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None) if module is not None else None
    return file if isinstance(file, str) else None


def pytest_sessionfinish(session, exitstatus):
    _send({"modules": {name: _module_file(name) for name in ("minialign", "minialign.kernels")},
           "exitstatus": int(exitstatus)})
