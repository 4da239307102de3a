"""Triton kernels, installed as ``minialign.kernels``: each file holds a kernel, its launcher and its reference.

This folder is ``minialign.kernels`` only. Imported as a top-level ``kernels`` (with the repository root on
``sys.path``: a notebook or ``python -c`` in the checkout), it steps aside for the package of that name further
along ``sys.path`` (Hugging Face's ``kernels``, which transformers imports), or fails as a missing module does.
"""
if __name__ == "kernels":
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _spec = importlib.machinery.PathFinder.find_spec(
        "kernels", [p for p in sys.path if os.path.abspath(p or os.curdir) != _root])
    if _spec is None:
        raise ModuleNotFoundError("No module named 'kernels' (the kernels/ folder of minialign's checkout is "
                                  "minialign.kernels: import it as such)", name="kernels")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["kernels"] = _module
    _spec.loader.exec_module(_module)
