"""The cost of VQ attention as the sequence grows:
quadratic form against the compressed cache.

You will see, for one causal attention layer with quantised keys, on this
device:
* the time of the quadratic form, PyTorch's fused
  ``scaled_dot_product_attention`` on the quantised keys, against the
  block-by-block form with a compressed cache, written in plain PyTorch, for two
  codebook sizes;
* the length from which the blockwise form is faster (the crossover);
* that both compute the same outputs.

Everything here is PyTorch, so this compares algorithms, not kernels; on a CPU
every timing uses one thread.
"""

# %%
import json
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from kernels.bench import time_ms

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LENGTHS = (
    [1024, 2048, 4096, 8192, 16384, 32768, 65536]
    if DEVICE == "cuda"
    else [256, 512, 1024, 2048, 4096, 8192]
)
B, H, K, V, BLOCK, CODEBOOKS = 1, 4, 64, 64, 64, [64, 256]
if DEVICE == "cpu":
    # one core for everyone: the comparison is of algorithms, not of threading
    torch.set_num_threads(1)
WHERE = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU, 1 thread"
SCALE = K**-0.5
torch.manual_seed(0)
print(
    f"timing PyTorch code on {WHERE}, float32, B={B}, H={H}, K=V={K}, blocks "
    f"of {BLOCK}"
)


# %% [markdown]
# The blockwise form of the first snippet (without decay), repeated so that this
# file runs on its own. Per block it scores `L` local keys and `S_c` codewords,
# so a sequence costs `O(T (L + S_c) (K + V))`, against `O(T^2 (K + V))` for the
# quadratic form.


# %%
def vq_attention_blockwise(q, z, codebook, v, block, scale):
    """Causal softmax attention with the keys ``codebook[z]``, one block at a
    time.
    """
    Bq, Hq, T, _ = q.shape
    n_codes = codebook.shape[1]
    heads = torch.arange(Hq, device=q.device)[None, :, None]
    cache_sum = q.new_zeros(Bq, Hq, n_codes, v.shape[-1])
    cache_count = q.new_zeros(Bq, Hq, n_codes)
    causal = torch.ones(block, block, dtype=torch.bool, device=q.device).tril()
    outputs = []
    for start in range(0, T, block):
        qb, zb, vb = (
            q[:, :, start : start + block],
            z[:, :, start : start + block],
            v[:, :, start : start + block],
        )
        L = qb.shape[2]
        local = (scale * qb @ codebook[heads, zb].mT).masked_fill(
            ~causal[:L, :L], float("-inf")
        )
        cached = scale * qb @ codebook.mT + cache_count.log()[:, :, None, :]
        p = torch.softmax(torch.cat([local, cached], dim=-1), dim=-1)
        # zero where a code is unused
        code_means = cache_sum / cache_count.clamp_min(1)[..., None]
        outputs.append(p[..., :L] @ vb + p[..., L:] @ code_means)
        onehot = F.one_hot(zb, n_codes).to(v.dtype)
        cache_sum = cache_sum + onehot.mT @ vb
        cache_count = cache_count + onehot.sum(dim=-2)
    return torch.cat(outputs, dim=2)


def quantise(k, codebook):
    # |k|^2 does not change the argmin
    distance = -2 * k @ codebook.mT + codebook.square().sum(-1)[:, None, :]
    z = distance.argmin(dim=-1)
    return z, codebook[
        torch.arange(codebook.shape[0], device=k.device)[None, :, None], z
    ]


# %% [markdown]
# Both forms get the codes (or the quantised keys) precomputed: quantising is
# the same `T x S_c` distance computation for both and is left out of the
# timings.

