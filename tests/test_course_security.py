"""Attacks on the course grader (minialign/course/sandbox.py, policy.py, grade.py), each written here as a
student would hand it in: code placed only in the files a student hands in. Each must score no more than the
honest work in the tree (here: the stubs, 0), no hidden test's source may appear in any output, and no
process may be left behind.

Most run on a miniature course (a repository of one module, three tasks and a few tests, built in a temporary
folder) so that a grade takes seconds; the last ones run on the real 03-f-divergences. A body the policy refuses
never runs; the process boundary is also tried on its own (``check_policy=False``), as if a body had escaped
the policy.
"""
import importlib
import json
import os
import pwd
import re
import shutil
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from minialign import course
from minialign.course import policy, sandbox

grading = importlib.import_module("minialign.course.grade")  # the module (the package's `grade` is its function)

ROOT = Path(__file__).resolve().parent.parent
STUDENT_TREE = (ROOT / course.HANDOUT).exists()
instructor_only = pytest.mark.skipif(STUDENT_TREE, reason="the grader is tried in the instructor's repository")

MODULE = '''"""A miniature library: three units, one per task."""
import os

import numpy as np

SCALE = 2.0
TABLE = {"kind": "mini"}


def double(x):
    """Task 1.1: twice x."""
    y = np.asarray(x, dtype=float)
    return y * SCALE


def total(x):
    """Task 1.2: the sum of twice x (it calls task 1.1's unit)."""
    return float(np.sum(double(x)))


def shifted(x, by):
    """Task 1.3: x - by, with a region."""
    out = np.asarray(x, dtype=float)
    # BEGIN SOLUTION shift
    out = out - by
    # END SOLUTION
    return out
'''

TESTS = '''import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minialign.mini import double, shifted, total


@pytest.mark.task1_1
def test_double_on_known_values():
    got = np.asarray(double([1.0, 2.0]), dtype=float)
    assert np.array_equal(got, [2.0, 4.0]), got


@pytest.mark.task1_1
def test_double_of_zero_is_zero():
    assert float(np.asarray(double(0.0), dtype=float)) == 0.0


@pytest.mark.task1_1
def test_double_keeps_the_shape():
    assert np.asarray(double(np.ones((2, 3))), dtype=float).shape == (2, 3)


@pytest.mark.task1_2
def test_total_on_known_values():
    assert total([1.0, 2.0, 3.0]) == 12.0


@pytest.mark.task1_2
def test_total_of_nothing_is_zero():
    assert total([]) == 0.0


@pytest.mark.task1_3
def test_shifted_on_known_values():
    assert np.array_equal(np.asarray(shifted([3.0, 4.0], 1.0), dtype=float), [2.0, 3.0])


@pytest.mark.task1_3
@given(st.integers(0, 10))
def test_shifting_by_zero_changes_nothing(v):
    assert float(np.asarray(shifted([v], 0.0), dtype=float)[0]) == v
'''

MANIFEST = '''number = 1
title = "a miniature course"
chapter = "chapters/01-mini.md"
read = []
core_cap = 0.5

[[task]]
id = "1.1"
title = "double"
points = 10
minutes = 1
units = ["minialign/mini.py::double"]
text = "Twice x."
core = ["tests/test_mini.py::test_double_on_known_values"]

[[task]]
id = "1.2"
title = "total"
points = 10
minutes = 1
units = ["minialign/mini.py::total"]
text = "The sum of twice x."

[[task]]
id = "1.3"
title = "shift"
points = 10
minutes = 1
units = ["minialign/mini.py::shifted#shift"]
text = "x - by."
'''

CONFTEST = '''import os

from hypothesis import Phase, settings

import minialign  # noqa: F401

# as the repository's conftest: the grader's profile does not shrink
settings.register_profile("grading", max_examples=20, derandomize=True,
                          phases=[p for p in Phase if p.name not in ("shrink", "explain")])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
'''

