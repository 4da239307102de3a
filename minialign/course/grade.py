"""Running the tests in a tree and scoring them: the grader."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    pass
else:  # Python 3.10: the same parser, packaged (a dependency of minialign on 3.10)
    pass

from .cut import split_spec
from .manifest import (
    DEFAULT_TIMEOUT,
    ROOT,
    Assignment,
    CourseError,
    Task,
    load,
    marked_files,
    require_repository,
    task_expression,
)
from .tree import assignment_of, write_tree


@dataclass
class TestOutcome:
    nodeid: str
    tasks: list
    outcome: str            # passed, failed, skipped
    phase: str = ""
    error: str = ""
    message: str = ""
    stubs: list = field(default_factory=list)   # "task unit" of the stubs that made it fail

    @property
    def stub_tasks(self):
        return sorted({s.split(" ", 1)[0] for s in self.stubs})

    @property
    def stub_units(self):
        return sorted({s.split(" ", 1)[1] for s in self.stubs})


@dataclass
class Run:
    tests: dict             # nodeid -> TestOutcome
    collect_errors: list
    modules: dict
    returncode: int
    seconds: float
    tree: Path

    def with_marker(self, marker: str):
        """The tests that carry a task's marker (``manifest.Task.marker``)."""
        return [t for t in self.tests.values() if marker in t.tasks]


def run_tests(tree: Path, args, timeout: float = DEFAULT_TIMEOUT, log=None, until=()) -> Run:
    """pytest ``args`` in a fresh process in ``tree``, where ``minialign`` and ``minialign.kernels`` are the tree's
    own (tests/conftest.py pins them), Triton interprets kernels on the CPU, and course/plugin.py reports."""
    tree = Path(tree).resolve()
    with tempfile.TemporaryDirectory(prefix="minialign-course-") as tmp:
        plugin_dir, report = Path(tmp) / "plugin", Path(tmp) / "report.json"
        plugin_dir.mkdir()
        shutil.copy(Path(__file__).with_name("plugin.py"), plugin_dir / "_minialign_course_plugin.py")
        env = {k: v for k, v in os.environ.items()
               if k != "PYTHONPATH" and not k.startswith(("PYTEST_", "MINIALIGN_COURSE"))}
        # Triton interprets on the CPU, with any GPU hidden: the same tests and shapes on every machine.
        env.update(PYTHONPATH=f"{tree}{os.pathsep}{plugin_dir}", TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="",
                   HYPOTHESIS_PROFILE="grading",
                   PYTHONDONTWRITEBYTECODE="1", MINIALIGN_COURSE_REPORT=str(report),
                   MINIALIGN_COURSE_UNTIL=",".join(until))
        cmd = [sys.executable, "-m", "pytest", "-p", "_minialign_course_plugin", "-p", "no:cacheprovider",
               "-o", "addopts=", "-q", "--tb=no", "--continue-on-collection-errors", "--rootdir", str(tree),
               "-c", str(tree / "pyproject.toml"), *args]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CourseError(f"the tests ran longer than {timeout:.0f} s in {tree}") from None
        seconds = time.perf_counter() - t0
        if log is not None:
            log.write_text(proc.stdout + proc.stderr, encoding="utf-8")
        if not report.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise CourseError(f"pytest wrote no report in {tree} (exit {proc.returncode}):\n{tail}")
        data = json.loads(report.read_text(encoding="utf-8"))
    tests = {t["nodeid"]: TestOutcome(**t) for t in data["tests"]}
    return Run(tests, data["collect_errors"], data["modules"], proc.returncode, seconds, tree)


# ============================================================================ grading


@dataclass
class TaskScore:
    task: Task
    tests: list             # TestOutcome of the task's tests
    hidden: set             # nodeids of the instructor's hidden tests
    unreadable: list        # test files of this task that could not be imported

    @property
    def passed(self) -> int:
        return sum(t.outcome == "passed" for t in self.tests)

    @property
    def total(self) -> int:
        return len(self.tests) + len(self.unreadable)

    @property
    def score(self) -> float:
        return round(self.task.points * self.passed / self.total, 2) if self.total else 0.0

    def failures(self):
        """(name, why) of each test that did not pass; hidden tests by name only, never their source."""
        out = [(f, "could not be imported") if f.endswith(".py") else ("all tests", f) for f in self.unreadable]
        for t in self.tests:
            if t.outcome == "passed":
                continue
            why = t.error if t.nodeid in self.hidden else f"{t.error}: {t.message}".rstrip(": ")
            if t.stub_tasks:
                why = f"NotImplementedError (Task {', '.join(t.stub_tasks)} is still a stub)"
            out.append((t.nodeid + (" [hidden]" if t.nodeid in self.hidden else ""), why))
        return out


