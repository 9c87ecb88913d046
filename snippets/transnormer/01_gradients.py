"""Gradients of normalised linear attention against NormAttention, on the same
inputs.

You will see:
* the derivative of a normalised output with respect to one weight is
  ``(v_s - o_t) / D_t`` (checked against autograd), while softmax attention has
  ``a_ts (v_s - o_t)`` in its place;
* the gradient norms with respect to every query ``q_t`` and key ``k_s`` of
  ``linear_attention(..., normalize=True)`` and of
  ``rms_norm(linear_attention(...))`` (NormAttention), over many random draws,
  for positive features ``elu(x) + 1`` and for signed features (no feature map
  at all, as in RetNet);
* with signed features the denominator ``D_t`` passes through zero: the
  normalised gradients spread over many orders of magnitude and grow as ``D_t``
  shrinks, NormAttention's do not.
"""

# %%
import json

import matplotlib.pyplot as plt
import numpy as np
import torch

from kernels import linear_attention
from kernels.linear_attention import elu_plus_one

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DRAWS, T, K, V = (1024, 256, 64, 64) if DEVICE == "cuda" else (48, 64, 16, 16)
# the epsilon of the RMSNorm below, and the one normalize=True adds to D_t
EPS = 1e-6
torch.manual_seed(0)

# %% [markdown]
# One query position, written out. The normalised output is
# `o = sum_s w_s v_s / D` with `D = sum_s w_s`; its derivative with respect to
# the weight `w_s` is `(v_s - o) / D`, with the denominator in front. Softmax
# attention makes its weights `exp(x_s)` from scores `x_s`, and the derivative
# with respect to the score is `a_s (v_s - o)`, with `a_s = w_s / D <= 1` in
# front.

# %%
n, d = 10, 4
# positive weights of one query
w = (torch.rand(n, dtype=torch.float64) + 0.1).requires_grad_()
values = torch.randn(n, d, dtype=torch.float64)
o = (w[:, None] * values).sum(0) / w.sum()
# [n, d]
jacobian = torch.stack(
    [torch.autograd.grad(o[i], w, retain_graph=True)[0] for i in range(d)],
    dim=1,
)
formula = (values - o.detach()) / w.sum().detach()
linear_formula_diff = (jacobian - formula).abs().max().item()

# scores of softmax attention
x = torch.randn(n, dtype=torch.float64, requires_grad=True)
a = torch.softmax(x, dim=0)
o_soft = a @ values
jacobian_soft = torch.stack(
    [torch.autograd.grad(o_soft[i], x, retain_graph=True)[0] for i in range(d)],
    dim=1,
)
formula_soft = a.detach()[:, None] * (values - o_soft.detach())
softmax_formula_diff = (jacobian_soft - formula_soft).abs().max().item()
print(
    "d o / d w_s = (v_s - o) / D, max |diff| from autograd: "
    f"{linear_formula_diff:.1e}"
)
print(
    "d o / d x_s = a_s (v_s - o) (softmax), max |diff| from autograd: "
    f"{softmax_formula_diff:.1e}"
)

# %% [markdown]
# NormAttention: no denominator, and an RMSNorm (Zhang and Sennrich, 2019) over
# the `V` numbers of each output instead. The gain is fixed at one here: it
# would multiply both versions alike.


# %%
def rms_norm(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps)`` over the last dimension (RMSNorm with unit
    gain)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


def normalised(q, k, v):
    """Linear attention divided by its denominator D_t ("Transformers are
    RNNs")."""
    return linear_attention(q, k, v, normalize=True)


def norm_attention(q, k, v):
    """NormAttention: RMSNorm(scale * q_t S_t), no denominator."""
    return rms_norm(linear_attention(q, k, v))


FEATURES = {
    "positive": ("positive features elu(x) + 1", elu_plus_one),
    "signed": ("signed features (no feature map)", lambda x: x),
}
METHODS = {
    "normalised": ("normalised (divide by D_t)", normalised),
    "norm_attention": ("NormAttention (RMSNorm)", norm_attention),
}

# %% [markdown]
# The draws: `DRAWS` independent heads of `T` positions, each with its own
# standard normal queries, keys, values and upstream gradient `G` (the loss is
# `sum(G * o)`). All draws go through `linear_attention` in one call, as a
# batch, so the gradient of each query and each key is its own. Query 0 is left
# out: with a single key, both outputs are independent of it.

# %%
# [B, H, T, K]
q_raw, k_raw = (torch.randn(DRAWS, 1, T, K, device=DEVICE) for _ in range(2))
# [B, H, T, V]
v, G = (torch.randn(DRAWS, 1, T, V, device=DEVICE) for _ in range(2))
scale = K**-0.5

results, samples = {}, {}
for feature_name, (_, phi) in FEATURES.items():
    with (
        torch.no_grad()
    ):  # the denominators D_t = scale * phi(q_t) . sum_{s<=t} phi(k_s)
        D = scale * (phi(q_raw) * phi(k_raw).cumsum(dim=2)).sum(-1)  # [B, 1, T]
    samples[feature_name] = {"D": D[:, 0].abs().cpu()}  # [DRAWS, T]
    results[feature_name] = {"smallest_abs_D": D[:, 0, 1:].abs().min().item()}
    for method_name, (_, attend) in METHODS.items():
        q, k = (x.clone().requires_grad_() for x in (q_raw, k_raw))
        # gradients w.r.t. the inputs of phi
        (attend(phi(q), phi(k), v) * G).sum().backward()
        dq = q.grad[:, 0, 1:].norm(dim=-1).flatten().cpu()  # [DRAWS * (T - 1)]
        dk = k.grad[:, 0].norm(dim=-1).flatten().cpu()  # [DRAWS * T]
        samples[feature_name][method_name] = {"q": dq, "k": dk}
        quantiles = {"median": 0.5, "p99": 0.99, "max": 1.0}
        results[feature_name][method_name] = {
            f"{name}_{stat}": torch.quantile(
                g[torch.isfinite(g)].double(), p
            ).item()
            for name, g in (("dq", dq), ("dk", dk))
            for stat, p in quantiles.items()
        } | {
            "not_finite": int(
                (~torch.isfinite(dq)).sum() + (~torch.isfinite(dk)).sum()
            )
        }
        r = results[feature_name][method_name]
        r["dq_p99_over_median"] = r["dq_p99"] / r["dq_median"]
        r["dk_p99_over_median"] = r["dk_p99"] / r["dk_median"]

