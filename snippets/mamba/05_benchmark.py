"""The selective scan on a GPU: bandwidth achieved, and time against other
scans.

You will see, for Mamba's usual settings (bfloat16 inputs, b = 8, d = 2048 and
5120 channels, n = 16 states, with D, z, a Δ bias and softplus), forward and
forward + backward:
* the bandwidth the kernel achieves, counting every input read once and every
  output written once, against the device-to-device copy bandwidth measured in
  the same run;
* beside it, the special-function evaluations (exponentials, logarithms,
  reciprocals) it achieves per second: about n + 4 per channel and token
  forward, for 8 bytes moved, which can cap the scan below the memory bandwidth;
* its time as the sequence grows, against mamba_ssm's CUDA ``selective_scan_fn``
  (when it is installed) and against the sequential PyTorch scan
  ``selective_scan_ref`` (only at short lengths: it launches a few small kernels
  per token), and the ratios of those times.
Only a GPU run says anything about speed; on a CPU the snippet runs tiny sizes.
"""

# requires: cuda
# %%
import json

import matplotlib.pyplot as plt
import torch

from kernels import selective_scan, selective_scan_step
from kernels.bench import time_ms
from kernels.selective_scan import selective_scan_ref, selective_scan_step_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
selective_scan_fn = selective_state_update = None
if DEVICE == "cuda":  # mamba_ssm's kernels run on CUDA only
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        from mamba_ssm.ops.triton.selective_state_update import (
            selective_state_update,
        )
    except ImportError:  # not installed, or its CUDA extension does not load
        pass

if DEVICE == "cuda":
    b, CHANNELS, n, LENGTHS, DTYPE = (
        8,
        [2048, 5120],
        16,
        [512, 1024, 2048, 4096, 8192, 16384],
        torch.bfloat16,
    )
else:
    b, CHANNELS, n, LENGTHS, DTYPE = 1, [16], 4, [32, 64], torch.float32
# the sequential scan only up to here: L steps of small kernels, and autograd
# keeps every one
REF_MAX_L = 1024
WHERE = (
    torch.cuda.get_device_name()
    if DEVICE == "cuda"
    else "CPU (timings say nothing about GPUs)"
)
print(
    f"device: {WHERE}; mamba_ssm selective_scan_fn: "
    + (
        "found"
        if selective_scan_fn
        else "not found"
        if DEVICE == "cuda"
        else "not used on a CPU"
    )
)


# %% [markdown]
# The yardstick: a device-to-device copy of a large buffer, which reads and
# writes every byte once.


# %%
def copy_gbs() -> float:
    x = torch.empty(
        2**30 if DEVICE == "cuda" else 2**22, dtype=torch.uint8, device=DEVICE
    )
    y = torch.empty_like(x)
    # bytes read + written, per ms -> GB/s
    return 2 * x.numel() / time_ms(lambda: y.copy_(x)) * 1e-6


COPY_GBS = copy_gbs()
print(f"device-to-device copy: {COPY_GBS:.0f} GB/s")


# %% [markdown]
# The bytes a scan cannot avoid moving, with `e` bytes per element of the
# inputs: `u`, Δ and `z` `[b, d, L]` and `B`, `C` `[b, n, L]` read once,
# `out [b, d, L]` written once, and the float32 parameters `A [d, n]`, `D` and
# the Δ bias `[d]`. The backward reads the same inputs plus the output's
# gradient and writes one gradient per input.


# %%
def scan_bytes(d, L, mode):
    e = torch.finfo(DTYPE).bits // 8
    inputs = e * (3 * b * d * L + 2 * b * n * L) + 4 * (d * n + 2 * d)
    fwd = inputs + e * b * d * L
    # + bwd: reads, dout; writes grads
    return fwd if mode == "fwd" else fwd + (inputs + e * b * d * L) + inputs


