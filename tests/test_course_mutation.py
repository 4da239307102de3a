"""The release check's mutation pass (minialign/course/mutate.py) and its shrink check (minialign/course/check.py).

Budget: grading one mutant is a fresh pytest process (seconds), so CI never runs the whole pass. The committed
record course/mutants.json holds, per unit, a hash of the unit's lines and of its task's tests, its size, and the
outcome of each mutant; CI checks the record (no unlisted survivor), re-grades the mutants of at most a few stale
units itself (a change to one unit or one task's tests), and otherwise fails naming the command that refreshes
the record. The operators are checked here on a small module, and one real mutant is graded end to end.
"""
import json
from pathlib import Path

import pytest

from minialign import course
from minialign.course import check as course_check
from minialign.course import mutate

ROOT = Path(__file__).resolve().parent.parent
STUDENT_TREE = (ROOT / course.HANDOUT).exists()
instructor_only = pytest.mark.skipif(STUDENT_TREE, reason="a student tree: the release check runs in the "
                                                          "instructor's repository")
# Stale mutants CI grades itself (about 3 s each on one core) before it asks for a refresh instead.
CI_MUTANTS = 40

MODULE = '''import numpy as np


def outside(x):
    return x + 1


def unit(x, y, mask, no_grad):
    """Eq. (9.9): the docstring is not mutated."""
    if x.shape != y.shape:
        raise ValueError("shapes differ")
    with no_grad():
        z = np.where(mask, x * y, 0.5)
    return -z.sum(axis=-1, keepdims=True) / (len(x) - 1) + y.detach().max()
'''


def _mutants(tmp_path):
    (tmp_path / "m.py").write_text(MODULE)
    task = course.Task("9.1", "t", 1.0, ("m.py::unit",), "", 1)
    return mutate.mutants_of("m.py::unit", task, tmp_path)


def test_each_operator_plants_its_wrong_answer_inside_the_unit_and_nowhere_else(tmp_path):
    ms = _mutants(tmp_path)
    described = {m.description for m in ms}
    for expected in ["x * y → x / y", "x * y → x", "x * y → y", "0.5 → 1.0",
                     "len(x) - 1 → len(x) + 1", "1 → 0",
                     "x.shape != y.shape → x.shape == y.shape",
                     "raise ValueError('shapes differ') → pass", "y.detach() → y",
                     "np.where(mask, x * y, 0.5) → x * y",
                     "z.sum(axis=-1, keepdims=True) → z.mean(axis=-1, keepdims=True)",
                     "z.sum(axis=-1, keepdims=True) → z.sum(axis=-2, keepdims=True)",
                     "z.sum(axis=-1, keepdims=True) → z.sum(keepdims=True)", "True → False",
                     "y.detach().max() → y.detach().min()"]:
        assert expected in described, f"no mutant {expected!r}; have {sorted(described)}"
    assert any(m.id.startswith("grad@") and "with no_grad()" in m.description for m in ms), "no_grad not dropped"
    assert any(m.id.startswith("drop@") and m.description.startswith("-z.sum") for m in ms), "unary minus kept"
    lines = MODULE.splitlines()
    start = lines.index('    """Eq. (9.9): the docstring is not mutated."""') + 1
    for m in ms:
        new = m.source.splitlines()
        assert new[:start] == lines[:start], f"{m.id} changed a line outside the unit"
        compile(m.source, "m.py", "exec")
    assert len({m.id for m in ms}) == len(ms) and len({m.source for m in ms}) == len(ms)


def test_sampling_spreads_over_the_operators_and_is_deterministic(tmp_path):
    ms = _mutants(tmp_path)
    some = mutate.sample(ms, 6)
    assert len(some) == 6 and some == mutate.sample(_mutants(tmp_path), 6)
    assert len({m.id.split("@")[0] for m in some}) == 6, [m.id for m in some]
    assert mutate.sample(ms, None) == ms


def test_equivalent_tables_need_a_unit_a_mutant_and_a_reason(tmp_path):
    root = course.write_tree(ROOT, tmp_path / "repo", [])
    manifest = root / "course" / "05-rlhf.toml"
    text = manifest.read_text()
    unit = "minialign/rewards.py::bradley_terry_loss"
    manifest.write_text(text + f'\n[[equivalent]]\nunit = "{unit}"\nmutant = "x@1:1"\n')
    with pytest.raises(course.CourseError, match="one-line reason"):
        mutate.equivalents("05-rlhf", root)
    manifest.write_text(text + '\n[[equivalent]]\nunit = "u.py::f"\nmutant = "swap@1:2"\nreason = "why"\n')
    assert mutate.equivalents("05-rlhf", root) == {("u.py::f", "swap@1:2"): "why"}
    course.parse_manifest("05-rlhf", manifest.read_text())  # the manifest's own fields still parse


@instructor_only
def test_a_listed_equivalent_that_names_no_current_mutant_is_named(tmp_path):
    """A unit reformatted or edited renumbers its mutants: a listing left with the old id hides nothing and
    misleads, so the record check names it (and every listing of the committed manifests names a mutant)."""
    assert all(not course_check.unknown_equivalents(course.load(n, ROOT), mutate.equivalents(n, ROOT), ROOT)
               for n in course.assignments(ROOT))
    root = course.write_tree(ROOT, tmp_path / "repo", [])
    manifest = root / "course" / "05-rlhf.toml"
    unit = "minialign/rewards.py::bradley_terry_loss"
    manifest.write_text(manifest.read_text() + f'\n[[equivalent]]\nunit = "{unit}"\nmutant = "swap@99:1"\n'
                        'reason = "an id from an older version of the unit"\n')
    problems = course_check.unknown_equivalents(course.load("05-rlhf", root), mutate.equivalents("05-rlhf", root),
                                                root)
    assert len(problems) == 1 and "swap@99:1" in problems[0] and unit in problems[0], problems


