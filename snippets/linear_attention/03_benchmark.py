"""The kernels on a GPU: linear_attention (chunk-parallel) against
flash-linear-attention and flash_attention.

You will see the time and the peak memory of the forward and of the forward +
backward pass of one causal attention layer, in bfloat16, as the sequence grows
from 512 to 32768 tokens with the number of tokens per batch fixed (B * T =
32768) and the hidden size fixed (H * K = 2048), for head dims 64 and 128:
* ``linear_attention`` with RetNet's per-head decays and with per-token decays
  (gating);
* flash-linear-attention's ``chunk_simple_gla`` on the same decays, when it is
  installed;
* ``flash_attention`` (softmax);
and the crossover: the length from which our linear attention kernel beats flash
attention. Only a GPU run says anything about speed; on a CPU the snippet runs
tiny sizes.
"""

# requires: cuda
# %%
import json

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from kernels import flash_attention, linear_attention
from kernels.bench import peak_memory_bytes, time_ms

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
chunk_simple_gla = None
if DEVICE == "cuda":  # flash-linear-attention's kernels need CUDA
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except ImportError:  # flash-linear-attention is not installed
        pass

if DEVICE == "cuda":  # 32k tokens per batch, hidden size 2048 (H = 2048 // K)
    LENGTHS, HEAD_DIMS, TOKENS, HIDDEN, DTYPE = (
        [512, 1024, 2048, 4096, 8192, 16384, 32768],
        [64, 128],
        32768,
        2048,
        torch.bfloat16,
    )
else:
    LENGTHS, HEAD_DIMS, TOKENS, HIDDEN, DTYPE = (
        [32, 64],
        [32],
        64,
        64,
        torch.float32,
    )
WHERE = (
    torch.cuda.get_device_name()
    if DEVICE == "cuda"
    else "CPU (timings say nothing about GPUs)"
)
print(
    f"device: {WHERE}; flash-linear-attention chunk_simple_gla: "
    + (
        "found"
        if chunk_simple_gla
        else "not found, its rows are left out"
        if DEVICE == "cuda"
        else "not used on a CPU, its rows are left out"
    )
)


# %% [markdown]
# The contenders, all causal, each given its inputs in its own layout (prepared
# outside the timed call): ours and flash attention take `[B, H, T, K]`,
# flash-linear-attention `[B, T, H, K]` with the log-decays `[B, T, H]`. Values
# have V = K. The per-head decays are RetNet's; the per-token ones are
# `logsigmoid` of random gates, as in gated linear attention.


# %%
def retnet_decay(H):
    """RetNet's per-head decays ``gamma_h = 1 - 2^(-5-h)``, as log-decays
    ``[H]``."""
    return torch.log(1 - 2.0 ** (-5 - torch.arange(H, device=DEVICE)))


def ours(decay_kind):
    def layer(x):
        return linear_attention(x["q"], x["k"], x["v"], decay=x[decay_kind])

    return layer


def fla(decay_kind):
    def layer(x):
        return chunk_simple_gla(
            x["q_t"], x["k_t"], x["v_t"], g=x[decay_kind + "_t"]
        )[0]

    return layer


FLASH, OURS = "flash_attention (softmax)", "linear_attention, per-head decay"
LAYERS = {
    FLASH: lambda x: flash_attention(x["q"], x["k"], x["v"], causal=True),
    OURS: ours("per_head"),
    "linear_attention, per-token decay": ours("per_token"),
}
if chunk_simple_gla is not None:
    LAYERS["fla chunk_simple_gla, per-head decay"] = fla("per_head")
    LAYERS["fla chunk_simple_gla, per-token decay"] = fla("per_token")


def make_inputs(B, H, T, K):
    q, k, v = (
        (torch.randn(B, H, T, K, device=DEVICE) * s).to(DTYPE)
        for s in (K**-0.25, K**-0.25, 1.0)
    )
    # gates near 0.98
    x = {
        "q": q,
        "k": k,
        "v": v,
        "per_head": retnet_decay(H),
        "per_token": F.logsigmoid(torch.randn(B, H, T, device=DEVICE) + 4),
    }
    x.update(
        {
            name + "_t": x[name].transpose(1, 2).contiguous()
            for name in ("q", "k", "v", "per_token")
        }
    )
    x["per_head_t"] = x["per_head"].expand(B, T, H).contiguous()
    for name in ("q", "k", "v", "q_t", "k_t", "v_t"):
        x[name].requires_grad_()
    return x


# %% [markdown]
# Every (mode, K, T) point for every layer: 25 ms of timed repetitions each keep
# the whole snippet near a minute on a large GPU.


# %%
def runner(layer, x, mode):
    if mode == "fwd":
        return lambda: layer(x)
    do = torch.randn_like(x["v"])

    def fwd_bwd():
        for name in ("q", "k", "v", "q_t", "k_t", "v_t"):
            x[name].grad = None
        out = layer(x)
        out.backward(do if out.shape == do.shape else do.transpose(1, 2))

    return fwd_bwd


