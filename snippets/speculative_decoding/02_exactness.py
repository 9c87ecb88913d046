"""Speculative sampling is exact: what it emits
is distributed as the target's own samples.

You will see:
* a toy "language model" on a vocabulary of 6 tokens: a target and a draft that
  are bigram tables (the next token's distribution depends on the previous token
  only), deliberately different and with some exact zeros;
* many short generations with ``verify_draft`` and ``k = 3`` draft tokens per
  step, and the empirical distribution of the first three emitted tokens against
  the target's own probabilities (a chi-square test);
* the acceptance rate of the first draft token against
  ``sum_x min(p(x), q(x))``;
* the same test on a plausible-looking but wrong rule (after a rejection, sample
  from the target instead of from the residual), which the test catches.
"""

# %%
import json

import matplotlib.pyplot as plt
import torch

from kernels.speculative import residual_probs, sample, verify_draft

# vocabulary, draft tokens per step, generations, tokens per generation
V, K, TRIALS, LENGTH = 6, 3, 10000, 3
# a p-value below this would reject "the emitted tokens follow the target"
SIGNIFICANCE = 0.01
g = torch.Generator().manual_seed(0)


def random_bigram(sparsity=0.25):
    """A [V, V] table whose row a is the distribution of the token after a (some
    entries exactly 0).
    """
    w = torch.rand(V, V, generator=g, dtype=torch.float64) ** 2
    w[torch.rand(V, V, generator=g) < sparsity] = 0
    # no row is all zeros
    w[torch.arange(V), torch.randint(V, (V,), generator=g)] += 0.05
    return w / w.sum(-1, keepdim=True)


target, draft = random_bigram(), random_bigram()  # p and q of the text below
START = 0  # the "prompt": one token
print(f"first-position distributions after token {START}:")
print("  target p:", [round(x, 3) for x in target[START].tolist()])
print("  draft  q:", [round(x, 3) for x in draft[START].tolist()])


# %% [markdown]
# One generation: the draft samples `k` tokens from its table, the target's rows
# at the same positions (plus one) are looked up, and `verify_draft` keeps a
# prefix and adds one token. Steps repeat until `LENGTH` tokens are emitted.
# `rule` is the accept/reject function.


# %%
def generate_once(rule):
    tokens, first_accepted = [START], None
    while len(tokens) <= LENGTH:
        drafts = []
        for _ in range(K):
            drafts.append(
                sample(draft[drafts[-1] if drafts else tokens[-1]], g).item()
            )
        # the token before each draft position, and after the last
        context = [tokens[-1]] + drafts
        emitted = rule(
            torch.tensor(drafts), draft[context[:-1]], target[context], g
        ).tolist()
        # the first step: was its first draft token kept?
        if first_accepted is None:
            first_accepted = len(emitted) >= 2
        tokens += emitted
    return tokens[1 : LENGTH + 1], first_accepted


def wrong_rule(drafts, draft_probs, target_probs, generator):
    """Like verify_draft, but after a rejection it samples from the target row,
    not the residual.
    """
    k = len(drafts)
    for i in range(k):
        x = drafts[i]
        if (
            torch.rand((), generator=generator, dtype=torch.float64)
            * draft_probs[i, x]
            >= target_probs[i, x]
        ):
            return torch.cat(
                [drafts[:i], sample(target_probs[i], generator).view(1)]
            )
    return torch.cat([drafts, sample(target_probs[k], generator).view(1)])


# %% [markdown]
# The target's own probability of every sequence of three tokens after the
# prompt, and Pearson's chi-square test of the counts against it (cells
# expecting fewer than 5 counts are pooled, as the test's approximation asks).
# The p-value is computed with the regularised incomplete gamma function, so no
# statistics package is needed.

# %%
# [V, V, V]: p(a) p(b|a) p(c|b)
exact = target[START][:, None, None] * target[:, :, None] * target[None, :, :]


