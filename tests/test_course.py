"""The course's release check (minialign/course/), for every assignment of course/*.toml:

(a) in the student tree every test of the assignment fails, and fails at one of its stubs (NotImplementedError,
    not an import error);
(b) with every unit of every assignment stubbed at once, every other test still passes or fails at a stub;
(c) restoring the solution gives the repository back, byte for byte;
(d) no unit is ungraded: some test of its task fails when it alone is stubbed;
(e) the grader gives the untouched student tree 0 and the solution full marks.

Budget (the whole suite must stay under 10 minutes on 2 cores): the suite runs once, in one tree with every
unit stubbed (b); each assignment's check is one test (the eight spread over the workers) that grades the
student tree once (the restored solution's grade is the bundle's test, tests/test_course_bundle.py), and runs
mutant trees only for the units that no test of the student tree reached first — a test that fails at unit u
before any other stub would fail at u with u alone stubbed too, so that run already proves (d) for u.
"""
import builtins
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from minialign import course
from minialign.cli import main
from minialign.course import check as course_check
from minialign.course.plugin import stubs_of

grading = importlib.import_module("minialign.course.grade")  # the module (the package's `grade` is its function)

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENTS = list(course.assignments(ROOT)) if (ROOT / "course").is_dir() else []
# In a student tree (made by `minialign course make`) the stubs are the point; the release check runs in the
# instructor's repository, where every unit is whole.
STUDENT_TREE = (ROOT / course.HANDOUT).exists()
instructor_only = pytest.mark.skipif(STUDENT_TREE, reason="a student tree: the release check runs in the "
                                                          "instructor's repository")

HIDDEN_TEST = '''
import numpy as np
import pytest

from minialign import Tensor
from minialign.rewards import bradley_terry_loss


@pytest.mark.task5_1
@pytest.mark.parametrize("n", [1, 17])
def test_hidden_bradley_terry_on_other_shapes(n):
    """SENTINEL-SOURCE-LINE: an instructor's test; its source must never reach a student."""
    rng = np.random.default_rng(123 + n)
    w, l = rng.normal(size=n), rng.normal(size=n)
    expected = np.mean(np.logaddexp(0.0, -(w - l)))
    assert bradley_terry_loss(Tensor(w), Tensor(l)).item() == pytest.approx(expected, rel=1e-12)
'''

HIDDEN_FDPG_TEST = '''
import numpy as np
import pytest

from minialign.trainers.fdpg import FDPG, FDPGOptions


@pytest.mark.task7_1
@pytest.mark.parametrize("log_t", [-3.0, 3.0])
def test_hidden_js_pseudo_reward(log_t):
    """SENTINEL-SOURCE-LINE: R = -f'(t) = -(1/2) log(2t/(1+t)) for Jensen-Shannon."""
    t = np.exp(log_t)
    method = FDPG(None, None, None, FDPGOptions(f="js", proposal="policy", log_z=0.0))
    r = method.pseudo_reward(np.array([log_t]), np.array([0.0]), 0.0)
    assert r[0] == pytest.approx(-0.5 * np.log(2 * t / (1 + t)), rel=1e-12)
'''


# ---------------------------------------------------------------------------------------- static checks
def test_eight_assignments_one_per_chapter_each_with_three_to_six_tasks():
    known = course.assignments(ROOT)
    assert [a.number for a in known.values()] == list(range(1, 9)), list(known)
    for a in known.values():
        assert (ROOT / a.chapter).is_file() and a.chapter.startswith(f"chapters/{a.number:02d}-")
        assert 3 <= len(a.tasks) <= 6 and 2 <= len(a.questions) <= 4, a.name


@instructor_only
def test_manifests_units_markers_handouts_chapters_and_solutions_agree():
    """Every unit resolves, no two overlap, every region marker is used, the task markers are registered and
    carried by tests, the committed handouts are current, each chapter's Exercises list its assignment, and
    each written question has its instructor solution."""
    problems = course_check.static_problems(ROOT)
    assert not problems, "\n".join(problems)


