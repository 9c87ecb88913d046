"""A codebook learned by k-means, and how
close VQ attention gets to exact attention.

You will see:
* k-means (Lloyd's algorithm) fitting a codebook of ``S_c`` codewords to keys
  from training sequences;
* on fresh sequences, the error of the quantised keys and of causal VQ attention
  against exact softmax attention, as the codebook grows from 1 codeword to
  hundreds (a plot);
* keys with structure (drawn around a limited number of centres) against keys
  without any (isotropic Gaussian), and k-means against a codebook of keys
  picked at random.
"""

# %%
import json

import matplotlib.pyplot as plt
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
K, T, TRAIN_KEYS, CENTRES, SIZES = (
    (64, 4096, 65536, 256, [2**i for i in range(13)])
    if DEVICE == "cuda"
    else (32, 1024, 8192, 64, [2**i for i in range(10)])
)
SCALE = K**-0.5
ITERATIONS = 20
torch.manual_seed(0)
if DEVICE == "cpu":
    # many small operations: more threads cost more than they save here
    torch.set_num_threads(1)


# %% [markdown]
# Two kinds of keys. *Clustered* keys lie around `CENTRES` fixed directions,
# each key a centre plus noise a quarter of its size in each coordinate, as keys
# of a trained model often concentrate on a limited number of directions;
# *Gaussian* keys have no structure at all. The training keys and the keys of
# the test sequence are drawn separately from the same distribution.

# %%
centres = torch.randn(CENTRES, K, device=DEVICE)


def draw_keys(kind, n):
    if kind == "clustered":
        return (
            centres[torch.randint(CENTRES, (n,), device=DEVICE)]
            + torch.randn(n, K, device=DEVICE) / 4
        )
    return torch.randn(n, K, device=DEVICE)


# %% [markdown]
# Lloyd's algorithm: assign every key to its nearest codeword, move every
# codeword to the mean of its keys, repeat. It starts from k-means++ seeds (each
# new seed a key drawn with probability proportional to its squared distance
# from the seeds so far), and a codeword that loses all its keys is moved onto a
# random key.


# %%
def nearest(x, codebook):
    """Index of the nearest codeword for each row of ``x``."""
    # |x|^2 does not change the argmin
    return (-2 * x @ codebook.mT + codebook.square().sum(-1)).argmin(dim=-1)


def kmeans_plus_plus(x, n_codes):
    seeds = [x[torch.randint(x.shape[0], (), device=x.device)]]
    distance = torch.full((x.shape[0],), float("inf"), device=x.device)
    for _ in range(n_codes - 1):
        distance = torch.minimum(distance, (x - seeds[-1]).square().sum(-1))
        seeds.append(x[torch.multinomial(distance, 1)[0]])
    return torch.stack(seeds)


def kmeans(x, n_codes, iterations=ITERATIONS):
    codebook = kmeans_plus_plus(x, n_codes)
    for _ in range(iterations):
        z = nearest(x, codebook)
        sums = torch.zeros_like(codebook).index_add_(0, z, x)
        counts = torch.bincount(z, minlength=n_codes).to(x.dtype)
        empty = counts == 0
        codebook = torch.where(
            empty[:, None],
            x[torch.randint(x.shape[0], (n_codes,), device=x.device)],
            sums / counts.clamp_min(1)[:, None],
        )
    return codebook


def causal_attention(q, k, v):
    logits = (SCALE * q @ k.mT).masked_fill(
        torch.ones(T, T, dtype=torch.bool, device=DEVICE).triu(1), float("-inf")
    )
    return torch.softmax(logits, dim=-1) @ v


# %% [markdown]
# For every codebook size: fit on the training keys, quantise the test
# sequence's keys, and compare causal attention with quantised keys against
# causal attention with the original keys (relative Frobenius error of the
# outputs). The queries and values are Gaussian. One codeword means every key is
# the same, so the attention weights are uniform over the past.

