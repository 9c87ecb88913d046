"""State space models: Mamba's selective scan, Mamba-2's SSD, and the HiPPO / S4 building blocks."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._backend import HAS_TRITON, uses_triton
from .._checks import check_bool, check_float_dtypes, check_same_device, check_tensor
from .hippo import (discretize, fft_conv, hippo_legs, hippo_legt, legendre_basis, legendre_project,
                    legendre_reconstruct, legs_coefficients, ssm_kernel, ssm_scan)
from .naive import selective_scan_ref, ssd_ref

if HAS_TRITON:
    from .selective_scan import SelectiveScanFunction

__all__ = [
    "selective_scan", "selective_scan_step", "ssd", "selective_scan_ref", "ssd_ref",
    "hippo_legs", "hippo_legt", "discretize", "ssm_scan", "ssm_kernel", "fft_conv",
    "legs_coefficients", "legendre_basis", "legendre_reconstruct", "legendre_project",
]

MAX_STATE = 256  # largest state size n the kernels take


def _check_shape(name, x, expected, layout):
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {layout} = {tuple(expected)}, got {tuple(x.shape)}")


def _check_float32(name, x, layout):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{name} must be a real float32 tensor (complex state matrices are not supported), "
                        f"got {x.dtype}")
    if x.dtype != torch.float32:
        raise TypeError(f"{name} must be float32 (it is a parameter, kept in full precision), got {x.dtype}")


def _check_BC(name, M, b, d, n, L, dtype, token):
    """``B`` or ``C``: time-invariant ``[d, n]`` (float32) or input-dependent ``[b, n, L]`` /
    ``[b, g, n, L]`` in the dtype of ``u``. The decoding step (``token=True``) takes the
    input-dependent forms for one token, ``[b, n]`` or ``[b, g, n]``.
    """
    if not isinstance(M, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(M).__name__}")
    g = M.shape[1] if M.dim() == 4 - token else 1
    if token:
        forms = {2: ("[b, n]", (b, n)), 3: ("[b, g, n]", (b, g, n))}
    else:
        forms = {2: ("[d, n]", (d, n)), 3: ("[b, n, L]", (b, n, L)), 4: ("[b, g, n, L]", (b, g, n, L))}
    if M.dim() not in forms:
        expected = " or ".join(layout for layout, _ in forms.values())
        raise ValueError(f"{name} must have shape {expected}, got {tuple(M.shape)}")
    layout, shape = forms[M.dim()]
    if g < 1 or d % g != 0:
        raise ValueError(f"{name} has g = {g} groups, which must divide the number of channels d = {d} "
                         f"(shape {tuple(M.shape)})")
    _check_shape(name, M, shape, layout)
    if M.dim() == 2 and not token:
        _check_float32(name, M, layout)
    elif M.dtype != dtype:
        raise TypeError(f"{name} {layout} is input-dependent and must have the dtype of u ({dtype}), got {M.dtype}")


def _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, token=False):
    """Validate the selective scan's (``token=False``) or the decoding step's arguments."""
    layout = "[b, d]" if token else "[b, d, L]"
    check_tensor("u", u, 2 if token else 3, layout)
    check_tensor("delta", delta, u.dim(), layout)
    check_tensor("A", A, 2, "[d, n]")
    dtype = check_float_dtypes({"u": u, "delta": delta})
    b, d = u.shape[:2]
    L = 1 if token else u.shape[2]
    n = A.shape[1]
    if min(u.shape) < 1:
        raise ValueError(f"u must have at least one batch element, channel and position, got shape {tuple(u.shape)}")
    _check_shape("delta", delta, u.shape, layout)
    _check_float32("A", A, "[d, n]")
    _check_shape("A", A, (d, n), "[d, n]")
    if not 1 <= n <= MAX_STATE:
        raise ValueError(f"A must have a state size n between 1 and {MAX_STATE}, got {n}")
    _check_BC("B", B, b, d, n, L, dtype, token)
    _check_BC("C", C, b, d, n, L, dtype, token)
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C}
    for name, x in (("D", D), ("delta_bias", delta_bias)):
        if x is not None:
            check_tensor(name, x, 1, "[d]")
            _check_float32(name, x, "[d]")
            _check_shape(name, x, (d,), "[d]")
            tensors[name] = x
    if z is not None:
        check_tensor("z", z, u.dim(), layout)
        _check_shape("z", z, u.shape, layout)
        if z.dtype != dtype:
            raise TypeError(f"z must have the dtype of u ({dtype}), got {z.dtype}")
        tensors["z"] = z
    check_bool("delta_softplus", delta_softplus)
    check_same_device(tensors)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """Mamba's selective scan, with the signature of ``mamba_ssm``'s ``selective_scan_fn``.

    For every batch element and channel, a linear recurrence on a state of ``n`` numbers:
    ``Δ_t = softplus(delta_t + delta_bias)`` (bias and softplus only when asked for),
    ``x_t = exp(Δ_t A) x_{t-1} + Δ_t B_t u_t`` (``x_{-1} = 0``), ``y_t = C_t · x_t + D u_t``,
    then ``y_t * silu(z_t)`` when ``z`` is given.

    Args:
        u (torch.Tensor): inputs ``[b, d, L]``, float16, bfloat16 or float32.
        delta (torch.Tensor): step sizes ``[b, d, L]``, dtype of ``u``.
        A (torch.Tensor): real state matrix ``[d, n]``, float32, ``1 <= n <= 256``.
        B (torch.Tensor): time-invariant ``[d, n]`` (float32) or input-dependent ``[b, n, L]`` or
            ``[b, g, n, L]`` (dtype of ``u``; ``g`` groups of ``d / g`` consecutive channels share one).
        C (torch.Tensor): same forms as ``B``.
        D (torch.Tensor, optional): skip connection ``[d]``, float32.
        z (torch.Tensor, optional): gate ``[b, d, L]``, dtype of ``u``.
        delta_bias (torch.Tensor, optional): ``[d]``, float32, added to ``delta``.
        delta_softplus (bool): apply softplus to ``delta`` after the bias.
        return_last_state (bool): also return the state after the last token.

    Gradients flow to every tensor argument (the last state's gradient included). The state is
    kept in float32 whatever the input dtype.

    Where it runs: the chunked Triton scan on CUDA tensors, and on CPU tensors in Triton's
    interpreter when ``TRITON_INTERPRET=1`` was set before ``kernels`` was imported (except
    bfloat16); otherwise the sequential reference `selective_scan_ref`.

    Returns:
        ``out [b, d, L]`` in the dtype of ``u``, or ``(out, last_state [b, d, n])`` (float32).

    Raises:
        TypeError: a non-tensor, an unsupported or mixed dtype, a complex ``A``, a flag that is not a bool.
        ValueError: a shape that does not fit ``[b, d, L]`` / ``[d, n]``, groups that do not divide
            ``d``, ``n`` above 256, an empty tensor, tensors on different devices.

    Examples:
        >>> b, d, n, L = 1, 4, 8, 10
        >>> u, delta = torch.randn(b, d, L), torch.rand(b, d, L)
        >>> A, B, C = -torch.rand(d, n), torch.randn(b, n, L), torch.randn(b, n, L)
        >>> out, state = selective_scan(u, delta, A, B, C, delta_softplus=True, return_last_state=True)
        >>> out.shape, state.shape
        (torch.Size([1, 4, 10]), torch.Size([1, 4, 8]))
    """
    _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    check_bool("return_last_state", return_last_state)
    if uses_triton(u):
        out, last = SelectiveScanFunction.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        return (out, last) if return_last_state else out
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def selective_scan_step(state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Advance the selective scan's state by one token (decoding), in plain PyTorch.

    The recurrence of `selective_scan` for a single position: ``x = exp(Δ A) state + Δ B u``,
    ``y = C · x + D u``, times ``silu(z)`` when given. One token is ``O(d n)`` work: no kernel.

    Args:
        state (torch.Tensor): ``x_{t-1}`` ``[b, d, n]``, e.g. the last state returned by
            ``selective_scan(..., return_last_state=True)`` for the prompt.
        u (torch.Tensor): the new input ``[b, d]``.
        delta (torch.Tensor): its step size ``[b, d]``.
        A (torch.Tensor): ``[d, n]``, float32.
        B (torch.Tensor): ``[b, n]`` or ``[b, g, n]`` (dtype of ``u``). A time-invariant ``B [d, n]``
            is passed as ``B.expand(b, d, n)`` (one group per channel).
        C (torch.Tensor): same forms as ``B``.
        D (torch.Tensor, optional): skip connection ``[d]``, float32.
        z (torch.Tensor, optional): gate ``[b, d]``, dtype of ``u``.
        delta_bias (torch.Tensor, optional): ``[d]``, float32, added to ``delta``.
        delta_softplus (bool): apply softplus to ``delta`` after the bias.

    Returns:
        ``(out [b, d] in the dtype of u, new state [b, d, n] in float32)``; ``state`` is not modified.

    Examples:
        >>> state = torch.zeros(1, 4, 8)
        >>> out, state = selective_scan_step(state, torch.randn(1, 4), torch.rand(1, 4), -torch.rand(4, 8),
        ...                                  torch.randn(1, 8), torch.randn(1, 8))
        >>> out.shape, state.shape
        (torch.Size([1, 4]), torch.Size([1, 4, 8]))
    """
    _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, token=True)
    b, d = u.shape
    check_tensor("state", state, 3, "[b, d, n]")
    _check_shape("state", state, (b, d, A.shape[1]), "[b, d, n]")
    if not state.is_floating_point():
        raise TypeError(f"state must be a floating-point tensor, got {state.dtype}")
    check_same_device({"u": u, "state": state})
    f32 = torch.float32
    dt = delta.to(f32) + (0 if delta_bias is None else delta_bias[None])
    dt = F.softplus(dt) if delta_softplus else dt  # [b, d]

    def per_channel(M):  # [b, n] or [b, g, n] -> [b, d, n]
        M = M.to(f32) if M.dim() == 3 else M.to(f32)[:, None]
        return M.repeat_interleave(d // M.shape[1], dim=1)

    Bd, Cd = per_channel(B), per_channel(C)
    x = torch.exp(dt[..., None] * A) * state.to(f32) + (dt * u.to(f32))[..., None] * Bd  # [b, d, n]
    y = (x * Cd).sum(-1)  # [b, d]
    if D is not None:
        y = y + D * u.to(f32)
    if z is not None:
        y = y * F.silu(z.to(f32))
    return y.to(u.dtype), x


def _check_ssd_inputs(x, dt, A, B, C, D, z, dt_bias, dt_softplus, return_final_state):
    check_tensor("x", x, 4, "[b, L, h, p]")
    check_tensor("dt", dt, 3, "[b, L, h]")
    check_tensor("A", A, 1, "[h]")
    check_tensor("B", B, 4, "[b, L, g, n]")
    check_tensor("C", C, 4, "[b, L, g, n]")
    dtype = check_float_dtypes({"x": x, "dt": dt, "B": B, "C": C})
    b, L, h, p = x.shape
    if min(x.shape) < 1:
        raise ValueError(f"x must have at least one batch element, position, head and channel, got shape {tuple(x.shape)}")
    _check_shape("dt", dt, (b, L, h), "[b, L, h]")
    _check_float32("A", A, "[h]")
    _check_shape("A", A, (h,), "[h]")
    g, n = B.shape[2], B.shape[3]
    if g < 1 or h % g != 0:
        raise ValueError(f"B has g = {g} groups, which must divide the number of heads h = {h} (shape {tuple(B.shape)})")
    if not 1 <= n <= MAX_STATE:
        raise ValueError(f"B must have a state size n between 1 and {MAX_STATE}, got {n}")
    _check_shape("B", B, (b, L, g, n), "[b, L, g, n]")
    _check_shape("C", C, (b, L, g, n), "[b, L, g, n] (that of B)")
    tensors = {"x": x, "dt": dt, "A": A, "B": B, "C": C}
    if D is not None:
        _check_float32("D", D, "[h] or [h, p]")
        _check_shape("D", D, (h,) if D.dim() == 1 else (h, p), "[h]" if D.dim() == 1 else "[h, p]")
        tensors["D"] = D
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, 1, "[h]")
        _check_float32("dt_bias", dt_bias, "[h]")
        _check_shape("dt_bias", dt_bias, (h,), "[h]")
        tensors["dt_bias"] = dt_bias
    if z is not None:
        check_tensor("z", z, 4, "[b, L, h, p]")
        _check_shape("z", z, x.shape, "[b, L, h, p]")
        if z.dtype != dtype:
            raise TypeError(f"z must have the dtype of x ({dtype}), got {z.dtype}")
        tensors["z"] = z
    check_bool("dt_softplus", dt_softplus)
    check_bool("return_final_state", return_final_state)
    check_same_device(tensors)


