"""Throughput: flash_attention against PyTorch's SDPA backends and naive
attention.

You will see forward and forward+backward TFLOP/s as the sequence grows, for
head dims 64 and 128, with and without the causal mask, in bfloat16, for our
Triton kernel, every backend of
``torch.nn.functional.scaled_dot_product_attention`` that the installed PyTorch
offers on this device (flash, memory-efficient, cuDNN, math) and naive
attention; the ratio of our rate to each backend's against the targets; and a
sliding window, whose cost should grow with the window, not with the length. The
ceilings of the device (dense bf16 matrix products and copy bandwidth) are
measured in the same run. Only a GPU run says anything about speed; on a CPU the
snippet runs tiny sizes.
"""

# requires: cuda
# %%
import json

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kernels import flash_attention
from kernels.bench import time_ms

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# On a GPU: 16k tokens per batch, hidden size 2048 (H = 2048 // D), as in the
# FlashAttention papers.
if DEVICE == "cuda":
    LENGTHS, HEAD_DIMS, TOKENS, HIDDEN, DTYPE = (
        [1024, 2048, 4096, 8192, 16384],
        [64, 128],
        16384,
        2048,
        torch.bfloat16,
    )
    WINDOW_LENGTHS, WINDOW = [4096, 16384], 1024
else:
    LENGTHS, HEAD_DIMS, TOKENS, HIDDEN, DTYPE = (
        [64, 128],
        [64],
        128,
        128,
        torch.float32,
    )
    WINDOW_LENGTHS, WINDOW = [64, 256], 16
# beyond this the naive [B, H, T, T] scores and their gradients do not fit
NAIVE_MAX_T = 8192
print(
    "device: "
    + (
        torch.cuda.get_device_name()
        if DEVICE == "cuda"
        else "cpu (timings say nothing about GPUs)"
    )
)


# %% [markdown]
# The FLOP count of attention: two matrix products of `2·Tq·Tk·D` each per head,
# halved by the causal mask; the backward does 2.5 times the forward's work
# (five products instead of two).


# %%
def attention_flops(B, H, T, D, causal, mode):
    flops = 4 * B * H * T * T * D
    if causal:
        flops /= 2
    return flops * (3.5 if mode == "fwd+bwd" else 1.0)


# %% [markdown]
# Every timing in this book comes from one helper, `kernels.bench.time_ms(fn)`,
# the time of one call of `fn()` in milliseconds. On a GPU it is Triton's
# `do_bench`: a warm-up, then repeated launches with the L2 cache flushed
# between them, and the median. On a CPU it is the minimum over repeated calls
# after one warm-up call (at least 3, and until 0.2 s have been spent, at most
# 30): other work on the machine only ever adds time, so the fastest call is the
# best estimate of the cost of the code itself. Its companions are
# `peak_memory_bytes(fn)` (see the memory snippet) and `max_diff(a, b)`, the
# largest absolute difference, computed in float64.
#
# The contenders. Each takes `q, k, v` of shape `[B, H, T, D]` and the causal
# flag.


# %%
def naive_attention(q, k, v, causal):
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # [B, H, T, T]
    if causal:
        s = s.masked_fill(
            torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1),
            float("-inf"),
        )
    return torch.softmax(s, dim=-1) @ v


def sdpa_with(backend):
    def run(q, k, v, causal):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return run


OURS = "flash_attention (ours)"
PROVIDERS = {
    OURS: lambda q, k, v, causal: flash_attention(q, k, v, causal=causal)
}
for name, backend in [
    ("SDPA flash", "FLASH_ATTENTION"),
    ("SDPA efficient", "EFFICIENT_ATTENTION"),
    ("SDPA cuDNN", "CUDNN_ATTENTION"),
    ("SDPA math", "MATH"),
]:
    if hasattr(SDPBackend, backend):
        PROVIDERS[name] = sdpa_with(getattr(SDPBackend, backend))
    else:
        print(f"  {name} skipped: this PyTorch has no SDPBackend.{backend}")
PROVIDERS["naive"] = naive_attention


# %% [markdown]
# The two ceilings, measured now: a dense bf16 matrix product and a
# device-to-device copy.


