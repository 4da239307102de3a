"""Course assignments cut from the library itself (on the command line: ``minialign course list | make | grade |
restore | check``, in ``cli.py``).

An assignment is data (``course/NN-name.toml``): its tasks, each with its points, the pytest marker that grades
it (``taskN_M``) and its units — functions or methods (``path::Qual.name``) or named regions inside one
(``path::Qual.name#region``: the lines from ``# BEGIN SOLUTION region`` to ``# END SOLUTION``). From it:

* ``make``  writes a student repository: this project as it is, each unit's body replaced by its docstring and
  ``raise NotImplementedError("Task N.M: unit — title; see ASSIGNMENT.md")`` (a region by that line alone),
  everything else byte for byte, and the handout ``ASSIGNMENT.md``;
* ``grade`` runs the assignment's tests on a student's code: a fresh copy of this repository with the student's
  unit files laid over it, in a fresh process in which ``minialign`` and ``minialign.kernels`` are that copy's.
  Tests, fixtures and data come from this repository, never from the student's tree; an instructor's hidden
  tests (``--extra-tests``) join them, and only their names are ever shown;
* ``restore`` puts the solution back into an untouched student tree;
* ``check`` is the release check (``course_check.py``; ``tests/test_course.py`` runs it in CI).

Tests run in another process through ``course_plugin.py``, which reports each test's outcome and the stub
(if any) that made it fail.
"""
from __future__ import annotations

import ast
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
    import tomllib
else:  # Python 3.10: the same parser, packaged (a dependency of minialign on 3.10)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
COURSE = "course"
SOLUTIONS = "course/solutions"   # instructor solutions to the written questions: never copied to a student
HANDOUT = "ASSIGNMENT.md"
HANDOUTS = "course/handouts"     # the committed handouts, regenerated and compared by the release check
RELEASE_TEST = "tests/test_course.py"
IGNORED_PARTS = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".hypothesis", "runs", "build", "dist",
                 ".ipynb_checkpoints", "out"}
UNIT = re.compile(r"^(?P<path>[\w./-]+\.py)::(?P<qualname>[A-Za-z_][\w.]*)(?:#(?P<region>[\w-]+))?$")
BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION (?P<name>[\w-]+)\s*$")
END = re.compile(r"^[ \t]*# END SOLUTION\s*$")
TASK_ID = re.compile(r"^(\d+)\.(\d+)$")
DEFAULT_TIMEOUT = 1800


class CourseError(ValueError):
    """A manifest, a unit or a student tree that is not what the course tooling expects."""


# ============================================================================ assignments as data


@dataclass(frozen=True)
class Task:
    id: str                 # "5.2"
    title: str
    points: float
    units: tuple            # unit specs, "path::Qual.name" or "path::Qual.name#region"
    text: str               # what to implement (Markdown), for the handout
    minutes: int

    @property
    def marker(self) -> str:
        return "task" + self.id.replace(".", "_")


@dataclass(frozen=True)
class Question:
    id: str                 # "5.A"
    title: str
    points: float
    text: str


@dataclass(frozen=True)
class Assignment:
    name: str               # "05-rlhf", the manifest's file name
    number: int
    title: str
    chapter: str            # "chapters/05-rlhf.md"
    read: tuple             # what to read first
    extras: str             # pip extras the tests need: "dev" or "kernels,dev"
    intro: str
    tasks: tuple
    questions: tuple

    @property
    def points(self) -> float:
        return sum(t.points for t in self.tasks)

    @property
    def markers(self) -> list:
        return [t.marker for t in self.tasks]

    @property
    def hours(self) -> float:
        return round(sum(t.minutes for t in self.tasks) / 60 + 0.5 * len(self.questions), 1)

    def units(self):
        """(unit spec, task) for every unit, in manifest order."""
        return [(u, t) for t in self.tasks for u in t.units]

    @property
    def task_ids(self):
        return [t.id for t in self.tasks]


