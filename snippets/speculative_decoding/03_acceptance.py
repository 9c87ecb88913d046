"""Acceptance and tokens per target forward
against the number of draft tokens k.

You will see, for the small target and draft trained on Python's standard
library (CPU sizes, tiny models trained for seconds on 128-byte windows; the
first run trains and caches them):
* alpha, the probability that the target accepts one draft token, measured two
  ways: as the average overlap ``sum_x min(p(x), q(x))`` of the two models'
  distributions along generated text, and from the accepted lengths of
  speculative decoding at each k;
* tokens emitted per target forward for k = 1..8, against Leviathan et al.'s
  expectation ``(1 - alpha^(k+1)) / (1 - alpha)``.
These are counts, not timings: they do not depend on the machine.
"""

# %%
import json

import matplotlib.pyplot as plt
import torch

from kernels.models import TRAINING, load_corpus, load_models
from kernels.speculative import logits_to_probs, speculative_generate

# Counts do not depend on the machine, so every machine runs the CPU-size models
# on the CPU and the page's numbers stay the same; the GPU-size models are
# measured by the benchmark snippet.
DEVICE, SIZE = "cpu", "cpu"
KS, PROMPTS, NEW_TOKENS, PROMPT_LEN, TEMPERATURE = (
    list(range(1, 9)),
    10,
    96,
    24,
    1.0,
)
# tiny matrices: one thread avoids the thread pool's overhead
torch.set_num_threads(1)
models = load_models(SIZE, device=DEVICE, models=("target", "draft"))
target, draft = models["target"], models["draft"]
# prompt + new tokens + the k = 8 lookahead of the last step fit the context the
# models were trained on
assert PROMPT_LEN + NEW_TOKENS + max(KS) <= target.max_seq_len

# %% [markdown]
# Prompts: windows of the held-out end of the corpus (the last 5 %, which
# training never saw), each starting at the beginning of a line.

# %%
data, _ = load_corpus(TRAINING[SIZE].corpus_bytes)
held_out = data[int(0.95 * len(data)) :]
g = torch.Generator().manual_seed(0)
line_starts = (held_out[: -PROMPT_LEN - 1] == ord("\n")).nonzero().flatten() + 1
picks = line_starts[torch.randperm(len(line_starts), generator=g)[:PROMPTS]]
prompts = [
    held_out[s : s + PROMPT_LEN].long().to(DEVICE) for s in picks.tolist()
]
print(
    "first prompt:", repr(bytes(prompts[0].tolist()).decode(errors="replace"))
)


# %% [markdown]
# Speculative decoding at temperature 1 for every k and prompt. Each step
# accepts `n` of its `k` drafts (`stats.accepted_lengths`) and emits `n + 1`
# tokens. If each draft token is accepted with the same probability alpha,
# independently, the maximum-likelihood estimate is the accepted drafts over the
# drafts that were tested: a step that stopped at a rejection tested `n + 1`, a
# step that accepted all tested `k`.


# %%
def alpha_from_lengths(lengths, k):
    accepted = sum(lengths)
    rejections = sum(n < k for n in lengths)
    return accepted / (accepted + rejections)


def expected_tokens(alpha, k):
    """Leviathan et al.: expected tokens per target forward, (1 - alpha^(k+1)) /
    (1 - alpha).
    """
    return float(k + 1) if alpha == 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


rows, texts = [], []
for k in KS:
    lengths, new_tokens, forwards, drafted, accepted = [], 0, 0, 0, 0
    for i, prompt in enumerate(prompts):
        gen = torch.Generator(DEVICE).manual_seed(1000 * k + i)
        tokens, stats = speculative_generate(
            target,
            draft,
            prompt,
            NEW_TOKENS,
            num_draft_tokens=k,
            temperature=TEMPERATURE,
            generator=gen,
        )
        lengths += stats.accepted_lengths
        new_tokens += stats.new_tokens
        forwards += stats.target_forwards
        drafted += stats.drafted
        accepted += stats.accepted
        texts.append(torch.cat([prompt, tokens]))
    # tokens emitted by each step
    per_step = torch.tensor(lengths, dtype=torch.float64) + 1
    rows.append(
        {
            "k": k,
            "steps": forwards,
            "tokens_per_forward": new_tokens / forwards,
            "std_err": (per_step.std() / len(per_step) ** 0.5).item(),
            "alpha_mle": alpha_from_lengths(lengths, k),
            "accepted_over_proposed": accepted / drafted,
        }
    )
    print(
        f"k={k}: {forwards} target forwards, "
        f"{rows[-1]['tokens_per_forward']:.3f} tokens per forward, alpha "
        f"{rows[-1]['alpha_mle']:.3f}, accepted/proposed "
        f"{rows[-1]['accepted_over_proposed']:.3f}"
    )
# What such tiny models write: the prompt, then the sampled continuation
# (temperature 1).
with open("sample.txt", "w") as f:
    for text in texts[-2:]:
        f.write(
            "prompt:       "
            + repr(bytes(text[:PROMPT_LEN].tolist()).decode(errors="replace"))
            + "\n"
        )
        f.write(
            "continuation: "
            + repr(bytes(text[PROMPT_LEN:].tolist()).decode(errors="replace"))
            + "\n\n"
        )
