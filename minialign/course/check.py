"""The course's release check (``minialign course check``; ``tests/test_course.py`` runs it in CI).

For every assignment of ``course/*.toml``: (a) in the student tree every test of the assignment fails, at one of
its stubs; (b) with every unit of every assignment stubbed at once, every other test passes or fails at a stub;
(c) restoring the solution gives the repository back byte for byte; (d) no unit is ungraded — some test of its
task fails with it stubbed; (e) the grader gives the student tree 0 and the solution full marks. And before any
test runs: every unit resolves, no two overlap, every region marker is used, the task markers are registered
and carried by tests, the committed handouts are current, the chapters' Exercises and the written questions'
solutions are there.

The heavy parts run once: the suite once in the tree with everything stubbed (b); per assignment one grade of
the student tree and one of the restored solution. (d) needs a tree with a unit stubbed alone only for the
units that no test of the student tree reached first: a test that fails at unit u before any other stub would
fail at u with u alone stubbed too, since the code it runs up to u is the same.
"""
from __future__ import annotations

import ast
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .cut import _find_function, cuts_by_file, region_names, split_spec
from .grade import Grade, Run, grade, run_tests
from .handout import MAP, exercises, exercises_of, handout, marker_block, marker_rows
from .manifest import (
    HANDOUTS,
    RELEASE_TEST,
    ROOT,
    SOLUTIONS,
    Assignment,
    CourseError,
    Task,
    assignments,
    load,
    marked_files,
    require_repository,
    tomllib,
)
from .tree import make, project_files, restore, tree_differences, write_tree

# Not run in the tree with every unit stubbed: the release check's own tests, the grader's (they build trees from
# the repository themselves), the mutation record's test (it compares the units with their recorded hashes), and
# the tests of the whole repository as a product — its lint (a stub leaves names unused by design), its install,
# its book and its other Pythons — which reach no unit.
NOT_IN_STUB_RUN = (RELEASE_TEST, "tests/test_course_security.py", "tests/test_course_bundle.py",
                   "tests/test_course_mutation.py", "tests/test_lint.py", "tests/test_install.py", "tests/test_book.py",
                   "tests/test_pythons.py")


def static_problems(root: Path = ROOT) -> list:
    """What can be checked without running a test: manifests, units, regions, markers, handouts, chapters,
    solutions. A unit that no longer resolves is named with its manifest."""
    root = require_repository(root)
    try:
        known = assignments(root)
    except CourseError as e:
        return [str(e)]
    problems = []
    everything = []
    for a in known.values():
        try:
            cuts_by_file(a.units(), root)
        except CourseError as e:
            problems.append(f"course/{a.name}.toml: {e}")
        everything += a.units()
    ids = [t.id for a in known.values() for t in a.tasks]
    if len(set(ids)) != len(ids):
        problems.append(f"task ids repeat across assignments: {sorted(i for i in ids if ids.count(i) > 1)}")
    if not problems:
        try:
            cuts_by_file(everything, root)  # units of different assignments must not overlap either
        except CourseError as e:
            problems.append(str(e))
    used = {(split_spec(u)[0], split_spec(u)[2]) for u, _ in everything if split_spec(u)[2]}
    for rel in project_files(root):
        if rel.endswith(".py") and not rel.startswith("tests/"):
            for line, name in region_names((root / rel).read_text(encoding="utf-8")):
                if (rel, name) not in used:
                    problems.append(f"{rel}:{line}: region {name!r} is marked but no manifest names it")
    problems += _marker_problems(root, known)
    problems += _core_problems(root, known)
    for a in known.values():
        problems += _document_problems(root, a)
    problems += _chapter_marker_problems(root, known)
    problems += _equation_reference_problems(root, known)
    return problems