def _field(data, key, kind, where, default=None):
    if key not in data:
        if default is not None:
            return default
        raise CourseError(f"{where}: missing field {key!r}")
    value = data[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind):
        raise CourseError(f"{where}: field {key!r} must be a {kind.__name__}; got {value!r}")
    return value


def parse_manifest(name: str, text: str) -> Assignment:
    """An assignment from a manifest's TOML text; every field is checked, naming the manifest and the field."""
    where = f"course/{name}.toml"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise CourseError(f"{where} is not valid TOML: {e}") from None
    number = _field(data, "number", int, where)
    tasks = []
    for i, t in enumerate(_field(data, "task", list, where)):
        at = f"{where}, task {i + 1}"
        task = Task(id=_field(t, "id", str, at), title=_field(t, "title", str, at), points=_field(t, "points", float, at),
                    units=tuple(_field(t, "units", list, at)), text=_field(t, "text", str, at).strip(),
                    minutes=_field(t, "minutes", int, at))
        m = TASK_ID.match(task.id)
        if not m or int(m.group(1)) != number:
            raise CourseError(f"{at}: task id must be '{number}.M' (chapter {number}); got {task.id!r}")
        if '"' in task.title or "\\" in task.title:
            raise CourseError(f"{at}: a task title goes into a Python string; it must not hold quotes or backslashes")
        if not task.points > 0 or not task.units:
            raise CourseError(f"{at}: a task needs points > 0 and at least one unit")
        for spec in task.units:
            if not isinstance(spec, str) or not UNIT.match(spec):
                raise CourseError(f"{at}: unit {spec!r} is not of the form path.py::Qual.name or "
                                  "path.py::Qual.name#region")
        tasks.append(task)
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        raise CourseError(f"{where}: task ids repeat: {ids}")
    questions = tuple(Question(id=_field(q, "id", str, f"{where}, question {i + 1}"),
                               title=_field(q, "title", str, f"{where}, question {i + 1}"),
                               points=_field(q, "points", float, f"{where}, question {i + 1}"),
                               text=_field(q, "text", str, f"{where}, question {i + 1}").strip())
                      for i, q in enumerate(_field(data, "question", list, where, default=[])))
    return Assignment(name=name, number=number, title=_field(data, "title", str, where),
                      chapter=_field(data, "chapter", str, where), read=tuple(_field(data, "read", list, where)),
                      extras=_field(data, "extras", str, where, default="dev"),
                      intro=_field(data, "intro", str, where, default="").strip(),
                      tasks=tuple(tasks), questions=questions)


def require_repository(root: Path = ROOT) -> Path:
    root = Path(root)
    for part in (COURSE, "tests", "pyproject.toml"):
        if not (root / part).exists():
            raise CourseError(f"the course tooling needs the repository checkout (with course/, tests/ and "
                              f"pyproject.toml); {root} has no {part}")
    return root


def assignments(root: Path = ROOT) -> dict:
    """Every assignment of ``course/*.toml``, by name, in order."""
    root = require_repository(root)
    out = {}
    for path in sorted((root / COURSE).glob("*.toml")):
        out[path.stem] = parse_manifest(path.stem, path.read_text(encoding="utf-8"))
    return out


def load(name: str, root: Path = ROOT) -> Assignment:
    known = assignments(root)
    if name not in known:
        raise CourseError(f"no assignment {name!r}; known: {', '.join(known) or '(none)'}")
    return known[name]


# ============================================================================ units: where a body lies


@dataclass(frozen=True)
class Cut:
    """Lines ``[start, stop)`` of a file (0-based) that a unit's stub replaces, and the stub."""
    spec: str
    task: str
    start: int
    stop: int
    stub: str               # one line, with its newline

    def overlaps(self, other: "Cut") -> bool:
        return self.start < other.stop and other.start < self.stop


def split_spec(spec: str):
    m = UNIT.match(spec)
    if not m:
        raise CourseError(f"unit {spec!r} is not of the form path.py::Qual.name or path.py::Qual.name#region")
    return m.group("path"), m.group("qualname"), m.group("region")