points = []
for K in HEAD_DIMS:
    H = HIDDEN // K
    for T in LENGTHS:
        B = max(1, TOKENS // T)
        x = make_inputs(B, H, T, K)
        for mode in ("fwd", "fwd+bwd"):
            point = {
                "mode": mode,
                "K": K,
                "T": T,
                "B": B,
                "H": H,
                "ms": {},
                "mib": {},
            }
            for name, layer in LAYERS.items():
                fn = runner(layer, x, mode)
                point["ms"][name] = time_ms(fn, warmup=10, rep=25)
                point["mib"][name] = peak_memory_bytes(fn) / 2**20
            points.append(point)
            print(
                f"{mode:7s} K={K:3d} T={T:5d} B={B:3d}  "
                + "  ".join(f"{n}: {point['ms'][n]:7.3f} ms" for n in LAYERS),
                flush=True,
            )
        del x
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


# %% [markdown]
# The crossover for each mode and head dim: the shortest measured length from
# which our linear attention kernel (per-head decay) is faster than flash
# attention at every longer length too.


# %%
def crossover(mode, K):
    rows = [p for p in points if p["mode"] == mode and p["K"] == K]
    faster = [p["ms"][OURS] < p["ms"][FLASH] for p in rows]
    return next(
        (rows[i]["T"] for i in range(len(rows)) if all(faster[i:])), None
    )


crossovers = {
    f"{mode}, K={K}": crossover(mode, K)
    for mode in ("fwd", "fwd+bwd")
    for K in HEAD_DIMS
}
for key, T in crossovers.items():
    print(
        f"crossover ({key}): "
        + (f"T = {T}" if T else "none in the measured range")
    )

# %%
# One row per head dim and measure, forward and forward + backward side by side.
fig, axes = plt.subplots(
    2 * len(HEAD_DIMS),
    2,
    figsize=(6.8, 1.4 + 2.6 * 2 * len(HEAD_DIMS)),
    squeeze=False,
    layout="constrained",
)
for col, mode in enumerate(("fwd", "fwd+bwd")):
    for row, (K, what) in enumerate(
        (K, w) for K in HEAD_DIMS for w in ("ms", "mib")
    ):
        ax = axes[row][col]
        rows = [p for p in points if p["mode"] == mode and p["K"] == K]
        for name in LAYERS:
            ax.plot(
                [p["T"] for p in rows],
                [p[what][name] for p in rows],
                "o-",
                ms=3,
                label=name,
            )
        ax.set_yscale("log")
        if what == "ms" and crossovers[f"{mode}, K={K}"]:
            ax.axvline(
                crossovers[f"{mode}, K={K}"],
                color="gray",
                lw=0.8,
                ls="--",
                label="crossover",
            )
        ax.set_xscale("log", base=2)
        ax.set(
            title=f"{mode}, K=V={K}: "
            + ("time" if what == "ms" else "peak memory"),
            xlabel="sequence length T (tokens)" if row == len(axes) - 1 else "",
            ylabel="time (ms)" if what == "ms" else "extra memory (MiB)",
        )
        ax.grid(alpha=0.3)
# One legend for every panel, below them: the layers, and the crossover line.
handles = {}
for ax in axes.flat:
    for handle, label in zip(*ax.get_legend_handles_labels()):
        handles.setdefault(label, handle)
fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=2)
fig.suptitle(
    f"Triton kernels timed on {WHERE}: causal, "
    f"{str(DTYPE).replace('torch.', '')},\n"
    f"B*T = {TOKENS} tokens, hidden size {HIDDEN}"
)
fig.savefig("kernels.svg")

with open("kernels.md", "w") as f:
    names = list(LAYERS)
    f.write(
        "| mode | K | T | B | "
        + " | ".join(f"{n} (ms)" for n in names)
        + " | "
        + " | ".join(f"{n} (MiB)" for n in names)
        + " | flash attention time / ours |\n"
    )
    f.write("|---|---:|---:|---:|" + "---:|" * (2 * len(names) + 1) + "\n")
    for p in points:
        speed = p["ms"][FLASH] / p["ms"][OURS]
        f.write(
            f"| {p['mode']} | {p['K']} | {p['T']} | {p['B']} | "
            + " | ".join(f"{p['ms'][n]:.3f}" for n in names)
            + " | "
            + " | ".join(f"{p['mib'][n]:.1f}" for n in names)
            + f" | {speed:.2f} |\n"
        )
    f.write(
        "\nCrossover (the shortest length from which linear attention is "
        "faster): "
        + "; ".join(
            f"{key}: {T if T else 'none measured'}"
            for key, T in crossovers.items()
        )
        + ".\n"
    )
with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "where": WHERE,
            "tokens": TOKENS,
            "hidden": HIDDEN,
            "fla": chunk_simple_gla is not None,
            "crossovers": crossovers,
            "points": points,
        },
        f,
        indent=2,
    )
