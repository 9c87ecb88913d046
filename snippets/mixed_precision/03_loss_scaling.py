"""One model trained four ways: FP32, FP16 with
and without dynamic loss scaling, and BF16.

You will see:
* the loss of the same model, on the same data from the same seed, in four
  precisions;
* FP16 without loss scaling falling behind as the loss shrinks, because more and
  more of the gradient values drop below float16's smallest subnormal and become
  zero;
* ``torch.amp.GradScaler`` growing its loss scale, and backing off when a
  gradient overflows;
* a histogram of gradient magnitudes against float16's normal and subnormal
  ranges, before and after multiplying by the loss scale.

All four runs work on a CPU as well as on a GPU: autocast supports float16 and
bfloat16 on both, and ``torch.amp.GradScaler`` takes the device type ("cpu" or
"cuda").
"""

# %%
import json
import math

import matplotlib.pyplot as plt
import torch
from torch import nn

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
STEPS = 1500 if DEVICE == "cuda" else 400

# %% [markdown]
# The task: regress the 64 outputs of a fixed random "teacher" network from 32
# random inputs, with a four-layer MLP. The loss is the mean squared error over
# every number of a global batch of 2**20 samples. We compute the gradient of
# one micro-batch of 512 at a time, which is what gradient accumulation does:
# each micro-batch's loss is divided by the number of micro-batches, 2048,
# before its backward pass. To keep the run short we step after every
# micro-batch instead of after 2048 of them. Adam divides each gradient by its
# running root-mean-square, so a constant factor on the gradient changes almost
# nothing in float32 (only Adam's epsilon of 1e-8 notices it); the check run at
# the end shows it. In float16 the factor decides which gradient values survive.

# %%
MICRO_BATCH, GLOBAL_BATCH = 512, 2**20
ACCUMULATION = GLOBAL_BATCH // MICRO_BATCH  # micro-batches per global batch
D_IN, D_HIDDEN, D_OUT = 32, 128, 64

torch.manual_seed(1234)
TEACHER = nn.Sequential(
    nn.Linear(D_IN, 64), nn.Tanh(), nn.Linear(64, D_OUT)
).requires_grad_(False)
with torch.no_grad():
    # to give every target unit variance
    TEACHER_STD = TEACHER(torch.randn(10_000, D_IN)).std(0)


def batches(seed: int):
    """The same endless stream of (inputs, targets) micro-batches
    for every run.
    """
    gen = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randn(MICRO_BATCH, D_IN, generator=gen)
        yield x.to(DEVICE), (TEACHER(x) / TEACHER_STD).to(DEVICE)


def make_model() -> nn.Module:
    """The student: a four-layer MLP, initialised from the same seed for every
    run.
    """
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(D_IN, D_HIDDEN),
        nn.GELU(),
        nn.Linear(D_HIDDEN, D_HIDDEN),
        nn.GELU(),
        nn.Linear(D_HIDDEN, D_HIDDEN),
        nn.GELU(),
        nn.Linear(D_HIDDEN, D_OUT),
    ).to(DEVICE)


def record_output_grads(model: nn.Module, store: list):
    """Append, at every backward pass, the gradient arriving at each Linear
    layer's output.

    Under float16 autocast these are float16 tensors: the values that underflow.
    """

    def hook(module, inputs, output):
        output.register_hook(lambda g: store.append(g.detach().flatten()))

    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.register_forward_hook(hook)


# %% [markdown]
# One training run. `autocast` runs the matrix products in the chosen 16-bit
# type and keeps the weights (the master copy), the loss and the optimizer in
# float32. `GradScaler` multiplies the loss by its scale before the backward
# pass, divides the gradients by it before the step, skips the step when it
# finds an inf or NaN and halves the scale, and doubles the scale after
# `growth_interval` good steps in a row (its default is 2000; 20 lets a short
# run show it).

# %%
INIT_SCALE, GROWTH_INTERVAL = 2.0**16, 20
# key: (label, autocast dtype or None, loss scaling, loss divided by
# ACCUMULATION)
RUNS = {
    "fp32": ("FP32", None, False, True),
    "fp16": ("FP16, no loss scaling", torch.float16, False, True),
    "fp16_scaled": ("FP16, dynamic loss scaling", torch.float16, True, True),
    "bf16": ("BF16 autocast", torch.bfloat16, False, True),
    "fp32_undivided": ("FP32 check: loss not divided", None, False, False),
}


