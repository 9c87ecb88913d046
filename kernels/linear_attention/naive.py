"""Plain PyTorch references for linear attention with an optional decay.

Causal linear attention keeps a matrix state per head,

    S_t = exp(g_t) * S_{t-1} + k_t^T v_t          (S_{-1} = initial_state, or 0)
    o_t = scale * q_t S_t

with the log-decay ``g_t <= 0`` one number per head (``decay [H]``,
``g_t = decay[h]``: RetNet) or per token (``decay [B, H, T]``: Mamba-2/SSD,
gated RetNet, scalar GLA); ``None`` means no decay. Two references compute it:

* `linear_attention_quadratic`, the masked quadratic form
  ``o = scale * ((Q K^T) * D) V + scale * exp(G_t) Q S_{-1}``, with ``G`` the
  cumulative sum of the log-decays, ``D[t, s] = exp(G_t - G_s)`` for ``s <= t``
  and 0 above the diagonal;
* `linear_attention_recurrent`, the recurrence above, one token at a time.

Non-causal linear attention is ``o = scale * Q (K^T V)``. Shapes:
``q, k [B, H, T, K]``, ``v [B, H, T, V]``, states ``[B, H, K, V]``. Both compute
in float32 (float64 stays float64) and return ``o`` in the dtype of ``q`` and
the final state in float32 (or float64).
"""

from __future__ import annotations

import torch


def _upcast(x):
    return None if x is None else (x if x.dtype == torch.float64 else x.float())


def _log_decays(decay, B, H, T, like):
    """Per-token log-decays ``[B, H, T]`` in the dtype of ``like``: a per-head
    ``[H]`` is
    repeated over the batch and the positions, ``None`` gives zeros."""
    if decay is None:
        return torch.zeros(B, H, T, dtype=like.dtype, device=like.device)
    if decay.dim() == 1:
        return decay.to(like.dtype)[None, :, None].expand(B, H, T)
    return decay.to(like.dtype)


def _same_sequence(seq_idx, T, device):
    """``[B or 1, T, T]`` bool: positions t and s belong to the same sequence
    (all True without ids)."""
    if seq_idx is None:
        return torch.ones(1, T, T, dtype=torch.bool, device=device)
    return seq_idx[:, :, None] == seq_idx[:, None, :]


def linear_attention_quadratic(
    q,
    k,
    v,
    causal: bool = True,
    decay=None,
    scale=None,
    initial_state=None,
    seq_idx=None,
):
    """Linear attention through the ``[T, T]`` matrix of decayed scores.

    With the cumulative log-decays ``G_t = g_0 + ... + g_t``, the decay from
    ``s`` to ``t`` is ``D[t, s] = exp(G_t - G_s)`` for ``s <= t``
    (``gamma^(t-s)`` for a per-head decay) and 0 above the diagonal;
    ``o = scale * ((Q K^T) * D) V + scale * exp(G_t) Q S_{-1}``.

    Args:
        q (torch.Tensor): queries ``[B, H, T, K]``.
        k (torch.Tensor): keys ``[B, H, T, K]``.
        v (torch.Tensor): values ``[B, H, T, V]``.
        causal (bool): causal (recurrent) form, or ``o = scale * Q (K^T V)``.
        decay (torch.Tensor, optional): log-decays, each <= 0, per head ``[H]``
            or per token ``[B, H, T]`` (causal only).
        scale (float, optional): default ``K ** -0.5``.
        initial_state (torch.Tensor, optional): ``S_{-1}`` of shape
            ``[B, H, K, V]`` (causal only).
        seq_idx (torch.Tensor, optional): sequence ids ``[B, T]`` (causal only):
            positions attend only within their sequence, the initial state
            belongs to the sequence of position 0 and the final state is that of
            the last sequence.

    Returns:
        ``(o [B, H, T, V], final_state [B, H, K, V])``; the final state is
            ``None`` when not causal.
    """
    dtype = q.dtype
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v, s0 = _upcast(q), _upcast(k), _upcast(v), _upcast(initial_state)
    if not causal:
        return (scale * q @ (k.transpose(-1, -2) @ v)).to(dtype), None
    B, H, T, _ = q.shape
    G = _log_decays(decay, B, H, T, q).cumsum(-1)  # [B, H, T]
    lag = G[..., :, None] - G[..., None, :]  # G_t - G_s: [B, H, T, T]
    same = _same_sequence(seq_idx, T, q.device)  # [B or 1, T, T]
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril() & same
    # the masked entries never overflow
    D = torch.exp(lag.masked_fill(~mask[:, None], float("-inf")))
    o = scale * ((q @ k.transpose(-1, -2)) * D) @ v  # [B, H, T, V]
    # [B or 1, T, 1]
    in_last, in_first = (
        same[:, -1, :, None].to(q.dtype),
        same[:, 0, :, None].to(q.dtype),
    )
    # [B, H, T, 1]: decay from s to the end
    w = torch.exp(G[..., -1:] - G)[..., None] * in_last[:, None]
    final = (k * w).transpose(-1, -2) @ v  # [B, H, K, V]
    if s0 is not None:
        # exp(G_t) q_t S_{-1}
        o = o + scale * (q * (torch.exp(G)[..., None] * in_first[:, None])) @ s0
        final = (
            final
            + (torch.exp(G[..., -1]) * in_last[:, None, 0, 0])[..., None, None]
            * s0
        )
    return o.to(dtype), final


