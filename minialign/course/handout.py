"""The handout (ASSIGNMENT.md), the chapters' Exercises and the map's table of task markers, written from the
manifests (``minialign course handouts`` writes them; the release check compares them)."""
from __future__ import annotations

import re
from pathlib import Path

from . import policy
from .cut import split_spec
from .manifest import ROOT, Assignment, CourseError, Task, marked_files, task_expression

MAP = "chapters/00-map.md"      # the course map: its table of task markers is written from the manifests
MARKER_ROW = re.compile(r"^\| `task\d+_\d+`")
EXERCISES = "\n## Exercises\n"


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
    epoints = sum(e.points for e in a.experiments)
    experiment = f" and {epoints:g} for the experiment" if a.experiments else ""
    out += [f"**Points**: {a.points:g} for code ({len(a.tasks)} problems), {qpoints:g} for written questions"
            f"{experiment}. **Time**: about {a.hours:g} hours.", "",
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
            policy.rules_text(), "",
            "## How to hand in", "",
            "- **Code**: your repository as it stands (a git repository or an archive of it). Only the files named "
            "in the deliverables are graded, so keep your changes inside the stubbed pieces; run "
            f'`python -m pytest -m "{all_markers}"` before you hand in.',
            f"- **Written answers and the experiment's report**: one file in the same repository, "
            f"`report/{a.name}.md` (Markdown with LaTeX; or `report/{a.name}.pdf`), with one section per question "
            "and one for the experiment, headed by its number (" + ", ".join(
                f"`## {i}`" for i in [q.id for q in a.questions] + [e.id for e in a.experiments]) + "), and the plots "
            "as image files beside it in `report/`. Written answers are graded on their reasoning: give the "
            "derivation, not only the result; the experiment's report on a sound measurement, a readable plot and a "
            "paragraph that explains what you measured (a wrong prediction costs nothing if the report says why it "
            "was wrong).", ""]
    for t in a.tasks:
        files = sorted({split_spec(u)[0] for u in t.units})
        out += [f"## Problem ({t.marker}): {t.title} ({t.points:g} points)", "", t.text, "",
                "**Deliverable**: " + "; ".join(_deliverable(u) for u in t.units) + ".", "",
                f"**Test**: `python -m pytest -m {t.marker}` "
                f"(in {', '.join(f'`{f}`' for f in tests_of_task(root, t))}). "
                f"**Time**: about {t.minutes} minutes. **Files graded**: {', '.join(f'`{f}`' for f in files)}.", ""]
    for e in a.experiments:
        out += [f"## Experiment ({e.id}): {e.title} ({e.points:g} points)", "", e.text, "",
                f"**Run**: `{e.command}`, with {', '.join(f'`{u}`' for u in e.uses)} from the library. "
                f"**Hand in**: section `## {e.id}` of your report: the plot, your prediction and the paragraph. "
                f"**Time**: about {e.minutes} minutes.", ""]
    if a.questions:
        out += ["## Written questions", "",
                f"Hand these in in `report/{a.name}.md` (see How to hand in). The chapter sets each one up but does "
                "not answer it: some ask you to predict before you run, some to derive for a case the chapter does "
                "not treat.", ""]
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
           "last column. The written questions below are set up by the chapter but not answered in it, and the "
           "experiment is reported as a plot and a paragraph; both are handed in as one report (the handout says "
           "how).", "",
           "| problem | points | write | test |", "|---|---|---|---|"]
    for t in a.tasks:
        units = ", ".join(f"`{path}::{qualname}`" + (f" ({region})" if region else "")
                          for path, qualname, region in map(split_spec, t.units))
        out.append(f"| {t.id} {t.title} | {t.points:g} | {units} | `pytest -m {t.marker}` |")
    out += ["", "Written questions:", ""]
    for q in a.questions:
        out += [f"{q.id}. **{q.title}** ({q.points:g} points). " + " ".join(q.text.split()), ""]
    if a.experiments:
        out += ["Experiment, with a written report (a plot and a paragraph):", ""]
    for e in a.experiments:
        text = " ".join(e.text.split())
        out += [f"{e.id}. **{e.title}** ({e.points:g} points). {text} Run: `{e.command}`.", ""]
    return "\n".join(out).rstrip() + "\n"


def exercises_of(chapter_text: str) -> str:
    """A chapter's Exercises section as it stands: from its heading to the end (it is the chapter's last), or ''."""
    i = chapter_text.find(EXERCISES)
    return chapter_text[i + 1:] if i >= 0 else ""


def with_exercises(chapter_text: str, a: Assignment) -> str:
    """The chapter with its Exercises section (its last) written from the manifest."""
    i = chapter_text.find(EXERCISES)
    head = chapter_text[:i + 1] if i >= 0 else chapter_text.rstrip("\n") + "\n\n"
    return head + exercises(a)


def marker_rows(known: dict) -> list:
    """The map's table rows of task markers, one per assignment."""
    return [f"| `{a.markers[0]}`–`{a.markers[-1]}` | chapter {a.number:02d}, assignment {a.name}: "
            + "; ".join(f"{t.id} {t.title}" for t in a.tasks) + " |" for a in known.values()]


def marker_block(text: str) -> tuple:
    """(first, stop) line indices of the contiguous task-marker rows of a table in ``text``."""
    lines = text.split("\n")
    rows = [i for i, line in enumerate(lines) if MARKER_ROW.match(line)]
    if not rows:
        raise CourseError(f"{MAP} has no table of task markers (rows that start with | `taskN_M`)")
    if rows != list(range(rows[0], rows[-1] + 1)):
        raise CourseError(f"{MAP}: its task-marker rows are not one block (lines {[i + 1 for i in rows]})")
    return rows[0], rows[-1] + 1


def with_marker_rows(text: str, known: dict) -> str:
    """The map with its table of task markers written from the manifests."""
    first, stop = marker_block(text)
    lines = text.split("\n")
    return "\n".join(lines[:first] + marker_rows(known) + lines[stop:])