def train(dtype, scaling: bool, divided: bool) -> dict:
    """Train a fresh model for STEPS steps; return the loss, the share of zero
    gradient values and the loss scale of every step, the skipped steps, and the
    last step's gradients."""
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler(
        DEVICE,
        init_scale=INIT_SCALE,
        growth_factor=2.0,
        backoff_factor=0.5,
        growth_interval=GROWTH_INTERVAL,
        enabled=scaling,
    )
    grads = []
    record_output_grads(model, grads)
    history = {"loss": [], "zero_share": [], "scale": [], "skipped": []}
    data = batches(seed=1)
    for step in range(STEPS):
        x, y = next(data)
        with torch.autocast(DEVICE, dtype=dtype, enabled=dtype is not None):
            out = model(x)
        # the loss itself in float32
        loss = nn.functional.mse_loss(out.float(), y)
        opt.zero_grad(set_to_none=True)
        grads.clear()
        scaler.scale(loss / ACCUMULATION if divided else loss).backward()
        scale = scaler.get_scale()  # 1.0 when scaling is disabled
        # unscales; skips opt.step() if a gradient is inf or NaN
        scaler.step(opt)
        # halves S after a skip, doubles it after GROWTH_INTERVAL good steps
        scaler.update()
        g = torch.cat(grads)
        history["loss"].append(loss.item())
        history["zero_share"].append((g == 0).float().mean().item())
        history["scale"].append(scale)
        if scaler.get_scale() < scale:
            history["skipped"].append(step)
    # the last step's, unscaled
    history["last_output_grads"] = g.float().cpu() / scale
    weight_grads = [p.grad.flatten() for p in model.parameters()]
    history["last_weight_grads"] = torch.cat(weight_grads).float().cpu()
    return history


FINAL_WINDOW = 20


def final_loss(history: dict) -> float:
    """The training loss at the end of a run: the mean over its last
    FINAL_WINDOW steps.
    """
    return sum(history["loss"][-FINAL_WINDOW:]) / FINAL_WINDOW


runs = {}
for key, (label, dtype, scaling, divided) in RUNS.items():
    h = runs[key] = train(dtype, scaling, divided)
    print(
        f"{label}: final loss {final_loss(h):.2e}, zero gradient values "
        f"{h['zero_share'][-1]:.1%}"
    )
    if scaling:
        log2_scale, skipped = math.log2(h["scale"][-1]), len(h["skipped"])
        print(
            f"    final loss scale 2^{log2_scale:.0f}, {skipped} steps skipped"
        )

# %% [markdown]
# The four loss curves, and the share of gradient values that are exactly zero.

# %%
COLOURS = {
    "fp32": "black",
    "fp16": "#d55e00",
    "fp16_scaled": "#0072b2",
    "bf16": "#009e73",
}
STYLES = {"fp32": "-", "fp16": "-", "fp16_scaled": "--", "bf16": ":"}
fig, (ax_loss, ax_zero) = plt.subplots(2, 1, figsize=(6.8, 7.0), sharex=True)
for key, colour in COLOURS.items():
    ax_loss.plot(
        runs[key]["loss"], STYLES[key], color=colour, label=RUNS[key][0], lw=1.4
    )
    ax_zero.plot(
        [100 * z for z in runs[key]["zero_share"]],
        STYLES[key],
        color=colour,
        lw=1.4,
    )
ax_loss.set(
    yscale="log",
    ylabel="training loss (mean squared error)",
    title=f"Same model, data and seed ({DEVICE})",
)
ax_zero.set(
    xlabel="optimizer step (steps)",
    ylabel="gradient values that are zero (%)",
    title="Gradients at the layer outputs",
    ylim=(-3, 103),
)
for ax in (ax_loss, ax_zero):
    ax.grid(alpha=0.3)
ax_loss.legend()
fig.tight_layout()
fig.savefig("loss_curves.svg")

# %% [markdown]
# The loss scale of the dynamic run: it doubles every GROWTH_INTERVAL good steps
# and halves at every overflow, whose step is skipped.

# %%
h = runs["fp16_scaled"]
fig, ax = plt.subplots(figsize=(6.8, 3.2))
ax.plot(
    [math.log2(s) for s in h["scale"]],
    color=COLOURS["fp16_scaled"],
    label="loss scale",
)
ax.plot(
    h["skipped"],
    [math.log2(h["scale"][i]) for i in h["skipped"]],
    "x",
    color="#d55e00",
    ms=8,
    label=f"overflow: step skipped ({len(h['skipped'])})",
)
ax.set(
    xlabel="optimizer step (steps)",
    ylabel=r"$\log_2$ of the loss scale $S$",
    title="GradScaler's dynamic loss scale",
)
ax.yaxis.set_major_locator(plt.MaxNLocator(integer=True))
ax.grid(alpha=0.3)
ax.legend(loc="lower right")
fig.tight_layout()
fig.savefig("loss_scale.svg")

# %% [markdown]
# Where the gradients of the FP32 run sit at its last step, against float16's
# ranges, as they are and multiplied by the loss scale that the dynamic run
# reached: the gradients at the layer outputs, and the weight gradients (sums
# over the micro-batch, hence larger).

# %%
S = runs["fp16_scaled"]["scale"][-1]
populations = {
    "outputs": runs["fp32"]["last_output_grads"].abs(),
    "weights": runs["fp32"]["last_weight_grads"].abs(),
}
TITLES = {
    "outputs": "Gradients at the layer outputs",
    "weights": "Weight and bias gradients",
}
bins = torch.arange(-40, 22).float()