@instructor_only
def test_a_unit_that_no_longer_resolves_is_named_as_an_error(tmp_path):
    """What CI says when a refactoring renames or moves a unit: the release check fails, naming it."""
    root = course.write_tree(ROOT, tmp_path / "repo", [])
    manifest = root / "course" / "05-rlhf.toml"
    manifest.write_text(manifest.read_text().replace("dpo.py::DPO.loss", "dpo.py::DPO.lossy"))
    region = root / "minialign" / "trainers" / "gdc.py"
    region.write_text(region.read_text().replace("# BEGIN SOLUTION gdcpp", "# BEGIN SOLUTION gdc-pp"))
    problems = "\n".join(course_check.static_problems(root))
    assert "unit minialign/trainers/dpo.py::DPO.lossy does not resolve: no 'lossy' in DPO" in problems
    assert "unit minialign/trainers/gdc.py::DPG.coefficients#gdcpp does not resolve: 0 lines" in problems
    assert "region 'gdc-pp' is marked but no manifest names it" in problems
    with pytest.raises(course.CourseError, match="does not resolve"):
        course.make("05-rlhf", tmp_path / "student", root)


@instructor_only
def test_a_stale_task_marker_an_edited_exercises_section_and_stale_marker_tables_are_named(tmp_path):
    """The chapters' task tables and Exercises are written from the manifests; the release check names a
    marker no manifest has, a marker range that is not one assignment's, an Exercises section edited by hand,
    a map row and a pyproject.toml marker description that no longer match, and an equation that no chapter
    has; ``with_exercises`` and ``with_marker_rows`` put the chapters right."""
    root = course.write_tree(ROOT, tmp_path / "repo", [])
    ch01, ch00 = root / "chapters" / "01-autograd.md", root / "chapters" / "00-map.md"
    text = ch01.read_text()
    ch01.write_text(text.replace("## 1. The chain rule", "Old table: `task1_9`, `task1_1`–`task1_3`.\n\n## 1. The "
                                 "chain rule").replace("1.A. **unbroadcasting", "1.A. **broadcasting"))
    ch00.write_text(ch00.read_text().replace("2.1 causal attention", "2.1 the GPT"))
    manifest = root / "course" / "02-gpt.toml"
    manifest.write_text(manifest.read_text().replace("Eq. (2.12):", "Eq. (2.99):"))
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("task2_1: course task 2.1, causal attention, forward and "
                                                       "backward", "task2_1: chapter 02, task 1: the GPT"))
    problems = "\n".join(course_check.static_problems(root))
    assert "chapters/01-autograd.md names task marker task1_9, which no manifest has" in problems
    assert "the range `task1_1`–`task1_3` is not the tasks of one assignment (chapter 1 has 5)" in problems
    assert "chapters/01-autograd.md: its Exercises section (its last) differs from course/01-autograd.toml" in problems
    assert "chapters/00-map.md: its table of task markers differs from the manifests" in problems
    assert "course/02-gpt.toml cites equation (2.99), which no chapter has" in problems
    assert "pyproject.toml describes marker task2_1 as 'task2_1: chapter 02, task 1: the GPT (course/02-gpt" in problems
    known = course.assignments(root)
    ch01.write_text(course.with_exercises(text, known["01-autograd"]))
    ch00.write_text(course.with_marker_rows(ch00.read_text(), known))
    assert not course_check._chapter_marker_problems(root, known)
    assert not [p for p in course_check._document_problems(root, known["01-autograd"]) if "chapters/" in p]


def test_every_assignment_has_one_experiment_and_its_questions_and_experiment_have_distinct_ids():
    for a in course.assignments(ROOT).values():
        assert len(a.experiments) == 1, a.name
        ids = [q.id for q in a.questions] + [e.id for e in a.experiments]
        assert len(set(ids)) == len(ids) and all(i.startswith(f"{a.number}.") for i in ids), (a.name, ids)


