"""SSD's public function and its argument checks."""
from __future__ import annotations

from .._checks import (check_bool, check_float32, check_float_dtypes, check_same_device, check_shape,
                       check_tensor)
from ..selective_scan.api import MAX_STATE, selective_scan


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
    check_shape("dt", dt, (b, L, h), "[b, L, h]")
    check_float32("A", A, "[h]")
    check_shape("A", A, (h,), "[h]")
    g, n = B.shape[2], B.shape[3]
    if g < 1 or h % g != 0:
        raise ValueError(f"B has g = {g} groups, which must divide the number of heads h = {h} (shape {tuple(B.shape)})")
    if not 1 <= n <= MAX_STATE:
        raise ValueError(f"B must have a state size n between 1 and {MAX_STATE}, got {n}")
    check_shape("B", B, (b, L, g, n), "[b, L, g, n]")
    check_shape("C", C, (b, L, g, n), "[b, L, g, n] (that of B)")
    tensors = {"x": x, "dt": dt, "A": A, "B": B, "C": C}
    if D is not None:
        check_float32("D", D, "[h] or [h, p]")
        check_shape("D", D, (h,) if D.dim() == 1 else (h, p), "[h]" if D.dim() == 1 else "[h, p]")
        tensors["D"] = D
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, 1, "[h]")
        check_float32("dt_bias", dt_bias, "[h]")
        check_shape("dt_bias", dt_bias, (h,), "[h]")
        tensors["dt_bias"] = dt_bias
    if z is not None:
        check_tensor("z", z, 4, "[b, L, h, p]")
        check_shape("z", z, x.shape, "[b, L, h, p]")
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