HIDDEN = '''import numpy as np
import pytest

from minialign.mini import double

EXPECTED = np.array([-2.0, 6.0])  # computed before any student code runs


@pytest.mark.task1_1
def test_hidden_double_on_other_values():
    """HIDDEN-SENTINEL-SOURCE: the instructor's test; its source must never reach a student."""
    got = np.asarray(double([-1.0, 3.0]), dtype=float)
    assert np.array_equal(got, EXPECTED), "HIDDEN-SENTINEL-MESSAGE"
'''


def _mini_repo(where: Path) -> Path:
    files = {
        "pyproject.toml": '[tool.pytest.ini_options]\nmarkers = ["task1_1: t", "task1_2: t", "task1_3: t"]\n',
        "course/01-mini.toml": MANIFEST,
        "chapters/01-mini.md": "# a miniature chapter\n",
        "minialign/__init__.py": "",
        "minialign/mini.py": MODULE,
        "tests/conftest.py": CONFTEST,
        "tests/test_mini.py": TESTS,
    }
    for rel, text in files.items():
        (where / rel).parent.mkdir(parents=True, exist_ok=True)
        (where / rel).write_text(text)
    return where


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return _mini_repo(tmp_path_factory.mktemp("mini-repo"))


def _student(tmp_path, mini, bodies=None, module=None, name="student"):
    """A student tree of the miniature course: every unit stubbed, then ``bodies`` (unit name → its new body
    text) written in place of the stubs, or the whole module replaced by ``module``."""
    tree = course.make("01-mini", tmp_path / name, mini)
    path = tree / "minialign" / "mini.py"
    text = path.read_text()
    for unit, body in (bodies or {}).items():
        stub = next(line for line in text.splitlines(keepends=True) if f"mini.py::{unit}" in line)
        indent = stub[:len(stub) - len(stub.lstrip())]
        text = text.replace(stub, textwrap.indent(textwrap.dedent(body).strip() + "\n", indent))
    path.write_text(module if module is not None else text)
    return tree


HONEST = {"double": "y = np.asarray(x, dtype=float)\nreturn y * SCALE",
          "total": "return float(np.sum(double(x)))",
          "shifted#shift": "out = out - by"}


def _points(g):
    return {t.task.id: t.score for t in g.tasks}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()
    except OSError:
        return False


# ---------------------------------------------------------------------------------------- the honest work
def test_each_task_is_graded_on_its_own_a_stub_or_bug_elsewhere_costs_only_its_task(tmp_path, mini):
    """Task 1.2's unit calls task 1.1's: with 1.1 stubbed, or wrong, 1.2 still keeps its points (the grader
    runs a task with every other unit the instructor's); each task stubbed in turn costs exactly its points;
    the stubs score 0."""
    assert course.grade(_student(tmp_path, mini), root=mini, timeout=60).score == 0
    for i, unit in enumerate(HONEST):
        bodies = {u: b for u, b in HONEST.items() if u != unit}
        g = course.grade(_student(tmp_path, mini, bodies, name=f"stub{i}"), root=mini, timeout=60)
        task = course.load("01-mini", mini).tasks[i].id
        assert _points(g) == {t: (0 if t == task else 10) for t in ("1.1", "1.2", "1.3")}, g.table()


def test_a_bug_costs_its_own_task_and_a_failed_core_test_caps_it_at_the_manifest_s_fraction(tmp_path, mini):
    """double times 3 passes 2 of 3 of its tests (zero and the shape), 6.67 of 10 by the fraction; its core test
    failed, so it keeps core_cap = 0.5 of its points, and the table says why; task 1.2, which calls double,
    keeps all of its points."""
    wrong = {**HONEST, "double": "return np.asarray(x, dtype=float) * 3"}
    g = course.grade(_student(tmp_path, mini, wrong, name="core"), root=mini, timeout=60, jobs=2)
    t = g.tasks[0]
    assert t.passed == 2 and t.total == 3 and t.core_failed == ["tests/test_mini.py::test_double_on_known_values"]
    assert _points(g) == {"1.1": 5.0, "1.2": 10, "1.3": 10}, g.table()
    assert "test_double_on_known_values [core]" in g.table() and "at most 0.5 of the task's points" in g.table()
    assert f"{g.score:g} / 30" in g.table() and g.gradescope()["score"] == g.score == 25