# %%
q, v = torch.randn(T, K, device=DEVICE), torch.randn(T, K, device=DEVICE)
curves = {}
for kind, fit in (
    ("clustered keys, k-means", True),
    ("clustered keys, random keys as codebook", False),
    ("Gaussian keys, k-means", True),
):
    torch.manual_seed(1)
    key_kind = kind.split()[0].lower()
    train, k = draw_keys(key_kind, TRAIN_KEYS), draw_keys(key_kind, T)
    exact = causal_attention(q, k, v)
    curves[kind] = {"key_error": [], "output_error": []}
    for n_codes in SIZES:
        codebook = (
            kmeans(train, n_codes)
            if fit
            else train[torch.randperm(TRAIN_KEYS, device=DEVICE)[:n_codes]]
        )
        k_hat = codebook[nearest(k, codebook)]
        curves[kind]["key_error"].append(
            ((k - k_hat).square().sum() / k.square().sum()).item()
        )
        curves[kind]["output_error"].append(
            (
                (causal_attention(q, k_hat, v) - exact).norm() / exact.norm()
            ).item()
        )
    print(f"{kind}:")
    print("  S_c          " + " ".join(f"{s:7d}" for s in SIZES))
    print(
        "  key error    "
        + " ".join(f"{e:7.3f}" for e in curves[kind]["key_error"])
    )
    print(
        "  output error "
        + " ".join(f"{e:7.3f}" for e in curves[kind]["output_error"])
    )

# %%
fig, axes = plt.subplots(2, 1, figsize=(6.8, 7.8), sharex=True)
for (kind, curve), style in zip(curves.items(), ["o-", "s--", "^-"]):
    axes[0].plot(SIZES, curve["output_error"], style, ms=4, label=kind)
    axes[1].plot(SIZES, curve["key_error"], style, ms=4, label=kind)
axes[0].axvline(
    CENTRES,
    color="gray",
    lw=0.8,
    ls=":",
    label=f"number of centres ({CENTRES})",
)
axes[1].axvline(
    CENTRES,
    color="gray",
    lw=0.8,
    ls=":",
    label=f"number of centres ({CENTRES})",
)
axes[0].set(
    title="Causal VQ attention against exact attention",
    ylabel=r"output error $\|O_{VQ} - O\| / \|O\|$",
)
axes[1].set(
    title="Quantised keys against the keys",
    ylabel=r"key error $\|K - \hat{K}\|^2 / \|K\|^2$",
)
for ax in axes:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
axes[-1].set_xlabel("codebook size $S_c$ (codewords)")
fig.suptitle(
    f"Codebooks fitted on {TRAIN_KEYS} training keys,\n"
    f"tested on a new sequence of $T = {T}$, $K = {K}$"
)
fig.tight_layout()
fig.savefig("vq_error.svg")

# %%
at = CENTRES  # read the curves at a codebook as large as the number of centres
index = SIZES.index(at)


def error(kind, i):
    """The output error of one curve at codebook size ``SIZES[i]``, to three
    decimals.
    """
    return round(curves[kind]["output_error"][i], 3)


with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "K": K,
            "T": T,
            "train_keys": TRAIN_KEYS,
            "centres": CENTRES,
            "sizes": SIZES,
            "at_centres": at,
            "clustered_kmeans_output_error_at_centres": error(
                "clustered keys, k-means", index
            ),
            "clustered_random_output_error_at_centres": error(
                "clustered keys, random keys as codebook", index
            ),
            "gaussian_kmeans_output_error_at_centres": error(
                "Gaussian keys, k-means", index
            ),
            "uniform_output_error": error("clustered keys, k-means", 0),
            "largest": SIZES[-1],
            "gaussian_kmeans_output_error_at_largest": error(
                "Gaussian keys, k-means", -1
            ),
            "clustered_kmeans_output_error_at_largest": error(
                "clustered keys, k-means", -1
            ),
            "curves": curves,
        },
        f,
        indent=2,
    )
