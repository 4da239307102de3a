"""The house rules written where a tool checks them: ruff, configured in pyproject.toml's [tool.ruff] (lines of at
most 120 characters, pyflakes, import order), finds nothing in the repository."""
import ast
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


MAX_PARAMETERS = 7
FEW_PARAMETER_FILES = ("minialign/tasks.py", "minialign/methods.py", "minialign/reports.py",
                       "minialign/ingredients.py", "minialign/loop.py", "minialign/trainers/*.py")


def functions_with_many_parameters(source: str, limit: int = MAX_PARAMETERS) -> list[str]:
    """``name (count)`` of every function or method in ``source`` with more than ``limit`` parameters: a leading
    ``self`` or ``cls`` is not counted, ``*args`` and ``**kwargs`` count one each."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
            count = len(names) - (names[:1] in (["self"], ["cls"])) + (a.vararg is not None) + (a.kwarg is not None)
            if count > limit:
                out.append(f"{node.name} ({count})")
    return out


def test_no_function_of_the_run_path_takes_more_than_seven_parameters():
    """ARCHITECTURE.md's rule: the faces' wiring (tasks, methods, reports, ingredients), the loop and every trainer
    take at most 7 parameters; a method's hyper-parameters travel as its options object, its prompts, group size
    and tokenizer as a ``trainers.common.Sampling``."""
    files = sorted(p for pattern in FEW_PARAMETER_FILES for p in ROOT.glob(pattern))
    assert len(files) > 12
    found = [f"{p.relative_to(ROOT)}: {name}" for p in files for name in functions_with_many_parameters(p.read_text())]
    assert not found, f"more than {MAX_PARAMETERS} parameters:\n" + "\n".join(found)


def test_the_parameter_count_can_fail():
    """The count sees methods (without self), keyword-only parameters and * / ** parameters."""
    source = '''
class Trainer:
    def __init__(self, ref, reward_fn, beta=0.1, kl="k1_seq", algo="rloo", ppo_epochs=4, clip=0.2, kl_target=None):
        pass

    def fits(self, a, b, c, d, e, f, g):
        pass

def starred(a, b, c, d, e, f, *args, **kwargs):
    pass

def keyword_only(a, *, b, c, d, e, f, g, h):
    pass
'''
    assert sorted(functions_with_many_parameters(source)) == ["__init__ (8)", "keyword_only (8)", "starred (8)"]