def test_an_experiment_needs_a_command_and_functions_that_resolve(tmp_path):
    head = 'number = 9\ntitle = "x"\nchapter = "c"\nread = []\n[[task]]\nid = "9.1"\ntitle = "t"\npoints = 1\n' \
           'minutes = 1\ntext = "t"\nunits = ["a.py::f"]\n[[experiment]]\nid = "9.E"\ntitle = "e"\npoints = 5\n' \
           'minutes = 30\ntext = "plot it"\ncommand = "python -m minialign x"\n'
    a = course.parse_manifest("09-x", head + 'uses = ["minialign/lab.py::ExactLab.distribution"]\n')
    assert a.experiments[0].uses == ("minialign/lab.py::ExactLab.distribution",) and a.hours == 0.5
    assert "## Experiment (9.E): e (5 points)" in course.handout(a, ROOT)
    assert "9.E. **e** (5 points). plot it Run: `python -m minialign x`." in course.exercises(a)
    with pytest.raises(course.CourseError, match="at least one function it uses"):
        course.parse_manifest("09-x", head + "uses = []\n")
    with pytest.raises(course.CourseError, match="not of the form path.py::Qual.name"):
        course.parse_manifest("09-x", head + 'uses = ["minialign/lab.py::ExactLab.distribution#r"]\n')
    with pytest.raises(course.CourseError, match="ids repeat"):
        course.parse_manifest("09-x", head + 'uses = ["a.py::f"]\n[[question]]\nid = "9.E"\ntitle = "q"\n'
                                             'points = 1\ntext = "q"\n')


# ---------------------------------------------------------------------------------------- cutting units
SOURCE = '''import numpy as np


def f(x, y):  # a comment on the signature
    """Eq. (9.9): the docstring stays."""
    # a comment inside the body goes with it
    return x + y


class A:
    @staticmethod
    def g(x):
        z = x * 2
        # BEGIN SOLUTION step
        z = z + 1
        z = z * 3
        # END SOLUTION
        return z    # odd   spacing kept


TAIL = 1
'''


def test_a_stub_keeps_signature_docstring_and_everything_else_and_restores_exactly():
    task = course.Task("9.1", "a title", 10.0, (), "", 10)
    cuts = sorted([course.locate(SOURCE, "x.py::f", task), course.locate(SOURCE, "x.py::A.g#step", task)],
                  key=lambda c: c.start)
    stubbed = course.apply_cuts(SOURCE, cuts)
    assert stubbed == SOURCE.replace(
        '    # a comment inside the body goes with it\n    return x + y\n',
        '    raise NotImplementedError("Task 9.1: x.py::f — a title; see ASSIGNMENT.md")\n').replace(
        '        # BEGIN SOLUTION step\n        z = z + 1\n        z = z * 3\n        # END SOLUTION\n',
        '        raise NotImplementedError("Task 9.1: x.py::A.g#step — a title; see ASSIGNMENT.md")\n')
    assert course.restore_cuts(stubbed, SOURCE, cuts) == SOURCE
    namespace = {}
    exec(compile(stubbed, "x.py", "exec"), namespace)
    with pytest.raises(NotImplementedError, match=r"^Task 9\.1: x\.py::A\.g#step"):
        namespace["A"].g(1)


def test_units_that_cannot_be_cut_are_refused():
    task = course.Task("9.1", "t", 1.0, (), "", 1)
    for spec, message in [("x.py::h", "no 'h' in the module"), ("x.py::A", "is a class"),
                          ("x.py::A.g#other", "0 lines '# BEGIN SOLUTION other'"),
                          ("x.py::only_doc", "no body to cut")]:
        with pytest.raises(course.CourseError, match=message):
            course.locate(SOURCE + 'def only_doc():\n    """Nothing else."""\n', spec, task)
    with pytest.raises(course.CourseError, match="holds a solution region"):
        course.locate(SOURCE, "x.py::A.g", task)
    unclosed = SOURCE.replace("        # END SOLUTION\n", "")
    with pytest.raises(course.CourseError, match="has no '# END SOLUTION'"):
        course.locate(unclosed, "x.py::A.g#step", task)
    with pytest.raises(course.CourseError, match="not of the form"):
        course.parse_manifest("09-x", 'number = 9\ntitle = "x"\nchapter = "c"\nread = []\n[[task]]\nid = "9.1"\n'
                                      'title = "t"\npoints = 1\nminutes = 1\ntext = "t"\nunits = ["nope"]\n')
    with pytest.raises(course.CourseError, match="task id must be '9.M'"):
        course.parse_manifest("09-x", 'number = 9\ntitle = "x"\nchapter = "c"\nread = []\n[[task]]\nid = "8.1"\n'
                                      'title = "t"\npoints = 1\nminutes = 1\ntext = "t"\nunits = ["a.py::f"]\n')


