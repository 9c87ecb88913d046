"""Random features for the softmax kernel: trigonometric against positive, iid
against orthogonal.

You will see:
* both estimators of ``exp(x . y)`` are unbiased: the average of many estimates
  is the kernel;
* their errors follow the variance formulas of Choromanski et al. (2021), which
  are mirror images: trigonometric features are accurate when the kernel value
  is large and worst when it is small, positive features the other way round;
* trigonometric estimates of small kernel values are often negative, positive
  ones never;
* orthogonal projections lower the error: a lot for trigonometric features when
  ``x`` is close to ``y``, a little for positive features.

``m`` counts features, the columns of ``phi(x)`` that linear attention sees:
positive features use ``m`` random vectors, trigonometric ones ``m / 2`` (a sine
and a cosine each).
"""

# %%
import json
import math

import matplotlib.pyplot as plt
import torch

from kernels.linear_attention import (
    gaussian_projection,
    orthogonal_gaussian,
    positive_random_features,
    trigonometric_random_features,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# estimates per point: PAIRS * SEEDS
PAIRS, SEEDS = (4096, 64) if DEVICE == "cuda" else (768, 16)
D = 64  # head dim
# |x|^2 = |y|^2 = |q|^2 / sqrt(D): q with entries of RMS 0.5,
# logits q.k / sqrt(D) in [-2, 2]
R2 = 2.0
# x . y = q . k / sqrt(D)
LOGITS = {
    "small kernel value": -1.5,
    "typical": 0.0,
    "large kernel value": 1.5,
}
FEATURES = [8, 16, 32, 64, 128, 256, 512, 1024]
# draws on the CPU, then moved: the same numbers everywhere
generator = torch.Generator().manual_seed(0)
print(
    f"d = {D}, |x|^2 = |y|^2 = {R2}, {PAIRS} pairs x {SEEDS} projections per "
    f"point, on {DEVICE}"
)

# %% [markdown]
# Attention's kernel is `exp(q . k / sqrt(d))`, which is the softmax kernel
# `exp(x . y)` of `x = q / d^(1/4)` and `y = k / d^(1/4)`. We draw pairs with
# fixed norms and a fixed dot product `x . y` (the logit) in random
# orientations: the error of both estimators depends on nothing else.


# %%
def pairs(n: int, logit: float, r2: float = R2):
    """``n`` pairs ``x, y`` of shape ``[n, D]`` (float64) with
    ``|x|^2 = |y|^2 = r2`` and ``x . y = logit``."""
    u = torch.randn(n, D, generator=generator, dtype=torch.float64).to(DEVICE)
    u = u / u.norm(dim=1, keepdim=True)
    w = torch.randn(n, D, generator=generator, dtype=torch.float64).to(DEVICE)
    w = w - (w * u).sum(1, keepdim=True) * u  # orthogonal to u
    w = w / w.norm(dim=1, keepdim=True)
    cos = logit / r2
    return math.sqrt(r2) * u, math.sqrt(r2) * (
        cos * u + math.sqrt(1 - cos**2) * w
    )


ESTIMATORS = {  # name: (feature map, projection, random vectors per feature)
    "trigonometric, iid": (
        trigonometric_random_features,
        gaussian_projection,
        0.5,
    ),
    "trigonometric, orthogonal": (
        trigonometric_random_features,
        orthogonal_gaussian,
        0.5,
    ),
    "positive, iid": (positive_random_features, gaussian_projection, 1),
    "positive, orthogonal": (positive_random_features, orthogonal_gaussian, 1),
}


def estimates(name: str, m: int, x, y):
    """``SEEDS`` estimates of ``exp(x . y)`` for every pair, each from its own
    projection: ``[SEEDS, n]``."""
    feature_map, projection, per_feature = ESTIMATORS[name]
    out = []
    for _ in range(SEEDS):
        W = projection(
            int(m * per_feature), D, generator=generator, dtype=torch.float64
        ).to(DEVICE)
        # phi(x) . phi(y)
        out.append((feature_map(x, W) * feature_map(y, W)).sum(-1))
    return torch.stack(out)


# %% [markdown]
# The variance formulas (Lemma 2 of Choromanski et al.), divided by the squared
# kernel and written for `m` features. They depend on `|x + y|^2` (positive) and
# `|x - y|^2` (trigonometric).


# %%
def relative_rms_positive(logit, m, r2=R2):
    """RMS of ``estimate / exact - 1`` for ``m`` positive features:
    ``sqrt((exp(|x + y|^2) - 1) / m)``."""
    s = 2 * r2 + 2 * logit  # |x + y|^2
    return math.sqrt(math.expm1(s) / m)


def relative_rms_trigonometric(logit, m, r2=R2):
    """The same for ``m`` trigonometric features (``m / 2`` random vectors):
    ``sqrt(4 sinh^2(|x - y|^2 / 2) / m)``."""
    t = 2 * r2 - 2 * logit  # |x - y|^2
    return math.sqrt(4 * math.sinh(t / 2) ** 2 / m)


# %% [markdown]
# Unbiasedness, the error at `m = 64` against the formulas, and how often an
# estimate is negative.

# %%
rows = {}
for regime, logit in LOGITS.items():
    x, y = pairs(PAIRS, logit)
    exact = math.exp(logit)
    row = {"logit": logit, "kernel": exact}
    for name in ("trigonometric, iid", "positive, iid"):
        many = estimates(name, 1024, x, y)
        at_64 = estimates(name, 64, x, y)
        short = name.split(",")[0]
        row[f"{short}_mean_over_exact"] = many.mean().item() / exact
        row[f"{short}_rms_64"] = ((at_64 / exact - 1) ** 2).mean().sqrt().item()
        row[f"{short}_negative_64"] = (at_64 < 0).double().mean().item()
    row["trigonometric_formula_64"] = relative_rms_trigonometric(logit, 64)
    row["positive_formula_64"] = relative_rms_positive(logit, 64)
    rows[regime] = row
    print(
        f"{regime:18s} exp({logit:+.1f}) = {exact:.3f}: mean of estimates / "
        "exact, m = 1024: "
        f"trig {row['trigonometric_mean_over_exact']:.3f}, positive "
        f"{row['positive_mean_over_exact']:.3f}; "
        f"relative RMS error at m = 64: trig {row['trigonometric_rms_64']:.3f} "
        f"(formula {row['trigonometric_formula_64']:.3f}), positive "
        f"{row['positive_rms_64']:.3f} "
        f"(formula {row['positive_formula_64']:.3f}); negative estimates: trig "
        f"{row['trigonometric_negative_64']:.1%}, positive "
        f"{row['positive_negative_64']:.1%}"
    )

with open("estimates.md", "w") as f:
    f.write(
        "| x·y | exp(x·y) | mean / exact, trig. | mean / exact, pos. | RMS "
        "error m=64, trig. (formula) "
        "| RMS error m=64, pos. (formula) | negative m=64, trig. | negative, "
        "pos. |\n"
    )
    f.write("|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    for row in rows.values():
        f.write(
            f"| {row['logit']:+.1f} | {row['kernel']:.3f} | "
            f"{row['trigonometric_mean_over_exact']:.3f} "
            f"| {row['positive_mean_over_exact']:.3f} "
            f"| {row['trigonometric_rms_64']:.3f} "
            f"({row['trigonometric_formula_64']:.3f}) "
            f"| {row['positive_rms_64']:.3f} "
            f"({row['positive_formula_64']:.3f}) "
            f"| {row['trigonometric_negative_64']:.1%} | "
            f"{row['positive_negative_64']:.1%} |\n"
        )

# %% [markdown]
# The error against the number of features, for the four estimators in each
# regime: the root mean square of `estimate / exact - 1` over all pairs and
# projections, with the formulas for iid projections as dashed lines.

# %%
sweep = {regime: {name: [] for name in ESTIMATORS} for regime in LOGITS}
for regime, logit in LOGITS.items():
    x, y = pairs(PAIRS, logit)
    for name in ESTIMATORS:
        for m in FEATURES:
            error = estimates(name, m, x, y) / math.exp(logit) - 1
            sweep[regime][name].append((error**2).mean().sqrt().item())

fig, axes = plt.subplots(
    3, 1, figsize=(6.8, 10.4), sharex=True, sharey=True, layout="constrained"
)
styles = {
    "trigonometric, iid": ("C0", "o-"),
    "trigonometric, orthogonal": ("C0", "s:"),
    "positive, iid": ("C1", "o-"),
    "positive, orthogonal": ("C1", "s:"),
}
for ax, (regime, logit) in zip(axes, LOGITS.items()):
    for name, (color, style) in styles.items():
        ax.plot(
            FEATURES, sweep[regime][name], style, color=color, ms=4, label=name
        )
    ax.plot(
        FEATURES,
        [relative_rms_trigonometric(logit, m) for m in FEATURES],
        "--",
        color="C0",
        lw=1,
        alpha=0.6,
        label="formula, trigonometric iid",
    )
    ax.plot(
        FEATURES,
        [relative_rms_positive(logit, m) for m in FEATURES],
        "--",
        color="C1",
        lw=1,
        alpha=0.6,
        label="formula, positive iid",
    )
    ax.set(
        xscale="log",
        yscale="log",
        title=f"{regime}: $x \\cdot y$ = {logit:+.1f}, "
        f"$\\exp(x \\cdot y)$ = {math.exp(logit):.2f}",
        ylabel="relative RMS error",
    )
    ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3, which="both")
axes[-1].set_xlabel("number of features m")
fig.legend(
    *axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=2
)
fig.suptitle(
    "Random-feature estimates of the softmax kernel $\\exp(x \\cdot y)$,\n"
    f"d = {D}, $|x|^2 = |y|^2$ = {R2}"
)
fig.savefig("kernel_error.svg")

# %% [markdown]
# At a fixed `m = 64`, the whole range of logits that these norms allow: the
# error, and the fraction of negative estimates.

# %%
M = 64
# x . y in [-1.75, 1.75]: at -R2 (y = -x) and R2 (y = x) one of the estimators
# is exact
sweep_logits = [round(-1.75 + 0.25 * i, 2) for i in range(15)]
by_logit = {name: {"rms": [], "negative": []} for name in ESTIMATORS}
for logit in sweep_logits:
    x, y = pairs(PAIRS // 4, logit)
    for name in ESTIMATORS:
        est = estimates(name, M, x, y)
        by_logit[name]["rms"].append(
            ((est / math.exp(logit) - 1) ** 2).mean().sqrt().item()
        )
        by_logit[name]["negative"].append((est < 0).double().mean().item())

fig, (ax_err, ax_neg) = plt.subplots(
    2, 1, figsize=(6.8, 7.6), sharex=True, layout="constrained"
)
for name, (color, style) in styles.items():
    ax_err.plot(
        sweep_logits,
        by_logit[name]["rms"],
        style,
        color=color,
        ms=4,
        label=name,
    )
    if name.startswith("trig"):
        ax_neg.plot(
            sweep_logits,
            [100 * f for f in by_logit[name]["negative"]],
            style,
            color=color,
            ms=4,
            label=name,
        )
ax_neg.plot(
    sweep_logits,
    [100 * f for f in by_logit["positive, iid"]["negative"]],
    "o-",
    color="C1",
    ms=4,
    label="positive (iid and orthogonal)",
)
fine = [-1.9 + 0.02 * i for i in range(191)]
ax_err.plot(
    fine,
    [relative_rms_trigonometric(s, M) for s in fine],
    "--",
    color="C0",
    lw=1,
    label="formula, trig iid",
)
ax_err.plot(
    fine,
    [relative_rms_positive(s, M) for s in fine],
    "--",
    color="C1",
    lw=1,
    label="formula, positive iid",
)
ax_err.set(
    yscale="log",
    ylim=(1e-2, 30),
    ylabel="relative RMS error",
    title=f"Error at m = {M} features",
)
ax_neg.set(
    xlabel=r"logit $x \cdot y = q \cdot k / \sqrt{d}$",
    ylabel="negative estimates (%)",
    title=f"Negative estimates at m = {M}",
)
for ax in (ax_err, ax_neg):
    ax.grid(alpha=0.3, which="both")
# below the curves, where the error axis has room
ax_err.legend(loc="lower center", ncol=2)
ax_neg.legend()
fig.suptitle(f"The whole range of logits at $|x|^2 = |y|^2$ = {R2}, d = {D}")
fig.savefig("error_vs_logit.svg")

# %% [markdown]
# What orthogonality buys, at `m = 64` and `m = 1024`: the iid error over the
# orthogonal error.

# %%
gain = {}
for regime in LOGITS:
    gain[regime] = {
        kind: {
            m: sweep[regime][f"{kind}, iid"][FEATURES.index(m)]
            / sweep[regime][f"{kind}, orthogonal"][FEATURES.index(m)]
            for m in (64, 1024)
        }
        for kind in ("trigonometric", "positive")
    }
    print(
        f"{regime:18s} iid error / orthogonal error: "
        + ", ".join(
            f"{kind} {gain[regime][kind][64]:.2f} (m = 64) "
            f"{gain[regime][kind][1024]:.2f} (m = 1024)"
            for kind in ("trigonometric", "positive")
        )
    )

small, large = LOGITS["small kernel value"], LOGITS["large kernel value"]
with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "d": D,
            "r2": R2,
            "pairs": PAIRS,
            "seeds": SEEDS,
            "features": FEATURES,
            "regimes": rows,
            "sweep": sweep,
            "orthogonal_gain": gain,
            "small_logit": small,
            "large_logit": large,
            "trig_negative_small_64": round(
                100 * rows["small kernel value"]["trigonometric_negative_64"], 1
            ),
            "trig_rms_small_64": round(
                rows["small kernel value"]["trigonometric_rms_64"], 2
            ),
            "positive_rms_small_64": round(
                rows["small kernel value"]["positive_rms_64"], 3
            ),
            "trig_rms_large_64": round(
                rows["large kernel value"]["trigonometric_rms_64"], 3
            ),
            "positive_rms_large_64": round(
                rows["large kernel value"]["positive_rms_64"], 2
            ),
            "positive_formula_large_64": round(
                rows["large kernel value"]["positive_formula_64"], 2
            ),
            "trig_orthogonal_gain_large_1024": round(
                gain["large kernel value"]["trigonometric"][1024], 1
            ),
            "positive_orthogonal_gain_small_1024": round(
                gain["small kernel value"]["positive"][1024], 2
            ),
            "positive_orthogonal_gain_typical_1024": round(
                gain["typical"]["positive"][1024], 2
            ),
        },
        f,
        indent=2,
    )
