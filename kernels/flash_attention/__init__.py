"""FlashAttention: exact softmax attention without materialising the score matrix.

`flash_attention` (``api.py``) checks its arguments and calls the custom op of ``op.py``, which
runs the Triton kernels of ``triton.py``; `attention_ref`, `attention_ref_backward` and
`attention_blockwise` (``naive.py``) are the plain PyTorch references.
"""

from .api import flash_attention
from .naive import attention_blockwise, attention_ref, attention_ref_backward

__all__ = [
    "flash_attention",
    "attention_ref",
    "attention_ref_backward",
    "attention_blockwise",
]
