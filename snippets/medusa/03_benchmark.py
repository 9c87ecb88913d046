"""Speed: Medusa decoding against plain decoding,
in tokens per second, for several trees.

You will see, for the GPU-size target (8 layers, 26M parameters) and its four
Medusa heads, the tokens per second of plain decoding and of Medusa decoding
with trees from one to 39 candidates, greedy and at temperature 1 (exact and
typical acceptance), with the accepted candidates per step and the speed-up over
plain decoding at the same temperature. Batch 1. Only a GPU run says anything
about speed; on a CPU the snippet runs the small models briefly.
"""

# requires: cuda
# %%
import itertools
import json
import time

import matplotlib.pyplot as plt
import torch

from kernels.models import TRAINING, load_corpus, load_models, split
from kernels.speculative import DEFAULT_TREE, generate, medusa_generate

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# GPU grid sized for about 20 s of decoding: 3 modes x 6 trees x 3 prompts x 128
# tokens.
SIZE, PROMPTS, PROMPT_LEN, NEW_TOKENS = (
    ("gpu", 3, 64, 128) if DEVICE == "cuda" else ("cpu", 2, 32, 16)
)
WHERE = (
    torch.cuda.get_device_name()
    if DEVICE == "cuda"
    else "CPU (timings say nothing about GPUs)"
)
print(f"device: {WHERE}")
if DEVICE == "cpu":
    # tiny matrices: one thread avoids the thread pool's overhead
    torch.set_num_threads(1)

# target and heads, trained on first use
models = load_models(SIZE, device=DEVICE, models=("heads",))
target, heads = models["target"], models["heads"]
_, held_out = split(load_corpus(TRAINING[SIZE].corpus_bytes)[0])
starts = torch.randint(
    len(held_out) - PROMPT_LEN,
    (PROMPTS,),
    generator=torch.Generator().manual_seed(0),
)
prompts = [
    held_out[s : s + PROMPT_LEN].long().to(DEVICE) for s in starts.tolist()
]


def full_tree(k, depth):
    """All paths with ranks < k, up to ``depth``: k + k^2 + ... + k^depth
    candidates.
    """
    return [
        p
        for d in range(1, depth + 1)
        for p in itertools.product(range(k), repeat=d)
    ]


TREES = {
    "chain 1": [(0,)],
    "chain 2": full_tree(1, 2),
    "chain 4": full_tree(1, 4),
    "default": DEFAULT_TREE,
    "full 2x2x2": full_tree(2, 3),
    "full 3x3x3": full_tree(3, 3),
}
MODES = {
    "greedy": dict(temperature=0.0, acceptance="exact"),
    "T=1, exact": dict(temperature=1.0, acceptance="exact"),
    "T=1, typical": dict(temperature=1.0, acceptance="typical"),
}


# %% [markdown]
# Tokens per second over all prompts (batch 1, one prompt at a time), after a
# warm-up run of every configuration (Triton compiles the kernels on first use).
# Medusa's time includes the heads and the acceptance rule; `DecodeStats` also
# splits off the target's forwards.


# %%
def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def plain_rate(temperature):
    generate(target, prompts[0], 8, temperature=temperature)  # warm-up
    sync()
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        generate(
            target,
            prompt,
            NEW_TOKENS,
            temperature=temperature,
            generator=torch.Generator(device=DEVICE).manual_seed(i),
        )
    sync()
    return PROMPTS * NEW_TOKENS / (time.perf_counter() - start)


