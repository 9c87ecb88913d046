"""The candidate tree of Medusa, its attention
mask, and one forward that verifies it.

You will see:
* the default tree: each node's path, parent, depth and position id, and its
  attention mask (a node sees itself and its ancestors, plus the whole KV
  cache), drawn one above the other;
* ``tree_attention`` (the Triton kernel) equals the PyTorch reference
  ``tree_attention_ref``, and with a lower-triangular mask it is ordinary causal
  attention over a cache;
* on the trained byte-level model: the heads fill the tree with candidate bytes,
  and one forward over the whole tree gives every node the same logits as a
  plain causal forward over its own root path; with the wrong position ids it
  does not.
"""

# %%
import json

import matplotlib.pyplot as plt
import torch

from kernels import uses_triton  # the same test for every kernel

# largest absolute difference, compared in float64
from kernels.bench import max_diff
from kernels.flash_attention import attention_ref
from kernels.models import load_models
from kernels.speculative import (
    DEFAULT_TREE,
    build_tree,
    tree_attention,
    tree_attention_ref,
    tree_candidates,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# which preset of trained models to load
SIZE = "gpu" if DEVICE == "cuda" else "cpu"
torch.manual_seed(0)
if DEVICE == "cpu":
    # tiny matrices: one thread avoids the thread pool's overhead
    torch.set_num_threads(1)


# %% [markdown]
# A tree is a list of paths: `(0, 1)` is the best token of head 0 followed by
# the second best of head 1. Node 0 is the root, the token that the last step
# emitted and that the target has not seen yet. Nodes are numbered by depth,
# then path; a node at depth `d` sits at position `start + d` of the sequence,
# whatever its number.

# %%
tree = build_tree(DEFAULT_TREE)
print(
    f"default tree: {tree.num_nodes} nodes (root + {tree.num_nodes - 1} "
    f"candidates), depth {tree.max_depth}, top-{tree.top_k} per head"
)
print("node  path          parent  depth  position id")
for i in range(tree.num_nodes):
    path = tree.paths[i - 1] if i else "(root)"
    print(
        f"{i:4d}  {str(path):12s}  {int(tree.parent[i]):6d}  "
        f"{int(tree.depth[i]):5d}  start + {int(tree.depth[i])}"
    )


# %% [markdown]
# The drawing: at the top the tree (edge labels say which top-k choice of which
# head a node is), below it `tree.mask`, row `i` marking the nodes that node `i`
# attends to.


# %%
def layout(tree):
    """(x, y) of each node: x = depth, leaves spread on y in depth-first order,
    parents centred.
    """
    y, next_leaf = {}, [0]

    def place(node):
        kids = tree.children[node]
        for kid in kids:
            place(kid)
        if kids:
            y[node] = sum(y[k] for k in kids) / len(kids)
        else:
            y[node], next_leaf[0] = next_leaf[0], next_leaf[0] + 1

    place(0)
    return {i: (int(tree.depth[i]), -y[i]) for i in range(tree.num_nodes)}


pos = layout(tree)
fig, (ax_t, ax_m) = plt.subplots(
    2, 1, figsize=(6.8, 9.6), gridspec_kw={"height_ratios": [1, 1.25]}
)
for i in range(1, tree.num_nodes):
    (x0, y0), (x1, y1) = pos[int(tree.parent[i])], pos[i]
    ax_t.plot([x0, x1], [y0, y1], color="gray", lw=1, zorder=1)
    ax_t.text(
        (x0 + x1) / 2,
        (y0 + y1) / 2 + 0.12,
        f"top-{int(tree.rank[i]) + 1}",
        fontsize=9,
        ha="center",
        color="C3",
    )
for i, (x, y) in pos.items():
    ax_t.scatter(
        [x],
        [y],
        s=330,
        color="white" if i else "C1",
        edgecolors="black",
        zorder=2,
    )
    ax_t.text(x, y, str(i), ha="center", va="center", fontsize=9, zorder=3)
ax_t.set_xticks(
    range(tree.max_depth + 1),
    ["root"]
    + [f"head {d - 1}\n(pos. start+{d})" for d in range(1, tree.max_depth + 1)],
)
ax_t.set_yticks([])
ax_t.set(
    xlabel="depth (the head that proposes the token)",
    title="Default candidate tree (node numbers)",
)
ax_t.set_xlim(-0.4, tree.max_depth + 0.4)
ax_t.margins(y=0.1)
ax_m.imshow(tree.mask.int(), cmap="Blues", vmin=0, vmax=1.4)
ax_m.set_xticks(range(tree.num_nodes))
ax_m.set_yticks(range(tree.num_nodes))
ax_m.set(
    xlabel="key: node $j$",
    ylabel="query: node $i$",
    title="Tree mask: $i$ sees $j$ (filled); all nodes see the cache",
)
ax_m.set_xticks([x - 0.5 for x in range(1, tree.num_nodes)], minor=True)
ax_m.set_yticks([x - 0.5 for x in range(1, tree.num_nodes)], minor=True)
ax_m.grid(which="minor", color="white", lw=1)
ax_m.tick_params(which="minor", length=0)
fig.tight_layout()
fig.savefig("tree_mask.svg", facecolor="white")

# %% [markdown]
# Tree attention: the `Tq` nodes attend to `Tk - Tq` cached keys (all visible)
# and to each other through the mask. Grouped-query heads (4 query heads, 2
# key/value heads) and a cache length that is no multiple of a tile. The
# reference runs in float64, the kernel in float32.

# %%
B, H, HKV, CACHED, D = (
    (2, 12, 4, 1000, 64) if DEVICE == "cuda" else (1, 4, 2, 37, 16)
)
TQ = tree.num_nodes
q = torch.randn(B, H, TQ, D, dtype=torch.float64, device=DEVICE)
k, v = (
    torch.randn(B, HKV, CACHED + TQ, D, dtype=torch.float64, device=DEVICE)
    for _ in range(2)
)
mask = tree.mask.to(DEVICE)
path = (
    "Triton kernel"
    if uses_triton(q.float())
    else "PyTorch reference (no GPU and TRITON_INTERPRET unset)"
)
print(f"tree_attention runs the {path} on {DEVICE}")
kernel_diff = max_diff(
    tree_attention(q.float(), k.float(), v.float(), mask),
    tree_attention_ref(q, k, v, mask),
)
causal = torch.ones(TQ, TQ, dtype=torch.bool, device=DEVICE).tril()
causal_diff = max_diff(
    tree_attention(q.float(), k.float(), v.float(), causal),
    attention_ref(q, k, v, causal=True),
)
print(
    "tree_attention (float32) vs tree_attention_ref (float64), default tree "
    f"mask: max |diff| {kernel_diff:.1e}"
)
print(
    "tree_attention with a lower-triangular mask vs causal "
    f"attention_ref:          max |diff| {causal_diff:.1e}"
)

# %% [markdown]
# Now the trained target and its heads (trained and cached on the first run,
# under a minute on a CPU, loaded in seconds afterwards; `verbose=True` shows
# the training progress). The prompt is fed except its last byte, which becomes
# the root; the Medusa heads read the hidden state at the last fed position and
# their top-3 bytes fill the tree.

# %%
# the heads come with their target
models = load_models(SIZE, device=DEVICE, models=("heads",), verbose=False)
target, heads = models["target"], models["heads"]
prompt = torch.tensor(
    list(b"class Queue:\n    def __init__(self, maxsize=0):\n        self."),
    device=DEVICE,
)
cache = target.new_cache()
# the prompt except its last byte
_, hidden = target(prompt[None, :-1], cache, return_hidden=True)
head_logits = heads(hidden[:, -1:])[0, 0]  # [heads, V]
# [N+1] byte of every node
nodes = tree_candidates(tree, prompt[-1], head_logits)


def root_path(i):
    """Node indices from the root to node i."""
    chain = [i]
    while chain[-1] > 0:
        chain.append(int(tree.parent[chain[-1]]))
    return chain[::-1]


leaves = [i for i in range(tree.num_nodes) if not tree.children[i]]
print(
    f"prompt ends with {bytes(prompt[-20:].tolist())!r}; the root is "
    f"{chr(prompt[-1])!r}"
)
print("root paths of the tree (the continuations one forward will score):")
for leaf in leaves:
    print(
        f"  nodes {root_path(leaf)!s:18s} "
        f"{bytes(nodes[root_path(leaf)].tolist())!r}"
    )

# %% [markdown]
# One forward over the 13 nodes, with the tree mask and position ids
# `start + depth`. Each node's logits must equal those of a plain causal forward
# over the prompt followed by its root path (no cache, no mask). A second tree
# forward with positions `start + node index`, as if the flattened tree were an
# ordinary sequence, shows why the position ids matter.

# %%
start = cache.length
with torch.no_grad():
    tree_logits = target(
        nodes[None],
        cache,
        tree_mask=mask,
        position_ids=start + tree.depth.to(DEVICE),
    )[0]
    # forget the tree, try again with sequential positions
    cache.truncate(start)
    wrong_logits = target(nodes[None], cache, tree_mask=mask)[0]
    plain = torch.stack(
        [
            target(torch.cat([prompt[:-1], nodes[root_path(i)]])[None])[0, -1]
            for i in range(tree.num_nodes)
        ]
    )  # [N+1, V]
tree_forward_diff = max_diff(tree_logits, plain)
wrong_positions_diff = max_diff(wrong_logits, plain)
print(
    "tree forward vs a plain forward over each root path, max |logit diff|: "
    f"{tree_forward_diff:.1e}"
)
print(
    "  the same with position ids start + node index instead of start + "
    f"depth: {wrong_positions_diff:.1e}"
)

with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "kernel_path": path,
            "num_nodes": tree.num_nodes,
            "max_depth": tree.max_depth,
            "top_k": tree.top_k,
            "num_leaves": len(leaves),
            "cached_keys": CACHED,
            "kernel_max_abs_diff": kernel_diff,
            "causal_max_abs_diff": causal_diff,
            "tree_forward_max_abs_diff": tree_forward_diff,
            "wrong_positions_max_abs_diff": wrong_positions_diff,
        },
        f,
        indent=2,
    )