# ---------------------------------------------------------------------------------------- the policy
ATTACK_BODIES = {
    # rewrite the report, patch pytest, reach the harness through gc
    "import": "import gc\nreturn gc.get_objects()",
    "exit": "os._exit(0)",
    "interrupt": "raise KeyboardInterrupt",
    "system exit": "raise SystemExit(0)",
    "pytest exit": "pytest.exit('done')",
    "helpers no-op": "np.testing.assert_allclose = lambda *a, **k: None\nreturn x",
    "module table": "TABLE['kind'] = 'patched'\nreturn x",
    "module mutation": "TABLE.update(kind='patched')\nreturn x",
    "frame oracle": "return (lambda: (yield))().gi_frame.f_back.f_locals['expected']",
    "frame through sys": "return sys._getframe(1).f_locals['expected']",
    "ndarray subclass": "class A(np.ndarray):\n    def __eq__(self, other):\n        return True\nreturn A(1)",
    "type()": "A = type('A', (np.ndarray,), {'__eq__': lambda s, o: True})\nreturn A(1)",
    "dunder": "return x.__class__.__base__",
    "format string": "return '{0.__class__}'.format(x)",
    "open": "open('tests/test_hidden_mini.py', 'w').write('')\nreturn x",
    "exec": "exec('import os')\nreturn x",
    "getattr": "return getattr(np, 'load')('x.npy')",
    "numpy file io": "np.save('tests/x.npy', x)\nreturn x",
    "global": "global SCALE\nSCALE = 1.0\nreturn x",
    "private": "return np._core",
    "module from os": "return os.getcwd()",
}


@pytest.mark.parametrize("attack", list(ATTACK_BODIES))
def test_a_body_that_breaks_the_policy_is_refused_naming_line_and_rule(attack, mini):
    text = (mini / "minialign" / "mini.py").read_text()
    body = textwrap.indent(ATTACK_BODIES[attack] + "\n", "    ")
    student = text.replace("    y = np.asarray(x, dtype=float)\n    return y * SCALE\n", body)
    task = course.load("01-mini", mini).tasks[0]
    s = sandbox.splice("minialign/mini.py", text, student, task.units, task, "minialign", root=mini)
    assert s.problems and s.source == text, attack
    first = student.splitlines().index(body.splitlines()[0]) + 1
    assert any(f"line {first + k}:" in p for p in s.problems for k in range(len(body.splitlines()))), s.problems
    assert all("rule '" in p for p in s.problems)


@instructor_only
def test_every_unit_of_the_course_as_written_passes_the_policy_and_splices_back_to_itself(tmp_path):
    """The policy refuses no honest body: the solution of every unit of the eight assignments passes it, and so
    does every stub (whose message may name a unit such as Tensor.__mul__)."""
    for a in course.assignments(ROOT).values():
        texts, missing = grading.read_units_files(ROOT, a)
        stubbed, _ = grading.read_units_files(course.make(a.name, tmp_path / a.name, ROOT), a)
        for t in a.tasks:
            files, problems = grading.spliced_files(t, texts, missing, ROOT)
            assert not problems, (a.name, t.id, problems)
            assert all(files[rel] == texts[rel] for rel in files)
            assert not grading.spliced_files(t, stubbed, {}, ROOT)[1], (a.name, t.id)


def test_the_policy_is_in_every_handout():
    for a in course.assignments(ROOT).values():
        text = course.handout(a, ROOT)
        assert all(f"**{rule}**" in text for rule in policy.RULES), a.name


def test_refused_bodies_score_zero_and_module_level_code_never_runs(tmp_path, mini):
    """Everything outside the units is the instructor's: module-level attacks (rewriting the report, patching
    pytest, sys.exit at import) never run; a body breaking the policy gives its task 0 and runs nothing."""
    ran = tmp_path / "module-level-code-ran"
    module = MODULE.replace('SCALE = 2.0', f'SCALE = 2.0\nopen({str(ran)!r}, "w").write("x")\nimport sys\n'
                                         'sys.exit(0)').replace(
        "    y = np.asarray(x, dtype=float)\n    return y * SCALE\n", "    import gc\n    return x\n")
    tree = _student(tmp_path, mini, module=module)
    g = course.grade(tree, root=mini, timeout=60, jobs=2)
    assert _points(g) == {"1.1": 0, "1.2": 10, "1.3": 10}, g.table()
    assert not ran.exists()
    assert "minialign/mini.py, line" in g.table() and "rule 'import'" in g.table()


