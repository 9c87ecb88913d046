"""Mixed chunk attention (FLASH): quadratic
inside a chunk, linear across chunks.

You will see:
* the naive definition: one ``[T, T]`` matrix of weights, squared-ReLU scores on
  the causal block diagonal and linear-attention scores on every earlier chunk
  (drawn as a figure);
* the chunked form, ``mixed_chunk_attention`` from the package (a ``[C, C]``
  product per chunk, plus each chunk's ``K^T V`` summed over the chunks before
  it), equals the naive definition in float64 for lengths that are not multiples
  of the chunk, and for T = 1;
* the cross-chunk term computed by ``kernels.linear_attention``, on a sequence
  in which each chunk's queries come before its keys and values;
* causality: changing one token leaves every earlier output unchanged, and an
  inclusive sum (the chunk's own ``K^T V`` added too early) would break that.

Inputs are ``[B, T, S]`` (queries and keys) and ``[B, T, E]`` (values): FLASH
has one head.
"""

# %%
import json

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from kernels import linear_attention, uses_triton
from kernels.bench import max_diff
from kernels.linear_attention.naive import mixed_chunk_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B, S, E, CHUNK, LENGTHS = (
    (2, 128, 256, 256, [1, 300, 1000, 2049])
    if DEVICE == "cuda"
    else (2, 32, 64, 32, [1, 37, 64, 100, 161])
)
torch.manual_seed(0)


# %% [markdown]
# The definition. Position `t` lies in chunk `g(t) = t // C`. Its weight on
# position `s` is the squared-ReLU score
# `relu(scale * q_quad_t . k_quad_s)^2 / C` when `s` is in the same chunk and
# not after `t`, the linear score `q_lin_t . k_lin_s / (g(t) C)` when `s` is in
# an earlier chunk, and 0 otherwise. The two normalisers are the chunk size and
# the number of earlier tokens.


# %%
def mixed_chunk_naive(q_quad, k_quad, q_lin, k_lin, v, chunk, inclusive=False):
    """``[B, T, S] x 4, [B, T, E] -> ([B, T, E], [B, T, T])``: the output and
    the full weight matrix.

    ``inclusive=True`` is the mistake shown at the end: linear weights on the
    whole of ``t``'s own chunk too, its later positions included."""
    T, S_ = q_quad.shape[-2:]
    t = torch.arange(T, device=v.device)
    g = t // chunk  # chunk of each position
    # quadratic part, causal
    same_chunk = (g[:, None] == g[None, :]) & (t[None, :] <= t[:, None])
    earlier_chunk = g[None, :] < g[:, None]  # linear part
    quad = F.relu(S_**-0.5 * q_quad @ k_quad.mT) ** 2 / chunk  # [B, T, T]
    # divided by the g(t) C earlier tokens
    lin = (q_lin @ k_lin.mT) / (g * chunk).clamp_min(1)[:, None]
    # the chunk's own K^T V added too: every position of the chunk, later ones
    # included
    if inclusive:
        earlier_chunk = g[None, :] <= g[:, None]
        lin = (q_lin @ k_lin.mT) / ((g + 1) * chunk)[:, None]
    W = torch.where(same_chunk, quad, 0.0) + torch.where(
        earlier_chunk, lin, 0.0
    )
    return W @ v, W


# %% [markdown]
# The chunked form is `mixed_chunk_attention` in the package
# (`kernels/linear_attention/naive.py`). It pads the sequence with zeros to a
# whole number of chunks (zero keys and values add nothing), views it as
# `[B, N, C, d]`, computes the masked squared-ReLU scores of each chunk as one
# batched `[C, C]` product, and for the cross-chunk part takes each chunk's
# `K^T V` (`[B, N, S, E]`), sums them over the chunks before (a cumulative sum
# over the chunk axis, shifted by one chunk), and multiplies each chunk's linear
# queries by its sum, divided by the `g C` earlier tokens. The `[T, T]` weights
# never appear.

