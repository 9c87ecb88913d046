"""Fast LLM kernels: each op a Triton kernel beside a plain PyTorch reference."""
from .flash_attention import flash_attention

__all__ = ["flash_attention"]
__version__ = "0.1.0"