# %%
def ceilings():
    n = 8192 if DEVICE == "cuda" else 256
    a, b = (
        torch.randn(n, n, device=DEVICE, dtype=DTYPE),
        torch.randn(n, n, device=DEVICE, dtype=DTYPE),
    )
    matmul_tflops = 2 * n**3 / time_ms(lambda: a @ b) * 1e-9
    x = torch.empty(
        2**28 if DEVICE == "cuda" else 2**20, device=DEVICE, dtype=torch.uint8
    )
    y = torch.empty_like(x)
    # bytes read + written
    copy_gbs = 2 * x.numel() / time_ms(lambda: y.copy_(x)) * 1e-6
    return matmul_tflops, copy_gbs


matmul_tflops, copy_gbs = ceilings()
print(
    f"dense {str(DTYPE).replace('torch.', '')} matmul: {matmul_tflops:.0f} "
    f"TFLOP/s, copy: {copy_gbs:.0f} GB/s"
)


# %% [markdown]
# Every (mode, D, causal, T) point for every provider. A provider that this
# PyTorch cannot run for these inputs, or that runs out of memory, is left out
# of that point.


# %%
def measure(fn, q, k, v, causal, mode):
    """Milliseconds of one call; on a GPU 10 ms of warm-up and 50 ms of
    repetitions per point, which keeps the whole snippet near a minute."""
    if mode == "fwd":
        return time_ms(lambda: fn(q, k, v, causal), warmup=10, rep=50)
    do = torch.randn_like(q)

    def fwd_bwd():
        for x in (q, k, v):
            x.grad = None
        fn(q, k, v, causal).backward(do)

    return time_ms(fwd_bwd, warmup=10, rep=50)


