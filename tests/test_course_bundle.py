"""The Gradescope autograder bundle (minialign/course/bundle.py): built, unpacked into folders laid out as
Gradescope's /autograder (in a temporary directory: the paths come from MINIALIGN_AUTOGRADER_* variables), and
run on the stubbed tree (0), the solution (full marks), a loose-file upload and an empty one; every results.json
is checked against Gradescope's documented format ("Autograder Specifications",
gradescope-autograders.readthedocs.io/en/latest/specs/)."""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from minialign import course
from minialign.course.bundle import autograder

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENTS = list(course.assignments(ROOT)) if (ROOT / "course").is_dir() else []
instructor_only = pytest.mark.skipif((ROOT / course.HANDOUT).exists(), reason="the instructor's repository only")

VISIBILITY = {"hidden", "after_due_date", "after_published", "visible"}
TOP = {"score": (int, float), "execution_time": (int, float), "output": str, "output_format": str,
       "test_output_format": str, "test_name_format": str, "visibility": str, "stdout_visibility": str,
       "extra_data": dict, "tests": list, "leaderboard": list}
TEST = {"score": (int, float), "max_score": (int, float), "status": str, "name": str, "name_format": str,
        "number": str, "output": str, "output_format": str, "tags": list, "visibility": str, "extra_data": dict}


def schema_problems(data) -> list:
    """Where a results.json departs from Gradescope's documented format."""
    if not isinstance(data, dict):
        return ["not a JSON object"]
    problems = [f"unknown key {k!r}" for k in data if k not in TOP]
    problems += [f"{k} is not {TOP[k]}" for k in data if k in TOP and not isinstance(data[k], TOP[k])]
    if "score" not in data and not all("score" in t for t in data.get("tests", [])):
        problems.append("no score: neither overall nor on every test")
    for i, t in enumerate(data.get("tests", [])):
        problems += [f"tests[{i}]: unknown key {k!r}" for k in t if k not in TEST]
        problems += [f"tests[{i}].{k} is not {TEST[k]}" for k in t if k in TEST and not isinstance(t[k], TEST[k])]
        if t.get("visibility", "visible") not in VISIBILITY or t.get("status", "passed") not in ("passed", "failed"):
            problems.append(f"tests[{i}]: visibility or status outside the documented values")
    if data.get("visibility", "visible") not in VISIBILITY:
        problems.append("visibility outside the documented values")
    return problems


def _unpack(zip_path: Path, where: Path) -> Path:
    source = where / "source"
    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
        assert "setup.sh" in names and "run_autograder" in names  # at the zip's root, as Gradescope requires
        z.extractall(source)
        for info in z.infolist():  # as unzip does: the modes the zip records
            mode = info.external_attr >> 16
            if mode:
                os.chmod(source / info.filename, mode & 0o777)
    (where / "submission").mkdir()
    (where / "results").mkdir()
    return where


