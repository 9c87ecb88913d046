"""Attention dilution: how far the weights of softmax and linear attention
spread as T grows.

You will see:
* the attention maps, row-normalised weights ``a_ts`` over the keys ``s <= t``,
  of causal softmax attention, linear attention with ``elu(x) + 1`` features,
  linear attention with RetNet's decay, and block-local softmax attention
  (TransNormer's DiagAttention), on the same queries and keys, whose neighbours
  are similar to each other;
* each map checked against the kernel that computes it:
  ``linear_attention(..., normalize=True)`` with and without decay, and
  ``flash_attention`` run on the blocks;
* the spread of each row, as its entropy in nats and as the share of its weight
  on the last ``W`` keys, against the sequence length, beside a uniform row for
  reference.
"""

# %%
import json
import math

import matplotlib.pyplot as plt
import torch

from kernels import flash_attention, linear_attention
from kernels.linear_attention import elu_plus_one

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LENGTHS = (
    [64, 128, 256, 512, 1024, 2048, 4096, 8192]
    if DEVICE == "cuda"
    else [64, 128, 256, 512, 1024, 2048, 4096]
)
# head dim, local window (and block) length, similarity of neighbouring tokens
K, W, RHO = (
    64,
    32,
    0.9,
)
GAMMA = 1 - 2.0**-5  # RetNet's decay for its first head
torch.manual_seed(0)

# %% [markdown]
# Queries and keys with local structure, a stand-in for the hidden states of a
# trained model in which neighbouring tokens are alike: a Gaussian AR(1)
# sequence `x_t = RHO x_{t-1} + noise` with unit variance per coordinate, so
# that `x_t . x_s / K` is about `RHO^|t-s|`; `q = k = x`.


# %%
def local_tokens(T: int) -> torch.Tensor:
    """``[T, K]``: a stationary AR(1) sequence of standard normal vectors."""
    noise = torch.randn(T, K, device=DEVICE)
    x = torch.empty(T, K, device=DEVICE)
    x[0] = noise[0]
    for t in range(1, T):
        x[t] = RHO * x[t - 1] + math.sqrt(1 - RHO**2) * noise[t]
    return x


# %% [markdown]
# The four attention maps, each a `[T, T]` matrix whose row `t` holds the
# weights of the keys `s <= t` and sums to one. Block-local softmax is softmax
# attention restricted to the non-overlapping block of `W` positions that holds
# the query.


# %%
def causal_mask(T: int) -> torch.Tensor:
    return torch.ones(T, T, dtype=torch.bool, device=DEVICE).tril()


def softmax_map(q, k, mask):
    scores = (q @ k.T) * K**-0.5
    return torch.softmax(scores.masked_fill(~mask, -math.inf), dim=-1)


def linear_map(q, k, gamma=1.0):
    T = q.shape[0]
    lag = (
        torch.arange(T, device=DEVICE)[:, None]
        - torch.arange(T, device=DEVICE)[None, :]
    ).clamp_min(0)
    # weights gamma^(t-s) phi(q_t).phi(k_s)
    w = (elu_plus_one(q) @ elu_plus_one(k).T) * causal_mask(T) * gamma**lag
    return w / w.sum(dim=-1, keepdim=True)


def attention_maps(x):
    T = x.shape[0]
    block = torch.arange(T, device=DEVICE) // W
    same_block = block[:, None] == block[None, :]
    return {
        "softmax": softmax_map(x, x, causal_mask(T)),
        "linear, elu(x) + 1": linear_map(x, x),
        f"linear with decay γ = {GAMMA:.4g}": linear_map(x, x, GAMMA),
        f"block-local softmax (blocks of {W})": softmax_map(
            x, x, causal_mask(T) & same_block
        ),
    }


# %% [markdown]
# Each map is the one the kernels compute: multiplying it by values gives the
# output of `linear_attention(..., normalize=True)` (with the decay as its log),
# and the block-local map gives `flash_attention` run with every block folded
# into a head of its own.