@instructor_only
def test_a_planted_sign_flip_loses_points_on_its_own_task_in_a_fresh_process(tmp_path):
    """The Bradley–Terry loss without its minus sign, graded as the grader would: task 5.1's tests fail; the same
    mutant graded by task 5.5's tests (which never call it) keeps full marks — only its own task counts."""
    a = course.load("05-rlhf", ROOT)
    spec, task = next((s, t) for s, t in a.units() if s.endswith("bradley_terry_loss"))
    flip = next(m for m in mutate.mutants_of(spec, task, ROOT) if m.description.startswith("-F.log_sigmoid")
                and m.id.startswith("drop@"))
    tree = course.write_tree(ROOT, tmp_path / "tree", [])
    outcome = mutate.grade_mutant(flip, task, tree)
    assert outcome.caught and outcome.by.startswith("tests/test_rewards.py::"), outcome
    other = next(t for t in a.tasks if t.id == "5.5")
    assert not mutate.grade_mutant(flip, other, tree).caught
    assert (tree / flip.path).read_text() == (ROOT / flip.path).read_text(), "the tree was not put back"


@instructor_only
def test_the_committed_mutation_record_is_current_and_every_survivor_is_listed_as_equivalent(tmp_path):
    """Every mutant of every unit loses points on its own task, or the manifest says why it cannot (an equivalent
    mutant). Stale units (a unit or its task's tests changed since the record) are graded here when they are
    few; otherwise the failure names the command that refreshes the record."""
    stale = mutate.stale_units(ROOT)
    if stale:
        names = sorted({n for n, _ in stale})
        known = course.assignments(ROOT)
        cost = sum(len(mutate.sample(mutate.mutants_of(spec, task, ROOT), mutate.LIMIT))
                   for n in names for spec, task in known[n].units() if (n, spec) in stale)
        assert cost <= CI_MUTANTS, (
            f"the mutation record is stale for {len(stale)} units ({cost} mutants, more than CI grades): run "
            f"`{mutate.REFRESH} {' '.join(names)}` and commit course/mutants.json; stale: "
            + ", ".join(spec for _, spec in stale))
        problems = mutate.mutation_pass(names, limit=mutate.LIMIT, only_stale=True, root=ROOT, out=lambda s: None,
                                        write=False)
    else:
        problems = course_check.mutation_record_problems(ROOT)
    assert not problems, "\n".join(problems)


@instructor_only
def test_the_record_covers_every_unit_with_its_size_and_outcomes():
    record = json.loads((ROOT / mutate.RECORD).read_text())
    units = {spec for a in course.assignments(ROOT).values() for spec, _ in a.units()}
    assert set(record["units"]) == units
    for spec, entry in record["units"].items():
        assert entry["size"] > 0 and entry["tried"] == len(entry["outcomes"]) > 0, spec
        assert all(set(o) >= {"id", "description", "caught", "by"} for o in entry["outcomes"]), spec


@instructor_only
def test_a_unit_whose_body_shrinks_below_its_recorded_size_is_named(tmp_path):
    """Issue 21: moving a unit's work into a shared helper outside the unit silently shrinks its task; the release
    check names the unit and what to do."""
    root = course.write_tree(ROOT, tmp_path / "repo", [])
    assert course_check.shrink_problems(root) == []
    file = root / "minialign" / "rewards.py"
    text = file.read_text()
    body = '    return -F.log_sigmoid(r_chosen - r_rejected).mean()\n'
    start = text.index("    r_chosen = r_chosen if isinstance(r_chosen, Tensor)")
    end = text.index(body) + len(body)
    file.write_text(text[:start] + "    return _shared_loss(r_chosen, r_rejected)\n" + text[end:])
    problems = course_check.shrink_problems(root)
    assert len(problems) == 1 and "minialign/rewards.py::bradley_terry_loss (task 5.1) shrank" in problems[0] \
        and "--accept-shrink" in problems[0], problems


# ---------------------------------------------------------------------------------------- the exhaustive job
# Deselected by default (pyproject.toml: -m "not exhaustive"); an instructor runs it before a term, with
#   python -m pytest -m exhaustive -n 2
# (README, "The course"). Each assignment is one test, so the workers share the assignments.
ASSIGNMENTS = list(course.assignments(ROOT)) if (ROOT / "course").is_dir() else []


@instructor_only
@pytest.mark.exhaustive
@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_every_mutant_of_every_unit_loses_points_on_its_own_task(name):
    """The pass CI only samples (at most ``mutate.LIMIT`` mutants a unit, from the committed record): every
    mutant of every unit of the assignment, graded afresh; a survivor must be listed as equivalent."""
    problems = mutate.mutation_pass([name], limit=None, root=ROOT, out=print, write=False)
    assert not problems, "\n".join(problems)


@instructor_only
@pytest.mark.exhaustive
@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_each_task_stubbed_in_turn_costs_only_its_own_points(name, tmp_path):
    """The restored solution with one task's units stubbed, for every task in turn, graded as a student's
    submission: that task scores 0 and every other task keeps its full points."""
    a = course.load(name, ROOT)
    for task in a.tasks:
        tree = course.make(name, tmp_path / task.marker, ROOT)
        course.restore(tree, name, ROOT)
        for path, cuts in course.cuts_by_file([(u, task) for u in task.units], ROOT).items():
            (tree / path).write_text(course.apply_cuts((tree / path).read_text(), cuts))
        g = course.grade(tree, root=ROOT, jobs=1)
        assert {t.task.id: t.score for t in g.tasks} == {
            t.id: (0 if t is task else t.points) for t in a.tasks}, f"{task.id} stubbed:\n{g.table()}"
