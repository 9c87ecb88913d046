"""Tree attention: one forward verifies a whole tree of candidate tokens.

The candidates of a Medusa step form a tree; flattened, they are a block of ``Tq`` new tokens
that must each see the KV cache (all of it) and their own ancestors in the tree (not their
siblings or cousins). `tree_attention` is that attention: keys are the cache followed by the
new tokens, and a boolean ``tree_mask [Tq, Tq]`` says which new token sees which.
"""

from __future__ import annotations

import torch

from ..._backend import HAS_TRITON, uses_triton
from ..._checks import (
    check_attention_qkv,
    check_same_device,
    check_scale,
    check_tensor,
)
from .naive import tree_attention_ref

if HAS_TRITON:
    from .triton import tree_attention_fwd

__all__ = ["tree_attention", "tree_attention_ref"]


def _check_inputs(q, k, v, tree_mask, scale):
    check_attention_qkv(q, k, v)
    check_tensor("tree_mask", tree_mask, 2, "[Tq, Tq]")
    check_same_device({"q": q, "tree_mask": tree_mask})
    check_scale("scale", scale)
    if tree_mask.dtype != torch.bool:
        raise TypeError(
            f"tree_mask must be a bool tensor, got {tree_mask.dtype}"
        )
    Tq = q.shape[2]
    if k.shape[2] < Tq:
        raise ValueError(
            f"k must hold the cache and then the Tq={Tq} new keys (Tk >= Tq), got Tk={k.shape[2]}"
        )
    if tuple(tree_mask.shape) != (Tq, Tq):
        raise ValueError(
            f"tree_mask must have shape [Tq, Tq] = ({Tq}, {Tq}), got {tuple(tree_mask.shape)}"
        )
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        raise ValueError(
            "tree_attention has no backward: call it under torch.no_grad() "
            "or on tensors that do not require grad"
        )


def tree_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tree_mask: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of a block of new tokens over the KV cache (all visible) and each other (masked).

    Keys and values hold the ``Tk - Tq`` cached positions followed by the ``Tq`` new tokens.
    Query ``i`` sees every cached key, and new key ``j`` when ``tree_mask[i, j]`` is True. For a
    candidate tree, ``tree_mask[i, j]`` is True when node ``j`` is node ``i`` or one of its
    ancestors; a lower-triangular mask gives ordinary causal attention with a cache.

    Args:
        q (torch.Tensor): queries of the new tokens ``[B, H, Tq, D]``.
        k (torch.Tensor): keys ``[B, Hkv, Tk, D]``, ``Tk >= Tq``; ``H`` a multiple of ``Hkv``.
        v (torch.Tensor): values ``[B, Hkv, Tk, D]``.
        tree_mask (torch.Tensor): bool ``[Tq, Tq]``, shared by every batch element and head.
        scale (float, optional): positive factor applied to ``q @ k^T``. Default ``D ** -0.5``.

    ``q``, ``k``, ``v`` share one dtype (float16, bfloat16 or float32) and one device with
    ``tree_mask``; ``D`` is a multiple of 8 up to 256. Forward only: no gradient (inputs that
    require grad are refused unless grad mode is off). A query that sees no key gets 0.

    Where it runs: on CUDA tensors the Triton kernel runs. On CPU tensors it runs in Triton's
    interpreter when ``TRITON_INTERPRET=1`` was set before ``kernels`` was imported (except
    bfloat16); otherwise the PyTorch reference `tree_attention_ref` runs.

    Returns:
        ``o`` of shape ``[B, H, Tq, D]``, dtype of ``q``.

    Raises:
        TypeError: not tensors, unsupported or different dtypes, ``tree_mask`` not bool.
        ValueError: wrong shapes, ``Tk < Tq``, heads not divisible, unsupported head dim,
            tensors on different devices, a bad ``scale``, inputs that require grad.

    Examples:
        >>> q = torch.randn(1, 2, 3, 16)
        >>> k, v = torch.randn(1, 2, 10, 16), torch.randn(1, 2, 10, 16)  # 7 cached + 3 new
        >>> tree = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
        >>> tree_attention(q, k, v, tree).shape
        torch.Size([1, 2, 3, 16])
    """
    _check_inputs(q, k, v, tree_mask, scale)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if uses_triton(q):
        return tree_attention_fwd(q, k, v, tree_mask, scale)
    return tree_attention_ref(q, k, v, tree_mask, scale=scale)