print(open("sample.txt").read())

# %% [markdown]
# alpha a second way, without speculating: the probability that one draft token
# survives is `sum_x min(p(x), q(x))`, with `p` and `q` the target's and draft's
# distributions at that point of the text. Both models read every generated text
# once; the average over the generated positions is Leviathan et al.'s alpha.

# %%
with torch.no_grad():
    overlaps = []
    for text in texts:
        p = logits_to_probs(target(text[None])[0], TEMPERATURE)  # [T, V]
        q = logits_to_probs(draft(text[None])[0], TEMPERATURE)
        # positions that predict generated tokens
        overlaps.append(torch.minimum(p, q).sum(-1)[PROMPT_LEN - 1 : -1])
    overlap = torch.cat(overlaps)
alpha = overlap.mean().item()
print(
    f"alpha = mean of sum_x min(p, q) over {len(overlap)} positions: "
    f"{alpha:.3f} (10th-90th percentile "
    f"{overlap.quantile(0.1):.2f}-{overlap.quantile(0.9):.2f})"
)
for row in rows:
    row["predicted"] = expected_tokens(alpha, row["k"])
    row["measured_over_predicted"] = (
        row["tokens_per_forward"] / row["predicted"]
    )

# %% [markdown]
# The figure and the table.

# %%
ks = [r["k"] for r in rows]
fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(6.8, 7.6))
ax1.plot(
    ks,
    [r["alpha_mle"] for r in rows],
    "o-",
    label=r"$\alpha$ from accepted lengths",
)
ax1.plot(
    ks,
    [r["accepted_over_proposed"] for r in rows],
    "s:",
    label="accepted / proposed drafts",
)
ax1.axhline(
    alpha,
    color="gray",
    ls="--",
    label=r"$\alpha$ = mean of $\sum_x \min(p, q)$",
)
ax1.set(
    xlabel="draft tokens per step $k$ (tokens)",
    ylabel="probability",
    ylim=(0, 1),
    title="Acceptance",
)
ax2.errorbar(
    ks,
    [r["tokens_per_forward"] for r in rows],
    yerr=[2 * r["std_err"] for r in rows],
    fmt="o",
    capsize=3,
    label="measured (± 2 standard errors)",
)
fine = [x / 10 for x in range(10, 81)]
ax2.plot(
    fine,
    [expected_tokens(alpha, x) for x in fine],
    label=r"$(1 - \alpha^{k+1}) / (1 - \alpha)$",
)
ax2.plot(
    fine,
    [x + 1 for x in fine],
    color="gray",
    ls=":",
    label="$k + 1$ (every draft accepted)",
)
ax2.set(
    xlabel="draft tokens per step $k$ (tokens)",
    ylabel="tokens per target forward (tokens)",
    ylim=(0, None),
    title="Tokens per target forward",
)
for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
    ax.legend()
fig.suptitle(
    f"{SIZE}-size target and draft, temperature {TEMPERATURE:g}, {PROMPTS} "
    f"prompts x {NEW_TOKENS} tokens"
)
fig.tight_layout()
fig.savefig("acceptance.svg")

with open("acceptance.md", "w") as f:
    f.write(
        "| k | target forwards | tokens per forward | predicted | measured / "
        "predicted | alpha from accepted lengths | accepted / proposed "
        "|\n|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    for r in rows:
        f.write(
            f"| {r['k']} | {r['steps']} | {r['tokens_per_forward']:.3f} ± "
            f"{r['std_err']:.3f} | {r['predicted']:.3f} | "
            f"{r['measured_over_predicted']:.3f} | {r['alpha_mle']:.3f} | "
            f"{r['accepted_over_proposed']:.3f} |\n"
        )
    f.write(
        f"\nPredicted with alpha = {alpha:.3f}, the mean of sum min(p, q) "
        "along the generated text; ± one standard error over steps.\n"
    )

ratios = [r["measured_over_predicted"] for r in rows]
results = {
    "alpha": round(alpha, 3),
    "overlap_p10": round(overlap.quantile(0.1).item(), 2),
    "overlap_p90": round(overlap.quantile(0.9).item(), 2),
    "alpha_mle_k1": round(rows[0]["alpha_mle"], 3),
    "alpha_mle_k8": round(rows[-1]["alpha_mle"], 3),
    "tokens_per_forward_k1": round(rows[0]["tokens_per_forward"], 2),
    "tokens_per_forward_k8": round(rows[-1]["tokens_per_forward"], 2),
    "predicted_k8": round(rows[-1]["predicted"], 2),
    "accepted_over_proposed_k8": round(rows[-1]["accepted_over_proposed"], 3),
    "min_measured_over_predicted": round(min(ratios), 3),
    "max_measured_over_predicted": round(max(ratios), 3),
    "positions": len(overlap),
    "rows": rows,
}
with open("results.json", "w") as f:
    json.dump(results, f, indent=2)
