"""Running the tests in a tree and scoring them: the grader."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import sandbox
from .cut import apply_cuts, cuts_by_file, split_spec
from .manifest import (
    DEFAULT_TIMEOUT,
    HANDOUT,
    NOT_RUN,
    ROOT,
    TASK_TIMEOUT,
    Assignment,
    CourseError,
    Task,
    load,
    marked_files,
    require_repository,
)
from .tree import recorded_assignment, write_tree


@dataclass
class TestOutcome:
    nodeid: str
    tasks: list
    outcome: str = NOT_RUN  # passed, failed, skipped, or "not run" until a phase reports
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
    end: str = ""           # how the run ended: "exit status 1", "killed by signal SIGKILL", "timed out after …"

    def with_marker(self, marker: str):
        """The tests that carry a task's marker (``manifest.Task.marker``)."""
        return [t for t in self.tests.values() if marker in t.tasks]


def outcomes(expected: dict, events, end: str) -> dict:
    """Each expected test's outcome (``expected``: nodeid → its task markers) from the plugin's events. Every
    test starts as "not run"; it passed only when setup, call and teardown all reported and none failed; a
    test with no complete record failed, the run's end (``end``) named."""
    out = {n: TestOutcome(n, list(tasks)) for n, tasks in expected.items()}
    phases = {n: set() for n in expected}
    for e in events:
        n = e.get("nodeid")
        if n not in out or e.get("when") not in ("setup", "call", "teardown"):
            continue
        t = out[n]
        if e.get("outcome") == "passed":
            phases[n].add(e["when"])
        elif t.outcome in (NOT_RUN, "skipped") and e.get("outcome") in ("failed", "skipped"):
            if t.outcome == "skipped" and e["outcome"] == "skipped":
                continue
            t.outcome, t.phase = e["outcome"], e["when"]
            t.error, t.message = str(e.get("error", ""))[:100], str(e.get("message", ""))[:800]
            t.stubs = [s for s in e.get("stubs", []) if isinstance(s, str)]
    for n, t in out.items():
        if t.outcome == NOT_RUN:
            if phases[n] >= {"setup", "call", "teardown"}:
                t.outcome = "passed"
            else:
                t.outcome, t.error = "failed", "NotRun"
                t.message = f"no outcome was reported for this test: the tests' process ended ({end})"
    return out


def _child_env(tree: Path, plugin_dir: Path, scratch: Path, until=()) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONPATH" and not k.startswith(("PYTEST_", "MINIALIGN_COURSE", "MINIALIGN_SANDBOX"))}
    # Triton interprets on the CPU, with any GPU hidden: the same tests and shapes on every machine.
    env.update(PYTHONPATH=f"{tree}{os.pathsep}{plugin_dir}", TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="",
               HYPOTHESIS_PROFILE="grading", PYTHONDONTWRITEBYTECODE="1", HOME=str(scratch), TMPDIR=str(scratch),
               HYPOTHESIS_STORAGE_DIRECTORY=str(scratch / "hypothesis"), MINIALIGN_COURSE_UNTIL=",".join(until))
    return env


def _pytest(tree: Path, plugin_dir: Path, args) -> list:
    return [sys.executable, "-m", "pytest", "-p", "_minialign_course_plugin", "-p", "no:cacheprovider",
            "-o", "addopts=", "-q", "--tb=no", "--continue-on-collection-errors", "--rootdir", str(tree),
            "-c", str(tree / "pyproject.toml"), *args]


def _prepare(tmp: Path, user):
    """The plugin's folder and a scratch folder (home, temp, hypothesis's database) the child may write."""
    plugin_dir, scratch = tmp / "plugin", tmp / "scratch"
    plugin_dir.mkdir(exist_ok=True)
    scratch.mkdir(exist_ok=True)
    shutil.copy(Path(__file__).with_name("plugin.py"), plugin_dir / "_minialign_course_plugin.py")
    os.chmod(tmp, 0o755)
    os.chmod(plugin_dir, 0o755)
    if user is not None:
        os.chown(scratch, *user)
    return plugin_dir, scratch


def sandboxed_pytest(tree: Path, args, timeout: float = DEFAULT_TIMEOUT, until=(), user=None, limits=None):
    """pytest ``args`` in ``tree`` through ``sandbox.run``: (events, how it ended, the log's tail)."""
    tree = Path(tree).resolve()
    with tempfile.TemporaryDirectory(prefix="minialign-run-") as tmp:
        plugin_dir, scratch = _prepare(Path(tmp), user)
        return sandbox.run(_pytest(tree, plugin_dir, args), tree, _child_env(tree, plugin_dir, scratch, until),
                           timeout, limits=limits, user=user)