def stub_line(indent: str, spec: str, task: Task) -> str:
    return f'{indent}raise NotImplementedError("Task {task.id}: {spec} — {task.title}; see {HANDOUT}")\n'


def _find_function(tree, qualname: str, spec: str):
    nodes, found = tree.body, None
    for part in qualname.split("."):
        found = next((n for n in nodes if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                      and n.name == part), None)
        if found is None:
            raise CourseError(f"unit {spec} does not resolve: no {part!r} in {'.'.join(qualname.split('.')[:-1]) or 'the module'}")
        nodes = found.body
    if not isinstance(found, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise CourseError(f"unit {spec} does not resolve: {qualname} is a class, not a function or method")
    return found


def _first_line(stmt) -> int:
    return min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])


def locate(source: str, spec: str, task: Task) -> Cut:
    """Where unit ``spec`` lies in ``source`` and the stub that replaces it. A unit that does not resolve —
    no such function, no such region, a region marked twice — is a :class:`CourseError` naming it."""
    _, qualname, region = split_spec(spec)
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise CourseError(f"unit {spec} does not resolve: the file does not parse ({e})") from None
    fn = _find_function(tree, qualname, spec)
    lines = source.splitlines(keepends=True)
    if region is not None:
        return _locate_region(lines, fn, spec, region, task)
    body = fn.body
    has_doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
        and isinstance(body[0].value.value, str)
    if has_doc and len(body) == 1:
        raise CourseError(f"unit {spec}: the function has a docstring and no body to cut")
    start = body[0].end_lineno if has_doc else _first_line(body[0]) - 1
    first = body[1] if has_doc else body[0]
    if _first_line(first) - 1 < start or first.lineno == fn.lineno:
        raise CourseError(f"unit {spec}: the body must start on a line of its own")
    for line in lines[start:fn.end_lineno]:
        if BEGIN.match(line):
            raise CourseError(f"unit {spec}: the function holds a solution region ({line.strip()}); "
                              "a unit is the whole function or one region of it, not both")
    indent = re.match(r"[ \t]*", lines[_first_line(first) - 1]).group(0)
    return Cut(spec, task.id, start, fn.end_lineno, stub_line(indent, spec, task))


def _function_end(lines, fn) -> int:
    """The line after a function, counting comment lines indented under it that follow its last statement."""
    indent = len(lines[fn.lineno - 1]) - len(lines[fn.lineno - 1].lstrip())
    end = fn.end_lineno
    while end < len(lines) and lines[end].lstrip().startswith("#") \
            and len(lines[end]) - len(lines[end].lstrip()) > indent:
        end += 1
    return end


def _locate_region(lines, fn, spec, region, task) -> Cut:
    lo, hi = _first_line(fn) - 1, _function_end(lines, fn)
    begins = [i for i in range(lo, hi) if (m := BEGIN.match(lines[i])) and m.group("name") == region]
    if len(begins) != 1:
        raise CourseError(f"unit {spec} does not resolve: {len(begins)} lines '# BEGIN SOLUTION {region}' in "
                          f"{fn.name} (expected exactly one)")
    start = begins[0]
    stop = next((i for i in range(start + 1, hi) if END.match(lines[i]) or BEGIN.match(lines[i])), None)
    if stop is None or not END.match(lines[stop]):
        raise CourseError(f"unit {spec}: region {region!r} has no '# END SOLUTION' before the end of {fn.name} "
                          "(regions do not nest)")
    indent = BEGIN.match(lines[start]).group("indent")
    if stop == start + 1:
        raise CourseError(f"unit {spec}: region {region!r} is empty")
    return Cut(spec, task.id, start, stop + 1, stub_line(indent, spec, task))


def region_names(source: str):
    """(line number, name) of every ``# BEGIN SOLUTION name`` line of a file."""
    return [(i + 1, m.group("name")) for i, line in enumerate(source.splitlines()) if (m := BEGIN.match(line))]


