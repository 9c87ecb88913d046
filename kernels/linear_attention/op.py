"""Chunk-parallel linear attention as PyTorch custom ops, so that
``torch.compile`` traces through it.

Two ops, ``kernels::linear_attention_fwd`` and
``kernels::linear_attention_bwd``, run the Triton kernels of ``triton.py``
(`chunk_forward` and `chunk_backward`). Each has a fake (meta) function that
gives the shapes of its results from the shapes of its inputs, reading no value,
and the backward is registered as the forward's autograd formula.
``torch.compile(fullgraph=True)`` then sees one opaque node per call instead of
tracing Triton's launcher (which reads ``data_ptr``), and
``torch.library.opcheck`` can test the registration.

Custom ops return tensors only: where the kernels give None (no chunk states
asked for, no gradient for the decay or the initial state), the ops return an
empty tensor ``[0]`` instead. `kernels.linear_attention` calls them where
`uses_triton` says so (CUDA, or the interpreter on the CPU) and runs the PyTorch
reference otherwise.
"""

from __future__ import annotations

from typing import Optional

import torch

from .._backend import uses_triton
from . import triton as _triton

Tensor = torch.Tensor


def _none_as_empty(x: Optional[Tensor], like: Tensor) -> Tensor:
    return like.new_empty(0, dtype=torch.float32) if x is None else x


def _check_device(q: Tensor) -> None:
    if not uses_triton(q):
        raise ValueError(
            "the linear_attention ops run the Triton kernels: q must be a "
            "CUDA tensor, or a float16/float32 CPU tensor with "
            "TRITON_INTERPRET=1 set before kernels was imported; got a "
            f"{q.dtype} tensor on {q.device}"
        )


@torch.library.custom_op("kernels::linear_attention_fwd", mutates_args=())
def linear_attention_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    scale: float,
    initial_state: Optional[Tensor],
    want_states: bool,
    seq_idx: Optional[Tensor],
    cu_seqlens: Optional[Tensor] = None,
    total: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(o [B, H, T, V], final [B, H, K, V], states)`` of checked arguments.

    ``q, k [B, H, T, K]``, ``v [B, H, T, V]`` (one dtype, any strides), ``g``
    the float32 per-token log-decays ``[B, H, T]`` (an expanded per-head decay
    is fine), ``initial_state [B, H, K, V]`` or None, ``seq_idx [B, T]``
    (int32/int64) or None. ``o`` has the dtype of ``v``; ``final`` and
    ``states`` are float32; ``states [B, H, ceil(T / CHUNK), K, V]`` holds the
    state before each kernel chunk (``CHUNK`` of `_config`: 64 on a GPU) with
    ``want_states``, else it is empty ``[0]``.

    Packed sequences: ``cu_seqlens [N + 1]`` (the offsets of ``total``
    positions) with the inputs laid out in the chunk-aligned buffer of
    `varlen_layout` (batch of one); ``initial_state`` and ``final`` are then per
    sequence ``[N, H, K, V]``.
    """
    _check_device(q)
    o, final, states = _triton.chunk_forward(
        q,
        k,
        v,
        g,
        scale,
        initial_state,
        want_states,
        seq_idx,
        cu_seqlens,
        total,
    )
    return o, final, _none_as_empty(states, final)


def _chunks(q: Tensor, v: Tensor):
    """Kernel chunks along T: ``ceil(T / CHUNK)`` (works on symbolic
    lengths)."""
    CHUNK = _triton._config(q.shape[-1], v.shape[-1], v.dtype)["CHUNK"]
    return (q.shape[2] + CHUNK - 1) // CHUNK


@linear_attention_fwd.register_fake
def _(
    q,
    k,
    v,
    g,
    scale,
    initial_state,
    want_states,
    seq_idx,
    cu_seqlens=None,
    total=0,
):
    B, H, T, K = q.shape
    V = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    final = q.new_empty(N, H, K, V, dtype=torch.float32)
    states = (
        q.new_empty(B, H, _chunks(q, v), K, V, dtype=torch.float32)
        if want_states
        else q.new_empty(0, dtype=torch.float32)
    )
    return v.new_empty(B, H, T, V), final, states


@torch.library.custom_op("kernels::linear_attention_bwd", mutates_args=())
def linear_attention_bwd(
    do: Tensor,
    dfinal: Optional[Tensor],
    dstates: Optional[Tensor],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    initial_state: Optional[Tensor],
    final: Tensor,
    seq_idx: Optional[Tensor],
    scale: float,
    want_states: bool,
    needs_dg: bool,
    cu_seqlens: Optional[Tensor] = None,
    total: int = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(dq, dk, dv, dg, ds0)`` from the gradients of `linear_attention_fwd`'s
    outputs.

    ``do [B, H, T, V]``; ``dfinal [B, H, K, V]`` and
    ``dstates [B, H, NT, K, V]`` or None. ``dq, dk, dv`` are shaped (contiguous)
    and typed like ``q, k, v``; ``dg [B, H, T]`` (float32) with ``needs_dg``,
    else empty ``[0]``; ``ds0`` like ``initial_state`` when it is given, else
    empty.
    """
    _check_device(q)
    dq, dk, dv, dg, ds0 = _triton.chunk_backward(
        do,
        dfinal,
        dstates,
        q,
        k,
        v,
        g,
        initial_state,
        final,
        seq_idx,
        scale,
        want_states,
        needs_dg,
        cu_seqlens,
        total,
    )
    return dq, dk, dv, _none_as_empty(dg, final), _none_as_empty(ds0, final)


