"""Softmax against linear attention as the sequence grows, both written in plain
PyTorch.

You will see, for one causal attention layer on this device:
* the time and the peak memory of a prefill (all T positions in one call) for
  softmax attention (``torch.nn.functional.scaled_dot_product_attention``) and
  for three forms of linear attention: the masked quadratic form, the chunk-wise
  form and the token-by-token recurrence;
* the length from which the chunk-wise form is faster than softmax attention
  (the crossover);
* decoding one token after a context of T tokens: its time, and the memory
  carried from token to token, a key/value cache that grows with T against a
  state of fixed size.

Everything here is PyTorch, so this compares algorithms, not kernels; on a CPU
every timing uses one thread. The Triton kernels are timed against each other on
a GPU by the next snippet.
"""

# %%
import json

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from kernels import linear_attention_step
from kernels.linear_attention import (
    linear_attention_quadratic,
    linear_attention_recurrent,
)
from kernels.bench import max_diff, peak_memory_bytes, time_ms

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LENGTHS = (
    [1024, 2048, 4096, 8192, 16384, 32768]
    if DEVICE == "cuda"
    else [128, 256, 512, 1024, 2048, 4096, 8192]
)
# the quadratic form and the recurrence stop here
SLOW_FORMS_MAX_T = 8192 if DEVICE == "cuda" else 1024
B, H, D, CHUNK = 1, 8, 64, 64
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
if DEVICE == "cpu":
    # one core for everyone: the comparison is of algorithms, not of threading
    torch.set_num_threads(1)
WHERE = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU, 1 thread"
# RetNet's per-head log-decays
DECAY = torch.log(1 - 2.0 ** (-5 - torch.arange(H, device=DEVICE)))
print(
    f"timing on {WHERE}, {str(DTYPE).replace('torch.', '')}, B={B}, H={H}, "
    f"K=V={D}"
)


# %% [markdown]
# The chunk-wise form in a dozen lines of PyTorch. Inside each chunk of `CHUNK`
# positions it is the quadratic form; the chunks' contributions `k^T v` to the
# state are summed in one batched product, and only the `[K, V]` state is
# carried from chunk to chunk in a short loop.


# %%
def chunk_linear_attention(q, k, v, log_decay, chunk=CHUNK):
    """Causal linear attention
    ``[B, H, T, K] x 2, [B, H, T, V] -> [B, H, T, V]``, chunk by chunk."""
    Bq, Hq, T, K = q.shape
    # zero keys and values at the end change nothing before them
    pad = (-T) % chunk
    # [B, H, N, C, d]
    q, k, v = (
        F.pad(x, (0, 0, 0, pad)).reshape(Bq, Hq, -1, chunk, x.shape[-1])
        for x in (q, k, v)
    )
    g = log_decay.float().view(Hq, 1, 1)  # [H, 1, 1]
    i = torch.arange(chunk, device=q.device, dtype=torch.float32)
    lag = i[:, None] - i[None, :]  # i - j inside a chunk
    # [H, 1, C, C]
    intra = torch.where(
        lag >= 0, torch.exp(g[..., None] * lag.clamp_min(0)), 0.0
    )
    # quadratic inside each chunk
    o = ((q @ k.transpose(-1, -2)) * intra.to(q.dtype)) @ v
    # [H, C, 1]: gamma^(C-1-j)
    to_end = torch.exp(g * (chunk - 1 - i))[..., None].to(q.dtype)
    # [B, H, N, K, V]: each chunk's sum of k^T v
    kv = ((k * to_end).transpose(-1, -2) @ v).float()
    # the state is float32, as in the kernel
    state, before = (
        torch.zeros_like(kv[:, :, 0]),
        [],
    )
    for n in range(kv.shape[2]):  # T / CHUNK steps, each a [K, V] update
        before.append(state)
        state = torch.exp(g * chunk) * state + kv[:, :, n]
    # [H, C, 1]: gamma^(i+1)
    to_query = torch.exp(g * (i + 1))[..., None].to(q.dtype)
    # the state before each chunk
    o = o + (q * to_query) @ torch.stack(before, dim=2).to(q.dtype)
    return (K**-0.5 * o).reshape(Bq, Hq, -1, v.shape[-1])[:, :, :T]


