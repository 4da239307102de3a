"""Assignments as data: a manifest ``course/NN-name.toml`` names the tasks, their points, markers and units."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, packaged (a dependency of minialign on 3.10)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent.parent
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
DEFAULT_TIMEOUT = 1800    # seconds a whole-suite run of the release check may take
TASK_TIMEOUT = 600        # seconds one task's tests may run when graded
NOT_RUN = "not run"       # a test's outcome until it reports one


class CourseError(ValueError):
    """A manifest, a unit or a student tree that is not what the course tooling expects."""



@dataclass(frozen=True)
class Task:
    id: str                 # "5.2"
    title: str
    points: float
    units: tuple            # unit specs, "path::Qual.name" or "path::Qual.name#region"
    text: str               # what to implement (Markdown), for the handout
    minutes: int
    core: tuple = ()        # the tests that establish the core result (test ids, parametrized cases included)

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
class Experiment:
    id: str                 # "5.E"
    title: str
    points: float
    command: str            # the exact command the student runs
    uses: tuple             # what it runs, "path.py::Qual.name" (the release check resolves each one)
    text: str               # what to run, what to plot, what the report answers (Markdown)
    minutes: int


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
    experiments: tuple = ()     # short experiments with a written report, graded by a rubric
    core_cap: float = 1.0   # the fraction of a task's points it keeps at most when one of its core tests fails

    @property
    def points(self) -> float:
        return sum(t.points for t in self.tasks)

    @property
    def markers(self) -> list:
        return [t.marker for t in self.tasks]

    @property
    def hours(self) -> float:
        minutes = sum(t.minutes for t in self.tasks) + sum(e.minutes for e in self.experiments)
        return round(minutes / 60 + 0.5 * len(self.questions), 1)

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
        task = Task(id=_field(t, "id", str, at), title=_field(t, "title", str, at),
                    points=_field(t, "points", float, at),
                    units=tuple(_field(t, "units", list, at)), text=_field(t, "text", str, at).strip(),
                    minutes=_field(t, "minutes", int, at), core=tuple(_field(t, "core", list, at, default=[])))
        m = TASK_ID.match(task.id)
        if not m or int(m.group(1)) != number:
            raise CourseError(f"{at}: task id must be '{number}.M' (chapter {number}); got {task.id!r}")
        if '"' in task.title or "\\" in task.title:
            raise CourseError(f"{at}: a task title goes into a Python string; it must not hold quotes or backslashes")
        if not task.points > 0 or not task.units:
            raise CourseError(f"{at}: a task needs points > 0 and at least one unit")
        if not all(isinstance(c, str) and re.match(r"^tests/test_\w+\.py::\w+(\[[\w.-]+\])?$", c) for c in task.core):
            raise CourseError(f"{at}: field 'core' lists test ids of the form tests/test_x.py::test_name "
                              "(or test_name[param]); "
                              f"got {list(task.core)}")
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
    experiments = tuple(_experiment(e, f"{where}, experiment {i + 1}")
                        for i, e in enumerate(_field(data, "experiment", list, where, default=[])))
    written = [q.id for q in questions] + [e.id for e in experiments]
    if len(set(written)) != len(written):
        raise CourseError(f"{where}: question and experiment ids repeat: {written}")
    return Assignment(name=name, number=number, title=_field(data, "title", str, where),
                      chapter=_field(data, "chapter", str, where), read=tuple(_field(data, "read", list, where)),
                      extras=_field(data, "extras", str, where, default="dev"),
                      intro=_field(data, "intro", str, where, default="").strip(),
                      tasks=tuple(tasks), questions=questions, experiments=experiments,
                      core_cap=_core_cap(data, where))


def _experiment(e, at) -> Experiment:
    exp = Experiment(id=_field(e, "id", str, at), title=_field(e, "title", str, at),
                     points=_field(e, "points", float, at), command=_field(e, "command", str, at).strip(),
                     uses=tuple(_field(e, "uses", list, at)), text=_field(e, "text", str, at).strip(),
                     minutes=_field(e, "minutes", int, at))
    if not exp.points > 0 or not exp.uses or not exp.command:
        raise CourseError(f"{at}: an experiment needs points > 0, a command and at least one function it uses")
    for spec in exp.uses:
        m = UNIT.match(spec) if isinstance(spec, str) else None
        if not m or m.group("region"):
            raise CourseError(f"{at}: {spec!r} in 'uses' is not of the form path.py::Qual.name")
    return exp


def _core_cap(data, where) -> float:
    cap = _field(data, "core_cap", float, where, default=1.0)
    if not 0 <= cap <= 1:
        raise CourseError(f"{where}: field 'core_cap' must be a fraction in [0, 1]; got {cap}")
    return cap


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


def marked_files(tree: Path, markers) -> list:
    """Test files that apply any of the markers (``mark.taskN_M`` is always written out where it is applied);
    the release check's own file is not one, though it names markers."""
    pattern = re.compile(r"\bmark\.(" + "|".join(map(re.escape, markers)) + r")\b")
    return sorted(rel for p in (Path(tree) / "tests").glob("test_*.py")
                  if (rel := p.relative_to(tree).as_posix()) != RELEASE_TEST
                  and pattern.search(p.read_text(encoding="utf-8")))


def task_expression(markers) -> str:
    return " or ".join(markers)
