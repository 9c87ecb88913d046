"""The cost of mixed chunk attention as the sequence grows: naive against chunked, in PyTorch.

You will see, for one causal FLASH attention layer (one head) on this device:
* the time of the naive definition, which builds ``[T, T]`` matrices, against the chunked form
  with chunks of 64 and 256 positions, both written in plain PyTorch;
* the FLOP counts behind them: ``O(T^2 (S + E))`` against ``O(T C (S + E) + T S E)``;
* the length from which the chunked form is faster (the crossover).

Everything here is PyTorch, so this compares algorithms, not kernels; on a CPU every timing
uses one thread.
"""
# %%
import json
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LENGTHS = [512, 1024, 2048, 4096, 8192, 16384, 32768] if DEVICE == "cuda" else [128, 256, 512, 1024, 2048, 4096, 8192]
NAIVE_MAX_T = 16384 if DEVICE == "cuda" else 4096  # the [T, T] matrices stop here
B, S, E, CHUNKS = 1, 128, 256, [64, 256]  # the paper's sizes: s = 128, e = 2d, chunks of 256
if DEVICE == "cpu":
    torch.set_num_threads(1)  # one core for everyone: the comparison is of algorithms, not of threading
WHERE = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU, 1 thread"
torch.manual_seed(0)
print(f"timing PyTorch code on {WHERE}, float32, B={B}, S={S}, E={E}")


# %% [markdown]
# The two implementations of the first snippet, repeated here so that this file runs on its own.

# %%
def mixed_chunk_naive(q_quad, k_quad, q_lin, k_lin, v, chunk):
    """The definition: the full ``[T, T]`` weight matrix, then one product with ``v``."""
    T = q_quad.shape[-2]
    t = torch.arange(T, device=v.device)
    g = t // chunk
    same_chunk = (g[:, None] == g[None, :]) & (t[None, :] <= t[:, None])
    earlier_chunk = g[None, :] < g[:, None]
    quad = F.relu(q_quad.shape[-1] ** -0.5 * q_quad @ k_quad.mT) ** 2 / chunk
    lin = (q_lin @ k_lin.mT) / (g * chunk).clamp_min(1)[:, None]
    return (torch.where(same_chunk, quad, 0.0) + torch.where(earlier_chunk, lin, 0.0)) @ v


def to_chunks(x, chunk):
    pad = (-x.shape[1]) % chunk
    return F.pad(x, (0, 0, 0, pad)).reshape(x.shape[0], -1, chunk, x.shape[-1])  # [B, N, C, d]


def mixed_chunk_attention(q_quad, k_quad, q_lin, k_lin, v, chunk):
    """Quadratic inside each chunk, each chunk's K^T V summed over the chunks before it."""
    qq, kq, ql, kl, vc = (to_chunks(x, chunk) for x in (q_quad, k_quad, q_lin, k_lin, v))
    scores = F.relu(qq.shape[-1] ** -0.5 * qq @ kq.mT) ** 2 / chunk  # [B, N, C, C]
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=v.device).tril()
    o = scores.masked_fill(~causal, 0.0) @ vc
    kv = kl.mT @ vc  # [B, N, S, E]
    before = torch.cat([torch.zeros_like(kv[:, :1]), kv[:, :-1].cumsum(dim=1)], dim=1)
    earlier_tokens = (torch.arange(kv.shape[1], device=v.device) * chunk).clamp_min(1)
    o = o + ql @ before / earlier_tokens[:, None, None]
    return o.reshape(v.shape[0], -1, v.shape[-1])[:, :v.shape[1]]


# %% [markdown]
# FLOPs per sequence, counting a multiply-add as two and every masked entry as work (both
# implementations compute full blocks): the naive form makes two `[T, T]` score matrices
# (`2 T^2 S` each) and one product with `v` (`2 T^2 E`); the chunked form does the same inside
# `T / C` blocks of `C x C`, plus `4 T S E` for the chunks' `K^T V` and the queries' products
# with the state.

# %%
def flops_naive(T):
    return 2 * T * T * (2 * S + E)


def flops_chunked(T, chunk):
    return 2 * T * chunk * (S + E) + 4 * T * S * E


def time_ms(fn) -> float:
    """Minimum over repeated runs (other work on the machine only ever adds time)."""
    if DEVICE == "cuda":
        from triton.testing import do_bench
        return do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()  # warm-up
    runs = []
    while len(runs) < 5 or (sum(runs) < 0.3 and len(runs) < 20):  # more runs for short calls
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return 1e3 * min(runs)


