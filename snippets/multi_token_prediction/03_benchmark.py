"""Speed: MTP self-speculation against plain decoding, in tokens per second.

You will see, for the GPU-size main model trained with an MTP module (8 blocks,
26M parameters; the module adds one block), the tokens per second of plain
decoding, of self-speculative decoding with the MTP module drafting k = 1 to 4
tokens per step, and of speculative decoding with the separate small draft model
(2 blocks of width 128), greedy and at temperature 1, with the tokens per
forward of the main model behind each speed-up. Batch 1. Only a GPU run says
anything about speed; on a CPU the snippet runs the small models briefly.
"""

# requires: cuda
# %%
import json
import time

import matplotlib.pyplot as plt
import torch

from kernels.models import TRAINING, load_corpus, load_models, split
from kernels.speculative import generate, mtp_generate, speculative_generate

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# GPU grid sized for about 20 s of decoding: 2 temperatures x 9 decoders x 3
# prompts x 128 tokens.
SIZE, PROMPTS, PROMPT_LEN, NEW_TOKENS = (
    ("gpu", 3, 64, 128) if DEVICE == "cuda" else ("cpu", 2, 32, 16)
)
KS = [1, 2, 3, 4]
WHERE = (
    torch.cuda.get_device_name()
    if DEVICE == "cuda"
    else "CPU (timings say nothing about GPUs)"
)
print(f"device: {WHERE}")
if DEVICE == "cpu":
    # tiny matrices: one thread avoids the thread pool's overhead
    torch.set_num_threads(1)

# trains only these two on first use
models = load_models(SIZE, device=DEVICE, models=("mtp", "draft"))
model, mtp, draft = models["mtp_model"], models["mtp"], models["draft"]
_, held_out = split(load_corpus(TRAINING[SIZE].corpus_bytes)[0])
starts = torch.randint(
    len(held_out) - PROMPT_LEN,
    (PROMPTS,),
    generator=torch.Generator().manual_seed(0),
)
prompts = [
    held_out[s : s + PROMPT_LEN].long().to(DEVICE) for s in starts.tolist()
]


# %% [markdown]
# Every decoder gets one warm-up call (Triton compiles its kernels on first
# use), then runs every prompt once; tokens per second is all new tokens over
# all the time.


# %%
def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def plain(prompt, temperature, g):
    return generate(
        model, prompt, NEW_TOKENS, temperature=temperature, generator=g
    ), None


def with_mtp(k):
    def run(prompt, temperature, g):
        return mtp_generate(
            model,
            mtp,
            prompt,
            NEW_TOKENS,
            num_draft_tokens=k,
            temperature=temperature,
            generator=g,
        )

    return run


def with_draft(k):
    def run(prompt, temperature, g):
        return speculative_generate(
            model,
            draft,
            prompt,
            NEW_TOKENS,
            num_draft_tokens=k,
            temperature=temperature,
            generator=g,
        )

    return run


def measure(decode, temperature):
    decode(prompts[0], temperature, None)  # warm-up
    sync()
    start, accepted, steps = time.perf_counter(), 0, 0
    for i, prompt in enumerate(prompts):
        _, stats = decode(
            prompt, temperature, torch.Generator(device=DEVICE).manual_seed(i)
        )
        if stats is not None:
            accepted, steps = (
                accepted + stats.accepted,
                steps + stats.target_forwards,
            )
    sync()
    return {
        "tokens_per_s": PROMPTS * NEW_TOKENS / (time.perf_counter() - start),
        "tokens_per_forward": (accepted + steps) / steps if steps else 1.0,
    }


TEMPERATURES = {"greedy": 0.0, "T=1": 1.0}
DECODERS = {
    "MTP self-speculation": with_mtp,
    "separate draft model": with_draft,
}
results = {}
for mode, temperature in TEMPERATURES.items():
    base = measure(plain, temperature)
    results[(mode, "plain decoding", 0)] = {**base, "speedup": 1.0}
    print(
        f"{mode:6s} plain decoding: {base['tokens_per_s']:.0f} tokens/s",
        flush=True,
    )
    for name, decoder in DECODERS.items():
        for k in KS:
            r = measure(decoder(k), temperature)
            r["speedup"] = r["tokens_per_s"] / base["tokens_per_s"]
            results[(mode, name, k)] = r
            print(
                f"{mode:6s} {name:20s} k={k}: {r['tokens_per_s']:7.0f} "
                f"tokens/s, {r['speedup']:.2f}x, "
                f"{r['tokens_per_forward']:.2f} tokens per forward",
                flush=True,
            )

# %% [markdown]
# Speed-up over plain decoding at the same temperature.

# %%
fig, axes = plt.subplots(
    len(TEMPERATURES), 1, figsize=(6.8, 3.3 * len(TEMPERATURES)), sharex=True
)
for ax, mode in zip(axes, TEMPERATURES):
    for name in DECODERS:
        ax.plot(
            KS,
            [results[(mode, name, k)]["speedup"] for k in KS],
            "o-",
            label=name,
        )
    ax.axhline(1.0, color="gray", ls="--", lw=1, label="plain decoding")
    ax.set(ylabel="speed-up over plain (×)", title=mode)
    ax.set_xticks(KS)
    ax.grid(alpha=0.3)
axes[-1].set_xlabel("draft tokens per step $k$ (tokens)")
axes[0].legend()
fig.suptitle(
    f"Self-speculation with the MTP module, {SIZE}-size model, batch 1\n"
    f"({WHERE})"
)
fig.tight_layout()
fig.savefig("speedup.svg", facecolor="white")

with open("speedup.md", "w") as f:
    f.write(
        "| mode | decoder | k | tokens/s | speed-up | tokens per forward "
        "|\n|---|---|---:|---:|---:|---:|\n"
    )
    for (mode, name, k), r in results.items():
        f.write(
            f"| {mode} | {name} | {k or '–'} | {r['tokens_per_s']:.0f} | "
            f"{r['speedup']:.2f}x | {r['tokens_per_forward']:.2f} |\n"
        )
with open("results.json", "w") as f:
    json.dump(
        {
            "device": WHERE,
            "size": SIZE,
            "prompts": PROMPTS,
            "new_tokens": NEW_TOKENS,
            "runs": [
                {"mode": mode, "decoder": name, "k": k, **r}
                for (mode, name, k), r in results.items()
            ],
        },
        f,
        indent=2,
    )
