"""Every notebook is stored without outputs and runs top to bottom (with small settings: MINIALIGN_QUICK=1).

A notebook that imports torch or the Triton kernels requests the `torch` or `triton` fixture (conftest.py), so
without them it is skipped with the command that installs them.
"""
import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# an imported module → the fixture that provides what it needs
OPTIONAL = {"torch": "torch", "triton": "triton", "minialign.kernels": "triton", "minialign.torch_backend": "torch"}


def code_cells(path):
    """The source of every code cell, IPython magics and shell lines dropped."""
    cells = json.loads(path.read_text())["cells"]
    return ["\n".join(line for line in "".join(c["source"]).splitlines() if not line.lstrip().startswith(("%", "!")))
            for c in cells if c["cell_type"] == "code"]


def imported_modules(path):
    """Every module a notebook imports (``import a.b`` and ``from a.b import c`` give ``a.b``)."""
    names = set()
    for source in code_cells(path):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
    return names


def optional_fixtures(path):
    """The fixtures of the optional dependencies a notebook imports, e.g. {"torch", "triton"}."""
    return {fixture for module in imported_modules(path) for prefix, fixture in OPTIONAL.items()
            if module == prefix or module.startswith(prefix + ".")}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"])
             if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; store notebooks clean"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch, request):
    needs = optional_fixtures(path)
    if needs:  # the triton fixture checks torch too, and names the command that installs both
        request.getfixturevalue("triton" if "triton" in needs else "torch")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MINIALIGN_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("MINIALIGN_OUT", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def test_optional_dependencies_of_the_notebooks_are_found():
    """The scan that decides which notebooks need torch or triton must see the imports where they are."""
    by_name = {p.name: optional_fixtures(p) for p in NOTEBOOKS}
    assert by_name["08-kernels.ipynb"] == {"torch", "triton"}
    assert by_name["01-autograd.ipynb"] == {"torch"}
    assert by_name["05-rlhf.ipynb"] == set()
