"""Test setup: without a GPU, the Triton kernels run in Triton's interpreter on the CPU.

``TRITON_INTERPRET`` must be set before ``kernels`` (and so ``triton.jit``) is imported.
With a GPU the kernels run natively on CUDA tensors and the tests use those.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