# ---------------------------------------------------------------------------------------- the plugin and the score
def test_the_stub_a_test_reached_first_is_found_through_chains_groups_and_text():
    first = NotImplementedError("Task 5.2: minialign/trainers/rlhf.py::RLHF.loss#kl-in-reward — t; see ASSIGNMENT.md")
    try:
        try:
            raise first
        except NotImplementedError:
            raise NotImplementedError("Task 5.5: minialign/trainers/dpo.py::DPO.loss — t; see ASSIGNMENT.md")
    except NotImplementedError as e:
        chained = e
    assert stubs_of(chained) == ["5.2 minialign/trainers/rlhf.py::RLHF.loss#kl-in-reward"]
    wrapped = RuntimeError("interpreter error")  # Triton's interpreter wraps the kernel's exception like this
    wrapped.__cause__ = NotImplementedError("Task 8.1: kernels/attention.py::_attn_fwd_kernel#online-softmax — t")
    assert stubs_of(wrapped) == ["8.1 kernels/attention.py::_attn_fwd_kernel#online-softmax"]
    exception_group = getattr(builtins, "ExceptionGroup", None)  # Python 3.11+
    group = exception_group("two examples", [first, ValueError("other")]) if exception_group is not None else None
    if group is not None:
        assert stubs_of(group) == ["5.2 minialign/trainers/rlhf.py::RLHF.loss#kl-in-reward"]
    text = "CellExecutionError: ... NotImplementedError: Task 1.1: minialign/tensor.py::unbroadcast — t; see ..."
    assert stubs_of(ValueError("from a notebook"), text) == ["1.1 minialign/tensor.py::unbroadcast"]
    assert stubs_of(NotImplementedError("not a course stub")) == []


def test_points_are_the_fraction_of_a_task_s_tests_that_pass_and_hidden_tests_show_only_their_names():
    a = course.load("04-rl", ROOT)
    outcomes = {}
    for t in a.tasks:
        for i in range(4):
            ok = i < {"4.1": 4, "4.2": 2, "4.3": 0, "4.4": 3}[t.id]
            outcomes[f"tests/x.py::test_{t.marker}_{i}"] = course.TestOutcome(
                f"tests/x.py::test_{t.marker}_{i}", [t.marker], "passed" if ok else "failed", "call",
                "AssertionError", "assert secret_value == 3", [])
    run = course.Run(outcomes, [], {}, 1, 1.0, ROOT)
    g = course.score(a, run, hidden={"tests/x.py::test_task4_2_3"})
    assert [ts.score for ts in g.tasks] == [10.0, 5.0, 0.0, 7.5] and g.score == 22.5 and g.max_score == 40
    results = g.gradescope()
    assert results["score"] == 22.5 and [t["max_score"] for t in results["tests"]] == [10.0] * 4
    for text in (json.dumps(results), g.table()):
        assert "test_task4_2_3 [hidden]: failed" in text
        assert text.count("assert secret_value == 3") == 6  # the six visible failures' messages, not the hidden one's
    with pytest.raises(course.CourseError, match="task 4.1 of 04-rl has no tests"):
        course.score(a, course.Run({}, [], {}, 1, 1.0, ROOT))