def registered_markers(root: Path) -> dict:
    """Task markers registered in pyproject.toml's [tool.pytest.ini_options], with their descriptions."""
    data = tomllib.loads((Path(root) / "pyproject.toml").read_text(encoding="utf-8"))
    lines = data.get("tool", {}).get("pytest", {}).get("ini_options", {}).get("markers", [])
    return {m.split(":")[0].strip(): m for m in lines if re.match(r"^task\d+_\d+\b", m)}


def _marker_problems(root: Path, known: dict) -> list:
    wanted = {t.marker for a in known.values() for t in a.tasks}
    descriptions = registered_markers(root)
    registered = set(descriptions)
    problems = [f"marker {m} of a manifest is not registered in pyproject.toml" for m in sorted(wanted - registered)]
    problems += [f"marker {m} is registered in pyproject.toml but no manifest has the task"
                 for m in sorted(registered - wanted)]
    manifest_says = {t.marker: f"{t.marker}: course task {t.id}, {t.title} (course/{a.name}.toml)"
                     for a in known.values() for t in a.tasks}
    problems += [f"pyproject.toml describes marker {m} as {descriptions[m]!r}; its manifest says {manifest_says[m]!r}"
                 for m in sorted(wanted & registered) if descriptions[m] != manifest_says[m]]
    used = set()
    for path in sorted((Path(root) / "tests").glob("test_*.py")):
        if f"tests/{path.name}" == RELEASE_TEST:
            continue
        found = set(re.findall(r"\bmark\.(task\d+_\d+)\b", path.read_text(encoding="utf-8")))
        used |= found
        problems += [f"tests/{path.name} uses marker {m}, which no manifest has" for m in sorted(found - wanted)]
    problems += [f"no test carries marker {m}" for m in sorted(wanted - used)]
    return problems


def _core_problems(root: Path, known: dict) -> list:
    """Every core test a manifest names exists and carries its task's marker: on its decorators, or — for one
    parameter of a test (``name[param]``) — where that parameter is given its marker (``"param": pytest.mark.…``)."""
    problems = []
    for a in known.values():
        for t in a.tasks:
            for c in t.core:
                path, name = c.split("::")
                name, _, param = name.partition("[")
                param = param.rstrip("]")
                file = Path(root) / path
                text = file.read_text(encoding="utf-8") if file.is_file() else ""
                m = re.search(rf"^def {re.escape(name)}\(", text, flags=re.M)
                above = text[:m.start()].splitlines()[-12:] if m else []
                decorators = "\n".join(above[max((i + 1 for i, line in enumerate(above) if not line.strip()),
                                                 default=0):])
                if not m:
                    problems.append(f"course/{a.name}.toml: core test {c} of task {t.id} does not exist")
                elif f"mark.{t.marker}" not in decorators and not (param and re.search(
                        rf"[\"']{re.escape(param)}[\"']\s*:\s*pytest\.mark\.{t.marker}\b", text)):
                    problems.append(f"course/{a.name}.toml: core test {c} of task {t.id} lacks the marker {t.marker}")
    return problems


def section(text: str, title: str) -> str:
    """The Markdown section headed ``## title`` (up to the next ``## ``), or ''."""
    m = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    return m.group(1) if m else ""


def _document_problems(root: Path, a: Assignment) -> list:
    problems = []
    committed = Path(root) / HANDOUTS / f"{a.name}.md"
    if not committed.is_file() or committed.read_text(encoding="utf-8") != handout(a, root):
        problems.append(f"{HANDOUTS}/{a.name}.md is missing or differs from the manifest: regenerate it with "
                        f"`minialign course handouts`")
    chapter = Path(root) / a.chapter
    text = exercises_of(chapter.read_text(encoding="utf-8")) if chapter.is_file() else ""
    if not text:
        problems.append(f"{a.chapter} has no '## Exercises' section")
    elif text != exercises(a):
        problems.append(f"{a.chapter}: its Exercises section (its last) differs from course/{a.name}.toml: "
                        "regenerate it with `minialign course handouts`")
    solutions = Path(root) / SOLUTIONS / f"{a.name}.md"
    body = solutions.read_text(encoding="utf-8") if solutions.is_file() else ""
    for q in list(a.questions) + list(a.experiments):
        if not re.search(rf"^## {re.escape(q.id)}\b", body, flags=re.M):
            problems.append(f"{SOLUTIONS}/{a.name}.md has no solution '## {q.id}' for {q.id}")
    for e in a.experiments:
        for spec in e.uses:
            path, qualname, _ = split_spec(spec)
            try:
                _find_function(ast.parse((Path(root) / path).read_text(encoding="utf-8")), qualname, spec)
            except (OSError, SyntaxError, CourseError) as err:
                problems.append(f"course/{a.name}.toml, experiment {e.id}: {spec} does not resolve ({err})")
    return problems