# %%
T0 = 2 * W
x = local_tokens(T0)
values = torch.randn(T0, K, device=DEVICE)
maps = attention_maps(x)
as_bhtd = lambda t: t[None, None]  # [T, d] -> [1, 1, T, d]
by_kernel = {
    "linear, elu(x) + 1": linear_attention(
        *map(as_bhtd, (elu_plus_one(x), elu_plus_one(x), values)),
        normalize=True,
    ),
    f"linear with decay γ = {GAMMA:.4g}": linear_attention(
        *map(as_bhtd, (elu_plus_one(x), elu_plus_one(x), values)),
        normalize=True,
        decay=torch.tensor([math.log(GAMMA)], device=DEVICE),
    ),
    f"block-local softmax (blocks of {W})": flash_attention(
        *(t.view(1, T0 // W, W, K) for t in (x, x, values)), causal=True
    ).reshape(1, 1, T0, K),  # blocks as heads
}
kernel_diff = {}
for name, out in by_kernel.items():
    kernel_diff[name] = (maps[name] @ values - out[0, 0]).abs().max().item()
    print(f"{name:35s} map @ v vs kernel: max |diff| {kernel_diff[name]:.1e}")

# %% [markdown]
# The spread of a row of weights `a_t`: its entropy `-sum_s a_ts log a_ts` in
# nats (log of the number of keys for a uniform row, zero for a single key), and
# the share of its weight on the `W` most recent keys `t - W < s <= t`. Both are
# averaged over the queries of the second half, `t >= T/2`, each of which sees
# at least `T/2` keys.


# %%
def spread(a):
    T = a.shape[0]
    t = torch.arange(T, device=DEVICE)
    entropy = -(a * torch.log(a.clamp_min(1e-30))).sum(dim=-1)  # 0 log 0 = 0
    lag = t[:, None] - t[None, :]
    local = (a * ((lag >= 0) & (lag < W))).sum(dim=-1)
    rows = t >= T // 2
    return entropy[rows].mean().item(), local[rows].mean().item()


names = list(maps)
short = dict(zip(names, ("softmax", "linear", "linear+decay", "block-local")))
print(
    "entropy (nats) and share of weight on the last W keys, mean over t >= T/2"
)
print(f"{'T':>5s}  " + "".join(f"{short[name]:>16s}" for name in names))
curves = {name: {"entropy": [], "local": []} for name in names + ["uniform"]}
for T in LENGTHS:
    x = local_tokens(T)
    for name, a in attention_maps(x).items():
        entropy, local = spread(a)
        curves[name]["entropy"].append(entropy)
        curves[name]["local"].append(local)
    # keys seen by the queries t >= T/2
    seen = torch.arange(T // 2, T, dtype=torch.float64) + 1
    curves["uniform"]["entropy"].append(torch.log(seen).mean().item())
    curves["uniform"]["local"].append((W / seen).clamp(max=1).mean().item())
    print(
        f"{T:5d}  "
        + "".join(
            f"{curves[name]['entropy'][-1]:7.2f}, "
            f"{100 * curves[name]['local'][-1]:5.1f}%"
            for name in names
        )
    )

# %% [markdown]
# The two measures against the length, and one row in full: the weights of the
# last query of the longest sequence against the distance `t - s` to each key.

# %%
fig, (ax_h, ax_l, ax_row) = plt.subplots(
    3, 1, figsize=(6.8, 10.4), layout="constrained"
)
styles = dict(zip(names, ("C0", "C3", "C2", "C1")))
for name in names:
    ax_h.plot(
        LENGTHS, curves[name]["entropy"], "o-", color=styles[name], label=name
    )
    ax_l.plot(
        LENGTHS, curves[name]["local"], "o-", color=styles[name], label=name
    )
for ax, key in ((ax_h, "entropy"), (ax_l, "local")):
    ax.plot(
        LENGTHS,
        curves["uniform"][key],
        "k--",
        lw=1,
        label="uniform row",
        zorder=3,
    )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length T (tokens)")
ax_h.set(
    ylabel="mean entropy of a row (nats)",
    title=r"Entropy of the attention rows, $t \geq T/2$",
)
ax_l.set(
    yscale="log",
    ylabel=f"weight on the last {W} keys (fraction)",
    title=f"Share of weight within {W} tokens, $t \\geq T/2$",
)
# by lag t - s = 0, 1, ...
last = {name: a[-1].flip(0).cpu() for name, a in attention_maps(x).items()}
for name, row in last.items():
    lags = torch.arange(row.numel())
    keep = row > 0
    ax_row.plot(lags[keep] + 1, row[keep], color=styles[name], lw=1, label=name)
ax_row.set(
    xscale="log",
    yscale="log",
    ylim=(1e-8, 2),
    xlabel="distance to the key, t - s + 1 (tokens)",
    ylabel="attention weight $a_{ts}$",
    title=f"Weights of the last query, T = {LENGTHS[-1]}",
)
for ax in (ax_h, ax_l, ax_row):
    ax.grid(alpha=0.3)
# One legend for the three panels, below them.
fig.legend(
    *ax_h.get_legend_handles_labels(), loc="outside lower center", ncol=2
)
fig.savefig("dilution.svg")

# %%
longest = {
    name: {
        "entropy_nats": curves[name]["entropy"][-1],
        "local_share": curves[name]["local"][-1],
    }
    for name in names + ["uniform"]
}
with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "lengths": LENGTHS,
            "K": K,
            "W": W,
            "rho": RHO,
            "gamma": GAMMA,
            "max_length": LENGTHS[-1],
            "kernel_max_abs_diff": max(kernel_diff.values()),
            "softmax_local_percent_at_max": 100
            * longest["softmax"]["local_share"],
            "linear_local_percent_at_max": 100
            * longest["linear, elu(x) + 1"]["local_share"],
            "uniform_local_percent_at_max": 100
            * longest["uniform"]["local_share"],
            "decay_local_percent_at_max": 100
            * longest[names[2]]["local_share"],
            "softmax_entropy_at_max": longest["softmax"]["entropy_nats"],
            "linear_entropy_at_max": longest["linear, elu(x) + 1"][
                "entropy_nats"
            ],
            "uniform_entropy_at_max": longest["uniform"]["entropy_nats"],
            "decay_entropy_at_max": longest[names[2]]["entropy_nats"],
            "block_entropy_at_max": longest[names[3]]["entropy_nats"],
            "softmax_local_percent_at_min": 100 * curves["softmax"]["local"][0],
            "min_length": LENGTHS[0],
            "curves": curves,
        },
        f,
        indent=2,
    )