def cuts_by_file(units, root: Path):
    """{path: [Cut, ...] in file order} for (spec, task) pairs, every unit resolved against ``root``; overlapping
    units are an error."""
    by_path = {}
    for spec, task in units:
        by_path.setdefault(split_spec(spec)[0], []).append((spec, task))
    out = {}
    for path, items in by_path.items():
        file = Path(root) / path
        if not file.is_file():
            raise CourseError(f"unit {items[0][0]} does not resolve: no file {path}")
        source = file.read_text(encoding="utf-8")
        cuts = sorted((locate(source, spec, task) for spec, task in items), key=lambda c: c.start)
        for a, b in zip(cuts, cuts[1:]):
            if a.overlaps(b):
                raise CourseError(f"units {a.spec} and {b.spec} overlap")
        out[path] = cuts
    return out


def apply_cuts(source: str, cuts) -> str:
    lines = source.splitlines(keepends=True)
    for cut in sorted(cuts, key=lambda c: c.start, reverse=True):
        lines[cut.start:cut.stop] = [cut.stub]
    return "".join(lines)


def restore_cuts(stubbed: str, original: str, cuts) -> str:
    """Put each unit's solution (from ``original``) back in place of its stub line in ``stubbed``."""
    lines = stubbed.splitlines(keepends=True)
    solution = original.splitlines(keepends=True)
    for cut in cuts:
        where = [i for i, line in enumerate(lines) if line == cut.stub]
        if len(where) != 1:
            raise CourseError(f"unit {cut.spec}: its stub appears {len(where)} times in the student's file "
                              "(expected once: was it edited?)")
        lines[where[0]:where[0] + 1] = solution[cut.start:cut.stop]
    return "".join(lines)


# ============================================================================ trees


def project_files(root: Path) -> list:
    """The project's files (relative POSIX paths): git's view of the work tree when it is a checkout (tracked
    and untracked-but-not-ignored files that exist), else every file outside caches and virtual environments."""
    root = Path(root)
    if (root / ".git").exists() and shutil.which("git"):
        run = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, text=True)
        if run.returncode == 0:
            return sorted(p for p in set(run.stdout.split("\0")) if p and (root / p).is_file())
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in IGNORED_PARTS and not d.endswith(".egg-info")
                       and not d.startswith(".venv")]
        rel = Path(dirpath).relative_to(root)
        out += [(rel / f).as_posix() for f in filenames if not f.endswith(".pyc")]
    return sorted(out)


def student_files(root: Path) -> list:
    """What a student tree holds of the project: everything but the written questions' solutions."""
    return [p for p in project_files(root) if not (p == SOLUTIONS or p.startswith(SOLUTIONS + "/"))]


def _empty_target(out: Path) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CourseError(f"--out {out} exists and is not an empty folder; choose a new one")
    blocked = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise CourseError(f"--out {out}: {blocked} is a file, not a folder; choose a folder that can hold the repository")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not os.access(existing, os.W_OK):
        raise CourseError(f"--out {out} cannot be created: the folder {existing} is not writable")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CourseError(f"--out {out} cannot be created: {e.strerror or e}") from None
    return out


def write_tree(root: Path, out: Path, units, handout: str | None = None) -> Path:
    """A copy of the project in ``out`` with ``units`` ((spec, task) pairs) stubbed, and the handout if given."""
    root, out = Path(root), _empty_target(out)
    cuts = cuts_by_file(units, root)
    for rel in student_files(root):
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel in cuts:
            dst.write_text(apply_cuts((root / rel).read_text(encoding="utf-8"), cuts[rel]), encoding="utf-8")
        else:
            shutil.copy2(root / rel, dst)
    if handout is not None:
        (out / HANDOUT).write_text(handout, encoding="utf-8")
    return out


