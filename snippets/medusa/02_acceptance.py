"""How many tokens a Medusa step accepts, for trees
of different sizes and both acceptance rules.

You will see:
* how often each Medusa head's top-k bytes contain the right one, on held-out
  text;
* greedy Medusa decoding emits exactly the target's greedy tokens, for every
  tree and both rules;
* the mean number of accepted candidates per target forward as the tree grows,
  for exact speculative sampling along the tree and for typical acceptance
  (temperature 1), and greedy, with error bars (standard errors over prompts)
  and paired differences between trees;
* typical acceptance is not exact: the text it emits is likelier under the
  target than the target's own samples.
Acceptance is measured on varied prompts (windows of held-out bytes) and mostly
at temperature 1: greedy decoding of these small models falls into runs of
spaces or underscores, which any head predicts, so greedy counts flatter the
heads.
"""

# %%
import itertools
import json

import matplotlib.pyplot as plt
import torch

from kernels.models import TRAINING, load_corpus, load_models, split
from kernels.speculative import (
    DEFAULT_TREE,
    generate,
    medusa_generate,
    typical_mask,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# which preset of trained models to load
SIZE = "gpu" if DEVICE == "cuda" else "cpu"
PROMPTS, PROMPT_LEN, NEW_TOKENS = (
    (32, 128, 128) if DEVICE == "cuda" else (24, 32, 48)
)
torch.manual_seed(0)
if DEVICE == "cpu":
    # tiny matrices: one thread avoids the thread pool's overhead
    torch.set_num_threads(1)

# target and heads, cached
models = load_models(SIZE, device=DEVICE, models=("heads",), verbose=False)
target, heads = models["target"], models["heads"]
# every window and generation below stays within the trained context
CONTEXT = target.max_seq_len
# bytes no model was trained on
_, held_out = split(load_corpus(TRAINING[SIZE].corpus_bytes)[0])
starts = torch.randint(
    len(held_out) - 1024, (PROMPTS,), generator=torch.Generator().manual_seed(0)
)
prompts = [
    held_out[s : s + PROMPT_LEN].long().to(DEVICE) for s in starts.tolist()
]


# %% [markdown]
# Head `i` reads the hidden state at position `t` and predicts the byte at
# `t + 2 + i`. Its top-1 guess is often wrong, but the right byte is often among
# its top few: that is why the tree keeps several candidates per head.

# %%
TOP_KS = [1, 2, 3, 5, 10]
# [P, CONTEXT+1]
windows = (
    torch.stack([held_out[s : s + CONTEXT + 1] for s in starts.tolist()])
    .long()
    .to(DEVICE)
)
with torch.no_grad():
    # [P, CONTEXT, V]
    logits, hidden = target(windows[:, :-1], return_hidden=True)
    head_logits = heads(hidden)  # [P, CONTEXT, heads, V]


def top_k_accuracy(logits, answers):
    """Fraction of positions whose answer is among the top-k logits, for each k
    in TOP_KS.
    """
    top = logits.topk(max(TOP_KS), dim=-1).indices
    return [
        (top[..., :k] == answers[..., None]).any(-1).float().mean().item()
        for k in TOP_KS
    ]


accuracy = {"target (t+1)": top_k_accuracy(logits, windows[:, 1:])}
# head i at position t predicts windows[:, t + 2 + i]
for i in range(heads.num_heads):
    accuracy[f"head {i} (t+{i + 2})"] = top_k_accuracy(
        head_logits[:, : -(i + 1), i], windows[:, i + 2 :]
    )
print(
    "top-k accuracy on held-out bytes:  k = "
    + "  ".join(f"{k:5d}" for k in TOP_KS)
)
for name, acc in accuracy.items():
    print(f"  {name:14s}" + " " * 19 + "  ".join(f"{a:5.3f}" for a in acc))


# %% [markdown]
# The trees: chains (one candidate per head, like a draft model proposing 1 to 4
# tokens), the default tree, and full trees (every combination of the top-k of
# each head).


# %%
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
    "top-3, depth 1": full_tree(3, 1),
    "chain 4": full_tree(1, 4),
    "default": DEFAULT_TREE,
    "full 2x2x2": full_tree(2, 3),
    "full 2x2x2x2": full_tree(2, 4),
    "full 3x3x3": full_tree(3, 3),
}
RULES = {
    "exact, T=1": dict(temperature=1.0, acceptance="exact"),
    "typical, T=1": dict(temperature=1.0, acceptance="typical"),
    "greedy, T=0": dict(temperature=0.0, acceptance="exact"),
}

