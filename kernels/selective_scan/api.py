"""The selective scan's public functions and their argument checks."""

from __future__ import annotations

import torch

from .._backend import HAS_TRITON, uses_triton
from .._checks import (
    check_bool,
    check_float32,
    check_float_dtypes,
    check_same_device,
    check_shape,
    check_tensor,
)
from .naive import selective_scan_ref, selective_scan_step_ref

if HAS_TRITON:
    from .triton import (
        selective_scan_op,
        selective_scan_step_fwd,
        selective_scan_step_op,
    )

MAX_STATE = 256  # largest state size n the kernels take


def _check_BC(name, M, b, d, n, L, dtype, token):
    """``B`` or ``C``: time-invariant ``[d, n]`` (float32) or input-dependent ``[b, n, L]`` /
    ``[b, g, n, L]`` in the dtype of ``u`` or in float32. The decoding step (``token=True``) takes
    the input-dependent forms for one token, ``[b, n]`` or ``[b, g, n]``.
    """
    if not isinstance(M, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, got {type(M).__name__}"
        )
    g = M.shape[1] if M.dim() == 4 - token else 1
    if token:
        forms = {2: ("[b, n]", (b, n)), 3: ("[b, g, n]", (b, g, n))}
    else:
        forms = {
            2: ("[d, n]", (d, n)),
            3: ("[b, n, L]", (b, n, L)),
            4: ("[b, g, n, L]", (b, g, n, L)),
        }
    if M.dim() not in forms:
        expected = " or ".join(layout for layout, _ in forms.values())
        raise ValueError(
            f"{name} must have shape {expected}, got {tuple(M.shape)}"
        )
    layout, shape = forms[M.dim()]
    if g < 1 or d % g != 0:
        raise ValueError(
            f"{name} has g = {g} groups, which must divide the number of channels d = {d} "
            f"(shape {tuple(M.shape)})"
        )
    check_shape(name, M, shape, layout)
    if M.dim() == 2 and not token:
        check_float32(name, M, layout)
    else:
        _check_activation(
            name, M, dtype, f"{name} {layout} is input-dependent and "
        )


def _check_activation(name, x, dtype, what=""):
    """``x`` must have the dtype of ``u`` or float32 (as ``mamba_ssm`` takes them beside half-precision ``u``)."""
    if x.dtype not in (dtype, torch.float32):
        also = "" if dtype == torch.float32 else " or float32"
        raise TypeError(
            f"{what or name + ' '}must have the dtype of u ({dtype}){also}, got {x.dtype}"
        )