def test_a_symlink_to_the_instructor_s_file_is_refused(tmp_path, mini):
    tree = _student(tmp_path, mini)
    (tree / "minialign" / "mini.py").unlink()
    (tree / "minialign" / "mini.py").symlink_to(mini / "minialign" / "mini.py")
    g = course.grade(tree, root=mini, timeout=60)
    assert g.score == 0 and "symbolic link" in g.table()
    (tree / "minialign" / "mini.py").unlink()
    (tree / "minialign" / "mini.py").mkdir()
    assert course.grade(tree, root=mini, timeout=60).score == 0


def test_a_syntax_error_is_shown_with_file_and_line(tmp_path, mini):
    tree = _student(tmp_path, mini, {"double": "return (x +"})
    line = (tree / "minialign" / "mini.py").read_text().splitlines().index("    return (x +") + 1
    g = course.grade(tree, root=mini, timeout=60)
    assert g.score == 0 and f"SyntaxError in minialign/mini.py, line {line}" in g.table(), g.table()


# ---------------------------------------------------------------------------------------- the process boundary
def test_an_infinite_loop_and_a_memory_hog_zero_only_their_own_task(tmp_path, mini):
    """Both pass the policy: the per-task timeout and the memory limit stop them, and the tests that did not
    report fail with the run's end named."""
    bodies = {"double": "while True:\n    pass", "total": "x = []\nwhile True:\n    x.append(np.ones(10**7))"}
    t0 = time.monotonic()
    g = course.grade(_student(tmp_path, mini, bodies), root=mini, timeout=12, jobs=2,
                     limits={"memory_bytes": 2 << 30})
    assert time.monotonic() - t0 < 60
    assert _points(g) == {"1.1": 0, "1.2": 0, "1.3": 0}, g.table()
    assert "timed out after 12 s" in g.table() and "MemoryError" in g.table()


def test_unprivileged_exits_interrupts_and_kills_fail_their_tests_with_the_reason(tmp_path, mini):
    """As if a body had escaped the policy (check_policy=False): os._exit(0) after forging nothing, a
    KeyboardInterrupt, a SIGKILL of its own process. Each task's unreported tests fail, the end named."""
    bodies = {"double": "os._exit(0)", "total": "raise KeyboardInterrupt",
              "shifted#shift": "os.kill(os.getpid(), 9)"}
    g = course.grade(_student(tmp_path, mini, bodies), root=mini, timeout=60, check_policy=False, jobs=2)
    assert g.score == 0, g.table()
    table = g.table()
    assert "exit status 0" in table and "exit status 2" in table and "killed by signal SIGKILL" in table
    assert all(t.outcome == "failed" for t in g.run.tests.values())


def _unprivileged_user():
    """The (uid, gid) the grader drops to; skips where it stays the grader's own user (not root, or no
    interpreter the unprivileged user can run) — unless MINIALIGN_EXPECT_UNPRIVILEGED=1 (.ci/run sets it as
    root, having made the venv from a Python that `nobody` can run): then that is a failure."""
    user, who = sandbox.grader_identity()
    if user is None:
        if os.environ.get("MINIALIGN_EXPECT_UNPRIVILEGED") == "1":
            pytest.fail(f"MINIALIGN_EXPECT_UNPRIVILEGED=1, but students' code would run as {who}")
        pytest.skip(f"students' code runs unprivileged only when the grader is root and that user can run this "
                    f"Python; here it runs as {who}")
    return user


