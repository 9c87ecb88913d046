"""SSD's public function and its argument checks.

`ssd` is linear attention with a per-token decay: ``q = C``, ``k = B``,
``v = dt x`` and the log-decay ``dt A``, so it runs the chunk-parallel kernels
of `kernels.linear_attention`. Its signature is that of ``mamba_ssm``'s
``mamba_chunk_scan_combined``.
"""

from __future__ import annotations

import math

import torch

from .._checks import (
    check_bool,
    check_float_dtypes,
    check_same_device,
    check_shape,
    check_tensor,
    values_checkable,
)
from .op import ssd_op


def _check_float(name, x, layout):
    check_tensor(name, x, x.dim() if isinstance(x, torch.Tensor) else 1, layout)
    if not x.is_floating_point() or x.is_complex():
        raise TypeError(
            f"{name} must be a real floating-point tensor {layout}, got "
            f"{x.dtype}"
        )


def _check_cu_seqlens(cu_seqlens, seq_idx, b, L, device):
    """``cu_seqlens [N + 1]``: int offsets from 0 to L of a batch of one; with
    ``seq_idx``, the same
    sequences (values read on CPU tensors only)."""
    check_tensor("cu_seqlens", cu_seqlens, 1, "[N + 1]")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(
            "cu_seqlens must hold int32 or int64 offsets, got "
            f"{cu_seqlens.dtype}"
        )
    if cu_seqlens.device != device:
        raise ValueError(
            f"cu_seqlens must be on the device of x ({device}), got "
            f"{cu_seqlens.device}"
        )
    if cu_seqlens.shape[0] < 2:
        raise ValueError(
            "cu_seqlens must hold N + 1 >= 2 offsets (N sequences), got shape "
            f"{tuple(cu_seqlens.shape)}"
        )
    if b != 1:
        raise ValueError(
            "packed sequences (cu_seqlens) lie along L of a batch of one, x "
            f"[1, L, h, p]; got b = {b}"
        )
    if not values_checkable(cu_seqlens):
        return
    cu = cu_seqlens.cpu().long()
    if cu[0] != 0 or cu[-1] != L or (cu[1:] < cu[:-1]).any():
        raise ValueError(
            f"cu_seqlens must rise from 0 to the packed length L = {L} without "
            f"falling, got {cu.tolist()}"
        )
    if seq_idx is not None and values_checkable(seq_idx) and L > 1:
        # the sequence of each position
        ids = torch.searchsorted(cu[1:], torch.arange(L), right=True)
        if not torch.equal(
            ids[1:] != ids[:-1], seq_idx[0, 1:].cpu() != seq_idx[0, :-1].cpu()
        ):
            changes = seq_idx[0, 1:] != seq_idx[0, :-1]
            changes = changes.nonzero().flatten().add(1).tolist()
            raise ValueError(
                "seq_idx and cu_seqlens must describe the same sequences: "
                f"seq_idx changes at positions {changes}, "
                f"cu_seqlens starts sequences at {cu[1:-1].tolist()}"
            )


