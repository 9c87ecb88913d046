"""Causal attention maps of softmax and linear attention on a copy-like task.

You will see:
* one causal attention map (T x T weights) for each of softmax, ``elu + 1``,
  ReLU and positive random features, on a sequence where each query equals one
  earlier key;
* that these weights are the ones the kernels apply: ``flash_attention`` and
  ``linear_attention(..., normalize=True)`` give the same outputs as the maps
  times ``v``;
* how much weight each map puts on the matching key, and its entropy against
  that of uniform weights over the visible keys.
"""

# %%
import json
import math

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import LogNorm

from kernels import flash_attention, linear_attention
from kernels.linear_attention import (
    elu_plus_one,
    orthogonal_gaussian,
    positive_random_features,
    relu,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
T, D, M = 64, 64, 64  # small enough to read the map; M random features
# draws on the CPU, then moved: the same numbers everywhere
generator = torch.Generator().manual_seed(0)

# %% [markdown]
# The task: random keys, and each query is a copy of one key at or before its
# own position, chosen at random. The right answer for query `t` is to attend to
# that key alone.

# %%
k = torch.randn(1, 1, T, D, generator=generator)
v = torch.randn(1, 1, T, D, generator=generator)
# <= t
target = torch.tensor(
    [torch.randint(t + 1, (1,), generator=generator).item() for t in range(T)]
)
q = k[:, :, target]  # query t equals key target[t]
W = orthogonal_gaussian(M, D, generator=generator)
q, k, v, W = q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), W.to(DEVICE)

FEATURE_MAPS = {
    "elu + 1": elu_plus_one,
    "ReLU": relu,
    f"positive random features, m = {M}": lambda x: positive_random_features(
        x * D**-0.25, W
    ),
}
# key s <= query t
visible = torch.ones(T, T, dtype=torch.bool, device=DEVICE).tril()

# %% [markdown]
# The maps, written out as `[T, T]` matrices: softmax of the scaled scores, and
# the normalised feature products
# `phi(q_t) . phi(k_s) / sum_{s' <= t} phi(q_t) . phi(k_s')`.

# %%
maps = {
    "softmax": torch.softmax(
        (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(
            ~visible, -math.inf
        ),
        -1,
    )
}
for name, phi in FEATURE_MAPS.items():
    scores = (phi(q) @ phi(k).transpose(-1, -2)) * visible  # [1, 1, T, T]
    maps[name] = scores / scores.sum(-1, keepdim=True)

# %% [markdown]
# The kernels apply exactly these weights: `flash_attention` (causal softmax)
# and `linear_attention(phi(q), phi(k), v, normalize=True)` (the chunk-wise
# kernel with the normaliser) against the maps times `v`.

# %%
kernel_diff = {
    "softmax": (flash_attention(q, k, v, causal=True) - maps["softmax"] @ v)
    .abs()
    .max()
    .item()
}
for name, phi in FEATURE_MAPS.items():
    o = linear_attention(phi(q), phi(k), v, normalize=True)
    kernel_diff[name] = (o - maps[name] @ v).abs().max().item()
for name, diff in kernel_diff.items():
    print(f"{name:34s} kernel output vs map @ v, max |difference| {diff:.1e}")

# %% [markdown]
# Weight on the matching key, and entropy, averaged over the queries; for
# reference, uniform weights over the `t + 1` visible keys have entropy
# `log(t + 1)`.

# %%
rows = torch.arange(T, device=DEVICE)
uniform_entropy = torch.log(rows + 1.0).mean().item()
stats = {}
for name, p in maps.items():
    p = p[0, 0]
    stats[name] = {
        "match_weight": p[rows, target.to(DEVICE)].mean().item(),
        "entropy": -torch.special.xlogy(p, p).sum(-1).mean().item(),
        "argmax_is_match": (p.argmax(-1).cpu() == target)
        .double()
        .mean()
        .item(),
    }
    print(
        f"{name:34s} weight on the match {stats[name]['match_weight']:.3f}, "
        f"entropy {stats[name]['entropy']:.2f} nats (uniform "
        f"{uniform_entropy:.2f}), largest weight on the match in "
        f"{stats[name]['argmax_is_match']:.0%} of the rows"
    )

# %%
fig, axes = plt.subplots(2, 2, figsize=(6.8, 7.6), layout="constrained")
norm = LogNorm(vmin=1e-3, vmax=1)
# grey: keys a query cannot see
cmap = plt.get_cmap("magma").with_extremes(bad="#dddddd", under="black")
for ax, (name, p) in zip(axes.flat, maps.items()):
    shown = p[0, 0].cpu().masked_fill(~visible.cpu(), math.nan)
    image = ax.imshow(shown, norm=norm, cmap=cmap, interpolation="nearest")
    ax.scatter(
        target,
        range(T),
        s=22,
        facecolors="none",
        edgecolors="cyan",
        linewidths=0.7,
    )
    ax.set(
        title=f"{name}\nweight on the match {stats[name]['match_weight']:.2f}",
        xlabel="key position $s$",
        ylabel="query position $t$",
    )
fig.colorbar(
    image,
    ax=axes,
    shrink=0.85,
    extend="min",
    label="attention weight (log scale)",
)
fig.suptitle(
    f"Causal attention maps, $T = {T}$, $d = {D}$;\n"
    "circles: the key each query copies"
)
fig.savefig("attention_maps.svg")

# %%
with open("maps.md", "w") as f:
    f.write(
        "| map | kernel output vs map @ v, max abs. diff. | weight on the "
        "match | entropy (nats) | rows with the largest weight on the match "
        "|\n|---|---:|---:|---:|---:|\n"
    )
    for name, st in stats.items():
        f.write(
            f"| {name} | {kernel_diff[name]:.1e} | {st['match_weight']:.3f} | "
            f"{st['entropy']:.2f} | {st['argmax_is_match']:.0%} |\n"
        )
    f.write(
        f"| uniform over the visible keys | | | {uniform_entropy:.2f} | |\n"
    )

with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "T": T,
            "d": D,
            "m": M,
            "uniform_entropy": round(uniform_entropy, 2),
            "kernel_max_abs_diff": max(kernel_diff.values()),
            "kernel_diff": kernel_diff,
            "softmax_match": round(stats["softmax"]["match_weight"], 3),
            "elu_match": round(stats["elu + 1"]["match_weight"], 3),
            "relu_match": round(stats["ReLU"]["match_weight"], 3),
            "prf_match": round(
                stats[f"positive random features, m = {M}"]["match_weight"], 3
            ),
            "prf_argmax_is_match": round(
                100
                * stats[f"positive random features, m = {M}"]["argmax_is_match"]
            ),
            "softmax_entropy": round(stats["softmax"]["entropy"], 2),
            "elu_entropy": round(stats["elu + 1"]["entropy"], 2),
            "relu_entropy": round(stats["ReLU"]["entropy"], 2),
            "stats": stats,
        },
        f,
        indent=2,
    )