# %%
names = ["quadratic: SDPA on quantised keys"] + [
    f"blockwise cache, S_c = {c}" for c in CODEBOOKS
]
timings = {name: {} for name in names}
check = {}
with torch.no_grad():
    for T in LENGTHS:
        q, k, v = (torch.randn(B, H, T, d, device=DEVICE) for d in (K, K, V))
        line = []
        for name, n_codes in zip(names, [CODEBOOKS[-1]] + CODEBOOKS):
            codebook = torch.randn(H, n_codes, K, device=DEVICE)
            z, k_hat = quantise(k, codebook)
            if name == names[0]:
                fn = lambda: F.scaled_dot_product_attention(
                    q, k_hat, v, is_causal=True, scale=SCALE
                )  # noqa: E731
            else:
                fn = lambda: vq_attention_blockwise(
                    q, z, codebook, v, BLOCK, SCALE
                )  # noqa: E731
                if T == LENGTHS[0]:
                    reference = F.scaled_dot_product_attention(
                        q, k_hat, v, is_causal=True, scale=SCALE
                    )
                    check[n_codes] = (fn() - reference).abs().max().item()
            timings[name][T] = time_ms(fn)
            line.append(f"{timings[name][T]:8.2f} ms")
        short = ["SDPA"] + [f"S_c={c}" for c in CODEBOOKS]
        print(
            f"T = {T:5d}: "
            + " | ".join(f"{n}: {t}" for n, t in zip(short, line)),
            flush=True,
        )
print(
    f"blockwise vs SDPA at T = {LENGTHS[0]} (float32), max |diff|: "
    + ", ".join(f"S_c = {c}: {d:.1e}" for c, d in check.items())
)


def crossover(name):
    """The shortest length from which ``name`` beats the quadratic form at every
    longer measured length.
    """
    quadratic = timings[names[0]]
    return next(
        (
            T
            for T in LENGTHS
            if all(timings[name][t] < quadratic[t] for t in LENGTHS if t >= T)
        ),
        None,
    )


crossovers = {name: crossover(name) for name in names[1:]}
for name, T in crossovers.items():
    print(
        f"{name}: faster than the quadratic form from T = {T} on"
        if T
        else f"{name}: never faster up to T = {LENGTHS[-1]}"
    )

# %%
fig, ax = plt.subplots(figsize=(6.8, 4.6))
for name, style in zip(names, ["o-", "s-", "^-"]):
    ax.plot(
        LENGTHS,
        [timings[name][T] for T in LENGTHS],
        style,
        ms=4,
        label=f"{name} (PyTorch)",
    )
for (name, T), color in zip(crossovers.items(), ["C1", "C2"]):
    if T is not None:
        ax.axvline(
            T,
            color=color,
            lw=0.8,
            ls="--",
            label=f"crossover, {name.split(', ')[1]}: $T = {T}$",
        )
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set(
    xlabel="sequence length $T$ (tokens)",
    ylabel="time (ms)",
    title=(
        f"Causal attention with quantised keys, PyTorch on {WHERE}\n"
        f"$B = {B}$, $H = {H}$, $K = V = {K}$, blocks of {BLOCK}, float32"
    ),
)
ax.grid(alpha=0.3, which="both")
ax.legend()
fig.tight_layout()
fig.savefig("cost.svg")

# %%
with open("cost.md", "w") as f:
    f.write("| T | " + " | ".join(f"{n} (ms)" for n in names) + " |\n")
    f.write("|---:|" + "---:|" * len(names) + "\n")
    for T in LENGTHS:
        f.write(
            f"| {T} | "
            + " | ".join(f"{timings[n][T]:.2f}" for n in names)
            + " |\n"
        )
longest = LENGTHS[-1]
with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "where": WHERE,
            "H": H,
            "K": K,
            "V": V,
            "block": BLOCK,
            "codebooks": CODEBOOKS,
            "crossover_T": {
                str(c): crossovers[n] for c, n in zip(CODEBOOKS, names[1:])
            },
            "max_length": longest,
            "quadratic_over_blockwise_at_max_length": {
                str(c): round(
                    timings[names[0]][longest] / timings[n][longest], 1
                )
                for c, n in zip(CODEBOOKS, names[1:])
            },
            "float32_max_abs_diff": max(check.values()),
            "timings_ms": timings,
        },
        f,
        indent=2,
    )
