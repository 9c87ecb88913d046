"""The patterns of efficient attention, drawn as masks: which query sees which
key.

You will see:
* the causal masks of dense attention and of the sparse patterns (sliding
  window, dilated window, the strided and fixed patterns of the Sparse
  Transformer, block-local attention, a window with global tokens, and a
  BigBird-like mix of window, global and random keys), and the chunk structure
  of chunk-wise linear attention, as small images for T = 64;
* a table of how many query-key pairs each pattern computes, as a fraction of
  dense causal attention, at T = 64 and at longer lengths with the same
  parameters, and how many layers it takes before every query has heard from
  every earlier token.
"""

# %%
import json
import math

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

T_DRAWN = 64  # boolean masks on the CPU: the same sizes on every machine
LENGTHS = [64, 1024, 4096]
WINDOW, DILATION, BLOCK, CHUNK, RANDOM_KEYS = 8, 2, 16, 16, 2
torch.manual_seed(0)

# %% [markdown]
# Every pattern is a function of the length `T` that returns a boolean `[T, T]`
# matrix, `True` where query `t` (row) computes a score with key `s` (column).
# All are causal: only `s <= t`. `lag[t, s] = t - s`.


# %%
def lags(T):
    t = torch.arange(T)
    return t[:, None] - t[None, :]


def dense(T):
    return lags(T) >= 0


def sliding_window(T, w=WINDOW):
    """The last ``w`` keys, the query's own included (local attention)."""
    return (lags(T) >= 0) & (lags(T) < w)


def dilated_window(T, w=WINDOW, d=DILATION):
    """``w`` keys spaced ``d`` apart: the same cost as a window, ``d`` times the
    reach (Longformer)."""
    lag = lags(T)
    return (lag >= 0) & (lag < w * d) & (lag % d == 0)


def strided(T):
    """Sparse Transformer, strided: the last ``l`` keys and every ``l``-th key
    before, l = sqrt(T)."""
    l = round(math.sqrt(T))
    lag = lags(T)
    return (lag >= 0) & ((lag < l) | (lag % l == 0))


