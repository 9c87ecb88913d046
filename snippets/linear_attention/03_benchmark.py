"""The kernels on a GPU: linear_attention (chunk-wise) against flash_attention (softmax).

You will see the time and the peak memory of the forward and of the forward + backward pass
of one causal attention layer, in bfloat16, as the sequence grows with the number of tokens per
batch fixed (B * T = 16384) and the hidden size fixed (H * K = 2048), for head dims 64 and 128,
and the crossover: the length from which the linear attention kernel is the faster one.
Only a GPU run says anything about speed; on a CPU the snippet runs tiny sizes.
"""
# requires: cuda
# %%
import json

import matplotlib.pyplot as plt
import torch

from kernels import flash_attention, linear_attention
from kernels.bench import peak_memory_bytes, time_ms

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cuda":  # 16k tokens per batch, hidden size 2048 (H = 2048 // K)
    LENGTHS, HEAD_DIMS, TOKENS, HIDDEN, DTYPE = [256, 512, 1024, 2048, 4096, 8192, 16384], [64, 128], 16384, 2048, torch.bfloat16
else:
    LENGTHS, HEAD_DIMS, TOKENS, HIDDEN, DTYPE = [32, 64], [32], 64, 64, torch.float32
WHERE = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (timings say nothing about GPUs)"
print(f"device: {WHERE}")


# %% [markdown]
# The two contenders, both causal and with the same `[B, H, T, K]` inputs (values with V = K);
# the linear attention layer uses RetNet's per-head decays, which cost nothing extra.

# %%
def retnet_decay(H):
    """RetNet's per-head decays ``gamma_h = 1 - 2^(-5-h)``, as log-decays ``[H]``."""
    return torch.log(1 - 2.0 ** (-5 - torch.arange(H, device=DEVICE)))


LAYERS = {
    "flash_attention (softmax)": lambda q, k, v, decay: flash_attention(q, k, v, causal=True),
    "linear_attention (chunk-wise)": lambda q, k, v, decay: linear_attention(q, k, v, decay=decay),
}


# %% [markdown]
# Every (mode, K, T) point for both layers.

# %%
def runner(layer, q, k, v, decay, mode):
    if mode == "fwd":
        return lambda: layer(q, k, v, decay)
    do = torch.randn_like(v)

    def fwd_bwd():
        for x in (q, k, v):
            x.grad = None
        layer(q, k, v, decay).backward(do)
    return fwd_bwd


points = []
for K in HEAD_DIMS:
    H = HIDDEN // K
    for T in LENGTHS:
        B = max(1, TOKENS // T)
        q, k, v = ((torch.randn(B, H, T, K, device=DEVICE) * s).to(DTYPE).requires_grad_()
                   for s in (K ** -0.25, K ** -0.25, 1.0))  # q and k scaled: moderate softmax scores
        decay = retnet_decay(H)
        for mode in ("fwd", "fwd+bwd"):
            point = {"mode": mode, "K": K, "T": T, "B": B, "H": H, "ms": {}, "mib": {}}
            for name, layer in LAYERS.items():
                fn = runner(layer, q, k, v, decay, mode)
                point["ms"][name], point["mib"][name] = time_ms(fn), peak_memory_bytes(fn) / 2**20
            points.append(point)
            print(f"{mode:7s} K={K:3d} T={T:5d} B={B:3d}  " + "  ".join(
                f"{n}: {point['ms'][n]:7.3f} ms {point['mib'][n]:7.1f} MiB" for n in LAYERS), flush=True)


# %% [markdown]
# The crossover for each mode and head dim: the shortest measured length from which the linear
# attention kernel is faster at every longer length too.

# %%
def crossover(mode, K):
    rows = [p for p in points if p["mode"] == mode and p["K"] == K]
    faster = [p["ms"]["linear_attention (chunk-wise)"] < p["ms"]["flash_attention (softmax)"] for p in rows]
    return next((rows[i]["T"] for i in range(len(rows)) if all(faster[i:])), None)


crossovers = {f"{mode}, K={K}": crossover(mode, K) for mode in ("fwd", "fwd+bwd") for K in HEAD_DIMS}
for key, T in crossovers.items():
    print(f"crossover ({key}): " + (f"T = {T}" if T else "none in the measured range"))

# %%
fig, axes = plt.subplots(2, 2 * len(HEAD_DIMS), figsize=(4.2 * 2 * len(HEAD_DIMS), 7.5), squeeze=False)
for row, mode in enumerate(("fwd", "fwd+bwd")):
    for col, (K, what) in enumerate((K, w) for K in HEAD_DIMS for w in ("ms", "mib")):
        ax = axes[row][col]
        rows = [p for p in points if p["mode"] == mode and p["K"] == K]
        for name in LAYERS:
            ax.plot([p["T"] for p in rows], [p[what][name] for p in rows], "o-", ms=3, label=name)
        if what == "ms" and crossovers[f"{mode}, K={K}"]:
            ax.axvline(crossovers[f"{mode}, K={K}"], color="gray", lw=0.8, ls="--", label="crossover")
        ax.set_xscale("log", base=2)
        ax.set(title=f"{mode}, K=V={K}: {'time' if what == 'ms' else 'peak extra memory'}",
               xlabel="sequence length T (tokens)", ylabel="time (ms)" if what == "ms" else "memory (MiB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
fig.suptitle(f"Triton kernels timed on {WHERE}: causal, {str(DTYPE).replace('torch.', '')}, "
             f"B*T = {TOKENS} tokens, hidden size {HIDDEN}")
fig.tight_layout()
fig.savefig("kernels.svg")

with open("kernels.md", "w") as f:
    names = list(LAYERS)
    f.write("| mode | K | T | B | " + " | ".join(f"{n} (ms)" for n in names)
            + " | " + " | ".join(f"{n} (MiB)" for n in names) + " | softmax time / linear time |\n")
    f.write("|---|---:|---:|---:|" + "---:|" * (2 * len(names) + 1) + "\n")
    for p in points:
        speed = p["ms"][names[0]] / p["ms"][names[1]]
        f.write(f"| {p['mode']} | {p['K']} | {p['T']} | {p['B']} | "
                + " | ".join(f"{p['ms'][n]:.3f}" for n in names) + " | "
                + " | ".join(f"{p['mib'][n]:.1f}" for n in names) + f" | {speed:.2f} |\n")
    f.write("\nCrossover (the shortest length from which linear attention is faster): "
            + "; ".join(f"{key}: {T if T else 'none measured'}" for key, T in crossovers.items()) + ".\n")
with open("results.json", "w") as f:
    json.dump({"device": DEVICE, "where": WHERE, "tokens": TOKENS, "hidden": HIDDEN,
               "crossovers": crossovers, "points": points}, f, indent=2)