# %% [markdown]
# Greedy first: at temperature 0 both rules must reproduce the target's own
# greedy decoding.

# %%
greedy_matches, greedy_runs = 0, 0
for prompt in prompts[:2]:
    reference = generate(target, prompt, NEW_TOKENS, temperature=0)
    for tree, acceptance in itertools.product(
        TREES.values(), ("exact", "typical")
    ):
        tokens, _ = medusa_generate(
            target,
            heads,
            prompt,
            NEW_TOKENS,
            tree=tree,
            temperature=0,
            acceptance=acceptance,
        )
        greedy_matches += bool(torch.equal(tokens, reference))
        greedy_runs += 1
print(
    f"greedy Medusa == greedy target: {greedy_matches} of {greedy_runs} runs "
    f"({len(TREES)} trees x 2 rules x 2 prompts)"
)


# %% [markdown]
# Accepted candidates per step (the acceptance length; a step emits one token
# more) for every tree and rule: the mean over prompts of each prompt's accepted
# candidates per target forward, with its standard error over the prompts. A
# tree that contains another (more candidates per node, appended after the
# others) accepts at least as much in expectation, but single runs draw
# different random numbers; two trees are compared by the paired difference over
# the same prompts and its standard error.


# %%
def accepted_per_step(tree, rule):
    """Accepted candidates per target forward on each prompt:
    float64 [PROMPTS].
    """
    per_prompt = []
    for i, prompt in enumerate(prompts):
        g = torch.Generator(device=DEVICE).manual_seed(i)
        _, stats = medusa_generate(
            target,
            heads,
            prompt,
            NEW_TOKENS,
            tree=tree,
            generator=g,
            **RULES[rule],
        )
        per_prompt.append(stats.accepted / stats.target_forwards)
    return torch.tensor(per_prompt, dtype=torch.float64)


def mean_se(values):
    return values.mean().item(), (values.std() / len(values) ** 0.5).item()


per_prompt = {
    rule: {name: accepted_per_step(tree, rule) for name, tree in TREES.items()}
    for rule in RULES
}
acceptance = {
    rule: {name: mean_se(v)[0] for name, v in runs.items()}
    for rule, runs in per_prompt.items()
}
acceptance_se = {
    rule: {name: mean_se(v)[1] for name, v in runs.items()}
    for rule, runs in per_prompt.items()
}
print(
    f"accepted candidates per target forward ({PROMPTS} prompts x {NEW_TOKENS} "
    "tokens, mean +- standard error):"
)
print(
    f"  {'tree':15s} {'nodes':>5s}  "
    + "  ".join(f"{rule:>16s}" for rule in RULES)
)
for name, tree in TREES.items():
    print(
        f"  {name:15s} {len(tree):5d}  "
        + "  ".join(
            f"{acceptance[rule][name]:9.2f} +- {acceptance_se[rule][name]:.2f}"
            for rule in RULES
        )
    )
