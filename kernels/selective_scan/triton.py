"""The selective scan in Triton: a chunked parallel scan forward, a reverse scan
backward.

Each program owns ``BLOCK_D`` channels of one batch element and walks the
sequence in chunks of ``CHUNK`` tokens. Inside a chunk the recurrence
``x_t = a_t x_{t-1} + b_t`` (with ``a_t = exp(Δ_t A)`` and
``b_t = Δ_t B_t u_t``, elementwise over the ``n`` states) is an associative scan
over the pairs ``(a_t, b_t)`` with the operator

    (a1, b1) ∘ (a2, b2) = (a1 a2, a2 b1 + b2),

run by ``tl.associative_scan`` across the chunk; the state entering the chunk is
carried from the previous one (the two-level scan). The state lives on chip in
float32 and is never written per token: the forward stores only the state
entering each chunk, which the backward uses to recompute the chunk's states.

The backward runs the chunks in reverse. The gradient reaching ``x_t``,
``h_t = C_t dy_t + a_{t+1} h_{t+1}``, is the same kind of scan run backwards in
time. From it: ``db_t = h_t`` and ``da_t a_t = h_t (x_t - b_t)``, which give the
gradients of Δ, A, B, C and u without dividing by ``a_t``.

The decoding step (one token) is one more kernel: each program reads ``BLOCK_D``
channels' state ``[BLOCK_D, BLOCK_N]``, advances it and writes it back in place.

On a GPU the launchers autotune ``BLOCK_D`` and ``num_warps``
(``triton.autotune``, lists pruned by tile size and groups); in the interpreter
they use the deterministic ``_config`` and ``_step_config``. The forward,
backward and step are registered as PyTorch operators (``torch.ops.kernels.*``)
with fake implementations and the backward as the forward's autograd formula,
which is what ``torch.compile`` traces.

Shapes: ``u, delta, z, out [b, d, L]``; ``A [d, n]``; input-dependent
``B, C [b, g, n, L]`` (``g`` groups of ``d / g`` channels) or time-invariant
``[d, n]``; ``D, delta_bias [d]``; the step's ``state [b, d, n]``,
``u, delta, z, out [b, d]``, ``B, C [b, g, n]``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from .._backend import INTERPRET


@triton.jit
def _combine(a1, b1, a2, b2):
    """The scan operator: apply step 1 then step 2 of ``x -> a x + b``."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _load_delta(
    p_delta, p_bias, o_t, m_d, L, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr
):
    """Δ for the chunk ``[BLOCK_D, CHUNK]`` in float32, 0 outside ``[0, L)``;
    also the pre-softplus value."""
    m = m_d[:, None] & (o_t[None, :] < L)
    pre = tl.load(p_delta + o_t[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        pre += tl.load(p_bias, mask=m_d, other=0.0)[:, None]
    dlt = pre
    if SOFTPLUS:
        dlt = tl.where(pre <= 20.0, tl.log(1.0 + tl.exp(pre)), pre)
    return tl.where(m, dlt, 0.0), pre


@triton.jit
def _load_BC(p_M, o_d, o_n, o_t, m_d, m_n, L, VARIABLE: tl.constexpr):
    """``B`` or ``C`` broadcastable to ``[BLOCK_D, BLOCK_N, CHUNK]``.

    ``p_M`` points at this batch element's group ``[n, L]`` when ``VARIABLE``,
    else at ``[d, n]``.
    """
    if VARIABLE:
        m = m_n[:, None] & (o_t[None, :] < L)
        b_M = tl.load(
            p_M + o_n[:, None] * L + o_t[None, :], mask=m, other=0.0
        ).to(tl.float32)[None, :, :]
    else:
        m = m_d[:, None] & m_n[None, :]
        b_M = tl.load(
            p_M + o_d[:, None] * 0 + o_n[None, :], mask=m, other=0.0
        ).to(tl.float32)[:, :, None]
    return b_M


@triton.jit
def _last(x, o_c, i):
    """Column ``i`` of ``x [BLOCK_D, BLOCK_N, CHUNK]``:
    ``[BLOCK_D, BLOCK_N]``."""
    return tl.sum(tl.where(o_c[None, None, :] == i, x, 0.0), axis=2)


# --8<-- [start:fwd_kernel]
@triton.jit
def _selective_scan_fwd_kernel(
    u,
    delta,
    A,
    B,
    C,
    D,
    z,
    delta_bias,
    out,
    chunk_states,
    last_state,
    d,
    n,
    L,
    g_B,
    g_C,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr,
    B_VARIABLE: tl.constexpr,
    C_VARIABLE: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    STORE_STATES: tl.constexpr,
):
    # i_b is 64-bit, and with it every offset that multiplies sizes:
    # b d L, b d n_chunks n and b g n L can pass 2^31.
    i_d, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    o_n = tl.arange(0, BLOCK_N)
    o_c = tl.arange(0, CHUNK)
    m_d, m_n = o_d < d, o_n < n
    m_dn = m_d[:, None] & m_n[None, :]
    row = (i_b * d + o_d)[
        :, None
    ] * L  # start of each channel's row in [b, d, L]: [BLOCK_D, 1]
    # [BLOCK_D, BLOCK_N]
    b_A = tl.load(A + o_d[:, None] * n + o_n[None, :], mask=m_dn, other=0.0)
    # every channel of the block is in one group of B (and of C): BLOCK_D
    # divides d / g
    p_B = B + (
        (i_b * g_B + i_d * BLOCK_D // (d // g_B)) * n * L
        if B_VARIABLE
        else o_d[:, None] * n
    )
    p_C = C + (
        (i_b * g_C + i_d * BLOCK_D // (d // g_C)) * n * L
        if C_VARIABLE
        else o_d[:, None] * n
    )
    if HAS_D:
        b_D = tl.load(D + o_d, mask=m_d, other=0.0)
    n_chunks = tl.cdiv(L, CHUNK)
    # the state entering the chunk
    b_x = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for i_c in range(n_chunks):
        if STORE_STATES:  # for the backward only
            p_states = (
                chunk_states
                + ((i_b * d + o_d[:, None]) * n_chunks + i_c) * n
                + o_n[None, :]
            )
            tl.store(p_states, b_x, mask=m_dn)
        o_t = i_c * CHUNK + o_c
        m_t = m_d[:, None] & (o_t[None, :] < L)
        b_dt, _ = _load_delta(
            delta + row, delta_bias + o_d, o_t, m_d, L, HAS_BIAS, SOFTPLUS
        )
        # [BLOCK_D, CHUNK]
        b_u = tl.load(u + row + o_t[None, :], mask=m_t, other=0.0).to(
            tl.float32
        )
        # [BLOCK_D, BLOCK_N, CHUNK]
        b_a = tl.exp(b_dt[:, None, :] * b_A[:, :, None])
        b_b = (b_dt * b_u)[:, None, :] * _load_BC(
            p_B, o_d, o_n, o_t, m_d, m_n, L, B_VARIABLE
        )
        # the chunk from a zero state
        b_prod, b_xs = tl.associative_scan((b_a, b_b), 2, _combine)
        b_xs += b_prod * b_x[:, :, None]  # plus the carried state, decayed
        # [BLOCK_D, CHUNK]
        b_y = tl.sum(
            b_xs * _load_BC(p_C, o_d, o_n, o_t, m_d, m_n, L, C_VARIABLE), axis=1
        )
        if HAS_D:
            b_y += b_D[:, None] * b_u
        if HAS_Z:
            b_z = tl.load(z + row + o_t[None, :], mask=m_t, other=0.0).to(
                tl.float32
            )
            b_y *= b_z * tl.sigmoid(b_z)
        tl.store(
            out + row + o_t[None, :], b_y.to(out.dtype.element_ty), mask=m_t
        )
        # positions past L carry the state unchanged
        b_x = _last(b_xs, o_c, CHUNK - 1)
    tl.store(
        last_state + (i_b * d + o_d[:, None]) * n + o_n[None, :], b_x, mask=m_dn
    )


# --8<-- [end:fwd_kernel]


@triton.jit
def _selective_scan_bwd_kernel(
    u,
    delta,
    A,
    B,
    C,
    D,
    z,
    delta_bias,
    chunk_states,
    dout,
    dlast,
    du,
    ddelta,
    dA,
    dB,
    dC,
    dD,
    dz,
    dbias,
    d,
    n,
    L,
    g_B,
    g_C,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr,
    B_VARIABLE: tl.constexpr,
    C_VARIABLE: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
):
    i_d, i_b = (
        tl.program_id(0),
        tl.program_id(1).to(tl.int64),
    )  # 64-bit offsets, as in the forward
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    o_n = tl.arange(0, BLOCK_N)
    o_c = tl.arange(0, CHUNK)
    m_d, m_n = o_d < d, o_n < n
    m_dn = m_d[:, None] & m_n[None, :]
    row = (i_b * d + o_d)[:, None] * L
    # this block in a [b, d, n] tensor
    p_dn = (i_b * d + o_d[:, None]) * n + o_n[None, :]
    b_A = tl.load(A + o_d[:, None] * n + o_n[None, :], mask=m_dn, other=0.0)
    grp_B = i_b * g_B + i_d * BLOCK_D // (d // g_B)
    grp_C = i_b * g_C + i_d * BLOCK_D // (d // g_C)
    p_B = B + (grp_B * n * L if B_VARIABLE else o_d[:, None] * n)
    p_C = C + (grp_C * n * L if C_VARIABLE else o_d[:, None] * n)
    if HAS_D:
        b_D = tl.load(D + o_d, mask=m_d, other=0.0)
    n_chunks = tl.cdiv(L, CHUNK)
    # gradient reaching the state after the chunk
    b_h = tl.load(dlast + p_dn, mask=m_dn, other=0.0)
    b_dA = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    # time-invariant B and C gradients
    b_dBi = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    b_dCi = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    b_dD = tl.zeros([BLOCK_D], dtype=tl.float32)
    b_dbias = tl.zeros([BLOCK_D], dtype=tl.float32)
    for j in range(n_chunks):
        i_c = n_chunks - 1 - j
        o_t = i_c * CHUNK + o_c
        m_t = m_d[:, None] & (o_t[None, :] < L)
        # recompute the chunk's states from the state entering it
        b_x0 = tl.load(
            chunk_states
            + ((i_b * d + o_d[:, None]) * n_chunks + i_c) * n
            + o_n[None, :],
            mask=m_dn,
            other=0.0,
        )
        b_dt, b_pre = _load_delta(
            delta + row, delta_bias + o_d, o_t, m_d, L, HAS_BIAS, SOFTPLUS
        )
        b_u = tl.load(u + row + o_t[None, :], mask=m_t, other=0.0).to(
            tl.float32
        )
        b_Bt = _load_BC(p_B, o_d, o_n, o_t, m_d, m_n, L, B_VARIABLE)
        b_Ct = _load_BC(p_C, o_d, o_n, o_t, m_d, m_n, L, C_VARIABLE)
        b_a = tl.exp(b_dt[:, None, :] * b_A[:, :, None])
        b_b = (b_dt * b_u)[:, None, :] * b_Bt
        b_prod, b_x = tl.associative_scan((b_a, b_b), 2, _combine)
        b_x += b_prod * b_x0[:, :, None]  # x_t: [BLOCK_D, BLOCK_N, CHUNK]
        # gradient of y (before the gate) and of the gate
        b_dy = tl.load(dout + row + o_t[None, :], mask=m_t, other=0.0).to(
            tl.float32
        )
        if HAS_Z:
            b_z = tl.load(z + row + o_t[None, :], mask=m_t, other=0.0).to(
                tl.float32
            )
            b_sig = tl.sigmoid(b_z)
            b_y = tl.sum(b_x * b_Ct, axis=1)
            if HAS_D:
                b_y += b_D[:, None] * b_u
            tl.store(
                dz + row + o_t[None, :],
                (b_dy * b_y * b_sig * (1 + b_z * (1 - b_sig))).to(
                    dz.dtype.element_ty
                ),
                mask=m_t,
            )
            b_dy *= b_z * b_sig
        # h_t = C_t dy_t + a_{t+1} h_{t+1}: a reverse scan with a shifted by one
        # token
        b_dt_next, _ = _load_delta(
            delta + row, delta_bias + o_d, o_t + 1, m_d, L, HAS_BIAS, SOFTPLUS
        )
        b_a_next = tl.exp(b_dt_next[:, None, :] * b_A[:, :, None])
        b_prod_r, b_hs = tl.associative_scan(
            (b_a_next, b_Ct * b_dy[:, None, :]), 2, _combine, reverse=True
        )
        b_hs += b_prod_r * b_h[:, :, None]  # h_t
        b_h = _last(b_hs, o_c, 0)
        b_q = b_hs * (b_x - b_b)  # da_t * a_t
        b_hB = tl.sum(b_hs * b_Bt, axis=1)  # [BLOCK_D, CHUNK]
        b_ddt = tl.sum(b_q * b_A[:, :, None], axis=1) + b_hB * b_u
        b_du = b_hB * b_dt
        if HAS_D:
            b_du += b_dy * b_D[:, None]
            b_dD += tl.sum(b_dy * b_u, axis=1)
        b_dA += tl.sum(b_q * b_dt[:, None, :], axis=2)
        b_hdu = b_hs * (b_dt * b_u)[:, None, :]  # dL/dB_t per channel
        b_xdy = b_x * b_dy[:, None, :]  # dL/dC_t per channel
        if B_VARIABLE:
            m = m_n[:, None] & (o_t[None, :] < L)
            tl.atomic_add(
                dB + grp_B * n * L + o_n[:, None] * L + o_t[None, :],
                tl.sum(b_hdu, axis=0),
                mask=m,
            )
        else:
            b_dBi += tl.sum(b_hdu, axis=2)
        if C_VARIABLE:
            m = m_n[:, None] & (o_t[None, :] < L)
            tl.atomic_add(
                dC + grp_C * n * L + o_n[:, None] * L + o_t[None, :],
                tl.sum(b_xdy, axis=0),
                mask=m,
            )
        else:
            b_dCi += tl.sum(b_xdy, axis=2)
        if SOFTPLUS:
            b_ddt *= tl.sigmoid(b_pre)
        b_ddt = tl.where(m_t, b_ddt, 0.0)
        if HAS_BIAS:
            b_dbias += tl.sum(b_ddt, axis=1)
        tl.store(
            du + row + o_t[None, :], b_du.to(du.dtype.element_ty), mask=m_t
        )
        tl.store(
            ddelta + row + o_t[None, :],
            b_ddt.to(ddelta.dtype.element_ty),
            mask=m_t,
        )
    # per-batch-element partial sums of the parameter gradients, summed over b
    # by the caller
    tl.store(dA + p_dn, b_dA, mask=m_dn)
    if not B_VARIABLE:
        tl.store(dB + p_dn, b_dBi, mask=m_dn)
    if not C_VARIABLE:
        tl.store(dC + p_dn, b_dCi, mask=m_dn)
    if HAS_D:
        tl.store(dD + i_b * d + o_d, b_dD, mask=m_d)
    if HAS_BIAS:
        tl.store(dbias + i_b * d + o_d, b_dbias, mask=m_d)


# --8<-- [start:step_kernel]
@triton.jit
def _selective_scan_step_kernel(
    state,
    u,
    delta,
    A,
    B,
    C,
    D,
    z,
    delta_bias,
    out,
    d,
    n,
    dg_B,
    dg_C,
    stride_state_b,
    stride_state_d,
    stride_state_n,
    stride_u_b,
    stride_u_d,
    stride_delta_b,
    stride_delta_d,
    stride_z_b,
    stride_z_d,
    stride_B_b,
    stride_B_g,
    stride_B_n,
    stride_C_b,
    stride_C_g,
    stride_C_n,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
):
    """One token: ``BLOCK_D`` channels of one batch element read their state,
    advance it, write it back."""
    i_d, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    o_n = tl.arange(0, BLOCK_N)
    m_d, m_n = o_d < d, o_n < n
    m_dn = m_d[:, None] & m_n[None, :]
    p_state = (
        state
        + i_b * stride_state_b
        + o_d[:, None] * stride_state_d
        + o_n[None, :] * stride_state_n
    )
    # [BLOCK_D, BLOCK_N]
    b_x = tl.load(p_state, mask=m_dn, other=0.0).to(tl.float32)
    b_u = tl.load(
        u + i_b * stride_u_b + o_d * stride_u_d, mask=m_d, other=0.0
    ).to(tl.float32)  # [BLOCK_D]
    b_dt = tl.load(
        delta + i_b * stride_delta_b + o_d * stride_delta_d, mask=m_d, other=0.0
    ).to(tl.float32)
    if HAS_BIAS:
        b_dt += tl.load(delta_bias + o_d, mask=m_d, other=0.0)
    if SOFTPLUS:
        b_dt = tl.where(b_dt <= 20.0, tl.log(1.0 + tl.exp(b_dt)), b_dt)
    b_A = tl.load(A + o_d[:, None] * n + o_n[None, :], mask=m_dn, other=0.0)
    # each channel reads the B and C of its group (a block may straddle two
    # groups)
    p_B = (
        B
        + i_b * stride_B_b
        + (o_d // dg_B)[:, None] * stride_B_g
        + o_n[None, :] * stride_B_n
    )
    p_C = (
        C
        + i_b * stride_C_b
        + (o_d // dg_C)[:, None] * stride_C_g
        + o_n[None, :] * stride_C_n
    )
    # [BLOCK_D, BLOCK_N]
    b_B = tl.load(p_B, mask=m_dn, other=0.0).to(tl.float32)
    b_C = tl.load(p_C, mask=m_dn, other=0.0).to(tl.float32)
    b_x = tl.exp(b_dt[:, None] * b_A) * b_x + (b_dt * b_u)[:, None] * b_B
    tl.store(p_state, b_x.to(state.dtype.element_ty), mask=m_dn)
    b_y = tl.sum(b_x * b_C, axis=1)  # [BLOCK_D]
    if HAS_D:
        b_y += tl.load(D + o_d, mask=m_d, other=0.0) * b_u
    if HAS_Z:
        b_z = tl.load(
            z + i_b * stride_z_b + o_d * stride_z_d, mask=m_d, other=0.0
        ).to(tl.float32)
        b_y *= b_z * tl.sigmoid(b_z)
    tl.store(out + i_b * d + o_d, b_y.to(out.dtype.element_ty), mask=m_d)


# --8<-- [end:step_kernel]


def _chunk(n: int, interpret: bool = INTERPRET) -> int:
    """Tokens per chunk: 16 in the interpreter; on a GPU about 4096 / 8 state
    elements per channel (32 tokens at ``n = 16``). Fixed, never tuned: the
    backward reads the states the forward stored at chunk boundaries, and the
    buffer's size depends on it."""
    return (
        16
        if interpret
        else max(16, 4096 // (8 * max(16, triton.next_power_of_2(int(n)))))
    )


def _block_d_limit(d: int, groups) -> int:
    """The largest ``BLOCK_D`` a launch may use: a power of two that fits ``d``
    and divides the channels of every group of ``B`` and ``C`` (1 when
    time-invariant), so that a block reads one group."""
    limit = triton.next_power_of_2(d)
    for g in groups:
        if g > 1:
            limit = math.gcd(limit, d // g)
    return limit


def _config(d: int, n: int, groups, interpret: bool = INTERPRET) -> dict:
    """Launch settings of the forward and backward scan kernels, deterministic.

    What the interpreter and the ahead-of-time compile test use; on a GPU the
    launchers autotune ``BLOCK_D`` and ``num_warps`` among `_scan_configs`
    instead (``CHUNK`` stays this one). Tiles of about 4096 state elements on a
    GPU; small tiles in the interpreter, where the scan costs Python per
    element.

    Args:
        d (int): number of channels.
        n (int): state size (1 to 256).
        groups: the number of groups of ``B`` and of ``C`` (1 when
            time-invariant).
        interpret (bool): settings for Triton's interpreter (default: whether it
            is on).

    Returns:
        dict: ``BLOCK_D``, ``BLOCK_N`` (``n`` padded to a power of two),
        ``CHUNK``, ``num_warps`` and ``num_stages``.
    """
    # at least 16 states on a GPU (smaller state sizes are masked, which keeps
    # the number of compiled variants small)
    BLOCK_N = (
        triton.next_power_of_2(n)
        if interpret
        else max(16, triton.next_power_of_2(n))
    )
    CHUNK = _chunk(n, interpret)
    BLOCK_D = 4 if interpret else max(1, min(32, 4096 // (BLOCK_N * CHUNK)))
    BLOCK_D = math.gcd(BLOCK_D, _block_d_limit(d, groups))
    return dict(
        BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N, CHUNK=CHUNK, num_warps=4, num_stages=3
    )


SCAN_TILES = (
    2048,
    4096,
)  # state elements per tile BLOCK_D x BLOCK_N x CHUNK that the autotuner tries
SCAN_CONFIGS = [
    triton.Config({"BLOCK_D": bd}, num_warps=w, num_stages=3)
    for bd in (1, 2, 4, 8, 16, 32, 64)
    for w in (4, 8)
]


def _scan_configs(configs, named_args, **kwargs):
    """The autotune list for one launch: ``BLOCK_D`` with tiles of `SCAN_TILES`
    elements, within the group limit, by 4 or 8 warps; when the groups force a
    smaller block, the largest one allowed."""
    d, BLOCK_N, CHUNK = named_args["d"], kwargs["BLOCK_N"], kwargs["CHUNK"]
    limit = _block_d_limit(d, (named_args["g_B"], named_args["g_C"]))
    tile = BLOCK_N * CHUNK
    kept = [
        c
        for c in configs
        if c.kwargs["BLOCK_D"] <= limit
        and c.kwargs["BLOCK_D"] * tile in SCAN_TILES
    ]
    if not kept:
        best = max(
            c.kwargs["BLOCK_D"]
            for c in configs
            if c.kwargs["BLOCK_D"] <= limit
            and c.kwargs["BLOCK_D"] * tile <= SCAN_TILES[-1]
        )
        kept = [c for c in configs if c.kwargs["BLOCK_D"] == best]
    return kept


# state elements per program BLOCK_D x BLOCK_N that the step's autotuner tries
STEP_TILES = (256, 512, 1024)
STEP_CONFIGS = [
    triton.Config({"BLOCK_D": bd}, num_warps=w)
    for bd in (1, 2, 4, 8, 16, 32, 64)
    for w in (4, 8)
]


def _step_configs(configs, named_args, **kwargs):
    """The decoding step's autotune list: 256 to 1024 state elements per program
    (at most the channels there are), 4 warps, and 8 for the largest tile."""
    limit, BLOCK_N = triton.next_power_of_2(named_args["d"]), kwargs["BLOCK_N"]
    kept = [
        c
        for c in configs
        if c.kwargs["BLOCK_D"] <= limit
        and c.kwargs["BLOCK_D"] * BLOCK_N in STEP_TILES
        and (
            c.num_warps == 4 or c.kwargs["BLOCK_D"] * BLOCK_N == STEP_TILES[-1]
        )
    ]
    return kept or [
        c for c in configs if c.kwargs["BLOCK_D"] == 1 and c.num_warps == 4
    ]


_KEY = [
    "d",
    "n",
    "g_B",
    "g_C",
    "B_VARIABLE",
    "C_VARIABLE",
    "HAS_Z",
]  # triton adds the dtypes of the tensors
_fwd_tuned = triton.autotune(
    SCAN_CONFIGS,
    key=_KEY,
    prune_configs_by={"early_config_prune": _scan_configs},
)(_selective_scan_fwd_kernel)
# the backward adds into dB and dC: zero them before each timed run
_bwd_tuned = triton.autotune(
    SCAN_CONFIGS,
    key=_KEY,
    prune_configs_by={"early_config_prune": _scan_configs},
    reset_to_zero=["dB", "dC"],
)(_selective_scan_bwd_kernel)
# the step overwrites the state: restore it after each timed run
_step_tuned = triton.autotune(
    STEP_CONFIGS,
    key=["d", "n", "HAS_Z"],
    prune_configs_by={"early_config_prune": _step_configs},
    restore_value=["state"],
)(_selective_scan_step_kernel)


def _launch(kernel, tuned, grid_d, b, args, config, **fixed):
    """Run ``kernel`` with the deterministic ``config`` (interpreter) or
    ``tuned`` (GPU) on the device of the tensors; ``grid_d(BLOCK_D)`` is the
    number of blocks of channels."""
    if INTERPRET:
        kernel[(grid_d(config["BLOCK_D"]), b)](*args, **config, **fixed)
        return
    fixed.update(
        {
            k: v
            for k, v in config.items()
            if k not in ("BLOCK_D", "num_warps", "num_stages")
        }
    )
    with torch.cuda.device(args[0].device):
        tuned[lambda meta: (grid_d(meta["BLOCK_D"]), b)](*args, **fixed)


def _as_groups(M):
    """Input-dependent ``[b, n, L]`` -> ``[b, 1, n, L]``; everything contiguous.
    ``[d, n]`` stays."""
    return (M[:, None] if M.dim() == 3 else M).contiguous()


def _flags(B, C, D, z, delta_bias, delta_softplus):
    return dict(
        B_VARIABLE=B.dim() == 4,
        C_VARIABLE=C.dim() == 4,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=delta_softplus,
    )


def selective_scan_fwd(
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, store_states
):
    """``(out [b, d, L], last_state [b, d, n], chunk_states)`` of contiguous
    inputs (``B``, ``C`` as ``[b, g, n, L]`` or ``[d, n]``).

    ``chunk_states [b, d, n_chunks, n]`` (float32), the state entering each
    chunk, is written only when ``store_states`` (a backward will follow);
    otherwise it is empty, ``[0]``.
    """
    b, d, L = u.shape
    n = A.shape[1]
    g_B, g_C = (M.shape[1] if M.dim() == 4 else 1 for M in (B, C))
    config = _config(d, n, (g_B, g_C))
    out = torch.empty_like(u)
    f32 = dict(device=u.device, dtype=torch.float32)
    chunk_states = (
        torch.empty(b, d, triton.cdiv(L, config["CHUNK"]), n, **f32)
        if store_states
        else torch.empty(0, **f32)
    )
    last_state = torch.empty(b, d, n, **f32)
    dummy = A  # stands in for the optional tensors that are absent (never read)
    args = (
        u,
        delta,
        A,
        B,
        C,
        dummy if D is None else D,
        dummy if z is None else z,
        dummy if delta_bias is None else delta_bias,
        out,
        dummy if not store_states else chunk_states,
        last_state,
        d,
        n,
        L,
        g_B,
        g_C,
    )
    _launch(
        _selective_scan_fwd_kernel,
        _fwd_tuned,
        lambda bd: triton.cdiv(d, bd),
        b,
        args,
        config,
        **_flags(B, C, D, z, delta_bias, delta_softplus),
        STORE_STATES=store_states,
    )
    return out, last_state, chunk_states


def selective_scan_bwd(
    dout,
    dlast,
    u,
    delta,
    A,
    B,
    C,
    D,
    z,
    delta_bias,
    delta_softplus,
    chunk_states,
):
    """Gradients ``(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias)`` of contiguous
    inputs, each in its input's dtype and shape; ``None`` for absent inputs."""
    b, d, L = u.shape
    n = A.shape[1]
    g_B, g_C = (M.shape[1] if M.dim() == 4 else 1 for M in (B, C))
    config = _config(d, n, (g_B, g_C))
    f32 = dict(device=u.device, dtype=torch.float32)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dA = torch.empty(b, d, n, **f32)
    dB = (
        torch.zeros(B.shape, **f32)
        if B.dim() == 4
        else torch.empty(b, d, n, **f32)
    )  # atomics need zeros
    dC = (
        torch.zeros(C.shape, **f32)
        if C.dim() == 4
        else torch.empty(b, d, n, **f32)
    )
    dD = torch.empty(b, d, **f32) if D is not None else None
    dbias = torch.empty(b, d, **f32) if delta_bias is not None else None
    dummy = A
    args = (
        u,
        delta,
        A,
        B,
        C,
        dummy if D is None else D,
        dummy if z is None else z,
        dummy if delta_bias is None else delta_bias,
        chunk_states,
        dout,
        dlast,
        du,
        ddelta,
        dA,
        dB,
        dC,
        dummy if dD is None else dD,
        dummy if dz is None else dz,
        dummy if dbias is None else dbias,
        d,
        n,
        L,
        g_B,
        g_C,
    )
    _launch(
        _selective_scan_bwd_kernel,
        _bwd_tuned,
        lambda bd: triton.cdiv(d, bd),
        b,
        args,
        config,
        **_flags(B, C, D, z, delta_bias, delta_softplus),
    )
    dB = dB.to(B.dtype) if B.dim() == 4 else dB.sum(0)
    dC = dC.to(C.dtype) if C.dim() == 4 else dC.sum(0)
    return (
        du,
        ddelta,
        dA.sum(0),
        dB,
        dC,
        None if dD is None else dD.sum(0),
        dz,
        None if dbias is None else dbias.sum(0),
    )


def _step_config(d: int, n: int, interpret: bool = INTERPRET) -> dict:
    """Launch settings of the decoding step's kernel, deterministic: ``BLOCK_D``
    channels by ``BLOCK_N`` states.

    What the interpreter and the ahead-of-time compile test use; on a GPU the
    launcher autotunes among `_step_configs` instead. About 512 state elements
    per program on a GPU (a token is ``d n`` elements: many small programs keep
    every SM busy); in the interpreter, where each program costs Python, up to
    32 channels at a time.

    Args:
        d (int): number of channels.
        n (int): state size (1 to 256).
        interpret (bool): settings for Triton's interpreter (default: whether it
            is on).

    Returns:
        dict: ``BLOCK_D``, ``BLOCK_N`` (``n`` padded to a power of two),
        ``num_warps``.
    """
    BLOCK_N = triton.next_power_of_2(n)
    BLOCK_D = 32 if interpret else max(1, 512 // BLOCK_N)
    return dict(
        BLOCK_D=min(BLOCK_D, triton.next_power_of_2(d)),
        BLOCK_N=BLOCK_N,
        num_warps=4,
    )


def selective_scan_step_fwd(
    state, u, delta, A, B, C, D, z, delta_bias, delta_softplus
):
    """``out [b, d]`` of one token; ``state [b, d, n]`` is updated in place. Any
    strides for ``state``, ``u``, ``delta``, ``z``, ``B`` and ``C`` (``[b, n]``
    or ``[b, g, n]``); ``A``, ``D`` and ``delta_bias`` are made contiguous."""
    b, d = u.shape
    n = A.shape[1]
    B, C = (M[:, None] if M.dim() == 2 else M for M in (B, C))  # [b, g, n]
    A, D, delta_bias = (
        None if x is None else x.contiguous() for x in (A, D, delta_bias)
    )
    out = torch.empty(b, d, device=u.device, dtype=u.dtype)
    dummy = A
    zs = (z.stride(0), z.stride(1)) if z is not None else (0, 0)
    args = (
        state,
        u,
        delta,
        A,
        B,
        C,
        dummy if D is None else D,
        dummy if z is None else z,
        dummy if delta_bias is None else delta_bias,
        out,
        d,
        n,
        d // B.shape[1],
        d // C.shape[1],
        *state.stride(),
        *u.stride(),
        *delta.stride(),
        *zs,
        *B.stride(),
        *C.stride(),
    )
    _launch(
        _selective_scan_step_kernel,
        _step_tuned,
        lambda bd: triton.cdiv(d, bd),
        b,
        args,
        _step_config(d, n),
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=delta_softplus,
    )
    return out


# --- custom operators: what torch.compile traces (opaque kernels with fake
# shapes), and the autograd

Tensor = torch.Tensor


@torch.library.custom_op("kernels::selective_scan", mutates_args=())
def selective_scan_op(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor],
    z: Optional[Tensor],
    delta_bias: Optional[Tensor],
    delta_softplus: bool,
    store_states: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(out [b, d, L], last_state [b, d, n], chunk_states)`` of the Triton
    scan; the inputs are those of `kernels.selective_scan` (any strides,
    ``B``/``C`` in any of their forms). ``chunk_states [b, d, n_chunks, n]``,
    what the backward needs, is written only when ``store_states``, else
    ``[0]``."""
    u, delta, A, D, z, delta_bias = (
        None if x is None else x.contiguous()
        for x in (u, delta, A, D, z, delta_bias)
    )
    return selective_scan_fwd(
        u,
        delta,
        A,
        _as_groups(B),
        _as_groups(C),
        D,
        z,
        delta_bias,
        delta_softplus,
        store_states,
    )


@selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, store_states):
    b, d, L = u.shape
    n = A.shape[1]
    chunks = (L + _chunk(n) - 1) // _chunk(n)
    states = (
        u.new_empty(b, d, chunks, n, dtype=torch.float32)
        if store_states
        else u.new_empty(0, dtype=torch.float32)
    )
    return (
        torch.empty_like(u, memory_format=torch.contiguous_format),
        u.new_empty(b, d, n, dtype=torch.float32),
        states,
    )


@torch.library.custom_op("kernels::selective_scan_backward", mutates_args=())
def selective_scan_backward_op(
    dout: Tensor,
    dlast: Tensor,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor],
    z: Optional[Tensor],
    delta_bias: Optional[Tensor],
    delta_softplus: bool,
    chunk_states: Tensor,
) -> list[Tensor]:
    """The gradients of `selective_scan_op`'s inputs
    ``[du, ddelta, dA, dB, dC]``, then ``dD``, ``dz``, ``ddelta_bias`` for those
    given; each in its input's shape and dtype."""
    u, delta, A, D, z, delta_bias = (
        None if x is None else x.contiguous()
        for x in (u, delta, A, D, z, delta_bias)
    )
    grads = selective_scan_bwd(
        dout.contiguous(),
        dlast.float().contiguous(),
        u,
        delta,
        A,
        _as_groups(B),
        _as_groups(C),
        D,
        z,
        delta_bias,
        delta_softplus,
        chunk_states,
    )
    grads = (
        list(grads[:3])
        + [grads[3].reshape(B.shape), grads[4].reshape(C.shape)]
        + list(grads[5:])
    )
    return [g for g in grads if g is not None]


@selective_scan_backward_op.register_fake
def _(
    dout,
    dlast,
    u,
    delta,
    A,
    B,
    C,
    D,
    z,
    delta_bias,
    delta_softplus,
    chunk_states,
):
    return [
        torch.empty_like(x, memory_format=torch.contiguous_format)
        for x in (u, delta, A, B, C, D, z, delta_bias)
        if x is not None
    ]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, store_states = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])
    ctx.delta_softplus = delta_softplus


def _backward(ctx, dout, dlast, dstates):
    u, delta, A, B, C, D, z, delta_bias, chunk_states = ctx.saved_tensors
    if chunk_states.dim() != 4:
        raise RuntimeError(
            "selective_scan: the forward ran without storing its chunk states "
            "(no input required grad when it ran), so it has no backward"
        )
    dout = torch.zeros_like(u) if dout is None else dout
    dlast = (
        u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32)
        if dlast is None
        else dlast
    )
    grads = iter(
        selective_scan_backward_op(
            dout,
            dlast,
            u,
            delta,
            A,
            B,
            C,
            D,
            z,
            delta_bias,
            ctx.delta_softplus,
            chunk_states,
        )
    )
    return tuple(
        None if x is None else next(grads)
        for x in (u, delta, A, B, C, D, z, delta_bias)
    ) + (None, None)


selective_scan_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op(
    "kernels::selective_scan_step", mutates_args=("state",)
)
def selective_scan_step_op(
    state: Tensor,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor],
    z: Optional[Tensor],
    delta_bias: Optional[Tensor],
    delta_softplus: bool,
) -> Tensor:
    """``out [b, d]`` of the decoding step's kernel; ``state`` is updated in
    place (declared to PyTorch)."""
    return selective_scan_step_fwd(
        state, u, delta, A, B, C, D, z, delta_bias, delta_softplus
    )


@selective_scan_step_op.register_fake
def _(state, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    return u.new_empty(u.shape)
