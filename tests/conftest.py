"""Suite-wide settings: hypothesis profiles and Triton's CPU interpreter when no GPU is present."""
import os

# One BLAS/OpenMP thread per test process: pytest-xdist already runs one process per core, and
# oversubscribed BLAS threads slow small matrix products down by an order of magnitude.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# Triton reads TRITON_INTERPRET when it is imported, so it must be set before any test imports it.
try:
    import torch

    torch.set_num_threads(1)
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # torch is an optional extra; tests that need it skip themselves
    pass

from hypothesis import HealthCheck, settings

from minialign.backend import tune_allocator

tune_allocator()

settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