PAIRS = [
    ("full 3x3x3", "full 2x2x2"),
    ("full 2x2x2x2", "full 2x2x2"),
    ("default", "chain 4"),
]
paired = {
    rule: {
        f"{a} - {b}": mean_se(per_prompt[rule][a] - per_prompt[rule][b])
        for a, b in PAIRS
    }
    for rule in RULES
}
print("paired differences over the same prompts (mean +- standard error):")
for rule in RULES:
    print(
        f"  {rule:13s} "
        + "; ".join(
            f"{pair}: {m:+.2f} +- {se:.2f}"
            for pair, (m, se) in paired[rule].items()
        )
    )

fig, (ax_h, ax_a) = plt.subplots(
    2, 1, figsize=(6.8, 9.0), gridspec_kw={"height_ratios": [1, 1.5]}
)
for name, acc in accuracy.items():
    ax_h.plot(
        TOP_KS,
        acc,
        "o-",
        ms=4,
        label=name,
        color="black" if name.startswith("target") else None,
    )
ax_h.set(
    xlabel="$k$ (candidates kept)",
    ylabel="top-$k$ accuracy (fraction)",
    xscale="log",
    title="Is the right byte among the top $k$?",
    ylim=(0, 1),
)
ax_h.set_xticks(TOP_KS, [str(k) for k in TOP_KS])
ax_h.legend(loc="lower right")
ax_h.grid(alpha=0.3)
width = 0.8 / len(RULES)
# one group of horizontal bars per tree, the smallest tree at the top
for j, rule in enumerate(RULES):
    ax_a.barh(
        [i + (j - 1) * width for i in range(len(TREES))],
        list(acceptance[rule].values()),
        width,
        label=rule,
        xerr=[2 * se for se in acceptance_se[rule].values()],
        capsize=2,
        error_kw={"lw": 0.8},
    )
ax_a.set_yticks(
    range(len(TREES)),
    [f"{name} ({len(tree)} cand.)" for name, tree in TREES.items()],
)
ax_a.invert_yaxis()
ax_a.set(
    xlabel="accepted candidates per target forward (tokens)",
    title="Acceptance length vs tree (± 2 standard errors)",
)
ax_a.legend(loc="upper right")
ax_a.grid(alpha=0.3, axis="x")
fig.suptitle(
    f"Medusa heads on the {SIZE}-size target, held-out prompts ({DEVICE})"
)
fig.tight_layout()
fig.savefig("acceptance.svg", facecolor="white")


# %% [markdown]
# Exact sampling emits tokens distributed as the target's samples; typical
# acceptance keeps any candidate the target finds plausible enough, which
# favours likely tokens. The mean negative log-likelihood of the emitted tokens
# under the target (temperature 1) shows it: plain sampling and exact Medusa
# agree up to noise (the standard error over prompts is printed), typical
# acceptance is far lower. The first bytes of each text, for the first prompt,
# show what that means here.


# %%
@torch.no_grad()
def mean_nll(prompt, tokens):
    """Mean -log p_target(token | everything before it) over the generated
    tokens (nats).
    """
    seq = torch.cat([prompt, tokens])
    logp = torch.log_softmax(
        target(seq[None, :-1])[0, len(prompt) - 1 :].float(), dim=-1
    )
    return -logp.gather(-1, tokens[:, None]).mean().item()


def sample_text(rule, prompt, g):
    if rule == "plain":
        return generate(
            target, prompt, NEW_TOKENS, temperature=1.0, generator=g
        )
    return medusa_generate(
        target,
        heads,
        prompt,
        NEW_TOKENS,
        tree=DEFAULT_TREE,
        temperature=1.0,
        acceptance=rule,
        generator=g,
    )[0]


SAMPLERS = {
    "plain sampling": "plain",
    "Medusa, exact": "exact",
    "Medusa, typical": "typical",
}
nll, nll_se = {}, {}
for name, rule in SAMPLERS.items():
    values = []
    for i, prompt in enumerate(prompts):
        tokens = sample_text(
            rule, prompt, torch.Generator(device=DEVICE).manual_seed(100 + i)
        )
        values.append(mean_nll(prompt, tokens))
        if i == 0:
            text = bytes(tokens[:40].tolist())
    nll[name] = sum(values) / len(values)
    # standard error over prompts
    nll_se[name] = torch.tensor(values).std().item() / len(values) ** 0.5
    print(
        f"{name:16s} mean NLL under the target {nll[name]:.3f} +- "
        f"{nll_se[name]:.3f} nats   {text!r}"
    )


