"""Plain PyTorch reference for tree attention.

A block of ``Tq`` new tokens (the nodes of a candidate tree, or any block) attends to the
``Tk - Tq`` keys already in the KV cache, all visible, and to the ``Tq`` new keys, which are
the last ``Tq`` keys, as a boolean ``tree_mask [Tq, Tq]`` allows. With a lower-triangular
``tree_mask`` this is ordinary causal attention with a cache.
"""

from __future__ import annotations

import torch

__all__ = ["tree_attention_ref", "full_mask"]


def full_mask(tree_mask: torch.Tensor, tk: int) -> torch.Tensor:
    """The ``[Tq, Tk]`` visibility of the new queries: the cache (all True), then ``tree_mask``."""
    tq = tree_mask.shape[0]
    cache = torch.ones(tq, tk - tq, dtype=torch.bool, device=tree_mask.device)
    return torch.cat([cache, tree_mask.bool()], dim=1)


def tree_attention_ref(q, k, v, tree_mask, scale: float | None = None):
    """Softmax attention of new tokens over the cache (all visible) and each other (``tree_mask``).

    Args:
        q (torch.Tensor): queries of the new tokens ``[B, H, Tq, D]``.
        k (torch.Tensor): keys ``[B, Hkv, Tk, D]``, ``Tk >= Tq``: the cache, then the new tokens.
        v (torch.Tensor): values ``[B, Hkv, Tk, D]``.
        tree_mask (torch.Tensor): bool ``[Tq, Tq]``, True where new token ``i`` sees new token ``j``.
        scale (float): score scale, default ``D ** -0.5``.

    Returns:
        ``o [B, H, Tq, D]`` in the dtype of ``q`` (computed in float32, float64 kept). A query
        that sees no key gets 0.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    group = q.shape[1] // k.shape[1]
    k, v = (
        k.repeat_interleave(group, dim=1),
        v.repeat_interleave(group, dim=1),
    )  # [B, H, Tk, D]
    up = (lambda x: x) if q.dtype == torch.float64 else (lambda x: x.float())
    s = torch.matmul(up(q), up(k).transpose(-1, -2)) * scale  # [B, H, Tq, Tk]
    s = s.masked_fill(~full_mask(tree_mask, k.shape[2]), float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(
        0.0
    )  # a row with no visible key: all -inf -> nan -> 0
    return torch.matmul(p, up(v)).to(q.dtype)