PREFILL = {
    "softmax attention (SDPA)": lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, is_causal=True
    ),
    "linear, chunk-wise": lambda q, k, v: chunk_linear_attention(
        q, k, v, DECAY
    ),
    "linear, quadratic form": lambda q, k, v: linear_attention_quadratic(
        q, k, v, decay=DECAY
    )[0],
    "linear, recurrence": lambda q, k, v: linear_attention_recurrent(
        q, k, v, decay=DECAY
    )[0],
}
SLOW_FORMS = ("linear, quadratic form", "linear, recurrence")

q, k, v = (torch.randn(B, H, 100, D, device=DEVICE) for _ in range(3))
check = max_diff(
    chunk_linear_attention(q, k, v, DECAY),
    linear_attention_quadratic(q, k, v, decay=DECAY)[0],
)
print(
    "chunk-wise form vs quadratic form at T = 100, max |difference|: "
    f"{check:.1e}"
)


# %% [markdown]
# Time and peak memory of one call are measured by `time_ms` and
# `peak_memory_bytes` from `kernels.bench`, the helpers of the FlashAttention
# article (one rule for every timing in the book). Where two cost curves cross,
# read off the shortest length from which one stays below.


# %%
def crossover(faster):
    """The shortest measured length from which ``faster(T)`` holds at every
    longer one, or None."""
    return next(
        (T for T in LENGTHS if all(faster(t) for t in LENGTHS if t >= T)), None
    )


def as_text(length):
    """A crossover length for prose: "T = 512", or that none of the measured
    lengths is one."""
    return (
        f"T = {length}"
        if length is not None
        else f"no measured length (up to T = {LENGTHS[-1]})"
    )


# %% [markdown]
# Prefill: every form at every length (the quadratic form and the recurrence
# only up to `SLOW_FORMS_MAX_T`), with inputs `[B, H, T, D]`.

# %%
prefill = {name: {} for name in PREFILL}
for T in LENGTHS:
    q, k, v = (
        torch.randn(B, H, T, D, device=DEVICE, dtype=DTYPE) for _ in range(3)
    )
    line = []
    for name, fn in PREFILL.items():
        if name in SLOW_FORMS and T > SLOW_FORMS_MAX_T:
            continue
        prefill[name][T] = {
            "ms": time_ms(lambda: fn(q, k, v)),
            "mib": peak_memory_bytes(lambda: fn(q, k, v)) / 2**20,
        }
        line.append(
            f"{name} {prefill[name][T]['ms']:8.2f} ms "
            f"{prefill[name][T]['mib']:7.1f} MiB"
        )
    print(f"T = {T:5d}: " + " | ".join(line), flush=True)

softmax, chunked = (
    prefill["softmax attention (SDPA)"],
    prefill["linear, chunk-wise"],
)
prefill_crossover = crossover(lambda T: chunked[T]["ms"] < softmax[T]["ms"])
ratio = softmax[LENGTHS[-1]]["ms"] / chunked[LENGTHS[-1]]["ms"]
print(
    "prefill crossover (chunk-wise faster than softmax from here on): "
    f"{as_text(prefill_crossover)}; "
    f"at T = {LENGTHS[-1]} softmax attention takes {ratio:.1f} times as long"
)

# %% [markdown]
# Decoding one token after a context of `T` tokens. Softmax attention reads a
# key/value cache of `2 T D` numbers per head; linear attention updates and
# reads a `[K, V]` state.

# %%
decode = {}
for T in LENGTHS:
    q1, k1, v1 = (
        torch.randn(B, H, D, device=DEVICE, dtype=DTYPE) for _ in range(3)
    )
    cache_k, cache_v = (
        torch.randn(B, H, T, D, device=DEVICE, dtype=DTYPE) for _ in range(2)
    )
    # float32, as linear_attention returns it
    state = torch.randn(B, H, D, D, device=DEVICE)
    decode[T] = {
        "softmax_ms": time_ms(
            lambda: F.scaled_dot_product_attention(
                q1[:, :, None], cache_k, cache_v
            )
        ),
        "linear_ms": time_ms(
            lambda: linear_attention_step(q1, k1, v1, state, decay=DECAY)
        ),
        "cache_mib": (cache_k.nbytes + cache_v.nbytes) / 2**20,
        "state_mib": state.nbytes / 2**20,
    }
    print(
        f"T = {T:5d}: one token, softmax {decode[T]['softmax_ms']:.3f} ms "
        f"(cache {decode[T]['cache_mib']:.2f} MiB)"
        f" | linear {decode[T]['linear_ms']:.3f} ms (state "
        f"{decode[T]['state_mib']:.2f} MiB)",
        flush=True,
    )

