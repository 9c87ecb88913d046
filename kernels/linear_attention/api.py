"""Linear attention's public functions and their argument checks.

`linear_attention` runs the chunk-parallel Triton kernels (``triton.py``) or the
reference; `linear_attention_step` advances a state by one token: the state
update is an outer product and the read-out a vector-matrix product, ``O(K V)``
work per head, fused into one Triton kernel (``_step_kernel``) when no gradient
is needed, plain PyTorch otherwise.
"""

from __future__ import annotations

import torch

from .._backend import HAS_TRITON, uses_triton
from .._checks import (
    check_bool,
    check_dim,
    check_float_dtypes,
    check_same_device,
    check_scale,
    check_tensor,
    values_checkable,
)
from .naive import (
    linear_attention_chunk_states,
    linear_attention_quadratic,
    linear_attention_varlen,
)

if HAS_TRITON:
    from .op import linear_attention_fwd, linear_attention_step_op
    from .triton import _config, linear_attention_step_fused, varlen_layout


def check_log_decay(
    decay, B: int, H: int, T: int, device, per_token: str = "[B, H, T]"
) -> None:
    """``decay`` must be a floating tensor of log-decays, ``[H]`` or
    ``per_token``, on ``device``.

    Its values (finite, <= 0) are checked only on CPU tensors: reading a CUDA
    tensor back would make the host wait for the GPU on every call and break
    CUDA graph capture.
    """
    if not isinstance(decay, torch.Tensor):
        raise TypeError(
            f"decay must be a torch.Tensor of log-decays [H] or {per_token}, "
            f"got {type(decay).__name__}"
        )
    if not decay.is_floating_point():
        raise TypeError(
            "decay must be a floating-point tensor of log-decays, got "
            f"{decay.dtype}"
        )
    if decay.dim() == 1:
        if decay.shape[0] != H:
            raise ValueError(
                f"decay must have one log-decay per head, shape [{H}], got "
                f"{tuple(decay.shape)}"
            )
    else:
        expected = (B, H) if T is None else (B, H, T)
        if tuple(decay.shape) != expected:
            raise ValueError(
                f"decay must have shape [H] = ({H},) or {per_token} = "
                f"{expected}, got {tuple(decay.shape)}"
            )
    if decay.device != device:
        raise ValueError(
            f"decay must be on the device of q ({device}), got {decay.device}"
        )
    if (
        decay.device.type == "cpu"
        and not decay.is_meta
        and not torch.compiler.is_compiling()
    ):
        with torch.no_grad():
            if not torch.isfinite(decay).all() or (decay > 0).any():
                raise ValueError(
                    "decay must hold finite log-decays <= 0 (gamma = "
                    "exp(decay) in (0, 1]), got values in "
                    f"[{decay.min().item()}, {decay.max().item()}]"
                )


def _check_cu_seqlens(
    cu_seqlens, q, causal, seq_idx, normalize, return_chunk_states
):
    """Checks of ``cu_seqlens`` ``[N + 1]``; returns N (None without it). Its
    values (from 0,
    nondecreasing, up to the packed length) are read on CPU tensors only."""
    if cu_seqlens is None:
        return None
    check_tensor("cu_seqlens", cu_seqlens, 1, "[N + 1]")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(
            "cu_seqlens must hold int32 or int64 offsets, got "
            f"{cu_seqlens.dtype}"
        )
    if cu_seqlens.device != q.device:
        raise ValueError(
            f"cu_seqlens must be on the device of q ({q.device}), got "
            f"{cu_seqlens.device}"
        )
    if cu_seqlens.shape[0] < 2:
        raise ValueError(
            "cu_seqlens must hold N + 1 >= 2 offsets (N sequences), got shape "
            f"{tuple(cu_seqlens.shape)}"
        )
    B, T = q.shape[0], q.shape[2]
    if B != 1:
        raise ValueError(
            "packed sequences (cu_seqlens) lie along T of a batch of one, q "
            f"[1, H, total, K]; got batch size {B}"
        )
    if not causal:
        raise ValueError("cu_seqlens needs causal=True")
    for name, given in (
        ("seq_idx", seq_idx is not None),
        ("normalize", normalize),
        ("return_chunk_states", return_chunk_states),
    ):
        if given:
            raise ValueError(f"cu_seqlens does not go together with {name}")
    if values_checkable(cu_seqlens):
        c = cu_seqlens.cpu()
        if c[0] != 0 or c[-1] != T or (c[1:] < c[:-1]).any():
            raise ValueError(
                f"cu_seqlens must rise from 0 to the packed length {T} without "
                f"falling, got {c.tolist()}"
            )
    return cu_seqlens.shape[0] - 1