# %% [markdown]
# The thresholds. For the first candidate of a step (head 0's best byte `x`
# after the root), exact sampling accepts with probability `p(x)`, the target's
# probability of `x`; typical acceptance accepts when
# `p(x) > min(epsilon, delta * exp(-H(p)))`. Over held-out positions, with
# `delta = sqrt(epsilon)` as Medusa suggests (its defaults are 0.09 and 0.3):

# %%
with torch.no_grad():
    # [P, CONTEXT-2, V]: target after the root t+1
    probs = torch.softmax(logits[:, 1:-1].float(), dim=-1)
    # [P, CONTEXT-2]: head 0 at t proposes t+2
    first = head_logits[:, :-2, 0].argmax(-1)
exact_first = probs.gather(-1, first[..., None]).mean().item()
EPSILONS = [0.01, 0.03, 0.09, 0.2, 0.4]
typical_first = {
    eps: typical_mask(first[..., None], probs[..., None, :], eps, eps**0.5)
    .float()
    .mean()
    .item()
    for eps in EPSILONS
}
print(
    f"first candidate accepted by exact sampling: {exact_first:.3f} (the mean "
    "of p(x))"
)
print(
    "  by typical acceptance: "
    + ", ".join(f"{typical_first[eps]:.3f} (eps {eps})" for eps in EPSILONS)
)

best = max(TREES, key=lambda name: acceptance["exact, T=1"][name])
with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "size": SIZE,
            "prompts": PROMPTS,
            "new_tokens": NEW_TOKENS,
            "top_ks": TOP_KS,
            "accuracy": accuracy,
            "head0_top1": accuracy["head 0 (t+2)"][0],
            "head0_top3": accuracy["head 0 (t+2)"][2],
            "head3_top1": accuracy[
                f"head {heads.num_heads - 1} (t+{heads.num_heads + 1})"
            ][0],
            "target_top1": accuracy["target (t+1)"][0],
            "greedy_matches": greedy_matches,
            "greedy_runs": greedy_runs,
            "acceptance": acceptance,
            "acceptance_standard_error": acceptance_se,
            "paired_differences": paired,
            "tree_sizes": {name: len(tree) for name, tree in TREES.items()},
            "exact_default": acceptance["exact, T=1"]["default"],
            "typical_default": acceptance["typical, T=1"]["default"],
            "greedy_default": acceptance["greedy, T=0"]["default"],
            "exact_chain1": acceptance["exact, T=1"]["chain 1"],
            "exact_default_se": acceptance_se["exact, T=1"]["default"],
            "exact_333_minus_222": paired["exact, T=1"][
                "full 3x3x3 - full 2x2x2"
            ][0],
            "exact_333_minus_222_se": paired["exact, T=1"][
                "full 3x3x3 - full 2x2x2"
            ][1],
            "typical_333_minus_222": paired["typical, T=1"][
                "full 3x3x3 - full 2x2x2"
            ][0],
            "typical_333_minus_222_se": paired["typical, T=1"][
                "full 3x3x3 - full 2x2x2"
            ][1],
            "exact_best_tree": best,
            "exact_best": acceptance["exact, T=1"][best],
            "nll": nll,
            "nll_standard_error": nll_se,
            "nll_plain": nll["plain sampling"],
            "nll_exact": nll["Medusa, exact"],
            "nll_typical": nll["Medusa, typical"],
            "first_exact": exact_first,
            "first_typical": {
                str(eps): value for eps, value in typical_first.items()
            },
            "first_typical_default": typical_first[0.09],
        },
        f,
        indent=2,
    )
