"""Chunk-parallel causal linear attention in Triton, with a per-token log-decay.

The sequence is cut into chunks of ``CHUNK`` positions. Inside chunk ``n`` let
``c_i`` be the cumulative log-decay up to position ``i`` *within the chunk*
(``c_i = g_0 + ... + g_i``, each ``g <= 0``) and ``c_L`` its last value. With
``S_n`` the state before the chunk:

    o_i     = scale * ( sum_{j <= i} exp(c_i - c_j) (q_i . k_j) v_j
                        +  exp(c_i) q_i S_n )
    S_{n+1} = exp(c_L) S_n + sum_j exp(c_L - c_j) k_j^T v_j

Every exponent is a difference ``c_i - c_j`` with ``j <= i`` or a partial sum,
so it is <= 0: the cumulative sums stay in log space inside a chunk and no
decay, however strong, overflows. Three kernels compute it (the ``chunk``
algorithm of flash-linear-attention):

(a) `_chunk_state_kernel`, one program per chunk and tile: the chunk's own
    contribution ``sum_j exp(c_L - c_j) k_j^T v_j``;
(b) `_state_pass_kernel`, a sweep over the chunks that is elementwise on the
    ``[K, V]`` states: ``S_{n+1} = exp(c_L) S_n + contribution_n``, storing each
    ``S_n`` in place of the contribution;
(c) `_chunk_out_kernel`, one program per chunk: the masked ``[CHUNK, CHUNK]``
    product plus the read-out of ``S_n``.

The backward runs the same three kernels. The gradient of ``q`` is (c) on
``(do, v, k)`` with the transposed states. The gradient ``G_n`` of the state
after chunk ``n`` runs backwards:
``G_{n-1} = exp(c_L) G_n + scale * sum_i exp(c_i) q_i^T do_i``, which is (a)
with the weights ``exp(c_i)`` and (b) in reverse order, starting from the
gradient of the final state; the gradients of ``v`` and ``k`` are the reverse
form of (c),

    out_j = scale * sum_{i >= j} exp(c_i - c_j) (a_i . b_j) c_i
            +  exp(c_L - c_j) b_j G_n

on ``(q, k, do)`` with ``G`` and on ``(do, v, q)`` with ``G^T``. The gradient of
the log-decay needs no kernel (see `chunk_backward`).

`chunk_forward` and `chunk_backward` launch them; ``op.py`` registers the two as
PyTorch operators (``torch.ops.kernels.linear_attention_fwd`` / ``_bwd``), which
is what autograd and ``torch.compile`` see. On a GPU every launch autotunes its
tiles, warps and stages (``triton.autotune``, short lists pruned to the device's
shared memory; ``CHUNK`` stays 64, since the returned chunk states depend on
it); in the interpreter the launchers use the deterministic `_config`,
`_pass_config` and `_step_config`, which the ahead-of-time compile test also
reads.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .._backend import INTERPRET


@triton.jit
def _chunk_state_kernel(
    Bp,
    Cp,
    GC,
    HC,
    SEG,
    SEGP,
    stride_bb,
    stride_bh,
    stride_bt,
    stride_cb,
    stride_ch,
    stride_ct,
    T,
    DAB,
    DC,
    H,
    NT,
    scale,
    REVERSE: tl.constexpr,
    HAS_SEG: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_AB: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """HC[bh, n] = scale * (w * B_n)^T C_n ``[DAB, DC]`` for chunk n, float32.

    Forward (``REVERSE=False``): ``w_j = exp(c_L - c_j)``, the decay from j to
    the chunk's end; reverse: ``w_i = exp(c_i)``, the decay from the chunk's
    start to i. B: ``[B, H, T, DAB]``, C: ``[B, H, T, DC]`` (last dim
    contiguous); GC: ``[B H, NT CHUNK]`` the in-chunk cumulative log-decays
    (zero past T); HC: ``[B H, NT, DAB, DC]``.
    With ``HAS_SEG``, SEG ``[B, NT CHUNK]`` holds each position's sequence id
    and SEGP ``[B, NT]`` that of the state before each chunk: only positions of
    the chunk's last sequence (forward) or of the state's sequence (reverse)
    count.
    """
    pid = tl.program_id(0)
    n = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    n_c = tl.cdiv(DC, BLOCK_C)
    offs_ab = (pid // n_c) * BLOCK_AB + tl.arange(0, BLOCK_AB)
    offs_c = (pid % n_c) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_t = tl.arange(0, CHUNK)
    start = n.to(tl.int64) * CHUNK
    m_t = (start + offs_t) < T
    m_ab, m_c = offs_ab < DAB, offs_c < DC
    b, h = bh // H, bh % H
    b_b = tl.load(
        Bp
        + b * stride_bb
        + h * stride_bh
        + (start + offs_t[:, None]) * stride_bt
        + offs_ab[None, :],
        mask=m_t[:, None] & m_ab[None, :],
        other=0.0,
    )
    b_c = tl.load(
        Cp
        + b * stride_cb
        + h * stride_ch
        + (start + offs_t[:, None]) * stride_ct
        + offs_c[None, :],
        mask=m_t[:, None] & m_c[None, :],
        other=0.0,
    )
    p_gc = GC + bh * NT * CHUNK + start
    gc = tl.load(p_gc + offs_t)
    if REVERSE:
        w = tl.exp(gc)
    else:
        w = tl.exp(tl.load(p_gc + CHUNK - 1) - gc)
    w = tl.where(m_t, w, 0.0)
    if HAS_SEG:
        p_seg = SEG + b * NT * CHUNK + start
        seg = tl.load(p_seg + offs_t)
        if REVERSE:
            ref = tl.load(SEGP + b * NT + n)
        else:
            ref = tl.load(p_seg + CHUNK - 1)
        w = tl.where(seg == ref, w, 0.0)
    acc = (
        tl.dot(
            tl.trans((b_b * w[:, None]).to(b_c.dtype)),
            b_c,
            input_precision=PRECISION,
        )
        * scale
    )
    p_h = (
        HC + (bh * NT + n) * DAB * DC + offs_ab[:, None] * DC + offs_c[None, :]
    )
    tl.store(p_h, acc, mask=m_ab[:, None] & m_c[None, :])


@triton.jit
def _state_pass_kernel(
    HC,
    GC,
    S0,
    SN,
    DS,
    KEEP,
    FIRST,
    LAST,
    NT,
    SIZE,
    H,
    HAS_S0: tl.constexpr,
    STORE_SN: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_DS: tl.constexpr,
    HAS_SEG: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
    VARLEN: tl.constexpr = False,
):
    """Turn each chunk's contribution HC[bh, n] into the state it meets, in
    place.

    Forward: ``S_0 = S0``; ``HC[n] <- S_n``;
    ``S_{n+1} = exp(c_L(n)) S_n + contribution_n``.
    Reverse: the same over ``n = NT-1 .. 0``, starting from S0 (the gradient of
    the final state), so that ``HC[n]`` receives the gradient of the state after
    chunk n; with ``HAS_DS``, DS[n] (the gradient of the returned state before
    chunk n) joins the sweep there. SN receives the last ``S`` (the final state,
    or the gradient of the initial state). All float32, ``SIZE = DAB DC``. With
    ``HAS_SEG``, KEEP ``[B, NT]`` is 1 where chunk n continues the sequence of
    the state before it and 0 where a new one starts in it (the state is
    dropped).

    With ``VARLEN`` (packed sequences laid out so that each starts at a chunk
    boundary; batch of one), FIRST and LAST ``[NT]`` int32 hold, for each chunk,
    the index i of the sequence it starts (resp. ends), or -1. S0 and SN are per
    sequence ``[N, H, DAB, DC]``. Forward: the state before the first chunk of
    sequence i is S0[i] (or 0), and the state after its last chunk goes to
    SN[i]. Reverse: the gradient restarts from S0[i] (the gradient of final
    state i, or 0) after the last chunk of sequence i, and the gradient before
    its first chunk goes to SN[i] (the gradient of initial state i). Chunks past
    the last sequence are padding.
    """
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < SIZE
    s = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_S0 and not VARLEN:
        s = tl.load(S0 + bh * SIZE + offs, mask=m, other=0.0)
    for idx in range(0, NT):
        if REVERSE:
            n = NT - 1 - idx
        else:
            n = idx
        # a sequence starts (forward) or ends (reverse) here: restart the sweep
        if VARLEN:
            if REVERSE:
                seq = tl.load(LAST + n)
            else:
                seq = tl.load(FIRST + n)
            # as a block: the interpreter rejects a scalar mask
            here = (offs * 0 + seq) >= 0
            p_seq = (
                S0
                + (tl.maximum(seq, 0).to(tl.int64) * H + bh % H) * SIZE
                + offs
            )
            restart = tl.zeros([BLOCK], dtype=tl.float32)
            if HAS_S0:
                restart = tl.load(p_seq, mask=m & here, other=0.0)
            s = tl.where(here, restart, s)
        p = HC + (bh * NT + n) * SIZE + offs
        contribution = tl.load(p, mask=m, other=0.0)
        tl.store(p, s, mask=m)
        factor = tl.exp(tl.load(GC + (bh * NT + n) * CHUNK + CHUNK - 1))
        if HAS_SEG:
            factor = factor * tl.load(KEEP + (bh // H) * NT + n)
        s = s * factor + contribution
        if HAS_DS:
            s += tl.load(DS + (bh * NT + n) * SIZE + offs, mask=m, other=0.0)
        # a sequence ends (forward) or starts (reverse) here
        if VARLEN and STORE_SN:
            if REVERSE:
                seq = tl.load(FIRST + n)
            else:
                seq = tl.load(LAST + n)
            here = (offs * 0 + seq) >= 0
            tl.store(
                SN
                + (tl.maximum(seq, 0).to(tl.int64) * H + bh % H) * SIZE
                + offs,
                s,
                mask=m & here,
            )
    if STORE_SN and not VARLEN:
        tl.store(SN + bh * SIZE + offs, s, mask=m)


@triton.jit
def _chunk_out_kernel(
    Ap,
    Bp,
    Cp,
    ST,
    GC,
    OUT,
    SEG,
    SEGP,
    stride_ab,
    stride_ah,
    stride_at,
    stride_bb,
    stride_bh,
    stride_bt,
    stride_cb,
    stride_ch,
    stride_ct,
    stride_ob,
    stride_oh,
    stride_ot,
    stride_sr,
    stride_sc,
    T,
    DAB,
    DC,
    H,
    NT,
    scale,
    REVERSE: tl.constexpr,
    HAS_SEG: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_AB: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One chunk's output from its intra-chunk products and the state ST[bh, n].

    Forward:

        out_i = scale * (sum_{j<=i} exp(c_i - c_j) (a_i . b_j) c_j
                         + exp(c_i) a_i S)

    Reverse:

        out_j = scale * sum_{i>=j} exp(c_i - c_j) (a_i . b_j) c_i
                + exp(c_L - c_j) b_j S

    A, B: ``[B, H, T, DAB]``; C, OUT: ``[B, H, T, DC]``; ST: float32
    ``[B H, NT, ., .]`` whose ``[DAB, DC]`` tile is read with the strides
    ``stride_sr, stride_sc`` (a transposed state is a swap of the two). Loops
    over DAB in tiles of BLOCK_AB, so any width fits. With ``HAS_SEG`` (see
    `_chunk_state_kernel`), pairs of positions in different sequences and
    positions outside the state's sequence (forward) or the chunk's last
    sequence (reverse) are masked.
    """
    pid_c = tl.program_id(0)
    n = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    offs_t = tl.arange(0, CHUNK)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    start = n.to(tl.int64) * CHUNK
    m_t = (start + offs_t) < T
    m_c = offs_c < DC
    b, h = bh // H, bh % H
    rows_a = (
        Ap
        + b * stride_ab
        + h * stride_ah
        + (start + offs_t[:, None]) * stride_at
    )
    rows_b = (
        Bp
        + b * stride_bb
        + h * stride_bh
        + (start + offs_t[:, None]) * stride_bt
    )
    p_s = ST + (bh * NT + n) * DAB * DC + offs_c[None, :] * stride_sc
    p_gc = GC + bh * NT * CHUNK + start
    gc = tl.load(p_gc + offs_t)
    scores = tl.zeros([CHUNK, CHUNK], dtype=tl.float32)
    from_state = tl.zeros([CHUNK, BLOCK_C], dtype=tl.float32)
    for kb in range(0, DAB, BLOCK_AB):
        offs_ab = kb + tl.arange(0, BLOCK_AB)
        m_ab = offs_ab < DAB
        b_a = tl.load(
            rows_a + offs_ab[None, :],
            mask=m_t[:, None] & m_ab[None, :],
            other=0.0,
        )
        b_b = tl.load(
            rows_b + offs_ab[None, :],
            mask=m_t[:, None] & m_ab[None, :],
            other=0.0,
        )
        s = tl.load(
            p_s + offs_ab[:, None] * stride_sr,
            mask=m_ab[:, None] & m_c[None, :],
            other=0.0,
        )
        if REVERSE:
            # [j, i]
            scores += tl.dot(b_b, tl.trans(b_a), input_precision=PRECISION)
            from_state += tl.dot(
                b_b, s.to(b_b.dtype), input_precision=PRECISION
            )
        else:
            # [i, j]
            scores += tl.dot(b_a, tl.trans(b_b), input_precision=PRECISION)
            from_state += tl.dot(
                b_a, s.to(b_a.dtype), input_precision=PRECISION
            )
    b_c = tl.load(
        Cp
        + b * stride_cb
        + h * stride_ch
        + (start + offs_t[:, None]) * stride_ct
        + offs_c[None, :],
        mask=m_t[:, None] & m_c[None, :],
        other=0.0,
    )
    if REVERSE:
        lag = gc[None, :] - gc[:, None]  # [j, i]: c_i - c_j
        keep = (offs_t[None, :] >= offs_t[:, None]) & m_t[None, :]
        to_state = tl.exp(tl.load(p_gc + CHUNK - 1) - gc)
    else:
        lag = gc[:, None] - gc[None, :]  # [i, j]
        keep = offs_t[:, None] >= offs_t[None, :]
        to_state = tl.exp(gc)
    if HAS_SEG:
        p_seg = SEG + b * NT * CHUNK + start
        seg = tl.load(p_seg + offs_t)
        keep = keep & (seg[:, None] == seg[None, :])
        if REVERSE:
            to_state = tl.where(
                seg == tl.load(p_seg + CHUNK - 1), to_state, 0.0
            )
        else:
            to_state = tl.where(
                seg == tl.load(SEGP + b * NT + n), to_state, 0.0
            )
    scores = scores * tl.exp(tl.where(keep, lag, float("-inf")))
    out = tl.dot(scores.to(b_c.dtype), b_c, input_precision=PRECISION) * scale
    if REVERSE:
        out += from_state * to_state[:, None]
    else:
        out += from_state * (to_state * scale)[:, None]
    tl.store(
        OUT
        + b * stride_ob
        + h * stride_oh
        + (start + offs_t[:, None]) * stride_ot
        + offs_c[None, :],
        out.to(OUT.dtype.element_ty),
        mask=m_t[:, None] & m_c[None, :],
    )


