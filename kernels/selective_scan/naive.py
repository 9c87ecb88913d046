"""The plain PyTorch reference of the selective scan (Mamba).

The selective scan runs, for every batch element ``b`` and channel ``d``, a linear recurrence on
a state ``x_t`` of ``n`` numbers:

    Δ_t = softplus(delta_t + delta_bias)        (each part only when asked for)
    x_t = exp(Δ_t A) * x_{t-1} + Δ_t B_t u_t    (x_{-1} = 0, elementwise over the n states)
    y_t = C_t · x_t + D u_t
    out_t = y_t * silu(z_t)                     (when z is given)

``A [d, n]`` is real (negative for a stable system). ``B`` and ``C`` are either time-invariant
``[d, n]`` or input-dependent ``[b, n, L]`` / ``[b, g, n, L]`` (``g`` groups of ``d / g``
channels share one). `selective_scan_ref` is the sequential loop: one token at a time,
in float32 (float64 stays float64), the semantics of ``mamba_ssm``'s ``selective_scan_ref``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _acc(x):
    """The accumulation dtype: float64 stays float64, everything else computes in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _per_channel(M, d, L=None):
    """``B`` or ``C`` as ``[b, d, n, L]`` (input-dependent) or ``[d, n]`` (time-invariant)."""
    if M.dim() == 2:
        return M
    if M.dim() == 3:  # [b, n, L]: one group
        M = M[:, None]
    b, g, n, L = M.shape
    return (
        M[:, :, None].expand(b, g, d // g, n, L).reshape(b, d, n, L)
    )  # [b, d, n, L]


def selective_scan_ref(
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
    """The selective scan, one token at a time.

    Args:
        u (torch.Tensor): inputs ``[b, d, L]``.
        delta (torch.Tensor): step sizes ``[b, d, L]`` (before ``delta_bias`` and softplus).
        A (torch.Tensor): real state matrix (its diagonal per channel) ``[d, n]``.
        B (torch.Tensor): ``[d, n]``, ``[b, n, L]`` or ``[b, g, n, L]``.
        C (torch.Tensor): ``[d, n]``, ``[b, n, L]`` or ``[b, g, n, L]``.
        D (torch.Tensor, optional): skip connection ``[d]``.
        z (torch.Tensor, optional): gate ``[b, d, L]``; the output is multiplied by ``silu(z)``.
        delta_bias (torch.Tensor, optional): ``[d]``, added to ``delta``.
        delta_softplus (bool): apply softplus to ``delta`` (after the bias).
        return_last_state (bool): also return ``x_{L-1}`` ``[b, d, n]``.

    Returns:
        ``out [b, d, L]`` in the dtype of ``u``, or ``(out, last_state [b, d, n])`` with the
        state in float32 (float64 for float64 inputs).
    """
    acc, dtype_in = _acc(u), u.dtype
    b, d, L = u.shape
    u, delta, A = u.to(acc), delta.to(acc), A.to(acc)
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    B, C = _per_channel(B.to(acc), d), _per_channel(C.to(acc), d)
    x = u.new_zeros(b, d, A.shape[1])  # [b, d, n]
    ys = []
    for t in range(L):
        dA = torch.exp(delta[:, :, t, None] * A)  # [b, d, n]
        Bt = B if B.dim() == 2 else B[..., t]  # [d, n] or [b, d, n]
        Ct = C if C.dim() == 2 else C[..., t]
        x = dA * x + (delta[:, :, t] * u[:, :, t])[..., None] * Bt
        ys.append((x * Ct).sum(-1))  # [b, d]
    y = torch.stack(ys, dim=-1)  # [b, d, L]
    if D is not None:
        y = y + D.to(acc)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(acc))
    out = y.to(dtype_in)
    return (out, x) if return_last_state else out


def selective_scan_step_ref(
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
    """One token of the selective scan (decoding): updates ``state`` in place and returns the output.

    ``x = exp(Δ A) state + Δ B u`` (computed in float32), stored into ``state`` in its own dtype;
    ``out = (C · x + D u) * silu(z)`` from the float32 ``x``. The semantics of ``mamba_ssm``'s
    ``selective_state_update_ref`` without heads.

    Args:
        state (torch.Tensor): ``x_{t-1}`` ``[b, d, n]``, overwritten with ``x_t``.
        u (torch.Tensor): the token's input ``[b, d]``.
        delta (torch.Tensor): its step size ``[b, d]`` (before ``delta_bias`` and softplus).
        A (torch.Tensor): ``[d, n]``.
        B (torch.Tensor): ``[b, n]`` or ``[b, g, n]`` (``g`` groups of ``d / g`` channels).
        C (torch.Tensor): ``[b, n]`` or ``[b, g, n]``.
        D (torch.Tensor, optional): skip connection ``[d]``.
        z (torch.Tensor, optional): gate ``[b, d]``.
        delta_bias (torch.Tensor, optional): ``[d]``, added to ``delta``.
        delta_softplus (bool): apply softplus to ``delta`` (after the bias).

    Returns:
        ``out [b, d]`` in the dtype of ``u``.
    """
    acc = _acc(u)
    d = u.shape[1]
    dt = delta.to(acc) + (0 if delta_bias is None else delta_bias.to(acc))
    dt = F.softplus(dt) if delta_softplus else dt  # [b, d]

    def per_channel(M):  # [b, n] or [b, g, n] -> [b, d, n]
        M = M.to(acc)[:, None] if M.dim() == 2 else M.to(acc)
        return M.repeat_interleave(d // M.shape[1], dim=1)

    uf = u.to(acc)
    x = torch.exp(dt[..., None] * A.to(acc)) * state.to(acc) + (dt * uf)[
        ..., None
    ] * per_channel(B)  # [b, d, n]
    state.copy_(x)
    y = (x * per_channel(C)).sum(-1)  # [b, d]
    if D is not None:
        y = y + D.to(acc) * uf
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(u.dtype)