EQUATION_REF = re.compile(r"\(([1-8]\.\d{1,2})\)|\bEqs?\.\s*([1-8]\.\d{1,2})\b")


def _equation_reference_problems(root: Path, known: dict) -> list:
    """Every equation a manifest's text cites, "(5.8)" or "Eq. 7.9", is a \\tag of some chapter."""
    tags = set()
    for path in (Path(root) / "chapters").glob("*.md"):
        tags |= set(re.findall(r"\\tag\{(\d+\.\d+)\}", path.read_text(encoding="utf-8")))
    problems = []
    for a in known.values():
        texts = [a.intro, *a.read] + [x.text for x in (*a.tasks, *a.questions, *a.experiments)]
        cited = {m.group(1) or m.group(2) for text in texts for m in EQUATION_REF.finditer(text)}
        problems += [f"course/{a.name}.toml cites equation ({n}), which no chapter has" for n in sorted(cited - tags)]
    return problems


TASK_RANGE = re.compile(r"`task(\d+)_(\d+)`\s*(?:–|-|…|to)\s*`task(\d+)_(\d+)`")


def _chapter_marker_problems(root: Path, known: dict) -> list:
    """Every task marker a chapter names is a manifest's; a range of markers spans its whole assignment; the
    map's table of task markers is the one the manifests give."""
    wanted = {t.marker for a in known.values() for t in a.tasks}
    last = {a.number: len(a.tasks) for a in known.values()}
    problems = []
    for path in sorted((Path(root) / "chapters").glob("*.md")):
        text = path.read_text(encoding="utf-8")
        rel = f"chapters/{path.name}"
        for m in sorted(set(re.findall(r"\btask\d+_\d+\b", text)) - wanted):
            problems.append(f"{rel} names task marker {m}, which no manifest has")
        for a_n, a_m, b_n, b_m in TASK_RANGE.findall(text):
            if a_n != b_n or a_m != "1" or int(b_m) != last.get(int(a_n)):
                problems.append(f"{rel}: the range `task{a_n}_{a_m}`–`task{b_n}_{b_m}` is not the tasks of one "
                                f"assignment (chapter {a_n} has {last.get(int(a_n), 0)})")
    chapter_map = Path(root) / MAP
    if chapter_map.is_file():
        text = chapter_map.read_text(encoding="utf-8")
        try:
            first, stop = marker_block(text)
            if text.split("\n")[first:stop] != marker_rows(known):
                problems.append(f"{MAP}: its table of task markers differs from the manifests: regenerate it with "
                                "`minialign course handouts`")
        except CourseError as e:
            problems.append(str(e))
    return problems


def stub_run_problems(run: Run, known: dict) -> list:
    """(b) In a tree with every unit stubbed, every test passes or fails because of a stub's
    NotImplementedError; (a) every task test fails so. Collection errors are problems too."""
    problems = [f"{e['nodeid']} could not be collected: {e['message']} (code that runs when the module is imported "
                "must not reach a unit: a collection error stops a student's whole `pytest -m ...` run)"
                for e in run.collect_errors]
    task_ids = {t.id for a in known.values() for t in a.tasks}
    for t in run.tests.values():
        if t.outcome == "failed" and not t.stubs:
            problems.append(f"{t.nodeid} fails without reaching a stub: {t.error}: {t.message}")
        elif t.outcome == "failed" and not set(t.stub_tasks) <= task_ids:
            problems.append(f"{t.nodeid} fails at a stub of unknown task {t.stub_tasks}")
        elif t.tasks and t.outcome != "failed":
            problems.append(f"{t.nodeid} (a test of {', '.join(t.tasks)}) {t.outcome} with every unit stubbed")
    return problems