def run_tests(tree: Path, args, timeout: float = DEFAULT_TIMEOUT, log=None, until=(), expected=None, user=None,
              limits=None) -> Run:
    """pytest ``args`` in a fresh sandboxed process in ``tree``, where ``minialign`` and ``minialign.kernels`` are
    the tree's own (tests/conftest.py pins them), Triton interprets kernels on the CPU, and course/plugin.py
    reports through the grader's pipe. ``expected`` (nodeid → task markers) is the list of tests that must
    report; without it, the tests that reported (the release check's runs, on the instructor's own trees)."""
    o = sandboxed_pytest(tree, args, timeout, until, user, limits)
    if log is not None:
        log.write_text(o.log, encoding="utf-8")
    if expected is None:
        reported = [e for e in o.events if "nodeid" in e]
        if not reported and not any("collect_error" in e for e in o.events) and o.returncode not in (0, 5):
            tail = "\n".join(o.log.strip().splitlines()[-15:])
            raise CourseError(f"the tests did not run in {tree} ({o.end}):\n{tail}")
        expected = {e["nodeid"]: e.get("tasks", []) for e in reported}
    errors = [{"nodeid": e["collect_error"], "message": str(e.get("message", ""))} for e in o.events
              if "collect_error" in e]
    modules = next((e["modules"] for e in reversed(o.events) if isinstance(e.get("modules"), dict)), {})
    return Run(outcomes(expected, o.events, o.end), errors, modules, o.returncode if o.returncode is not None else -1,
               o.seconds, Path(tree).resolve(), o.end)


_COLLECTED = {}


def _fingerprint(tree: Path, files) -> tuple:
    """What a collection run depends on: the test files, the tree's Python files and its pytest settings (path,
    size, modification time), and the files asked for."""
    tree = Path(tree)
    paths = sorted([*tree.glob("tests/*.py"), tree / "pyproject.toml", *tree.glob("minialign/**/*.py")])
    return (tuple(files), tuple((p.relative_to(tree).as_posix(), p.stat().st_size, p.stat().st_mtime_ns,
                                 hashlib.sha256(p.read_bytes()).hexdigest() if "tests" in p.parts else "")
                                for p in paths if p.is_file()))


def collect(tree: Path, files, timeout: float = DEFAULT_TIMEOUT, user=None) -> tuple:
    """The tests of ``files`` in ``tree`` (nodeid → task markers), the collection errors and where minialign was
    imported from, from a collection run: the expected tests of a grade, taken from the instructor's copy, where no
    student code runs. A collection of the same files in the same tree is made once per process (a class graded in
    one process collects once)."""
    key = _fingerprint(tree, files)
    if key in _COLLECTED:
        found, errors, modules = _COLLECTED[key]
        return dict(found), list(errors), dict(modules)
    o = sandboxed_pytest(tree, ["--collect-only", *files], timeout, user=user)
    found = {e["collected"]: list(e.get("tasks", [])) for e in o.events if "collected" in e}
    errors = [{"nodeid": e["collect_error"], "message": str(e.get("message", ""))} for e in o.events
              if "collect_error" in e]
    if not found and not errors:
        tail = "\n".join(o.log.strip().splitlines()[-15:])
        raise CourseError(f"collecting the tests in the instructor's copy failed ({o.end}):\n{tail}")
    modules = next((e["modules"] for e in reversed(o.events) if isinstance(e.get("modules"), dict)), {})
    modules = {k: _inside(v, tree) for k, v in modules.items()}
    _COLLECTED[key] = (dict(found), list(errors), dict(modules))
    return found, errors, modules


# ============================================================================ grading


