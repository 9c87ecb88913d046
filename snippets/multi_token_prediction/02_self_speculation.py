"""Multi-token prediction as a draft:
self-speculative decoding with the MTP module.

You will see:
* greedy self-speculation emits exactly the main model's greedy tokens, for 1 to
  4 drafts per step;
* at temperature 1, on varied held-out prompts: the acceptance rate of the MTP
  draft (accepted over proposed) and the tokens per forward of the main model,
  for k = 1 to 4 drafts per step, against the prediction from the acceptance at
  k = 1, and against a separate small draft model;
* the acceptance at each draft position: the module was trained for one token
  ahead only, so its chained drafts (its own output state fed back in place of
  the main model's) are used outside their training;
* greedy counts for contrast: greedy decoding of these small models falls into
  runs of spaces or underscores that any draft predicts, so they flatter the
  draft.
"""

# %%
import json

import matplotlib.pyplot as plt
import torch

from kernels.models import TRAINING, load_corpus, load_models, split
from kernels.speculative import generate, mtp_generate, speculative_generate

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# which preset of trained models to load
SIZE = "gpu" if DEVICE == "cuda" else "cpu"
PROMPTS, PROMPT_LEN, NEW_TOKENS = (
    (16, 128, 256) if DEVICE == "cuda" else (12, 48, 64)
)
KS = [1, 2, 3, 4]
torch.manual_seed(0)
if DEVICE == "cpu":
    # tiny matrices: one thread avoids the thread pool's overhead
    torch.set_num_threads(1)

# trained on first use
models = load_models(
    SIZE, device=DEVICE, models=("mtp", "draft"), verbose=False
)
model, mtp, draft = models["mtp_model"], models["mtp"], models["draft"]
# bytes no model was trained on
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
# Exactness first: at temperature 0 the verification step accepts a draft only
# when it is the main model's argmax, so the output must be the main model's
# greedy decoding, token for token.

# %%
greedy_matches, greedy_runs = 0, 0
for prompt in prompts[:3]:
    reference = generate(model, prompt, NEW_TOKENS, temperature=0)
    for k in KS:
        tokens, _ = mtp_generate(
            model, mtp, prompt, NEW_TOKENS, num_draft_tokens=k, temperature=0
        )
        greedy_matches += bool(torch.equal(tokens, reference))
        greedy_runs += 1
print(
    f"greedy MTP self-speculation == greedy decoding: {greedy_matches} of "
    f"{greedy_runs} runs (k = {KS[0]}..{KS[-1]}, 3 prompts)"
)


# %% [markdown]
# Acceptance at temperature 1 over all prompts. For each k: the acceptance rate
# (accepted over proposed drafts), the tokens per forward of the main model
# (accepted + 1 per step), and from the accepted lengths the acceptance at draft
# position j given that the drafts before it were accepted. The same for the
# package's separate draft model (trained on the same bytes), proposing to the
# same main model through `speculative_generate`.


# %%
def measure(decode, temperature):
    accepted, drafted, steps, lengths = 0, 0, 0, []
    for i, prompt in enumerate(prompts):
        g = torch.Generator(device=DEVICE).manual_seed(i)
        _, stats = decode(prompt, temperature, g)
        accepted, drafted, steps = (
            accepted + stats.accepted,
            drafted + stats.drafted,
            steps + stats.target_forwards,
        )
        lengths += stats.accepted_lengths
    k = drafted // steps
    # steps whose first j drafts were accepted
    reached = [sum(n >= j for n in lengths) for j in range(k + 1)]
    conditional = [
        reached[j + 1] / reached[j] if reached[j] else float("nan")
        for j in range(k)
    ]
    return {
        "acceptance_rate": accepted / drafted,
        "tokens_per_forward": (accepted + steps) / steps,
        "per_position": conditional,
    }


def mtp_decoder(k):
    return lambda prompt, temperature, g: mtp_generate(
        model,
        mtp,
        prompt,
        NEW_TOKENS,
        num_draft_tokens=k,
        temperature=temperature,
        generator=g,
    )


def draft_decoder(k):
    return lambda prompt, temperature, g: speculative_generate(
        model,
        draft,
        prompt,
        NEW_TOKENS,
        num_draft_tokens=k,
        temperature=temperature,
        generator=g,
    )


