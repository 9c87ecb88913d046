"""FlashAttention: exact softmax attention without materialising the score matrix.

`flash_attention` (``api.py``) runs the Triton kernels of ``triton.py``; `attention_ref` and
`attention_blockwise` (``naive.py``) are the plain PyTorch references.
"""
from .api import flash_attention
from .naive import attention_blockwise, attention_ref

__all__ = ["flash_attention", "attention_ref", "attention_blockwise"]
