"""The quick tour runs on the oldest and the newest Python that pyproject.toml's classifiers name, each in a fresh
virtual environment with only the project's own dependencies (the NumPy engine: no torch, no triton). A Python that
is not on the machine is skipped, by name."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
VERSIONS = sorted({c.rsplit(":: ", 1)[1] for c in PROJECT["classifiers"] if re.search(r"Python :: 3\.\d+$", c)},
                  key=lambda v: tuple(map(int, v.split("."))))


def interpreter(version: str):
    """A working ``pythonX.Y``: on the PATH, or among pyenv's versions (whose shims may refuse to run it)."""
    pyenv = Path.home() / ".pyenv" / "versions"
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(str(p) for p in pyenv.glob(f"{version}.*/bin/python{version}"))
    for exe in filter(None, candidates):
        if subprocess.run([exe, "-c", "pass"], capture_output=True).returncode == 0:
            return exe
    return None


def test_the_classifiers_name_the_minimum_python():
    assert VERSIONS[0] == PROJECT["requires-python"].removeprefix(">="), (VERSIONS, PROJECT["requires-python"])


@pytest.mark.slow
@pytest.mark.parametrize("version", [VERSIONS[0], VERSIONS[-1]])
def test_the_quick_tour_runs_on_the_oldest_and_newest_python(version, tmp_path):
    exe = interpreter(version)
    if exe is None:
        pytest.skip(f"Python {version} is not on this machine")
    venv = tmp_path / "venv"
    subprocess.run([exe, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-compile", *PROJECT["dependencies"]],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    run = subprocess.run([python, "-m", "minialign", "tour", "--quick", "--out", str(tmp_path / "tour")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert (tmp_path / "tour" / "report.html").exists() and "tour finished" in run.stdout
