"""FlashAttention's public function and its argument checks."""
from __future__ import annotations

import torch

from .._backend import HAS_TRITON, uses_triton
from .._checks import check_attention_qkv, check_bool, check_scale
from .naive import attention_ref

if HAS_TRITON:
    from . import triton as _triton

def _check_inputs(q, k, v, causal, scale, return_lse):
    check_attention_qkv(q, k, v)
    check_bool("causal", causal)
    check_bool("return_lse", return_lse)
    check_scale("scale", scale)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    scale: float | None = None, return_lse: bool = False):
    """Exact scaled dot-product attention, computed tile by tile with an online softmax.

    ``o = softmax(scale * q @ k^T + mask) @ v`` for every batch element and head, without
    writing the ``[Tq, Tk]`` score matrix to memory. Forward and backward are Triton kernels
    in the FlashAttention-2 style; the backward recomputes the scores from the saved
    log-sum-exp.

    Args:
        q (torch.Tensor): queries of shape ``[B, H, Tq, D]``.
        k (torch.Tensor): keys of shape ``[B, Hkv, Tk, D]``. ``H`` must be a multiple of ``Hkv``
            (grouped-query attention: query head ``h`` uses key head ``h // (H // Hkv)``).
        v (torch.Tensor): values of shape ``[B, Hkv, Tk, D]``.
        causal (bool): mask aligned to the bottom right: query ``i`` sees keys ``j <= i + Tk - Tq``,
            so one query against a cache of ``Tk`` keys sees them all. A query that sees no key
            (only possible when ``Tq > Tk``) gets output 0 and log-sum-exp ``-inf``. Default False.
        scale (float, optional): positive factor applied to ``q @ k^T``. Default ``D ** -0.5``.
        return_lse (bool): also return the log-sum-exp of the scaled, masked scores, shape
            ``[B, H, Tq]``, float32. Gradients do not flow through it. Default False.

    ``q``, ``k`` and ``v`` share one dtype (float16, bfloat16 or float32) and one device. ``D``
    is a multiple of 8 up to 256; lengths are arbitrary (>= 1). The output has the dtype of the
    inputs; scores, softmax statistics and accumulators are float32.

    Where it runs: on CUDA tensors the Triton kernels run. On CPU tensors the Triton kernels
    run in Triton's interpreter when the environment variable ``TRITON_INTERPRET=1`` was set
    before ``kernels`` was imported (slow; this is how the kernels are tested without a GPU),
    except for bfloat16, which the interpreter's matrix product does not support; otherwise,
    and on any other device, the plain PyTorch reference `attention_ref` runs.

    Returns:
        ``o`` of shape ``[B, H, Tq, D]``, or ``(o, lse)`` when ``return_lse=True``.

    Raises:
        TypeError: an argument is not a tensor, a dtype is unsupported or the dtypes differ,
            ``causal``/``return_lse`` is not a bool, ``scale`` is not a number.
        ValueError: wrong number of dimensions, mismatched shapes, heads not divisible, an
            unsupported head dim, an empty length, tensors on different devices, or a scale
            that is not positive and finite.

    Examples:
        >>> q = torch.randn(1, 4, 100, 64)
        >>> k, v = torch.randn(1, 2, 100, 64), torch.randn(1, 2, 100, 64)
        >>> flash_attention(q, k, v, causal=True).shape
        torch.Size([1, 4, 100, 64])
    """
    _check_inputs(q, k, v, causal, scale, return_lse)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if uses_triton(q):
        o, lse = _triton.FlashAttentionFunction.apply(q, k, v, causal, scale)
    else:
        o, lse = attention_ref(q, k, v, causal=causal, scale=scale, return_lse=True)
        lse = lse.float().detach()
    return (o, lse) if return_lse else o