@dataclass
class Grade:
    assignment: Assignment
    tasks: list             # TaskScore
    modules: dict
    seconds: float
    student_files: list
    run: Run | None = None  # every test's outcome (for the release check; never shown to a student)

    @property
    def score(self) -> float:
        return round(sum(t.score for t in self.tasks), 2)

    @property
    def max_score(self) -> float:
        return self.assignment.points

    def table(self) -> str:
        rows = [f"{self.assignment.name}: {self.assignment.title}", "",
                f"{'task':<6} {'marker':<9} {'tests passed':>13}  {'points':>13}  title"]
        for t in self.tasks:
            rows.append(f"{t.task.id:<6} {t.task.marker:<9} {t.passed:>6} / {t.total:<4}  "
                        f"{t.score:>6g} / {t.task.points:<5g}  {t.task.title}")
        rows.append(f"{'total':<6} {'':<9} {'':>13}  {self.score:>6g} / {self.max_score:<5g}")
        for t in self.tasks:
            for name, why in t.failures():
                rows.append(f"  task {t.task.id}: {name}: {why}")
        return "\n".join(rows)

    def gradescope(self) -> dict:
        """Gradescope's results.json: one entry per task, names of failing tests in its output."""
        tests = []
        for t in self.tasks:
            fails = t.failures()
            output = f"{t.passed} of {t.total} tests passed ({len(t.hidden)} of them hidden)."
            if fails:
                output += "\n" + "\n".join(f"- {name}: {why}" for name, why in fails)
            tests.append({"name": f"Task {t.task.id}: {t.task.title}", "number": t.task.id, "score": t.score,
                          "max_score": t.task.points, "output": output, "tags": [t.task.marker],
                          "visibility": "visible"})
        return {"score": self.score, "execution_time": round(self.seconds, 1), "tests": tests,
                "output": f"{self.assignment.name}: {self.score:g} / {self.max_score:g} points"}


def score(a: Assignment, run: Run, hidden=(), student=()) -> Grade:
    """Points per task: its points times the fraction of its tests that passed (a test not run, skipped, or in a
    file that could not be imported counts as not passed). A task with no test at all is an error."""
    unreadable = {}
    for err in run.collect_errors:
        path = err["nodeid"].split("::")[0]
        text = (run.tree / path).read_text(encoding="utf-8") if path and (run.tree / path).is_file() else ""
        for t in a.tasks:
            if re.search(rf"\b{t.marker}\b", text):
                unreadable.setdefault(t.id, []).append(path)
    tasks = []
    for t in a.tasks:
        ts = TaskScore(t, run.with_marker(t.marker), {n for n in hidden if n in run.tests and t.marker in run.tests[n].tasks},
                       unreadable.get(t.id, []))
        if ts.total == 0:
            raise CourseError(f"task {t.id} of {a.name} has no tests: no test carries the marker {t.marker}")
        tasks.append(ts)
    return Grade(a, tasks, run.modules, run.seconds, list(student), run)


def extra_test_files(extra_tests) -> list:
    """The instructor's hidden test files: a test_*.py file, or the test_*.py files of a folder."""
    extra = Path(extra_tests)
    files = sorted(extra.glob("test_*.py")) if extra.is_dir() else [extra]
    if not files or not all(f.is_file() and f.name.startswith("test_") and f.suffix == ".py" for f in files):
        raise CourseError(f"--extra-tests must be a test_*.py file or a folder holding some; got {extra}")
    return files


def grading_workspace(student: Path, a: Assignment, out: Path, extra_tests=None, root: Path = ROOT):
    """This repository in ``out`` with the student's files of the assignment's units laid over it, and the
    instructor's extra tests in tests/. Returns (the files taken from the student, the hidden tests' files)."""
    student = Path(student)
    extra = [] if extra_tests is None else extra_test_files(extra_tests)  # refused before any copying
    write_tree(root, out, [])
    taken = sorted({split_spec(spec)[0] for spec, _ in a.units()})
    for rel in taken:
        if not (student / rel).is_file():
            raise CourseError(f"the student tree {student} has no {rel}, which holds units of {a.name}")
        shutil.copy2(student / rel, Path(out) / rel)
    hidden = []
    for f in extra:
        dst = Path(out) / "tests" / f.name
        if dst.exists():
            raise CourseError(f"the extra test file {f.name} has the name of a test file of the repository; rename it")
        shutil.copy2(f, dst)
        hidden.append(dst.relative_to(out).as_posix())
    return taken, hidden


def grade(student: Path, name: str | None = None, extra_tests=None, root: Path = ROOT,
          timeout: float = DEFAULT_TIMEOUT) -> Grade:
    """Grade a student tree: its unit files over a fresh copy of this repository, the assignment's tests (and the
    extra ones) in a fresh process."""
    root = require_repository(root)
    student = Path(student)
    if not student.is_dir():
        raise CourseError(f"no student tree at {student}")
    a = load(name or assignment_of(student), root)
    with tempfile.TemporaryDirectory(prefix="minialign-grade-") as tmp:
        ws = Path(tmp) / "work"
        taken, hidden_files = grading_workspace(student, a, ws, extra_tests, root)
        files = sorted(set(marked_files(ws, a.markers)) | set(hidden_files))
        try:
            run = run_tests(ws, ["-m", task_expression(a.markers), *files], timeout)
        except CourseError as e:  # the tests could not start (a syntax error at import, a timeout): 0, and why
            return Grade(a, [TaskScore(t, [], set(), [f"the tests did not run: {_last_line(str(e))}"]) for t in a.tasks],
                         {}, 0.0, taken)
        hidden = {n for n in run.tests if n.split("::")[0] in hidden_files}
        result = score(a, run, hidden, taken)
        result.modules = {k: _inside(v, ws) for k, v in result.modules.items()}
    return result


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else text


def _inside(file, tree: Path) -> str:
    """Where a module was imported from, relative to the grading copy (or as given when it lies elsewhere)."""
    if not isinstance(file, str) or file.startswith("import failed"):
        return str(file)
    try:
        return "<grading copy>/" + Path(file).resolve().relative_to(Path(tree).resolve()).as_posix()
    except ValueError:
        return file