def student_grade_problems(a: Assignment, g: Grade) -> tuple:
    """(a) and (e) for a student tree: every test of the assignment fails because of one of its stubs, and
    the grade is 0. Returns (problems, the units no test was seen failing at first)."""
    problems = [f"{e['nodeid']} could not be collected in the student tree: {e['message']}"
                for e in g.run.collect_errors]
    mine = set(a.task_ids)
    seen = set()
    for ts in g.tasks:
        for t in ts.tests:
            if t.outcome != "failed":
                problems.append(f"{t.nodeid} (task {ts.task.id}) {t.outcome} in the student tree: it does not test "
                                f"the task's code")
            elif not t.stubs:
                problems.append(f"{t.nodeid} (task {ts.task.id}) fails in the student tree without reaching a stub: "
                                f"{t.error}: {t.message}")
            elif not set(t.stub_tasks) <= mine:
                problems.append(f"{t.nodeid} fails at a stub of another assignment: {t.stub_tasks}")
            else:
                seen |= {s.split(" ", 1)[1] for s in t.stubs if s.split(" ", 1)[0] == ts.task.id}
    if g.score != 0:
        problems.append(f"the untouched student tree of {a.name} scores {g.score:g}, not 0")
    unproven = [(u, t) for u, t in a.units() if u not in seen]
    return problems, unproven


def mutant_problems(units, task: Task, workdir: Path, root: Path = ROOT) -> list:
    """(d) for units of one task that no test of the student tree reached first: in a tree with only them
    stubbed, a test of their task must fail at each one (the run stops once every one has). A unit still
    unseen is then tried alone. Returns the units that no test of their task fails at."""
    def failing(stubbed, where):
        tree = write_tree(root, where, [(u, task) for u in stubbed])
        run = run_tests(tree, ["-m", task.marker, *marked_files(tree, [task.marker])], until=stubbed)
        return {u for t in run.tests.values() if t.outcome == "failed" for u in t.stub_units}

    workdir = Path(workdir)
    seen = failing(units, workdir / "together")
    unseen = [u for u in units if u not in seen]
    if len(units) > 1:
        unseen = [u for i, u in enumerate(unseen) if u not in failing([u], workdir / f"alone{i}")]
    return [f"unit {u} of task {task.id} is ungraded: with it stubbed, no test of {task.marker} fails at it"
            for u in unseen]


@dataclass
class AssignmentCheck:
    name: str
    problems: list
    seconds: dict           # make, grade (student tree), mutants, restore, grade (solution)
    student_score: float
    solution_score: float | None   # None: not graded here (grade_solution=False)
    max_score: float
    mutants: list           # units that needed a mutant run