# ---------------------------------------------------------------------------------------- the command line
def test_list_shows_the_eight_assignments_with_tasks_and_points(capsys):
    assert main(["course", "list"]) == 0
    out = capsys.readouterr().out
    assert sum(line.startswith(name) for name in ASSIGNMENTS for line in out.splitlines()) == 8
    assert "5.2" in out and "task5_2" in out and "pts" in out
    assert "5.E" in out and "15 in 1 experiment" in out


@instructor_only
def test_make_writes_the_project_the_handout_and_no_instructor_solutions(tmp_path, capsys):
    assert main(["course", "make", "03-f-divergences", "--out", str(tmp_path / "s")]) == 0
    tree = tmp_path / "s"
    handout = (tree / course.HANDOUT).read_text()
    assert handout == (ROOT / course.HANDOUTS / "03-f-divergences.md").read_text()
    assert "Problem (task3_2)" in handout and "python -m pytest -m task3_2" in handout
    assert not (tree / course.SOLUTIONS).exists() and (ROOT / course.SOLUTIONS).is_dir()
    divergences_py = (tree / "minialign/divergences.py").read_text()
    assert 'raise NotImplementedError("Task 3.4: minialign/divergences.py::k3' in divergences_py
    assert course.assignment_of(tree) == "03-f-divergences"
    assert main(["course", "make", "03-f-divergences", "--out", str(tree)]) == 2  # not an empty folder
    assert "is not an empty folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- the release check
@instructor_only
@pytest.mark.slow
def test_with_every_unit_stubbed_every_test_passes_or_fails_at_a_stub(tmp_path):
    """(b), and (a) across assignments: the whole suite but this file, once, in a tree with the units of all
    eight assignments stubbed."""
    problems, run = course_check.check_stub_tree(tmp_path / "stubbed", ROOT)
    assert not problems, "\n".join(problems)
    task_tests = [t for t in run.tests.values() if t.tasks]
    assert len(task_tests) > 100 and all(t.outcome == "failed" for t in task_tests)
    assert sum(t.outcome == "passed" for t in run.tests.values()) > 100  # the checks ran, not just collection


@instructor_only
@pytest.mark.slow
@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_release_check_of_each_assignment(name, tmp_path):
    """(a), (c), (d), (e) for one assignment; 05-rlhf is graded with an instructor's hidden test as well. The
    restored solution's full marks are the Gradescope bundle's test (tests/test_course_bundle.py), which grades
    each assignment's solution through the bundle: the same grade, not run twice."""
    extra = None
    if name == "05-rlhf":
        extra = tmp_path / "hidden" / "test_hidden_rlhf.py"
        extra.parent.mkdir()
        extra.write_text(HIDDEN_TEST)
    c = course_check.check_assignment(name, tmp_path / "check", ROOT, extra_tests=extra, grade_solution=False)
    assert not c.problems, "\n".join(c.problems)
    assert c.student_score == 0 and c.solution_score is None and c.max_score == course.load(name, ROOT).points


@instructor_only
@pytest.mark.slow
def test_grade_shows_names_and_points_never_test_source_and_writes_results_json(tmp_path, capsys):
    tree = course.make("07-f-dpg", tmp_path / "student", ROOT)
    # what the student's tree holds besides the units' files is never used: not its tests, not its conftest
    (tree / "tests" / "test_fdpg_chapter.py").write_text(
        "import pytest\n\n@pytest.mark.task7_1\ndef test_free_points():\n    pass\n")
    (tree / "tests" / "conftest.py").write_text("raise SystemExit('a student conftest must never run')\n")
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "test_hidden_fdpg.py").write_text(HIDDEN_FDPG_TEST)
    results = tmp_path / "results.json"
    assert main(["course", "grade", str(tree), "--extra-tests", str(hidden), "--json", str(results)]) == 0
    out = capsys.readouterr().out
    data = json.loads(results.read_text())
    assert data["score"] == 0 and [t["number"] for t in data["tests"]] == ["7.1", "7.2", "7.3"]
    assert "tests/test_hidden_fdpg.py::test_hidden_js_pseudo_reward[3.0] [hidden]" in out
    assert "2 of them hidden" in data["tests"][0]["output"]
    assert "SENTINEL" not in out + results.read_text()
    assert "0 / 40" in out and "minialign from <grading copy>/minialign/__init__.py" in out
    assert "test_free_points" not in out + results.read_text() and data["tests"][0]["output"].startswith("0 of ")
    assert main(["course", "restore", str(tree)]) == 0  # the Done-when of the issue: the solution back, N / N
    assert main(["course", "grade", str(tree), "--extra-tests", str(hidden), "--json", str(results)]) == 0
    assert "40 / 40" in capsys.readouterr().out and json.loads(results.read_text())["score"] == 40


