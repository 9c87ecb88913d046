"""Plain PyTorch references for linear attention with an optional per-head decay.

Causal linear attention keeps a matrix state per head,

    S_t = gamma * S_{t-1} + k_t^T v_t          (S_{-1} = initial_state, or 0)
    o_t = scale * q_t S_t

with ``gamma = exp(decay[h])`` (``decay`` a log-decay <= 0, ``None`` meaning gamma = 1). Two
references compute it:

* `linear_attention_quadratic`, the masked quadratic form
  ``o = scale * ((Q K^T) * D) V + scale * gamma^(t+1) Q S_{-1}``, with ``D[t, s] = gamma^(t-s)``
  for ``s <= t`` and 0 above the diagonal;
* `linear_attention_recurrent`, the recurrence above, one token at a time.

Non-causal linear attention is ``o = scale * Q (K^T V)``. Shapes: ``q, k [B, H, T, K]``,
``v [B, H, T, V]``, states ``[B, H, K, V]``. Both compute in float32 (float64 stays float64)
and return ``o`` in the dtype of ``q`` and the final state in float32 (or float64).
"""
from __future__ import annotations

import torch


def _upcast(x):
    return None if x is None else (x if x.dtype == torch.float64 else x.float())


def _log_decay(decay, H, like):
    """Per-head log-decay as a ``[H, 1, 1]`` tensor (zeros when ``decay`` is None)."""
    if decay is None:
        return torch.zeros(H, 1, 1, dtype=like.dtype, device=like.device)
    return decay.to(like.dtype).reshape(H, 1, 1)


def linear_attention_quadratic(q, k, v, causal: bool = True, decay=None, scale=None, initial_state=None):
    """Linear attention through the ``[T, T]`` matrix of decayed scores.

    Args:
        q (torch.Tensor): queries ``[B, H, T, K]``.
        k (torch.Tensor): keys ``[B, H, T, K]``.
        v (torch.Tensor): values ``[B, H, T, V]``.
        causal (bool): causal (recurrent) form, or ``o = scale * Q (K^T V)``.
        decay (torch.Tensor, optional): log-decays ``[H]``, each <= 0 (causal only).
        scale (float, optional): default ``K ** -0.5``.
        initial_state (torch.Tensor, optional): ``S_{-1}`` of shape ``[B, H, K, V]`` (causal only).

    Returns:
        ``(o [B, H, T, V], final_state [B, H, K, V])``; the final state is ``None`` when not causal.
    """
    dtype = q.dtype
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v, s0 = _upcast(q), _upcast(k), _upcast(v), _upcast(initial_state)
    if not causal:
        return (scale * q @ (k.transpose(-1, -2) @ v)).to(dtype), None
    T = q.shape[2]
    g = _log_decay(decay, q.shape[1], q)  # [H, 1, 1]
    t = torch.arange(T, device=q.device, dtype=q.dtype)
    lag = t[:, None] - t[None, :]  # t - s
    D = torch.where(lag >= 0, torch.exp(g * lag.clamp_min(0)), torch.zeros((), dtype=q.dtype, device=q.device))
    o = scale * ((q @ k.transpose(-1, -2)) * D) @ v  # [B, H, T, V]
    w = torch.exp(g[:, 0] * (T - 1 - t))[..., None]  # [H, T, 1]: gamma^(T-1-s)
    final = (k * w).transpose(-1, -2) @ v  # [B, H, K, V]
    if s0 is not None:
        o = o + scale * (q * torch.exp(g[:, 0] * (t + 1))[..., None]) @ s0  # gamma^(t+1) q_t S_{-1}
        final = final + torch.exp(g * T) * s0
    return o.to(dtype), final


def linear_attention_recurrent(q, k, v, decay=None, scale=None, initial_state=None):
    """Causal linear attention as an RNN: one state update and one read-out per token.

    Same arguments and result as `linear_attention_quadratic` with ``causal=True``.
    """
    dtype = q.dtype
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v = _upcast(q), _upcast(k), _upcast(v)
    B, H, T, K = q.shape
    gamma = torch.exp(_log_decay(decay, H, q))  # [H, 1, 1]
    S = torch.zeros(B, H, K, v.shape[-1], dtype=q.dtype, device=q.device)
    if initial_state is not None:
        S = _upcast(initial_state).clone()
    outputs = []
    for t in range(T):
        S = gamma * S + k[:, :, t, :, None] * v[:, :, t, None, :]  # k_t^T v_t: [B, H, K, V]
        outputs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, :, t], S))
    return torch.stack(outputs, dim=2).to(dtype), S