runs = {
    (name, t, k): measure(decoder(k), t)
    for name, decoder in (("MTP", mtp_decoder), ("draft", draft_decoder))
    for t in (1.0, 0.0)
    for k in KS
}
# at k = 1, accepted/proposed estimates alpha
alpha = runs[("MTP", 1.0, 1)]["acceptance_rate"]
predicted = [(1 - alpha ** (k + 1)) / (1 - alpha) for k in KS]
print(
    f"temperature 1, {PROMPTS} prompts x {NEW_TOKENS} tokens; alpha from k = "
    f"1: {alpha:.3f}"
)
print(
    "   k | MTP: rate  tokens/fwd  predicted | separate draft: rate  "
    "tokens/fwd | greedy MTP: rate"
)
for k, pred in zip(KS, predicted):
    m, d, g = (
        runs[("MTP", 1.0, k)],
        runs[("draft", 1.0, k)],
        runs[("MTP", 0.0, k)],
    )
    print(
        f"  {k:2d} |      {m['acceptance_rate']:.3f}  "
        f"{m['tokens_per_forward']:10.2f}  {pred:9.2f} | "
        f"{d['acceptance_rate']:20.3f}  {d['tokens_per_forward']:10.2f} | "
        f"{g['acceptance_rate']:16.3f}"
    )
print(
    f"acceptance at draft position j (k = {KS[-1]}, T = 1), given the earlier "
    "drafts were accepted:"
)
for name in ("MTP", "draft"):
    per_position = runs[(name, 1.0, KS[-1])]["per_position"]
    print(
        f"  {name:6s} "
        + "  ".join(f"j={j + 1}: {p:.3f}" for j, p in enumerate(per_position))
    )

# %%
fig, (ax_t, ax_p) = plt.subplots(2, 1, figsize=(6.8, 8.0))
for name, label, color in (
    ("MTP", "MTP module (self-speculation)", "C1"),
    ("draft", "separate draft model", "C0"),
):
    ax_t.plot(
        KS,
        [runs[(name, 1.0, k)]["tokens_per_forward"] for k in KS],
        "o-",
        color=color,
        label=f"{label}, $T = 1$",
    )
    ax_t.plot(
        KS,
        [runs[(name, 0.0, k)]["tokens_per_forward"] for k in KS],
        "o:",
        color=color,
        alpha=0.6,
        label=f"{label}, greedy",
    )
    ax_p.plot(
        range(1, KS[-1] + 1),
        runs[(name, 1.0, KS[-1])]["per_position"],
        "o-",
        color=color,
        label=label,
    )
ax_t.plot(
    KS,
    predicted,
    "k--",
    lw=1,
    label=r"$(1 - \alpha^{k+1}) / (1 - \alpha)$, $\alpha$ from MTP at $k = 1$",
)
ax_t.set(
    xlabel="draft tokens per step $k$ (tokens)",
    ylabel="tokens per main-model forward",
    title="Tokens per verification step",
)
ax_t.set_xticks(KS)
ax_p.set(
    xlabel="draft position $j$",
    ylabel="P(accept $j$ | drafts $1..j-1$ accepted)",
    ylim=(0, 1),
    title=f"Acceptance by draft position ($k = {KS[-1]}$, $T = 1$)",
)
ax_p.set_xticks(range(1, KS[-1] + 1))
for ax, corner in ((ax_t, "upper left"), (ax_p, "lower left")):
    ax.grid(alpha=0.3)
    ax.legend(loc=corner)
fig.suptitle(
    f"{SIZE}-size main model trained with MTP,\n{PROMPTS} held-out prompts x "
    f"{NEW_TOKENS} tokens ({DEVICE})"
)
fig.tight_layout()
fig.savefig("acceptance.svg", facecolor="white")

with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "size": SIZE,
            "prompts": PROMPTS,
            "new_tokens": NEW_TOKENS,
            "greedy_matches": greedy_matches,
            "greedy_runs": greedy_runs,
            "alpha": alpha,
            "mtp_rate_k1": runs[("MTP", 1.0, 1)]["acceptance_rate"],
            "mtp_tokens_k1": runs[("MTP", 1.0, 1)]["tokens_per_forward"],
            "mtp_rate_k4": runs[("MTP", 1.0, 4)]["acceptance_rate"],
            "mtp_tokens_k4": runs[("MTP", 1.0, 4)]["tokens_per_forward"],
            "predicted_tokens_k4": predicted[-1],
            "draft_rate_k1": runs[("draft", 1.0, 1)]["acceptance_rate"],
            "draft_tokens_k4": runs[("draft", 1.0, 4)]["tokens_per_forward"],
            "mtp_position4_k4": runs[("MTP", 1.0, 4)]["per_position"][-1],
            "mtp_position1_k4": runs[("MTP", 1.0, 4)]["per_position"][0],
            "greedy_mtp_rate_k1": runs[("MTP", 0.0, 1)]["acceptance_rate"],
            "runs": [
                {"drafter": n, "temperature": t, "k": k, **r}
                for (n, t, k), r in runs.items()
            ],
        },
        f,
        indent=2,
    )