def test_the_grading_copy_takes_only_the_units_files_from_the_student(tmp_path):
    a = course.load("06-gdc", ROOT)
    student = course.write_tree(ROOT, tmp_path / "student", a.units())
    (student / "README.md").write_text("edited by the student")
    extra = tmp_path / "test_extra_gdc.py"
    extra.write_text("def test_x():\n    pass\n")
    taken, hidden = course.grading_workspace(student, a, tmp_path / "work", extra, ROOT)
    assert taken == ["minialign/ebm.py", "minialign/trainers/gdc.py", "minialign/trainers/proposal.py"]
    assert hidden == ["tests/test_extra_gdc.py"]
    work = tmp_path / "work"
    assert (work / "README.md").read_bytes() == (ROOT / "README.md").read_bytes()
    assert (work / "minialign/ebm.py").read_bytes() == (student / "minialign/ebm.py").read_bytes()
    assert not (work / course.SOLUTIONS).exists()
    clash = tmp_path / "clash" / "test_gpt.py"
    clash.parent.mkdir()
    clash.write_text("")
    with pytest.raises(course.CourseError, match="has the name of a test file of the repository"):
        course.grading_workspace(student, a, tmp_path / "work2", clash, ROOT)
    (student / "minialign/ebm.py").unlink()
    with pytest.raises(course.CourseError, match="the student tree .* has no minialign/ebm.py"):
        course.grading_workspace(student, a, tmp_path / "work3", None, ROOT)