def _config(
    DAB: int, DC: int, dtype: torch.dtype, interpret: bool = INTERPRET
) -> dict:
    """Launch settings shared by `_chunk_state_kernel` and `_chunk_out_kernel`.

    The one place the tiles are chosen: the launchers pass the result to the
    kernels as keyword arguments, and the ahead-of-time compile test compiles
    every configuration it can return.

    Args:
        DAB (int): width of the operands A and B (any; wider than ``BLOCK_AB``
            is looped over).
        DC (int): width of the operand C (any; split over programs in tiles of
            ``BLOCK_C``).
        dtype (torch.dtype): dtype of the operands.
        interpret (bool): settings for Triton's interpreter (default: whether it
            is on).

    Returns:
        dict: ``CHUNK``, ``BLOCK_AB``, ``BLOCK_C``, ``PRECISION``, ``num_warps``
            and ``num_stages``.
    """
    BLOCK_AB = min(
        128 if dtype != torch.float32 else 64,
        max(16, triton.next_power_of_2(DAB)),
    )
    BLOCK_C = min(64, max(16, triton.next_power_of_2(DC)))
    # float32 operands get exact float32 products; TF32 would lose 3 decimal
    # digits.
    PRECISION = "ieee" if dtype == torch.float32 else "tf32"
    if interpret:
        return dict(
            CHUNK=16,
            BLOCK_AB=BLOCK_AB,
            BLOCK_C=BLOCK_C,
            PRECISION=PRECISION,
            num_warps=1,
            num_stages=1,
        )
    return dict(
        CHUNK=64,
        BLOCK_AB=BLOCK_AB,
        BLOCK_C=BLOCK_C,
        PRECISION=PRECISION,
        num_warps=4 if BLOCK_AB <= 64 else 8,
        num_stages=2,
    )