def linear_attention_recurrent(
    q, k, v, decay=None, scale=None, initial_state=None, seq_idx=None
):
    """Causal linear attention as an RNN:
    ``S_t = exp(g_t) S_{t-1} + k_t^T v_t``, ``o_t = scale q_t S_t``.

    Same arguments and result as `linear_attention_quadratic` with
    ``causal=True``.
    """
    dtype = q.dtype
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v = _upcast(q), _upcast(k), _upcast(v)
    B, H, T, K = q.shape
    gamma = torch.exp(_log_decays(decay, B, H, T, q))  # [B, H, T]
    S = torch.zeros(B, H, K, v.shape[-1], dtype=q.dtype, device=q.device)
    if initial_state is not None:
        S = _upcast(initial_state).clone()
    outputs = []
    for t in range(T):
        # a new sequence starts from a zero state
        if seq_idx is not None and t > 0:
            S = (
                S
                * (seq_idx[:, t] == seq_idx[:, t - 1]).to(S.dtype)[
                    :, None, None, None
                ]
            )
        # k_t^T v_t
        S = (
            gamma[:, :, t, None, None] * S
            + k[:, :, t, :, None] * v[:, :, t, None, :]
        )
        outputs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, :, t], S))
    return torch.stack(outputs, dim=2).to(dtype), S


def linear_attention_varlen(
    q, k, v, cu_seqlens, decay=None, scale=None, initial_state=None
):
    """Causal linear attention over packed sequences, one call of the quadratic
    form per sequence.

    Sequence ``i`` is positions ``cu_seqlens[i]:cu_seqlens[i + 1]`` of the
    single row of ``q, k, v``; each starts from its own initial state (or 0),
    and its final state is returned. An empty sequence (a repeated offset) keeps
    its initial state.

    Args:
        q (torch.Tensor): queries ``[1, H, total, K]``.
        k (torch.Tensor): keys ``[1, H, total, K]``.
        v (torch.Tensor): values ``[1, H, total, V]``.
        cu_seqlens (torch.Tensor): int offsets ``[N + 1]``, from 0 up to
            ``total``.
        decay (torch.Tensor, optional): log-decays, per head ``[H]`` or per
            token ``[1, H, total]``.
        scale (float, optional): default ``K ** -0.5``.
        initial_state (torch.Tensor, optional): one state per sequence
            ``[N, H, K, V]``.

    Returns:
        ``(o [1, H, total, V], final_states [N, H, K, V])``: ``o`` in the dtype
            of ``q``, the states in float32 (float64 stays float64).
    """
    offsets = [int(c) for c in cu_seqlens.tolist()]
    N, H, K, V = len(offsets) - 1, q.shape[1], q.shape[-1], v.shape[-1]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    pieces, finals = [], []
    for i in range(N):
        a, b = offsets[i], offsets[i + 1]
        s0 = None if initial_state is None else initial_state[i : i + 1]
        if a == b:  # an empty sequence: its state stays as it was
            finals.append(
                torch.zeros(1, H, K, V, dtype=acc, device=q.device)
                if s0 is None
                else s0.to(acc)
            )
            continue
        d = (
            None
            if decay is None
            else (decay if decay.dim() == 1 else decay[:, :, a:b])
        )
        o_i, final_i = linear_attention_quadratic(
            q[:, :, a:b],
            k[:, :, a:b],
            v[:, :, a:b],
            decay=d,
            scale=scale,
            initial_state=s0,
        )
        pieces.append(o_i)
        finals.append(final_i.to(acc))
    o = torch.cat(pieces, dim=2)  # the sequences cover 0 .. total
    return o, torch.cat(finals, dim=0)


