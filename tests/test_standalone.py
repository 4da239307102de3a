"""The suite stands alone: no test module imports another, none skips itself whole for a missing optional
dependency, and no notebook reaches into tests/ (what a notebook needs lives in the library)."""
import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
SUITE = {p.stem for p in TESTS.glob("*.py")}  # test modules, conftest, helpers, strategies
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def imported_names(tree):
    """(line, top-level module) for every absolute import in a parsed module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module.split(".")[0]


def imports_of_test_modules(source):
    """Lines that import a test module (``test_*``), conftest, or anything through a ``tests`` package."""
    return [f"line {line}: imports {name}" for line, name in imported_names(ast.parse(source))
            if name.startswith("test_") or name in ("conftest", "tests")]


def module_level_importorskips(source):
    """Lines that call ``pytest.importorskip`` outside any function: the whole module would vanish."""
    tree = ast.parse(source)
    inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
              for n in ast.walk(f)}
    return [f"line {node.lineno}: module-level importorskip" for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "importorskip" and id(node) not in inside]


def notebook_reaches_into_tests(source):
    """Lines of notebook code that put tests/ on sys.path or import a module of the test suite."""
    problems = [f"line {line}: imports {name}" for line, name in imported_names(ast.parse(source))
                if name in SUITE or name == "tests"]
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("insert", "append", "extend") and "sys.path" in ast.unparse(node.func.value)
                and "tests" in ast.unparse(node)):
            problems.append(f"line {node.lineno}: {ast.unparse(node)}")
    return problems


def notebook_code(path):
    cells = json.loads(path.read_text())["cells"]
    return "\n".join("\n".join(line for line in "".join(c["source"]).splitlines()
                               if not line.lstrip().startswith(("%", "!")))
                     for c in cells if c["cell_type"] == "code")


@pytest.mark.parametrize("path", sorted(TESTS.glob("*.py")), ids=lambda p: p.name)
def test_no_test_module_imports_another(path):
    problems = imports_of_test_modules(path.read_text())
    assert not problems, f"{path.name}: " + "; ".join(problems) + " (shared helpers go to tests/helpers.py)"


@pytest.mark.parametrize("path", sorted(TESTS.glob("test_*.py")), ids=lambda p: p.name)
def test_no_test_module_skips_itself_whole(path):
    problems = module_level_importorskips(path.read_text())
    assert not problems, f"{path.name}: " + "; ".join(problems) + " (request the torch or triton fixture instead)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_notebook_imports_the_tests(path):
    problems = notebook_reaches_into_tests(notebook_code(path))
    assert not problems, f"{path.name}: " + "; ".join(problems) + " (move what it needs into the library)"


def test_the_checks_catch_what_they_forbid():
    """Each check must be able to fail."""
    assert imports_of_test_modules("from test_gpt import tiny_gpt\nimport numpy as np\n") == [
        "line 1: imports test_gpt"]
    assert imports_of_test_modules("import tests.test_lab\nfrom helpers import close\n") == ["line 1: imports tests"]
    assert module_level_importorskips("import pytest\ntorch = pytest.importorskip('torch')\n") == [
        "line 2: module-level importorskip"]
    assert module_level_importorskips("def test_x():\n    pytest.importorskip('scipy')\n") == []
    bad = 'import sys\nsys.path.insert(0, str(ROOT / "tests"))\nfrom test_trainers_exact import setup\n'
    assert notebook_reaches_into_tests(bad) == ["line 3: imports test_trainers_exact",
                                                "line 2: sys.path.insert(0, str(ROOT / 'tests'))"]
    assert notebook_reaches_into_tests("from minialign.experiments.rlhf_lab import tiny_lab\n") == []


# ---------------------------------------------------------------- no test reads outside the repository
SETTINGS = {"HYPOTHESIS_PROFILE", "CI", "MINIALIGN_EXPECT_UNPRIVILEGED"}  # environment variables a test may read:
# settings, never places


def outside_reads(source):
    """Lines that read an environment variable other than a setting (a folder named by the environment is a
    file outside the repository), or open an absolute path or one that climbs out with '..'."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            args = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if name in ("os.environ.get", "os.getenv") and args and args[0] not in SETTINGS:
                problems.append(f"line {node.lineno}: reads ${args[0]}")
            if name.split(".")[-1] in ("Path", "open") and any(a.startswith(("/", "~")) or ".." in a for a in args):
                problems.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
              and ast.unparse(node.value) == "os.environ"):
            problems.append(f"line {node.lineno}: reads {ast.unparse(node)}")
    return problems


def test_the_outside_read_check_sees_environment_folders_and_absolute_paths():
    assert len(outside_reads('import os\nS = Path(os.environ["SEEDS"])\nT = os.environ.get("X")\n'
                             'U = open("/work/x.txt")\nV = Path("../x")\n')) == 4
    assert outside_reads('import os\nos.environ.get("HYPOTHESIS_PROFILE", "ci")\nenv = {**os.environ}\n') == []


@pytest.mark.parametrize("path", sorted(TESTS.glob("*.py")), ids=lambda p: p.name)
def test_no_test_reads_a_file_outside_the_repository(path):
    problems = outside_reads(path.read_text())
    assert not problems, f"{path.name}: " + "; ".join(problems) + " (a test needs only the repository)"