def check_assignment(name: str, workdir: Path, root: Path = ROOT, extra_tests=None,
                     grade_solution: bool = True) -> AssignmentCheck:
    """The release check of one assignment, (a) and (c)–(e): make the student tree, grade it (0, every task test
    failing at one of its stubs), prove every unit graded, restore the solution (byte-identical to the
    repository) and grade it again (full marks; ``grade_solution=False`` leaves that grade to the caller — the
    test suite has the Gradescope bundle grade each solution — and reports its score as None)."""
    a = load(name, root)
    workdir = Path(workdir)
    seconds, problems = {}, []
    t0 = time.perf_counter()
    tree = make(name, workdir / "student", root)
    seconds["make"] = time.perf_counter() - t0
    if (tree / SOLUTIONS).exists():
        problems.append(f"the student tree holds {SOLUTIONS}")
    t0 = time.perf_counter()
    student = grade(tree, extra_tests=extra_tests, root=root, run_stubs=True)
    seconds["grade student tree"] = time.perf_counter() - t0
    found, unproven = student_grade_problems(a, student)
    problems += found
    for module, where in (("minialign", "<grading copy>/minialign/"), ("minialign.kernels", "<grading copy>/kernels/")):
        if not str(student.modules.get(module)).startswith(where):
            problems.append(f"the grader imported {module} from {student.modules.get(module)}, not from the "
                            "student's files in the grading copy")
    t0 = time.perf_counter()
    for task in a.tasks:
        units = [u for u, t in unproven if t is task]
        if units:
            problems += mutant_problems(units, task, workdir / f"mutant-{task.marker}", root)
    seconds["mutants"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    restore(tree, name, root)
    problems += [f"restored tree of {name}: {d}" for d in tree_differences(tree, root)]
    seconds["restore"] = time.perf_counter() - t0
    solution_score = None
    if grade_solution:
        t0 = time.perf_counter()
        solution = grade(tree, name, extra_tests=extra_tests, root=root)
        seconds["grade solution"] = time.perf_counter() - t0
        solution_score = solution.score
        if solution.score != solution.max_score:
            problems.append(f"the solution of {name} scores {solution.score:g} of {solution.max_score:g}:\n"
                            + solution.table())
    return AssignmentCheck(name, problems, seconds, student.score, solution_score, a.points,
                           [u for u, _ in unproven])


def check_stub_tree(workdir: Path, root: Path = ROOT) -> tuple:
    """(b): the whole suite (but this release check) in one tree with the units of every assignment stubbed.
    Returns (problems, the run)."""
    known = assignments(root)
    units = [ut for a in known.values() for ut in a.units()]
    tree = write_tree(root, Path(workdir), units)
    files = [p for p in sorted(f.relative_to(tree).as_posix() for f in (tree / "tests").glob("test_*.py"))
             if p not in NOT_IN_STUB_RUN]
    run = run_tests(tree, files)
    return stub_run_problems(run, known), run


def check(names=None, root: Path = ROOT, out=print, mutants: bool = False, all_units: bool = False,
          limit=None, accept_shrink: bool = False) -> list:
    """The whole release check, for instructors editing manifests; returns the problems found. With ``mutants``,
    first the mutation pass (course/mutate.py) over the stale units (``all_units``: every unit), which rewrites
    course/mutants.json; either way the record is then checked: no stale unit, no unlisted survivor, no unit
    shrunk below its recorded size."""
    from .mutate import LIMIT, mutation_pass

    root = require_repository(root)
    known = assignments(root)
    names = list(known) if not names else [load(n, root).name for n in names]  # an unknown name fails now
    problems = static_problems(root)
    out(f"static checks: {len(problems)} problems")
    if problems:
        return problems
    if not accept_shrink:
        problems += shrink_problems(root, names)
    if mutants and not problems:
        mutation_pass(names, limit=LIMIT if limit is None else limit, only_stale=not all_units, root=root, out=out)
    found = mutation_record_problems(root, names, out=None if mutants else out)  # the pass printed its summary
    out(f"mutants: {len(found)} problems")
    problems += found
    if mutants:
        return problems
    with tempfile.TemporaryDirectory(prefix="minialign-check-") as tmp:
        t0 = time.perf_counter()
        found, run = check_stub_tree(Path(tmp) / "stubbed", root)
        out(f"(b) every unit stubbed: {len(run.tests)} tests, {sum(t.outcome == 'passed' for t in run.tests.values())} "
            f"pass, the others fail at a stub ({time.perf_counter() - t0:.0f} s); {len(found)} problems")
        problems += found
        for name in names:
            c = check_assignment(name, Path(tmp) / name, root)
            times = ", ".join(f"{k} {v:.1f} s" for k, v in c.seconds.items())
            out(f"{name}: student tree {c.student_score:g} / {c.max_score:g}, solution {c.solution_score:g} / "
                f"{c.max_score:g}; mutant runs for {len(c.mutants)} units; {times}; {len(c.problems)} problems")
            problems += c.problems
    return problems




# ---------------------------------------------------------------------------------------- mutants and shrinking
# A unit whose body falls below this fraction of its recorded size has lost work its task asks for (a refactoring
# moved it to a helper outside the unit, say): the release check fails until the manifest moves the unit with
# it, or the smaller size is accepted on purpose (``course check --mutants --accept-shrink``).
SHRINK_FLOOR = 0.7


def shrink_problems(root: Path = ROOT, names=None) -> list:
    """Units whose body is now smaller than ``SHRINK_FLOOR`` of the size recorded in course/mutants.json (AST
    nodes of the body: blank lines, comments and formatting do not count)."""
    from .mutate import RECORD, load_record, unit_size

    record = load_record(root).get("units", {})
    problems = []
    for a in assignments(root).values():
        if names and a.name not in names:
            continue
        for spec, task in a.units():
            before = record.get(spec, {}).get("size")
            if before is None:
                continue
            now = unit_size(spec, task, root)
            if now < SHRINK_FLOOR * before:
                problems.append(f"unit {spec} (task {task.id}) shrank from {before} to {now} AST nodes (below "
                                f"{SHRINK_FLOOR:.0%} of the size in {RECORD}): its task asks for the work it no longer "
                                f"holds. Move the unit in course/{a.name}.toml to where the work went, or accept the "
                                "smaller unit with `python -m minialign course check --mutants --accept-shrink`")
    return problems


def mutation_record_problems(root: Path = ROOT, names=None, out=None) -> list:
    """From the committed record course/mutants.json, per assignment: units not in it or whose hash no longer
    matches (stale: the unit or its task's tests changed), survivors the manifest does not list as equivalent,
    listed equivalents the tests now catch. ``out`` gets each assignment's summary (mutants tried, caught, listed
    equivalent)."""
    from .mutate import REFRESH, equivalents, load_record, mutation_problems, stale_units, summary

    record = load_record(root).get("units", {})
    stale = stale_units(root)
    problems = []
    for a in assignments(root).values():
        if names and a.name not in names:
            continue
        mine = [spec for n, spec in stale if n == a.name]
        if mine:
            problems.append(f"{a.name}: the mutation record is stale for {len(mine)} units ({', '.join(mine)}): "
                            f"refresh it with `{REFRESH} {a.name}`")
        units = {s: record[s] for s, _ in a.units() if s in record}
        try:
            equivalent = equivalents(a.name, root)
        except CourseError as e:
            problems.append(str(e))
            continue
        problems += mutation_problems(a, units, equivalent)
        problems += [f"course/{a.name}.toml lists an equivalent mutant of {u}, which is not a unit of {a.name}"
                     for u, _ in equivalent if u not in dict(a.units())]
        problems += unknown_equivalents(a, equivalent, root)
        if out is not None:
            out(summary(a, units, equivalent))
    return problems


def unknown_equivalents(a: Assignment, equivalent: dict, root: Path = ROOT) -> list:
    """Listed equivalents that name no mutant the unit has now (the unit changed and its mutants were renumbered,
    or the id is mistyped): a listing must name a mutant that exists, or it hides nothing and misleads."""
    from .mutate import mutants_of

    units = dict(a.units())
    problems = []
    for spec in sorted({u for u, _ in equivalent if u in units}):
        ids = {m.id for m in mutants_of(spec, units[spec], root)}
        problems += [f"course/{a.name}.toml lists mutant {mid} of {spec} as equivalent, but the unit has no such "
                     f"mutant now (its mutants: `python -m minialign course check --mutants {a.name}` lists the "
                     "survivors): remove the entry or give the mutant's current id"
                     for u, mid in sorted(equivalent) if u == spec and mid not in ids]
    return problems