def _pass_config(interpret: bool = INTERPRET) -> dict:
    """Launch settings of `_state_pass_kernel`: ``BLOCK`` state entries per
    program.

    The sweep is sequential over the chunks and elementwise on the state, so its
    speed is the number of programs in flight: small blocks (a 128 x 128 state
    makes 64 programs per head).
    """
    return dict(BLOCK=256, num_warps=1 if interpret else 2)


# --- autotuning on a GPU: short lists, pruned per launch to the widths and the
# shared memory

# (BLOCK_AB, BLOCK_C, num_warps, num_stages) of `_chunk_state_kernel` and
# `_chunk_out_kernel`
CHUNK_CONFIGS = [
    (64, 64, 4, 2),
    (128, 64, 8, 2),
    (64, 128, 8, 2),
    (32, 64, 4, 3),
    (64, 32, 4, 3),
    (128, 128, 8, 1),
]
# (BLOCK, num_warps) of `_state_pass_kernel`
PASS_CONFIGS = [(128, 1), (256, 2), (512, 4), (1024, 4)]
# (BLOCK_K, BLOCK_V, num_warps)
STEP_CONFIGS = [
    (64, 64, 4),
    (32, 64, 2),
    (64, 32, 2),
    (128, 64, 8),
    (32, 32, 1),
]
# A100's limit per block (166912 bytes), when torch does not say
DEFAULT_SHARED_BYTES = 163 * 1024