# %% [markdown]
# The other ceiling: special-function evaluations (each `exp`, `log` and the
# reciprocal inside a sigmoid is one instruction on the GPU's special-function
# units, which issue far fewer per cycle than the FP32 units). Per channel and
# token, our forward evaluates `exp(Δ A)` for each of the `n` states, softplus
# (an `exp` and a `log`) and the gate's sigmoid (an `exp` and a reciprocal):
# `n + 4`. Our backward recomputes the forward's `n` exponentials, evaluates the
# `n` of the next token for the reverse scan, softplus twice, and two sigmoids:
# `2 n + 8`. The same count divides every scan's time, so it is a rate of work,
# not of our instructions.


# %%
def special_ops(d, L, mode):
    per_token = n + 4 if mode == "fwd" else (n + 4) + (2 * n + 8)
    return b * d * L * per_token


SCANS = {
    "selective_scan (ours)": selective_scan,
    "sequential PyTorch scan": selective_scan_ref,
}
if selective_scan_fn is not None:
    SCANS["mamba_ssm selective_scan_fn"] = selective_scan_fn


def make_inputs(d, L):
    u, delta, z = (
        torch.randn(b, d, L, device=DEVICE, dtype=DTYPE) for _ in range(3)
    )
    B, C = (torch.randn(b, n, L, device=DEVICE, dtype=DTYPE) for _ in range(2))
    A = -torch.exp(torch.randn(d, n, device=DEVICE))
    D, delta_bias = torch.randn(d, device=DEVICE), torch.randn(d, device=DEVICE)
    return [x.requires_grad_() for x in (u, delta, A, B, C, D, z, delta_bias)]


def runner(scan, inputs, mode):
    def forward():
        return scan(
            *inputs[:5],
            D=inputs[5],
            z=inputs[6],
            delta_bias=inputs[7],
            delta_softplus=True,
        )

    if mode == "fwd":
        return lambda: forward()
    dout = torch.randn_like(inputs[0])

    def fwd_bwd():
        for x in inputs:
            x.grad = None
        forward().backward(dout)

    return fwd_bwd


# %% [markdown]
# Every (mode, d, L) point for every scan.

# %%
points = []
for d in CHANNELS:
    for L in LENGTHS:
        inputs = make_inputs(d, L)
        for mode in ("fwd", "fwd+bwd"):
            point = {
                "mode": mode,
                "d": d,
                "L": L,
                "bytes": scan_bytes(d, L, mode),
                "special_ops": special_ops(d, L, mode),
                "ms": {},
            }
            for name, scan in SCANS.items():
                if scan is selective_scan_ref and L > REF_MAX_L:
                    continue
                point["ms"][name] = time_ms(runner(scan, inputs, mode))
            point["gbs"] = {
                name: point["bytes"] / ms * 1e-6
                for name, ms in point["ms"].items()
            }
            # per second
            point["gops"] = {
                name: point["special_ops"] / ms * 1e-6
                for name, ms in point["ms"].items()
            }
            point["ratio"] = {
                name: ms / point["ms"]["selective_scan (ours)"]
                for name, ms in point["ms"].items()
                if name != "selective_scan (ours)"
            }
            points.append(point)
            ours = point["gbs"]["selective_scan (ours)"]
            print(
                f"{mode:7s} d={d:4d} L={L:5d}  ours "
                f"{point['ms']['selective_scan (ours)']:8.3f} ms "
                f"{ours:6.0f} GB/s ({ours / COPY_GBS:4.0%} of copy), "
                f"{point['gops']['selective_scan (ours)']:7.1f} G "
                "special-function ops/s  "
                + "  ".join(
                    f"{name}: {r:6.2f}x our time"
                    for name, r in point["ratio"].items()
                ),
                flush=True,
            )
        del inputs
        if DEVICE == "cuda":
            torch.cuda.empty_cache()

# %% [markdown]
# Decoding: one token at batch 1, the state `[1, d, n]` in float32 updated in
# place. Our `selective_scan_step` is one kernel launch; the plain PyTorch step
# `selective_scan_step_ref` is a few small operations, each its own launch;
# mamba_ssm's `selective_state_update` (when installed) is one Triton kernel
# too.

