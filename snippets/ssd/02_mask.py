"""The decay mask of SSD, and why it is called semiseparable.

You will see:
* the mask ``M[t, s] = exp(A (dt_{s+1} + ... + dt_t))`` of one head for a step
  size that varies from token to token, beside the mask of a constant step size
  (RetNet's ``gamma^(t - s)``): a large dt_t cuts the memory of everything
  before t, a tiny one lets it pass;
* every block of M strictly below the diagonal has rank 1, and every such block
  of the full attention-like matrix ``M ∘ (C B^T)`` has rank at most n, the
  state size: that is the semiseparable structure that lets a state of n numbers
  per channel carry the past.
"""

# %%
import json

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

DEVICE = "cpu"  # matrices of a few dozen tokens: a picture, not a workload
L, n, A = 48, 4, -1.0
torch.manual_seed(0)


def decay_mask(dt, A):
    """``M [L, L]`` with ``M[t, s] = exp(A * sum_{s < r <= t} dt_r)`` for
    ``s <= t``, else 0."""
    cum = torch.cumsum(dt, 0)
    seg = cum[:, None] - cum[None, :]
    causal = torch.ones(len(dt), len(dt), dtype=torch.bool).tril()
    # exp(-inf) = 0 above the diagonal
    return torch.exp(A * seg.masked_fill(~causal, float("inf")))


# %% [markdown]
# A step size that is small on most tokens and large on a few, as a trained
# model's `softplus(dt + dt_bias)` may be around the boundaries of segments; and
# a constant step size with the same mean.

# %%
dt_varying = F.softplus(torch.randn(L, dtype=torch.float64) - 2.5)
dt_varying[[12, 30]] = 4.0  # two tokens that reset the memory
dt_constant = torch.full((L,), dt_varying.mean().item(), dtype=torch.float64)
M_varying, M_constant = decay_mask(dt_varying, A), decay_mask(dt_constant, A)

# %% [markdown]
# Ranks of the blocks below the diagonal, `M[t0:, :t0]` for every split t0, and
# the same for the whole matrix `M ∘ (C B^T)` with random B and C of n columns.

# %%
B, C = (
    torch.randn(L, n, dtype=torch.float64),
    torch.randn(L, n, dtype=torch.float64),
)
full = M_varying * (C @ B.T)


def max_block_rank(W):
    return max(
        torch.linalg.matrix_rank(W[t0:, :t0]).item()
        for t0 in range(1, W.shape[0])
    )


ranks = {"mask": max_block_rank(M_varying), "full": max_block_rank(full)}
print(
    f"largest rank of a block below the diagonal: M {ranks['mask']}, M ∘ (C "
    f"B^T) {ranks['full']} (n = {n}), "
    f"out of blocks up to {L // 2} x {L // 2}"
)

# %%
fig = plt.figure(figsize=(6.8, 5.6), layout="constrained")
grid = fig.add_gridspec(2, 2, height_ratios=[1, 2])
ax_dt = fig.add_subplot(grid[0, :])
ax_dt.bar(range(L), dt_varying, color="tab:blue", label="varying $dt_t$")
ax_dt.axhline(
    dt_constant[0].item(), color="tab:orange", label="constant dt (same mean)"
)
ax_dt.set(
    xlabel="token t",
    ylabel="$dt_t$",
    yscale="log",
    title="Step sizes of one head ($A = -1$)",
)
ax_dt.legend()
for col, (M, title) in enumerate(
    (
        (M_varying, "mask $M$, varying $dt_t$"),
        (M_constant, r"constant $dt$: $M = \gamma^{t-s}$"),
    )
):
    ax = fig.add_subplot(grid[1, col])
    image = ax.imshow(M, cmap="viridis", vmin=0, vmax=1)
    ax.set(title=title, xlabel="source token s", ylabel="target token t")
    fig.colorbar(image, ax=ax, shrink=0.85, label="$M[t, s]$")
fig.savefig("mask.svg", facecolor="white")

with open("results.json", "w") as f:
    json.dump(
        {
            "L": L,
            "n": n,
            "max_rank_mask": ranks["mask"],
            "max_rank_full": ranks["full"],
            "largest_block": L // 2,
        },
        f,
        indent=2,
    )
