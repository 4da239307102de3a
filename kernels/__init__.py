"""Triton kernels, installed as ``minialign.kernels``: each file holds a kernel, its launcher and its reference."""