decode_crossover = crossover(
    lambda T: decode[T]["linear_ms"] < decode[T]["softmax_ms"]
)
print(
    "decoding crossover (a linear attention step faster from here on): "
    f"{as_text(decode_crossover)}"
)

# %%
fig, axes = plt.subplots(2, 2, figsize=(6.8, 7.6), layout="constrained")
styles = {
    "softmax attention (SDPA)": "o-",
    "linear, chunk-wise": "s-",
    "linear, quadratic form": "^--",
    "linear, recurrence": "v:",
}
for name, points in prefill.items():
    lengths = sorted(points)
    axes[0][0].plot(
        lengths,
        [points[T]["ms"] for T in lengths],
        styles[name],
        ms=4,
        label=name,
    )
    axes[0][1].plot(
        lengths,
        [points[T]["mib"] for T in lengths],
        styles[name],
        ms=4,
        label=name,
    )
if prefill_crossover is not None:
    axes[0][0].axvline(
        prefill_crossover,
        color="gray",
        lw=0.8,
        ls="--",
        label=f"crossover, T = {prefill_crossover}",
    )
if decode_crossover is not None:
    axes[1][0].axvline(
        decode_crossover,
        color="gray",
        lw=0.8,
        ls="--",
        label=f"crossover, T = {decode_crossover}",
    )
axes[1][0].plot(
    LENGTHS,
    [decode[T]["softmax_ms"] for T in LENGTHS],
    "o-",
    ms=4,
    label="softmax (SDPA on a cache)",
)
axes[1][0].plot(
    LENGTHS,
    [decode[T]["linear_ms"] for T in LENGTHS],
    "s-",
    ms=4,
    label="linear_attention_step",
)
axes[1][1].plot(
    LENGTHS,
    [decode[T]["cache_mib"] for T in LENGTHS],
    "o-",
    ms=4,
    label="key/value cache",
)
axes[1][1].plot(
    LENGTHS,
    [decode[T]["state_mib"] for T in LENGTHS],
    "s-",
    ms=4,
    label="linear attention state",
)
labels = [
    ("Prefill: time of one call", "time (ms)"),
    ("Prefill: peak extra memory", "memory (MiB)"),
    ("Decoding: one token", "time per token (ms)"),
    ("Decoding: memory kept", "memory (MiB)"),
]
for index, (ax, (title, ylabel)) in enumerate(zip(axes.flat, labels)):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(
        title=title,
        xlabel=f"{'sequence' if index < 2 else 'context'} length T (tokens)",
        ylabel=ylabel,
    )
    ax.grid(alpha=0.3, which="both")
# The prefill's forms in one legend, below the figure; each decoding panel
# has its own.
for ax in axes[1]:
    ax.legend()
fig.legend(
    *axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncol=2
)
fig.suptitle(
    f"One causal attention layer, PyTorch implementations timed on {WHERE}:\n"
    f"B={B}, H={H}, K=V={D}, {str(DTYPE).replace('torch.', '')}"
)
fig.savefig("scaling.svg")

# %%
names = list(PREFILL)
with open("prefill.md", "w") as f:
    f.write(
        "| T | "
        + " | ".join(f"{n} (ms)" for n in names)
        + " | softmax / chunk-wise |\n"
    )
    f.write("|---:|" + "---:|" * len(names) + "---:|\n")
    for T in LENGTHS:
        cells = [
            f"{prefill[n][T]['ms']:.2f}" if T in prefill[n] else "–"
            for n in names
        ]
        f.write(
            f"| {T} | "
            + " | ".join(cells)
            + f" | {softmax[T]['ms'] / chunked[T]['ms']:.2f} |\n"
        )
with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "where": WHERE,
            "B": B,
            "H": H,
            "D": D,
            "chunk": CHUNK,
            "crossover_T": prefill_crossover,
            "crossover": as_text(prefill_crossover),
            "max_length": LENGTHS[-1],
            "softmax_over_chunkwise_at_max_length": round(ratio, 1),
            "decode_softmax_over_linear_at_max_length": round(
                decode[LENGTHS[-1]]["softmax_ms"]
                / decode[LENGTHS[-1]]["linear_ms"],
                1,
            ),
            "decode_crossover_T": decode_crossover,
            "decode_crossover": as_text(decode_crossover),
            "cache_over_state_at_max_length": round(
                decode[LENGTHS[-1]]["cache_mib"]
                / decode[LENGTHS[-1]]["state_mib"],
                1,
            ),
            "prefill": prefill,
            "decode": decode,
        },
        f,
        indent=2,
    )
