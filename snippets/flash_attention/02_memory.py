"""Peak memory: the materialised score matrix against the tiled algorithm.

You will see the extra memory one attention call needs beyond its inputs, as the
sequence grows: plain attention keeps the ``[T, T]`` scores (and their softmax)
of every head, so its footprint grows with ``T**2``; the tiled algorithm keeps
only ``o``, the log-sum-exp and one tile per program, so its footprint grows
with ``T``.

On a GPU the tiled side is the Triton kernel, measured with CUDA's allocator
statistics. On a CPU it is the blockwise PyTorch reference (the kernel's loop,
written in PyTorch), and PyTorch's memory tracker counts the bytes of every
tensor alive during the call.
"""

# %%
import json

import matplotlib.pyplot as plt
import torch

from kernels import flash_attention
from kernels.flash_attention import attention_blockwise
from kernels.bench import peak_memory_bytes

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LENGTHS = (
    [1024, 2048, 4096, 8192, 16384]
    if DEVICE == "cuda"
    else [128, 256, 512, 1024, 2048]
)
B, H, D = 1, 16, 64
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32


# %% [markdown]
# Plain attention as most code writes it, and the tiled one for this device.


# %%
def naive_attention(q, k, v):
    # [B, H, T, T]: the matrix tiling avoids
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    return torch.softmax(s, dim=-1) @ v


tiled_attention = flash_attention if DEVICE == "cuda" else attention_blockwise
tiled_name = (
    "flash_attention (Triton)"
    if DEVICE == "cuda"
    else "blockwise reference (PyTorch)"
)


# %% [markdown]
# Memory is measured by `kernels.bench.peak_memory_bytes(fn)`, the one memory
# helper of this book: the peak number of bytes allocated while `fn()` runs,
# beyond what was allocated before the call. On a GPU it reads CUDA's allocator
# statistics; on a CPU, PyTorch's memory tracker counts the tensors alive during
# the call. Measure both at every length, with random inputs of shape
# `[1, 16, T, 64]`.

# %%
rows = []
for T in LENGTHS:
    q, k, v = (
        torch.randn(B, H, T, D, device=DEVICE, dtype=DTYPE) for _ in range(3)
    )
    naive_mib = peak_memory_bytes(lambda: naive_attention(q, k, v)) / 2**20
    tiled_mib = peak_memory_bytes(lambda: tiled_attention(q, k, v)) / 2**20
    rows.append((T, naive_mib, tiled_mib))
    print(
        f"T = {T:6d}: naive {naive_mib:10.1f} MiB   {tiled_name} "
        f"{tiled_mib:8.1f} MiB   "
        f"ratio {naive_mib / tiled_mib:6.1f}x",
        flush=True,
    )

# %%
lengths, naive, tiled = zip(*rows)
fig, ax = plt.subplots(figsize=(6.8, 4.2))
ax.loglog(lengths, naive, "o-", label="naive attention (scores materialised)")
ax.loglog(lengths, tiled, "s-", label=tiled_name)
ax.set(
    xlabel="sequence length T (tokens)",
    ylabel="peak extra memory (MiB)",
    title=f"One attention call, B={B}, H={H}, D={D}, "
    f"{str(DTYPE).replace('torch.', '')}, {DEVICE}",
)
ax.set_xticks(lengths, [str(t) for t in lengths])
# only the measured lengths as ticks
ax.xaxis.set_minor_locator(plt.NullLocator())
ax.grid(alpha=0.3, which="both")
ax.legend()
fig.tight_layout()
fig.savefig("peak_memory.svg")

with open("peak_memory.md", "w") as f:
    f.write(
        f"| T | naive (MiB) | {tiled_name} (MiB) | ratio "
        "|\n|---:|---:|---:|---:|\n"
    )
    for T, n, t in rows:
        f.write(f"| {T} | {n:.1f} | {t:.1f} | {n / t:.1f}x |\n")
with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "max_length": lengths[-1],
            "ratio_at_max_length": round(naive[-1] / tiled[-1], 1),
            "rows": [
                {"T": T, "naive_mib": n, "tiled_mib": t} for T, n, t in rows
            ],
        },
        f,
        indent=2,
    )