def linear_attention_chunk_states(
    k, v, decay=None, initial_state=None, chunk_size: int = 64, seq_idx=None
):
    """The state before each chunk of ``chunk_size`` positions, from the decayed
    sums.

    ``S_before(t0) = sum_{s < t0} exp(G_{t0-1} - G_s) k_s^T v_s``
    ``+ exp(G_{t0-1}) S_{-1}`` for the chunk starts ``t0 = 0, C, 2C, ...``
    (``S_{-1}`` itself at ``t0 = 0``).

    Args:
        k (torch.Tensor): keys ``[B, H, T, K]``.
        v (torch.Tensor): values ``[B, H, T, V]``.
        decay (torch.Tensor, optional): log-decays ``[H]`` or ``[B, H, T]``.
        initial_state (torch.Tensor, optional): ``S_{-1}`` ``[B, H, K, V]``.
        chunk_size (int): the chunk length ``C``.
        seq_idx (torch.Tensor, optional): sequence ids ``[B, T]``, as in
            `linear_attention_quadratic`.

    Returns:
        torch.Tensor: ``[B, H, ceil(T / C), K, V]`` in float32 (float64 stays
            float64).
    """
    k, v, s0 = _upcast(k), _upcast(v), _upcast(initial_state)
    B, H, T, K = k.shape
    G = _log_decays(decay, B, H, T, k).cumsum(-1)  # [B, H, T]
    states = []
    for t0 in range(0, T, chunk_size):
        S = (
            torch.zeros(B, H, K, v.shape[-1], dtype=k.dtype, device=k.device)
            if s0 is None
            else s0
        )
        if t0 > 0:
            # [B or 1, t0]
            same = _same_sequence(
                None if seq_idx is None else seq_idx[:, :t0], t0, k.device
            )[:, -1]
            # [B, H, t0]
            w = torch.exp(G[..., t0 - 1, None] - G[..., :t0]) * same[
                :, None
            ].to(k.dtype)
            S = (k[:, :, :t0] * w[..., None]).transpose(-1, -2) @ v[:, :, :t0]
            if s0 is not None:
                S = (
                    S
                    + (
                        torch.exp(G[..., t0 - 1]) * same[:, None, 0].to(k.dtype)
                    )[..., None, None]
                    * s0
                )
        states.append(S)
    return torch.stack(states, dim=2)


def _check_mixed_chunk(q_quad, k_quad, q_lin, k_lin, v, chunk, scale):
    """Validation for `mixed_chunk_attention` (messages name the argument, as
    elsewhere)."""
    from .._checks import check_float_dtypes, check_same_device, check_scale

    tensors = {
        "q_quad": q_quad,
        "k_quad": k_quad,
        "q_lin": q_lin,
        "k_lin": k_lin,
        "v": v,
    }
    for name, x in tensors.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor of shape [..., T, d], got "
                f"{type(x).__name__}"
            )
        if x.dim() < 2:
            raise ValueError(
                f"{name} must have at least 2 dimensions [..., T, d], got "
                f"shape {tuple(x.shape)}"
            )
    check_float_dtypes(
        tensors,
        allowed=(torch.float16, torch.bfloat16, torch.float32, torch.float64),
    )
    check_same_device(tensors)
    for name in ("k_quad", "q_lin", "k_lin"):
        if tensors[name].shape != q_quad.shape:
            raise ValueError(
                f"{name} must have the shape of q_quad [..., T, S] = "
                f"{tuple(q_quad.shape)}, got {tuple(tensors[name].shape)}"
            )
    if v.shape[:-1] != q_quad.shape[:-1]:
        raise ValueError(
            "v must have the leading dims and length of q_quad "
            f"{tuple(q_quad.shape[:-1])} followed by E, got {tuple(v.shape)}"
        )
    if v.shape[-2] == 0:
        raise ValueError(
            f"v must have at least one position, got shape {tuple(v.shape)}"
        )
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    check_scale("scale", scale)