@linear_attention_bwd.register_fake
def _(
    do,
    dfinal,
    dstates,
    q,
    k,
    v,
    g,
    initial_state,
    final,
    seq_idx,
    scale,
    want_states,
    needs_dg,
    cu_seqlens=None,
    total=0,
):
    dq, dk, dv = (
        torch.empty_like(x, memory_format=torch.contiguous_format)
        for x in (q, k, v)
    )
    empty = q.new_empty(0, dtype=torch.float32)
    dg = q.new_empty(q.shape[:3], dtype=torch.float32) if needs_dg else empty
    ds0 = (
        empty
        if initial_state is None
        else torch.empty_like(
            initial_state, memory_format=torch.contiguous_format
        )
    )
    return dq, dk, dv, dg, ds0


def _setup_context(ctx, inputs, output):
    (
        q,
        k,
        v,
        g,
        scale,
        initial_state,
        want_states,
        seq_idx,
        cu_seqlens,
        total,
    ) = inputs
    o, final, states = output
    ctx.save_for_backward(q, k, v, g, initial_state, final, seq_idx, cu_seqlens)
    ctx.total = total
    ctx.scale = scale
    ctx.want_states = want_states
    if not want_states:
        ctx.mark_non_differentiable(states)


def _backward(ctx, do, dfinal, dstates):
    q, k, v, g, initial_state, final, seq_idx, cu_seqlens = ctx.saved_tensors
    needs_dg = ctx.needs_input_grad[3]
    if do is None:  # only the states were used
        do = v.new_zeros(*q.shape[:3], v.shape[-1])
    dq, dk, dv, dg, ds0 = linear_attention_bwd(
        do,
        dfinal,
        dstates if ctx.want_states else None,
        q,
        k,
        v,
        g,
        initial_state,
        final,
        seq_idx,
        ctx.scale,
        ctx.want_states,
        needs_dg,
        cu_seqlens,
        ctx.total,
    )
    return (
        dq,
        dk,
        dv,
        dg if needs_dg else None,
        None,
        ds0 if initial_state is not None else None,
        None,
        None,
        None,
        None,
    )


linear_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("kernels::linear_attention_step", mutates_args=())
def linear_attention_step_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    state: Tensor,
    decay: Optional[Tensor],
    scale: float,
) -> tuple[Tensor, Tensor]:
    """``(o [B, H, V], new state [B, H, K, V] float32)`` of one decoding step,
    the fused kernel (`linear_attention_step_fused`): ``q, k [B, H, K]``,
    ``v [B, H, V]``, ``state [B, H, K, V]`` (any float dtype but float64),
    ``decay`` ``[H]``, ``[B, H]`` or None. No autograd: the
    kernel runs only where no gradient is needed."""
    _check_device(q)
    return _triton.linear_attention_step_fused(q, k, v, state, decay, scale)


@linear_attention_step_op.register_fake
def _(q, k, v, state, decay, scale):
    B, H, K = q.shape
    return q.new_empty(B, H, v.shape[-1]), q.new_empty(
        B, H, K, v.shape[-1], dtype=torch.float32
    )