def test_as_root_a_students_code_runs_unprivileged_and_cannot_write_the_copy_or_the_submission(tmp_path, mini):
    """As if bodies had escaped the policy (check_policy=False): 1.1 is right only when it does not run as root,
    1.2 appends to its own module in the grading copy, 1.3 writes a file into the student's own tree. The
    first keeps its points, the two writes fail with a permission error (root's would have succeeded), and
    nothing changed on disk."""
    user = _unprivileged_user()
    tree = tmp_path / "student"
    marker = tree / "written-by-the-students-code"
    bodies = {"double": f"y = np.asarray(x, dtype=float)\nreturn y * SCALE if os.getuid() == {user[0]} else y",
              "total": "open(__file__, 'a').write('# changed')\nreturn float(np.sum(double(x)))",
              "shifted#shift": f"open({str(marker)!r}, 'w').write('x')\nout = out - by"}
    _student(tmp_path, mini, bodies)
    before = (tree / "minialign" / "mini.py").read_text()
    g = course.grade(tree, root=mini, timeout=60, check_policy=False, jobs=2)
    assert g.ran_as.startswith(f"{pwd.getpwuid(user[0]).pw_name} (uid {user[0]}"), g.ran_as
    assert _points(g) == {"1.1": 10, "1.2": 0, "1.3": 0}, g.table()
    assert g.table().count("PermissionError") >= 2, g.table()
    assert not marker.exists() and (tree / "minialign" / "mini.py").read_text() == before
    assert (mini / "minialign" / "mini.py").read_text() == MODULE


@pytest.fixture
def writable():
    """A folder the code under test can write to whoever it runs as (``nobody`` when the grader is root): the
    attacks below leave their traces there."""
    where = Path(tempfile.mkdtemp(prefix="minialign-attack-"))
    os.chmod(where, 0o777)
    yield where
    shutil.rmtree(where, ignore_errors=True)


def test_a_detached_child_holding_the_pipes_is_killed_and_cannot_rewrite_the_results(tmp_path, mini, writable):
    """A forked child that leaves the group (setsid), holds stdout and the channel and later rewrites the
    results file: the grade ends without waiting for it, the child is dead when grade returns, and the
    results written after stay the parent's."""
    pidfile, results = writable / "pid", writable / "results.json"
    body = (f"if os.fork() == 0:\n    os.setsid()\n    open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
            f"    import time\n    time.sleep(3)\n    open({str(results)!r}, 'w').write('{{\"score\": 30}}')\n"
            f"    os._exit(0)\ny = np.asarray(x, dtype=float)\nreturn y * SCALE")
    tree = _student(tmp_path, mini, {"double": body})
    t0 = time.monotonic()
    g = course.grade(tree, root=mini, timeout=60, check_policy=False)
    assert time.monotonic() - t0 < 50
    results.write_text(json.dumps(g.gradescope()))
    pid = int(pidfile.read_text())
    assert not _alive(pid)
    time.sleep(3.5)
    assert json.loads(results.read_text())["score"] == g.score == 10


def test_a_fork_bomb_is_stopped_and_leaves_no_process(tmp_path, mini, writable):
    body = ("main = os.getpid()\nfor _ in range(6):\n    os.fork()\nif os.getpid() != main:\n"
            f"    open({str(writable)!r} + '/pid' + str(os.getpid()), 'w').write(str(os.getpid()))\n"
            "    import time\n    time.sleep(30)\nraise ValueError('forked')")
    tree = _student(tmp_path, mini, {"double": body})
    t0 = time.monotonic()
    g = course.grade(tree, root=mini, timeout=10, check_policy=False)
    assert time.monotonic() - t0 < 60
    assert g.score == 0, g.table()
    forked = [int(p.read_text()) for p in writable.glob("pid*") if p.read_text()]
    assert forked and not any(_alive(pid) for pid in forked)


def test_a_failing_property_test_shows_its_example_when_graded(tmp_path, mini):
    g = course.grade(_student(tmp_path, mini, {"shifted#shift": "out = out - by - 1"}), root=mini, timeout=60)
    assert g.score == 0
    assert "test_shifting_by_zero_changes_nothing: AssertionError" in g.table()
    assert re.search(r"(Falsifying example|Failing test case): test_shifting_by_zero_changes_nothing\(v=\d+\)",
                     g.table()), g.table()


