"""FlashAttention-2 style forward and backward kernels in Triton.

Forward: one program per (tile of ``BLOCK_M`` queries, batch x head). The query tile stays
on chip while tiles of ``BLOCK_N`` keys and values stream through; an online softmax keeps a
running row maximum ``m`` and running sum ``l`` and rescales the accumulator when ``m`` grows.
Only ``o`` and the log-sum-exp ``lse`` are written back, never the ``Tq x Tk`` scores.

Backward: the scores are recomputed from ``q``, ``k`` and the saved ``lse``. One kernel
accumulates ``dk`` and ``dv`` for a tile of keys (looping over every query tile, and over the
query heads that share the key head under grouped-query attention), another accumulates ``dq``
for a tile of queries. Neither needs atomics.

Scores are kept in base 2 (``exp2``) with ``log2(e)`` folded into the scale. The head dim is
padded to a power of two inside the kernel with masked loads; lengths need not be multiples of
the tile sizes. The causal mask is aligned to the bottom right: query ``i`` sees key ``j`` when
``j <= i + Tk - Tq``. Key tiles wholly visible are processed without a mask, tiles that cross
the diagonal or the end of the sequence with one, and tiles wholly hidden are skipped.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import INTERPRET


# --8<-- [start:fwd_kernel]
@triton.jit
def _online_softmax_step(acc, m_i, l_i, s, b_v, PRECISION: tl.constexpr):
    """Fold one tile of scores ``s`` (base 2, -inf where hidden) and its values into the running
    maximum ``m_i``, denominator ``l_i`` and output ``acc`` of the online softmax."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen no key yet
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)  # rescales what was summed under the old maximum
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(b_v.dtype), b_v, input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def _fwd_inner(acc, m_i, l_i, q, k_ptrs, v_ptrs, offs_m, offs_n, offs_d, lo, hi,
               stride_kn, stride_vn, qk_scale, Tk, D, causal_offset,
               MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
               PRECISION: tl.constexpr):
    """Stream key/value tiles ``[lo, hi)`` through the online softmax of one query tile."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n  # [BLOCK_N]
        m_kv = (cols[:, None] < Tk) & (offs_d[None, :] < D)
        start = tl.cast(start_n, tl.int64)  # 64-bit: start_n * stride can pass 2^31
        b_k = tl.load(k_ptrs + start * stride_kn, mask=m_kv, other=0.0)  # [BLOCK_N, BLOCK_D]
        b_v = tl.load(v_ptrs + start * stride_vn, mask=m_kv, other=0.0)
        s = tl.dot(q, tl.trans(b_k), input_precision=PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N], base 2
        if MASK:
            visible = cols[None, :] < Tk
            if IS_CAUSAL:
                visible = visible & (cols[None, :] <= offs_m[:, None] + causal_offset)
            s = tl.where(visible, s, float("-inf"))
        acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, s, b_v, PRECISION)
    return acc, m_i, l_i


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE,
                stride_qb, stride_qh, stride_qm, stride_qd,
                stride_kb, stride_kh, stride_kn, stride_kd,
                stride_vb, stride_vh, stride_vn, stride_vd,
                stride_ob, stride_oh, stride_om, stride_od,
                H, GROUP, Tq, Tk, D, sm_scale,
                IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1)
    # Offsets that are products of sizes and strides are 64-bit (they can pass 2^31); offsets
    # inside a tile stay 32-bit.
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    off_hkv = off_h // GROUP  # grouped-query attention: GROUP query heads share one key head
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    tile_m = tl.arange(0, BLOCK_M)[:, None]  # rows of the query tile, from start_m

    p_q = (Q + off_b * stride_qb + off_h * stride_qh + start_m.to(tl.int64) * stride_qm
           + tile_m * stride_qm + offs_d[None, :] * stride_qd)
    p_k = K + off_b * stride_kb + off_hkv * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    p_v = V + off_b * stride_vb + off_hkv * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
    m_q = (offs_m[:, None] < Tq) & (offs_d[None, :] < D)
    b_q = tl.load(p_q, mask=m_q, other=0.0)  # [BLOCK_M, BLOCK_D], stays on chip

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634  # fold log2(e) in: exp(x) = exp2(x * log2(e))

    # Key range: [0, hi) is visible to some row; [0, full) to every row, so needs no mask.
    causal_offset = Tk - Tq
    if IS_CAUSAL:
        hi = tl.minimum(Tk, tl.maximum(start_m + BLOCK_M + causal_offset, 0))
        full = tl.minimum(tl.maximum(start_m + causal_offset + 1, 0), Tk) // BLOCK_N * BLOCK_N
    else:
        hi = Tk
        full = Tk // BLOCK_N * BLOCK_N
    acc, m_i, l_i = _fwd_inner(acc, m_i, l_i, b_q, p_k, p_v, offs_m, offs_n, offs_d, 0, full,
                               stride_kn, stride_vn, qk_scale, Tk, D, causal_offset,
                               False, IS_CAUSAL, BLOCK_N, PRECISION)
    acc, m_i, l_i = _fwd_inner(acc, m_i, l_i, b_q, p_k, p_v, offs_m, offs_n, offs_d, full, hi,
                               stride_kn, stride_vn, qk_scale, Tk, D, causal_offset,
                               True, IS_CAUSAL, BLOCK_N, PRECISION)

    seen = l_i > 0  # False only for a row that sees no key at all
    b_o = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    p_o = (O + off_b * stride_ob + off_h * stride_oh + start_m.to(tl.int64) * stride_om
           + tile_m * stride_om + offs_d[None, :] * stride_od)
    tl.store(p_o, b_o.to(O.dtype.element_ty), mask=m_q)
    tl.store(LSE + off_bh.to(tl.int64) * Tq + offs_m, lse, mask=offs_m < Tq)
# --8<-- [end:fwd_kernel]


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV,
                     stride_qb, stride_qh, stride_qm, stride_qd,
                     stride_kb, stride_kh, stride_kn, stride_kd,
                     stride_vb, stride_vh, stride_vn, stride_vd,
                     stride_dob, stride_doh, stride_dom, stride_dod,
                     stride_dkb, stride_dkh, stride_dkn, stride_dkd,
                     stride_dvb, stride_dvh, stride_dvn, stride_dvd,
                     H, HKV, GROUP, Tq, Tk, D, sm_scale,
                     IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """dk and dv for one tile of keys of one key head, summed over the query heads that share it."""
    start_n = tl.program_id(0) * BLOCK_N
    off_bh = tl.program_id(1)
    off_b = (off_bh // HKV).to(tl.int64)  # 64-bit offsets, as in the forward
    off_hkv = (off_bh % HKV).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    tile_n = tl.arange(0, BLOCK_N)[:, None]
    row_n = start_n.to(tl.int64)
    m_kv = (offs_n[:, None] < Tk) & (offs_d[None, :] < D)
    b_k = tl.load(K + off_b * stride_kb + off_hkv * stride_kh + row_n * stride_kn + tile_n * stride_kn
                  + offs_d[None, :] * stride_kd, mask=m_kv, other=0.0)  # [BLOCK_N, BLOCK_D]
    b_v = tl.load(V + off_b * stride_vb + off_hkv * stride_vh + row_n * stride_vn + tile_n * stride_vn
                  + offs_d[None, :] * stride_vd, mask=m_kv, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634

    causal_offset = Tk - Tq
    if IS_CAUSAL:  # query i sees key j when i >= j - causal_offset
        lo = tl.maximum(start_n - causal_offset, 0) // BLOCK_M * BLOCK_M
    else:
        lo = 0
    for g in range(0, GROUP):
        off_h = off_hkv * GROUP + g
        p_q = Q + off_b * stride_qb + off_h * stride_qh + offs_d[None, :] * stride_qd
        p_do = DO + off_b * stride_dob + off_h * stride_doh + offs_d[None, :] * stride_dod
        p_lse = LSE + (off_b * H + off_h) * Tq
        p_delta = DELTA + (off_b * H + off_h) * Tq
        for start_m in range(lo, Tq, BLOCK_M):
            rows = start_m + offs_m
            m_q = (rows[:, None] < Tq) & (offs_d[None, :] < D)
            row_m = tl.cast(start_m, tl.int64)
            b_q = tl.load(p_q + row_m * stride_qm + offs_m[:, None] * stride_qm, mask=m_q, other=0.0)  # [BLOCK_M, BLOCK_D]
            b_do = tl.load(p_do + row_m * stride_dom + offs_m[:, None] * stride_dom, mask=m_q, other=0.0)
            # rows past Tq and rows that see no key get lse = +inf, hence p = 0
            b_lse = tl.load(p_lse + rows, mask=rows < Tq, other=float("inf"))
            b_lse = tl.where(b_lse == float("-inf"), float("inf"), b_lse) * 1.4426950408889634
            b_delta = tl.load(p_delta + rows, mask=rows < Tq, other=0.0)
            s = tl.dot(b_k, tl.trans(b_q), input_precision=PRECISION) * qk_scale  # [BLOCK_N, BLOCK_M]
            p = tl.math.exp2(s - b_lse[None, :])
            if IS_CAUSAL:
                p = tl.where(offs_n[:, None] <= rows[None, :] + causal_offset, p, 0.0)
            dv += tl.dot(p.to(b_do.dtype), b_do, input_precision=PRECISION)
            dp = tl.dot(b_v, tl.trans(b_do), input_precision=PRECISION)  # [BLOCK_N, BLOCK_M]
            ds = p * (dp - b_delta[None, :])
            dk += tl.dot(ds.to(b_q.dtype), b_q, input_precision=PRECISION)
    dk = dk * sm_scale
    tl.store(DK + off_b * stride_dkb + off_hkv * stride_dkh + row_n * stride_dkn + tile_n * stride_dkn
             + offs_d[None, :] * stride_dkd, dk.to(DK.dtype.element_ty), mask=m_kv)
    tl.store(DV + off_b * stride_dvb + off_hkv * stride_dvh + row_n * stride_dvn + tile_n * stride_dvn
             + offs_d[None, :] * stride_dvd, dv.to(DV.dtype.element_ty), mask=m_kv)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ,
                   stride_qb, stride_qh, stride_qm, stride_qd,
                   stride_kb, stride_kh, stride_kn, stride_kd,
                   stride_vb, stride_vh, stride_vn, stride_vd,
                   stride_dob, stride_doh, stride_dom, stride_dod,
                   stride_dqb, stride_dqh, stride_dqm, stride_dqd,
                   H, GROUP, Tq, Tk, D, sm_scale,
                   IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """dq for one tile of queries: stream the key tiles again, recomputing p from lse."""
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    off_hkv = off_h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    tile_m = tl.arange(0, BLOCK_M)[:, None]
    row_m = start_m.to(tl.int64)  # 64-bit offsets, as in the forward
    m_q = (offs_m[:, None] < Tq) & (offs_d[None, :] < D)
    b_q = tl.load(Q + off_b * stride_qb + off_h * stride_qh + row_m * stride_qm + tile_m * stride_qm
                  + offs_d[None, :] * stride_qd, mask=m_q, other=0.0)
    b_do = tl.load(DO + off_b * stride_dob + off_h * stride_doh + row_m * stride_dom + tile_m * stride_dom
                   + offs_d[None, :] * stride_dod, mask=m_q, other=0.0)
    b_lse = tl.load(LSE + off_bh.to(tl.int64) * Tq + offs_m, mask=offs_m < Tq, other=float("inf"))
    b_lse = tl.where(b_lse == float("-inf"), float("inf"), b_lse) * 1.4426950408889634
    b_delta = tl.load(DELTA + off_bh.to(tl.int64) * Tq + offs_m, mask=offs_m < Tq, other=0.0)
    p_k = K + off_b * stride_kb + off_hkv * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    p_v = V + off_b * stride_vb + off_hkv * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634

    causal_offset = Tk - Tq
    if IS_CAUSAL:
        hi = tl.minimum(Tk, tl.maximum(start_m + BLOCK_M + causal_offset, 0))
    else:
        hi = Tk
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        m_kv = (cols[:, None] < Tk) & (offs_d[None, :] < D)
        start = tl.cast(start_n, tl.int64)
        b_k = tl.load(p_k + start * stride_kn, mask=m_kv, other=0.0)
        b_v = tl.load(p_v + start * stride_vn, mask=m_kv, other=0.0)
        s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N]
        visible = cols[None, :] < Tk
        if IS_CAUSAL:
            visible = visible & (cols[None, :] <= offs_m[:, None] + causal_offset)
        p = tl.where(visible, tl.math.exp2(s - b_lse[:, None]), 0.0)
        dp = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)
        ds = p * (dp - b_delta[:, None])
        dq += tl.dot(ds.to(b_k.dtype), b_k, input_precision=PRECISION)
    dq = dq * sm_scale
    tl.store(DQ + off_b * stride_dqb + off_h * stride_dqh + row_m * stride_dqm + tile_m * stride_dqm
             + offs_d[None, :] * stride_dqd, dq.to(DQ.dtype.element_ty), mask=m_q)


def _config(D: int, dtype: torch.dtype, backward: bool, interpret: bool = INTERPRET) -> dict:
    """Launch settings of the forward kernel (``backward=False``) or of both backward kernels.

    The one place the tiles are chosen: the launchers pass the result to the kernels as keyword
    arguments, and the ahead-of-time compile test compiles every configuration it can return.

    Args:
        D (int): head dim (8 to 256).
        dtype (torch.dtype): dtype of ``q``, ``k`` and ``v``.
        backward (bool): settings of the backward kernels rather than of the forward one.
        interpret (bool): settings for Triton's interpreter (default: whether it is on).

    Returns:
        dict: ``BLOCK_M``, ``BLOCK_N``, ``BLOCK_D`` (``D`` padded to a power of two), ``PRECISION``,
        ``num_warps`` and ``num_stages``.
    """
    BLOCK_D = max(16, triton.next_power_of_2(D))
    # float32 inputs get exact float32 products; TF32 would lose 3 decimal digits.
    PRECISION = "ieee" if dtype == torch.float32 else "tf32"
    if interpret:  # the interpreter runs one program at a time; tiles only set the loop count
        BLOCK_M, BLOCK_N, num_warps, num_stages = 32, 32, 1, 1
    else:
        width = 2 * D if dtype == torch.float32 else D  # tiles are sized by bytes: a float32 row weighs two
        if backward:
            BLOCK_M, BLOCK_N, num_warps, num_stages = ((64, 64, 4, 2) if width <= 64 else (64, 64, 8, 2)
                                                       if width <= 128 else (32, 32, 4, 1))
        else:
            BLOCK_M, BLOCK_N, num_warps, num_stages = ((128, 64, 4, 3) if width <= 64 else (128, 64, 8, 3)
                                                       if width <= 128 else (64, 32, 4, 2))
    return dict(BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, PRECISION=PRECISION,
                num_warps=num_warps, num_stages=num_stages)


def flash_attention_fwd(q, k, v, causal: bool, scale: float):
    """Launch the forward kernel. Returns ``o [B, H, Tq, D]`` and ``lse [B, H, Tq]`` (float32)."""
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    o = torch.empty_like(q)
    lse = torch.empty((B, H, Tq), device=q.device, dtype=torch.float32)
    config = _config(D, q.dtype, backward=False)
    grid = (triton.cdiv(Tq, config["BLOCK_M"]), B * H)
    _fwd_kernel[grid](
        q, k, v, o, lse, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
        H=H, GROUP=H // Hkv, Tq=Tq, Tk=Tk, D=D, sm_scale=scale, IS_CAUSAL=causal, **config)
    return o, lse


def flash_attention_bwd(do, q, k, v, o, lse, causal: bool, scale: float):
    """Launch the backward kernels. Returns ``dq, dk, dv`` shaped like ``q, k, v``."""
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    delta = (do.float() * o.float()).sum(-1)  # [B, H, Tq]: rowsum(dO * O) = rowsum(P * dP)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    config = _config(D, q.dtype, backward=True)
    common = dict(Tq=Tq, Tk=Tk, D=D, sm_scale=scale, IS_CAUSAL=causal, **config)
    _bwd_dkdv_kernel[(triton.cdiv(Tk, config["BLOCK_N"]), B * Hkv)](
        q, k, v, do, lse, delta, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
        H=H, HKV=Hkv, GROUP=H // Hkv, **common)
    _bwd_dq_kernel[(triton.cdiv(Tq, config["BLOCK_M"]), B * H)](
        q, k, v, do, lse, delta, dq,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(),
        H=H, GROUP=H // Hkv, **common)
    return dq, dk, dv


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: saves ``q, k, v, o, lse`` and recomputes the scores in the backward."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        o, lse = flash_attention_fwd(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.scale = causal, scale
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_bwd(do, q, k, v, o, lse, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None
