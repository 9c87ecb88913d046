"""SSD on a GPU: our chunk-parallel kernels against mamba_ssm's chunked SSD
kernel and against linear attention.

You will see the time of the forward and of the forward + backward pass of one
SSD layer (bfloat16, b = 8, h = 32 heads of p = 64 channels, one group of B and
C with state n = 64 and 128, D, z, a dt bias and softplus), as the sequence
grows, for:
* ``ssd`` from this package (the chunk-parallel linear attention kernels with a
  per-token decay);
* mamba_ssm's Triton ``mamba_chunk_scan_combined`` with chunks of 256 (when it
  is installed);
* ``linear_attention`` with a decay, at a step size constant per head, which is
  the same layer (timed on inputs already in its layout, without the gate and
  the skip connection).
It prints and plots every time relative to ours. Only a GPU run says anything
about speed; on a CPU the snippet runs tiny sizes.
"""

# requires: cuda
# %%
import json

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from kernels import linear_attention, ssd
from kernels.bench import time_ms

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
mamba_chunk_scan_combined = None
if DEVICE == "cuda":  # mamba_ssm runs on CUDA only
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError:  # not installed, or its CUDA extension does not load
        pass

if DEVICE == "cuda":
    b, h, p, STATES, LENGTHS, DTYPE = (
        8,
        32,
        64,
        [64, 128],
        [512, 1024, 2048, 4096, 8192, 16384],
        torch.bfloat16,
    )
else:
    b, h, p, STATES, LENGTHS, DTYPE = 1, 2, 8, [8], [32, 64], torch.float32
WHERE = (
    torch.cuda.get_device_name()
    if DEVICE == "cuda"
    else "CPU (timings say nothing about GPUs)"
)
print(
    f"device: {WHERE}; mamba_ssm mamba_chunk_scan_combined: "
    + (
        "found"
        if mamba_chunk_scan_combined
        else "not found"
        if DEVICE == "cuda"
        else "not used on a CPU"
    )
)


# %% [markdown]
# The contenders, each a function of the same SSD inputs that returns
# `y [b, L, h, p]`-sized output. Linear attention gets its own inputs, prepared
# outside the timed call: `q = C`, `k = B` repeated for every head, `v = dt x`,
# and `decay = dt A` for a dt constant per head.


# %%
def ours(x, dt, A, B, C, D, z, dt_bias):
    return ssd(x, dt, A, B, C, 256, D=D, z=z, dt_bias=dt_bias, dt_softplus=True)


def mamba(x, dt, A, B, C, D, z, dt_bias):
    return mamba_chunk_scan_combined(
        x,
        dt,
        A,
        B,
        C,
        chunk_size=256,
        D=D,
        z=z,
        dt_bias=dt_bias,
        dt_softplus=True,
    )


LAYERS = {"ssd (ours)": ours}
if mamba_chunk_scan_combined is not None:
    LAYERS["mamba_ssm mamba_chunk_scan_combined"] = mamba
LINEAR = "linear_attention (constant dt)"


def make_inputs(L, n):
    x, z = (
        torch.randn(b, L, h, p, device=DEVICE, dtype=DTYPE) for _ in range(2)
    )
    dt = torch.randn(b, L, h, device=DEVICE, dtype=DTYPE)
    A = -torch.exp(torch.rand(h, device=DEVICE) * 2)
    B, C = (
        torch.randn(b, L, 1, n, device=DEVICE, dtype=DTYPE) for _ in range(2)
    )
    D, dt_bias = torch.randn(h, device=DEVICE), torch.randn(h, device=DEVICE)
    return [t.requires_grad_() for t in (x, dt, A, B, C, D, z, dt_bias)]


def make_linear_inputs(L, n):
    dt_head = F.softplus(torch.randn(h, device=DEVICE))
    q, k = (
        torch.randn(b, 1, L, n, device=DEVICE, dtype=DTYPE)
        .expand(b, h, L, n)
        .contiguous()
        for _ in range(2)
    )
    v = (dt_head[:, None, None] * torch.randn(b, h, L, p, device=DEVICE)).to(
        DTYPE
    )
    decay = dt_head * -torch.exp(torch.rand(h, device=DEVICE) * 2)
    return [t.requires_grad_() for t in (q, k, v)], decay


def runner(fn, inputs, mode):
    if mode == "fwd":
        return lambda: fn(*inputs)
    out = fn(*inputs)
    grad = torch.randn_like(out)

    def fwd_bwd():
        for t in inputs:
            if isinstance(t, torch.Tensor):
                t.grad = None
        fn(*inputs).backward(grad)

    return fwd_bwd