def make(name: str, out: Path, root: Path = ROOT) -> Path:
    """The student repository of assignment ``name`` in ``out`` (a new or empty folder)."""
    a = load(name, root)
    return write_tree(root, out, a.units(), handout(a, root))


def restore(tree: Path, name: str, root: Path = ROOT) -> None:
    """Put the solution of every unit back into an untouched student tree (the handout stays)."""
    a = load(name, root)
    for path, cuts in cuts_by_file(a.units(), root).items():
        file = Path(tree) / path
        if not file.is_file():
            raise CourseError(f"{tree} has no {path}: it is not a student repository of {a.name}")
        file.write_text(restore_cuts(file.read_text(encoding="utf-8"), (Path(root) / path).read_text(encoding="utf-8"),
                                     cuts), encoding="utf-8")


def tree_differences(tree: Path, root: Path = ROOT) -> list:
    """Files that differ between a tree and the project as a student receives it (missing, extra, or other
    bytes), the handout aside: it is the one file a student tree adds."""
    tree = Path(tree)
    want = set(student_files(root))
    have = set(project_files(tree)) - {HANDOUT}
    problems = [f"missing: {p}" for p in sorted(want - have)] + [f"extra: {p}" for p in sorted(have - want)]
    problems += [f"differs: {p}" for p in sorted(want & have)
                 if (tree / p).read_bytes() != (Path(root) / p).read_bytes()]
    return problems


def assignment_of(tree: Path) -> str:
    """The assignment a student tree was made for, from the first line of its handout."""
    file = Path(tree) / HANDOUT
    if not file.is_file():
        raise CourseError(f"{tree} has no {HANDOUT}: is it a student tree made by `minialign course make`? "
                          "Otherwise name the assignment with --assignment")
    m = re.search(r"minialign course assignment ([\w-]+)", file.read_text(encoding="utf-8").split("\n", 1)[0])
    if not m:
        raise CourseError(f"{file}'s first line does not name its assignment; name it with --assignment")
    return m.group(1)


# ============================================================================ running tests in a tree


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

    def with_task(self, task_id: str):
        marker = "task" + task_id.replace(".", "_")
        return [t for t in self.tests.values() if marker in t.tasks]


def marked_files(tree: Path, markers) -> list:
    """Test files that apply any of the markers (``mark.taskN_M`` is always written out where it is applied);
    the release check's own file is not one, though it names markers."""
    pattern = re.compile(r"\bmark\.(" + "|".join(map(re.escape, markers)) + r")\b")
    return sorted(rel for p in (Path(tree) / "tests").glob("test_*.py")
                  if (rel := p.relative_to(tree).as_posix()) != RELEASE_TEST and pattern.search(p.read_text(encoding="utf-8")))


def run_tests(tree: Path, args, timeout: float = DEFAULT_TIMEOUT, log=None, until=()) -> Run:
    """pytest ``args`` in a fresh process in ``tree``, where ``minialign`` and ``minialign.kernels`` are the tree's
    own (tests/conftest.py pins them), Triton interprets kernels on the CPU, and course_plugin.py reports."""
    tree = Path(tree).resolve()
    with tempfile.TemporaryDirectory(prefix="minialign-course-") as tmp:
        plugin_dir, report = Path(tmp) / "plugin", Path(tmp) / "report.json"
        plugin_dir.mkdir()
        shutil.copy(Path(__file__).with_name("course_plugin.py"), plugin_dir / "_minialign_course_plugin.py")
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


