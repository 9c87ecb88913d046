"""The selective scan in Triton: a chunked parallel scan forward, a reverse scan backward.

Each program owns ``BLOCK_D`` channels of one batch element and walks the sequence in chunks
of ``CHUNK`` tokens. Inside a chunk the recurrence ``x_t = a_t x_{t-1} + b_t`` (with
``a_t = exp(Δ_t A)`` and ``b_t = Δ_t B_t u_t``, elementwise over the ``n`` states) is an
associative scan over the pairs ``(a_t, b_t)`` with the operator

    (a1, b1) ∘ (a2, b2) = (a1 a2, a2 b1 + b2),

run by ``tl.associative_scan`` across the chunk; the state entering the chunk is carried from
the previous one (the two-level scan). The state lives on chip in float32 and is never written
per token: the forward stores only the state entering each chunk, which the backward uses to
recompute the chunk's states.

The backward runs the chunks in reverse. The gradient reaching ``x_t``,
``h_t = C_t dy_t + a_{t+1} h_{t+1}``, is the same kind of scan run backwards in time. From it:
``db_t = h_t`` and ``da_t a_t = h_t (x_t - b_t)``, which give the gradients of Δ, A, B, C and u
without dividing by ``a_t``.

Shapes: ``u, delta, z, out [b, d, L]``; ``A [d, n]``; input-dependent ``B, C [b, g, n, L]``
(``g`` groups of ``d / g`` channels) or time-invariant ``[d, n]``; ``D, delta_bias [d]``.
"""
from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

from .._backend import INTERPRET


