"""Chunk-wise causal linear attention in Triton: quadratic inside a chunk, a state between chunks.

For a chunk of ``L <= CHUNK`` positions (local index ``i``) that starts with the state
``S_prev`` (the state after the previous chunk) and a per-head decay ``gamma = exp(g)``:

    o_i    = scale * ( sum_{j <= i} gamma^(i-j) (q_i . k_j) v_j  +  gamma^(i+1) q_i S_prev )
    S_next = gamma^L S_prev + sum_j gamma^(L-1-j) k_j^T v_j

The first line is a masked ``[CHUNK, CHUNK]`` product (the quadratic form, restricted to the
chunk); the second carries everything before the chunk in a ``[K, V]`` matrix. The whole
computation is one sweep over the chunks.

The backward needs nothing else. With ``S^T`` in place of ``S``, the gradient of ``q`` is the
same forward sweep run on ``(do, v, k)``; the gradients of ``v`` and ``k`` are one reverse sweep,
run on ``(q, k, do)`` and ``(do, v, q)``, that carries the gradient of the state backwards:

    out_j  = scale * sum_{i >= j} gamma^(i-j) (a_i . b_j) c_i  +  gamma^(L-1-j) b_j G
    G_prev = gamma^L G + scale * sum_i gamma^(i+1) a_i^T c_i

So two kernels, `_chunk_fwd_kernel` and `_chunk_rev_kernel`, serve the forward
and all three gradients (and the gradient of the initial state, the last ``G``). Each program
owns one block of the last operand's columns and the full width of the first two.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import INTERPRET


@triton.jit
def _load_chunk(A, B, C, bh, start, offs_t, offs_ab, offs_c, m_t, m_ab, m_c,
                stride_ab, stride_at, stride_bb, stride_bt, stride_cb, stride_ct):
    """The chunk's rows of A, B ``[CHUNK, BLOCK_AB]`` and C ``[CHUNK, BLOCK_C]``, zero past T and the dims.

    ``bh`` and ``start`` (the chunk's first row) are 64-bit: their products with the strides can
    pass 2^31; the offsets inside the chunk stay 32-bit.
    """
    m_rows_ab = m_t[:, None] & m_ab[None, :]
    b_a = tl.load(A + bh * stride_ab + start * stride_at + offs_t[:, None] * stride_at + offs_ab[None, :],
                  mask=m_rows_ab, other=0.0)
    b_b = tl.load(B + bh * stride_bb + start * stride_bt + offs_t[:, None] * stride_bt + offs_ab[None, :],
                  mask=m_rows_ab, other=0.0)
    b_c = tl.load(C + bh * stride_cb + start * stride_ct + offs_t[:, None] * stride_ct + offs_c[None, :],
                  mask=m_t[:, None] & m_c[None, :], other=0.0)
    return b_a, b_b, b_c


@triton.jit
def _chunk_fwd_kernel(A, B, C, S0, OUT, SN, G,
                      stride_ab, stride_at, stride_bb, stride_bt, stride_cb, stride_ct,
                      stride_ob, stride_ot, T, DAB, DC, H, scale,
                      HAS_S0: tl.constexpr, STORE_SN: tl.constexpr, CHUNK: tl.constexpr,
                      BLOCK_AB: tl.constexpr, BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
    """out = scale * (masked decayed (A B^T) C + decayed A S), S the running sum of B^T C.

    A, B: [BH, T, DAB]; C, OUT: [BH, T, DC] (last dim contiguous); S0, SN: [BH, DAB, DC] float32.
    """
    pid_c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_t = tl.arange(0, CHUNK)
    offs_ab = tl.arange(0, BLOCK_AB)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_ab, m_c = offs_ab < DAB, offs_c < DC
    g = tl.load(G + bh % H)  # log-decay of this head
    p_s = bh * DAB * DC + offs_ab[:, None] * DC + offs_c[None, :]
    state = tl.zeros([BLOCK_AB, BLOCK_C], dtype=tl.float32)
    if HAS_S0:
        state = tl.load(S0 + p_s, mask=m_ab[:, None] & m_c[None, :], other=0.0)
    lag = (offs_t[:, None] - offs_t[None, :]).to(tl.float32)  # i - j
    intra = tl.where(lag >= 0, tl.exp(g * tl.maximum(lag, 0.0)), 0.0)  # gamma^(i-j), causal
    to_query = tl.exp(g * (offs_t + 1).to(tl.float32))  # gamma^(i+1)
    for start in range(0, T, CHUNK):
        rows = start + offs_t
        m_t = rows < T
        b_a, b_b, b_c = _load_chunk(A, B, C, bh, tl.cast(start, tl.int64), offs_t, offs_ab, offs_c, m_t, m_ab,
                                    m_c, stride_ab, stride_at, stride_bb, stride_bt, stride_cb, stride_ct)
        scores = tl.dot(b_a, tl.trans(b_b), input_precision=PRECISION) * intra  # [CHUNK, CHUNK]
        out = tl.dot(scores.to(b_c.dtype), b_c, input_precision=PRECISION)
        out += tl.dot((b_a * to_query[:, None]).to(b_c.dtype), state.to(b_c.dtype), input_precision=PRECISION)
        tl.store(OUT + bh * stride_ob + tl.cast(start, tl.int64) * stride_ot + offs_t[:, None] * stride_ot
                 + offs_c[None, :], (out * scale).to(OUT.dtype.element_ty), mask=m_t[:, None] & m_c[None, :])
        length = tl.minimum(T - start, CHUNK)
        to_end = tl.where(m_t, tl.exp(g * (length - 1 - offs_t).to(tl.float32)), 0.0)  # gamma^(L-1-j)
        state = state * tl.exp(g * length.to(tl.float32)) + tl.dot(
            tl.trans((b_b * to_end[:, None]).to(b_c.dtype)), b_c, input_precision=PRECISION)
    if STORE_SN:
        tl.store(SN + p_s, state, mask=m_ab[:, None] & m_c[None, :])


@triton.jit
def _chunk_rev_kernel(A, B, C, G0, OUT, GN, G,
                      stride_ab, stride_at, stride_bb, stride_bt, stride_cb, stride_ct,
                      stride_ob, stride_ot, T, DAB, DC, H, scale,
                      HAS_G0: tl.constexpr, STORE_GN: tl.constexpr, CHUNK: tl.constexpr,
                      BLOCK_AB: tl.constexpr, BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
    """out_j = scale * sum_{i>=j} decayed (a_i . b_j) c_i + decayed b_j Gs, sweeping chunks backwards.

    Gs is the gradient of the state, carried from the end: G0 (the gradient of the final state)
    and scale * decayed A^T C of every later position. GN receives the Gs before the first chunk.
    """
    pid_c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_t = tl.arange(0, CHUNK)
    offs_ab = tl.arange(0, BLOCK_AB)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_ab, m_c = offs_ab < DAB, offs_c < DC
    g = tl.load(G + bh % H)
    p_s = bh * DAB * DC + offs_ab[:, None] * DC + offs_c[None, :]
    grad = tl.zeros([BLOCK_AB, BLOCK_C], dtype=tl.float32)
    if HAS_G0:
        grad = tl.load(G0 + p_s, mask=m_ab[:, None] & m_c[None, :], other=0.0)
    lag = (offs_t[None, :] - offs_t[:, None]).to(tl.float32)  # [j, i]: i - j
    intra = tl.where(lag >= 0, tl.exp(g * tl.maximum(lag, 0.0)), 0.0)  # gamma^(i-j) for i >= j
    to_query = tl.exp(g * (offs_t + 1).to(tl.float32))
    n_chunks = tl.cdiv(T, CHUNK)
    for idx in range(0, n_chunks):
        start = (n_chunks - 1 - idx) * CHUNK
        rows = start + offs_t
        m_t = rows < T
        b_a, b_b, b_c = _load_chunk(A, B, C, bh, tl.cast(start, tl.int64), offs_t, offs_ab, offs_c, m_t, m_ab,
                                    m_c, stride_ab, stride_at, stride_bb, stride_bt, stride_cb, stride_ct)
        length = tl.minimum(T - start, CHUNK)
        to_end = tl.where(m_t, tl.exp(g * (length - 1 - offs_t).to(tl.float32)), 0.0)
        scores = tl.dot(b_b, tl.trans(b_a), input_precision=PRECISION) * intra  # [CHUNK (j), CHUNK (i)]
        out = tl.dot(scores.to(b_c.dtype), b_c, input_precision=PRECISION) * scale
        out += tl.dot((b_b * to_end[:, None]).to(b_c.dtype), grad.to(b_c.dtype), input_precision=PRECISION)
        tl.store(OUT + bh * stride_ob + tl.cast(start, tl.int64) * stride_ot + offs_t[:, None] * stride_ot
                 + offs_c[None, :], out.to(OUT.dtype.element_ty), mask=m_t[:, None] & m_c[None, :])
        grad = grad * tl.exp(g * length.to(tl.float32)) + scale * tl.dot(
            tl.trans((b_a * to_query[:, None]).to(b_c.dtype)), b_c, input_precision=PRECISION)
    if STORE_GN:
        tl.store(GN + p_s, grad, mask=m_ab[:, None] & m_c[None, :])


MAX_BLOCK_AB = 256  # widest A and B one program holds; wider operands are split (see `_launch`)


def _config(DAB: int, DC: int, dtype: torch.dtype, interpret: bool = INTERPRET) -> dict:
    """Launch settings of `_chunk_fwd_kernel` and `_chunk_rev_kernel`.

    The one place the tiles are chosen: `_launch` passes the result to the kernels as keyword
    arguments, and the ahead-of-time compile test compiles every configuration it can return.

    Args:
        DAB (int): width of the operands A and B (1 to ``MAX_BLOCK_AB``).
        DC (int): width of the operand C.
        dtype (torch.dtype): dtype of the operands.
        interpret (bool): settings for Triton's interpreter (default: whether it is on).

    Returns:
        dict: ``CHUNK``, ``BLOCK_AB`` (``DAB`` padded to a power of two), ``BLOCK_C``,
        ``PRECISION``, ``num_warps`` and ``num_stages``.
    """
    BLOCK_AB = max(16, triton.next_power_of_2(DAB))
    BLOCK_C = min(64, max(16, triton.next_power_of_2(DC)))
    # float32 operands get exact float32 products; TF32 would lose 3 decimal digits.
    PRECISION = "ieee" if dtype == torch.float32 else "tf32"
    if interpret:
        return dict(CHUNK=16, BLOCK_AB=BLOCK_AB, BLOCK_C=BLOCK_C, PRECISION=PRECISION, num_warps=1, num_stages=1)
    # Pipelining the chunk loop keeps num_stages copies of the A, B and C tiles in shared memory.
    # Float32 tiles of width 128 fit twice, those of width 256 once and only in chunks of 32
    # (A100: 163 KiB per block, H100: 227 KiB): tests/kernels/test_gpu_compile.py checks each.
    CHUNK, num_stages = 64, 3
    if dtype == torch.float32 and BLOCK_AB >= 128:
        CHUNK, num_stages = (64, 2) if BLOCK_AB == 128 else (32, 1)
    return dict(CHUNK=CHUNK, BLOCK_AB=BLOCK_AB, BLOCK_C=BLOCK_C, PRECISION=PRECISION,
                num_warps=4 if BLOCK_AB <= 64 else 8, num_stages=num_stages)


def _launch(kernel, a, b, c, state_in, log_decay, scale, want_state):
    """Run ``kernel`` over ``a, b [B, H, T, DAB]`` and ``c [B, H, T, DC]``.

    Returns ``out`` shaped like ``c`` and, when ``want_state``, the float32 ``[B, H, DAB, DC]``
    state (forward) or state gradient (reverse) after the sweep.

    Operands wider than ``MAX_BLOCK_AB`` (the gradients under ``normalize=True``, where ``v``
    carries an extra column of ones) are split along ``DAB``. Both kernels are sums over the
    columns of ``a`` and ``b`` and the matching rows of the state, so the outputs of the parts add
    up and their states stack.
    """
    Bsz, H, T, DAB = a.shape
    DC = c.shape[-1]
    if DAB > MAX_BLOCK_AB:
        parts = [_launch(kernel, a[..., i:i + MAX_BLOCK_AB], b[..., i:i + MAX_BLOCK_AB], c,
                         None if state_in is None else state_in[..., i:i + MAX_BLOCK_AB, :], log_decay, scale,
                         want_state) for i in range(0, DAB, MAX_BLOCK_AB)]
        out = sum(part.float() for part, _ in parts).to(c.dtype)
        return out, (torch.cat([state for _, state in parts], dim=-2) if want_state else None)
    a, b, c = (x.reshape(Bsz * H, T, x.shape[-1]) for x in (a, b, c))  # views when possible
    a, b, c = (x if x.stride(-1) == 1 else x.contiguous() for x in (a, b, c))
    out = torch.empty(Bsz * H, T, DC, device=c.device, dtype=c.dtype)
    state_out = torch.empty(Bsz, H, DAB, DC, device=c.device, dtype=torch.float32) if want_state else out
    if state_in is not None:
        state_in = state_in.float().contiguous()
    config = _config(DAB, DC, c.dtype)
    grid = (triton.cdiv(DC, config["BLOCK_C"]), Bsz * H)
    kernel[grid](a, b, c, state_in if state_in is not None else out, out, state_out, log_decay,
                 a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
                 out.stride(0), out.stride(1), T, DAB, DC, H, scale,
                 state_in is not None, want_state, **config)
    return out.reshape(Bsz, H, T, DC), (state_out if want_state else None)


class ChunkLinearAttention(torch.autograd.Function):
    """Autograd for causal chunk-wise linear attention; ``log_decay`` is a float32 ``[H]``."""

    @staticmethod
    def forward(ctx, q, k, v, log_decay, scale, initial_state):
        o, final = _launch(_chunk_fwd_kernel, q, k, v, initial_state, log_decay, scale, want_state=True)
        ctx.save_for_backward(q, k, v, log_decay, initial_state)
        ctx.scale = scale
        return o, final

    @staticmethod
    def backward(ctx, do, dfinal):
        q, k, v, log_decay, s0 = ctx.saved_tensors
        scale = ctx.scale
        s0_t = None if s0 is None else s0.transpose(-1, -2)
        dfinal_t = None if dfinal is None else dfinal.transpose(-1, -2)
        dq, _ = _launch(_chunk_fwd_kernel, do, v, k, s0_t, log_decay, scale, want_state=False)
        dv, ds0 = _launch(_chunk_rev_kernel, q, k, do, dfinal, log_decay, scale, want_state=s0 is not None)
        dk, _ = _launch(_chunk_rev_kernel, do, v, q, dfinal_t, log_decay, scale, want_state=False)
        ds0 = None if ds0 is None else ds0.to(s0.dtype)
        return dq, dk, dv, None, None, ds0
