"""Where an op runs: the Triton kernel (CUDA, or Triton's interpreter on the CPU) or the reference.

Triton decides when a kernel is decorated, that is when ``kernels`` is imported, whether it
runs in the interpreter: ``TRITON_INTERPRET=1`` must be set before the import.
"""

from __future__ import annotations

import os

import torch

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # e.g. macOS: only the references are available
    HAS_TRITON = False

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def uses_triton(x: torch.Tensor) -> bool:
    """Whether an op on ``x`` runs its Triton kernel (CUDA, or the interpreter on the CPU).

    The interpreter's ``tl.dot`` reads bfloat16 operands as raw 16-bit integers, so bfloat16
    CPU tensors take the reference even under ``TRITON_INTERPRET=1``.
    """
    if not HAS_TRITON:
        return False
    if x.is_cuda:
        return True
    return INTERPRET and x.device.type == "cpu" and x.dtype != torch.bfloat16
