"""The cost of mixed chunk attention as the sequence grows: quadratic GAU
against chunked, in PyTorch.

You will see, for one causal attention of a GAU (one head) on this device:
* the time of the quadratic GAU's attention, which builds a ``[T, T]`` matrix of
  scores (the same function with one chunk covering the whole sequence), against
  mixed chunk attention with chunks of 64 and 256 positions, all written in
  plain PyTorch;
* the FLOP counts behind them: ``O(T^2 (S + E))`` against
  ``O(T C (S + E) + T S E)``;
* the length from which the chunked form is faster (the crossover).

Everything here is PyTorch, so this compares algorithms, not kernels; on a CPU
every timing uses one thread.
"""

# %%
import json

import matplotlib.pyplot as plt
import torch

from kernels.bench import time_ms
from kernels.linear_attention.naive import mixed_chunk_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LENGTHS = (
    [512, 1024, 2048, 4096, 8192, 16384, 32768]
    if DEVICE == "cuda"
    else [128, 256, 512, 1024, 2048, 4096, 8192]
)
# the [T, T] matrices stop here
QUADRATIC_MAX_T = 16384 if DEVICE == "cuda" else 4096
# the paper's sizes: s = 128, e = 2d, chunks of 256
B, S, E, CHUNKS = 1, 128, 256, [64, 256]
if DEVICE == "cpu":
    # one core for everyone: the comparison is of algorithms, not of threading
    torch.set_num_threads(1)
WHERE = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU, 1 thread"
torch.manual_seed(0)
print(f"timing PyTorch code on {WHERE}, float32, B={B}, S={S}, E={E}")


# %% [markdown]
# Both contestants are `mixed_chunk_attention` from the package: with
# `chunk >= T` it has a single chunk, so it computes the causal squared-ReLU
# scores of the whole sequence as one `[T, T]` matrix (the quadratic GAU), and
# with a smaller chunk it is FLASH's mixed chunk attention.


# %%
def quadratic_gau(q_quad, k_quad, q_lin, k_lin, v):
    return mixed_chunk_attention(
        q_quad, k_quad, q_lin, k_lin, v, chunk=v.shape[1]
    )


# %% [markdown]
# FLOPs per sequence, counting a multiply-add as two and every masked entry as
# work (both compute full blocks): inside `T / C` blocks of `C x C`, the scores
# (`2 T C S`) and their product with `v` (`2 T C E`), plus `4 T S E` for the
# chunks' `K^T V` and the queries' products with the state. The quadratic GAU is
# the case `C = T` (its one `K^T V` is wasted).


# %%
def flops_quadratic(T):
    return flops_chunked(T, T)


def flops_chunked(T, chunk):
    return 2 * T * chunk * (S + E) + 4 * T * S * E


# %%
names = ["quadratic GAU [T, T]"] + [f"chunked, C = {c}" for c in CHUNKS]
timings = {name: {} for name in names}
with torch.no_grad():
    for T in LENGTHS:
        q_quad, k_quad, q_lin, k_lin = (
            torch.randn(B, T, S, device=DEVICE) / S**0.25 for _ in range(4)
        )
        v = torch.randn(B, T, E, device=DEVICE)
        args = (q_quad, k_quad, q_lin, k_lin, v)
        line = []
        if T <= QUADRATIC_MAX_T:
            timings[names[0]][T] = time_ms(lambda: quadratic_gau(*args))
            line.append(f"quadratic {timings[names[0]][T]:8.2f} ms")
        for name, chunk in zip(names[1:], CHUNKS):
            timings[name][T] = time_ms(
                lambda: mixed_chunk_attention(*args, chunk)
            )
            line.append(f"C = {chunk}: {timings[name][T]:7.2f} ms")
        print(f"T = {T:5d}: " + " | ".join(line), flush=True)


def crossover(name):
    """The shortest length from which ``name`` beats the quadratic GAU at every
    longer measured length.
    """
    quadratic = timings[names[0]]
    lengths = sorted(quadratic)
    return next(
        (
            T
            for T in lengths
            if all(timings[name][t] < quadratic[t] for t in lengths if t >= T)
        ),
        None,
    )


crossovers = {name: crossover(name) for name in names[1:]}
for name, T in crossovers.items():
    print(
        f"{name}: faster than the quadratic GAU from T = {T} on"
        if T
        else f"{name}: never faster up to T = {QUADRATIC_MAX_T}"
    )

# %%
fig, axes = plt.subplots(2, 1, figsize=(6.8, 7.8))
styles = ["o-", "s-", "^-"]
for name, style in zip(names, styles):
    lengths = sorted(timings[name])
    axes[0].plot(
        lengths,
        [timings[name][T] for T in lengths],
        style,
        ms=4,
        label=f"{name} (PyTorch)",
    )
# one dashed line per crossover length, naming every chunk size that crosses
crossing = {}
for name, T in crossovers.items():
    if T is not None:
        crossing.setdefault(T, []).append(name.split(", ")[1])
for T, chunks in crossing.items():
    axes[0].axvline(T, color="gray", lw=0.8, ls="--")
    axes[0].annotate(
        f"crossover {' and '.join(chunks)}",
        (T, axes[0].get_ylim()[1]),
        rotation=90,
        va="top",
        ha="right",
        color="gray",
    )
axes[1].plot(
    LENGTHS,
    [flops_quadratic(T) for T in LENGTHS],
    "o-",
    ms=4,
    label="quadratic GAU, $[T, T]$ scores",
)
for chunk, style in zip(CHUNKS, styles[1:]):
    axes[1].plot(
        LENGTHS,
        [flops_chunked(T, chunk) for T in LENGTHS],
        style,
        ms=4,
        label=f"chunked, $C = {chunk}$",
    )
axes[0].set(title=f"Time of one call, PyTorch on {WHERE}", ylabel="time (ms)")
axes[1].set(
    title="Work of one call (FLOP model)",
    ylabel="floating-point operations (FLOP)",
)
for ax in axes:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length $T$ (tokens)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
fig.suptitle(f"Causal GAU attention, one head: $S = {S}$, $E = {E}$, float32")
fig.tight_layout()
fig.savefig("cost.svg")

# %%
with open("cost.md", "w") as f:
    f.write("| T | " + " | ".join(f"{n} (ms)" for n in names) + " |\n")
    f.write("|---:|" + "---:|" * len(names) + "\n")
    for T in LENGTHS:
        f.write(
            f"| {T} | "
            + " | ".join(
                f"{timings[n][T]:.2f}" if T in timings[n] else "–"
                for n in names
            )
            + " |\n"
        )
longest = max(timings[names[0]])
quadratic_ms = timings[names[0]][longest]
with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "where": WHERE,
            "S": S,
            "E": E,
            "chunks": CHUNKS,
            "crossover_T": {
                name.split(" = ")[1]: T for name, T in crossovers.items()
            },
            "quadratic_max_T": longest,
            "quadratic_over_chunked_256_at_quadratic_max_T": round(
                quadratic_ms / timings[names[2]][longest], 1
            ),
            "quadratic_over_chunked_64_at_quadratic_max_T": round(
                quadratic_ms / timings[names[1]][longest], 1
            ),
            "timings_ms": timings,
        },
        f,
        indent=2,
    )