@dataclass
class TaskScore:
    task: Task
    tests: list             # TestOutcome of the task's tests
    hidden: set             # nodeids of the instructor's hidden tests
    unreadable: list        # test files of this task that could not be imported, or why no test ran
    problems: list = field(default_factory=list)   # why the student's units were refused: the task scores 0
    core: tuple = ()        # nodeid prefixes of the task's core tests (the manifest's `core`)
    core_cap: float = 1.0   # the fraction of the points a task keeps at most when a core test fails

    @property
    def passed(self) -> int:
        return sum(t.outcome == "passed" for t in self.tests)

    @property
    def total(self) -> int:
        return len(self.tests) + len(self.unreadable)

    def is_core(self, nodeid: str) -> bool:
        return any(nodeid == c or nodeid.startswith(c + "[") for c in self.core)

    @property
    def core_failed(self) -> list:
        return [t.nodeid for t in self.tests if self.is_core(t.nodeid) and t.outcome != "passed"]

    @property
    def score(self) -> float:
        if self.problems or not self.total:
            return 0.0
        points = self.task.points * self.passed / self.total
        if self.core_failed:
            points = min(points, self.core_cap * self.task.points)
        return round(points, 2)

    def failures(self):
        """(name, why) of each test that did not pass; hidden tests by name only, never their source or any
        text their run produced."""
        out = [("your code", p) for p in self.problems]
        out += [(f, "could not be imported") if f.endswith(".py") else ("all tests", f) for f in self.unreadable]
        for t in self.tests:
            if t.outcome == "passed":
                continue
            if t.nodeid in self.hidden:
                why = t.message if t.error == "NotRun" else t.outcome
            else:
                why = f"{t.error}: {t.message}".rstrip(": ")
                if t.stub_tasks:
                    why = f"NotImplementedError (Task {', '.join(t.stub_tasks)} is still a stub)"
            core = " [core]" if self.is_core(t.nodeid) else ""
            out.append((t.nodeid + (" [hidden]" if t.nodeid in self.hidden else "") + core, why))
        if self.core_failed and self.core_cap < 1 and not self.problems:
            out.append(("points", f"a core test failed: at most {self.core_cap:g} of the task's points"))
        return out


@dataclass
class Grade:
    assignment: Assignment
    tasks: list             # TaskScore
    modules: dict
    seconds: float
    student_files: list
    run: Run | None = None  # every test's outcome (for the release check; never shown to a student)
    ran_as: str = ""        # whom the student's code ran as (sandbox.grader_identity)

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


def zero_results(reason: str, max_score: float | None = None) -> dict:
    """results.json for a submission that could not be graded at all: 0, and why."""
    return {"score": 0.0, "execution_time": 0.0, "output": f"not graded: {reason}",
            "tests": [{"name": "grading", "score": 0.0, "max_score": max_score if max_score else 0.0,
                       "output": reason, "visibility": "visible"}]}


def _unreadable(a: Assignment, run: Run) -> dict:
    out = {}
    for err in run.collect_errors:
        path = err["nodeid"].split("::")[0]
        text = (run.tree / path).read_text(encoding="utf-8") if path and (run.tree / path).is_file() else ""
        for t in a.tasks:
            if re.search(rf"\b{t.marker}\b", text):
                out.setdefault(t.id, []).append(path)
    return out


def score(a: Assignment, run: Run, hidden=(), student=()) -> Grade:
    """Points per task: its points times the fraction of its tests that passed (a test not run, skipped, or in a
    file that could not be imported counts as not passed), at most the manifest's ``core_cap`` of them when a
    core test failed. A task with no test at all is an error."""
    unreadable = _unreadable(a, run)
    tasks = []
    for t in a.tasks:
        hidden_here = {n for n in hidden if n in run.tests and t.marker in run.tests[n].tasks}
        ts = TaskScore(t, run.with_marker(t.marker), hidden_here, unreadable.get(t.id, []), core=t.core,
                       core_cap=a.core_cap)
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


def unit_files(a: Assignment) -> list:
    return sorted({split_spec(spec)[0] for spec, _ in a.units()})


def find_student_file(student: Path, rel: str, a: Assignment) -> str:
    """Where ``rel`` lies in a submission: at its path (a repository), or — a loose-file upload, as Gradescope's
    students usually make — at the top by its file name, when that name is unique among the assignment's
    files."""
    if os.path.lexists(Path(student) / rel):
        return rel
    name = Path(rel).name
    if [Path(f).name for f in unit_files(a)].count(name) == 1 and os.path.lexists(Path(student) / name):
        return name
    return rel


def read_units_files(student: Path, a: Assignment) -> tuple:
    """({file: the student's text}, {file: why it could not be read})."""
    texts, missing = {}, {}
    for rel in unit_files(a):
        try:
            texts[rel] = sandbox.read_student_file(student, find_student_file(student, rel, a))
        except CourseError as e:
            missing[rel] = str(e)
    return texts, missing


