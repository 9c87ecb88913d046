"""`ssd` as a registered PyTorch operator, ``torch.ops.kernels.ssd``.

The operator has one implementation, registered as
``CompositeImplicitAutograd``: the body below, which turns SSD into linear
attention with a per-token decay and calls the linear attention ops
(``kernels::linear_attention_fwd`` and its backward, on the Triton path) or the
PyTorch reference. PyTorch therefore needs no fake function or autograd formula
of its own for it: the fake shapes, the gradients and ``torch.compile``'s graph
all come from the operations the body calls, and ``torch.library.opcheck``
checks the registration.

Schema:

    ssd(x, dt, A, B, C, D?, z?, dt_bias?, initial_states?, seq_idx?,
        cu_seqlens?, dt_softplus, dt_min, dt_max) -> (y, final_states)

with the arguments of `kernels.ssd` already checked; the final states are always
returned (float32), per sequence ``[N, h, p, n]`` with ``cu_seqlens``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..linear_attention.api import _run, _run_varlen

_lib = torch.library.Library("kernels", "FRAGMENT")
_lib.define(
    "ssd(Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor? D, "
    "Tensor? z, Tensor? dt_bias, Tensor? initial_states, Tensor? seq_idx, "
    "Tensor? cu_seqlens, bool dt_softplus, float dt_min, float dt_max) "
    "-> (Tensor, Tensor)"
)


def ssd_composite(
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
    dt_min,
    dt_max,
):
    """``(y [b, L, h, p], final_states [b, h, p, n])`` of checked arguments (see
    `kernels.ssd`); with ``cu_seqlens [N + 1]`` (``b = 1``), the final state of
    each sequence ``[N, h, p, n]``
    (``initial_states`` belongs to the first one)."""
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    step = dt.float()
    if dt_bias is not None:
        step = step + dt_bias.float()
    if dt_softplus:
        step = F.softplus(step, threshold=20.0)
    # always, as mamba_ssm: a negative step becomes 0
    step = step.clamp(dt_min, dt_max)
    log_decay = (step * A.float()).transpose(1, 2)  # [b, h, L]

    def per_head(t):  # [b, L, g, n] -> [b, h, L, n] in the dtype of x
        t = t.to(x.dtype)
        if g != h:
            t = (
                t[:, :, :, None, :]
                .expand(b, L, g, h // g, n)
                .reshape(b, L, h, n)
            )
        return t.transpose(1, 2)

    # dt x: [b, h, L, p]
    v = (x.float() * step[..., None]).to(x.dtype).transpose(1, 2)
    # [b, h, n, p]
    s0 = (
        None
        if initial_states is None
        else initial_states.float().transpose(-1, -2)
    )
    if cu_seqlens is None:
        o, final = _run(
            per_head(C),
            per_head(B),
            v,
            True,
            log_decay,
            1.0,
            s0,
            seq_idx=seq_idx,
        )
    else:  # packed sequences: seq_idx, if given, says the same as the offsets
        # the first sequence's; the others start from 0: [N, h, n, p]
        if s0 is not None:
            s0 = torch.cat([s0, s0.new_zeros(cu_seqlens.shape[0] - 2, h, n, p)])
        o, final = _run_varlen(
            per_head(C), per_head(B), v, log_decay, 1.0, s0, cu_seqlens
        )
    y = o.transpose(1, 2).float()  # [b, L, h, p]
    if D is not None:
        y = y + (D.float()[:, None] if D.dim() == 1 else D.float()) * x.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype), final.transpose(-1, -2)


_lib.impl("ssd", ssd_composite, "CompositeImplicitAutograd")
ssd_op = torch.ops.kernels.ssd.default