def _shared_estimate(CHUNK, BLOCK_AB, BLOCK_C, num_stages, elsize):
    """Bytes of shared memory a chunk-kernel configuration needs, from above
    (the larger kernel, `_chunk_out_kernel`): ``max(num_stages - 1, 1)`` buffers
    of the streamed ``a``, ``b`` tiles ``[CHUNK, BLOCK_AB]`` and the state tile
    ``[BLOCK_AB, BLOCK_C]``, plus the score and ``c`` tiles of the last product.
    At or above what Triton 3.x allocates for sm_80 and sm_90 for every
    configuration of `CHUNK_CONFIGS`; the compile test checks the real count of
    every one kept."""
    streamed = max(num_stages - 1, 1) * (
        2 * CHUNK * BLOCK_AB + BLOCK_AB * BLOCK_C
    )
    return elsize * (streamed + CHUNK * CHUNK + CHUNK * BLOCK_C)


def _cap(width: int) -> int:
    """The widest useful tile for ``width`` columns: its next power of two, at
    least 16."""
    return max(16, triton.next_power_of_2(width))


def _chunk_configs(
    DAB: int, DC: int, dtype: torch.dtype, limit: int = DEFAULT_SHARED_BYTES
) -> list:
    """The autotune list of the chunk kernels for operands of widths ``DAB``,
    ``DC``: `CHUNK_CONFIGS` with tiles no wider than the operands (narrower ones
    merge), without those whose estimated shared memory passes ``limit`` bytes
    (the smallest is kept if none fits). Dicts with
    ``BLOCK_AB``, ``BLOCK_C``, ``num_warps`` and ``num_stages``."""
    CHUNK = _config(DAB, DC, dtype, interpret=False)["CHUNK"]
    elsize = 4 if dtype == torch.float32 else 2
    kept, seen = [], set()
    for BLOCK_AB, BLOCK_C, num_warps, num_stages in CHUNK_CONFIGS:
        config = (
            min(BLOCK_AB, _cap(DAB)),
            min(BLOCK_C, _cap(DC)),
            num_warps,
            num_stages,
        )
        if config not in seen:
            seen.add(config)
            kept.append(config)
    fits = [
        c
        for c in kept
        if _shared_estimate(CHUNK, c[0], c[1], c[3], elsize) <= limit
    ]
    if not fits:
        fits = [
            min(
                kept,
                key=lambda c: _shared_estimate(CHUNK, c[0], c[1], c[3], elsize),
            )
        ]
    return [
        dict(BLOCK_AB=a, BLOCK_C=c, num_warps=w, num_stages=st)
        for a, c, w, st in fits
    ]


def _pass_configs(SIZE: int) -> list:
    """The autotune list of `_state_pass_kernel` for states of ``SIZE`` entries:
    `PASS_CONFIGS` with blocks no larger than the state (at least the smallest).
    It holds no tile in shared memory."""
    return [
        dict(BLOCK=b, num_warps=w)
        for b, w in PASS_CONFIGS
        if b <= max(PASS_CONFIGS[0][0], SIZE)
    ]


def _step_configs(DK: int, DV: int) -> list:
    """The autotune list of `_step_kernel`: `STEP_CONFIGS` with tiles no wider
    than the state."""
    kept = {}
    for BLOCK_K, BLOCK_V, num_warps in STEP_CONFIGS:
        kept[(min(BLOCK_K, _cap(DK)), min(BLOCK_V, _cap(DV)), num_warps)] = None
    return [
        dict(BLOCK_K=k, BLOCK_V=v, num_warps=w, num_stages=1)
        for k, v, w in kept
    ]


@functools.lru_cache(maxsize=None)
def _shared_limit(device_index: int) -> int:
    """Shared memory a block may opt into on this GPU (A100's when torch does
    not say)."""
    return getattr(
        torch.cuda.get_device_properties(device_index),
        "shared_memory_per_block_optin",
        DEFAULT_SHARED_BYTES,
    )