# %%
STEPS = {
    "selective_scan_step (ours)": selective_scan_step,
    "plain PyTorch step": selective_scan_step_ref,
}
if selective_state_update is not None:
    STEPS["mamba_ssm selective_state_update"] = selective_state_update
decode = []
for d in CHANNELS:
    u, delta, z = (
        torch.randn(1, d, device=DEVICE, dtype=DTYPE) for _ in range(3)
    )
    B, C = (torch.randn(1, n, device=DEVICE, dtype=DTYPE) for _ in range(2))
    A = -torch.exp(torch.randn(d, n, device=DEVICE))
    D, delta_bias = torch.randn(d, device=DEVICE), torch.randn(d, device=DEVICE)
    state = torch.zeros(1, d, n, device=DEVICE)
    # mamba_ssm's order: D, z, dt_bias, dt_softplus
    args = (
        state,
        u,
        delta,
        A,
        B,
        C,
        D,
        z,
        delta_bias,
        True,
    )
    with torch.no_grad():
        ms = {
            name: time_ms(lambda: step(*args)) for name, step in STEPS.items()
        }
    decode.append({"d": d, "ms": ms})
    print(
        f"decoding step, b=1 d={d:4d}: "
        + "  ".join(f"{name} {t * 1e3:7.1f} us" for name, t in ms.items())
    )
with open("decode.md", "w") as f:
    f.write(
        "| d | "
        + " | ".join(f"{name} (µs)" for name in STEPS)
        + " | plain step / ours |\n"
    )
    f.write("|---:|" + "---:|" * (len(STEPS) + 1) + "\n")
    for row in decode:
        ms = row["ms"]
        speedup = ms["plain PyTorch step"] / ms["selective_scan_step (ours)"]
        f.write(
            f"| {row['d']} | "
            + " | ".join(f"{ms[name] * 1e3:.1f}" for name in STEPS)
            + f" | {speedup:.1f} |\n"
        )
    f.write(
        f"\nOne token at batch 1, n = {n}, inputs in "
        f"{str(DTYPE).replace('torch.', '')}, the state in float32.\n"
    )

# %% [markdown]
# Two figures: bandwidth against the copy, and time against the other scans
# (with the ratios).

# %%
MODES = ("fwd", "fwd+bwd")
fig, axes = plt.subplots(
    len(MODES),
    len(CHANNELS),
    figsize=(6.8, 7.2),
    squeeze=False,
    sharex=True,
    layout="constrained",
)
for row, mode in enumerate(MODES):
    for col, d in enumerate(CHANNELS):
        ax = axes[row][col]
        rows = [p for p in points if p["mode"] == mode and p["d"] == d]
        for name in SCANS:
            xs = [p["L"] for p in rows if name in p["gbs"]]
            ax.plot(
                xs,
                [p["gbs"][name] for p in rows if name in p["gbs"]],
                "o-",
                ms=3,
                label=name,
            )
        ax.axhline(COPY_GBS, color="black", lw=1, label="device-to-device copy")
        ax.axhline(
            0.7 * COPY_GBS, color="gray", lw=1, ls="--", label="70% of copy"
        )
        ax.set_xscale("log", base=2)
        ax.set(
            title=f"{mode}, d = {d}",
            xlabel="sequence length L (tokens)"
            if row == len(MODES) - 1
            else "",
            ylabel="bandwidth (GB/s)" if col == 0 else "",
        )
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
fig.legend(
    *axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncol=2
)
fig.suptitle(
    f"Selective scan bandwidth on {WHERE}:\n"
    f"{str(DTYPE).replace('torch.', '')}, b = {b}, n = {n}"
)
fig.savefig("bandwidth.svg", facecolor="white")

