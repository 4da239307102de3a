"""The course grader's pytest plugin: it records, for every test, its task markers, its outcome and — for a
failure — which course stub's ``NotImplementedError`` caused it, and writes them as JSON to the file named by
``$MINIALIGN_COURSE_REPORT`` (``minialign/course/grade.py`` reads it).

It imports nothing from minialign: the grader loads it from the instructor's copy before the tree under test
is on the path. A record holds test names, outcomes, exception types and the first line of an exception's
message — never a test's source, so an instructor's hidden tests stay hidden.
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

_tests = {}
_collect_errors = []
_seen = set()


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    record = _tests.setdefault(item.nodeid, {
        "nodeid": item.nodeid,
        "tasks": sorted({m.name for m in item.iter_markers() if TASK_MARKER.match(m.name)}),
        "outcome": "passed", "phase": "", "error": "", "message": "", "stubs": [],
    })
    if record["outcome"] != "passed" or not (report.failed or report.skipped):
        return
    exc = call.excinfo.value if call.excinfo is not None else None
    record["outcome"] = "failed" if report.failed else "skipped"
    record["phase"] = report.when
    if report.skipped:
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        record["error"], record["message"] = "Skipped", str(reason)[:300]
        return
    record["error"] = type(exc).__name__ if exc is not None else "Failed"
    record["message"] = _first_line(exc) if exc is not None else ""
    record["stubs"] = stubs_of(exc, report.longreprtext)
    _stop_when_every_unit_was_seen(item.session, record["stubs"])


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
        _collect_errors.append({"nodeid": report.nodeid, "message": lines[-1][:300] if lines else "collection failed"})


def _module_file(name):
    try:
        __import__(name)
        return getattr(sys.modules[name], "__file__", None)
    except Exception as e:  # a tree that cannot even be imported: say so in the report
        return f"import failed: {type(e).__name__}: {_first_line(e)}"


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("MINIALIGN_COURSE_REPORT")
    if not path:
        return
    report = {
        "tests": list(_tests.values()),
        "collect_errors": _collect_errors,
        "modules": {name: _module_file(name) for name in ("minialign", "minialign.kernels")},
        "exitstatus": int(exitstatus),
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
