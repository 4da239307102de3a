"""The Gradescope autograder of an assignment (``minialign course autograder NAME --out DIR``).

Gradescope unpacks the zip into ``/autograder/source``, runs ``setup.sh`` there once as root when it builds the
image, and for every submission runs ``/autograder/run_autograder`` (a copy of ours) with the student's upload in
``/autograder/submission``; it reads ``/autograder/results/results.json`` (Gradescope's "Autograder
Specifications", gradescope-autograders.readthedocs.io). The bundle holds:

* ``setup.sh``: Python, the CPU build of torch when the assignment needs it, and this repository (``repo/``,
  the instructor's copy without the written questions' solutions) installed with the assignment's extras;
* ``run_autograder``: ``minialign course grade`` on the submission — a repository upload, or loose files at its
  top (found by their names) — with the hidden tests (``hidden/``, if any), writing results.json; the grader
  runs as root and runs the student's code as the unprivileged user ``nobody`` (``sandbox.py``). Should the
  grader itself fail, the script writes a results.json of 0 with the reason: there is always a result;
* ``assignment.txt``: the assignment's name.

The paths are Gradescope's unless ``MINIALIGN_AUTOGRADER_{SOURCE,SUBMISSION,RESULTS}`` name others (the bundle's
test lays out such folders in a temporary directory), and ``MINIALIGN_AUTOGRADER_PYTHON`` another interpreter.
"""
from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

from .grade import extra_test_files
from .manifest import ROOT, CourseError, load, require_repository
from .tree import _empty_target, write_tree

TORCH = "torch==2.13.0"

SETUP = """#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder's image (written by `minialign course
# autograder {name}`).
set -euo pipefail
cd "$(dirname "$0")"
apt-get install -y python3 python3-pip python3-venv git
python3 -m venv /opt/minialign
/opt/minialign/bin/pip install --upgrade pip
{torch}/opt/minialign/bin/pip install -e "repo[{extras}]"
chmod -R a+rX /opt/minialign "$(pwd)"
id nobody >/dev/null
"""

RUN = r"""#!/usr/bin/env bash
# Grade one submission of {name} (written by `minialign course autograder {name}`): always writes results.json.
set -u
SOURCE="${{MINIALIGN_AUTOGRADER_SOURCE:-/autograder/source}}"
SUBMISSION="${{MINIALIGN_AUTOGRADER_SUBMISSION:-/autograder/submission}}"
RESULTS="${{MINIALIGN_AUTOGRADER_RESULTS:-/autograder/results}}"
PYTHON="${{MINIALIGN_AUTOGRADER_PYTHON:-/opt/minialign/bin/python}}"
mkdir -p "$RESULTS"
rm -f "$RESULTS/results.json"
HIDDEN=()
if [ -d "$SOURCE/hidden" ]; then HIDDEN=(--extra-tests "$SOURCE/hidden"); fi
cd "$SOURCE/repo"
"$PYTHON" -m minialign course grade "$SUBMISSION" --assignment {name} ${{HIDDEN[@]+"${{HIDDEN[@]}}"}} \
    --json "$RESULTS/results.json" > "$RESULTS/grade.log" 2>&1
status=$?
cat "$RESULTS/grade.log"
if [ ! -s "$RESULTS/results.json" ]; then
  reason="the grader stopped (exit status $status) before writing results; the instructor has its log"
  printf '{{"score": 0.0, "output": "not graded: %s", "tests": [{{"name": "grading", "score": 0.0, %s}}]}}\n' \
    "$reason" "\"max_score\": {points}, \"output\": \"$reason\", \"visibility\": \"visible\"" \
    > "$RESULTS/results.json"
fi
exit 0
"""


def autograder(name: str, out: Path, extra_tests=None, root: Path = ROOT) -> Path:
    """The autograder bundle of assignment ``name`` in ``out`` (a new or empty folder): the files, and
    ``autograder.zip`` beside them holding them at the zip's root. Returns the zip's path."""
    root = require_repository(root)
    a = load(name, root)
    extra = [] if extra_tests is None else extra_test_files(extra_tests)
    out = _empty_target(out)
    files = out / "autograder"
    write_tree(root, files / "repo", [])
    if extra:
        (files / "hidden").mkdir()
        for f in extra:
            shutil.copy2(f, files / "hidden" / f.name)
    torch = f'/opt/minialign/bin/pip install {TORCH} --index-url https://download.pytorch.org/whl/cpu\n' \
        if "kernels" in a.extras else ""
    (files / "setup.sh").write_text(SETUP.format(name=a.name, torch=torch, extras=a.extras), encoding="utf-8")
    (files / "run_autograder").write_text(RUN.format(name=a.name, points=f"{a.points:g}"), encoding="utf-8")
    (files / "assignment.txt").write_text(a.name + "\n", encoding="utf-8")
    for script in ("setup.sh", "run_autograder"):
        os.chmod(files / script, 0o755)
    target = out / "autograder.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(files.rglob("*")):
            if path.is_file():
                info = zipfile.ZipInfo.from_file(path, path.relative_to(files).as_posix())
                with open(path, "rb") as f:
                    z.writestr(info, f.read(), zipfile.ZIP_DEFLATED)
    if not zipfile.is_zipfile(target):
        raise CourseError(f"{target} was not written as a zip file")
    return target