@instructor_only
@pytest.mark.slow
def test_a_student_runs_a_task_in_their_tree_against_their_own_code(tmp_path):
    """`cd tree && pytest -m task5_1` with the instructor's complete minialign installed (editable, in this
    virtual environment): the student's stub is what runs (tests/conftest.py pins the package to its tree)."""
    tree = course.make("05-rlhf", tmp_path / "student", ROOT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PYTEST_")}
    run = subprocess.run([sys.executable, "-m", "pytest", "-m", "task5_1", "-p", "no:cacheprovider", "-q",
                          "tests/test_rewards.py"], cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stdout[-2000:]
    assert "NotImplementedError: Task 5.1: minialign/rewards.py::bradley_terry_loss" in run.stdout
    summary = run.stdout.strip().splitlines()[-1]
    assert re.search(r"\b\d+ failed", summary) and "passed" not in summary, summary  # every 5.1 test fails


@instructor_only
def test_a_syntax_error_in_a_student_s_file_scores_zero_naming_file_and_line(tmp_path):
    """A student's file that does not parse: every task with a unit in it scores 0, the reason names the file and
    the line (nothing runs: only unit bodies are ever taken from the file), and the grade is still a grade, so
    that an autograder always writes results."""
    tree = course.make("01-autograd", tmp_path / "student", ROOT)
    tensor = tree / "minialign" / "tensor.py"
    tensor.write_text(tensor.read_text() + "\ndef broken(:\n")
    line = len(tensor.read_text().splitlines())
    g = course.grade(tree, root=ROOT)
    assert g.score == 0
    assert f"SyntaxError in minialign/tensor.py, line {line}" in g.table()
    assert json.loads(json.dumps(g.gradescope()))["score"] == 0


@instructor_only
def test_a_term_tree_holds_no_future_answers_no_instructor_files_and_one_commit(tmp_path):
    """`course make 03-f-divergences --term`: the units of 03…08 stubbed, those of 01 and 02 in place (or stubbed
    with --stub-earlier), no README or CI of the instructor's, a git repository with one commit, and the tree
    records its assignment (another one's grade is refused)."""
    known = course.assignments(ROOT)
    assert main(["course", "make", "03-f-divergences", "--out", str(tmp_path / "t"), "--term"]) == 0
    tree = tmp_path / "t"
    for a in known.values():
        for path, cuts in course.cuts_by_file(a.units(), ROOT).items():
            text = (tree / path).read_text()
            assert all((c.stub in text) == (a.number >= 3) for c in cuts), (a.name, path)
    assert not (tree / "README.md").exists() and not (tree / ".ci").exists() and not (tree / course.SOLUTIONS).exists()
    log = subprocess.run(["git", "-C", str(tree), "log", "--oneline"], capture_output=True, text=True).stdout
    assert len(log.splitlines()) == 1
    assert subprocess.run(["git", "-C", str(tree), "status", "--porcelain"], capture_output=True,
                          text=True).stdout == ""
    assert course.recorded_assignment(tree) == "03-f-divergences"
    with pytest.raises(course.CourseError, match="made for 03-f-divergences, not 05-rlhf"):
        course.grade(tree, "05-rlhf", root=ROOT)
    early = course.make("03-f-divergences", tmp_path / "e", ROOT, term=True, stub_earlier=True)
    cut = course.cuts_by_file(known["01-autograd"].units(), ROOT)["minialign/tensor.py"][0]
    assert cut.stub in (early / "minialign/tensor.py").read_text()


@instructor_only
@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_each_task_runs_in_the_instructors_copy_with_only_its_own_units_from_the_submission(name):
    """Why a stub or a bug in one task costs only that task, on every task of every assignment: the files a
    task's tests run against are the instructor's, but for that task's own units taken from the submission.
    The submission here has every unit stubbed; for each task in turn, each file the grader writes into the
    task's copy must equal the instructor's file with exactly that task's units stubbed — no other task's stub
    — and no other file is written. (The whole grade with each task stubbed in turn is the exhaustive job's,
    tests/test_course_mutation.py; here one task is graded so on a real assignment, below.)"""
    a = course.load(name, ROOT)
    texts = {rel: course.apply_cuts((ROOT / rel).read_text(encoding="utf-8"), cuts)  # as `course make` writes them
             for rel, cuts in course.cuts_by_file(a.units(), ROOT).items()}
    for task in a.tasks:
        written, problems = grading.spliced_files(task, texts, {}, ROOT)
        assert not problems, problems
        own = course.cuts_by_file([(u, task) for u in task.units], ROOT)
        assert set(written) == set(own), (task.id, sorted(written))
        for rel, text in written.items():
            expected = course.apply_cuts((ROOT / rel).read_text(encoding="utf-8"), own[rel])
            assert text == expected, f"task {task.id}: {rel} differs from the instructor's with its own units stubbed"


@instructor_only
@pytest.mark.slow
def test_a_stub_in_one_task_costs_only_that_task_on_a_real_assignment(tmp_path):
    """05-rlhf with task 5.2 alone stubbed: 5.3 and 5.4, whose tests run RLHF.loss, keep their points (each task
    is graded with every other unit the instructor's); 5.2 scores 0."""
    a = course.load("05-rlhf", ROOT)
    tree = course.make("05-rlhf", tmp_path / "student", ROOT)
    course.restore(tree, "05-rlhf", ROOT)
    task = next(t for t in a.tasks if t.id == "5.2")
    for path, cuts in course.cuts_by_file([(u, task) for u in task.units], ROOT).items():
        (tree / path).write_text(course.apply_cuts((tree / path).read_text(), cuts))
    g = course.grade(tree, root=ROOT, jobs=2)
    assert {t.task.id: t.score for t in g.tasks} == {t.id: (0 if t.id == "5.2" else t.points) for t in a.tasks}, \
        g.table()
