"""The house rules written where a tool checks them: ruff, configured in pyproject.toml's [tool.ruff] (lines of at
most 120 characters, pyflakes, import order), finds nothing in the repository."""
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_no_violation_of_the_house_rules():
    ruff = pytest.importorskip("ruff", reason="ruff is in the dev extra: pip install -e '.[dev]'")
    binary = Path(ruff.find_ruff_bin())
    run = subprocess.run([str(binary), "check", "--no-cache", "--output-format", "concise", "."], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    violations = [line for line in run.stdout.splitlines() if line.startswith(tuple("./abcdefghijklmnopqrstuvwxyz"))
                  and ": " in line]
    assert run.returncode == 0 and not violations, "ruff check found:\n" + "\n".join(violations or [run.stderr])


def test_architecture_names_every_module():
    """ARCHITECTURE.md is the map a newcomer reads: every module of the library and of kernels/ is on it."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    modules = [p for folder in ("minialign", "kernels") for p in sorted((ROOT / folder).rglob("*.py"))
               if p.name not in ("__init__.py", "__main__.py")]
    missing = [str(p.relative_to(ROOT)) for p in modules if p.name not in text]
    assert len(modules) > 50 and not missing, f"ARCHITECTURE.md does not name: {', '.join(missing)}"
