"""FlashAttention-2 style forward and backward kernels in Triton.

Forward: one program per (tile of ``BLOCK_M`` queries, batch x head). The query
tile stays on chip while tiles of ``BLOCK_N`` keys and values stream through; an
online softmax keeps a running row maximum ``m`` and running sum ``l`` and
rescales the accumulator when ``m`` grows. Only ``o`` and the log-sum-exp
``lse`` are written back, never the ``Tq x Tk`` scores.

Backward: the scores are recomputed from ``q``, ``k`` and the saved ``lse``. One
kernel accumulates ``dk`` and ``dv`` for a tile of keys (looping over the query
tiles that see it, and over the query heads that share the key head under
grouped-query attention), another accumulates ``dq`` for a tile of queries.
Neither needs atomics.

Scores are kept in base 2 (``exp2``) with ``log2(e)`` folded into the scale. The
head dims of ``q``/``k`` and of ``v`` are padded to powers of two inside the
kernel with masked loads, so any head dim works; lengths need not be multiples
of the tile sizes. Every pointer is built from strides, so a ``[B, T, H, D]``
tensor viewed as ``[B, H, T, D]`` is read in place.

The mask is a window aligned to the bottom right (flash-attn's ``window_size``):
with ``off = Tk - Tq``, query ``i`` sees key ``j`` when
``i + off - LEFT <= j <= i + off + RIGHT``, a side being unbounded unless
``HAS_LEFT``/``HAS_RIGHT``; causal attention is ``RIGHT = 0``. Key tiles wholly
visible are processed without a mask, tiles that cross an edge of the window or
the end of the sequence with one, and tiles wholly hidden are skipped, so a
window of ``w`` keys costs ``O(Tq w)``. With ``SOFTCAP`` the scores are capped
as ``softcap * tanh(s / softcap)`` (Gemma 2). With ``VARLEN`` the batch is one
row of sequences packed along T, delimited by the int32 offsets
``CU_Q``/``CU_K``; program ``(m, n * H + h)`` serves sequence ``n`` and returns
at once when its tile starts past the end of that sequence.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .._backend import INTERPRET

LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x * LOG2E)


# --8<-- [start:fwd_kernel]
@triton.jit
def _online_softmax_step(acc, m_i, l_i, s, b_v, PRECISION: tl.constexpr):
    """Fold one tile of scores ``s`` (base 2, -inf where hidden) and its values
    into the running maximum ``m_i``, denominator ``l_i`` and output ``acc`` of
    the online softmax."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # a row that has seen no key yet
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_safe[:, None])
    # rescales what was summed under the old maximum
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(
        p.to(b_v.dtype), b_v, input_precision=PRECISION
    )
    return acc, m_new, l_i


@triton.jit
def _tanh(x):
    """tanh from one exp2, stable for large |x|:
    (1 - e^{-2|x|}) / (1 + e^{-2|x|}) with x's sign."""
    e = tl.math.exp2(tl.abs(x) * (-2.0 * LOG2E))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _scores(
    a, b_t, sm_scale, softcap, SOFTCAP: tl.constexpr, PRECISION: tl.constexpr
):
    """Scores ``a @ b_t`` in base 2, soft-capped when ``SOFTCAP``; also returns
    ``tanh`` of the capped argument (the backward's ``1 - tanh^2``), or the raw
    product without a cap."""
    s = tl.dot(a, b_t, input_precision=PRECISION)
    t = s
    if SOFTCAP:
        t = _tanh(s * (sm_scale / softcap))
        s = t * (softcap * LOG2E)
    else:
        s = s * (sm_scale * LOG2E)
    return s, t


@triton.jit
def _visible(
    rows,
    cols,
    k_len,
    off,
    LEFT,
    RIGHT,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
):
    """``[len(rows), len(cols)]`` mask: key ``cols`` exists and lies in the
    window of query ``rows``."""
    visible = cols[None, :] < k_len
    if HAS_RIGHT:
        visible = visible & (cols[None, :] <= rows[:, None] + (off + RIGHT))
    if HAS_LEFT:
        visible = visible & (cols[None, :] >= rows[:, None] + (off - LEFT))
    return visible


