"""minialign: aligning language models with preferences, from scratch.

The engine (``Tensor``, ``functional``), the model (``GPT``), and the checkpoints (``save``, ``load``) are
re-exported here; everything else lives in modules named for what they hold.
"""
from . import functional
from .gradcheck import GradcheckError, gradcheck
from .io import load, save
from .tensor import Tensor, concatenate, no_grad, stack, tensor

__all__ = ["Tensor", "tensor", "no_grad", "concatenate", "stack", "functional", "gradcheck", "GradcheckError",
           "save", "load"]
__version__ = "0.1.0"
