"""The selective scan's public functions and their argument checks."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._backend import HAS_TRITON, uses_triton
from .._checks import (check_bool, check_float32, check_float_dtypes, check_same_device, check_shape,
                       check_tensor)
from .naive import selective_scan_ref

if HAS_TRITON:
    from .triton import SelectiveScanFunction

MAX_STATE = 256  # largest state size n the kernels take


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
    check_shape(name, M, shape, layout)
    if M.dim() == 2 and not token:
        check_float32(name, M, layout)
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
    check_shape("delta", delta, u.shape, layout)
    check_float32("A", A, "[d, n]")
    check_shape("A", A, (d, n), "[d, n]")
    if not 1 <= n <= MAX_STATE:
        raise ValueError(f"A must have a state size n between 1 and {MAX_STATE}, got {n}")
    _check_BC("B", B, b, d, n, L, dtype, token)
    _check_BC("C", C, b, d, n, L, dtype, token)
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C}
    for name, x in (("D", D), ("delta_bias", delta_bias)):
        if x is not None:
            check_tensor(name, x, 1, "[d]")
            check_float32(name, x, "[d]")
            check_shape(name, x, (d,), "[d]")
            tensors[name] = x
    if z is not None:
        check_tensor("z", z, u.dim(), layout)
        check_shape("z", z, u.shape, layout)
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
    check_shape("state", state, (b, d, A.shape[1]), "[b, d, n]")
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