def chi2_pvalue(counts, probs):
    expected = counts.sum() * probs
    assert counts[expected == 0].sum() == 0, (
        "a sequence of probability 0 was emitted"
    )
    small = (expected > 0) & (expected < 5)
    obs = torch.cat([counts[expected >= 5], counts[small].sum().view(1)])
    exp = torch.cat([expected[expected >= 5], expected[small].sum().view(1)])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    df = int(keep.sum()) - 1
    return torch.special.gammaincc(
        torch.tensor(df / 2, dtype=torch.float64), stat / 2
    ).item(), df


def run(rule):
    counts, accepted = torch.zeros(V, V, V, dtype=torch.float64), 0
    for _ in range(TRIALS):
        (a, b, c), first_accepted = generate_once(rule)
        counts[a, b, c] += 1
        accepted += first_accepted
    return counts, accepted / TRIALS


results = {}
for name, rule in (("verify_draft", verify_draft), ("wrong_rule", wrong_rule)):
    counts, first_acceptance = run(rule)
    p_triples, df = chi2_pvalue(counts.flatten(), exact.flatten())
    p_first, _ = chi2_pvalue(counts.sum((1, 2)), target[START])
    results[name] = {
        "counts": counts,
        "p_triples": p_triples,
        "df": df,
        "p_first": p_first,
        "first_acceptance": first_acceptance,
    }
    print(
        f"{name:12s}: chi-square p-value, first token {p_first:.3g}; three "
        f"tokens {p_triples:.3g} ({df} degrees of freedom); first draft token "
        f"accepted in {first_acceptance:.4f} of the trials"
    )
overlap = torch.minimum(target[START], draft[START]).sum().item()
print(f"sum_x min(p(x), q(x)) at the first position: {overlap:.4f}")

# %% [markdown]
# The first emitted token's distribution: target, draft, and what each rule
# emitted; and every three-token sequence, counted against expected.

# %%
fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(6.8, 7.6))
x = torch.arange(V)
width = 0.2
ax1.bar(x - 1.5 * width, target[START], width, label="target $q$")
ax1.bar(x - 0.5 * width, draft[START], width, label="draft $p$")
for i, (name, label) in enumerate(
    (
        ("verify_draft", "emitted, verify_draft"),
        ("wrong_rule", "emitted, wrong rule"),
    )
):
    ax1.bar(
        x + (0.5 + i) * width,
        results[name]["counts"].sum((1, 2)) / TRIALS,
        width,
        label=label,
    )
ax1.set(
    xlabel="first emitted token",
    ylabel="probability",
    title=f"First token ({TRIALS} generations, $k = {K}$)",
)
ax1.legend()
expected = (TRIALS * exact).flatten()
for name, marker in (("verify_draft", "o"), ("wrong_rule", "x")):
    ax2.scatter(
        expected,
        results[name]["counts"].flatten(),
        s=12,
        marker=marker,
        label=f"{name} (p = {results[name]['p_triples']:.2g})",
    )
top = expected.max().item() * 1.1
ax2.plot([0, top], [0, top], color="gray", lw=1)
ax2.set(
    xlabel="expected count (target's probability × trials)",
    ylabel="observed count (sequences)",
    title=f"All {V**3} sequences of three tokens",
)
ax2.legend()
for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig("exactness.svg")

summary = {
    "vocab": V,
    "k": K,
    "trials": TRIALS,
    "significance": SIGNIFICANCE,
    "p_value_first_token": round(results["verify_draft"]["p_first"], 3),
    "p_value_three_tokens": round(results["verify_draft"]["p_triples"], 3),
    "degrees_of_freedom": results["verify_draft"]["df"],
    "first_acceptance": round(results["verify_draft"]["first_acceptance"], 4),
    # binomial, if it equals the overlap
    "first_acceptance_std_err": round(
        (overlap * (1 - overlap) / TRIALS) ** 0.5, 4
    ),
    "sum_min_p_q": round(overlap, 4),
    "wrong_rule_p_value_three_tokens": float(
        f"{results['wrong_rule']['p_triples']:.2g}"
    ),
    "wrong_rule_p_value_first_token": float(
        f"{results['wrong_rule']['p_first']:.2g}"
    ),
}
with open("results.json", "w") as f:
    json.dump(summary, f, indent=2)
print(json.dumps(summary, indent=2))