def _as_triton(configs, tiles):
    return [
        triton.Config(
            {k: c[k] for k in tiles},
            num_warps=c["num_warps"],
            num_stages=c.get("num_stages", 1),
        )
        for c in configs
    ]


def _prune_chunk(configs, named_args, **kwargs):
    c = named_args["Cp"]
    limit = _shared_limit(
        c.device.index
        if c.device.index is not None
        else torch.cuda.current_device()
    )
    return _as_triton(
        _chunk_configs(named_args["DAB"], named_args["DC"], c.dtype, limit),
        ("BLOCK_AB", "BLOCK_C"),
    )


def _prune_pass(configs, named_args, **kwargs):
    return _as_triton(_pass_configs(named_args["SIZE"]), ("BLOCK",))


def _prune_step(configs, named_args, **kwargs):
    return _as_triton(
        _step_configs(named_args["DK"], named_args["DV"]),
        ("BLOCK_K", "BLOCK_V"),
    )


_CHUNK_LIST = [
    triton.Config(dict(BLOCK_AB=a, BLOCK_C=c), num_warps=w, num_stages=st)
    for a, c, w, st in CHUNK_CONFIGS
]
# Keyed on the widths and the flags; Triton adds the dtypes of the tensors. The
# chunk kernels write every element of a fresh buffer (timing them again
# rewrites the same values); the state pass works in place, so its buffer is
# restored after each timed run.
_chunk_state_tuned = triton.autotune(
    _CHUNK_LIST,
    key=["DAB", "DC", "REVERSE", "HAS_SEG"],
    prune_configs_by={"early_config_prune": _prune_chunk},
)(_chunk_state_kernel)
_chunk_out_tuned = triton.autotune(
    _CHUNK_LIST,
    key=["DAB", "DC", "REVERSE", "HAS_SEG"],
    prune_configs_by={"early_config_prune": _prune_chunk},
)(_chunk_out_kernel)
_state_pass_tuned = triton.autotune(
    [triton.Config(dict(BLOCK=b), num_warps=w) for b, w in PASS_CONFIGS],
    key=["SIZE", "REVERSE", "HAS_S0", "HAS_DS", "HAS_SEG", "VARLEN"],
    prune_configs_by={"early_config_prune": _prune_pass},
    restore_value=["HC"],
)(_state_pass_kernel)


def _launch(kernel, tuned, grid, args, config, **flags):
    """Run ``kernel`` on ``args``: with the deterministic ``config`` in the
    interpreter; on a GPU through ``tuned``, which picks the tiles, warps and
    stages (the rest of ``config``, such as ``CHUNK`` and ``PRECISION``, is
    passed as it is). ``grid(meta)`` is the grid for the tiles in ``meta``."""
    if INTERPRET:
        kernel[grid(config)](*args, **flags, **config)
        return
    chosen = set(tuned.configs[0].kwargs) | {"num_warps", "num_stages"}
    fixed = {k: v for k, v in config.items() if k not in chosen}
    with torch.cuda.device(args[0].device):
        tuned[grid](*args, **flags, **fixed)


def chunk_cumsum(g: torch.Tensor, chunk: int) -> torch.Tensor:
    """In-chunk cumulative sums of the log-decays ``g [B, H, T]`` as float32
    ``[B H, NT chunk]``.

    ``T`` is padded with zeros up to whole chunks, so the last value of a chunk
    is the sum over its real positions.
    """
    Bsz, H, T = g.shape
    NT = triton.cdiv(T, chunk)
    g = torch.nn.functional.pad(
        g.float().reshape(Bsz * H, T), (0, NT * chunk - T)
    )
    return (
        g.reshape(Bsz * H, NT, chunk)
        .cumsum(-1)
        .reshape(Bsz * H, NT * chunk)
        .contiguous()
    )


