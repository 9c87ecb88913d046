"""Zero-order hold against the bilinear rule: what each does to a state space
model.

You will see:
* how each rule maps one decaying mode ``dx/dt = -lambda x`` to a factor per
  step: zero-order hold gives the exact ``exp(-step lambda)``, the bilinear rule
  a fraction that is close to it for slow modes and tends to -1 (a mode that
  flips sign every step) for modes much faster than the step;
* the convolution kernels of the HiPPO-LegS SSM at a coarse step next to its
  continuous impulse response ``C exp(A t) B``;
* that the zero-order-hold kernel is the impulse response integrated over each
  step, that the bilinear kernel approximates it with an error that shrinks like
  ``step^2``, and Mamba's shortcut (``exp(step A)`` with ``step B``) like
  ``step``.
"""

# %%
import json
import math

import matplotlib.pyplot as plt
import torch

from kernels.hippo import discretize, hippo_legs, ssm_kernel

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# state size, length of the kernels in time units
N, HORIZON = (64, 4.0) if DEVICE == "cuda" else (16, 4.0)
STEPS = [2.0**-e for e in range(1, 11)]  # 1/2 down to 1/1024
F64 = torch.float64
print(
    f"HiPPO-LegS SSM with N = {N}, kernels over t in [0, {HORIZON}], on "
    f"{DEVICE}"
)

# %% [markdown]
# One mode, `A = -lambda`, `B = 1`, discretised with the step 1: the factor `Ab`
# by which each step multiplies the state, as a function of `step * lambda`.


# %%
def factors(rates):
    """``Ab`` of the mode ``A = -rate``, ``B = 1`` with the step 1, for each
    rule: ``{rule: [P]}``."""
    one = torch.ones(rates.shape[0], 1, dtype=F64, device=DEVICE)
    return {
        method: discretize(-rates[:, None, None], one, 1.0, method)[0][:, 0, 0]
        for method in ("zoh", "bilinear")
    }


rates = torch.logspace(-2, 2.5, 200, dtype=F64, device=DEVICE)  # step * lambda
factor = factors(rates)
marks = torch.tensor([0.1, 1.0, 10.0, 100.0], dtype=F64, device=DEVICE)
marked = factors(marks)
for i, x in enumerate(marks.tolist()):
    print(
        f"step * lambda = {x:6.1f}: zero-order hold "
        f"{marked['zoh'][i].item():+.4f}, "
        f"bilinear {marked['bilinear'][i].item():+.4f}"
    )

# %% [markdown]
# The LegS SSM that S4 starts from, with a fixed random read-out `C`. Its
# continuous impulse response is `h(t) = C exp(A t) B`. Each rule gives a kernel
# `K_k = C Ab^k Bb`; Mamba's shortcut keeps `Ab = exp(step A)` and replaces `Bb`
# by `step B`.

# %%
A, B = hippo_legs(N, device=DEVICE)
C = torch.randn(N, generator=torch.Generator().manual_seed(0), dtype=F64).to(
    DEVICE
) / math.sqrt(N)


def impulse_response(t):
    """``h(t) = C exp(A t) B`` at the times ``t [P]``."""
    return (torch.linalg.matrix_exp(t[:, None, None] * A) @ B) @ C


def kernels(step):
    """The three kernels ``[L]`` over ``[0, HORIZON]`` for one step, divided by
    the step (so that they compare with ``h(t)``)."""
    L = round(HORIZON / step)
    out = {}
    for method in ("zoh", "bilinear"):
        Ab, Bb = discretize(A, B, step, method)
        out[method] = ssm_kernel(Ab, Bb, C, L) / step
    out["mamba"] = (
        ssm_kernel(torch.linalg.matrix_exp(step * A), step * B, C, L) / step
    )
    return out


# %% [markdown]
# The zero-order-hold kernel is exactly the average of `h(t)` over each step
# `[k step, (k+1) step]`: checked here against Simpson's rule on `h` with many
# points per step.

