"""Why decoding one token at a time is
memory-bound: bytes read against FLOPs done.

You will see:
* the parameter count of the target and draft models used on a GPU on this page;
* for one forward of the target over ``n`` new tokens after a context of ``L``
  tokens, the bytes it must read (every weight once, plus the key/value cache)
  and the FLOPs it does, and their ratio, the arithmetic intensity;
* a roofline estimate of what that forward costs relative to a forward over one
  token: flat while the forward is limited by memory bandwidth, growing once it
  is limited by arithmetic.
Nothing is timed: the counts follow from the shapes, and the device's two rates
are datasheet values, named below.
"""

# %%
import json

import matplotlib.pyplot as plt
import torch

from kernels.models import PRESETS, Transformer

BYTES_PER_NUMBER = 2  # bfloat16 weights and cache
# tokens already in the KV cache (the GPU target's context is 512)
CONTEXT = 256
# Datasheet rates of one H100 SXM (dense bfloat16 tensor-core FLOP/s, HBM3
# bytes/s): an example device.
PEAK_FLOPS, PEAK_BYTES = 989e12, 3.35e12
# FLOPs per byte at which a kernel stops being memory-bound
RIDGE = PEAK_FLOPS / PEAK_BYTES


# %% [markdown]
# Count the parameters without allocating them (on PyTorch's "meta" device). A
# forward reads every weight matrix once whatever the number of tokens; of the
# embedding it reads only the rows of the new tokens, which we neglect.


# %%
def weight_counts(config):
    with torch.device("meta"):
        model = Transformer(config)
    total = sum(p.numel() for p in model.parameters())
    # all, and all but the embedding table
    return total, total - model.embed.weight.numel()


counts = {
    name: weight_counts(PRESETS[f"gpu-{name}"]) for name in ("target", "draft")
}
for name, (total, matmul) in counts.items():
    print(
        f"gpu-{name}: {total / 1e6:.1f}M parameters, {matmul / 1e6:.1f}M in "
        "matrix products"
    )


# %% [markdown]
# One forward over `n` new tokens with `L` tokens cached. Matrix products:
# `2 n W` FLOPs for `W` weights. Attention: per layer `Q K^T` and `P V` cost
# `2 n (L + n) dim` FLOPs each, and the cache of `2 (L + n) dim` numbers per
# layer (keys and values) is read once.


# %%
def forward_cost(config, W, n, L):
    """(FLOPs, bytes read) of one forward over n new tokens after L cached ones;
    W weights in matrix products.
    """
    flops = 2 * n * W + 4 * n * (L + n) * config.dim * config.n_layers
    bytes_read = BYTES_PER_NUMBER * (
        W + 2 * (L + n) * config.dim * config.n_layers
    )
    return flops, bytes_read


def roofline_seconds(flops, bytes_read):
    """A lower bound on the time: the slower of doing the arithmetic and reading
    the bytes.
    """
    return max(flops / PEAK_FLOPS, bytes_read / PEAK_BYTES)


target = PRESETS["gpu-target"]
ns = list(range(1, 1025))
costs = [forward_cost(target, counts["target"][1], n, CONTEXT) for n in ns]
intensity = [f / b for f, b in costs]
relative = [roofline_seconds(*c) / roofline_seconds(*costs[0]) for c in costs]
# first n that is compute-bound
ridge_n = next(n for n, i in zip(ns, intensity) if i >= RIDGE)
flops1, bytes1 = costs[0]
print(
    f"one token: {flops1 / 1e6:.0f} MFLOP, {bytes1 / 1e6:.0f} MB read, "
    f"{intensity[0]:.2f} FLOP/byte"
)
print(
    f"ridge point of the example device: {RIDGE:.0f} FLOP/byte, reached at n = "
    f"{ridge_n} tokens per forward"
)
print(
    "roofline cost of a forward over 9 tokens (k = 8 drafts + 1): "
    f"{relative[8]:.3f} x that of one token"
)

# %% [markdown]
# The figure: arithmetic intensity of the forward against `n`, with the example
# device's ridge point, and the roofline time relative to one token.

# %%
fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(6.8, 7.4))
ax1.plot(ns, intensity, label=f"gpu-target forward, $L = {CONTEXT}$")
ax1.axhline(
    RIDGE,
    color="gray",
    ls="--",
    label=f"ridge point of the example device ({RIDGE:.0f})",
)
ax1.set(
    xscale="log",
    yscale="log",
    xlabel="new tokens per forward $n$ (tokens)",
    ylabel="arithmetic intensity (FLOP/byte)",
    title="FLOPs per byte read",
)
ax2.plot(ns, relative, label="roofline time / time for $n = 1$")
ax2.plot(ns, ns, color="gray", ls=":", label="$n$ separate forwards")
ax2.axvline(
    ridge_n, color="gray", ls="--", label=f"compute-bound from $n = {ridge_n}$"
)
ax2.set(
    xscale="log",
    yscale="log",
    xlabel="new tokens per forward $n$ (tokens)",
    ylabel="time (multiples of one token's)",
    title="Cost of verifying $n$ tokens at once (roofline model, not measured)",
)
for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
    ax.legend()
fig.tight_layout()
fig.savefig("intensity.svg")

results = {
    "context": CONTEXT,
    "target_layers": PRESETS["gpu-target"].n_layers,
    "draft_layers": PRESETS["gpu-draft"].n_layers,
    "target_params_millions": round(counts["target"][0] / 1e6, 1),
    "draft_params_millions": round(counts["draft"][0] / 1e6, 1),
    "target_mb_per_token": round(bytes1 / 1e6),
    "target_mflops_per_token": round(flops1 / 1e6),
    "intensity_one_token": round(intensity[0], 2),
    "ridge_flop_per_byte": round(RIDGE),
    "ridge_tokens": ridge_n,
    "relative_cost_9_tokens": round(relative[8], 3),
    "weight_ratio": round(counts["target"][1] / counts["draft"][1], 1),
}
with open("results.json", "w") as f:
    json.dump(results, f, indent=2)
print(json.dumps(results, indent=2))
