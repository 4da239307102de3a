"""Student trees: the project's files, a tree with the units stubbed, restoring it, what it was made for."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from .cut import apply_cuts, cuts_by_file, restore_cuts
from .handout import handout
from .manifest import HANDOUT, IGNORED_PARTS, ROOT, SOLUTIONS, CourseError, assignments, load


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
        raise CourseError(f"--out {out}: {blocked} is a file, not a folder; choose a folder that can hold the "
                          "repository")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not os.access(existing, os.W_OK):
        raise CourseError(f"--out {out} cannot be created: the folder {existing} is not writable")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CourseError(f"--out {out} cannot be created: {e.strerror or e}") from None
    return out


INSTRUCTOR_ONLY = ("README.md", ".ci/")   # left out of a term tree: the instructor's README and CI


def write_tree(root: Path, out: Path, units, handout: str | None = None, leave_out=()) -> Path:
    """A copy of the project in ``out`` with ``units`` ((spec, task) pairs) stubbed, and the handout if given;
    files under ``leave_out`` (paths, or folders ending in /) are not copied."""
    root, out = Path(root), _empty_target(out)
    cuts = cuts_by_file(units, root)
    for rel in student_files(root):
        if any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in leave_out):
            continue
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel in cuts:
            dst.write_text(apply_cuts((root / rel).read_text(encoding="utf-8"), cuts[rel]), encoding="utf-8")
        else:
            shutil.copy2(root / rel, dst)
    if handout is not None:
        (out / HANDOUT).write_text(handout, encoding="utf-8")
    return out


def make(name: str, out: Path, root: Path = ROOT, term: bool = False, stub_earlier: bool = False) -> Path:
    """The student repository of assignment ``name`` in ``out`` (a new or empty folder). With ``term``, the tree
    of a term: the units of this and every later assignment stubbed (no future answers in it), those of the
    earlier ones in place unless ``stub_earlier``, without the instructor's README and CI, as a fresh git
    repository with one commit."""
    a = load(name, root)
    if not term:
        return write_tree(root, out, a.units(), handout(a, root))
    units = [ut for b in assignments(root).values() if b.number >= a.number or stub_earlier for ut in b.units()]
    tree = write_tree(root, out, units, handout(a, root), leave_out=INSTRUCTOR_ONLY)
    _fresh_repository(tree, f"Assignment {a.number}: {a.title} (minialign course assignment {a.name})")
    return tree


def _fresh_repository(tree: Path, message: str) -> None:
    if not shutil.which("git"):
        raise CourseError("--term makes a git repository, and git is not installed")
    git = ["git", "-C", str(tree), "-c", "user.name=minialign course", "-c", "user.email=course@minialign.invalid",
           "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", message]):
        run = subprocess.run(git + args, capture_output=True, text=True)
        if run.returncode != 0:
            raise CourseError(f"git {args[0]} in {tree} failed: {run.stderr.strip()}")


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


def recorded_assignment(tree: Path):
    """The assignment a tree records it was made for (its handout's first line), or None when it records none
    (a loose-file upload, a tree not made by `minialign course make`)."""
    file = Path(tree) / HANDOUT
    if os.path.islink(file) or not file.is_file():
        return None
    with open(file, encoding="utf-8", errors="replace") as f:
        first = f.readline(1000)
    m = re.search(r"minialign course assignment ([\w-]+)", first)
    return m.group(1) if m else None


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
