"""Tree attention forward kernel in Triton: a block of new tokens over the cache
and each other.

One program per (tile of ``BLOCK_M`` new queries, batch x head), as in the
FlashAttention forward: key/value tiles stream through an online softmax. The
first ``Tk - Tq`` keys are the KV cache and every query sees them, so whole
cache tiles go through without a mask; the tiles that hold new keys (the last
``Tq``) read the boolean tree mask ``[Tq, Tq]`` to decide which scores survive.
Forward only: tree attention verifies candidates at inference time.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._backend import INTERPRET
from ...flash_attention.triton import _online_softmax_step


# --8<-- [start:tree_kernel]
@triton.jit
def _tree_inner(
    acc,
    m_i,
    l_i,
    q,
    k_ptrs,
    v_ptrs,
    MASK,
    stride_mm,
    stride_mn,
    offs_m,
    offs_n,
    offs_d,
    lo,
    hi,
    stride_kn,
    stride_vn,
    qk_scale,
    Tq,
    Tk,
    D,
    USE_MASK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Stream key/value tiles ``[lo, hi)``; with ``USE_MASK`` apply the tree
    mask to new keys."""
    n_cache = Tk - Tq
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n  # [BLOCK_N]
        m_kv = (cols[:, None] < Tk) & (offs_d[None, :] < D)
        # [BLOCK_N, BLOCK_D]
        b_k = tl.load(k_ptrs + start_n * stride_kn, mask=m_kv, other=0.0)
        b_v = tl.load(v_ptrs + start_n * stride_vn, mask=m_kv, other=0.0)
        # [BLOCK_M, BLOCK_N], base 2
        s = tl.dot(q, tl.trans(b_k), input_precision=PRECISION) * qk_scale
        if USE_MASK:
            # column of the tree mask (clamped for cache keys)
            o_tree = tl.maximum(cols - n_cache, 0)
            m_tree = (
                (offs_m[:, None] < Tq)
                & (cols[None, :] >= n_cache)
                & (cols[None, :] < Tk)
            )
            b_tree = tl.load(
                MASK
                + offs_m[:, None] * stride_mm
                + o_tree[None, :] * stride_mn,
                mask=m_tree,
                other=0,
            )  # [BLOCK_M, BLOCK_N]
            visible = (cols[None, :] < n_cache) | (b_tree != 0)
            s = tl.where(visible, s, float("-inf"))
        acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, s, b_v, PRECISION)
    return acc, m_i, l_i


@triton.jit
def _tree_fwd_kernel(
    Q,
    K,
    V,
    MASK,
    O,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    stride_mm,
    stride_mn,
    H,
    GROUP,
    Tq,
    Tk,
    D,
    sm_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    off_hkv = off_h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)

    p_q = (
        Q
        + off_b * stride_qb
        + off_h * stride_qh
        + offs_m[:, None] * stride_qm
        + offs_d[None, :] * stride_qd
    )
    p_k = (
        K
        + off_b * stride_kb
        + off_hkv * stride_kh
        + offs_n[:, None] * stride_kn
        + offs_d[None, :] * stride_kd
    )
    p_v = (
        V
        + off_b * stride_vb
        + off_hkv * stride_vh
        + offs_n[:, None] * stride_vn
        + offs_d[None, :] * stride_vd
    )
    m_q = (offs_m[:, None] < Tq) & (offs_d[None, :] < D)
    b_q = tl.load(p_q, mask=m_q, other=0.0)  # [BLOCK_M, BLOCK_D]

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634  # exp(x) = exp2(x * log2(e))

    # [0, full): whole tiles of cache keys, visible to every query, no mask
    # needed.
    full = (Tk - Tq) // BLOCK_N * BLOCK_N
    acc, m_i, l_i = _tree_inner(
        acc,
        m_i,
        l_i,
        b_q,
        p_k,
        p_v,
        MASK,
        stride_mm,
        stride_mn,
        offs_m,
        offs_n,
        offs_d,
        0,
        full,
        stride_kn,
        stride_vn,
        qk_scale,
        Tq,
        Tk,
        D,
        False,
        BLOCK_N,
        PRECISION,
    )
    # [full, Tk): the rest of the cache and the new keys, through the tree mask.
    acc, m_i, l_i = _tree_inner(
        acc,
        m_i,
        l_i,
        b_q,
        p_k,
        p_v,
        MASK,
        stride_mm,
        stride_mn,
        offs_m,
        offs_n,
        offs_d,
        full,
        Tk,
        stride_kn,
        stride_vn,
        qk_scale,
        Tq,
        Tk,
        D,
        True,
        BLOCK_N,
        PRECISION,
    )

    seen = l_i > 0  # False only for a query that sees no key at all
    b_o = acc / tl.where(seen, l_i, 1.0)[:, None]
    p_o = (
        O
        + off_b * stride_ob
        + off_h * stride_oh
        + offs_m[:, None] * stride_om
        + offs_d[None, :] * stride_od
    )
    tl.store(p_o, b_o.to(O.dtype.element_ty), mask=m_q)


# --8<-- [end:tree_kernel]


def _config(Tq: int, D: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` of `tree_attention_fwd`."""
    if INTERPRET:
        return 16, 32, 1, 1
    # the query block is small (a tree has tens of nodes); the cache is long.
    # Three stages of K and V tiles fit an A100's shared memory up to 256 bytes
    # per row (bf16 at D = 128).
    BLOCK_M = 16 if Tq <= 16 else 32 if Tq <= 32 else 64
    row_bytes = D * torch.finfo(dtype).bits // 8
    if row_bytes <= 256:
        BLOCK_N, num_warps, num_stages = 64, 4, 3
    elif D <= 128:
        BLOCK_N, num_warps, num_stages = 64, 4, 2
    else:
        BLOCK_N, num_warps, num_stages = 32, 4, 2
    return BLOCK_M, BLOCK_N, num_warps, num_stages


def tree_attention_fwd(q, k, v, tree_mask, scale: float):
    """Launch the kernel. ``tree_mask`` is read as bytes (a uint8 copy of the
    bool mask)."""
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    mask = tree_mask.to(torch.uint8)
    o = torch.empty_like(q)
    BLOCK_M, BLOCK_N, num_warps, num_stages = _config(Tq, D, q.dtype)
    grid = (triton.cdiv(Tq, BLOCK_M), B * H)
    _tree_fwd_kernel[grid](
        q,
        k,
        v,
        mask,
        o,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *o.stride(),
        *mask.stride(),
        H=H,
        GROUP=H // Hkv,
        Tq=Tq,
        Tk=Tk,
        D=D,
        sm_scale=scale,
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_D=max(16, triton.next_power_of_2(D)),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return o
