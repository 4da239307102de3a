"""The memory arithmetic of chapter 08, Section 1: what an ``[N, V]`` array of logits costs, against what the fused
log-prob/f-divergence kernel keeps per row instead. Plain Python, no torch: these are the numbers the chapter and
its figure quote, and ``tests/test_kernel_memory.py`` checks them against NumPy's ``nbytes`` and the kernel's output.
"""
from __future__ import annotations

BYTES_PER_ENTRY = {"bf16": 2, "fp16": 2, "fp32": 4}
# the fused forward returns, per row, the float32 fields of logprob_fdiv.LogprobFdivOutput:
# logp, ref_logp, entropy, div, lse, ref_lse, row_scalar (S) and ref_row_scalar (G)
FUSED_ROW_STATS = 8
# forward plus backward over one [N, V] array: read z and r (forward), read z and r and write dL/dz (backward)
COMPULSORY_PASSES = 5


def _check(n: int, v: int = 1, dtype: str = "fp32") -> None:
    if int(n) != n or n < 0 or int(v) != v or v < 0:
        raise ValueError(f"N and V must be non-negative integers; got N = {n}, V = {v}")
    if dtype not in BYTES_PER_ENTRY:
        raise ValueError(f"dtype must be one of {sorted(BYTES_PER_ENTRY)}; got {dtype!r}")


def logits_bytes(n: int, v: int, dtype: str = "bf16") -> int:
    """Bytes of one ``[N, V]`` array of logits (or of any ``[N, V]`` temporary) stored in ``dtype``."""
    _check(n, v, dtype)
    return int(n) * int(v) * BYTES_PER_ENTRY[dtype]


def fused_state_bytes(n: int) -> int:
    """Bytes the fused forward writes for ``N`` rows: eight float32 statistics per row, whatever ``V`` is."""
    _check(n)
    return FUSED_ROW_STATS * BYTES_PER_ENTRY["fp32"] * int(n)


def compulsory_traffic_bytes(n: int, v: int, dtype: str = "bf16") -> int:
    """Bytes forward plus backward must move at least: five passes over an ``[N, V]`` array in ``dtype``."""
    return COMPULSORY_PASSES * logits_bytes(n, v, dtype)