# %%
names = ["naive [T, T]"] + [f"chunked, C = {c}" for c in CHUNKS]
timings = {name: {} for name in names}
check = {}
with torch.no_grad():
    for T in LENGTHS:
        q_quad, k_quad, q_lin, k_lin = (torch.randn(B, T, S, device=DEVICE) / S ** 0.25 for _ in range(4))
        v = torch.randn(B, T, E, device=DEVICE)
        args = (q_quad, k_quad, q_lin, k_lin, v)
        line = []
        if T <= NAIVE_MAX_T:
            timings[names[0]][T] = time_ms(lambda: mixed_chunk_naive(*args, CHUNKS[-1]))
            line.append(f"naive {timings[names[0]][T]:8.2f} ms")
        for name, chunk in zip(names[1:], CHUNKS):
            timings[name][T] = time_ms(lambda: mixed_chunk_attention(*args, chunk))
            line.append(f"C = {chunk}: {timings[name][T]:7.2f} ms")
        if T == LENGTHS[0]:
            check = {c: (mixed_chunk_attention(*args, c) - mixed_chunk_naive(*args, c)).abs().max().item()
                     for c in CHUNKS}
        print(f"T = {T:5d}: " + " | ".join(line), flush=True)
print(f"chunked vs naive at T = {LENGTHS[0]} (float32), max |diff|: "
      + ", ".join(f"C = {c}: {d:.1e}" for c, d in check.items()))


def crossover(name):
    """The shortest length from which ``name`` beats the naive form at every longer measured length."""
    naive = timings[names[0]]
    lengths = sorted(naive)
    return next((T for T in lengths if all(timings[name][t] < naive[t] for t in lengths if t >= T)), None)


crossovers = {name: crossover(name) for name in names[1:]}
for name, T in crossovers.items():
    print(f"{name}: faster than the naive form from T = {T} on" if T
          else f"{name}: never faster up to T = {NAIVE_MAX_T}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
styles = ["o-", "s-", "^-"]
for name, style in zip(names, styles):
    lengths = sorted(timings[name])
    axes[0].plot(lengths, [timings[name][T] for T in lengths], style, ms=4, label=f"{name} (PyTorch)")
for name, T in crossovers.items():
    if T is not None:
        axes[0].axvline(T, color="gray", lw=0.8, ls="--")
        axes[0].annotate(f"crossover {name.split(', ')[1]}", (T, axes[0].get_ylim()[1]), rotation=90,
                         fontsize=7, va="top", ha="right", color="gray")
axes[1].plot(LENGTHS, [flops_naive(T) for T in LENGTHS], "o-", ms=4, label="naive [T, T]")
for chunk, style in zip(CHUNKS, styles[1:]):
    axes[1].plot(LENGTHS, [flops_chunked(T, chunk) for T in LENGTHS], style, ms=4, label=f"chunked, C = {chunk}")
axes[0].set(title=f"Time of one call, PyTorch on {WHERE}", ylabel="time (ms)")
axes[1].set(title="Work of one call (FLOP model)", ylabel="floating-point operations")
for ax in axes:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T (tokens)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
fig.suptitle(f"Causal mixed chunk attention, one head: S = {S}, E = {E}, float32")
fig.tight_layout()
fig.savefig("cost.svg")

# %%
with open("cost.md", "w") as f:
    f.write("| T | " + " | ".join(f"{n} (ms)" for n in names) + " |\n")
    f.write("|---:|" + "---:|" * len(names) + "\n")
    for T in LENGTHS:
        f.write(f"| {T} | " + " | ".join(f"{timings[n][T]:.2f}" if T in timings[n] else "–" for n in names) + " |\n")
longest = max(timings[names[0]])
naive_ms = timings[names[0]][longest]
with open("results.json", "w") as f:
    json.dump({"device": DEVICE, "where": WHERE, "S": S, "E": E, "chunks": CHUNKS,
               "crossover_T": {name.split(" = ")[1]: T for name, T in crossovers.items()},
               "naive_max_T": longest,
               "naive_over_chunked_256_at_naive_max_T": round(naive_ms / timings[names[2]][longest], 1),
               "naive_over_chunked_64_at_naive_max_T": round(naive_ms / timings[names[1]][longest], 1),
               "float32_max_abs_diff": max(check.values()), "timings_ms": timings}, f, indent=2)
