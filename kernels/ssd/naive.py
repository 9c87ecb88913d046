"""The plain PyTorch reference of SSD (Mamba-2).

SSD (Mamba-2) is the special case of the selective scan where ``A`` is one
scalar per head: with ``x [b, L, h, p]``, ``dt [b, L, h]``, ``A [h]``,
``B, C [b, L, g, n]``, every channel ``(h, p)`` decays by ``exp(dt_t A_h)``
(with ``dt`` after the bias, the softplus and the clamp to ``dt_limit``).
`ssd_ref` computes it in its dual, attention-like form:
``y = (M ∘ (C B^T)) (dt x)`` with the mask
``M[t, s] = exp(Σ_{s < r <= t} dt_r A_h)`` for ``s <= t`` and 0 above the
diagonal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..selective_scan.naive import _acc


def ssd_ref(
    x,
    dt,
    A,
    B,
    C,
    D=None,
    z=None,
    dt_bias=None,
    initial_states=None,
    dt_softplus=False,
    dt_limit=(0.0, float("inf")),
    return_final_states=False,
    seq_idx=None,
):
    """SSD (Mamba-2's scalar-decay state space model) in its quadratic,
    attention-like form.

    Args:
        x (torch.Tensor): inputs ``[b, L, h, p]`` (``h`` heads of ``p``
            channels).
        dt (torch.Tensor): step sizes ``[b, L, h]`` (before ``dt_bias`` and
            softplus).
        A (torch.Tensor): one real decay rate per head ``[h]``.
        B (torch.Tensor): ``[b, L, g, n]`` (``g`` groups of ``h / g`` heads
            share one).
        C (torch.Tensor): ``[b, L, g, n]``.
        D (torch.Tensor, optional): skip connection ``[h]`` or ``[h, p]``.
        z (torch.Tensor, optional): gate ``[b, L, h, p]``; the output is
            multiplied by ``silu(z)``.
        dt_bias (torch.Tensor, optional): ``[h]``, added to ``dt``.
        initial_states (torch.Tensor, optional): the state before the first
            token ``[b, h, p, n]``.
        dt_softplus (bool): apply softplus to ``dt`` (after the bias; the
            identity above 20).
        dt_limit (tuple): ``(dt_min, dt_max)``: the step is clamped to it after
            the softplus.
        return_final_states (bool): also return the state after the last token
            ``[b, h, p, n]``.
        seq_idx (torch.Tensor, optional): sequence ids ``[b, L]``:
            ``M[t, s] = 0`` across sequences; the initial state reaches only the
            first sequence, the final state is the last one's.

    Returns:
        ``y [b, L, h, p]`` in the dtype of ``x``, or
            ``(y, final_state [b, h, p, n])`` in float32 (float64 for float64
            inputs).
    """
    acc = _acc(x)
    b, L, h, p = x.shape
    g = B.shape[2]
    xf, dt, A = x.to(acc), dt.to(acc), A.to(acc)
    if dt_bias is not None:
        dt = dt + dt_bias.to(acc)
    if dt_softplus:
        dt = F.softplus(dt, threshold=20.0)
    dt = dt.clamp(dt_limit[0], dt_limit[1])
    Bh = B.to(acc).repeat_interleave(h // g, dim=2)  # [b, L, h, n]
    Ch = C.to(acc).repeat_interleave(h // g, dim=2)
    a = (dt * A).transpose(1, 2)  # log-decays [b, h, L]
    cum = a.cumsum(-1)  # [b, h, L]
    # Σ_{s < r <= t} a_r: [b, h, L(t), L(s)]
    seg = cum[..., :, None] - cum[..., None, :]
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    # same sequence
    same = torch.ones(1, L, L, dtype=torch.bool, device=x.device)
    if seq_idx is not None:
        same = seq_idx[:, :, None] == seq_idx[:, None, :]  # [b, L, L]
    causal = causal & same[:, None]  # [b or 1, 1, L, L]
    # the decay mask [b, h, L, L]
    M = torch.exp(seg.masked_fill(~causal, float("-inf")))
    # (M ∘ C B^T): [b, h, L, L]
    scores = torch.einsum("bthn,bshn->bhts", Ch, Bh) * M
    v = xf * dt[..., None]  # dt x: [b, L, h, p]
    y = torch.einsum("bhts,bshp->bthp", scores, v)  # [b, L, h, p]
    if initial_states is not None:  # C_t . (decay from the start to t) s_{-1}
        s0 = initial_states.to(acc)
        y = y + torch.einsum(
            "bthn,bht,bhpn->bthp",
            Ch,
            torch.exp(cum) * same[:, None, 0].to(acc),
            s0,
        )
    if D is not None:
        y = y + (D.to(acc)[:, None] if D.dim() == 1 else D.to(acc)) * xf
    if z is not None:
        y = y * F.silu(z.to(acc))
    y = y.to(x.dtype)
    if not return_final_states:
        return y
    # decay from each token to the end: [b, h, L]
    last = torch.exp(cum[..., -1:] - cum) * same[:, None, -1].to(acc)
    final = torch.einsum("bhs,bshp,bshn->bhpn", last, v, Bh)  # [b, h, p, n]
    if initial_states is not None:
        # [b, h]
        from_start = torch.exp(cum[..., -1]) * same[:, None, -1, 0].to(acc)
        final = final + from_start[..., None, None] * initial_states.to(acc)
    return y, final
