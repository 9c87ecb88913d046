"""The online softmax: normalising a row of scores in one pass, tile by tile.

You will see:
* the running maximum ``m`` and running sum ``l`` of one row, updated key tile
  by key tile, end at the exact values, so ``exp(s - m) / l`` is the softmax;
* the blockwise attention reference (the kernel's loop in PyTorch) equals the
  plain one;
* ``flash_attention`` equals the plain reference.
"""

# %%
import json
import math

import matplotlib.pyplot as plt
import torch

from kernels import flash_attention, uses_triton
from kernels.flash_attention import attention_blockwise, attention_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)

# %% [markdown]
# One row of scores, seen one tile of 128 keys at a time. After each tile the
# running maximum grows to `m_new`, and the sum collected under the old maximum
# is rescaled by `exp(m - m_new)` before the new tile's terms are added.


# %%
def online_softmax(s: torch.Tensor, block: int):
    """Softmax of the 1-D tensor ``s`` from one pass over tiles; also returns
    (m, l) after each tile."""
    m, l, history = -math.inf, 0.0, []
    for start in range(0, s.numel(), block):
        tile = s[start : start + block]
        m_new = max(m, tile.max().item())
        l = l * math.exp(m - m_new) + torch.exp(tile - m_new).sum().item()
        m = m_new
        history.append((m, l))
    return torch.exp(s - m) / l, history


# Scores of one query against 1000 keys, with a slow upward drift so that the
# maximum moves several times along the row.
s = 2 * torch.randn(1000, dtype=torch.float64) + torch.linspace(
    -4, 4, 1000, dtype=torch.float64
)
p, history = online_softmax(s, block=128)
softmax_diff = (p - torch.softmax(s, dim=0)).abs().max().item()
print(f"online softmax vs torch.softmax, max |difference|: {softmax_diff:.2e}")
for i, (m, l) in enumerate(history):
    print(f"after tile {i}: m = {m:7.4f}  l = {l:9.4f}")

# %% [markdown]
# The running statistics against their final values: `m` only ever grows; `l`
# can shrink when a larger maximum rescales it.

# %%
tiles = range(1, len(history) + 1)
fig, (ax_m, ax_l) = plt.subplots(2, 1, figsize=(6.8, 5.6), sharex=True)
ax_m.plot(tiles, [m for m, _ in history], "o-", label="running max $m$")
ax_m.axhline(s.max().item(), color="gray", ls="--", label="max over all keys")
ax_m.set(
    ylabel="$m$ (score units)",
    title="Running maximum",
)
ax_l.plot(
    tiles, [l for _, l in history], "o-", color="C1", label="running sum $\ell$"
)
ax_l.axhline(
    torch.exp(s - s.max()).sum().item(),
    color="gray",
    ls="--",
    label=r"$\Sigma_j \exp(s_j - \max\, s)$",
)
ax_l.set(
    xlabel="key tiles processed (128 keys each)",
    ylabel=r"$\ell$ (dimensionless)",
    title="Running sum",
)
for ax in (ax_m, ax_l):
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig("online_softmax.svg")

# %% [markdown]
# The same recurrence over tiles of a whole attention head: the blockwise
# reference (float64) against the plain softmax attention.

# %%
B, H, Hkv, T, D = 2, 4, 2, 300, 64  # T is not a multiple of the 64-wide tiles
q = torch.randn(B, H, T, D, dtype=torch.float64)
k, v = (
    torch.randn(B, Hkv, T, D, dtype=torch.float64),
    torch.randn(B, Hkv, T, D, dtype=torch.float64),
)
blockwise_diff = (
    (
        attention_blockwise(q, k, v, causal=True)
        - attention_ref(q, k, v, causal=True)
    )
    .abs()
    .max()
    .item()
)
print(
    "blockwise reference vs plain reference (float64, causal),\n"
    f"  max |difference|: {blockwise_diff:.2e}"
)

# %% [markdown]
# And `flash_attention` itself, in float32, against the plain reference computed
# in float64.

# %%
q32, k32, v32 = (x.float().to(DEVICE) for x in (q, k, v))
path = (
    "Triton kernel"
    if uses_triton(q32)
    else "PyTorch reference (no GPU and TRITON_INTERPRET unset)"
)
kernel_diff = (
    (
        flash_attention(q32, k32, v32, causal=True).double().cpu()
        - attention_ref(q, k, v, causal=True)
    )
    .abs()
    .max()
    .item()
)
print(
    f"flash_attention ({path}, float32) vs reference (float64),\n"
    f"  max |difference|: {kernel_diff:.2e}"
)

with open("results.json", "w") as f:
    json.dump(
        {
            "softmax_max_abs_diff": softmax_diff,
            "blockwise_max_abs_diff": blockwise_diff,
            "kernel_max_abs_diff": kernel_diff,
            "kernel_path": path,
        },
        f,
        indent=2,
    )