print(
    f"{DRAWS} draws of T = {T}, K = {K}, V = {V}: gradient norms |dq_t| and "
    "|dk_s|"
)
for feature_name, by_method in results.items():
    print(
        f"{FEATURES[feature_name][0]} (smallest |D_t| "
        f"{by_method['smallest_abs_D']:.1e}):"
    )
    for method_name, (method_label, _) in METHODS.items():
        r = by_method[method_name]
        print(
            f"  {method_label:27s} per query: median {r['dq_median']:8.3g}, "
            f"99% {r['dq_p99']:9.3g}"
        )
        print(
            f"  {'':27s} per key:   median {r['dk_median']:8.3g}, 99% "
            f"{r['dk_p99']:9.3g}"
        )

# %% [markdown]
# The distributions on a log scale (each histogram counts queries or keys, as a
# fraction of all of them per bin), and, for the signed features, each query's
# gradient against its own denominator. A key's gradient collects terms from
# every later query, so it is plotted against the smallest `|D_t|` among the
# queries that see it.


# %%
def log_bins(*tensors, per_decade=4):
    values = torch.cat([t[torch.isfinite(t) & (t > 0)] for t in tensors])
    lo, hi = (
        np.floor(np.log10(values.min().item())),
        np.ceil(np.log10(values.max().item())),
    )
    return np.logspace(lo, hi, int(hi - lo) * per_decade + 1)


abs_D = samples["signed"]["D"].clone()
abs_D[:, 0] = float("inf")  # query 0 is left out
# [DRAWS, T]: min |D_t| over t >= s
seen_by = abs_D.flip(1).cummin(dim=1).values.flip(1)
# One column per input (queries, keys), one row per view.
fig, axes = plt.subplots(3, 2, figsize=(6.8, 10.2), layout="constrained")
for row, (which, label, plural) in enumerate(
    (("q", "query", "queries"), ("k", "key", "keys"))
):
    gradient = (
        f"$|\\partial\\,\\mathrm{{loss}} / \\partial {which}|$ per {label}"
    )
    for col, (feature_name, (feature_label, _)) in enumerate(FEATURES.items()):
        ax = axes[col, row]
        by_method = samples[feature_name]
        bins = log_bins(*(by_method[m][which] for m in METHODS))
        for color, (method_name, (method_label, _)) in zip(
            ("C3", "C0"), METHODS.items()
        ):
            g = by_method[method_name][which]
            g = g[torch.isfinite(g) & (g > 0)].numpy()
            ax.hist(
                g,
                bins=bins,
                weights=np.full(g.size, 1 / g.size),
                histtype="step",
                lw=1.8,
                color=color,
                label=method_label,
            )
        ax.set(
            xscale="log",
            yscale="log",
            title=feature_label,
            xlabel=gradient,
            ylabel=f"fraction of {plural} per bin",
        )
    ax = axes[2, row]
    x_D = abs_D[:, 1:].flatten() if which == "q" else seen_by.flatten()
    # at most 5000 points per method, drawn as pixels
    shown = torch.randperm(x_D.numel())[:5000]
    for color, (method_name, (method_label, _)) in zip(
        ("C3", "C0"), METHODS.items()
    ):
        ax.scatter(
            x_D[shown],
            samples["signed"][method_name][which][shown],
            s=3,
            alpha=0.35,
            color=color,
            label=method_label,
            rasterized=True,
        )
    g = samples["signed"]["normalised"][which]
    ok = torch.isfinite(g) & torch.isfinite(x_D)
    # a guide: near a zero of D_t, o_t ~ 1/D_t and do/dq ~ 1/D_t^2
    c = (g[ok] * x_D[ok] ** 2).median().item()
    D_line = np.logspace(
        np.log10(x_D[ok].min().item()), np.log10(x_D[ok].max().item()), 50
    )
    ax.plot(
        D_line,
        c / D_line**2,
        "k--",
        lw=1,
        label=r"slope $-2$ ($\propto 1/|D_t|^2$)",
    )
    ax.set(
        xscale="log",
        yscale="log",
        title="signed features: against $|D_t|$",
        xlabel="$|D_t|$ of the query"
        if which == "q"
        else r"smallest $|D_t|$ over the queries $t \geq s$",
        ylabel=gradient,
    )
for ax in axes.flat:
    ax.grid(alpha=0.3, which="major")
# One legend for the six panels, below them: the colours are the methods.
fig.legend(
    *axes[2, 0].get_legend_handles_labels(),
    loc="outside lower center",
    ncol=2,
    markerscale=4,
)
fig.savefig("gradients.svg", dpi=150)

# %%
with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "draws": DRAWS,
            "T": T,
            "K": K,
            "V": V,
            "eps": EPS,
            "linear_formula_max_abs_diff": linear_formula_diff,
            "softmax_formula_max_abs_diff": softmax_formula_diff,
            **results,
        },
        f,
        indent=2,
    )
