"""HiPPO's memory at work: a signal read once, sample by sample, and recalled
from N numbers.

You will see:
* the LegS and LegT matrices for a small state, with the structure the
  derivation predicts;
* that the LegS recurrence, discretised by zero-order hold, computes the exact
  projection of the history onto Legendre polynomials (the ODE is the
  projection, not an approximation of it), and that the bilinear rule comes
  close;
* the classic picture: at several moments, the whole history remembered by LegS
  (squeezed into a window that keeps growing) and the last stretch of it
  remembered by LegT (a sliding window), each reconstructed from the N
  coefficients held at that moment.
"""

# %%
import json

import matplotlib.pyplot as plt
import torch

from kernels.hippo import (
    discretize,
    hippo_legs,
    hippo_legt,
    legendre_project,
    legendre_reconstruct,
    legs_coefficients,
    ssm_scan,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# samples of the signal on [0, 1], state size
L, N = (8000, 32) if DEVICE == "cuda" else (2000, 32)
THETA = 0.2  # LegT's window, as a fraction of the whole signal
MOMENTS = [0.25, 0.5, 0.75, 1.0]  # when we ask the memory what it holds
if DEVICE == "cpu":
    # the recurrence is many tiny steps: threads only add overhead
    torch.set_num_threads(1)
F64 = torch.float64
print(
    f"{L} samples, state of N = {N} numbers, LegT window theta = {THETA}, on "
    f"{DEVICE}"
)

# %% [markdown]
# The matrices for `N = 4`. LegS is lower triangular with `-(n+1)` on the
# diagonal: coefficient `n` only listens to the lower ones. LegT is full, and
# scaled by `1 / theta`.

# %%
torch.set_printoptions(precision=3, sci_mode=False)
A, B = hippo_legs(4)
print("LegS  A =\n", A, "\n      B =", B)
A, B = hippo_legt(4, theta=1.0)
print("LegT  A =\n", A, "\n      B =", B)

# %% [markdown]
# A test signal: a sum of sines with random frequencies (up to 12 periods over
# the signal), sampled `L` times on `[0, 1]`. Sample `k` stands for the interval
# `[k, k+1)` of the memory's clock, so time `t` in `[0, 1]` is `t L` steps.

# %%
generator = torch.Generator().manual_seed(0)
# the middle of each sample's interval
t = (torch.arange(L, dtype=F64) + 0.5) / L
freqs = 0.5 + 11.5 * torch.rand(12, generator=generator, dtype=F64)
phases = 2 * torch.pi * torch.rand(12, generator=generator, dtype=F64)
amps = torch.randn(12, generator=generator, dtype=F64) / freqs.sqrt()
f = (amps * torch.sin(2 * torch.pi * freqs * t[:, None] + phases)).sum(-1)
f = (f / f.abs().max()).to(DEVICE)  # [L], peak 1

# %% [markdown]
# The derivation, checked: with zero-order hold the LegS recurrence is exact for
# a signal held constant over each sample, so after every prefix its state must
# equal the projection of that prefix, computed directly from integrals of the
# Legendre polynomials.

# %%
prefix = L // 8
# [prefix, N]
exact = torch.stack([legendre_project(f[: k + 1], N) for k in range(prefix)])
zoh = legs_coefficients(f[:prefix], N, method="zoh")
bilinear = legs_coefficients(f[:prefix], N, method="bilinear")
zoh_diff = (zoh - exact).abs().max().item()
bilinear_diff = (bilinear - exact).abs().max().item()
print(
    f"first {prefix} prefixes, max |coefficient - projection|:\n"
    f"  zero-order hold {zoh_diff:.1e}, "
    f"bilinear {bilinear_diff:.1e}"
)

# %% [markdown]
# The memory in action. LegS runs over the whole signal once (bilinear rule, as
# in HiPPO); LegT is a time-invariant SSM, discretised once with the step
# `1 / L` and run as a recurrence. At each moment we reconstruct what the state
# remembers: LegS the whole history `[0, t]`, LegT the window `[t - theta, t]`.

# %%
legs = legs_coefficients(f, N)  # [L, N]: the state after every sample
A, B = hippo_legt(N, theta=THETA, device=DEVICE)
Ab, Bb = discretize(A, B, 1 / L, method="bilinear")
# [L, N]
_, legt = ssm_scan(
    Ab, Bb, torch.zeros(N, dtype=F64, device=DEVICE), f, return_states=True
)

window = int(THETA * L)
recalled, errors = {}, {"legs": {}, "legt": {}}
for moment in MOMENTS:
    k = int(moment * L) - 1  # the last sample seen
    # its history, as positions in [0, 1]
    s = (torch.arange(k + 1, dtype=F64, device=DEVICE) + 0.5) / (k + 1)
    legs_rec = legendre_reconstruct(legs[k], s)
    start = max(0, k + 1 - window)
    s_window = (
        torch.arange(start, k + 1, dtype=F64, device=DEVICE)
        + 0.5
        - (k + 1 - window)
    ) / window
    legt_rec = legendre_reconstruct(legt[k], s_window)
    recalled[moment] = (legs_rec, start, legt_rec)
    errors["legs"][moment] = (legs_rec - f[: k + 1]).pow(2).mean().sqrt().item()
    errors["legt"][moment] = (
        (legt_rec - f[start : k + 1]).pow(2).mean().sqrt().item()
    )
    print(
        f"t = {moment:.2f}: RMS error of the recalled history,\n"
        f"  LegS {errors['legs'][moment]:.1e} over [0, t], "
        f"LegT {errors['legt'][moment]:.1e} over the window"
    )

# %%
# One row per moment: LegS on the left, LegT on the right.
fig, axes = plt.subplots(
    len(MOMENTS),
    2,
    figsize=(6.8, 1.2 + 2.0 * len(MOMENTS)),
    sharex=True,
    sharey=True,
    layout="constrained",
)
tc, fc = t.numpy(), f.cpu().numpy()
for j, moment in enumerate(MOMENTS):
    k = int(moment * L) - 1
    legs_rec, start, legt_rec = recalled[moment]
    for row, (rec, lo, name) in enumerate(
        [(legs_rec, 0, "LegS"), (legt_rec, start, "LegT")]
    ):
        ax = axes[j][row]
        ax.plot(tc, fc, color="0.75", lw=1, label="signal")
        ax.plot(
            tc[lo : k + 1],
            rec.cpu().numpy(),
            color="C0" if row == 0 else "C1",
            lw=1.5,
            label=f"{name} reconstruction",
        )
        ax.axvline(moment, color="k", lw=0.8, ls=":")
        ax.set_title(f"{name}, at t = {moment:.2f}")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        if j == len(MOMENTS) - 1:
            ax.set_xlabel("time t (fraction of the signal)")
        if row == 0:
            ax.set_ylabel("signal value")
handles = dict(zip(*reversed(axes[0][0].get_legend_handles_labels())))
handles.update(zip(*reversed(axes[0][1].get_legend_handles_labels())))
fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=3)
fig.suptitle(
    f"What N = {N} HiPPO coefficients remember at four moments:\n"
    f"LegS (whole history) and LegT (window of {THETA})"
)
fig.savefig("online_memory.svg", facecolor="white")

with open("results.json", "w") as f_out:
    json.dump(
        {
            "L": L,
            "N": N,
            "theta": THETA,
            "prefixes_checked": prefix,
            "zoh_vs_projection_max_abs_diff": zoh_diff,
            "bilinear_vs_projection_max_abs_diff": bilinear_diff,
            "legs_rms_error_at_end": errors["legs"][1.0],
            "legt_rms_error_at_end": errors["legt"][1.0],
            "legs_rms_error_at_quarter": errors["legs"][0.25],
            "errors": {
                name: {str(m): e for m, e in v.items()}
                for name, v in errors.items()
            },
        },
        f_out,
        indent=2,
    )
