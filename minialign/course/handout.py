"""The handout (ASSIGNMENT.md) and the chapters' Exercises, written from a manifest."""
from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    pass
else:  # Python 3.10: the same parser, packaged (a dependency of minialign on 3.10)
    pass

from . import policy
from .cut import split_spec
from .manifest import ROOT, Assignment, Task, marked_files, task_expression


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
            "network.", "",
            "Each problem is graded on its own: its tests run with every other problem's code taken from the "
            "instructor's solution, so a mistake in one problem costs only that problem's points (your own runs "
            "still show the cascade: a later problem may fail because an earlier one does). Only the bodies of "
            "the units named below are taken from your files — your imports, module-level code and other "
            "functions are replaced by the instructor's — and each body must keep to the policy below."
            + (f" A problem whose core test (marked [core] in the grader's report) fails keeps at most "
               f"{a.core_cap:g} of its points." if a.core_cap < 1 and any(t.core for t in a.tasks) else ""), "",
            "**What a unit's body may contain.** The grader checks each body before running anything; a body "
            "that breaks a rule scores 0 for its problem, with the line and the rule named:", "",
            policy.rules_text(), ""]
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