def ssd(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, return_final_state=False):
    """Mamba-2's SSD: a state space model whose decay is one scalar per head and step.

    Every channel ``(h, p)`` runs ``s_t = exp(dt_t A_h) s_{t-1} + dt_t B_t x_t`` on a state of ``n``
    numbers and reads ``y_t = C_t · s_t + D x_t`` (times ``silu(z_t)`` when given), with
    ``dt_t = softplus(dt_t + dt_bias)`` when asked. Written as attention, ``y = (M ∘ C B^T)(dt x)``
    with ``M[t, s] = exp(Σ_{s < r <= t} dt_r A_h)``: see `ssd_ref`. With a constant ``dt`` it is
    ``linear_attention(q=C, k=B, v=dt x, decay=dt A, scale=1)``.

    Args:
        x (torch.Tensor): inputs ``[b, L, h, p]`` (``h`` heads of ``p`` channels), float16,
            bfloat16 or float32 (the layout of ``mamba_ssm``'s ``mamba_chunk_scan_combined``).
        dt (torch.Tensor): step sizes ``[b, L, h]``, dtype of ``x``.
        A (torch.Tensor): one real decay rate per head ``[h]``, float32 (negative for decay).
        B (torch.Tensor): ``[b, L, g, n]``, dtype of ``x``; ``g`` groups of ``h / g`` heads share one.
        C (torch.Tensor): ``[b, L, g, n]``, dtype of ``x``.
        D (torch.Tensor, optional): skip connection ``[h]`` or ``[h, p]``, float32.
        z (torch.Tensor, optional): gate ``[b, L, h, p]``, dtype of ``x``.
        dt_bias (torch.Tensor, optional): ``[h]``, float32, added to ``dt``.
        dt_softplus (bool): apply softplus to ``dt`` after the bias.
        return_final_state (bool): also return the state after the last token ``[b, h, p, n]``.

    Where it runs: the same Triton scan as `selective_scan` (every channel of a head shares the
    head's decay), on the layout ``[b, h p, L]``; the inputs are copied into that layout. On CPU
    tensors without ``TRITON_INTERPRET=1``, and for bfloat16 in the interpreter, the sequential
    reference runs. Gradients flow to every tensor argument.

    Returns:
        ``y [b, L, h, p]`` in the dtype of ``x``, or ``(y, final_state [b, h, p, n])`` (float32).

    Examples:
        >>> b, L, h, p, n = 1, 10, 2, 4, 8
        >>> x, dt, A = torch.randn(b, L, h, p), torch.rand(b, L, h), -torch.rand(h)
        >>> B, C = torch.randn(b, L, 1, n), torch.randn(b, L, 1, n)
        >>> ssd(x, dt, A, B, C).shape
        torch.Size([1, 10, 2, 4])
    """
    _check_ssd_inputs(x, dt, A, B, C, D, z, dt_bias, dt_softplus, return_final_state)
    b, L, h, p = x.shape
    n = B.shape[-1]
    to_channels = lambda t: t.permute(0, 2, 3, 1).reshape(b, h * p, L)  # noqa: E731 [b, L, h, p] -> [b, h p, L]
    u = to_channels(x)
    delta = to_channels(dt[..., None].expand(b, L, h, p))
    A_d = A.repeat_interleave(p)[:, None].expand(h * p, n)  # [h p, n]
    D_d = None if D is None else (D.repeat_interleave(p) if D.dim() == 1 else D.reshape(h * p))
    bias_d = None if dt_bias is None else dt_bias.repeat_interleave(p)
    z_d = None if z is None else to_channels(z)
    out, last = selective_scan(u, delta, A_d, B.permute(0, 2, 3, 1), C.permute(0, 2, 3, 1), D_d, z_d, bias_d,
                               dt_softplus, return_last_state=True)
    y = out.reshape(b, h, p, L).permute(0, 3, 1, 2)  # [b, L, h, p]
    return (y, last.reshape(b, h, p, n)) if return_final_state else y
