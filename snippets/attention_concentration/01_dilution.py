"""Can one query put most of its attention on
one key? Softmax against linear attention.

You will see, on a task where one key out of T is the query itself and the
others are random:
* the largest attention weight and the entropy (in nats) of the weights as T
  grows, for softmax attention and for linear attention with ``elu + 1``, ReLU,
  a sharper "focused" ReLU and positive random features;
* that the linear maps follow ``rho / (rho + T - 1)``: the matching key scores
  only a fixed factor ``rho`` above a random one, so its weight falls like
  ``1 / T``;
* scaling the query (a temperature) sharpens softmax attention, leaves ReLU
  attention exactly as it was, and moves ``elu + 1`` attention only a little.
"""

# %%
import json
import math

import matplotlib.pyplot as plt
import torch

from kernels.linear_attention import (
    elu_plus_one,
    orthogonal_gaussian,
    positive_random_features,
    relu,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LENGTHS = (
    [16, 64, 256, 1024, 4096, 16384, 65536]
    if DEVICE == "cuda"
    else [16, 64, 256, 1024, 4096, 16384]
)
TRIALS = 128 if DEVICE == "cuda" else 48
D, M = 64, 256  # head dim; random features for the Performer map
# the temperature sweep, at one length
SCALE_T, QUERY_SCALES = 1024, [0.25, 0.5, 1, 2, 4]
# draws on the CPU, then moved: the same numbers everywhere
generator = torch.Generator().manual_seed(0)
print(f"d = {D}, {TRIALS} trials per point, on {DEVICE}")


# %% [markdown]
# FLatten's focused map (Han et al., 2023), written here in PyTorch: ReLU
# features raised to the power `p` elementwise, then rescaled to the norm they
# had. The norm is kept, the direction sharpened towards the largest
# coordinates.


# %%
def focused_relu(x: torch.Tensor, p: int = 3) -> torch.Tensor:
    """``|relu(x)| / |relu(x)^p| * relu(x)^p`` along the last dim (Han et al.
    2023, without the learned scale).
    """
    r = relu(x)
    rp = r**p
    return rp * (
        r.norm(dim=-1, keepdim=True)
        / rp.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    )


# %% [markdown]
# The attention weights of one query over `T` keys, for each map. Softmax uses
# `exp(q . k / sqrt(d))`; a linear map uses `phi(q) . phi(k_s)`, normalised over
# `s`, the weights that `linear_attention(..., normalize=True)` applies. The
# random features get a fresh orthogonal projection for every query.


# %%
def weights(kind: str, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Attention weights ``[T]`` of the query ``q [D]`` over the keys
    ``k [T, D]``.
    """
    if kind == "softmax":
        return torch.softmax(k @ q / math.sqrt(D), dim=0)
    if kind == "positive random features":
        W = orthogonal_gaussian(M, D, generator=generator, dtype=q.dtype).to(
            DEVICE
        )
        # phi(q) . phi(k) ~ exp(q . k / sqrt(d))
        phi = lambda x: positive_random_features(x * D**-0.25, W)
    else:
        phi = {
            "elu + 1": elu_plus_one,
            "ReLU": relu,
            "focused ReLU, p = 3": focused_relu,
        }[kind]
    scores = phi(k) @ phi(q)  # [T], all >= 0
    return scores / scores.sum()


KINDS = [
    "softmax",
    "elu + 1",
    "ReLU",
    "focused ReLU, p = 3",
    "positive random features",
]


def entropy(p: torch.Tensor) -> float:
    """Shannon entropy of the weights ``p``."""
    return -torch.special.xlogy(p, p).sum().item()  # nats; 0 log 0 = 0


def trial(T: int, query_scale: float = 1.0, kinds=KINDS):
    """One task: T random keys, the query is ``query_scale`` times one of them.
    Returns per kind (largest weight, weight on the matching key, entropy,
    whether the largest weight is the match)."""
    k = torch.randn(T, D, generator=generator).to(DEVICE)
    match = torch.randint(T, (1,), generator=generator).item()
    q = query_scale * k[match]
    out = {}
    for kind in kinds:
        p = weights(kind, q, k)
        out[kind] = (
            p.max().item(),
            p[match].item(),
            entropy(p),
            int(p.argmax().item() == match),
        )
    return out


def average(T: int, query_scale: float = 1.0, kinds=KINDS):
    """The results of `trial` averaged over ``TRIALS`` draws, per kind."""
    runs = [trial(T, query_scale, kinds) for _ in range(TRIALS)]
    return {
        kind: {
            name: sum(r[kind][i] for r in runs) / TRIALS
            for i, name in enumerate(
                ("max_weight", "match_weight", "entropy", "argmax_is_match")
            )
        }
        for kind in kinds
    }


# %% [markdown]
# The prediction for the linear maps. With `q = k_match`, the matching key
# scores `phi(q) . phi(q)`, about `d E[phi(x)^2]`, and a random key about
# `d E[phi(x)]^2` (x standard normal), so the match is favoured by
# `rho = E[phi^2] / E[phi]^2` and gets a weight of about `rho / (rho + T - 1)`.
# For ReLU, `rho = pi`; for `elu + 1`, the Gaussian integrals below; for the
# focused ReLU, `E[relu^6] / E[relu^3]^2 = 7.5 / (2 / sqrt(2 pi))^2`.

# %%
Phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # standard normal CDF
# E[elu(x) + 1]
elu_mean = 1 / math.sqrt(2 * math.pi) + 0.5 + math.exp(0.5) * Phi(-1)
# E[(elu(x) + 1)^2]
elu_square = 1 + 2 / math.sqrt(2 * math.pi) + math.exp(2) * Phi(-2)
RHO = {
    "elu + 1": elu_square / elu_mean**2,
    "ReLU": math.pi,
    "focused ReLU, p = 3": 7.5 / (2 / math.sqrt(2 * math.pi)) ** 2,
}
for kind, rho in RHO.items():
    print(f"rho for {kind:20s} {rho:6.2f}")

# %%
by_length, sharp = {}, {}  # sharp: softmax with the query doubled
for T in LENGTHS:
    by_length[T] = average(T)
    sharp[T] = average(T, 2.0, ["softmax"])["softmax"]
    print(
        f"T = {T:6d} (log T = {math.log(T):5.2f}): "
        + " | ".join(
            f"{kind} max {r['max_weight']:.3f} H {r['entropy']:.2f}"
            for kind, r in by_length[T].items()
        )
        + f" | softmax, query x 2: max {sharp[T]['max_weight']:.3f} H "
        f"{sharp[T]['entropy']:.2f}",
        flush=True,
    )

by_scale = {c: average(SCALE_T, c) for c in QUERY_SCALES}
for c, res in by_scale.items():
    print(
        f"query x {c:4}: T = {SCALE_T}, largest weight "
        + ", ".join(f"{kind} {r['max_weight']:.3f}" for kind, r in res.items())
    )

# %%
colors = {
    "softmax": "C3",
    "elu + 1": "C0",
    "ReLU": "C2",
    "focused ReLU, p = 3": "C4",
    "positive random features": "C1",
}
# three panels stacked, and a fourth row that holds the shared legend
fig, axes = plt.subplots(
    4, 1, figsize=(6.8, 12), gridspec_kw={"height_ratios": [1, 1, 1, 0.42]}
)
ax_max, ax_h, ax_c, ax_legend = axes
lengths = list(by_length)
for kind in KINDS:
    ax_max.plot(
        lengths,
        [by_length[T][kind]["max_weight"] for T in lengths],
        "o-",
        color=colors[kind],
        ms=4,
        label=kind,
    )
    ax_h.plot(
        lengths,
        [by_length[T][kind]["entropy"] for T in lengths],
        "o-",
        color=colors[kind],
        ms=4,
        label=kind,
    )
    ax_c.plot(
        QUERY_SCALES,
        [by_scale[c][kind]["max_weight"] for c in QUERY_SCALES],
        "o-",
        color=colors[kind],
        ms=4,
        label=kind,
    )
ax_max.plot(
    lengths,
    [sharp[T]["max_weight"] for T in lengths],
    "s--",
    color=colors["softmax"],
    ms=4,
    label="softmax, query doubled",
)
ax_h.plot(
    lengths,
    [sharp[T]["entropy"] for T in lengths],
    "s--",
    color=colors["softmax"],
    ms=4,
)
ax_max.plot(
    lengths,
    [by_length[T]["positive random features"]["match_weight"] for T in lengths],
    "^:",
    color=colors["positive random features"],
    ms=4,
    label="random features: weight on the match",
)
for kind, rho in RHO.items():
    ax_max.plot(
        lengths,
        [rho / (rho + T - 1) for T in lengths],
        "--",
        color=colors[kind],
        lw=0.8,
        alpha=0.7,
    )
ax_max.plot([], [], "k--", lw=0.8, label=r"prediction $\rho / (\rho + T - 1)$")
ax_max.plot(
    lengths,
    [1 / T for T in lengths],
    color="black",
    lw=2.5,
    alpha=0.25,
    label=r"uniform: $1 / T$, $\log T$",
)
ax_h.plot(
    lengths,
    [math.log(T) for T in lengths],
    color="black",
    lw=2.5,
    alpha=0.25,
    label=r"uniform: $\log T$",
)
ax_max.set(
    xscale="log",
    yscale="log",
    xlabel="sequence length $T$ (keys)",
    ylabel="largest attention weight",
    title="Largest weight (mean over trials)",
)
ax_h.set(
    xscale="log",
    xlabel="sequence length $T$ (keys)",
    ylabel="entropy of the weights (nats)",
    title="Entropy (mean over trials)",
)
ax_c.set(
    xscale="log",
    yscale="log",
    xlabel="query scale $c$ (the query is $c$ times the matching key)",
    ylabel="largest attention weight",
    title=f"Scaling the query, $T = {SCALE_T}$",
)
for ax, ticks in ((ax_max, lengths), (ax_h, lengths), (ax_c, QUERY_SCALES)):
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
ax_legend.axis("off")
ax_legend.legend(
    *ax_max.get_legend_handles_labels(), loc="center", ncol=2, frameon=False
)
fig.suptitle(
    f"One query, $T$ random keys, one of which equals the query\n"
    f"($d = {D}$, {TRIALS} trials per point)"
)
fig.tight_layout()
fig.savefig("dilution.svg")

# %%
T_mid, T_max = 1024, LENGTHS[-1]
with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "d": D,
            "m": M,
            "trials": TRIALS,
            "lengths": LENGTHS,
            "rho": RHO,
            "rho_elu": round(RHO["elu + 1"], 2),
            "rho_relu": round(RHO["ReLU"], 2),
            "rho_focused": round(RHO["focused ReLU, p = 3"], 1),
            "T_mid": T_mid,
            "T_max": T_max,
            "log_T_max": round(math.log(T_max), 2),
            "at_mid": by_length[T_mid],
            "at_max": by_length[T_max],
            "softmax_max_mid": round(
                by_length[T_mid]["softmax"]["max_weight"], 3
            ),
            "softmax_max_max": round(
                by_length[T_max]["softmax"]["max_weight"], 3
            ),
            "elu_max_mid": round(by_length[T_mid]["elu + 1"]["max_weight"], 4),
            "relu_max_mid": round(by_length[T_mid]["ReLU"]["max_weight"], 4),
            "elu_predicted_mid": round(
                RHO["elu + 1"] / (RHO["elu + 1"] + T_mid - 1), 4
            ),
            "relu_predicted_mid": round(
                RHO["ReLU"] / (RHO["ReLU"] + T_mid - 1), 4
            ),
            "focused_predicted_mid": round(
                RHO["focused ReLU, p = 3"]
                / (RHO["focused ReLU, p = 3"] + T_mid - 1),
                4,
            ),
            "focused_max_mid": round(
                by_length[T_mid]["focused ReLU, p = 3"]["max_weight"], 4
            ),
            "softmax_entropy_mid": round(
                by_length[T_mid]["softmax"]["entropy"], 2
            ),
            "elu_entropy_max": round(by_length[T_max]["elu + 1"]["entropy"], 2),
            "relu_entropy_max": round(by_length[T_max]["ReLU"]["entropy"], 2),
            "softmax_entropy_max": round(
                by_length[T_max]["softmax"]["entropy"], 2
            ),
            "relu_argmax_is_match_max": round(
                100 * by_length[T_max]["ReLU"]["argmax_is_match"]
            ),
            "elu_argmax_is_match_max": round(
                100 * by_length[T_max]["elu + 1"]["argmax_is_match"]
            ),
            "focused_argmax_is_match_max": round(
                100 * by_length[T_max]["focused ReLU, p = 3"]["argmax_is_match"]
            ),
            "prf_match_mid": round(
                by_length[T_mid]["positive random features"]["match_weight"], 3
            ),
            "prf_max_mid": round(
                by_length[T_mid]["positive random features"]["max_weight"], 3
            ),
            "prf_argmax_is_match_mid": round(
                100
                * by_length[T_mid]["positive random features"][
                    "argmax_is_match"
                ]
            ),
            "softmax_max_scale_2": round(
                by_scale[2]["softmax"]["max_weight"], 3
            ),
            "softmax_max_scale_quarter": round(
                by_scale[0.25]["softmax"]["max_weight"], 4
            ),
            "elu_max_scale_4": round(by_scale[4]["elu + 1"]["max_weight"], 4),
            "relu_max_scale_4": round(by_scale[4]["ReLU"]["max_weight"], 4),
            "sharp_softmax_max_max": round(sharp[T_max]["max_weight"], 3),
            "by_length": by_length,
            "by_scale": by_scale,
            "softmax_query_doubled": sharp,
        },
        f,
        indent=2,
    )
