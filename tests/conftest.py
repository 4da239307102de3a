"""Suite-wide settings: hypothesis profiles and Triton's CPU interpreter when no GPU is present."""
import os

# Triton reads TRITON_INTERPRET when it is imported, so it must be set before any test imports it.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # torch is an optional extra; tests that need it skip themselves
    pass

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