fig, axes = plt.subplots(
    2,
    len(MODES),
    figsize=(6.8, 7.6),
    squeeze=False,
    sharex=True,
    layout="constrained",
)
for col, mode in enumerate(MODES):
    for d, style in zip(CHANNELS, ("-", "--")):
        rows = [p for p in points if p["mode"] == mode and p["d"] == d]
        for i, name in enumerate(SCANS):
            xs = [p["L"] for p in rows if name in p["ms"]]
            axes[0][col].plot(
                xs,
                [p["ms"][name] for p in rows if name in p["ms"]],
                "o" + style,
                ms=3,
                color=f"C{i}",
                label=f"{name}, d = {d}",
            )
            if name != "selective_scan (ours)":
                axes[1][col].plot(
                    xs,
                    [p["ratio"][name] for p in rows if name in p["ratio"]],
                    "o" + style,
                    ms=3,
                    color=f"C{i}",
                    label=f"{name}, d = {d}",
                )
    axes[0][col].set(
        title=f"{mode}: time",
        ylabel="time (ms)",
        xscale="log",
        yscale="log",
    )
    axes[1][col].axhline(1.0, color="black", lw=1)
    axes[1][col].set(
        title=f"{mode}: other / ours\n(above 1: ours is faster)",
        xlabel="sequence length L (tokens)",
        ylabel="time ratio (other / ours)",
        xscale="log",
        yscale="log",
    )
    for ax in axes[:, col]:
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
# One legend for all panels, below them: each scan at each channel count.
fig.legend(
    *axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncol=2
)
fig.suptitle(
    f"Selective scan time on {WHERE}:\n"
    f"{str(DTYPE).replace('torch.', '')}, b = {b}, n = {n}"
)
fig.savefig("time.svg", facecolor="white")

# %%
names = list(SCANS)
with open("benchmark.md", "w") as f:
    f.write(
        "| mode | d | L | "
        + " | ".join(f"{name} (ms)" for name in names)
        + " | ours (GB/s) | ours / copy | ours (G special-function ops/s) | "
        + " | ".join(f"{name} / ours" for name in names[1:])
        + " |\n"
    )
    f.write("|---|---:|---:|" + "---:|" * (2 * len(names) + 2) + "\n")
    for p in points:
        f.write(
            f"| {p['mode']} | {p['d']} | {p['L']} | "
            + " | ".join(
                f"{p['ms'][name]:.3f}" if name in p["ms"] else "–"
                for name in names
            )
            + f" | {p['gbs'][names[0]]:.0f}"
            + f" | {p['gbs'][names[0]] / COPY_GBS:.0%}"
            + f" | {p['gops'][names[0]]:.0f} | "
            + " | ".join(
                f"{p['ratio'][name]:.2f}" if name in p["ratio"] else "–"
                for name in names[1:]
            )
            + " |\n"
        )
    f.write(
        f"\nDevice-to-device copy measured in the same run: {COPY_GBS:.0f} "
        "GB/s. The sequential PyTorch "
        f"scan is timed only up to L = {REF_MAX_L}. Special-function "
        "operations per channel and token: "
        f"n + 4 = {n + 4} forward, 3 n + 12 = {3 * n + 12} forward + "
        "backward.\n"
    )

fwd_fraction = (
    min(p["gbs"][names[0]] for p in points if p["mode"] == "fwd") / COPY_GBS
)
print(f"lowest forward bandwidth: {fwd_fraction:.0%} of the copy")
fwd_gops = max(p["gops"][names[0]] for p in points if p["mode"] == "fwd")
print(
    f"highest forward rate of special-function operations: {fwd_gops:.0f} G/s"
)
if selective_scan_fn is not None:
    lowest = {
        mode: min(
            p["ratio"]["mamba_ssm selective_scan_fn"]
            for p in points
            if p["mode"] == mode
        )
        for mode in MODES
    }
    print(
        "lowest speed-up over mamba_ssm: "
        + ", ".join(f"{m} {r:.2f}x" for m, r in lowest.items())
        + " (target 1.0x)"
    )
with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "where": WHERE,
            "copy_gbs": COPY_GBS,
            "lowest_fwd_fraction_of_copy": fwd_fraction,
            "highest_fwd_special_gops": fwd_gops,
            "mamba_ssm": selective_scan_fn is not None,
            "points": points,
            "decode": decode,
        },
        f,
        indent=2,
    )
