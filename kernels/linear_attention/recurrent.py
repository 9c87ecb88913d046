"""One decoding step of causal linear attention from a state (plain PyTorch).

Decoding one token needs no kernel: the state update is an outer product and the read-out a
vector-matrix product, ``O(K V)`` work per head.
"""
from __future__ import annotations

import torch

from .._checks import check_decay, check_dim, check_float_dtypes, check_same_device, check_scale, check_tensor


def linear_attention_step(q, k, v, state, decay=None, scale=None):
    """Advance the state by one token and read the output.

    ``S = gamma * state + k^T v`` and ``o = scale * q S``, the recurrence of
    `kernels.linear_attention` for a single position.

    Args:
        q (torch.Tensor): the new query ``[B, H, K]``.
        k (torch.Tensor): the new key ``[B, H, K]``.
        v (torch.Tensor): the new value ``[B, H, V]``.
        state (torch.Tensor): ``S_{t-1}`` of shape ``[B, H, K, V]``, e.g. the final state returned by
            ``linear_attention(..., return_final_state=True)`` for the prompt.
        decay (torch.Tensor, optional): log-decays ``[H]`` (each <= 0), as in ``linear_attention``.
            Only its shape, dtype and device are checked here: reading its values back would make
            every decoding step wait for the GPU.
        scale (float, optional): default ``K ** -0.5``.

    Returns:
        ``(o [B, H, V], S_t [B, H, K, V])``: ``o`` in the dtype of ``q``, the state in float32
        (float64 stays float64).

    Examples:
        >>> q, k, v = torch.randn(1, 2, 16), torch.randn(1, 2, 16), torch.randn(1, 2, 8)
        >>> o, S = linear_attention_step(q, k, v, torch.zeros(1, 2, 16, 8))
        >>> o.shape, S.shape
        (torch.Size([1, 2, 8]), torch.Size([1, 2, 16, 8]))
    """
    check_tensor("q", q, 3, "[B, H, K]")
    check_tensor("k", k, 3, "[B, H, K]")
    check_tensor("v", v, 3, "[B, H, V]")
    check_tensor("state", state, 4, "[B, H, K, V]")
    check_float_dtypes({"q": q, "k": k, "v": v})
    check_same_device({"q": q, "k": k, "v": v, "state": state})
    check_scale("scale", scale)
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    B, H, K = q.shape
    check_dim("v", v, 0, "batch size (that of q)", B)
    check_dim("v", v, 1, "number of heads (that of q)", H)
    expected = (B, H, K, v.shape[-1])
    if tuple(state.shape) != expected:
        raise ValueError(f"state must have shape [B, H, K, V] = {expected}, got {tuple(state.shape)}")
    if not state.is_floating_point():
        raise TypeError(f"state must be a floating-point tensor, got {state.dtype}")
    scale = K ** -0.5 if scale is None else float(scale)
    acc = torch.float64 if state.dtype == torch.float64 else torch.float32
    S = state.to(acc)
    if decay is not None:
        check_decay(decay, H, q.device, check_values=False)
        S = torch.exp(decay.to(acc))[None, :, None, None] * S
    S = S + k.to(acc)[..., :, None] * v.to(acc)[..., None, :]  # k^T v: [B, H, K, V]
    o = scale * torch.einsum("bhk,bhkv->bhv", q.to(acc), S)
    return o.to(q.dtype), S