def _check_scan_inputs(
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, token=False
):
    """Validate the selective scan's (``token=False``) or the decoding step's arguments.

    Shapes, dtypes and devices only: nothing here reads a tensor's values, so the checks never
    wait for the GPU (they pass on ``meta`` tensors, which hold no data).
    """
    layout = "[b, d]" if token else "[b, d, L]"
    check_tensor("u", u, 2 if token else 3, layout)
    check_tensor("delta", delta, u.dim(), layout)
    check_tensor("A", A, 2, "[d, n]")
    dtype = check_float_dtypes({"u": u})
    check_float_dtypes({"delta": delta})
    _check_activation("delta", delta, dtype)
    b, d = u.shape[:2]
    L = 1 if token else u.shape[2]
    n = A.shape[1]
    if min(u.shape) < 1:
        raise ValueError(
            f"u must have at least one batch element, channel and position, got shape {tuple(u.shape)}"
        )
    check_shape("delta", delta, u.shape, layout)
    check_float32("A", A, "[d, n]")
    check_shape("A", A, (d, n), "[d, n]")
    if not 1 <= n <= MAX_STATE:
        raise ValueError(
            f"A must have a state size n between 1 and {MAX_STATE}, got {n}"
        )
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
        _check_activation("z", z, dtype)
        tensors["z"] = z
    check_bool("delta_softplus", delta_softplus)
    check_same_device(tensors)


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
):
    """Mamba's selective scan, with the signature of ``mamba_ssm``'s ``selective_scan_fn``.

    For every batch element and channel, a linear recurrence on a state of ``n`` numbers:
    ``Δ_t = softplus(delta_t + delta_bias)`` (bias and softplus only when asked for),
    ``x_t = exp(Δ_t A) x_{t-1} + Δ_t B_t u_t`` (``x_{-1} = 0``), ``y_t = C_t · x_t + D u_t``,
    then ``y_t * silu(z_t)`` when ``z`` is given.

    Args:
        u (torch.Tensor): inputs ``[b, d, L]``, float16, bfloat16 or float32.
        delta (torch.Tensor): step sizes ``[b, d, L]``, dtype of ``u`` or float32.
        A (torch.Tensor): real state matrix ``[d, n]``, float32, ``1 <= n <= 256``.
        B (torch.Tensor): time-invariant ``[d, n]`` (float32) or input-dependent ``[b, n, L]`` or
            ``[b, g, n, L]`` (dtype of ``u`` or float32; ``g`` groups of ``d / g`` consecutive channels
            share one).
        C (torch.Tensor): same forms as ``B``.
        D (torch.Tensor, optional): skip connection ``[d]``, float32.
        z (torch.Tensor, optional): gate ``[b, d, L]``, dtype of ``u`` or float32.
        delta_bias (torch.Tensor, optional): ``[d]``, float32, added to ``delta``.
        delta_softplus (bool): apply softplus to ``delta`` after the bias.
        return_last_state (bool): also return the state after the last token.

    Gradients flow to every tensor argument (the last state's gradient included), each in its
    argument's dtype. The state is kept in float32 whatever the input dtypes. Float32 ``delta``,
    ``B``, ``C`` and ``z`` beside a float16 or bfloat16 ``u`` are read as they are, not rounded to
    the dtype of ``u`` (the mixes ``mamba_ssm``'s ``selective_state_update`` takes; its CUDA
    ``selective_scan_fn`` wants them in the dtype of ``u``, which is accepted too).

    Where it runs: the chunked Triton scan on CUDA tensors, and on CPU tensors in Triton's
    interpreter when ``TRITON_INTERPRET=1`` was set before ``kernels`` was imported (except
    bfloat16); otherwise the sequential reference `selective_scan_ref`. The Triton scan is the
    registered operator ``torch.ops.kernels.selective_scan`` (with its backward), which
    ``torch.compile(fullgraph=True)`` traces without a graph break. On a GPU the first call of a
    new shape autotunes the launch (timing a few configurations, which waits for the GPU); no
    other step reads tensor values or synchronises.

    Returns:
        ``out [b, d, L]`` in the dtype of ``u``, or ``(out, last_state [b, d, n])`` (float32).

    Raises:
        TypeError: a non-tensor, an unsupported dtype or dtype mix, a complex ``A``, a flag that is not a bool.
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
        store_states = torch.is_grad_enabled() and any(
            x is not None and x.requires_grad
            for x in (u, delta, A, B, C, D, z, delta_bias)
        )
        out, last, _ = selective_scan_op(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, store_states
        )
        return (out, last) if return_last_state else out
    return selective_scan_ref(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
    )


def selective_scan_step(
    state,
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
):
    """Advance the selective scan's state by one token (decoding), in one kernel launch.

    The recurrence of `selective_scan` for a single position: ``x = exp(Δ A) state + Δ B u``,
    ``out = (C · x + D u) * silu(z)`` (the gate only when given). The signature and the in-place
    update are those of ``mamba_ssm``'s ``selective_state_update`` (without heads): ``state`` is
    overwritten with the new state (in its own dtype; the arithmetic is float32), and only the
    output is returned.

    Args:
        state (torch.Tensor): ``x_{t-1}`` ``[b, d, n]``, float32 or the dtype of ``u``, e.g. the
            last state returned by ``selective_scan(..., return_last_state=True)`` for the
            prompt; **updated in place** to ``x_t``. Any strides (a slice of a larger cache works).
        u (torch.Tensor): the new input ``[b, d]``, float16, bfloat16 or float32.
        delta (torch.Tensor): its step size ``[b, d]``, dtype of ``u`` or float32.
        A (torch.Tensor): ``[d, n]``, float32.
        B (torch.Tensor): ``[b, n]`` or ``[b, g, n]`` (``g`` groups of ``d / g`` channels), dtype of
            ``u`` or float32. A time-invariant ``B [d, n]`` is passed as ``B.expand(b, d, n)``.
        C (torch.Tensor): same forms as ``B``.
        D (torch.Tensor, optional): skip connection ``[d]``, float32.
        z (torch.Tensor, optional): gate ``[b, d]``, dtype of ``u`` or float32.
        delta_bias (torch.Tensor, optional): ``[d]``, float32, added to ``delta``.
        delta_softplus (bool): apply softplus to ``delta`` after the bias.

    No gradients: the step is for inference and runs without autograd (its output does not
    require grad).

    Where it runs: one fused Triton kernel on CUDA tensors (under ``torch.compile`` through the
    registered operator ``torch.ops.kernels.selective_scan_step``, declared to mutate ``state``), and
    on CPU tensors in Triton's interpreter when ``TRITON_INTERPRET=1`` was set before ``kernels``
    was imported (except bfloat16); otherwise the PyTorch reference `selective_scan_step_ref` (a
    few small operations). On a GPU the first call of a new shape autotunes the launch (restoring
    the state after each timed run).

    Returns:
        ``out [b, d]`` in the dtype of ``u``.

    Raises:
        TypeError: a non-tensor, an unsupported dtype or dtype mix, a flag that is not a bool.
        ValueError: a shape that does not fit, groups that do not divide ``d``, tensors on different
            devices.

    Examples:
        >>> state = torch.zeros(1, 4, 8)
        >>> out = selective_scan_step(state, torch.randn(1, 4), torch.rand(1, 4), -torch.rand(4, 8),
        ...                           torch.randn(1, 8), torch.randn(1, 8))
        >>> out.shape, bool(state.abs().sum() > 0)
        (torch.Size([1, 4]), True)
    """
    _check_scan_inputs(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, token=True
    )
    b, d = u.shape
    check_tensor("state", state, 3, "[b, d, n]")
    check_shape("state", state, (b, d, A.shape[1]), "[b, d, n]")
    check_float_dtypes({"state": state})
    _check_activation("state", state, u.dtype)
    check_same_device({"u": u, "state": state})
    with torch.no_grad():
        if uses_triton(u):
            # the registered operator for torch.compile; in eager mode the launch itself (the
            # operator's dispatch would add to the latency of every token)
            step = (
                selective_scan_step_op
                if torch.compiler.is_compiling()
                else selective_scan_step_fwd
            )
            return step(
                state, u, delta, A, B, C, D, z, delta_bias, delta_softplus
            )
        return selective_scan_step_ref(
            state, u, delta, A, B, C, D, z, delta_bias, delta_softplus
        )
