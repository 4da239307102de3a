"""Suite-wide settings and fixtures: hypothesis profiles, Triton's CPU interpreter when no GPU is present, and
the optional dependencies (torch, triton) requested test by test.
"""
import importlib
import importlib.util
import os
import re

import pytest

# One BLAS/OpenMP thread per test process: pytest-xdist already runs one process per core, and
# oversubscribed BLAS threads slow small matrix products down by an order of magnitude.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# Triton reads TRITON_INTERPRET when it is imported, so it must be set before any test imports it.
try:
    import torch as _torch

    _torch.set_num_threads(1)
    if not _torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # torch is an optional extra; the tests that need it request the `torch` fixture
    pass

from hypothesis import HealthCheck, settings

from minialign.backend import tune_allocator

tune_allocator()

settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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
