"""README's two commands stay true: the test command is the one CI runs, and the tour command exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_opens_with_the_tour_and_the_test_commands():
    tour, tests = readme_commands()
    assert tour.endswith("minialign tour")
    assert "pytest" in tests


def test_ci_runs_exactly_the_readme_test_command():
    _, tests = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    setup, _, run = tests.rpartition("&& ")
    assert run.strip() in [line.strip() for line in ci.splitlines()]
    install = re.search(r"pip install (torch==[\d.]+ -e '\.\[[a-z,]+\]')", setup).group(1)
    assert install in ci