def task_expression(markers) -> str:
    return " or ".join(markers)


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
        ts = TaskScore(t, run.with_task(t.id), {n for n in hidden if n in run.tests and t.marker in run.tests[n].tasks},
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


# ============================================================================ the handout


def tests_of_task(root: Path, task: Task) -> list:
    return marked_files(root, [task.marker])


def handout(a: Assignment, root: Path = ROOT) -> str:
    """ASSIGNMENT.md for a student tree, from the manifest."""
    all_markers = task_expression(a.markers)
    install = f"pip install torch==2.13.0 -e '.[{a.extras}]'" if "kernels" in a.extras else "pip install -e '.[dev]'"
    out = [f"<!-- minialign course assignment {a.name}; generated from course/{a.name}.toml -->",
           f"# Assignment {a.number}: {a.title}", ""]
    if a.intro:
        out += [a.intro, ""]
    qpoints = sum(q.points for q in a.questions)
    out += [f"**Points**: {a.points:g} for code ({len(a.tasks)} problems) and {qpoints:g} for written questions. "
            f"**Time**: about {a.hours:g} hours.", "",
            "## Read first", ""] + [f"- {r}" for r in a.read] + [
            "", "## Setup", "", "```bash",
            f"python3 -m venv .venv && . .venv/bin/activate && {install}",
            f'python -m pytest -m "{all_markers}"   # every problem of this assignment; all fail until you solve them',
            "```", "",
            "Each problem's code is cut out of the library: its body is a stub that raises "
            '`NotImplementedError("Task N.M: …")`. Write it; its docstring states the equation. Do the problems in '
            "order: a later one may call an earlier one. The rest of the library is complete, so the rest of the "
            "suite (`python -m pytest`) shows what depends on your code.", "",
            "**How it is graded.** Only the files named in the deliverables are taken from your repository; the "
            "tests, their fixtures and data come from the instructor's copy, and the instructor may add hidden tests "
            "with the same markers (other seeds and shapes). A problem earns its points times the fraction of its "
            "tests that pass. Tolerances are stated in the tests; none depends on the platform, a GPU or the "
            "network.", ""]
    for t in a.tasks:
        files = sorted({split_spec(u)[0] for u in t.units})
        out += [f"## Problem ({t.marker}): {t.title} ({t.points:g} points)", "", t.text, "",
                "**Deliverable**: " + "; ".join(_deliverable(u) for u in t.units) + ".", "",
                f"**Test**: `python -m pytest -m {t.marker}` (in {', '.join(f'`{f}`' for f in tests_of_task(root, t))}). "
                f"**Time**: about {t.minutes} minutes. **Files graded**: {', '.join(f'`{f}`' for f in files)}.", ""]
    if a.questions:
        out += ["## Written questions", "",
                "Hand these in as a PDF or Markdown file; the chapter sets each one up.", ""]
        for q in a.questions:
            out += [f"### Question {q.id}: {q.title} ({q.points:g} points)", "", q.text, ""]
    return "\n".join(out).rstrip() + "\n"


def _deliverable(spec: str) -> str:
    path, qualname, region = split_spec(spec)
    if region is None:
        return f"the body of `{qualname}` in `{path}`"
    return f"the lines of `{qualname}` in `{path}` where the stub stands (region `{region}`)"


def exercises(a: Assignment) -> str:
    """The "Exercises" section a chapter ends with: the coding problems and the written questions."""
    out = ["## Exercises", "",
           f"The coding problems are assignment {a.name} of the course: `minialign course make {a.name} --out DIR` "
           f"writes a student repository in which each piece of the library named below is cut out (its body "
           f"replaced by a stub that raises `NotImplementedError`), with the handout `course/handouts/{a.name}.md`. "
           "The tests that grade a problem are the ones that prove the library; run them with the command in the "
           "last column.", "",
           "| problem | points | write | test |", "|---|---|---|---|"]
    for t in a.tasks:
        units = ", ".join(f"`{split_spec(u)[0]}::{split_spec(u)[1]}`" + (f" ({split_spec(u)[2]})" if split_spec(u)[2] else "")
                          for u in t.units)
        out.append(f"| {t.id} {t.title} | {t.points:g} | {units} | `pytest -m {t.marker}` |")
    out += ["", "Written questions:", ""]
    for q in a.questions:
        out += [f"{q.id}. **{q.title}** ({q.points:g} points). " + " ".join(q.text.split()), ""]
    return "\n".join(out).rstrip() + "\n"