def mixed_chunk_attention(
    q_quad, k_quad, q_lin, k_lin, v, chunk: int, scale=None
):
    """Causal mixed chunk attention (FLASH): squared-ReLU attention inside each
    chunk of ``chunk`` positions, linear attention on all earlier chunks.

    Position ``t`` lies in chunk ``g(t) = t // C`` (``C = chunk``); its output
    is

        o_t = sum_{g(s) = g(t), s <= t}
                  relu(scale * q_quad_t . k_quad_s)^2 / C * v_s
            + sum_{g(s) < g(t)} (q_lin_t . k_lin_s) / (g(t) C) * v_s

    computed chunk by chunk: a masked ``[C, C]`` product per chunk, plus each
    chunk's ``k_lin^T v`` summed over the chunks *before* it (an exclusive
    prefix sum), so the ``[T, T]`` weights are never formed. The normalisers
    (``C``, and ``g(t) C`` the number of earlier tokens) keep both parts of
    order one at any length; Hua et al.'s code normalises differently (see the
    GAU/FLASH article). With ``chunk >= T`` it is causal squared-ReLU attention
    over the whole sequence divided by ``C``: the quadratic GAU. Computes in
    float32 (float64 stays float64).

    Args:
        q_quad (torch.Tensor): queries of the quadratic part ``[..., T, S]``
            (e.g. ``[B, H, T, S]``, or ``[B, T, S]`` for FLASH's single head).
        k_quad (torch.Tensor): keys of the quadratic part ``[..., T, S]``.
        q_lin (torch.Tensor): queries of the linear part ``[..., T, S]``.
        k_lin (torch.Tensor): keys of the linear part ``[..., T, S]``.
        v (torch.Tensor): values ``[..., T, E]``.
        chunk (int): the chunk length ``C`` (positive); the last chunk may be
            shorter.
        scale (float, optional): multiplies the quadratic part's scores before
            the ReLU; default ``S ** -0.5``.

    Returns:
        torch.Tensor: ``[..., T, E]`` in the dtype of ``v``.

    Raises:
        TypeError: a non-tensor argument, or a dtype that is not floating point
            or differs between the tensors.
        ValueError: too few dims, shapes that do not match, an empty sequence,
            different devices, a chunk that is not a positive int, or a scale
            that is not a positive finite number.

    Example:
        >>> q_quad, k_quad, q_lin, k_lin = (
        ...     torch.randn(2, 100, 32) for _ in range(4)
        ... )
        >>> v = torch.randn(2, 100, 64)
        >>> o = mixed_chunk_attention(q_quad, k_quad, q_lin, k_lin, v, chunk=32)
        >>> o.shape
        torch.Size([2, 100, 64])
    """
    _check_mixed_chunk(q_quad, k_quad, q_lin, k_lin, v, chunk, scale)
    dtype, T = v.dtype, v.shape[-2]
    scale = q_quad.shape[-1] ** -0.5 if scale is None else scale
    # one chunk shorter than C when the whole sequence fits in it
    block = min(chunk, T)

    # [..., T, d] -> [..., N, block, d], zero-padded at the end
    def to_chunks(x):
        x = _upcast(x)
        x = torch.nn.functional.pad(x, (0, 0, 0, (-T) % block))
        return x.reshape(*x.shape[:-2], -1, block, x.shape[-1])

    qq, kq, ql, kl, vc = (
        to_chunks(x) for x in (q_quad, k_quad, q_lin, k_lin, v)
    )
    # [..., N, block, block]
    scores = torch.relu(scale * qq @ kq.transpose(-1, -2)) ** 2 / chunk
    causal = torch.ones(block, block, dtype=torch.bool, device=v.device).tril()
    # [..., N, block, E]: inside each chunk
    o = scores.masked_fill(~causal, 0.0) @ vc
    kv = kl.transpose(-1, -2) @ vc  # [..., N, S, E]: each chunk's K^T V
    before = torch.cat(
        [
            torch.zeros_like(kv[..., :1, :, :]),
            kv[..., :-1, :, :].cumsum(dim=-3),
        ],
        dim=-3,
    )
    # g C
    earlier = (
        torch.arange(kv.shape[-3], device=v.device, dtype=o.dtype) * chunk
    ).clamp_min(1)
    # [..., N, block, E]: the chunks before
    o = o + ql @ before / earlier[:, None, None]
    return o.reshape(*o.shape[:-3], -1, o.shape[-1])[..., :T, :].to(dtype)