# %%
step = STEPS[0]
coarse = kernels(step)
SUB = 256  # Simpson intervals per step (even)
fine_t = torch.linspace(
    0, HORIZON, SUB * round(HORIZON / step) + 1, dtype=F64, device=DEVICE
)
h = impulse_response(fine_t)
simpson = torch.tensor(
    [1.0] + [4.0, 2.0] * (SUB // 2 - 1) + [4.0, 1.0], dtype=F64, device=DEVICE
) / (3 * SUB)
# [L, SUB + 1]: the points of each step, ends shared
cells = h.unfold(0, SUB + 1, SUB)
cell_average = cells @ simpson  # [L]
zoh_vs_average = (coarse["zoh"] - cell_average).abs().max().item()
print(
    f"step {step}: zero-order-hold kernel vs the average of h over each step, "
    f"max |diff| {zoh_vs_average:.1e}"
)

# %% [markdown]
# As the step shrinks, how far each kernel is from the exact (zero-order-hold)
# one, relative to the kernel's peak.

# %%
errors = {"bilinear": [], "mamba": []}
for step in STEPS:
    k = kernels(step)
    for name in errors:
        errors[name].append(
            ((k[name] - k["zoh"]).abs().max() / k["zoh"].abs().max()).item()
        )
    print(
        f"step {step:.4f}: relative kernel error, bilinear "
        f"{errors['bilinear'][-1]:.1e}, "
        f"Mamba's step * B {errors['mamba'][-1]:.1e}"
    )
slopes = {
    name: math.log(e[-2] / e[-1]) / math.log(STEPS[-2] / STEPS[-1])
    for name, e in errors.items()
}
print(
    f"the error shrinks like step^p with p = {slopes['bilinear']:.2f} "
    f"(bilinear), {slopes['mamba']:.2f} (Mamba)"
)

# %%
fig, axes = plt.subplots(3, 1, figsize=(6.8, 10.4), layout="constrained")
ax = axes[0]
x = rates.cpu().numpy()
ax.plot(
    x,
    factor["zoh"].cpu().numpy(),
    label=r"zero-order hold: $\exp(-\mathrm{step}\,\lambda)$",
)
ax.plot(
    x,
    factor["bilinear"].cpu().numpy(),
    label=r"bilinear: $(1 - \mathrm{step}\,\lambda/2)"
    r" / (1 + \mathrm{step}\,\lambda/2)$",
)
ax.axhline(0, color="k", lw=0.6)
ax.set_xscale("log")
ax.set(
    title=r"One mode $dx/dt = -\lambda x$: factor per step",
    xlabel=r"step $\times\ \lambda$",
    ylabel=r"$\bar{A}$ (multiplier per step)",
)
ax.legend()
ax = axes[1]
step = STEPS[0]
L = round(HORIZON / step)
centres = ((torch.arange(L, dtype=F64) + 0.5) * step).numpy()
ax.plot(
    fine_t.cpu().numpy(),
    h.cpu().numpy(),
    color="0.6",
    lw=1.5,
    label="continuous $h(t) = C e^{At} B$",
)
ax.plot(
    centres, coarse["zoh"].cpu().numpy(), "o", ms=4, label="zero-order hold"
)
ax.plot(
    centres,
    coarse["bilinear"].cpu().numpy(),
    "s",
    ms=4,
    mfc="none",
    label="bilinear",
)
ax.plot(
    centres - step / 2,
    coarse["mamba"].cpu().numpy(),
    "^",
    ms=4,
    mfc="none",
    label=r"Mamba: $\exp(\mathrm{step}\,A)$, $\mathrm{step}\,B$",
)
ax.set(
    title=f"LegS SSM (N = {N}): kernels $K_k$ / step at step {step}",
    xlabel="time t (step centres; Mamba: step starts)",
    ylabel="impulse response",
)
ax.legend()
ax = axes[2]
ax.loglog(
    STEPS,
    errors["bilinear"],
    "s-",
    label=f"bilinear (slope {slopes['bilinear']:.2f})",
)
ax.loglog(
    STEPS,
    errors["mamba"],
    "^-",
    label=f"Mamba's step B (slope {slopes['mamba']:.2f})",
)
ax.set(
    title="Kernel error against the exact (ZOH) kernel",
    xlabel="step",
    ylabel=r"$\max|K - K_\mathrm{zoh}| \,/\, \max|K_\mathrm{zoh}|$",
)
ax.grid(alpha=0.3, which="both")
ax.legend()
for ax in axes[:2]:
    ax.grid(alpha=0.3)
fig.savefig("discretisation.svg", facecolor="white")

with open("results.json", "w") as f:
    json.dump(
        {
            "N": N,
            "horizon": HORIZON,
            "steps": STEPS,
            "bilinear_factor_at_10": round(marked["bilinear"][2].item(), 3),
            "bilinear_factor_at_100": round(marked["bilinear"][3].item(), 3),
            "zoh_factor_at_10": float(f"{marked['zoh'][2].item():.2e}"),
            "zoh_vs_cell_average_max_abs_diff": zoh_vs_average,
            "bilinear_slope": round(slopes["bilinear"], 2),
            "mamba_slope": round(slopes["mamba"], 2),
            "bilinear_error_at_finest": errors["bilinear"][-1],
            "mamba_error_at_finest": errors["mamba"][-1],
            "finest_step": STEPS[-1],
            "errors": errors,
        },
        f,
        indent=2,
    )
