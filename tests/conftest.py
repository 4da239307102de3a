"""Suite-wide settings and fixtures: hypothesis profiles, Triton's CPU interpreter when no GPU is present, and
the optional dependencies (torch, triton) requested test by test.
"""
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

# The tests prove the tree they live in, whatever copy of minialign is installed (an editable install of
# another checkout, say, when a course student's tree is tested or graded): this tree comes first on the path,
# for subprocesses too, and minialign.kernels (the top-level kernels/ folder) is imported from it, since an
# installed copy's finder would otherwise map it elsewhere.
ROOT = Path(__file__).resolve().parent.parent


def _pin_to_this_tree():
    sys.path.insert(0, str(ROOT))
    os.environ["PYTHONPATH"] = str(ROOT)  # subprocesses import this tree; their packages come from the interpreter
    for name in [n for n in sys.modules if n == "minialign" or n.startswith("minialign.")]:
        del sys.modules[name]
    import minialign

    kernels = ROOT / "kernels"
    spec = importlib.util.spec_from_file_location("minialign.kernels", kernels / "__init__.py",
                                                  submodule_search_locations=[str(kernels)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["minialign.kernels"] = module
    spec.loader.exec_module(module)
    minialign.kernels = module
    for name, where in (("minialign", ROOT / "minialign"), ("minialign.kernels", kernels)):
        if Path(sys.modules[name].__file__).resolve().parent != where:
            raise ImportError(f"{name} was imported from {sys.modules[name].__file__}, not from this tree ({where})")


_pin_to_this_tree()

# One BLAS/OpenMP thread per test process: pytest-xdist already runs one process per core, and
# oversubscribed BLAS threads slow small matrix products down by an order of magnitude.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# Triton reads TRITON_INTERPRET when it is imported, so it must be set before any test imports it. A run that
# sets it itself (the course grader does) skips importing torch here, which takes seconds; torch, when a test
# imports it, then takes its one thread from OMP_NUM_THREADS.
try:
    if "TRITON_INTERPRET" not in os.environ:
        import torch as _torch

        _torch.set_num_threads(1)
        if not _torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # torch is an optional extra; the tests that need it request the `torch` fixture
    pass

from hypothesis import HealthCheck, Phase, settings

from minialign.backend import tune_allocator

tune_allocator()

settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# The course grader's (minialign/course/grade.py): the examples of "ci", without shrinking a failure to its smallest
# example (a grade needs pass or fail; students see the small example in their own runs).
settings.register_profile("grading", parent=settings.get_profile("ci"),
                          phases=[p for p in Phase if p.name not in ("shrink", "explain")])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# ---------------------------------------------------------------- optional dependencies, test by test
INSTALL = {
    "torch": "pip install torch==2.13.0",
    "triton": "pip install torch==2.13.0 -e '.[kernels]'",
}
TASK_MARKER = re.compile(r"\btask\w*")


def selects_course_tasks(config) -> bool:
    """Whether the run's ``-m`` expression names a course task marker (``pytest -m task1_1``)."""
    return bool(TASK_MARKER.search(config.getoption("markexpr", "") or ""))


def require(config, *modules):
    """Import and return the last of ``modules``; when any is missing, skip the test with the command that
    installs them (the last one's) — or fail it, when the run selects course tasks: a task's test never
    vanishes silently."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        message = (f"needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
                   f"{INSTALL[modules[-1]]}")
        if selects_course_tasks(config):
            pytest.fail(f"this course task's test {message}", pytrace=False)
        pytest.skip(message)
    return importlib.import_module(modules[-1])


@pytest.fixture(scope="session")
def torch(pytestconfig):
    """The torch module (the oracle of the engine's tests and the tensor store of the GPU path)."""
    return require(pytestconfig, "torch")


@pytest.fixture(scope="session")
def triton(pytestconfig):
    """The triton module, with torch, for the kernel tests (the CPU interpreter runs them without a GPU)."""
    return require(pytestconfig, "torch", "triton")