# %%
MODES = ("fwd", "fwd+bwd")
points = []
for n in STATES:
    for L in LENGTHS:
        inputs = make_inputs(L, n)
        (q, k, v), decay = make_linear_inputs(L, n)
        for mode in MODES:
            point = {"mode": mode, "n": n, "L": L, "ms": {}}
            for name, fn in LAYERS.items():
                point["ms"][name] = time_ms(
                    runner(fn, inputs, mode), warmup=10, rep=25
                )
            point["ms"][LINEAR] = time_ms(
                runner(
                    lambda q, k, v: linear_attention(
                        q, k, v, decay=decay, scale=1.0
                    ),
                    [q, k, v],
                    mode,
                ),
                warmup=10,
                rep=25,
            )
            point["ratio"] = {
                name: ms / point["ms"]["ssd (ours)"]
                for name, ms in point["ms"].items()
                if name != "ssd (ours)"
            }
            points.append(point)
            print(
                f"{mode:7s} n={n:3d} L={L:5d}  ours "
                f"{point['ms']['ssd (ours)']:8.3f} ms  "
                + "  ".join(
                    f"{name}: {r:5.2f}x our time"
                    for name, r in point["ratio"].items()
                ),
                flush=True,
            )
        del inputs, q, k, v
        if DEVICE == "cuda":
            torch.cuda.empty_cache()

# %%
names = list(LAYERS) + [LINEAR]
fig, axes = plt.subplots(
    2,
    len(MODES),
    figsize=(6.8, 7.6),
    squeeze=False,
    sharex=True,
    layout="constrained",
)
for col, mode in enumerate(MODES):
    for n, style in zip(STATES, ("-", "--")):
        rows = [p_ for p_ in points if p_["mode"] == mode and p_["n"] == n]
        for i, name in enumerate(names):
            axes[0][col].plot(
                [r["L"] for r in rows],
                [r["ms"][name] for r in rows],
                "o" + style,
                ms=3,
                color=f"C{i}",
                label=f"{name}, n = {n}",
            )
            if name != "ssd (ours)":
                axes[1][col].plot(
                    [r["L"] for r in rows],
                    [r["ratio"][name] for r in rows],
                    "o" + style,
                    ms=3,
                    color=f"C{i}",
                    label=f"{name}, n = {n}",
                )
    axes[0][col].set(title=f"{mode}: time", ylabel="time (ms)", yscale="log")
    axes[1][col].axhline(1.0, color="black", lw=1)
    axes[1][col].set(
        title=f"{mode}: other / ours\n(above 1: ours is faster)",
        ylabel="time ratio (other / ours)",
        yscale="log",
    )
    for ax in axes[:, col]:
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[1][col].set_xlabel("sequence length L (tokens)")
# One legend for all panels, below them: each layer at each state size.
fig.legend(
    *axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncol=2
)
fig.suptitle(
    f"SSD layer on {WHERE}:\n"
    f"{str(DTYPE).replace('torch.', '')}, b = {b}, h = {h}, p = {p}"
)
fig.savefig("ssd_time.svg", facecolor="white")

with open("ssd_time.md", "w") as f:
    f.write(
        "| mode | n | L | "
        + " | ".join(f"{name} (ms)" for name in names)
        + " | "
        + " | ".join(f"{name} / ours" for name in names[1:])
        + " |\n"
    )
    f.write("|---|---:|---:|" + "---:|" * (2 * len(names) - 1) + "\n")
    for p_ in points:
        f.write(
            f"| {p_['mode']} | {p_['n']} | {p_['L']} | "
            + " | ".join(f"{p_['ms'][name]:.3f}" for name in names)
            + " | "
            + " | ".join(f"{p_['ratio'][name]:.2f}" for name in names[1:])
            + " |\n"
        )
if "mamba_ssm mamba_chunk_scan_combined" in LAYERS:
    lowest = {
        mode: min(
            p_["ratio"]["mamba_ssm mamba_chunk_scan_combined"]
            for p_ in points
            if p_["mode"] == mode
        )
        for mode in MODES
    }
    print(
        "lowest speed-up over mamba_ssm's SSD: "
        + ", ".join(f"{m} {r:.2f}x" for m, r in lowest.items())
        + " (target 1.0x)"
    )
with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "where": WHERE,
            "mamba_ssm": mamba_chunk_scan_combined is not None,
            "points": points,
        },
        f,
        indent=2,
    )