def share_per_bin(values: torch.Tensor) -> list:
    """Percent of the values in each power-of-two bin [2**k, 2**(k+1)) (zeros
    fall in none).
    """
    log2 = torch.log2(values[values > 0])
    return (
        100
        * torch.histc(
            log2, bins=len(bins) - 1, min=bins[0].item(), max=bins[-1].item()
        )
        / values.numel()
    ).tolist()


fig, axes = plt.subplots(2, 1, figsize=(6.8, 6.4), sharex=True)
for ax, (key, g) in zip(axes, populations.items()):
    # The bands differ in pattern and hue, not only in tint, so that they stay
    # apart in grey or inverted (the dark theme inverts figures): mid grey with
    # stripes for zero, orange with dots for the subnormals.
    ax.axvspan(
        bins[0], -24, facecolor="0.78", edgecolor="0.35", hatch="//", lw=0
    )
    ax.axvspan(
        -24,
        -14,
        facecolor="#f5c469",
        edgecolor="#a05a00",
        hatch="..",
        lw=0,
    )
    ax.axvspan(-14, math.log2(65504), color="#009e73", alpha=0.15, lw=0)
    ax.axvspan(
        math.log2(65504),
        bins[-1],
        facecolor="#cc79a7",
        alpha=0.35,
        edgecolor="0.4",
        hatch="xx",
        lw=0,
    )
    for edge in (-24, -14, math.log2(65504)):
        ax.axvline(edge, color="0.35", lw=0.8, ls="--")
    ax.stairs(
        share_per_bin(g),
        bins,
        color="black",
        lw=1.5,
        label="as computed in FP32",
    )
    ax.stairs(
        share_per_bin(g * S),
        bins,
        color=COLOURS["fp16_scaled"],
        lw=1.5,
        label=f"multiplied by the loss scale $S = 2^{{{math.log2(S):.0f}}}$",
    )
    ax.set(
        ylabel="share of values (%)",
        title=TITLES[key],
        xlim=(bins[0], bins[-1]),
    )
    ax.grid(alpha=0.3, axis="y")
# headroom above the bars for the names of the bands
axes[0].set_ylim(top=1.3 * axes[0].get_ylim()[1])
for x, text in [
    (-32, "zero in FP16"),
    (-19, "FP16\nsubnormal"),
    (1, "FP16 normal"),
    (18.5, "inf"),
]:
    axes[0].text(
        x,
        0.97,
        text,
        transform=axes[0].get_xaxis_transform(),
        ha="center",
        va="top",
        bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},
    )
axes[0].legend(loc="center left", bbox_to_anchor=(0.3, 0.55))
axes[1].set_xlabel(
    r"$\log_2$ of the gradient's magnitude (binary orders of magnitude)"
)
fig.tight_layout()
fig.savefig("grad_histogram.svg")


def fp16_fate(values: torch.Tensor) -> dict:
    """Percent of the values that float16 turns into zero, subnormals, normal
    numbers and inf.
    """
    h = values.half().float().abs()
    shares = {
        "zero": h == 0,
        "nonzero": h > 0,
        "subnormal": (h > 0) & (h < 2**-14),
        "normal": (h >= 2**-14) & (h < math.inf),
        "inf": h == math.inf,
    }
    return {k: 100 * v.float().mean().item() for k, v in shares.items()}


fate = {}
for key, g in populations.items():
    fate[key] = {
        "before": fp16_fate(g),
        "after": fp16_fate(g * S),
        "median_log2": torch.log2(g[g > 0]).median().item(),
        "max_log2": torch.log2(g.max()).item(),
    }
    print(
        f"{TITLES[key]}: median 2^{fate[key]['median_log2']:.1f}, largest "
        f"2^{fate[key]['max_log2']:.1f}"
    )
    for when in ("before", "after"):
        shares = ", ".join(
            f"{v:.4g}% {k}"
            for k, v in fate[key][when].items()
            if k != "nonzero"
        )
        print(f"  {when:6s} scaling, in FP16: {shares}")

# %%
summary = {
    "device": DEVICE,
    "steps": STEPS,
    "micro_batch": MICRO_BATCH,
    "global_batch": GLOBAL_BATCH,
    "accumulation": ACCUMULATION,
    "log2_global_batch": round(math.log2(GLOBAL_BATCH)),
    "final_loss": {key: final_loss(h) for key, h in runs.items()},
    "final_window": FINAL_WINDOW,
    "final_zero_share_percent": {
        key: 100 * h["zero_share"][-1] for key, h in runs.items()
    },
    "initial_zero_share_percent": {
        key: 100 * h["zero_share"][0] for key, h in runs.items()
    },
    "scaling": {
        "init_log2_scale": round(math.log2(INIT_SCALE)),
        "growth_interval": GROWTH_INTERVAL,
        "final_log2_scale": round(math.log2(S)),
        "skipped_steps": len(runs["fp16_scaled"]["skipped"]),
        "first_skipped_step": (runs["fp16_scaled"]["skipped"] or [None])[0],
    },
    **fate,
}
summary["fp16_over_fp32_loss"] = (
    summary["final_loss"]["fp16"] / summary["final_loss"]["fp32"]
)
with open("results.json", "w") as f:
    json.dump(summary, f, indent=2)