def _check_inputs(
    q,
    k,
    v,
    causal,
    decay,
    scale,
    initial_state,
    return_final_state,
    normalize,
    return_chunk_states=False,
    chunk_size=64,
    seq_idx=None,
    cu_seqlens=None,
):
    check_tensor("q", q, 4, "[B, H, T, K]")
    check_tensor("k", k, 4, "[B, H, T, K]")
    check_tensor("v", v, 4, "[B, H, T, V]")
    check_float_dtypes({"q": q, "k": k, "v": v})
    check_same_device({"q": q, "k": k, "v": v})
    for name, flag in (
        ("causal", causal),
        ("return_final_state", return_final_state),
        ("normalize", normalize),
        ("return_chunk_states", return_chunk_states),
    ):
        check_bool(name, flag)
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or chunk_size < 1
        or chunk_size % 64
    ):
        raise ValueError(
            "chunk_size must be a positive multiple of 64 (the kernels' "
            f"chunk), got {chunk_size!r}"
        )
    check_scale("scale", scale)
    B, H, T, K = q.shape
    if k.shape != q.shape:
        raise ValueError(
            f"k must have the shape of q [B, H, T, K] = {tuple(q.shape)}, got "
            f"{tuple(k.shape)}"
        )
    for dim, what, size in (
        (0, "batch size", B),
        (1, "number of heads", H),
        (2, "length", T),
    ):
        check_dim("v", v, dim, f"{what} (that of q)", size)
    for name, size in (
        ("K (head dim of q and k)", K),
        ("V (head dim of v)", v.shape[-1]),
    ):
        if size < 1:
            raise ValueError(f"{name} must be at least 1, got {size}")
    if B == 0 or H == 0 or T == 0:
        raise ValueError(
            "q must have at least one batch element, head and position, got "
            f"shape {tuple(q.shape)}"
        )
    if not causal:
        for name, value in (("decay", decay), ("initial_state", initial_state)):
            if value is not None:
                raise ValueError(
                    f"{name} needs causal=True: non-causal linear attention "
                    "has no recurrence"
                )
        for name, flag in (
            ("return_final_state", return_final_state),
            ("return_chunk_states", return_chunk_states),
        ):
            if flag:
                raise ValueError(
                    f"{name} needs causal=True: non-causal linear attention "
                    "has no state"
                )
    if decay is not None:
        check_log_decay(decay, B, H, T, q.device)
    if seq_idx is not None:
        check_tensor("seq_idx", seq_idx, 2, "[B, T]")
        if seq_idx.dtype not in (torch.int32, torch.int64):
            raise TypeError(
                "seq_idx must hold int32 or int64 sequence ids, got "
                f"{seq_idx.dtype}"
            )
        if tuple(seq_idx.shape) != (B, T):
            raise ValueError(
                f"seq_idx must have shape [B, T] = {(B, T)}, got "
                f"{tuple(seq_idx.shape)}"
            )
        check_same_device({"q": q, "seq_idx": seq_idx})
        if (
            seq_idx.device.type == "cpu"
            and T > 1
            and not torch.compiler.is_compiling()
            and (seq_idx[:, 1:] < seq_idx[:, :-1]).any()
        ):
            raise ValueError(
                "seq_idx must be nondecreasing along T: each sequence is one "
                "contiguous run of positions"
            )
        if not causal:
            raise ValueError("seq_idx needs causal=True")
    N = _check_cu_seqlens(
        cu_seqlens, q, causal, seq_idx, normalize, return_chunk_states
    )
    if initial_state is not None:
        layout = (
            "[B, H, K, V]"
            if cu_seqlens is None
            else "[N, H, K, V] (one per packed sequence)"
        )
        check_tensor("initial_state", initial_state, 4, layout)
        expected = (B if cu_seqlens is None else N, H, K, v.shape[-1])
        if tuple(initial_state.shape) != expected:
            raise ValueError(
                f"initial_state must have shape {layout} = {expected}, got "
                f"{tuple(initial_state.shape)}"
            )
        if not initial_state.is_floating_point():
            raise TypeError(
                "initial_state must be a floating-point tensor, got "
                f"{initial_state.dtype}"
            )
        check_same_device({"q": q, "initial_state": initial_state})
    if normalize and (
        initial_state is not None or return_final_state or return_chunk_states
    ):
        raise ValueError(
            "normalize=True does not carry the normaliser's state: "
            "initial_state, return_final_state and return_chunk_states are "
            "not supported with it"
        )