results, skipped = [], set()
for D in HEAD_DIMS:
    H = HIDDEN // D
    for causal in (False, True):
        for T in LENGTHS:
            B = max(1, TOKENS // T)
            q, k, v = (
                torch.randn(
                    B, H, T, D, device=DEVICE, dtype=DTYPE, requires_grad=True
                )
                for _ in range(3)
            )
            for mode in ("fwd", "fwd+bwd"):
                point = {
                    "mode": mode,
                    "D": D,
                    "causal": causal,
                    "T": T,
                    "B": B,
                    "H": H,
                    "tflops": {},
                }
                for name, fn in PROVIDERS.items():
                    if name in ("naive", "SDPA math") and T > NAIVE_MAX_T:
                        continue
                    try:
                        ms = measure(fn, q, k, v, causal, mode)
                    except (
                        RuntimeError,
                        torch.cuda.OutOfMemoryError,
                    ) as err:  # no kernel for these inputs, or OOM
                        reason = str(err).splitlines()[0][:100]
                        if (name, reason) not in skipped:
                            print(
                                f"  {name} skipped from T={T}, D={D} on: "
                                f"{reason}"
                            )
                            skipped.add((name, reason))
                        continue
                    finally:
                        if DEVICE == "cuda":
                            torch.cuda.empty_cache()
                    point["tflops"][name] = (
                        attention_flops(B, H, T, D, causal, mode) / ms * 1e-9
                    )
                results.append(point)
                summary = "  ".join(
                    f"{n}: {t:6.1f}" for n, t in point["tflops"].items()
                )
                print(
                    f"{mode:7s} D={D:3d} causal={causal!s:5s} T={T:5d}  "
                    f"TFLOP/s  {summary}",
                    flush=True,
                )


# %% [markdown]
# Our kernel relative to each SDPA backend, and to the fastest one, at each
# point: the ratio of our TFLOP/s to theirs (above 1: we are faster). The
# targets, at T >= 4096 and D = 128: the forward at least 1.0x SDPA's flash
# backend and 0.8x the fastest backend (cuDNN on Hopper), forward+backward at
# least 1.0x SDPA's flash backend.

# %%
SDPA = [n for n in PROVIDERS if n.startswith("SDPA")]


def ratio(point, against):
    """Our rate over ``against``'s (a provider name, or "fastest SDPA"); nan
    where one is missing."""
    rates = point["tflops"]
    theirs = (
        max((rates[n] for n in SDPA if n in rates), default=None)
        if against == "fastest SDPA"
        else rates.get(against)
    )
    return rates[OURS] / theirs if theirs and OURS in rates else float("nan")


def lowest(mode, against):
    values = [
        ratio(p, against)
        for p in results
        if p["mode"] == mode and p["D"] == 128 and p["T"] >= 4096
    ]
    values = [r for r in values if r == r]  # drop nan
    return min(values) if values else float("nan")


TARGETS = [
    ("fwd", "SDPA flash", 1.0),
    ("fwd", "fastest SDPA", 0.8),
    ("fwd+bwd", "SDPA flash", 1.0),
]
for mode, against, target in TARGETS:
    got = lowest(mode, against)
    verdict = (
        "no data" if got != got else ("met" if got >= target else "missed")
    )
    print(
        f"{mode:7s} ours / {against:13s} at T >= 4096, D = 128 (lowest): "
        f"{got:.2f}x, target {target:.1f}x: {verdict}"
    )

# One row per head dim and mask, forward and forward + backward side by side.
fig, axes = plt.subplots(
    2 * len(HEAD_DIMS),
    2,
    figsize=(6.8, 1.2 + 2.6 * 2 * len(HEAD_DIMS)),
    squeeze=False,
    layout="constrained",
)
for col, mode in enumerate(("fwd", "fwd+bwd")):
    for row, (D, causal) in enumerate(
        (D, c) for D in HEAD_DIMS for c in (False, True)
    ):
        ax = axes[row][col]
        points = [
            p
            for p in results
            if p["mode"] == mode and p["D"] == D and p["causal"] == causal
        ]
        for name in PROVIDERS:
            xs = [p["T"] for p in points if name in p["tflops"]]
            ax.plot(
                xs,
                [p["tflops"][name] for p in points if name in p["tflops"]],
                "o-",
                ms=3,
                label=name,
            )
        ax.set_xscale("log", base=2)
        ax.set(
            title=f"{mode}, D={D}, {'causal' if causal else 'not causal'}",
            xlabel="sequence length T (tokens)" if row == len(axes) - 1 else "",
            ylabel="TFLOP/s",
        )
        ax.grid(alpha=0.3)
fig.legend(
    *axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncol=3
)
fig.suptitle(
    f"Attention throughput, {str(DTYPE).replace('torch.', '')}, {TOKENS} "
    f"tokens per batch, hidden {HIDDEN}\n"
    f"({torch.cuda.get_device_name() if DEVICE == 'cuda' else 'CPU'})"
)
fig.savefig("tflops.svg")

# %% [markdown]
# The ratios as a figure, at the largest head dim: one line per SDPA backend,
# the targets dashed.

# %%
D_RATIO = max(HEAD_DIMS)
fig, axes = plt.subplots(
    2, 1, figsize=(6.8, 7.4), sharex=True, layout="constrained"
)
for ax, mode in zip(axes, ("fwd", "fwd+bwd")):
    for against in SDPA + ["fastest SDPA"]:
        for causal, style in ((False, "o-"), (True, "s--")):
            points = [
                p
                for p in results
                if p["mode"] == mode
                and p["D"] == D_RATIO
                and p["causal"] == causal
            ]
            ys = [ratio(p, against) for p in points]
            if any(y == y for y in ys):
                ax.plot(
                    [p["T"] for p in points],
                    ys,
                    style,
                    ms=3,
                    label=f"/ {against}{', causal' if causal else ''}",
                )
    for m, against, target in TARGETS:
        if m == mode:
            ax.axhline(target, color="gray", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set(
        title=f"{mode}, D={D_RATIO}: ours / SDPA backend",
        ylabel="ratio of TFLOP/s",
    )
    ax.grid(alpha=0.3)
axes[1].set_xlabel("sequence length T (tokens)")
fig.legend(
    *axes[1].get_legend_handles_labels(), loc="outside lower center", ncol=2
)
fig.savefig("ratios.svg")

# %% [markdown]
# A sliding window: each query sees its last `WINDOW` keys
# (`window=(WINDOW - 1, 0)`), as in local attention layers. The kernel skips the
# key tiles outside the window, so its time should grow with `T * WINDOW`, not
# `T²`. The FLOPs credited are those of the visible pairs only, `4·B·H·D·pairs`.
# For comparison: our dense causal kernel at the same length, and SDPA's
# memory-efficient backend with the window as a boolean `[T, T]` mask (it
# computes every tile).


# %%
def window_pairs(T, w):
    return sum(min(i + 1, w) for i in range(T))


window_rows = []
D = max(HEAD_DIMS)
H = HIDDEN // D
for T in WINDOW_LENGTHS:
    B = max(1, TOKENS // T)
    q, k, v = (
        torch.randn(B, H, T, D, device=DEVICE, dtype=DTYPE, requires_grad=True)
        for _ in range(3)
    )
    i = torch.arange(T, device=DEVICE)
    # [T, T]
    band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - WINDOW)
    contenders = {
        f"ours, window {WINDOW}": lambda q, k, v, causal: flash_attention(
            q, k, v, window=(WINDOW - 1, 0)
        ),
        "ours, dense causal": lambda q, k, v, causal: flash_attention(
            q, k, v, causal=True
        ),
    }
    if "SDPA efficient" in PROVIDERS:

        def sdpa_band(q, k, v, causal):
            with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=band)

        contenders[f"SDPA efficient, window {WINDOW} as a mask"] = sdpa_band
    for mode in ("fwd", "fwd+bwd"):
        row = {
            "T": T,
            "B": B,
            "H": H,
            "D": D,
            "window": WINDOW,
            "mode": mode,
            "ms": {},
        }
        for name, fn in contenders.items():
            try:
                row["ms"][name] = measure(fn, q, k, v, False, mode)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
                print(
                    f"  {name} skipped at T={T}: "
                    f"{str(err).splitlines()[0][:100]}"
                )
        pairs = window_pairs(T, WINDOW)
        flops = 4 * B * H * D * pairs * (3.5 if mode == "fwd+bwd" else 1.0)
        ours = row["ms"].get(f"ours, window {WINDOW}")
        row["window_tflops"] = flops / ours * 1e-9 if ours else float("nan")
        window_rows.append(row)
        times = "  ".join(f"{n}: {ms:.2f} ms" for n, ms in row["ms"].items())
        print(
            f"sliding window {mode:7s} T={T:5d} D={D}  {times}  (ours: "
            f"{row['window_tflops']:.1f} TFLOP/s)"
        )

# %% [markdown]
# The table of every point, with the ratios to each backend, and the
# sliding-window rows.

# %%
names = list(PROVIDERS)
with open("tflops.md", "w") as f:
    f.write(
        "| mode | D | causal | T | "
        + " | ".join(names)
        + " | "
        + " | ".join(f"ours / {n}" for n in SDPA)
        + " | ours / fastest SDPA |\n"
    )
    f.write(
        "|---|---:|---|---:|" + "---:|" * (len(names) + len(SDPA) + 1) + "\n"
    )
    for p in results:
        cells = [
            f"{p['tflops'][n]:.1f}" if n in p["tflops"] else "–" for n in names
        ]
        ratios = [
            f"{ratio(p, n):.2f}x" if ratio(p, n) == ratio(p, n) else "–"
            for n in SDPA + ["fastest SDPA"]
        ]
        f.write(
            f"| {p['mode']} | {p['D']} | {'yes' if p['causal'] else 'no'} | "
            f"{p['T']} | " + " | ".join(cells + ratios) + " |\n"
        )
    f.write(
        "\nTFLOP/s of each provider; ceilings measured in the same run: "
        "dense matmul "
        f"{matmul_tflops:.0f} TFLOP/s, copy {copy_gbs:.0f} GB/s.\n"
    )
    window_names = list(dict.fromkeys(n for r in window_rows for n in r["ms"]))
    f.write(
        f"\n| sliding window {WINDOW}: mode | T | "
        + " | ".join(f"{n} (ms)" for n in window_names)
        + " | ours, window: TFLOP/s of the visible pairs |\n"
    )
    f.write("|---|---:|" + "---:|" * (len(window_names) + 1) + "\n")
    for r in window_rows:
        f.write(
            f"| {r['mode']} | {r['T']} | "
            + " | ".join(
                f"{r['ms'][n]:.2f}" if n in r["ms"] else "–"
                for n in window_names
            )
            + f" | {r['window_tflops']:.1f} |\n"
        )

summary = {
    f"lowest_ratio_{mode}_vs_{against.replace(' ', '_')}": lowest(mode, against)
    for mode, against, _ in TARGETS
}
with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "matmul_tflops": matmul_tflops,
            "copy_gbs": copy_gbs,
            **summary,
            "targets": [
                {"mode": m, "against": a, "target": t} for m, a, t in TARGETS
            ],
            "points": results,
            "sliding_window": window_rows,
        },
        f,
        indent=2,
    )