def spliced_files(task: Task, texts: dict, missing: dict, root: Path, check: bool = True) -> tuple:
    """({file: the instructor's file with the task's units from the student}, problems)."""
    by_file = {}
    for spec in task.units:
        by_file.setdefault(split_spec(spec)[0], []).append(spec)
    out, problems = {}, []
    for rel, specs in sorted(by_file.items()):
        if rel in missing:
            problems.append(missing[rel])
            continue
        instructor = (Path(root) / rel).read_text(encoding="utf-8")
        s = sandbox.splice(rel, instructor, texts[rel], specs, task, sandbox.package_of(rel), check=check,
                           root=root)
        problems += s.problems
        out[rel] = s.source
    return out, problems


def grading_workspace(student: Path, a: Assignment, out: Path, extra_tests=None, root: Path = ROOT):
    """This repository in ``out`` with every unit's body spliced in from the student's files (each checked
    against the policy; any problem is a :class:`CourseError`), and the instructor's extra tests in tests/.
    Returns (the files taken from the student, the hidden tests' files). ``grade`` builds one such copy per
    task instead, with that task's units alone from the student."""
    student = Path(student)
    extra = [] if extra_tests is None else extra_test_files(extra_tests)  # refused before any copying
    write_tree(root, out, [])
    texts, missing = read_units_files(student, a)
    for task in a.tasks:
        files, problems = spliced_files(task, texts, missing, root)
        if problems:
            raise CourseError(f"task {task.id}: " + "; ".join(problems))
        for rel, text in files.items():
            (Path(out) / rel).write_text(text, encoding="utf-8")
    hidden = _copy_hidden(extra, Path(out))
    return unit_files(a), hidden


def _copy_hidden(extra, out: Path) -> list:
    hidden = []
    for f in extra:
        dst = Path(out) / "tests" / f.name
        if dst.exists():
            raise CourseError(f"the extra test file {f.name} has the name of a test file of the repository; rename it")
        shutil.copy2(f, dst)
        hidden.append(dst.relative_to(out).as_posix())
    return hidden


def _link_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=os.link, symlinks=True)
    return dst


def _write_over(tree: Path, rel: str, text: str) -> None:
    path = Path(tree) / rel
    path.unlink()           # a hard link to the shared copy: replace it, never write through it
    path.write_text(text, encoding="utf-8")


def grade(student: Path, name: str | None = None, extra_tests=None, root: Path = ROOT,
          timeout: float = TASK_TIMEOUT, jobs: int = 1, check_policy: bool = True, limits=None,
          run_stubs: bool = False) -> Grade:
    """Grade a submission (a student tree, or a folder of loose files with ``name`` given), each task on its own:
    a copy of this repository with that task's unit bodies from the student (``sandbox.splice``), every other
    unit the instructor's; its tests — the ones a collection run in the untouched copy expects — in a sandboxed
    process (``sandbox.run``) with ``timeout`` seconds, then the hidden tests of the task in a separate pass that
    reports pass or fail per name only. A task whose units are all still their stubs fails its tests without a
    run unless ``run_stubs`` (the release check runs them). ``check_policy=False`` skips the unit-body policy
    (only for trying the process boundary on its own)."""
    root = require_repository(root)
    student = Path(student)
    if not student.is_dir():
        raise CourseError(f"no student tree at {student}")
    a = load(_assignment_for(student, name), root)
    extra = [] if extra_tests is None else extra_test_files(extra_tests)
    user, ran_as = sandbox.grader_identity()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="minialign-grade-") as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)
        base = write_tree(root, tmp / "base", [])
        hidden_files = _copy_hidden(extra, base)
        visible_files = marked_files(base, a.markers)
        sandbox.lock_tree(base, user)
        try:
            found, errors, collected_modules = collect(base, [*visible_files, *hidden_files], timeout, user)
            expected, hidden = _expected(a, found, errors, hidden_files)
            texts, missing = read_units_files(student, a)

            def one(task):
                return _grade_task(a, task, tmp, base, texts, missing, root, expected, hidden, errors,
                                   visible_files, hidden_files, timeout, user, check_policy, limits, run_stubs)

            if jobs > 1:
                with ThreadPoolExecutor(max_workers=jobs) as pool:
                    results = list(pool.map(one, a.tasks))
            else:
                results = [one(task) for task in a.tasks]
        finally:
            for d in tmp.iterdir():
                if d.is_dir():
                    sandbox.unlock_tree(d)
    tasks = [r[0] for r in results]
    tests = {t.nodeid: t for r in results for t in r[0].tests}
    modules = next((r[1] for r in results if r[1]), collected_modules)
    run = Run(tests, [e for r in results for e in r[2]], modules, 0, time.perf_counter() - t0, tmp / "base")
    return Grade(a, tasks, modules, run.seconds, unit_files(a), run, ran_as)