@triton.jit
def _combine(a1, b1, a2, b2):
    """The scan operator: apply step 1 then step 2 of ``x -> a x + b``."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _load_delta(p_delta, p_bias, o_t, m_d, L, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Δ for the chunk ``[BLOCK_D, CHUNK]`` in float32, 0 outside ``[0, L)``; also the pre-softplus value."""
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

    ``p_M`` points at this batch element's group ``[n, L]`` when ``VARIABLE``, else at ``[d, n]``.
    """
    if VARIABLE:
        m = m_n[:, None] & (o_t[None, :] < L)
        b_M = tl.load(p_M + o_n[:, None] * L + o_t[None, :], mask=m, other=0.0).to(tl.float32)[None, :, :]
    else:
        m = m_d[:, None] & m_n[None, :]
        b_M = tl.load(p_M + o_d[:, None] * 0 + o_n[None, :], mask=m, other=0.0).to(tl.float32)[:, :, None]
    return b_M


@triton.jit
def _last(x, o_c, i):
    """Column ``i`` of ``x [BLOCK_D, BLOCK_N, CHUNK]``: ``[BLOCK_D, BLOCK_N]``."""
    return tl.sum(tl.where(o_c[None, None, :] == i, x, 0.0), axis=2)


# --8<-- [start:fwd_kernel]
@triton.jit
def _selective_scan_fwd_kernel(
    u, delta, A, B, C, D, z, delta_bias, out, chunk_states, last_state,
    d, n, L, g_B, g_C,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    B_VARIABLE: tl.constexpr, C_VARIABLE: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, STORE_STATES: tl.constexpr,
):
    # i_b is 64-bit, and with it every offset that multiplies sizes: b d L, b d n_chunks n and
    # b g n L can pass 2^31.
    i_d, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    o_n = tl.arange(0, BLOCK_N)
    o_c = tl.arange(0, CHUNK)
    m_d, m_n = o_d < d, o_n < n
    m_dn = m_d[:, None] & m_n[None, :]
    row = (i_b * d + o_d)[:, None] * L  # start of each channel's row in [b, d, L]: [BLOCK_D, 1]
    b_A = tl.load(A + o_d[:, None] * n + o_n[None, :], mask=m_dn, other=0.0)  # [BLOCK_D, BLOCK_N]
    # every channel of the block is in one group of B (and of C): BLOCK_D divides d / g
    p_B = B + ((i_b * g_B + i_d * BLOCK_D // (d // g_B)) * n * L if B_VARIABLE else o_d[:, None] * n)
    p_C = C + ((i_b * g_C + i_d * BLOCK_D // (d // g_C)) * n * L if C_VARIABLE else o_d[:, None] * n)
    if HAS_D:
        b_D = tl.load(D + o_d, mask=m_d, other=0.0)
    n_chunks = tl.cdiv(L, CHUNK)
    b_x = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)  # the state entering the chunk
    for i_c in range(n_chunks):
        if STORE_STATES:  # for the backward only
            p_states = chunk_states + ((i_b * d + o_d[:, None]) * n_chunks + i_c) * n + o_n[None, :]
            tl.store(p_states, b_x, mask=m_dn)
        o_t = i_c * CHUNK + o_c
        m_t = m_d[:, None] & (o_t[None, :] < L)
        b_dt, _ = _load_delta(delta + row, delta_bias + o_d, o_t, m_d, L, HAS_BIAS, SOFTPLUS)
        b_u = tl.load(u + row + o_t[None, :], mask=m_t, other=0.0).to(tl.float32)  # [BLOCK_D, CHUNK]
        b_a = tl.exp(b_dt[:, None, :] * b_A[:, :, None])  # [BLOCK_D, BLOCK_N, CHUNK]
        b_b = (b_dt * b_u)[:, None, :] * _load_BC(p_B, o_d, o_n, o_t, m_d, m_n, L, B_VARIABLE)
        b_prod, b_xs = tl.associative_scan((b_a, b_b), 2, _combine)  # the chunk from a zero state
        b_xs += b_prod * b_x[:, :, None]  # plus the carried state, decayed
        b_y = tl.sum(b_xs * _load_BC(p_C, o_d, o_n, o_t, m_d, m_n, L, C_VARIABLE), axis=1)  # [BLOCK_D, CHUNK]
        if HAS_D:
            b_y += b_D[:, None] * b_u
        if HAS_Z:
            b_z = tl.load(z + row + o_t[None, :], mask=m_t, other=0.0).to(tl.float32)
            b_y *= b_z * tl.sigmoid(b_z)
        tl.store(out + row + o_t[None, :], b_y.to(out.dtype.element_ty), mask=m_t)
        b_x = _last(b_xs, o_c, CHUNK - 1)  # positions past L carry the state unchanged
    tl.store(last_state + (i_b * d + o_d[:, None]) * n + o_n[None, :], b_x, mask=m_dn)
# --8<-- [end:fwd_kernel]


@triton.jit
def _selective_scan_bwd_kernel(
    u, delta, A, B, C, D, z, delta_bias, chunk_states, dout, dlast,
    du, ddelta, dA, dB, dC, dD, dz, dbias,
    d, n, L, g_B, g_C,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    B_VARIABLE: tl.constexpr, C_VARIABLE: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    i_d, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)  # 64-bit offsets, as in the forward
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    o_n = tl.arange(0, BLOCK_N)
    o_c = tl.arange(0, CHUNK)
    m_d, m_n = o_d < d, o_n < n
    m_dn = m_d[:, None] & m_n[None, :]
    row = (i_b * d + o_d)[:, None] * L
    p_dn = (i_b * d + o_d[:, None]) * n + o_n[None, :]  # this block in a [b, d, n] tensor
    b_A = tl.load(A + o_d[:, None] * n + o_n[None, :], mask=m_dn, other=0.0)
    grp_B = i_b * g_B + i_d * BLOCK_D // (d // g_B)
    grp_C = i_b * g_C + i_d * BLOCK_D // (d // g_C)
    p_B = B + (grp_B * n * L if B_VARIABLE else o_d[:, None] * n)
    p_C = C + (grp_C * n * L if C_VARIABLE else o_d[:, None] * n)
    if HAS_D:
        b_D = tl.load(D + o_d, mask=m_d, other=0.0)
    n_chunks = tl.cdiv(L, CHUNK)
    b_h = tl.load(dlast + p_dn, mask=m_dn, other=0.0)  # gradient reaching the state after the chunk
    b_dA = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    b_dBi = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)  # time-invariant B and C gradients
    b_dCi = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    b_dD = tl.zeros([BLOCK_D], dtype=tl.float32)
    b_dbias = tl.zeros([BLOCK_D], dtype=tl.float32)
    for j in range(n_chunks):
        i_c = n_chunks - 1 - j
        o_t = i_c * CHUNK + o_c
        m_t = m_d[:, None] & (o_t[None, :] < L)
        # recompute the chunk's states from the state entering it
        b_x0 = tl.load(chunk_states + ((i_b * d + o_d[:, None]) * n_chunks + i_c) * n + o_n[None, :],
                       mask=m_dn, other=0.0)
        b_dt, b_pre = _load_delta(delta + row, delta_bias + o_d, o_t, m_d, L, HAS_BIAS, SOFTPLUS)
        b_u = tl.load(u + row + o_t[None, :], mask=m_t, other=0.0).to(tl.float32)
        b_Bt = _load_BC(p_B, o_d, o_n, o_t, m_d, m_n, L, B_VARIABLE)
        b_Ct = _load_BC(p_C, o_d, o_n, o_t, m_d, m_n, L, C_VARIABLE)
        b_a = tl.exp(b_dt[:, None, :] * b_A[:, :, None])
        b_b = (b_dt * b_u)[:, None, :] * b_Bt
        b_prod, b_x = tl.associative_scan((b_a, b_b), 2, _combine)
        b_x += b_prod * b_x0[:, :, None]  # x_t: [BLOCK_D, BLOCK_N, CHUNK]
        # gradient of y (before the gate) and of the gate
        b_dy = tl.load(dout + row + o_t[None, :], mask=m_t, other=0.0).to(tl.float32)
        if HAS_Z:
            b_z = tl.load(z + row + o_t[None, :], mask=m_t, other=0.0).to(tl.float32)
            b_sig = tl.sigmoid(b_z)
            b_y = tl.sum(b_x * b_Ct, axis=1)
            if HAS_D:
                b_y += b_D[:, None] * b_u
            tl.store(dz + row + o_t[None, :],
                     (b_dy * b_y * b_sig * (1 + b_z * (1 - b_sig))).to(dz.dtype.element_ty), mask=m_t)
            b_dy *= b_z * b_sig
        # h_t = C_t dy_t + a_{t+1} h_{t+1}: a reverse scan with a shifted by one token
        b_dt_next, _ = _load_delta(delta + row, delta_bias + o_d, o_t + 1, m_d, L, HAS_BIAS, SOFTPLUS)
        b_a_next = tl.exp(b_dt_next[:, None, :] * b_A[:, :, None])
        b_prod_r, b_hs = tl.associative_scan((b_a_next, b_Ct * b_dy[:, None, :]), 2, _combine, reverse=True)
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
            tl.atomic_add(dB + grp_B * n * L + o_n[:, None] * L + o_t[None, :], tl.sum(b_hdu, axis=0), mask=m)
        else:
            b_dBi += tl.sum(b_hdu, axis=2)
        if C_VARIABLE:
            m = m_n[:, None] & (o_t[None, :] < L)
            tl.atomic_add(dC + grp_C * n * L + o_n[:, None] * L + o_t[None, :], tl.sum(b_xdy, axis=0), mask=m)
        else:
            b_dCi += tl.sum(b_xdy, axis=2)
        if SOFTPLUS:
            b_ddt *= tl.sigmoid(b_pre)
        b_ddt = tl.where(m_t, b_ddt, 0.0)
        if HAS_BIAS:
            b_dbias += tl.sum(b_ddt, axis=1)
        tl.store(du + row + o_t[None, :], b_du.to(du.dtype.element_ty), mask=m_t)
        tl.store(ddelta + row + o_t[None, :], b_ddt.to(ddelta.dtype.element_ty), mask=m_t)
    # per-batch-element partial sums of the parameter gradients, summed over b by the caller
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
    state, u, delta, A, B, C, D, z, delta_bias, out,
    d, n, dg_B, dg_C,
    stride_state_b, stride_state_d, stride_state_n, stride_u_b, stride_u_d, stride_delta_b, stride_delta_d,
    stride_z_b, stride_z_d, stride_B_b, stride_B_g, stride_B_n, stride_C_b, stride_C_g, stride_C_n,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """One token: ``BLOCK_D`` channels of one batch element read their state, advance it, write it back."""
    i_d, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    o_n = tl.arange(0, BLOCK_N)
    m_d, m_n = o_d < d, o_n < n
    m_dn = m_d[:, None] & m_n[None, :]
    p_state = state + i_b * stride_state_b + o_d[:, None] * stride_state_d + o_n[None, :] * stride_state_n
    b_x = tl.load(p_state, mask=m_dn, other=0.0).to(tl.float32)  # [BLOCK_D, BLOCK_N]
    b_u = tl.load(u + i_b * stride_u_b + o_d * stride_u_d, mask=m_d, other=0.0).to(tl.float32)  # [BLOCK_D]
    b_dt = tl.load(delta + i_b * stride_delta_b + o_d * stride_delta_d, mask=m_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        b_dt += tl.load(delta_bias + o_d, mask=m_d, other=0.0)
    if SOFTPLUS:
        b_dt = tl.where(b_dt <= 20.0, tl.log(1.0 + tl.exp(b_dt)), b_dt)
    b_A = tl.load(A + o_d[:, None] * n + o_n[None, :], mask=m_dn, other=0.0)
    # each channel reads the B and C of its group (a block may straddle two groups)
    p_B = B + i_b * stride_B_b + (o_d // dg_B)[:, None] * stride_B_g + o_n[None, :] * stride_B_n
    p_C = C + i_b * stride_C_b + (o_d // dg_C)[:, None] * stride_C_g + o_n[None, :] * stride_C_n
    b_B = tl.load(p_B, mask=m_dn, other=0.0).to(tl.float32)  # [BLOCK_D, BLOCK_N]
    b_C = tl.load(p_C, mask=m_dn, other=0.0).to(tl.float32)
    b_x = tl.exp(b_dt[:, None] * b_A) * b_x + (b_dt * b_u)[:, None] * b_B
    tl.store(p_state, b_x.to(state.dtype.element_ty), mask=m_dn)
    b_y = tl.sum(b_x * b_C, axis=1)  # [BLOCK_D]
    if HAS_D:
        b_y += tl.load(D + o_d, mask=m_d, other=0.0) * b_u
    if HAS_Z:
        b_z = tl.load(z + i_b * stride_z_b + o_d * stride_z_d, mask=m_d, other=0.0).to(tl.float32)
        b_y *= b_z * tl.sigmoid(b_z)
    tl.store(out + i_b * d + o_d, b_y.to(out.dtype.element_ty), mask=m_d)
# --8<-- [end:step_kernel]


def _config(d: int, n: int, groups, interpret: bool = INTERPRET) -> dict:
    """Launch settings of the forward and backward scan kernels.

    The one place the tiles are chosen: the launchers pass the result to the kernels as keyword
    arguments, and the ahead-of-time compile test compiles every configuration it can return.
    Untuned first guesses: about 4096 state elements per chunk tile on a GPU; small tiles in
    the interpreter, where the scan costs Python per element.

    Args:
        d (int): number of channels.
        n (int): state size (1 to 256).
        groups: the number of groups of ``B`` and of ``C`` (1 when time-invariant); ``BLOCK_D``
            divides the channels of every group, so that a block reads one group.
        interpret (bool): settings for Triton's interpreter (default: whether it is on).

    Returns:
        dict: ``BLOCK_D``, ``BLOCK_N`` (``n`` padded to a power of two), ``CHUNK``, ``num_warps``
        and ``num_stages``.
    """
    BLOCK_N = triton.next_power_of_2(n)
    CHUNK = 16 if interpret else max(16, 4096 // (8 * BLOCK_N))
    BLOCK_D = 4 if interpret else max(1, min(32, 4096 // (BLOCK_N * CHUNK)))
    BLOCK_D = min(BLOCK_D, triton.next_power_of_2(d))
    for g in groups:  # every block must sit inside one group
        if g > 1:
            BLOCK_D = math.gcd(BLOCK_D, d // g)
    return dict(BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N, CHUNK=CHUNK, num_warps=4, num_stages=3)


def _as_groups(M):
    """Input-dependent ``[b, n, L]`` -> ``[b, 1, n, L]``; everything contiguous. ``[d, n]`` stays."""
    return (M[:, None] if M.dim() == 3 else M).contiguous()


def _flags(B, C, D, z, delta_bias, delta_softplus):
    return dict(B_VARIABLE=B.dim() == 4, C_VARIABLE=C.dim() == 4, HAS_D=D is not None, HAS_Z=z is not None,
                HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus)


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, store_states):
    """``(out [b, d, L], last_state [b, d, n], chunk_states)`` of contiguous inputs.

    ``chunk_states [b, d, n_chunks, n]`` (float32), the state entering each chunk, is written only
    when ``store_states`` (a backward will follow); otherwise it is ``None``.
    """
    b, d, L = u.shape
    n = A.shape[1]
    g_B, g_C = (M.shape[1] if M.dim() == 4 else 1 for M in (B, C))
    config = _config(d, n, (g_B, g_C))
    out = torch.empty_like(u)
    chunk_states = (torch.empty(b, d, triton.cdiv(L, config["CHUNK"]), n, device=u.device, dtype=torch.float32)
                    if store_states else None)
    last_state = torch.empty(b, d, n, device=u.device, dtype=torch.float32)
    dummy = A  # stands in for the optional tensors that are absent (never read)
    _selective_scan_fwd_kernel[(triton.cdiv(d, config["BLOCK_D"]), b)](
        u, delta, A, B, C, dummy if D is None else D, dummy if z is None else z,
        dummy if delta_bias is None else delta_bias, out, dummy if chunk_states is None else chunk_states,
        last_state, d, n, L, g_B, g_C, **config, **_flags(B, C, D, z, delta_bias, delta_softplus),
        STORE_STATES=store_states)
    return out, last_state, chunk_states


def selective_scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_states):
    """Gradients ``(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias)``; ``None`` for absent inputs."""
    b, d, L = u.shape
    n = A.shape[1]
    g_B, g_C = (M.shape[1] if M.dim() == 4 else 1 for M in (B, C))
    config = _config(d, n, (g_B, g_C))
    f32 = dict(device=u.device, dtype=torch.float32)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dA = torch.empty(b, d, n, **f32)
    dB = torch.zeros(B.shape, **f32) if B.dim() == 4 else torch.empty(b, d, n, **f32)  # atomics need zeros
    dC = torch.zeros(C.shape, **f32) if C.dim() == 4 else torch.empty(b, d, n, **f32)
    dD = torch.empty(b, d, **f32) if D is not None else None
    dbias = torch.empty(b, d, **f32) if delta_bias is not None else None
    dummy = A
    _selective_scan_bwd_kernel[(triton.cdiv(d, config["BLOCK_D"]), b)](
        u, delta, A, B, C, dummy if D is None else D, dummy if z is None else z,
        dummy if delta_bias is None else delta_bias, chunk_states, dout, dlast,
        du, ddelta, dA, dB, dC, dummy if dD is None else dD, dummy if dz is None else dz,
        dummy if dbias is None else dbias,
        d, n, L, g_B, g_C, **config, **_flags(B, C, D, z, delta_bias, delta_softplus))
    dB = dB.to(B.dtype) if B.dim() == 4 else dB.sum(0)
    dC = dC.to(C.dtype) if C.dim() == 4 else dC.sum(0)
    return (du, ddelta, dA.sum(0), dB, dC, None if dD is None else dD.sum(0), dz,
            None if dbias is None else dbias.sum(0))


def _step_config(d: int, n: int, interpret: bool = INTERPRET) -> dict:
    """Launch settings of the decoding step's kernel: ``BLOCK_D`` channels by ``BLOCK_N`` states.

    About 512 state elements per program on a GPU (a token is ``d n`` elements: many small
    programs keep every SM busy); in the interpreter, where each program costs Python, up to
    32 channels at a time.

    Args:
        d (int): number of channels.
        n (int): state size (1 to 256).
        interpret (bool): settings for Triton's interpreter (default: whether it is on).

    Returns:
        dict: ``BLOCK_D``, ``BLOCK_N`` (``n`` padded to a power of two), ``num_warps``.
    """
    BLOCK_N = triton.next_power_of_2(n)
    BLOCK_D = 32 if interpret else max(4, 512 // BLOCK_N)
    return dict(BLOCK_D=min(BLOCK_D, triton.next_power_of_2(d)), BLOCK_N=BLOCK_N, num_warps=4 if BLOCK_N <= 128 else 8)


def selective_scan_step_fwd(state, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """``out [b, d]`` of one token; ``state [b, d, n]`` is updated in place. Any strides for
    ``state``, ``u``, ``delta``, ``z``, ``B`` and ``C`` (``[b, n]`` or ``[b, g, n]``); ``A``, ``D``
    and ``delta_bias`` are made contiguous."""
    b, d = u.shape
    n = A.shape[1]
    B, C = (M[:, None] if M.dim() == 2 else M for M in (B, C))  # [b, g, n]
    A, D, delta_bias = (None if x is None else x.contiguous() for x in (A, D, delta_bias))
    config = _step_config(d, n)
    out = torch.empty(b, d, device=u.device, dtype=u.dtype)
    dummy = A
    zs = (z.stride(0), z.stride(1)) if z is not None else (0, 0)
    with torch.cuda.device(u.device) if u.is_cuda else contextlib.nullcontext():
        _selective_scan_step_kernel[(triton.cdiv(d, config["BLOCK_D"]), b)](
            state, u, delta, A, B, C, dummy if D is None else D, dummy if z is None else z,
            dummy if delta_bias is None else delta_bias, out,
            d, n, d // B.shape[1], d // C.shape[1], *state.stride(), *u.stride(), *delta.stride(), *zs,
            *B.stride(), *C.stride(), **config, HAS_D=D is not None, HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus)
    return out


class SelectiveScanFunction(torch.autograd.Function):
    """``(out, last_state)`` of the selective scan, with gradients for every tensor input."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        shape_B, shape_C = B.shape, C.shape
        u, delta, A, D, z, delta_bias = (None if x is None else x.contiguous() for x in (u, delta, A, D, z, delta_bias))
        B, C = _as_groups(B), _as_groups(C)
        out, last_state, chunk_states = selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                                           store_states=any(ctx.needs_input_grad))
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, chunk_states)
        ctx.delta_softplus, ctx.shape_B, ctx.shape_C = delta_softplus, shape_B, shape_C
        return out, last_state

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, chunk_states = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, dz, dbias = selective_scan_bwd(
            dout.contiguous(), dlast.float().contiguous(), u, delta, A, B, C, D, z, delta_bias,
            ctx.delta_softplus, chunk_states)
        return (du, ddelta, dA, dB.reshape(ctx.shape_B), dC.reshape(ctx.shape_C), dD, dz, dbias, None)