def linear_attention(
    q,
    k,
    v,
    causal: bool = True,
    decay=None,
    scale=None,
    initial_state=None,
    return_final_state: bool = False,
    normalize: bool = False,
    return_chunk_states: bool = False,
    chunk_size: int = 64,
    seq_idx=None,
    cu_seqlens=None,
):
    """Causal (or non-causal) linear attention with an optional per-head or
    per-token decay.

    Causal: the state ``S_t = exp(g_t) * S_{t-1} + k_t^T v_t`` (``S_{-1}`` =
    ``initial_state`` or 0) and the output ``o_t = scale * q_t S_t``, with the
    log-decay ``g_t = decay[h]`` (per head) or ``decay[b, h, t]`` (per token).
    Non-causal: ``o = scale * Q (K^T V)``. Apply a feature map (e.g.
    `elu_plus_one`) to ``q`` and ``k`` first for the classic kernelised
    attention.

    Args:
        q (torch.Tensor): queries ``[B, H, T, K]``.
        k (torch.Tensor): keys ``[B, H, T, K]``.
        v (torch.Tensor): values ``[B, H, T, V]``.
        causal (bool): the recurrent form (default) or the non-causal one.
        decay (torch.Tensor, optional): log-decays <= 0, per head ``[H]``
            (RetNet) or per token ``[B, H, T]`` (Mamba-2/SSD, gated RetNet, the
                     scalar form of GLA); ``None`` means no
            decay. Causal only. Gradients flow to it. Its values are checked
            (finite, <= 0) only on CPU tensors, where reading them costs no wait
            for a GPU.
        scale (float, optional): default ``K ** -0.5``.
        initial_state (torch.Tensor, optional): ``S_{-1}`` of shape
            ``[B, H, K, V]``; gradients flow to it.
        return_final_state (bool): also return ``S_{T-1}`` ``[B, H, K, V]``
            (float32) to continue from.
        normalize (bool): divide by ``scale * q_t . sum_s gamma^(t-s) k_s``
            ("Transformers are RNNs"), computed with the same kernel by
            appending a column of ones to ``v``. Meant for positive features; a
            small epsilon (1e-6) keeps the division finite.
        return_chunk_states (bool): also return the state before each chunk of
            ``chunk_size`` positions, ``[B, H, ceil(T / chunk_size), K, V]``
            (float32; the first is the initial state or 0), as FLASH-style and
            hybrid layers need; gradients flow through them.
        chunk_size (int): the chunk length of ``return_chunk_states``, a
            multiple of 64.
        seq_idx (torch.Tensor, optional): int32 or int64 sequence ids ``[B, T]``
            for sequences packed into one row: a position attends only to
            earlier positions with the same id (the state restarts from zero
            where the id changes). The initial state belongs to the sequence of
            position 0, the final state is that of the last position. Ids are
            nondecreasing along ``T``, as mamba_ssm's ``seq_idx`` (checked on
            CPU tensors only). Causal only.
        cu_seqlens (torch.Tensor, optional): int32 or int64 offsets ``[N + 1]``
            of ``N`` sequences packed along ``T`` of a batch of one
            (``q [1, H, total, K]``), as flash-attn's ``flash_attn_varlen_func``
            and flash-linear-attention: sequence ``i`` is positions
            ``cu_seqlens[i]:cu_seqlens[i + 1]`` and its state starts afresh from
            ``initial_state[i]`` (or 0). ``initial_state`` and the final state
            are then per sequence, ``[N, H, K, V]``; an empty sequence (a
            repeated offset) keeps its initial state. A per-token decay is
            ``[1, H, total]``. The offsets must rise from 0 to ``total``
            (checked on CPU tensors only: no wait for the GPU). Causal only; not
            with ``seq_idx``, ``normalize`` or ``return_chunk_states``.

    ``q``, ``k``, ``v`` share a dtype (float16, bfloat16 or float32) and a
    device; any head dims K and V and any length ``T >= 1``.

    Where it runs: the causal form runs the chunk-parallel Triton kernels (each
    chunk's contribution to the state, a pass over the chunks that sums them,
    then every chunk's output at once; the backward mirrors it) on CUDA tensors,
    and on CPU tensors in Triton's interpreter when ``TRITON_INTERPRET=1`` was
    set before ``kernels`` was imported (except bfloat16); otherwise the PyTorch
    reference `linear_attention_quadratic`. The non-causal form is two matrix
    products in PyTorch everywhere.

    Packed sequences (``cu_seqlens``) run the same kernels on a copy of the
    inputs in which every sequence starts at a chunk boundary, computed on the
    device from the offsets: no padding to the longest sequence, at most one
    partial chunk per sequence, so the work is ``O(total + N * chunk)``; only
    the pass over the chunks restarts the state at each sequence.

    Returns:
        ``o [B, H, T, V]`` in the dtype of ``q``; ``(o, S_{T-1})`` with
            ``return_final_state=True`` (``[N, H, K, V]``, each sequence's last
            state, with ``cu_seqlens``); the chunk states appended last with
            ``return_chunk_states=True``.

    Raises:
        TypeError: a non-tensor, an unsupported or mixed dtype, a flag that is
            not a bool.
        ValueError: wrong dims or shapes, an empty tensor, different devices, a
            decay that is not ``[H]`` or ``[B, H, T]`` (or, on the CPU, positive
            or non-finite), an initial state of the wrong shape, or decay /
            initial_state / return_final_state with ``causal=False``; for
            ``cu_seqlens``: a batch size other than 1, fewer than 2 offsets,
            offsets that do not rise from 0 to ``T`` (on CPU), or one of the
            options it does not go with.

    Examples:
        >>> q, k = torch.randn(1, 2, 100, 16), torch.randn(1, 2, 100, 16)
        >>> v = torch.randn(1, 2, 100, 32)
        >>> o, S = linear_attention(
        ...     q, k, v, decay=torch.tensor([-0.1, -0.01]),
        ...     return_final_state=True,
        ... )
        >>> o.shape, S.shape
        (torch.Size([1, 2, 100, 32]), torch.Size([1, 2, 16, 32]))
        >>> # two sequences, 30 and 70 long
        >>> cu = torch.tensor([0, 30, 100], dtype=torch.int32)
        >>> o, S = linear_attention(
        ...     q, k, v, return_final_state=True, cu_seqlens=cu
        ... )
        >>> S.shape
        torch.Size([2, 2, 16, 32])
    """
    _check_inputs(
        q,
        k,
        v,
        causal,
        decay,
        scale,
        initial_state,
        return_final_state,
        normalize,
        return_chunk_states,
        chunk_size,
        seq_idx,
        cu_seqlens,
    )
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if cu_seqlens is not None:
        o, final = _run_varlen(q, k, v, decay, scale, initial_state, cu_seqlens)
        return (o, final) if return_final_state else o
    if normalize:
        ones = torch.ones(*v.shape[:-1], 1, dtype=v.dtype, device=v.device)
        out, _ = _run(
            q,
            k,
            torch.cat([v, ones], dim=-1),
            causal,
            decay,
            scale,
            None,
            seq_idx=seq_idx,
        )
        # numerator over denominator: the scale cancels
        return out[..., :-1] / (out[..., -1:] + 1e-6)
    if return_chunk_states:
        o, final, states = _run(
            q, k, v, causal, decay, scale, initial_state, chunk_size, seq_idx
        )
        return (o, final, states) if return_final_state else (o, states)
    o, final = _run(
        q, k, v, causal, decay, scale, initial_state, seq_idx=seq_idx
    )
    return (o, final) if return_final_state else o