# %% [markdown]
# The chunked form against the definition, in float64, at lengths that are not
# multiples of the chunk (and T = 1, a single token in a single chunk).


# %%
def random_inputs(T, dtype=torch.float64):
    q_quad, k_quad, q_lin, k_lin = (
        torch.randn(B, T, S, dtype=dtype, device=DEVICE) for _ in range(4)
    )
    return (
        q_quad,
        k_quad,
        q_lin,
        k_lin,
        torch.randn(B, T, E, dtype=dtype, device=DEVICE),
    )


equality = {}
for T in LENGTHS:
    inputs = random_inputs(T)
    equality[T] = max_diff(
        mixed_chunk_attention(*inputs, CHUNK),
        mixed_chunk_naive(*inputs, CHUNK)[0],
    )
    print(
        f"T = {T:4d}, chunks of {CHUNK}: {-(-T // CHUNK)}; chunked vs naive, "
        f"float64, max |diff| {equality[T]:.1e}"
    )

# %% [markdown]
# The cross-chunk term with the linear-attention kernel. `linear_attention` is
# causal at the level of tokens: position `t` sees every position up to `t`. To
# make a chunk see only the chunks before it, build a sequence of `2 C`
# positions per chunk: first the chunk's `C` queries (with zero keys and values,
# which add nothing to the state), then its `C` keys and values (with zero
# queries). A query position then sees exactly the keys of all earlier chunks.
# Adding zeros is exact, so nothing is approximated; the price is a sequence
# twice as long.


# %%
def to_chunks(x, chunk):
    """``[B, T, d] -> [B, N, C, d]``, zero-padded at the end to
    ``N = ceil(T / C)`` chunks.
    """
    pad = (-x.shape[1]) % chunk
    return F.pad(x, (0, 0, 0, pad)).reshape(x.shape[0], -1, chunk, x.shape[-1])


def global_linear_with_kernel(q_lin, k_lin, v, chunk):
    """The cross-chunk term computed by ``kernels.linear_attention`` (one head):
    ``[B, T, E]``.
    """
    T = v.shape[1]
    qc, kc, vc = (to_chunks(x, chunk) for x in (q_lin, k_lin, v))
    # the chunk's queries first
    readers = (qc, torch.zeros_like(kc), torch.zeros_like(vc))
    writers = (torch.zeros_like(qc), kc, vc)  # then its keys and values
    # [B, 1, 2 N C, d]
    q, k, vv = (
        torch.cat([r, w], dim=2).reshape(qc.shape[0], 1, -1, r.shape[-1])
        for r, w in zip(readers, writers)
    )
    o = linear_attention(q, k, vv, causal=True, scale=1.0)  # [B, 1, 2 N C, E]
    # the queries' outputs
    o = o.reshape(qc.shape[0], qc.shape[1], 2 * chunk, -1)[:, :, :chunk]
    earlier_tokens = (
        torch.arange(qc.shape[1], device=v.device) * chunk
    ).clamp_min(1)
    o = o / earlier_tokens[:, None, None]
    return o.reshape(o.shape[0], -1, o.shape[-1])[:, :T]  # [B, T, E]


def linear_part_naive(q_quad, k_quad, q_lin, k_lin, v, chunk):
    """The cross-chunk term from the definition: the weights on earlier chunks
    only.
    """
    g = torch.arange(v.shape[1], device=v.device) // chunk
    _, W = mixed_chunk_naive(q_quad, k_quad, q_lin, k_lin, v, chunk)
    return torch.where(g[None, :] < g[:, None], W, 0.0) @ v