@triton.jit
def _key_range(
    start_m,
    k_len,
    off,
    LEFT,
    RIGHT,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Key tiles of the query tile at ``start_m``: ``[lo, hi)`` is seen by some
    row of it, ``[full_lo, full_hi)`` (inside it, multiples of ``BLOCK_N``) by
    every row, without a mask."""
    lo = 0
    hi = k_len
    full_lo = 0
    full_hi = k_len // BLOCK_N * BLOCK_N
    # the first row sees keys from start_m + off - LEFT,
    # the last from that + BLOCK_M - 1
    if HAS_LEFT:
        lo = tl.maximum(start_m + off - LEFT, 0) // BLOCK_N * BLOCK_N
        full_lo = (
            tl.cdiv(tl.maximum(start_m + BLOCK_M - 1 + off - LEFT, 0), BLOCK_N)
            * BLOCK_N
        )
    # the last row sees keys up to start_m + BLOCK_M - 1 + off + RIGHT,
    # the first up to start_m + off + RIGHT
    if HAS_RIGHT:
        hi = tl.minimum(k_len, tl.maximum(start_m + BLOCK_M + off + RIGHT, 0))
        full_hi = tl.minimum(
            full_hi,
            tl.maximum(start_m + off + RIGHT + 1, 0) // BLOCK_N * BLOCK_N,
        )
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = tl.maximum(tl.minimum(full_hi, hi), full_lo)
    return lo, hi, full_lo, full_hi


@triton.jit
def _fwd_inner(
    acc,
    m_i,
    l_i,
    q,
    k_ptrs,
    v_ptrs,
    offs_m,
    offs_n,
    offs_d,
    offs_dv,
    lo,
    hi,
    stride_kn,
    stride_vn,
    sm_scale,
    softcap,
    k_len,
    D,
    Dv,
    off,
    LEFT,
    RIGHT,
    MASK: tl.constexpr,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
    SOFTCAP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Stream key/value tiles ``[lo, hi)`` through the online softmax of one
    query tile."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n  # [BLOCK_N]
        # 64-bit: start_n * stride can pass 2^31
        start = tl.cast(start_n, tl.int64)
        b_k = tl.load(
            k_ptrs + start * stride_kn,
            mask=(cols[:, None] < k_len) & (offs_d[None, :] < D),
            other=0.0,
        )  # [BLOCK_N, BLOCK_D]
        b_v = tl.load(
            v_ptrs + start * stride_vn,
            mask=(cols[:, None] < k_len) & (offs_dv[None, :] < Dv),
            other=0.0,
        )  # [BLOCK_N, BLOCK_DV]
        # [BLOCK_M, BLOCK_N], base 2
        s, _ = _scores(q, tl.trans(b_k), sm_scale, softcap, SOFTCAP, PRECISION)
        if MASK:
            s = tl.where(
                _visible(
                    offs_m, cols, k_len, off, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT
                ),
                s,
                float("-inf"),
            )
        acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, s, b_v, PRECISION)
    return acc, m_i, l_i


@triton.jit
def _sequence(row, CU_Q, CU_K, Tq, Tk, VARLEN: tl.constexpr):
    """``(off_b, q_start, q_len, k_start, k_len)`` of batch row ``row`` (the
    program's ``off_bh // heads``): with ``VARLEN``, sequence ``row`` of the
    packed batch, whose rows are ``[q_start, q_start + q_len)`` of T in batch
    element 0; otherwise batch element ``row``, all of T. ``off_b`` is 64-bit:
    it multiplies a stride."""
    if VARLEN:
        off_b = tl.zeros([], dtype=tl.int64)
        q_start = tl.load(CU_Q + row)
        q_len = tl.load(CU_Q + row + 1) - q_start
        k_start = tl.load(CU_K + row)
        k_len = tl.load(CU_K + row + 1) - k_start
    else:
        off_b = row.to(tl.int64)
        q_start = tl.zeros([], dtype=tl.int32)
        q_len = Tq + tl.zeros([], dtype=tl.int32)
        k_start = tl.zeros([], dtype=tl.int32)
        k_len = Tk + tl.zeros([], dtype=tl.int32)
    return off_b, q_start, q_len, k_start, k_len


@triton.jit
def _fwd_kernel(
    Q,
    K,
    V,
    O,
    LSE,
    CU_Q,
    CU_K,
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
    H,
    GROUP,
    Tq,
    Tk,
    D,
    Dv,
    sm_scale,
    softcap,
    LEFT,
    RIGHT,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
    SOFTCAP: tl.constexpr,
    VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1)
    # Offsets that are products of sizes and strides are 64-bit (they can pass
    # 2^31); offsets inside a tile stay 32-bit.
    off_h = (off_bh % H).to(tl.int64)
    # grouped-query attention: GROUP query heads share one key head
    off_hkv = off_h // GROUP
    off_b, q_start, q_len, k_start, k_len = _sequence(
        off_bh // H, CU_Q, CU_K, Tq, Tk, VARLEN
    )
    # past the end of this sequence: no work, not even masked work
    if start_m >= q_len:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)  # rows of the sequence
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    # rows of the query tile, from start_m
    tile_m = tl.arange(0, BLOCK_M)[:, None]
    row_q = (q_start + start_m).to(tl.int64)
    row_k = tl.cast(k_start, tl.int64)

    p_q = (
        Q
        + off_b * stride_qb
        + off_h * stride_qh
        + row_q * stride_qm
        + tile_m * stride_qm
        + offs_d[None, :] * stride_qd
    )
    p_k = (
        K
        + off_b * stride_kb
        + off_hkv * stride_kh
        + row_k * stride_kn
        + offs_n[:, None] * stride_kn
        + offs_d[None, :] * stride_kd
    )
    p_v = (
        V
        + off_b * stride_vb
        + off_hkv * stride_vh
        + row_k * stride_vn
        + offs_n[:, None] * stride_vn
        + offs_dv[None, :] * stride_vd
    )
    # [BLOCK_M, BLOCK_D]
    b_q = tl.load(
        p_q, mask=(offs_m[:, None] < q_len) & (offs_d[None, :] < D), other=0.0
    )

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)

    # Masked tiles at the window's left edge, unmasked tiles inside, masked
    # tiles at its right edge (the causal diagonal) and at the end of the keys;
    # tiles outside the window are never loaded.
    off = k_len - q_len
    lo, hi, full_lo, full_hi = _key_range(
        start_m, k_len, off, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT, BLOCK_M, BLOCK_N
    )
    acc, m_i, l_i = _fwd_inner(
        acc,
        m_i,
        l_i,
        b_q,
        p_k,
        p_v,
        offs_m,
        offs_n,
        offs_d,
        offs_dv,
        lo,
        full_lo,
        stride_kn,
        stride_vn,
        sm_scale,
        softcap,
        k_len,
        D,
        Dv,
        off,
        LEFT,
        RIGHT,
        True,
        HAS_LEFT,
        HAS_RIGHT,
        SOFTCAP,
        BLOCK_N,
        PRECISION,
    )
    acc, m_i, l_i = _fwd_inner(
        acc,
        m_i,
        l_i,
        b_q,
        p_k,
        p_v,
        offs_m,
        offs_n,
        offs_d,
        offs_dv,
        full_lo,
        full_hi,
        stride_kn,
        stride_vn,
        sm_scale,
        softcap,
        k_len,
        D,
        Dv,
        off,
        LEFT,
        RIGHT,
        False,
        HAS_LEFT,
        HAS_RIGHT,
        SOFTCAP,
        BLOCK_N,
        PRECISION,
    )
    acc, m_i, l_i = _fwd_inner(
        acc,
        m_i,
        l_i,
        b_q,
        p_k,
        p_v,
        offs_m,
        offs_n,
        offs_d,
        offs_dv,
        full_hi,
        hi,
        stride_kn,
        stride_vn,
        sm_scale,
        softcap,
        k_len,
        D,
        Dv,
        off,
        LEFT,
        RIGHT,
        True,
        HAS_LEFT,
        HAS_RIGHT,
        SOFTCAP,
        BLOCK_N,
        PRECISION,
    )

    seen = l_i > 0  # False only for a row that sees no key at all
    b_o = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(
        seen,
        (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) / LOG2E,
        float("-inf"),
    )
    p_o = (
        O
        + off_b * stride_ob
        + off_h * stride_oh
        + row_q * stride_om
        + tile_m * stride_om
        + offs_dv[None, :] * stride_od
    )
    tl.store(
        p_o,
        b_o.to(O.dtype.element_ty),
        mask=(offs_m[:, None] < q_len) & (offs_dv[None, :] < Dv),
    )
    tl.store(
        LSE + (off_b * H + off_h) * Tq + q_start + offs_m,
        lse,
        mask=offs_m < q_len,
    )


# --8<-- [end:fwd_kernel]


@triton.jit
def _bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    CU_Q,
    CU_K,
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
    stride_dob,
    stride_doh,
    stride_dom,
    stride_dod,
    stride_dkb,
    stride_dkh,
    stride_dkn,
    stride_dkd,
    stride_dvb,
    stride_dvh,
    stride_dvn,
    stride_dvd,
    H,
    HKV,
    GROUP,
    Tq,
    Tk,
    D,
    Dv,
    sm_scale,
    softcap,
    LEFT,
    RIGHT,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
    SOFTCAP: tl.constexpr,
    VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dk and dv for one tile of keys of one key head, summed over the query
    heads that share it."""
    start_n = tl.program_id(0) * BLOCK_N
    off_bh = tl.program_id(1)
    off_hkv = (off_bh % HKV).to(tl.int64)  # 64-bit offsets, as in the forward
    off_b, q_start, q_len, k_start, k_len = _sequence(
        off_bh // HKV, CU_Q, CU_K, Tq, Tk, VARLEN
    )
    if start_n >= k_len:
        return
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    tile_n = tl.arange(0, BLOCK_N)[:, None]
    row_n = (k_start + start_n).to(tl.int64)
    m_k = (offs_n[:, None] < k_len) & (offs_d[None, :] < D)
    m_v = (offs_n[:, None] < k_len) & (offs_dv[None, :] < Dv)
    b_k = tl.load(
        K
        + off_b * stride_kb
        + off_hkv * stride_kh
        + row_n * stride_kn
        + tile_n * stride_kn
        + offs_d[None, :] * stride_kd,
        mask=m_k,
        other=0.0,
    )  # [BLOCK_N, BLOCK_D]
    b_v = tl.load(
        V
        + off_b * stride_vb
        + off_hkv * stride_vh
        + row_n * stride_vn
        + tile_n * stride_vn
        + offs_dv[None, :] * stride_vd,
        mask=m_v,
        other=0.0,
    )  # [BLOCK_N, BLOCK_DV]
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)

    # The queries that see some key of this tile: query i sees key j when
    # j - off - RIGHT <= i <= j - off + LEFT.
    off = k_len - q_len
    lo = 0
    hi = q_len
    if HAS_RIGHT:
        lo = tl.maximum(start_n - off - RIGHT, 0) // BLOCK_M * BLOCK_M
    if HAS_LEFT:
        hi = tl.minimum(q_len, tl.maximum(start_n + BLOCK_N - off + LEFT, 0))
    row_q = tl.cast(q_start, tl.int64)
    for g in range(0, GROUP):
        off_h = off_hkv * GROUP + g
        p_q = (
            Q
            + off_b * stride_qb
            + off_h * stride_qh
            + row_q * stride_qm
            + offs_d[None, :] * stride_qd
        )
        p_do = (
            DO
            + off_b * stride_dob
            + off_h * stride_doh
            + row_q * stride_dom
            + offs_dv[None, :] * stride_dod
        )
        p_lse = LSE + (off_b * H + off_h) * Tq + q_start
        p_delta = DELTA + (off_b * H + off_h) * Tq + q_start
        for start_m in range(lo, hi, BLOCK_M):
            rows = start_m + offs_m
            row_m = tl.cast(start_m, tl.int64)
            b_q = tl.load(
                p_q + row_m * stride_qm + offs_m[:, None] * stride_qm,
                mask=(rows[:, None] < q_len) & (offs_d[None, :] < D),
                other=0.0,
            )  # [BLOCK_M, BLOCK_D]
            b_do = tl.load(
                p_do + row_m * stride_dom + offs_m[:, None] * stride_dom,
                mask=(rows[:, None] < q_len) & (offs_dv[None, :] < Dv),
                other=0.0,
            )  # [BLOCK_M, BLOCK_DV]
            # rows past the sequence and rows that see no key get lse = +inf,
            # hence p = 0
            b_lse = tl.load(p_lse + rows, mask=rows < q_len, other=float("inf"))
            b_lse = (
                tl.where(b_lse == float("-inf"), float("inf"), b_lse) * LOG2E
            )
            b_delta = tl.load(p_delta + rows, mask=rows < q_len, other=0.0)
            # [BLOCK_N, BLOCK_M]
            s, t = _scores(
                b_k, tl.trans(b_q), sm_scale, softcap, SOFTCAP, PRECISION
            )
            visible = tl.trans(
                _visible(
                    rows, offs_n, k_len, off, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT
                )
            )
            p = tl.where(visible, tl.math.exp2(s - b_lse[None, :]), 0.0)
            dv += tl.dot(p.to(b_do.dtype), b_do, input_precision=PRECISION)
            # [BLOCK_N, BLOCK_M]
            dp = tl.dot(b_v, tl.trans(b_do), input_precision=PRECISION)
            ds = p * (dp - b_delta[None, :])
            if SOFTCAP:  # d(c tanh(u)) / du = 1 - tanh(u)^2
                ds = ds * (1.0 - t * t)
            dk += tl.dot(ds.to(b_q.dtype), b_q, input_precision=PRECISION)
    dk = dk * sm_scale
    tl.store(
        DK
        + off_b * stride_dkb
        + off_hkv * stride_dkh
        + row_n * stride_dkn
        + tile_n * stride_dkn
        + offs_d[None, :] * stride_dkd,
        dk.to(DK.dtype.element_ty),
        mask=m_k,
    )
    tl.store(
        DV
        + off_b * stride_dvb
        + off_hkv * stride_dvh
        + row_n * stride_dvn
        + tile_n * stride_dvn
        + offs_dv[None, :] * stride_dvd,
        dv.to(DV.dtype.element_ty),
        mask=m_v,
    )


@triton.jit
def _bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    CU_Q,
    CU_K,
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
    stride_dob,
    stride_doh,
    stride_dom,
    stride_dod,
    stride_dqb,
    stride_dqh,
    stride_dqm,
    stride_dqd,
    H,
    GROUP,
    Tq,
    Tk,
    D,
    Dv,
    sm_scale,
    softcap,
    LEFT,
    RIGHT,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
    SOFTCAP: tl.constexpr,
    VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dq for one tile of queries: stream the key tiles of its window again,
    recomputing p from lse."""
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1)
    off_h = (off_bh % H).to(tl.int64)
    off_hkv = off_h // GROUP
    off_b, q_start, q_len, k_start, k_len = _sequence(
        off_bh // H, CU_Q, CU_K, Tq, Tk, VARLEN
    )
    if start_m >= q_len:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    tile_m = tl.arange(0, BLOCK_M)[:, None]
    # 64-bit offsets, as in the forward
    row_q = (q_start + start_m).to(tl.int64)
    row_k = tl.cast(k_start, tl.int64)
    m_q = (offs_m[:, None] < q_len) & (offs_d[None, :] < D)
    b_q = tl.load(
        Q
        + off_b * stride_qb
        + off_h * stride_qh
        + row_q * stride_qm
        + tile_m * stride_qm
        + offs_d[None, :] * stride_qd,
        mask=m_q,
        other=0.0,
    )
    b_do = tl.load(
        DO
        + off_b * stride_dob
        + off_h * stride_doh
        + row_q * stride_dom
        + tile_m * stride_dom
        + offs_dv[None, :] * stride_dod,
        mask=(offs_m[:, None] < q_len) & (offs_dv[None, :] < Dv),
        other=0.0,
    )
    p_lse = LSE + (off_b * H + off_h) * Tq + q_start + offs_m
    b_lse = tl.load(p_lse, mask=offs_m < q_len, other=float("inf"))
    b_lse = tl.where(b_lse == float("-inf"), float("inf"), b_lse) * LOG2E
    b_delta = tl.load(
        DELTA + (off_b * H + off_h) * Tq + q_start + offs_m,
        mask=offs_m < q_len,
        other=0.0,
    )
    p_k = (
        K
        + off_b * stride_kb
        + off_hkv * stride_kh
        + row_k * stride_kn
        + offs_n[:, None] * stride_kn
        + offs_d[None, :] * stride_kd
    )
    p_v = (
        V
        + off_b * stride_vb
        + off_hkv * stride_vh
        + row_k * stride_vn
        + offs_n[:, None] * stride_vn
        + offs_dv[None, :] * stride_vd
    )
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    off = k_len - q_len
    lo, hi, _, _ = _key_range(
        start_m, k_len, off, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT, BLOCK_M, BLOCK_N
    )
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        start = tl.cast(start_n, tl.int64)
        b_k = tl.load(
            p_k + start * stride_kn,
            mask=(cols[:, None] < k_len) & (offs_d[None, :] < D),
            other=0.0,
        )
        b_v = tl.load(
            p_v + start * stride_vn,
            mask=(cols[:, None] < k_len) & (offs_dv[None, :] < Dv),
            other=0.0,
        )
        # [BLOCK_M, BLOCK_N]
        s, t = _scores(
            b_q, tl.trans(b_k), sm_scale, softcap, SOFTCAP, PRECISION
        )
        visible = _visible(
            offs_m, cols, k_len, off, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT
        )
        p = tl.where(visible, tl.math.exp2(s - b_lse[:, None]), 0.0)
        dp = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)
        ds = p * (dp - b_delta[:, None])
        if SOFTCAP:
            ds = ds * (1.0 - t * t)
        dq += tl.dot(ds.to(b_k.dtype), b_k, input_precision=PRECISION)
    dq = dq * sm_scale
    tl.store(
        DQ
        + off_b * stride_dqb
        + off_h * stride_dqh
        + row_q * stride_dqm
        + tile_m * stride_dqm
        + offs_d[None, :] * stride_dqd,
        dq.to(DQ.dtype.element_ty),
        mask=m_q,
    )


# Autotuning on CUDA: a short list per kernel of (BLOCK_M, BLOCK_N, num_warps,
# num_stages), keyed on the head dims, the mask's sides and the dtypes, pruned
# to what fits the device's shared memory.
FWD_CONFIGS = [(128, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 2)]
BWD_CONFIGS = [(64, 64, 4, 2), (64, 64, 8, 2), (32, 64, 4, 2), (32, 32, 4, 1)]
# A100's limit per block: the untuned default fits it and H100
DEFAULT_SHARED_BYTES = 163 * 1024


def _shared_estimate(
    BLOCK_M, BLOCK_N, num_stages, BLOCK_D, BLOCK_DV, elsize, backward
):
    """Bytes of shared memory a configuration needs, roughly: the resident
    tiles, ``num_stages`` buffers of the streamed ones, and a float32 score tile
    (the compile test checks the real count)."""
    # the streamed side's tile rows
    rows = max(BLOCK_M, BLOCK_N) if backward else BLOCK_N
    resident = (
        (max(BLOCK_M, BLOCK_N) * (BLOCK_D + BLOCK_DV))
        if backward
        else BLOCK_M * BLOCK_D
    )
    return (
        elsize * (resident + max(num_stages, 1) * rows * (BLOCK_D + BLOCK_DV))
        + 4 * BLOCK_M * BLOCK_N
    )


def _configs(
    D: int,
    DV: int,
    dtype: torch.dtype,
    backward: bool,
    limit: int = DEFAULT_SHARED_BYTES,
) -> list:
    """The autotune list of the forward (or both backward) kernels for these
    head dims and dtype, without the configurations whose estimated shared
    memory passes ``limit`` bytes (at least one is kept: the smallest)."""
    BLOCK_D, BLOCK_DV = (
        max(16, triton.next_power_of_2(D)),
        max(16, triton.next_power_of_2(DV)),
    )
    elsize = 4 if dtype == torch.float32 else 2
    table = BWD_CONFIGS if backward else FWD_CONFIGS
    kept = [
        c
        for c in table
        if _shared_estimate(*c[:2], c[3], BLOCK_D, BLOCK_DV, elsize, backward)
        <= limit
    ]
    return [
        dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=st)
        for m, n, w, st in (kept or table[-1:])
    ]


def _config(
    D: int,
    DV: int,
    dtype: torch.dtype,
    backward: bool,
    interpret: bool = INTERPRET,
) -> dict:
    """Launch settings of the forward kernel (``backward=False``) or of both
    backward kernels, without autotuning: the interpreter's, or the first of the
    autotune list that fits A100.

    Args:
        D (int): head dim of ``q`` and ``k`` (1 to 256).
        DV (int): head dim of ``v`` (1 to 256).
        dtype (torch.dtype): dtype of ``q``, ``k`` and ``v``.
        backward (bool): settings of the backward kernels rather than of the
            forward one.
        interpret (bool): settings for Triton's interpreter (default: whether it
            is on).

    Returns:
        dict: ``BLOCK_M``, ``BLOCK_N``, ``BLOCK_D`` and ``BLOCK_DV`` (``D`` and
        ``DV`` padded to a power of two, at least 16), ``PRECISION``,
        ``num_warps`` and ``num_stages``.
    """
    # the interpreter runs one program at a time; tiles only set the loop count
    if interpret:
        tiles = dict(BLOCK_M=32, BLOCK_N=32, num_warps=1, num_stages=1)
    else:
        tiles = _configs(D, DV, dtype, backward)[0]
    return dict(tiles, **_head_args(D, DV, dtype))


def _head_args(D: int, DV: int, dtype: torch.dtype) -> dict:
    """Head dims padded to a power of two (at least 16, for ``tl.dot``) and the
    product precision."""
    # float32 inputs get exact float32 products; TF32 would lose 3 decimal
    # digits.
    return dict(
        BLOCK_D=max(16, triton.next_power_of_2(D)),
        BLOCK_DV=max(16, triton.next_power_of_2(DV)),
        PRECISION="ieee" if dtype == torch.float32 else "tf32",
    )


@functools.lru_cache(maxsize=None)
def _shared_limit(device_index: int) -> int:
    """Shared memory a block may opt into on this GPU (A100's when torch does
    not say)."""
    return getattr(
        torch.cuda.get_device_properties(device_index),
        "shared_memory_per_block_optin",
        DEFAULT_SHARED_BYTES,
    )


def _prune(backward: bool):
    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        q = args["Q"]
        limit = _shared_limit(
            q.device.index
            if q.device.index is not None
            else torch.cuda.current_device()
        )
        elsize = 4 if q.dtype == torch.float32 else 2
        kept = [
            c
            for c in configs
            if _shared_estimate(
                c.kwargs["BLOCK_M"],
                c.kwargs["BLOCK_N"],
                c.num_stages,
                args["BLOCK_D"],
                args["BLOCK_DV"],
                elsize,
                backward,
            )
            <= limit
        ]
        return kept or configs[-1:]

    return prune


def _autotuned(kernel, table, backward):
    configs = [
        triton.Config(dict(BLOCK_M=m, BLOCK_N=n), num_warps=w, num_stages=st)
        for m, n, w, st in table
    ]
    return triton.autotune(
        configs=configs,
        key=["D", "Dv", "HAS_LEFT", "HAS_RIGHT", "SOFTCAP", "VARLEN"],
        prune_configs_by={"early_config_prune": _prune(backward)},
    )(kernel)


_fwd_tuned = _autotuned(_fwd_kernel, FWD_CONFIGS, backward=False)
_bwd_dkdv_tuned = _autotuned(_bwd_dkdv_kernel, BWD_CONFIGS, backward=True)
_bwd_dq_tuned = _autotuned(_bwd_dq_kernel, BWD_CONFIGS, backward=True)


def _launch(kernel, tuned, D, DV, dtype, backward):
    """The kernel and its settings: autotuned on a GPU (the tiles come from the
    autotuner), the deterministic `_config` in the interpreter. Grids are
    functions of the chosen tiles."""
    if INTERPRET:
        return kernel, _config(D, DV, dtype, backward)
    return tuned, _head_args(D, DV, dtype)


def _mask_args(window, softcap):
    """Kernel arguments of a window ``(left, right)`` (-1: unbounded) and a soft
    cap (0: none)."""
    left, right = window
    return dict(
        LEFT=max(left, 0),
        RIGHT=max(right, 0),
        HAS_LEFT=left >= 0,
        HAS_RIGHT=right >= 0,
        softcap=float(softcap) if softcap > 0 else 1.0,
        SOFTCAP=softcap > 0,
    )


def _lengths(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
    """Programs along T and batch: per sequence when packed (``cu_seqlens``),
    else per batch element."""
    if cu_seqlens_q is None:
        return (
            q.shape[2],
            k.shape[2],
            q.shape[0],
            (q, q),
            False,
        )  # the offsets are unused: any pointer
    return (
        max_seqlen_q,
        max_seqlen_k,
        cu_seqlens_q.shape[0] - 1,
        (cu_seqlens_q, cu_seqlens_k),
        True,
    )


def flash_attention_fwd(
    q,
    k,
    v,
    scale: float,
    window=(-1, -1),
    softcap: float = 0.0,
    cu_seqlens_q=None,
    cu_seqlens_k=None,
    max_seqlen_q: int = 0,
    max_seqlen_k: int = 0,
):
    """Launch the forward kernel. Returns ``o [B, H, Tq, DV]`` and
    ``lse [B, H, Tq]`` (float32).

    ``q [B, H, Tq, D]``, ``k [B, Hkv, Tk, D]``, ``v [B, Hkv, Tk, DV]``, in any
    strides. Packed sequences (``cu_seqlens_q``/``cu_seqlens_k``, ``[N + 1]``
    int32, ``B = 1``) launch ``cdiv(max_seqlen_q, BLOCK_M)`` programs per
    sequence and head.
    """
    B, H, Tq, D = q.shape
    Hkv, Tk, DV = k.shape[1], k.shape[2], v.shape[3]
    len_q, _, batch, cu, varlen = _lengths(
        q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k
    )
    # rows past cu_seqlens_q[-1] belong to no sequence: output 0, lse -inf
    if varlen:
        o = q.new_zeros(B, H, Tq, DV)
        lse = torch.full(
            (B, H, Tq), float("-inf"), device=q.device, dtype=torch.float32
        )
    else:
        o = q.new_empty(B, H, Tq, DV)
        lse = torch.empty((B, H, Tq), device=q.device, dtype=torch.float32)
    kernel, config = _launch(
        _fwd_kernel, _fwd_tuned, D, DV, q.dtype, backward=False
    )
    kernel[lambda meta: (triton.cdiv(len_q, meta["BLOCK_M"]), batch * H)](
        q,
        k,
        v,
        o,
        lse,
        *cu,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *o.stride(),
        H=H,
        GROUP=H // Hkv,
        Tq=Tq,
        Tk=Tk,
        D=D,
        Dv=DV,
        sm_scale=scale,
        **_mask_args(window, softcap),
        VARLEN=varlen,
        **config,
    )
    return o, lse


def flash_attention_bwd(
    do,
    q,
    k,
    v,
    o,
    lse,
    scale: float,
    window=(-1, -1),
    softcap: float = 0.0,
    cu_seqlens_q=None,
    cu_seqlens_k=None,
    max_seqlen_q: int = 0,
    max_seqlen_k: int = 0,
):
    """Launch the backward kernels. Returns ``dq, dk, dv`` shaped like
    ``q, k, v``."""
    B, H, Tq, D = q.shape
    Hkv, Tk, DV = k.shape[1], k.shape[2], v.shape[3]
    # [B, H, Tq]: rowsum(dO * O) = rowsum(P * dP)
    delta = (do.float() * o.float()).sum(-1)
    # packed: gaps get 0
    new = torch.zeros_like if cu_seqlens_q is not None else torch.empty_like
    dq, dk, dv = new(q), new(k), new(v)
    len_q, len_k, batch, cu, varlen = _lengths(
        q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k
    )
    common = dict(
        Tq=Tq,
        Tk=Tk,
        D=D,
        Dv=DV,
        sm_scale=scale,
        **_mask_args(window, softcap),
        VARLEN=varlen,
    )
    kernel, config = _launch(
        _bwd_dkdv_kernel, _bwd_dkdv_tuned, D, DV, q.dtype, backward=True
    )
    kernel[lambda meta: (triton.cdiv(len_k, meta["BLOCK_N"]), batch * Hkv)](
        q,
        k,
        v,
        do,
        lse,
        delta,
        dk,
        dv,
        *cu,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *do.stride(),
        *dk.stride(),
        *dv.stride(),
        H=H,
        HKV=Hkv,
        GROUP=H // Hkv,
        **common,
        **config,
    )
    kernel, config = _launch(
        _bwd_dq_kernel, _bwd_dq_tuned, D, DV, q.dtype, backward=True
    )
    kernel[lambda meta: (triton.cdiv(len_q, meta["BLOCK_M"]), batch * H)](
        q,
        k,
        v,
        do,
        lse,
        delta,
        dq,
        *cu,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *do.stride(),
        *dq.stride(),
        H=H,
        GROUP=H // Hkv,
        **common,
        **config,
    )
    return dq, dk, dv