def medusa_rate(tree, mode):
    # warm-up
    medusa_generate(target, heads, prompts[0], 8, tree=tree, **MODES[mode])
    wall, accepted, steps, target_s = 0.0, 0, 0, 0.0
    for i, prompt in enumerate(prompts):
        _, stats = medusa_generate(
            target,
            heads,
            prompt,
            NEW_TOKENS,
            tree=tree,
            generator=torch.Generator(device=DEVICE).manual_seed(i),
            **MODES[mode],
        )
        wall, accepted, steps, target_s = (
            wall + stats.wall_s,
            accepted + stats.accepted,
            steps + stats.target_forwards,
            target_s + stats.target_s,
        )
    return {
        "tokens_per_s": PROMPTS * NEW_TOKENS / wall,
        "accepted_per_step": accepted / steps,
        "target_share": target_s / wall,
    }


plain = {"greedy": plain_rate(0.0)}
plain["T=1, exact"] = plain["T=1, typical"] = plain_rate(1.0)
print(
    f"plain decoding: {plain['greedy']:.0f} tokens/s greedy, "
    f"{plain['T=1, exact']:.0f} tokens/s at T=1"
)
results = {}
for mode in MODES:
    for name, tree in TREES.items():
        r = medusa_rate(tree, mode)
        r["speedup"] = r["tokens_per_s"] / plain[mode]
        results[(mode, name)] = r
        print(
            f"{mode:13s} {name:13s} ({len(tree):2d} cand.): "
            f"{r['tokens_per_s']:7.0f} tokens/s, {r['speedup']:.2f}x, "
            f"{r['accepted_per_step']:.2f} accepted per step, target forwards "
            f"{100 * r['target_share']:.0f}% of the time",
            flush=True,
        )

# %% [markdown]
# Speed-up over plain decoding at the same temperature, and the acceptance
# length behind it.

# %%
fig, (ax_s, ax_a) = plt.subplots(2, 1, figsize=(6.8, 7.4), sharex=True)
sizes = [len(tree) for tree in TREES.values()]
for mode in MODES:
    ax_s.plot(
        sizes,
        [results[(mode, name)]["speedup"] for name in TREES],
        "o-",
        label=mode,
    )
    ax_a.plot(
        sizes,
        [results[(mode, name)]["accepted_per_step"] for name in TREES],
        "o-",
        label=mode,
    )
ax_s.axhline(1.0, color="gray", ls="--", lw=1)
ax_s.set(
    xscale="log",
    ylabel="speed-up over plain decoding (×)",
    title="Tokens/s relative to plain decoding",
)
ax_a.set(
    xscale="log",
    xlabel="candidates in the tree (tokens)",
    ylabel="accepted per target forward (tokens)",
    title="Acceptance length",
)
for ax in (ax_s, ax_a):
    ax.grid(alpha=0.3)
    ax.legend()
fig.suptitle(
    f"Medusa decoding, {SIZE}-size target, batch 1,\n{NEW_TOKENS} new tokens x "
    f"{PROMPTS} prompts ({WHERE})"
)
fig.tight_layout()
fig.savefig("speedup.svg", facecolor="white")

with open("speedup.md", "w") as f:
    f.write(
        "| mode | tree | candidates | tokens/s | speed-up | accepted per step "
        "|\n|---|---|---:|---:|---:|---:|\n"
    )
    for mode in MODES:
        tokens_s = f"{plain[mode]:.0f}"
        f.write(f"| {mode} | plain decoding | 0 | {tokens_s} | 1.00x | – |\n")
        for name, tree in TREES.items():
            r = results[(mode, name)]
            f.write(
                f"| {mode} | {name} | {len(tree)} | {r['tokens_per_s']:.0f} | "
                f"{r['speedup']:.2f}x | {r['accepted_per_step']:.2f} |\n"
            )
with open("results.json", "w") as f:
    json.dump(
        {
            "device": WHERE,
            "size": SIZE,
            "prompts": PROMPTS,
            "new_tokens": NEW_TOKENS,
            "plain_tokens_per_s": plain,
            "medusa": [
                {
                    "mode": mode,
                    "tree": name,
                    "candidates": len(TREES[name]),
                    **r,
                }
                for (mode, name), r in results.items()
            ],
        },
        f,
        indent=2,
    )
