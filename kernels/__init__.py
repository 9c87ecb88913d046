"""Fast LLM kernels: each op a Triton kernel beside a plain PyTorch reference."""

from ._backend import uses_triton
from .flash_attention import flash_attention
from .linear_attention import linear_attention, linear_attention_step
from .selective_scan import selective_scan, selective_scan_step
from .ssd import ssd
from .speculative import speculative_generate, verify_draft

__all__ = [
    "flash_attention",
    "linear_attention",
    "linear_attention_step",
    "selective_scan",
    "selective_scan_step",
    "ssd",
    "verify_draft",
    "speculative_generate",
    "uses_triton",
]
__version__ = "0.1.0"