def fixed(T):
    """Sparse Transformer, fixed: the query's own block of ``l`` and the last
    key of every block."""
    l = round(math.sqrt(T))
    s = torch.arange(T)
    same_block = (s[:, None] // l) == (s[None, :] // l)
    summary = (s % l == l - 1)[None, :]
    return (lags(T) >= 0) & (same_block | summary)


def block_local(T, b=BLOCK):
    """Non-overlapping blocks of ``b``: attention inside the query's block only
    (TransNormer's DiagAttention)."""
    s = torch.arange(T)
    return (lags(T) >= 0) & ((s[:, None] // b) == (s[None, :] // b))


def window_and_global(T, w=WINDOW):
    """A window, plus global tokens (here 0 and T/2) that see every earlier key
    and are seen by all later queries."""
    mask = sliding_window(T, w)
    for g in (0, T // 2):
        mask[g, : g + 1] = True
        mask[g:, g] = True
    return mask


def bigbird_like(T, w=WINDOW, r=RANDOM_KEYS):
    """Window, one global token (0), and ``r`` random earlier keys per query
    (BigBird's three parts)."""
    mask = sliding_window(T, w)
    mask[:, 0] = True
    generator = torch.Generator().manual_seed(0)
    for t in range(1, T):
        mask[t, torch.randint(0, t, (r,), generator=generator)] = True
    return mask


def chunkwise_linear(T, c=CHUNK):
    """Chunk-wise linear attention: explicit scores inside each chunk of ``c``
    (the diagonal blocks); every earlier chunk reaches the query through the
    ``K x V`` state instead. Returns the explicit pairs and the pairs covered
    through the state."""
    s = torch.arange(T)
    same_chunk = (s[:, None] // c) == (s[None, :] // c)
    causal = lags(T) >= 0
    return causal & same_chunk, causal & ~same_chunk


PATTERNS = {
    "dense causal": dense,
    f"sliding window (w = {WINDOW})": sliding_window,
    f"dilated window (w = {WINDOW}, gap {DILATION})": dilated_window,
    "strided (l = √T)": strided,
    "fixed (l = √T)": fixed,
    f"block-local (blocks of {BLOCK})": block_local,
    f"window {WINDOW} + global tokens": window_and_global,
    f"BigBird-like (window, global, {RANDOM_KEYS} random)": bigbird_like,
    f"chunk-wise linear (chunks of {CHUNK})": chunkwise_linear,
}

# %% [markdown]
# The masks at `T = 64`. Dark cells are scores computed explicitly; in the
# chunk-wise panel the light cells are the pairs that reach the query through
# the state, summed into a `K x V` matrix rather than scored one by one.

# %%
cmap = ListedColormap(["white", "#9ecae1", "#08306b"])
fig, axes = plt.subplots(
    3, 3, figsize=(6.8, 8.0), sharex=True, sharey=True, layout="constrained"
)
for ax, (name, pattern) in zip(axes.flat, PATTERNS.items()):
    explicit, through_state = pattern(T_DRAWN), None
    if isinstance(explicit, tuple):
        explicit, through_state = explicit
    image = explicit.float() * 2 + (
        0 if through_state is None else through_state.float()
    )
    fraction = explicit.sum().item() / dense(T_DRAWN).sum().item()
    ax.imshow(image, cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
    # the longer names on two lines: three panels share the column's width
    title = name if len(name) <= 30 else name.replace(" (", "\n(", 1)
    ax.set_title(
        f"{title}\n{100 * fraction:.0f}% of the dense causal pairs", fontsize=9
    )
    ax.set_xticks([0, 32, 63])
    ax.set_yticks([0, 32, 63])
for ax in axes[-1]:
    ax.set_xlabel("key position s")
for ax in axes[:, 0]:
    ax.set_ylabel("query position t")
fig.legend(
    handles=[
        Patch(facecolor="#08306b", label="score computed explicitly"),
        Patch(facecolor="#9ecae1", label="reaches the query through the state"),
        Patch(
            facecolor="white", edgecolor="gray", label="no interaction (masked)"
        ),
    ],
    loc="outside lower center",
    ncol=2,
    frameon=False,
)
fig.savefig("masks.svg")

# %% [markdown]
# Counting. The fraction is the number of explicit query-key pairs over the
# `T (T + 1) / 2` of dense causal attention. The reach is the number of stacked
# layers after which every query has, directly or through intermediate tokens,
# received information from every earlier token: the smallest `n` with every
# causal pair in the `n`-th boolean power of the mask (the chunk-wise form
# counts the state's pairs too), or "never" when some pairs stay out of reach
# however many layers are stacked.


# %%
def layers_to_reach_all(covered):
    """Smallest number of stacked layers after which every causal pair is
    connected, or None when stacking more layers stops adding pairs first (some
    earlier tokens are never heard)."""
    target = dense(covered.shape[0])
    reach, n = covered.clone(), 1
    while not torch.equal(reach, target):
        wider = (reach.float() @ covered.float()) > 0  # paths of one more layer
        if torch.equal(wider, reach):
            return None
        reach, n = wider, n + 1
    return n


rows, results = [], {"lengths": LENGTHS, "patterns": {}}
for name, pattern in PATTERNS.items():
    entry = {"fraction": {}, "pairs": {}}
    for T in LENGTHS:
        explicit = pattern(T)
        covered = explicit
        if isinstance(explicit, tuple):
            explicit, through_state = explicit
            covered = explicit | through_state
        entry["pairs"][T] = int(explicit.sum())
        entry["fraction"][T] = explicit.sum().item() / (T * (T + 1) / 2)
        entry["most_keys_per_query"] = entry.get("most_keys_per_query", {}) | {
            T: int(explicit.sum(1).max())
        }
        if T == T_DRAWN:
            entry["layers_to_reach_all"] = layers_to_reach_all(covered)
    results["patterns"][name] = entry
    reach = entry["layers_to_reach_all"]
    rows.append(
        [name, f"{entry['pairs'][T_DRAWN]:,}"]
        + [f"{100 * entry['fraction'][T]:.3g}%" for T in LENGTHS]
        + [
            f"{entry['most_keys_per_query'][LENGTHS[-1]]:,}",
            str(reach) if reach else "never",
        ]
    )

header = (
    ["pattern", f"pairs, T = {T_DRAWN}"]
    + [f"% of dense, T = {T}" for T in LENGTHS]
    + [
        f"max keys per query, T = {LENGTHS[-1]}",
        f"layers to reach all, T = {T_DRAWN}",
    ]
)
table = "\n".join(
    ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    + ["| " + " | ".join(row) + " |" for row in rows]
)
print(table)
with open("masks.md", "w") as f:
    f.write(table + "\n")

# %%
by_key = {
    "window": f"sliding window (w = {WINDOW})",
    "strided": "strided (l = √T)",
    "chunkwise": f"chunk-wise linear (chunks of {CHUNK})",
    "bigbird": list(PATTERNS)[7],
}
with open("results.json", "w") as f:
    json.dump(
        results
        | {
            "T_drawn": T_DRAWN,
            "window": WINDOW,
            "chunk": CHUNK,
            "max_length": LENGTHS[-1],
            **{
                f"{short}_percent_at_max": 100
                * results["patterns"][name]["fraction"][LENGTHS[-1]]
                for short, name in by_key.items()
            },
            **{
                f"{short}_percent_at_drawn": 100
                * results["patterns"][name]["fraction"][T_DRAWN]
                for short, name in by_key.items()
            },
            "window_layers_to_reach_all": results["patterns"][by_key["window"]][
                "layers_to_reach_all"
            ],
            "strided_layers_to_reach_all": results["patterns"][
                by_key["strided"]
            ]["layers_to_reach_all"],
        },
        f,
        indent=2,
        ensure_ascii=False,
    )
