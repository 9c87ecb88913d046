"""How much a HiPPO memory of N numbers remembers: reconstruction error against
the state size.

You will see, for a smooth signal and a rough one (a random walk):
* the error of the whole history recalled by LegS after the last sample, for N
  from 2 to 128, with the bilinear rule and with zero-order hold, next to the
  exact projection of the held (piecewise-constant) signal, which zero-order
  hold reproduces;
* the error of LegT's sliding window, recalled over its last window, with both
  rules;
* that for the smooth signal the error falls faster than any power of N until
  the bilinear rule sets a floor (zero-order hold goes on falling), while for
  the rough one it falls like a power of N: how much a polynomial memory needs
  depends on how smooth the history is.
"""

# %%
import json
import math

import matplotlib.pyplot as plt
import torch

from kernels.hippo import (
    discretize,
    hippo_legt,
    legendre_project,
    legendre_reconstruct,
    legs_coefficients,
    ssm_scan,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
L = 8000 if DEVICE == "cuda" else 2000  # samples of each signal on [0, 1]
STATE_SIZES = [2, 4, 8, 16, 32, 64, 128]
THETA = 0.2  # LegT's window
if DEVICE == "cpu":
    # the recurrence is many tiny steps: threads only add overhead
    torch.set_num_threads(1)
F64 = torch.float64
generator = torch.Generator().manual_seed(1)
print(f"{L} samples per signal, N in {STATE_SIZES}, on {DEVICE}")

# %% [markdown]
# Two signals on `[0, 1]`, both scaled to a peak of 1: a sum of sines with up to
# 12 periods (smooth: every derivative exists) and a random walk (continuous,
# but nowhere smooth).

# %%
t = (torch.arange(L, dtype=F64) + 0.5) / L
freqs = 0.5 + 11.5 * torch.rand(12, generator=generator, dtype=F64)
phases = 2 * torch.pi * torch.rand(12, generator=generator, dtype=F64)
smooth = (
    torch.randn(12, generator=generator, dtype=F64)
    * torch.sin(2 * torch.pi * freqs * t[:, None] + phases)
).sum(-1)
rough = torch.randn(L, generator=generator, dtype=F64).cumsum(0)
signals = {
    name: (x / x.abs().max()).to(DEVICE)
    for name, x in [
        ("smooth (sum of sines)", smooth),
        ("rough (random walk)", rough),
    ]
}


def rms(x) -> float:
    return x.pow(2).mean().sqrt().item()


# %% [markdown]
# For every state size: LegS online over the whole signal, with the bilinear
# rule and with zero-order hold, recalled over `[0, 1]`; the exact projection of
# the whole signal; and LegT (step `1 / L`, both rules) recalled over its last
# window `[1 - theta, 1]`, next to the exact projection of that window. The
# projection is the least-squares best for the signal *held* constant over each
# sample; the error below is measured at the samples themselves, where a memory
# can come out slightly ahead of it.

# %%
s_all = (torch.arange(L, dtype=F64, device=DEVICE) + 0.5) / L
window = int(THETA * L)
s_window = (torch.arange(window, dtype=F64, device=DEVICE) + 0.5) / window
KEYS = ("legs", "legs_zoh", "best_all", "legt", "legt_zoh", "best_window")
errors = {name: {key: [] for key in KEYS} for name in signals}
for N in STATE_SIZES:
    legt = {
        method: discretize(
            *hippo_legt(N, theta=THETA, device=DEVICE), 1 / L, method=method
        )
        for method in ("bilinear", "zoh")
    }
    for name, f in signals.items():
        e = errors[name]
        e["legs"].append(
            rms(legendre_reconstruct(legs_coefficients(f, N)[-1], s_all) - f)
        )
        e["legs_zoh"].append(
            rms(
                legendre_reconstruct(
                    legs_coefficients(f, N, method="zoh")[-1], s_all
                )
                - f
            )
        )
        e["best_all"].append(
            rms(legendre_reconstruct(legendre_project(f, N), s_all) - f)
        )
        last = f[-window:]
        for key, (Ab, Bb) in (
            ("legt", legt["bilinear"]),
            ("legt_zoh", legt["zoh"]),
        ):
            _, states = ssm_scan(
                Ab,
                Bb,
                torch.zeros(N, dtype=F64, device=DEVICE),
                f,
                return_states=True,
            )
            e[key].append(
                rms(legendre_reconstruct(states[-1], s_window) - last)
            )
        e["best_window"].append(
            rms(
                legendre_reconstruct(legendre_project(last, N), s_window) - last
            )
        )
    print(
        f"N = {N:3d}: "
        + " | ".join(
            f"{name}: LegS {errors[name]['legs'][-1]:.1e} / ZOH "
            f"{errors[name]['legs_zoh'][-1]:.1e} "
            f"(projection {errors[name]['best_all'][-1]:.1e}), LegT "
            f"{errors[name]['legt'][-1]:.1e} / "
            f"ZOH {errors[name]['legt_zoh'][-1]:.1e} (projection "
            f"{errors[name]['best_window'][-1]:.1e})"
            for name in signals
        ),
        flush=True,
    )

# %%
fig, axes = plt.subplots(
    2, 1, figsize=(6.8, 8.2), sharex=True, sharey=True, layout="constrained"
)
for ax, (name, e) in zip(axes, errors.items()):
    ax.plot(
        STATE_SIZES,
        e["legs"],
        "o-",
        color="C0",
        label="LegS online, bilinear, whole history",
    )
    ax.plot(
        STATE_SIZES,
        e["legs_zoh"],
        "x:",
        color="C2",
        ms=7,
        label="LegS online, zero-order hold",
    )
    ax.plot(
        STATE_SIZES,
        e["best_all"],
        "--",
        color="C0",
        alpha=0.6,
        label="exact projection, whole history",
    )
    ax.plot(
        STATE_SIZES,
        e["legt"],
        "s-",
        color="C1",
        label=f"LegT online, bilinear, last window ({THETA})",
    )
    ax.plot(
        STATE_SIZES,
        e["legt_zoh"],
        "+:",
        color="C3",
        ms=7,
        label="LegT online, zero-order hold",
    )
    ax.plot(
        STATE_SIZES,
        e["best_window"],
        "--",
        color="C1",
        alpha=0.6,
        label="exact projection, last window",
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(title=name, ylabel="RMS error (peak of signal = 1)")
    ax.grid(alpha=0.3, which="both")
axes[-1].set_xlabel("state size N (coefficients)")
fig.legend(
    *axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=2
)
fig.suptitle(
    f"Error of the history recalled after the last of {L} samples,\n"
    "against the state size"
)
fig.savefig("state_size.svg", facecolor="white")

# %%
smooth_e, rough_e = (
    errors["smooth (sum of sines)"],
    errors["rough (random walk)"],
)
at = STATE_SIZES.index(32)
slope = (
    torch.tensor(rough_e["best_all"][-1]).log()
    - torch.tensor(rough_e["best_all"][2]).log()
) / (
    torch.tensor(float(STATE_SIZES[-1])).log()
    - torch.tensor(float(STATE_SIZES[2])).log()
)
print(
    f"random walk: the best error falls like N^{slope.item():.2f} from N = "
    f"{STATE_SIZES[2]} to {STATE_SIZES[-1]}"
)
with open("results.json", "w") as f_out:
    json.dump(
        {
            "L": L,
            "theta": THETA,
            "state_sizes": STATE_SIZES,
            "smooth_legs_error_N8": smooth_e["legs"][STATE_SIZES.index(8)],
            "smooth_legs_error_N32": smooth_e["legs"][at],
            "smooth_best_error_N32": smooth_e["best_all"][at],
            "smooth_legs_error_N128": smooth_e["legs"][-1],
            "smooth_best_error_N128": smooth_e["best_all"][-1],
            "smooth_legt_error_N128": smooth_e["legt"][-1],
            "smooth_legs_zoh_error_N128": smooth_e["legs_zoh"][-1],
            "smooth_legt_zoh_error_N128": smooth_e["legt_zoh"][-1],
            "smooth_legt_error_N32": smooth_e["legt"][at],
            "smooth_best_window_error_N32": smooth_e["best_window"][at],
            "smooth_best_window_error_N128": smooth_e["best_window"][-1],
            # orders of magnitude of the steep fall: LegS from N = 16, LegT from
            # N = 4, to N = 128 (bilinear)
            "smooth_legs_decades_N16_to_N128": round(
                math.log10(smooth_e["legs"][3] / smooth_e["legs"][-1]), 1
            ),
            "smooth_legt_decades_N4_to_N128": round(
                math.log10(smooth_e["legt"][1] / smooth_e["legt"][-1]), 1
            ),
            "rough_legs_error_N32": rough_e["legs"][at],
            "rough_legs_error_N128": rough_e["legs"][-1],
            "rough_best_slope": round(slope.item(), 2),
            "errors": errors,
        },
        f_out,
        indent=2,
    )
