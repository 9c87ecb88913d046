"""`flash_attention` as a PyTorch custom op, so that ``torch.compile`` traces through it.

Two ops, ``kernels::flash_attention_fwd`` and ``kernels::flash_attention_bwd``, each with a
fake (meta) function that gives the shapes of its results without touching data, and the
backward registered as the forward's autograd formula. ``torch.compile(fullgraph=True)`` then
sees one opaque node per call instead of tracing Triton's launcher (which reads
``data_ptr``), and ``torch.library.opcheck`` can test the registration.

Each op runs the Triton kernels where `uses_triton` says so (CUDA, or the interpreter on the
CPU) and the reference `attention_ref` otherwise, with `attention_ref_backward` as its gradient.
"""

from __future__ import annotations

from typing import Optional

import torch

from .._backend import HAS_TRITON, uses_triton
from .naive import attention_ref, attention_ref_backward

if HAS_TRITON:
    from . import triton as _triton


def _ref_kwargs(scale, left, right, softcap, cu_seqlens_q, cu_seqlens_k):
    return dict(
        scale=scale,
        window=(left, right),
        softcap=softcap,
        cu_seqlens_q=cu_seqlens_q,
        cu_seqlens_k=cu_seqlens_k,
    )


@torch.library.custom_op("kernels::flash_attention_fwd", mutates_args=())
def flash_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    left: int,
    right: int,
    softcap: float,
    cu_seqlens_q: Optional[torch.Tensor],
    cu_seqlens_k: Optional[torch.Tensor],
    max_seqlen_q: int,
    max_seqlen_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``o [B, H, Tq, Dv]`` and ``lse [B, H, Tq]`` (float32) of checked arguments (see `flash_attention`)."""
    if uses_triton(q):
        return _triton.flash_attention_fwd(
            q,
            k,
            v,
            scale,
            (left, right),
            softcap,
            cu_seqlens_q,
            cu_seqlens_k,
            max_seqlen_q,
            max_seqlen_k,
        )
    o, lse = attention_ref(
        q,
        k,
        v,
        return_lse=True,
        **_ref_kwargs(scale, left, right, softcap, cu_seqlens_q, cu_seqlens_k),
    )
    return o, lse.float()


@flash_attention_fwd.register_fake
def _(
    q,
    k,
    v,
    scale,
    left,
    right,
    softcap,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
):
    B, H, Tq, _ = q.shape
    return q.new_empty(B, H, Tq, v.shape[-1]), q.new_empty(
        B, H, Tq, dtype=torch.float32
    )


@torch.library.custom_op("kernels::flash_attention_bwd", mutates_args=())
def flash_attention_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    left: int,
    right: int,
    softcap: float,
    cu_seqlens_q: Optional[torch.Tensor],
    cu_seqlens_k: Optional[torch.Tensor],
    max_seqlen_q: int,
    max_seqlen_k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dq, dk, dv`` shaped like ``q, k, v``, from the upstream gradient ``do [B, H, Tq, Dv]``."""
    if uses_triton(q):
        return _triton.flash_attention_bwd(
            do,
            q,
            k,
            v,
            o,
            lse,
            scale,
            (left, right),
            softcap,
            cu_seqlens_q,
            cu_seqlens_k,
            max_seqlen_q,
            max_seqlen_k,
        )
    return attention_ref_backward(
        do,
        q,
        k,
        v,
        **_ref_kwargs(scale, left, right, softcap, cu_seqlens_q, cu_seqlens_k),
    )


@flash_attention_bwd.register_fake
def _(
    do,
    q,
    k,
    v,
    o,
    lse,
    scale,
    left,
    right,
    softcap,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, scale, left, right, softcap, cu_q, cu_k, max_q, max_k = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, cu_q, cu_k)
    ctx.args = (scale, left, right, softcap)
    ctx.max_seqlens = (max_q, max_k)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, do, dlse):
    q, k, v, o, lse, cu_q, cu_k = ctx.saved_tensors
    dq, dk, dv = flash_attention_bwd(
        do, q, k, v, o, lse, *ctx.args, cu_q, cu_k, *ctx.max_seqlens
    )
    return dq, dk, dv, None, None, None, None, None, None, None, None


flash_attention_fwd.register_autograd(_backward, setup_context=_setup_context)