def _run(where: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PYTEST_")}
    env.update(MINIALIGN_AUTOGRADER_SOURCE=str(where / "source"), MINIALIGN_AUTOGRADER_SUBMISSION=str(
        where / "submission"), MINIALIGN_AUTOGRADER_RESULTS=str(where / "results"),
        MINIALIGN_AUTOGRADER_PYTHON=sys.executable)
    run = subprocess.run(["bash", str(where / "source" / "run_autograder")], env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    data = json.loads((where / "results" / "results.json").read_text())
    assert not schema_problems(data), schema_problems(data)
    return data


HIDDEN = """import numpy as np
import pytest

from minialign.rewards import bradley_terry_loss

EXPECTED = float(np.mean(np.logaddexp(0.0, -np.array([0.5, -1.0]))))  # computed before any student code runs


@pytest.mark.MARKER
def test_hidden_bradley_terry_on_two_pairs():
    assert abs(bradley_terry_loss(np.array([1.0, 0.0]), np.array([0.5, 1.0])).item() - EXPECTED) < 1e-12
""".replace("MARKER", "task" + "5_1")  # spelled so that the handouts' scan does not count this file as 5.1's


def _clear(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()


@instructor_only
@pytest.mark.slow
@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_the_bundle_of_each_assignment_grades_the_stubs_zero_and_the_solution_as_loose_files_full_marks(
        name, tmp_path):
    """For every assignment: the stubbed tree uploaded as a repository scores 0, and the solution's files
    uploaded loose (at the top of the upload, as students usually do) score full marks on every task — the
    solution's grade of the release check (tests/test_course.py), run through the bundle. 05-rlhf's bundle
    carries a hidden test of the instructor's."""
    a = course.load(name, ROOT)
    hidden = None
    if name == "05-rlhf":
        hidden = tmp_path / "hidden" / "test_hidden_bundle.py"
        hidden.parent.mkdir()
        hidden.write_text(HIDDEN)
    target = autograder(name, tmp_path / "bundle", extra_tests=hidden, root=ROOT)
    where = _unpack(target, tmp_path / "autograder")
    source = where / "source"
    assert os.access(source / "run_autograder", os.X_OK) and (source / "assignment.txt").read_text().strip() == name
    assert not (source / "repo" / course.SOLUTIONS).exists()
    assert (source / "hidden").is_dir() == (hidden is not None)
    files = sorted({s.split("::")[0] for s, _ in a.units()})
    tree = course.make(name, tmp_path / "student", ROOT)
    for rel in files:  # a repository upload
        (where / "submission" / rel).parent.mkdir(parents=True, exist_ok=True)
        (where / "submission" / rel).write_text((tree / rel).read_text())
    data = _run(where)
    assert data["score"] == 0 and len(data["tests"]) == len(a.tasks), data
    _clear(where / "submission")
    for rel in files:  # loose files
        (where / "submission" / Path(rel).name).write_text((ROOT / rel).read_text())
    data = _run(where)
    assert data["score"] == a.points, json.dumps(data, indent=1)[:3000]
    assert [t["score"] for t in data["tests"]] == [t.points for t in a.tasks], data
    if hidden is not None:
        assert "(1 of them hidden)" in next(t["output"] for t in data["tests"] if t["number"] == "5.1")


@instructor_only
def test_a_loose_upload_gets_the_points_of_what_it_solves_and_an_empty_one_zero(tmp_path):
    name = "03-f-divergences"
    a = course.load(name, ROOT)
    where = _unpack(autograder(name, tmp_path / "bundle", root=ROOT), tmp_path / "autograder")
    # loose files: only task 3.4 solved, the file at the top of the upload, beside the handout
    tree = course.make(name, tmp_path / "student", ROOT)
    text = (tree / "minialign/divergences.py").read_text()
    solution = (ROOT / "minialign/divergences.py").read_text()
    cuts = course.cuts_by_file([(u, t) for u, t in a.units() if t.id == "3.4"], ROOT)["minialign/divergences.py"]
    (where / "submission" / "divergences.py").write_text(course.restore_cuts(text, solution, cuts))
    (where / "submission" / course.HANDOUT).write_text(course.handout(a, ROOT))
    data = _run(where)
    assert data["score"] == 10 and [t["score"] for t in data["tests"]] == [0, 0, 0, 10]
    _clear(where / "submission")
    data = _run(where)
    assert data["score"] == 0 and "has no minialign/divergences.py" in json.dumps(data)


@instructor_only
def test_the_bundle_writes_a_zero_with_the_reason_when_the_grader_itself_cannot_run(tmp_path, monkeypatch):
    """A broken setup (here: no Python where setup.sh puts it) still gives Gradescope a results.json: 0, why."""
    where = _unpack(autograder("04-rl", tmp_path / "bundle", root=ROOT), tmp_path / "autograder")
    monkeypatch.setattr(sys, "executable", "/bin/false")
    data = _run(where)
    assert data["score"] == 0 and "the grader stopped (exit status 1)" in data["output"]
    assert data["tests"][0]["max_score"] == course.load("04-rl", ROOT).points