def _assignment_for(student: Path, name: str | None) -> str:
    recorded = recorded_assignment(student)
    if name is not None and recorded is not None and recorded != name:
        raise CourseError(f"{student} was made for {recorded}, not {name}: grade it as {recorded}, or grade a "
                          f"tree made for {name}")
    if name is None and recorded is None:
        raise CourseError(f"{student} does not record its assignment (no {HANDOUT} from `minialign course make`): "
                          "name it with --assignment")
    return name or recorded


def _expected(a: Assignment, found: dict, errors: list, hidden_files) -> tuple:
    """Per task, the tests it expects (nodeid → markers), visible and hidden; a hidden test without a marker of
    the assignment, or a hidden file that cannot be collected, is refused."""
    mine = set(a.markers)
    hidden = set()
    for e in errors:
        if e["nodeid"].split("::")[0] in hidden_files:
            raise CourseError(f"the hidden test file {Path(e['nodeid']).name} cannot be collected: {e['message']}")
    for nodeid, tasks in found.items():
        if nodeid.split("::")[0] in hidden_files:
            if not tasks or not set(tasks) <= mine:
                raise CourseError(f"the hidden test {nodeid.split('/')[-1]} carries "
                                  f"{', '.join(tasks) or 'no task marker'}; a hidden test of {a.name} must carry "
                                  f"one of {', '.join(a.markers)}")
            hidden.add(nodeid)
    expected = {t.id: {n: m for n, m in found.items() if t.marker in m} for t in a.tasks}
    return expected, hidden


def _still_stubs(task: Task, files: dict, root: Path) -> bool:
    stubbed = {rel: apply_cuts((Path(root) / rel).read_text(encoding="utf-8"), cuts)
               for rel, cuts in cuts_by_file([(u, task) for u in task.units], root).items()}
    return all(files.get(rel) == text for rel, text in stubbed.items())


def _grade_task(a, task, tmp, base, texts, missing, root, expected, hidden, errors, visible_files, hidden_files,
                timeout, user, check_policy, limits, run_stubs):
    """(TaskScore, modules, collection errors) of one task, graded on its own."""
    mine = expected[task.id]
    unreadable = sorted({e["nodeid"].split("::")[0] for e in errors
                         if e["nodeid"].split("::")[0] in visible_files
                         and re.search(rf"\b{task.marker}\b", (base / e["nodeid"].split("::")[0]).read_text(
                             encoding="utf-8"))})
    ts = TaskScore(task, [], {n for n in mine if n in hidden}, unreadable, core=task.core, core_cap=a.core_cap)
    if not mine and not unreadable:
        raise CourseError(f"task {task.id} of {a.name} has no tests: no test carries the marker {task.marker}")
    files, problems = spliced_files(task, texts, missing, root, check=check_policy)
    if not problems and run_stubs is False and _still_stubs(task, files, root):
        # every unit of the task is still its stub: each of its tests fails there (the release check's (a)
        # proves it for every test), so there is nothing to run
        ts.tests = [TestOutcome(n, list(m), "failed", "call", "NotImplementedError", "the task's stub",
                                [f"{task.id} {task.units[0]}"]) for n, m in mine.items()]
        return ts, {}, []
    if problems:
        ts.problems = problems
        ts.tests = [TestOutcome(n, list(m), "failed", "", "Refused", "the task's code was refused")
                    for n, m in mine.items()]
        return ts, {}, []
    ws = _link_copy(base, tmp / f"task-{task.marker}")
    sandbox.unlock_tree(ws)
    for rel, text in files.items():
        _write_over(ws, rel, text)
    sandbox.lock_tree(ws, user)
    vis = {n: m for n, m in mine.items() if n not in hidden}
    outs, modules, errs = {}, {}, []
    if vis:
        files_t = [f for f in visible_files if f not in ts.unreadable
                   and any(n.split("::")[0] == f for n in vis)]
        r = run_tests(ws, ["-m", task.marker, *files_t], timeout, expected=vis, user=user, limits=limits)
        outs.update(r.tests)
        modules = {k: _inside(v, ws) for k, v in r.modules.items()}
        errs = r.collect_errors
        for e in errs:
            f = e["nodeid"].split("::")[0]
            for n, t in r.tests.items():
                if n.split("::")[0] == f and t.error == "NotRun":
                    t.error, t.message = "ImportError", f"{f} could not be imported: {e['message']}"
    hid = {n: m for n, m in mine.items() if n in hidden}
    if hid:
        files_h = sorted({n.split("::")[0] for n in hid})
        r = run_tests(ws, ["-m", task.marker, *files_h], timeout, expected=hid, user=user, limits=limits)
        units = {f"{u.id} {spec}" for u in a.tasks for spec in u.units}
        for n, t in r.tests.items():   # a hidden test's record: pass or fail, the stub it met, nothing else it wrote
            outs[n] = TestOutcome(n, t.tasks, "passed" if t.outcome == "passed" else "failed", "",
                                  "NotRun" if t.error == "NotRun" else "", t.message if t.error == "NotRun" else "",
                                  [s for s in t.stubs if s in units])
    ts.tests = [outs[n] for n in mine]
    return ts, modules, [e for e in errs]


