"""SSD's two faces: a recurrence with a scalar decay, and masked linear
attention.

You will see:
* ``ssd`` (the chunk-parallel Triton kernels) against ``ssd_ref``, which never
  runs a recurrence: it builds the matrix ``M ∘ (C B^T)`` and multiplies it by
  ``dt x``, like attention; outputs, final states and gradients agree, with
  every option on;
* SSD is exactly ``linear_attention`` with ``q = C``, ``k = B``, ``v = dt x``,
  the per-token log-decay ``dt A`` and ``scale = 1``: same outputs, and the same
  final state up to a transpose.
"""

# %%
import json

import torch
import torch.nn.functional as F

from kernels import linear_attention, ssd
from kernels.ssd import ssd_ref
from kernels.bench import max_diff

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# n, p multiples of 8
b, L, h, p, g, n = (
    (2, 1000, 8, 64, 2, 64) if DEVICE == "cuda" else (1, 50, 2, 8, 1, 8)
)
torch.manual_seed(0)


# %% [markdown]
# Mamba-2's layout: `x [b, L, h, p]` (h heads of p channels), `dt [b, L, h]`
# (one step size per head and token), `A [h]` (one decay rate per head),
# `B, C [b, L, g, n]` (g groups of heads share them), `D [h]`, gate
# `z [b, L, h, p]`, Δ bias `[h]`.

# %%
x, z = (
    torch.randn(b, L, h, p, device=DEVICE),
    torch.randn(b, L, h, p, device=DEVICE),
)
dt = torch.randn(b, L, h, device=DEVICE)
A = -torch.rand(h, device=DEVICE) - 0.5
B, C = (
    torch.randn(b, L, g, n, device=DEVICE),
    torch.randn(b, L, g, n, device=DEVICE),
)
D, dt_bias = torch.randn(h, device=DEVICE), torch.randn(h, device=DEVICE) * 0.5
inputs = [t.requires_grad_() for t in (x, dt, A, B, C, D, z, dt_bias)]
NAMES = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias"]
dy, dfinal = (
    torch.randn(b, L, h, p, device=DEVICE),
    torch.randn(b, h, p, n, device=DEVICE),
)

runs = []
for fn in (ssd, ssd_ref):
    y, final = fn(
        *inputs[:5],
        D=inputs[5],
        z=inputs[6],
        dt_bias=inputs[7],
        dt_softplus=True,
        return_final_states=True,
    )
    runs.append(
        (
            y,
            final,
            torch.autograd.grad(
                (y * dy).sum() + (final * dfinal).sum(), inputs
            ),
        )
    )
(y, final, grads), (y_ref, final_ref, grads_ref) = runs
dual = {
    "y": max_diff(y, y_ref),
    "final_state": max_diff(final, final_ref),
    "grad": {
        name: max_diff(a, r) for name, a, r in zip(NAMES, grads, grads_ref)
    },
}
print(
    "ssd (chunk kernels) vs ssd_ref (matrix form):\n"
    f"  max |diff| y {dual['y']:.1e}, final state {dual['final_state']:.1e}, "
    f"gradients {max(dual['grad'].values()):.1e}"
)

# %% [markdown]
# The decay `exp(dt_t A_h)` is one number per head and token, so SSD is linear
# attention with a per-token decay. The layout changes from `[b, L, h, ·]` to
# `[b, h, L, ·]`, each group's B and C are repeated for its heads, and dt moves
# into the values.

# %%
step = F.softplus(dt.detach())  # dt after softplus: [b, L, h]
y_ssd, final_ssd = ssd(
    x.detach(),
    step,
    A.detach(),
    B.detach(),
    C.detach(),
    return_final_states=True,
)


def heads(t):
    """``[b, L, g, n] -> [b, h, L, n]``: each group shared by its heads."""
    return t.detach().repeat_interleave(h // g, dim=2).transpose(1, 2)


q, k = heads(C), heads(B)
v = (step[..., None] * x.detach()).transpose(1, 2)  # dt x: [b, h, L, p]
# log-decay per head and token: [b, h, L]
decay = (step * A.detach()).transpose(1, 2)
# o [b, h, L, p], state [b, h, n, p]
o, state = linear_attention(
    q, k, v, decay=decay, scale=1.0, return_final_state=True
)
linear = {
    "y": max_diff(o.transpose(1, 2), y_ssd),
    "final_state": max_diff(state.transpose(-1, -2), final_ssd),
}
print(
    "ssd vs linear_attention(q=C, k=B, v=dt x, decay=dt A per token, "
    f"scale=1):\n  max |diff| y {linear['y']:.1e}, "
    f"final state {linear['final_state']:.1e}"
)
print(f"largest |y|: {y_ssd.abs().max().item():.1f}")

with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "b": b,
            "L": L,
            "h": h,
            "p": p,
            "g": g,
            "n": n,
            "ssd_vs_ref_y_max_abs_diff": dual["y"],
            "ssd_vs_ref_state_max_abs_diff": dual["final_state"],
            "ssd_vs_ref_grad_max_abs_diff": max(dual["grad"].values()),
            "ssd_vs_ref_grads": dual["grad"],
            "ssd_vs_linear_attention_y_max_abs_diff": linear["y"],
            "ssd_vs_linear_attention_state_max_abs_diff": linear["final_state"],
            "largest_output": y_ssd.abs().max().item(),
        },
        f,
        indent=2,
    )