def _log_decays(decay, q):
    """The kernels' float32 per-token log-decays ``[B, H, T]`` (``B, H, T`` of
    ``q [B, H, T, K]``) of a checked ``decay``: None (no decay), per head
    ``[H]`` or per token ``[B, H, T]``."""
    B, H, T, _ = q.shape
    if decay is None:
        return torch.zeros(B, H, T, device=q.device, dtype=torch.float32)
    per_token = decay[None, :, None] if decay.dim() == 1 else decay
    return per_token.float().expand(B, H, T)


def _run(
    q, k, v, causal, decay, scale, initial_state, chunk_size=None, seq_idx=None
):
    """``(o, final_state)`` of validated inputs, from the kernel or the
    reference, and the states
    before each chunk of ``chunk_size`` positions when it is given."""
    if not causal:
        return linear_attention_quadratic(q, k, v, causal=False, scale=scale)
    if uses_triton(q):
        o, final, states = linear_attention_fwd(
            q,
            k,
            v,
            _log_decays(decay, q),
            scale,
            initial_state,
            chunk_size is not None,
            seq_idx,
        )
        if chunk_size is None:
            return o, final
        # kernel chunks per chunk
        every = (
            chunk_size // _config(q.shape[-1], v.shape[-1], v.dtype)["CHUNK"]
        )
        return o, final, states[:, :, ::every]
    o, final = linear_attention_quadratic(
        q,
        k,
        v,
        decay=decay,
        scale=scale,
        initial_state=initial_state,
        seq_idx=seq_idx,
    )
    final = final if final.dtype == torch.float64 else final.float()
    if chunk_size is None:
        return o, final
    states = linear_attention_chunk_states(
        k, v, decay, initial_state, chunk_size, seq_idx
    )
    return (
        o,
        final,
        (states if states.dtype == torch.float64 else states.float()),
    )