def _inside(file, tree: Path) -> str:
    """Where a module was imported from, relative to the grading copy; never a path the code under test chose."""
    if not isinstance(file, str):
        return "(not imported)"
    try:
        rel = Path(file).resolve().relative_to(Path(tree).resolve()).as_posix()
    except (ValueError, OSError):
        return "(outside the grading copy)"
    return "<grading copy>/" + rel if re.fullmatch(r"[\w./-]+", rel) else "(outside the grading copy)"


# ============================================================================ a class at a time


@dataclass
class ClassRow:
    submission: str
    grade: Grade | None
    error: str = ""         # why a submission could not be graded at all

    def reasons(self) -> str:
        """Why each task that scored 0 did (its first failure), or why nothing was graded."""
        if self.grade is None:
            return self.error
        out = []
        for t in self.grade.tasks:
            if t.score == 0 and t.failures():
                name, why = t.failures()[0]
                out.append(f"{t.task.id}: {why}" if name == "your code" else f"{t.task.id}: {name}: {why}")
        return "; ".join(out)


def grade_all(submissions: Path, name: str, jobs: int = 1, extra_tests=None, root: Path = ROOT,
              timeout: float = TASK_TIMEOUT, progress=None) -> list:
    """Grade every submission folder in ``submissions`` (one per student, named for them) as ``name``, ``jobs``
    at a time, each as ``grade`` does (its own sandboxed processes); a submission that cannot be graded is a
    row with its reason, never a stop. The expected tests are collected once for the class."""
    submissions = Path(submissions)
    if not submissions.is_dir():
        raise CourseError(f"SUBMISSIONS {submissions}: expected a folder holding one folder per student")
    load(name, root)
    if extra_tests is not None:
        extra_test_files(extra_tests)   # refused once, before any submission
    folders = sorted(p for p in submissions.iterdir() if p.is_dir() and not p.is_symlink())
    if not folders:
        raise CourseError(f"SUBMISSIONS {submissions} holds no folder (one folder per student)")

    def one(folder):
        try:
            row = ClassRow(folder.name, grade(folder, name, extra_tests, root, timeout))
        except CourseError as e:
            row = ClassRow(folder.name, None, str(e).splitlines()[0][:300])
        except Exception as e:  # the grader's own failure on one submission never stops the class
            row = ClassRow(folder.name, None, f"the grader failed: {type(e).__name__}: {e}"[:300])
        if progress is not None:
            progress(row)
        return row

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, folders))


def write_class_csv(rows, a: Assignment, path: Path) -> None:
    """One row per student: total, points per task, the reason for any zero."""
    import csv

    tmp = Path(path).with_name(Path(path).name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["submission", "total", "max", *[f"task {t.id}" for t in a.tasks], "reasons"])
        for r in rows:
            points = [t.score for t in r.grade.tasks] if r.grade is not None else [0.0] * len(a.tasks)
            w.writerow([r.submission, f"{r.grade.score if r.grade is not None else 0.0:g}", f"{a.points:g}",
                        *[f"{p:g}" for p in points], r.reasons()])
    os.replace(tmp, path)