def _check_ssd_inputs(
    x,
    dt,
    A,
    B,
    C,
    chunk_size,
    D,
    z,
    dt_bias,
    initial_states,
    seq_idx,
    cu_seqlens,
    dt_softplus,
    dt_limit,
    return_final_states,
    return_varlen_states,
    state_dtype=None,
):
    check_tensor("x", x, 4, "[b, L, h, p]")
    check_tensor("dt", dt, 3, "[b, L, h]")
    check_tensor("A", A, 1, "[h]")
    check_tensor("B", B, 4, "[b, L, g, n]")
    check_tensor("C", C, 4, "[b, L, g, n]")
    check_float_dtypes({"x": x})
    b, L, h, p = x.shape
    if min(x.shape) < 1:
        raise ValueError(
            "x must have at least one batch element, position, head and "
            f"channel, got shape {tuple(x.shape)}"
        )
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or chunk_size < 1
    ):
        raise ValueError(
            f"chunk_size must be a positive int, got {chunk_size!r}"
        )
    for name, t, layout in (
        ("dt", dt, "[b, L, h]"),
        ("A", A, "[h]"),
        ("B", B, "[b, L, g, n]"),
        ("C", C, "[b, L, g, n]"),
    ):
        _check_float(name, t, layout)
    check_shape("dt", dt, (b, L, h), "[b, L, h]")
    check_shape("A", A, (h,), "[h]")
    g, n = B.shape[2], B.shape[3]
    if g < 1 or h % g != 0:
        raise ValueError(
            f"B has g = {g} groups, which must divide the number of heads h = "
            f"{h} (shape {tuple(B.shape)})"
        )
    if n < 1:
        raise ValueError(f"B must have a state size n of at least 1, got {n}")
    check_shape("B", B, (b, L, g, n), "[b, L, g, n]")
    check_shape("C", C, (b, L, g, n), "[b, L, g, n] (that of B)")
    tensors = {"x": x, "dt": dt, "A": A, "B": B, "C": C}
    if D is not None:
        _check_float("D", D, "[h] or [h, p]")
        check_shape(
            "D",
            D,
            (h,) if D.dim() == 1 else (h, p),
            "[h]" if D.dim() == 1 else "[h, p]",
        )
        tensors["D"] = D
    if dt_bias is not None:
        _check_float("dt_bias", dt_bias, "[h]")
        check_shape("dt_bias", dt_bias, (h,), "[h]")
        tensors["dt_bias"] = dt_bias
    if z is not None:
        _check_float("z", z, "[b, L, h, p]")
        check_shape("z", z, x.shape, "[b, L, h, p]")
        tensors["z"] = z
    if initial_states is not None:
        _check_float("initial_states", initial_states, "[b, h, p, n]")
        check_shape(
            "initial_states", initial_states, (b, h, p, n), "[b, h, p, n]"
        )
        tensors["initial_states"] = initial_states
    if seq_idx is not None:
        check_tensor("seq_idx", seq_idx, 2, "[b, L]")
        if seq_idx.dtype not in (torch.int32, torch.int64):
            raise TypeError(
                "seq_idx must hold int32 or int64 sequence ids, got "
                f"{seq_idx.dtype}"
            )
        check_shape("seq_idx", seq_idx, (b, L), "[b, L]")
        tensors["seq_idx"] = seq_idx
    if cu_seqlens is not None:
        _check_cu_seqlens(cu_seqlens, seq_idx, b, L, x.device)
    if state_dtype is not None and (
        not isinstance(state_dtype, torch.dtype)
        or not state_dtype.is_floating_point
    ):
        raise TypeError(
            "state_dtype must be a floating torch.dtype or None, got "
            f"{state_dtype!r}"
        )
    if (
        not isinstance(dt_limit, (tuple, list))
        or len(dt_limit) != 2
        or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool)
            for v in dt_limit
        )
        or math.isnan(dt_limit[0])
        or math.isnan(dt_limit[1])
        or dt_limit[0] > dt_limit[1]
    ):
        raise ValueError(
            "dt_limit must be a pair (dt_min, dt_max) of numbers with dt_min "
            f"<= dt_max, got {dt_limit!r}"
        )
    check_bool("dt_softplus", dt_softplus)
    check_bool("return_final_states", return_final_states)
    check_bool("return_varlen_states", return_varlen_states)
    if return_varlen_states and cu_seqlens is None:
        raise ValueError(
            "return_varlen_states needs cu_seqlens: the offsets of the packed "
            "sequences"
        )
    check_same_device(tensors)
    if (
        A.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and (not torch.isfinite(A).all() or (A > 0).any())
    ):
        raise ValueError(
            "A must hold finite decay rates <= 0 (the log-decay dt * A must "
            f"be <= 0), got values in [{A.min().item()}, {A.max().item()}]"
        )
    if dt_limit[0] < 0:
        raise ValueError(
            f"dt_limit must keep dt >= 0 (dt_min >= 0), got {dt_limit!r}"
        )