def _run_varlen(q, k, v, decay, scale, initial_state, cu_seqlens):
    """``(o [1, H, total, V], final states [N, H, K, V])`` of validated packed
    inputs."""
    if not uses_triton(q):
        o, final = linear_attention_varlen(
            q,
            k,
            v,
            cu_seqlens,
            decay=decay,
            scale=scale,
            initial_state=initial_state,
        )
        return o, final
    total = q.shape[2]
    layout = varlen_layout(
        cu_seqlens, total, _config(q.shape[-1], v.shape[-1], v.dtype)["CHUNK"]
    )

    # [1, H, total, D] -> [1, H, Tp, D], zeros between the sequences
    def spread(x):
        return x.new_zeros(
            *x.shape[:2], layout.length, *x.shape[3:]
        ).index_copy(2, layout.dest, x)

    o, final, _ = linear_attention_fwd(
        spread(q),
        spread(k),
        spread(v),
        spread(_log_decays(decay, q)),
        scale,
        initial_state,
        False,
        None,
        cu_seqlens,
        total,
    )
    o = o.index_select(2, layout.dest)  # back to the packed positions
    if initial_state is not None:  # an empty sequence keeps its initial state
        final = torch.where(
            layout.empty[:, None, None, None], initial_state.float(), final
        )
    return o, final


def linear_attention_step(q, k, v, state, decay=None, scale=None):
    """Advance the state by one token and read the output.

    ``S = gamma * state + k^T v`` and ``o = scale * q S``, the recurrence of
    `kernels.linear_attention` for a single position.

    Args:
        q (torch.Tensor): the new query ``[B, H, K]``.
        k (torch.Tensor): the new key ``[B, H, K]``.
        v (torch.Tensor): the new value ``[B, H, V]``.
        state (torch.Tensor): ``S_{t-1}`` of shape ``[B, H, K, V]``, e.g. the
            final state returned by
            ``linear_attention(..., return_final_state=True)`` for the prompt.
        decay (torch.Tensor, optional): this token's log-decays (each <= 0), per
            head ``[H]`` or per sequence and head ``[B, H]``, as in
            ``linear_attention``. Its values are checked only on CPU tensors:
            reading them back would make every decoding step wait for the GPU.
        scale (float, optional): default ``K ** -0.5``.

    Where it runs: one fused Triton kernel (state update and read-out in one
    pass over the state) on CUDA tensors, and on CPU tensors under
    ``TRITON_INTERPRET=1`` (except bfloat16), when no gradient is needed and the
    state is not float64; PyTorch otherwise.

    Returns:
        ``(o [B, H, V], S_t [B, H, K, V])``: ``o`` in the dtype of ``q``, the
            state in float32 (float64 stays float64).

    Examples:
        >>> q, k = torch.randn(1, 2, 16), torch.randn(1, 2, 16)
        >>> v = torch.randn(1, 2, 8)
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
        raise ValueError(
            f"k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}"
        )
    B, H, K = q.shape
    check_dim("v", v, 0, "batch size (that of q)", B)
    check_dim("v", v, 1, "number of heads (that of q)", H)
    expected = (B, H, K, v.shape[-1])
    if tuple(state.shape) != expected:
        raise ValueError(
            f"state must have shape [B, H, K, V] = {expected}, got "
            f"{tuple(state.shape)}"
        )
    if not state.is_floating_point():
        raise TypeError(
            f"state must be a floating-point tensor, got {state.dtype}"
        )
    scale = K**-0.5 if scale is None else float(scale)
    if decay is not None:
        check_log_decay(decay, B, H, None, q.device, per_token="[B, H]")
    acc = torch.float64 if state.dtype == torch.float64 else torch.float32
    needs_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (q, k, v, state, decay)
    )
    if uses_triton(q) and acc == torch.float32 and not needs_grad:
        # the registered operator under torch.compile (which cannot trace the
        # launch), else the launch
        step = (
            linear_attention_step_op
            if torch.compiler.is_compiling()
            else linear_attention_step_fused
        )
        return step(q, k, v, state, decay, scale)
    S = state.to(acc)
    if decay is not None:
        g = decay.to(acc)[None, :] if decay.dim() == 1 else decay.to(acc)
        S = torch.exp(g)[:, :, None, None] * S
    # k^T v: [B, H, K, V]
    S = S + k.to(acc)[..., :, None] * v.to(acc)[..., None, :]
    o = scale * torch.einsum("bhk,bhkv->bhv", q.to(acc), S)
    return o.to(q.dtype), S