path = (
    "chunk-wise Triton kernel"
    if uses_triton(torch.zeros(1, device=DEVICE))
    else "PyTorch reference"
)
T = LENGTHS[-1]
q_quad, k_quad, q_lin, k_lin, v = random_inputs(T)
by_kernel = global_linear_with_kernel(
    q_lin.float(), k_lin.float(), v.float(), CHUNK
)
linear_part = linear_part_naive(q_quad, k_quad, q_lin, k_lin, v, CHUNK)
kernel_diff = max_diff(by_kernel, linear_part)
print(
    f"cross-chunk term, T = {T}: linear_attention ({path}, float32) vs the "
    f"definition (float64):\n  max |diff| {kernel_diff:.1e}, largest |value| "
    f"{linear_part.abs().max():.1f}"
)

# %% [markdown]
# Causality. Change the inputs at one position `p` and compare the outputs
# before `p`. The chunked form must leave them exactly unchanged. For contrast,
# an *inclusive* cumulative sum (each chunk's own `K^T V` included) lets every
# token see the rest of its chunk: that is the definition with `inclusive=True`.

# %%
p = CHUNK + CHUNK // 2  # a position in the middle of the second chunk
changed = [x.clone() for x in (q_quad, k_quad, q_lin, k_lin, v)]
for x in changed:
    x[:, p] = torch.randn_like(x[:, p])
original = (q_quad, k_quad, q_lin, k_lin, v)
exclusive_leak = max_diff(
    mixed_chunk_attention(*changed, CHUNK)[:, :p],
    mixed_chunk_attention(*original, CHUNK)[:, :p],
)

inclusive_leak = max_diff(
    mixed_chunk_naive(*changed, CHUNK, inclusive=True)[0][:, :p],
    mixed_chunk_naive(*original, CHUNK, inclusive=True)[0][:, :p],
)
print(
    f"change at position {p}: the outputs before it move by "
    f"{exclusive_leak:.1e}; with an inclusive sum by {inclusive_leak:.1e}"
)

# %% [markdown]
# Where each weight comes from, for a short sequence: the causal blocks on the
# diagonal are computed quadratically, everything to their left by the linear
# part, the rest is masked.

# %%
T_PLOT, C_PLOT = 48, 12
t = torch.arange(T_PLOT)
g = t // C_PLOT
kind = torch.zeros(T_PLOT, T_PLOT)
kind[(g[:, None] == g[None, :]) & (t[None, :] <= t[:, None])] = 1  # quadratic
kind[g[None, :] < g[:, None]] = 2  # linear
colors = ["#ffffff", "#d95f02", "#7570b3"]
fig, ax = plt.subplots(figsize=(6.8, 6.4))
ax.imshow(
    kind.numpy(),
    cmap=ListedColormap(colors),
    vmin=0,
    vmax=2,
    interpolation="nearest",
)
for edge in range(C_PLOT, T_PLOT, C_PLOT):
    ax.axhline(edge - 0.5, color="gray", lw=0.6)
    ax.axvline(edge - 0.5, color="gray", lw=0.6)
ax.set(
    xlabel="key position $s$ (token index)",
    ylabel="query position $t$ (token index)",
    title=f"Causal mixed chunk attention, $T = {T_PLOT}$, $C = {C_PLOT}$",
)
ax.legend(
    handles=[
        Patch(facecolor=colors[1], label="squared ReLU, within the chunk"),
        Patch(facecolor=colors[2], label="linear, earlier chunks"),
        Patch(facecolor=colors[0], edgecolor="gray", label="masked (future)"),
    ],
    loc="upper right",
)
fig.tight_layout()
fig.savefig("mixed_chunk_mask.svg")

with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "chunk": CHUNK,
            "S": S,
            "E": E,
            "lengths": LENGTHS,
            "max_abs_diff": max(equality.values()),
            "max_abs_diff_by_T": equality,
            "kernel_path": path,
            "kernel_vs_cumsum_max_abs_diff": kernel_diff,
            "changed_position": p,
            "exclusive_leak": exclusive_leak,
            "inclusive_leak": inclusive_leak,
        },
        f,
        indent=2,
    )