def ssd(
    x,
    dt,
    A,
    B,
    C,
    chunk_size=256,
    D=None,
    z=None,
    dt_bias=None,
    initial_states=None,
    seq_idx=None,
    cu_seqlens=None,
    dt_softplus=False,
    dt_limit=(0.0, float("inf")),
    return_final_states=False,
    return_varlen_states=False,
    state_dtype=None,
):
    """Mamba-2's SSD: a state space model whose decay is one scalar per head and
    step.

    The step is ``dt' = clamp(softplus(dt + dt_bias), *dt_limit)`` (the bias and
    the softplus when given; the clamp always, so ``dt' >= 0``). Every channel
    ``(h, p)`` runs ``s_t = exp(dt'_t A_h) s_{t-1} + dt'_t x_t B_t`` on a state
    of ``n`` numbers (``s_{-1}`` = ``initial_states`` or 0) and reads
    ``y_t = C_t · s_t + D x_t``, times ``silu(z_t)`` when given. That is linear
    attention with ``q = C``, ``k = B``, ``v = dt' x``, the per-token log-decay
    ``dt' A`` and ``scale = 1``, which is how it runs:
    `kernels.linear_attention` with a per-token decay (the chunk-parallel
    kernels), ``B`` and ``C`` repeated over the heads of their group.

    The signature and semantics are those of ``mamba_ssm``'s
    ``mamba_chunk_scan_combined``.

    Args:
        x (torch.Tensor): inputs ``[b, L, h, p]`` (``h`` heads of ``p``
            channels), float16, bfloat16 or float32: the compute dtype.
        dt (torch.Tensor): step sizes ``[b, L, h]``, any float dtype (float32
            beside a half ``x``).
        A (torch.Tensor): one decay rate per head ``[h]``, <= 0 (checked on CPU
            tensors only).
        B (torch.Tensor): ``[b, L, g, n]``; ``g`` groups of ``h / g`` heads
            share one.
        C (torch.Tensor): ``[b, L, g, n]``.
        chunk_size (int): accepted for compatibility; the kernels choose their
            own chunk length, and the result does not depend on it (in mamba_ssm
            it affects speed only, too).
        D (torch.Tensor, optional): skip connection ``[h]`` or ``[h, p]``.
        z (torch.Tensor, optional): gate ``[b, L, h, p]``.
        dt_bias (torch.Tensor, optional): ``[h]``, added to ``dt``.
        initial_states (torch.Tensor, optional): the state before the first
            token ``[b, h, p, n]``.
        seq_idx (torch.Tensor, optional): int32 or int64 sequence ids
            ``[b, L]``, nondecreasing along ``L``, for sequences packed into one
            row: the state restarts from zero where the id changes (the initial
            state belongs to the sequence of the first token).
        cu_seqlens (torch.Tensor, optional): int32 or int64 offsets ``[N + 1]``
            of ``N`` sequences packed along ``L`` of a batch of one (``b = 1``),
            from 0 to ``L``: the state restarts at each offset, as with the
            ``seq_idx`` those offsets describe (which mamba_ssm needs beside
            them; when both are given they must agree, checked on CPU tensors).
            Runs `kernels.linear_attention`'s packed path: no padding to the
            longest sequence. The initial state belongs to the first sequence.
        dt_softplus (bool): apply softplus to ``dt`` after the bias (the
            identity above 20, as in mamba_ssm).
        dt_limit (tuple): ``(dt_min, dt_max)`` the step is clamped to,
            ``dt_min >= 0``; no gradient flows through a clamped step.
        return_final_states (bool): also return the state after the last token
            ``[b, h, p, n]``.
        return_varlen_states (bool): also return the state after the last token
            of each packed sequence ``[N, h, p, n]`` (needs ``cu_seqlens``); an
            empty sequence's is its initial state (0, or ``initial_states`` for
            the first).
        state_dtype (torch.dtype, optional): the dtype of the returned final and
            varlen states, float32 by default. (In mamba_ssm it is also the
            dtype of the states kept between chunks; here those are always
            float32.)

    Where it runs: as `kernels.linear_attention` (Triton on CUDA, Triton's
    interpreter on CPU under ``TRITON_INTERPRET=1`` except bfloat16, otherwise
    the PyTorch reference). Gradients flow to every tensor argument:
    ``x, dt, A, B, C, D, z, dt_bias, initial_states``. After its checks it calls
    the registered operator ``torch.ops.kernels.ssd`` (``op.py``), which
    ``torch.compile(fullgraph=True)`` traces without a graph break.

    Returns:
        ``y [b, L, h, p]`` in the dtype of ``x``, or
            ``(y, final_states [b, h, p, n])``, or
            ``(y, varlen_states [N, h, p, n])``, or
            ``(y, final_states, varlen_states)``, as mamba_ssm (states in
            ``state_dtype``, float32 by default).

    Raises:
        TypeError: a non-tensor, a dtype that is not floating point, a flag that
            is not a bool.
        ValueError: wrong dims or shapes, groups that do not divide the heads, a
            bad chunk_size or dt_limit, different devices, positive ``A`` (on
            CPU); ``cu_seqlens`` with ``b != 1``, offsets that do not rise from
            0 to ``L`` or that disagree with ``seq_idx`` (on CPU),
            ``return_varlen_states`` without ``cu_seqlens``.

    Examples:
        >>> b, L, h, p, n = 1, 10, 2, 4, 8
        >>> x, dt = torch.randn(b, L, h, p), torch.rand(b, L, h)
        >>> A = -torch.rand(h)
        >>> B, C = torch.randn(b, L, 1, n), torch.randn(b, L, 1, n)
        >>> ssd(x, dt, A, B, C, 64).shape
        torch.Size([1, 10, 2, 4])
        >>> # two sequences packed in one row
        >>> cu = torch.tensor([0, 3, 10], dtype=torch.int32)
        >>> y, states = ssd(
        ...     x, dt, A, B, C, 64, cu_seqlens=cu, return_varlen_states=True
        ... )
        >>> states.shape
        torch.Size([2, 2, 4, 8])
    """
    _check_ssd_inputs(
        x,
        dt,
        A,
        B,
        C,
        chunk_size,
        D,
        z,
        dt_bias,
        initial_states,
        seq_idx,
        cu_seqlens,
        dt_softplus,
        dt_limit,
        return_final_states,
        return_varlen_states,
        state_dtype,
    )
    y, final = ssd_op(
        x,
        dt,
        A,
        B,
        C,
        D,
        z,
        dt_bias,
        initial_states,
        seq_idx,
        cu_seqlens,
        dt_softplus,
        float(dt_limit[0]),
        float(dt_limit[1]),
    )
    # [b or N, h, p, n]
    final = final.to(torch.float32 if state_dtype is None else state_dtype)
    if cu_seqlens is None:
        return (y, final) if return_final_states else y
    varlen = final  # [N, h, p, n]
    # the state after the last token is that of the sequence holding it (read on
    # the device)
    last = torch.searchsorted(
        cu_seqlens[1:].contiguous(), cu_seqlens[-1:] - 1, right=True
    )
    # [1, h, p, n]
    final = varlen.index_select(0, last.clamp_max(varlen.shape[0] - 1))
    out = (y, final) if return_final_states else (y,)
    return (
        (*out, varlen)
        if return_varlen_states
        else (out if return_final_states else y)
    )