# ---------------------------------------------------------------------------------------- hidden tests
def test_hidden_tests_show_pass_or_fail_by_name_only(tmp_path, mini, capsys):
    """A hidden test's source, its assertion message, an exception's class name and the module's __file__
    never reach the output; the hidden test counts like the others."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "test_hidden_mini.py").write_text(HIDDEN)
    wrong = {"double": "raise ValueError('leak ' + repr(x))"}
    g = course.grade(_student(tmp_path, mini, wrong), root=mini, extra_tests=hidden, timeout=60)
    out = g.table() + json.dumps(g.gradescope())
    assert "tests/test_hidden_mini.py::test_hidden_double_on_other_values [hidden]: failed" in out
    assert "SENTINEL" not in out and "leak" in out  # the visible test's message shows, the hidden one's not
    honest = {"double": HONEST["double"]}
    good = course.grade(_student(tmp_path, mini, honest, name="honest"), root=mini, extra_tests=hidden, timeout=60)
    assert good.tasks[0].passed == good.tasks[0].total == 4 and good.score == 10
    assert "SENTINEL" not in good.table() + json.dumps(good.gradescope())


def test_a_hidden_test_without_a_marker_of_the_assignment_is_refused(tmp_path, mini):
    hidden = tmp_path / "test_hidden_unmarked.py"
    hidden.write_text(HIDDEN.replace("@pytest.mark.task1_1\n", "@pytest.mark.task5_1\n"))
    with pytest.raises(course.CourseError, match="must carry one of task1_1, task1_2, task1_3"):
        course.grade(_student(tmp_path, mini), root=mini, extra_tests=hidden, timeout=60)


# ---------------------------------------------------------------------------------------- trees and uploads
def test_a_tree_made_for_one_assignment_is_not_graded_as_another(tmp_path):
    tree = course.make("03-f-divergences", tmp_path / "s", ROOT)
    with pytest.raises(course.CourseError, match="was made for 03-f-divergences, not 05-rlhf"):
        course.grade(tree, "05-rlhf", root=ROOT)


def test_a_loose_file_upload_is_graded_and_a_missing_file_scores_zero_with_the_reason(tmp_path, mini):
    upload = tmp_path / "upload"
    upload.mkdir()
    tree = _student(tmp_path, mini, {"double": HONEST["double"]})
    (upload / "mini.py").write_text((tree / "minialign" / "mini.py").read_text())
    assert course.grade(upload, "01-mini", root=mini, timeout=60).score == 10
    empty = tmp_path / "empty"
    empty.mkdir()
    g = course.grade(empty, "01-mini", root=mini, timeout=60)
    assert g.score == 0 and "has no minialign/mini.py" in g.table()
    with pytest.raises(course.CourseError, match="name it with --assignment"):
        course.grade(empty, root=mini)


# ---------------------------------------------------------------------------------------- a class
def test_a_class_is_graded_in_parallel_and_a_broken_submission_never_stops_the_others(tmp_path, mini):
    subs = tmp_path / "class"
    subs.mkdir()
    _student(subs, mini, HONEST, name="alice")
    _student(subs, mini, name="bob")                                  # the stubs
    _student(subs, mini, {"double": "return (x +"}, name="carol")      # does not parse
    _student(subs, mini, {"total": "import os\nreturn 0.0"}, name="dave")
    (subs / "erin").mkdir()                                           # handed in nothing
    rows = grading.grade_all(subs, "01-mini", jobs=2, root=mini, timeout=60)
    by = {r.submission: r for r in rows}
    assert [r.submission for r in rows] == ["alice", "bob", "carol", "dave", "erin"]
    assert by["alice"].grade.score == 30 and by["bob"].grade.score == 0
    assert "SyntaxError in minialign/mini.py" in by["carol"].reasons()
    assert by["dave"].grade.score == 0 and "rule 'import'" in by["dave"].reasons()
    assert by["erin"].grade.score == 0 and "has no minialign/mini.py" in by["erin"].reasons()
    grading.write_class_csv(rows, course.load("01-mini", mini), tmp_path / "grades.csv")
    lines = (tmp_path / "grades.csv").read_text().splitlines()
    assert lines[0] == "submission,total,max,task 1.1,task 1.2,task 1.3,reasons"
    assert lines[1].startswith("alice,30,30,10,10,10,") and lines[2].startswith("bob,0,30,0,0,0,")
