"""The top-level kernels/ folder is ``minialign.kernels`` only: with the repository root on ``sys.path`` (a notebook,
``python -c`` in the checkout), ``import kernels`` finds the third-party package of that name (Hugging Face's, which
transformers imports) or nothing, never ours, while ``minialign.kernels`` still loads from this tree."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LOAD_OURS = f"""
import importlib.util, sys
kernels = {str(ROOT / "kernels")!r}
spec = importlib.util.spec_from_file_location("minialign.kernels", kernels + "/__init__.py",
                                              submodule_search_locations=[kernels])
module = importlib.util.module_from_spec(spec)
sys.modules["minialign.kernels"] = module
spec.loader.exec_module(module)
attention = importlib.util.find_spec("minialign.kernels.attention")  # found, not run: it needs triton
assert attention.origin.startswith(kernels), attention.origin
print("ours:", module.__name__)
"""


def python_in_root(code, pythonpath=""):
    """``python -c code`` run from the repository root (its first sys.path entry), with ``pythonpath`` after it."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": pythonpath}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_a_third_party_kernels_package_later_on_the_path_wins_and_minialign_kernels_still_loads(tmp_path):
    fake = tmp_path / "site" / "kernels"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("WHO = 'third-party'\n")
    run = python_in_root("import kernels; print('kernels:', kernels.WHO, kernels.__file__)" + LOAD_OURS,
                         str(tmp_path / "site"))
    assert run.returncode == 0, run.stderr
    assert f"kernels: third-party {fake / '__init__.py'}" in run.stdout
    assert "ours: minialign.kernels" in run.stdout


def test_without_a_third_party_kernels_package_import_kernels_finds_nothing():
    run = python_in_root("import kernels")
    assert run.returncode == 1
    assert "ModuleNotFoundError: No module named 'kernels'" in run.stderr and "minialign.kernels" in run.stderr