def _last_dim_contiguous(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def segments(seq_idx, T: int, chunk: int):
    """``(SEG [B, NT chunk], SEGP [B, NT], KEEP [B, NT])`` from the sequence ids
    ``[B, T]``, or None.

    SEG pads the ids with the last one; SEGP is the id of the position before
    each chunk (that of position 0 for the first chunk: the initial state
    belongs to the first sequence); KEEP is 1.0 where every position of the
    chunk has the id of SEGP. No value is read back to the host.
    """
    if seq_idx is None:
        return None
    NT = triton.cdiv(T, chunk)
    seg = seq_idx.to(torch.int32)
    seg = torch.cat(
        [seg, seg[:, -1:].expand(-1, NT * chunk - T)], dim=1
    ).contiguous()
    # [B, NT]
    prev = torch.cat(
        [seg[:, :1], seg[:, chunk - 1 : (NT - 1) * chunk : chunk]], dim=1
    ).contiguous()
    keep = (
        (seg.reshape(-1, NT, chunk) == prev[..., None])
        .all(-1)
        .float()
        .contiguous()
    )
    return seg, prev, keep


class VarlenLayout(NamedTuple):
    """Where packed sequences go in a chunk-aligned buffer (see
    `varlen_layout`)."""

    N: int  # number of sequences
    length: int  # buffer length Tp, a multiple of the chunk
    dest: torch.Tensor  # [total] int64: buffer position of each packed position
    # [NT] int32: the sequence whose first chunk this is, or -1
    first: torch.Tensor
    # [NT] int32: the sequence whose last chunk this is, or -1
    last: torch.Tensor
    # [N] int64: the last buffer position of each sequence's chunks (0 if empty)
    end: torch.Tensor
    # [Tp] int64: the buffer end of the sequence of each position (Tp: padding)
    stop: torch.Tensor
    empty: torch.Tensor  # [N] bool: the sequences of length 0


def varlen_layout(cu_seqlens, total: int, chunk: int) -> VarlenLayout:
    """Lay ``N`` packed sequences (offsets ``cu_seqlens [N + 1]``, ``total``
    positions) out so that each starts at a chunk boundary: sequence i starts at
    ``sum_{j < i} ceil(len_j / chunk) chunk``.

    Every chunk then lies inside one sequence (at most one partial chunk per
    sequence, padded with zeros), and the buffer length ``Tp``,
    ``total + N (chunk - 1)`` rounded up to a chunk, comes from the shapes
    alone: everything is computed on the device, nothing is read back.
    """
    cu = cu_seqlens.to(torch.int64)
    N = cu.shape[0] - 1
    lens = cu[1:] - cu[:-1]  # [N]
    span = (lens + chunk - 1) // chunk * chunk  # each sequence's whole chunks
    pad_end = span.cumsum(0)
    pad_start = pad_end - span
    Tp = triton.cdiv(total + N * (chunk - 1), chunk) * chunk
    NT = Tp // chunk
    t = torch.arange(total, device=cu.device)
    # [total]
    seq = torch.searchsorted(cu[1:].contiguous(), t, right=True).clamp_max(
        N - 1
    )
    dest = t - cu[seq] + pad_start[seq]
    empty = lens == 0
    ids = torch.arange(N, device=cu.device, dtype=torch.int32)
    first = torch.full((NT + 1,), -1, device=cu.device, dtype=torch.int32)
    # empty sequences write the spare slot
    first[torch.where(empty, NT, pad_start // chunk)] = ids
    last = torch.full((NT + 1,), -1, device=cu.device, dtype=torch.int32)
    last[torch.where(empty, NT, pad_end // chunk - 1)] = ids
    starts = torch.arange(NT, device=cu.device) * chunk
    # [NT], N past the last sequence
    chunk_seq = torch.searchsorted(pad_end, starts, right=True)
    stop = torch.cat([pad_end, pad_end.new_full((1,), Tp)])[
        chunk_seq
    ].repeat_interleave(chunk)
    return VarlenLayout(
        N,
        Tp,
        dest,
        first[:NT].contiguous(),
        last[:NT].contiguous(),
        (pad_end - 1).clamp_min(0),
        stop,
        empty,
    )


def _states(
    b,
    c,
    gc,
    s0,
    scale,
    reverse,
    want_last,
    config,
    extra=None,
    seg=None,
    varlen=None,
):
    """States before each chunk ``[B H, NT, DAB, DC]`` (or, reverse, the
    gradients after each chunk) and the last one ``[B, H, DAB, DC]`` when
    ``want_last``: kernels (a) and (b). ``extra`` (reverse only): the gradients
    of the states before each chunk, ``[B H, NT, DAB, DC]``. ``varlen`` (a
    `VarlenLayout`): ``s0`` and the last states are per sequence
    ``[N, H, DAB, DC]``
    (zero for an empty sequence)."""
    Bsz, H, T, DAB = b.shape
    DC = c.shape[-1]
    CHUNK = config["CHUNK"]
    NT = triton.cdiv(T, CHUNK)
    hc = torch.empty(Bsz * H, NT, DAB, DC, device=c.device, dtype=torch.float32)

    def grid(meta):  # tiles of the [DAB, DC] state, chunks, heads
        return (
            triton.cdiv(DAB, meta["BLOCK_AB"])
            * triton.cdiv(DC, meta["BLOCK_C"]),
            NT,
            Bsz * H,
        )

    SEG, SEGP, KEEP = seg if seg is not None else (hc, hc, hc)
    _launch(
        _chunk_state_kernel,
        _chunk_state_tuned,
        grid,
        (
            b,
            c,
            gc,
            hc,
            SEG,
            SEGP,
            *b.stride()[:3],
            *c.stride()[:3],
            T,
            DAB,
            DC,
            H,
            NT,
            scale,
        ),
        config,
        REVERSE=reverse,
        HAS_SEG=seg is not None,
    )
    last = (
        torch.empty(Bsz, H, DAB, DC, device=c.device, dtype=torch.float32)
        if want_last
        else hc
    )
    # an empty sequence has no chunk to store its state
    if varlen is not None and want_last:
        last = torch.zeros(
            varlen.N, H, DAB, DC, device=c.device, dtype=torch.float32
        )
    FIRST, LAST = (
        (varlen.first, varlen.last) if varlen is not None else (hc, hc)
    )
    s0 = None if s0 is None else s0.float().contiguous()
    pconf = _pass_config()
    _launch(
        _state_pass_kernel,
        _state_pass_tuned,
        lambda meta: (triton.cdiv(DAB * DC, meta["BLOCK"]), Bsz * H),
        (
            hc,
            gc,
            s0 if s0 is not None else hc,
            last,
            extra if extra is not None else hc,
            KEEP,
            FIRST,
            LAST,
            NT,
            DAB * DC,
            H,
        ),
        pconf,
        HAS_S0=s0 is not None,
        STORE_SN=want_last,
        REVERSE=reverse,
        HAS_DS=extra is not None,
        HAS_SEG=seg is not None,
        CHUNK=CHUNK,
        VARLEN=varlen is not None,
    )
    return hc, (last if want_last else None)


def _outputs(
    a, b, c, states, transpose, gc, scale, reverse, config, out_dtype, seg=None
):
    """Kernel (c) over ``a, b [B, H, T, DAB]``, ``c [B, H, T, DC]`` and the
    per-chunk states
    (``transpose``: the stored ``[DC, DAB]`` states read as ``[DAB, DC]``)."""
    Bsz, H, T, DAB = a.shape
    DC = c.shape[-1]
    NT = states.shape[1]
    out = torch.empty(Bsz, H, T, DC, device=c.device, dtype=out_dtype)
    stride_sr, stride_sc = (1, DAB) if transpose else (DC, 1)

    def grid(meta):  # blocks of output columns, chunks, heads
        return triton.cdiv(DC, meta["BLOCK_C"]), NT, Bsz * H

    SEG, SEGP = seg[:2] if seg is not None else (states, states)
    _launch(
        _chunk_out_kernel,
        _chunk_out_tuned,
        grid,
        (
            a,
            b,
            c,
            states,
            gc,
            out,
            SEG,
            SEGP,
            *a.stride()[:3],
            *b.stride()[:3],
            *c.stride()[:3],
            *out.stride()[:3],
            stride_sr,
            stride_sc,
            T,
            DAB,
            DC,
            H,
            NT,
            scale,
        ),
        config,
        REVERSE=reverse,
        HAS_SEG=seg is not None,
    )
    return out


def chunk_forward(
    q,
    k,
    v,
    g,
    scale,
    initial_state,
    want_states=False,
    seq_idx=None,
    cu_seqlens=None,
    total=0,
):
    """Chunk-parallel causal linear attention, forward (the kernel of
    ``kernels::linear_attention_fwd``).

    Inputs: ``q, k [B, H, T, K]``, ``v [B, H, T, V]`` (any strides), ``g`` the
    float32 per-token log-decays ``[B, H, T]``, ``scale``,
    ``initial_state [B, H, K, V]`` or None, ``want_states``, ``seq_idx [B, T]``
    or None. Returns ``o [B, H, T, V]``, the float32 final state
    ``[B, H, K, V]`` and, with ``want_states``, the float32 states before each
    chunk of ``CHUNK`` (`_config`) positions ``[B, H, NT, K, V]`` (else None).

    With ``cu_seqlens`` (``[N + 1]`` offsets of ``total`` packed positions;
    batch of one) the inputs are already laid out in the chunk-aligned buffer of
    `varlen_layout`, ``initial_state`` and the final states are per sequence
    ``[N, H, K, V]``, and only the state pass knows about the sequences: each
    chunk lies inside one, so the chunk kernels need no mask. The output is the
    buffer's ``[1, H, Tp, V]``.
    """
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    K, V = q.shape[-1], v.shape[-1]
    config = _config(K, V, v.dtype)
    gc = chunk_cumsum(g, config["CHUNK"])
    seg = segments(seq_idx, q.shape[2], config["CHUNK"])
    varlen = (
        None
        if cu_seqlens is None
        else varlen_layout(cu_seqlens, total, config["CHUNK"])
    )
    states, final = _states(
        k,
        v,
        gc,
        initial_state,
        1.0,
        False,
        True,
        config,
        seg=seg,
        varlen=varlen,
    )
    o = _outputs(q, k, v, states, False, gc, scale, False, config, v.dtype, seg)
    if not want_states:
        return o, final, None
    Bsz, H, T, _ = q.shape
    return o, final, states.reshape(Bsz, H, -1, K, V)


def chunk_backward(
    do,
    dfinal,
    dstates,
    q,
    k,
    v,
    g,
    s0,
    final,
    seq_idx,
    scale,
    want_states,
    needs_dg,
    cu_seqlens=None,
    total=0,
):
    """The gradients ``(dq, dk, dv, dg, ds0)`` of `chunk_forward`'s inputs, from
    those of its outputs: ``do [B, H, T, V]``, ``dfinal [B, H, K, V]`` (or None)
    and ``dstates [B, H, NT, K, V]`` (or None). ``dg [B, H, T]`` (float32) only
    with ``needs_dg``, ``ds0`` only with ``s0`` (else None); ``dq, dk, dv`` in
    the dtypes of ``q, k, v``, contiguous. ``cu_seqlens`` and ``total`` as in
    `chunk_forward` (``dfinal`` and ``ds0`` are then per sequence).
    """
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    do = _last_dim_contiguous(do.to(v.dtype))
    K, V = q.shape[-1], v.shape[-1]
    config = _config(K, V, v.dtype)
    gc = chunk_cumsum(g, config["CHUNK"])
    seg = segments(seq_idx, q.shape[2], config["CHUNK"])
    varlen = (
        None
        if cu_seqlens is None
        else varlen_layout(cu_seqlens, total, config["CHUNK"])
    )
    # recomputed
    states, _ = _states(
        k, v, gc, s0, 1.0, False, False, config, seg=seg, varlen=varlen
    )
    extra = None
    if want_states and dstates is not None:
        extra = dstates.float().reshape(states.shape).contiguous()
    grads, ds0 = _states(
        q,
        do,
        gc,
        dfinal,
        scale,
        True,
        s0 is not None,
        config,
        extra,
        seg,
        varlen,
    )  # after each chunk
    # dq and dk in float32 whenever the decay needs a gradient: it is built from
    # q . dq - k . dk.
    wide = torch.float32 if needs_dg else q.dtype
    kconf = _config(V, K, v.dtype)
    dq = _outputs(do, v, k, states, True, gc, scale, False, kconf, wide, seg)
    dk = _outputs(do, v, q, grads, True, gc, scale, True, kconf, wide, seg)
    dv = _outputs(q, k, do, grads, False, gc, scale, True, config, v.dtype, seg)
    dg = None
    if needs_dg:
        # o_i depends on the log-decays through exp(G_i - G_j), G the cumulative
        # sum over the sequence: dL/dG_t = q_t . dq_t - k_t . dk_t (plus
        # <dfinal, final> at the last position, which final depends on through
        # exp(G_{T-1} - G_j)); g_r enters every G_t with t >= r, so dL/dg_r is
        # the reverse cumulative sum.
        dG = (q.float() * dq).sum(-1) - (k.float() * dk).sum(-1)
        # final state i sits at the end of sequence i
        if dfinal is not None and varlen is not None:
            dG[0].index_add_(
                -1, varlen.end, (dfinal.float() * final).sum((-1, -2)).T
            )
        elif dfinal is not None:
            dG[..., -1] += (dfinal.float() * final).sum((-1, -2))
        # the state before chunk n >= 1 holds exp(G_{nC-1} - G_s) like a final
        # state
        if extra is not None:
            Bsz, H, T, _ = q.shape
            CHUNK = config["CHUNK"]
            # [B, H, NT - 1]
            inner = (extra * states).sum((-1, -2)).reshape(Bsz, H, -1)[..., 1:]
            dG[..., CHUNK - 1 :: CHUNK][..., : inner.shape[-1]] += inner
        dg = dG.flip(-1).cumsum(-1).flip(-1)
        if varlen is not None:  # the sum runs to the end of each sequence only
            dg = dg - torch.nn.functional.pad(dg, (0, 1))[..., varlen.stop]
    ds0 = None if ds0 is None else ds0.to(s0.dtype)
    return dq.to(q.dtype), dk.to(k.dtype), dv, dg, ds0


@triton.jit
def _step_kernel(
    Q,
    K_,
    V_,
    S,
    G,
    O,
    SN,
    DK,
    DV,
    H,
    scale,
    HAS_G: tl.constexpr,
    G_PER_BATCH: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """One decoding step: ``S' = exp(g) S + k^T v`` and ``o = scale * q S'``,
    fused.

    Q, K_: ``[B H, DK]``; V_, O: ``[B H, DV]``; S: ``[B H, DK, DV]`` (any float
    dtype); SN: the float32 new state; G: log-decays ``[H]`` or, with
    ``G_PER_BATCH``, ``[B H]``. One program per (batch, head, block of value
    columns) loops over the key dimension in tiles of BLOCK_K.
    """
    pid_v = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    m_v = offs_v < DV
    v = tl.load(V_ + bh * DV + offs_v, mask=m_v, other=0.0).to(tl.float32)
    gamma = 1.0
    if HAS_G:
        if G_PER_BATCH:
            gamma = tl.exp(tl.load(G + bh).to(tl.float32))
        else:
            gamma = tl.exp(tl.load(G + bh % H).to(tl.float32))
    o = tl.zeros([BLOCK_V], dtype=tl.float32)
    for kb in range(0, DK, BLOCK_K):
        offs_k = kb + tl.arange(0, BLOCK_K)
        m_k = offs_k < DK
        q = tl.load(Q + bh * DK + offs_k, mask=m_k, other=0.0).to(tl.float32)
        k = tl.load(K_ + bh * DK + offs_k, mask=m_k, other=0.0).to(tl.float32)
        p_s = bh * DK * DV + offs_k[:, None] * DV + offs_v[None, :]
        m_s = m_k[:, None] & m_v[None, :]
        s = (
            tl.load(S + p_s, mask=m_s, other=0.0).to(tl.float32) * gamma
            + k[:, None] * v[None, :]
        )
        tl.store(SN + p_s, s, mask=m_s)
        o += tl.sum(q[:, None] * s, axis=0)
    tl.store(O + bh * DV + offs_v, (o * scale).to(O.dtype.element_ty), mask=m_v)


def _step_config(DK: int, DV: int, interpret: bool = INTERPRET) -> dict:
    """Launch settings of `_step_kernel`: tiles of the ``[DK, DV]`` state."""
    BLOCK_V = min(64, max(16, triton.next_power_of_2(DV)))
    BLOCK_K = min(64, max(16, triton.next_power_of_2(DK)))
    return dict(
        BLOCK_K=BLOCK_K, BLOCK_V=BLOCK_V, num_warps=1 if interpret else 4
    )


# the step writes a fresh state and output: timing it again rewrites the same
# values
_step_tuned = triton.autotune(
    [
        triton.Config(dict(BLOCK_K=k, BLOCK_V=v), num_warps=w, num_stages=1)
        for k, v, w in STEP_CONFIGS
    ],
    key=["DK", "DV", "HAS_G", "G_PER_BATCH"],
    prune_configs_by={"early_config_prune": _prune_step},
)(_step_kernel)


def linear_attention_step_fused(q, k, v, state, decay, scale):
    """`_step_kernel` on ``q, k [B, H, K]``, ``v [B, H, V]``,
    ``state [B, H, K, V]`` and ``decay`` (``[H]``, ``[B, H]`` or None):
    ``(o [B, H, V], new state [B, H, K, V] float32)``."""
    B, H, DK = q.shape
    DV = v.shape[-1]
    q, k, v, state = (x.contiguous() for x in (q, k, v, state))
    o = torch.empty(B, H, DV, device=q.device, dtype=q.dtype)
    new = torch.empty(B, H, DK, DV, device=q.device, dtype=torch.float32)
    g = o if decay is None else decay.contiguous()
    _launch(
        _step_kernel,
        _step_tuned,
        lambda meta: (triton.cdiv(DV, meta["BLOCK_V"]), B * H),
        (q, k, v, state, g, o, new, DK, DV, H, scale),
        _step_config(DK, DV),
        HAS_G=decay is not None,
        G_PER_BATCH=decay is not None and decay.dim() == 2,
    )
    return o, new
