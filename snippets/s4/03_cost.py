"""The cost of the two views as the sequence grows, in plain PyTorch.

You will see, for an S4-style layer of H channels with a state of N numbers
each:
* the time of the recurrence (``ssm_scan``: L dependent steps of a matrix-vector
  product);
* the time of the convolution: computing the kernel (``ssm_kernel``, by repeated
  doubling) and convolving with it through the FFT (``fft_conv``), and of the
  FFT convolution alone, which is all that is left when the kernel is reused
  across a batch of sequences;
* how the gap widens with L.

Everything here is PyTorch, so this compares algorithms, not kernels; on a CPU
every timing uses one thread.
"""

# %%
import json
import math

import matplotlib.pyplot as plt
import torch

from kernels.hippo import discretize, fft_conv, hippo_legs, ssm_kernel, ssm_scan
from kernels.bench import time_ms

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LENGTHS = (
    [1024, 2048, 4096, 8192, 16384, 32768]
    if DEVICE == "cuda"
    else [256, 512, 1024, 2048, 4096, 8192]
)
H, N = 16, 64
if DEVICE == "cpu":
    # one core for everyone: the comparison is of algorithms, not of threading
    torch.set_num_threads(1)
WHERE = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU, 1 thread"
generator = torch.Generator().manual_seed(0)
print(f"timing on {WHERE}, float32, H = {H} channels, N = {N}")

# %%
A, B = hippo_legs(N, device=DEVICE)
steps = torch.logspace(-3, -1, H, dtype=torch.float64, device=DEVICE)
# [H, N, N], [H, N]
Ab, Bb = (x.float() for x in discretize(A, B, steps, "bilinear"))
C = (torch.randn(H, N, generator=generator) / math.sqrt(N)).to(DEVICE)


# %% [markdown]
# One sequence of length `L` per channel (`u [1, H, L]`).

# %%
VIEWS = {
    "recurrence (ssm_scan)": lambda u, K: ssm_scan(Ab, Bb, C, u),
    "kernel + FFT convolution": lambda u, K: fft_conv(
        u, ssm_kernel(Ab, Bb, C, u.shape[-1])
    ),
    "kernel only (ssm_kernel)": lambda u, K: ssm_kernel(Ab, Bb, C, u.shape[-1]),
    "FFT convolution only (fft_conv)": lambda u, K: fft_conv(u, K),
}
times = {name: {} for name in VIEWS}
for L in LENGTHS:
    u = torch.randn(1, H, L, generator=generator).to(DEVICE)
    K = ssm_kernel(Ab, Bb, C, L)
    for name, fn in VIEWS.items():
        times[name][L] = time_ms(lambda: fn(u, K))
    print(
        f"L = {L:6d}: "
        + " | ".join(f"{name} {times[name][L]:9.2f} ms" for name in VIEWS),
        flush=True,
    )

scan, conv = times["recurrence (ssm_scan)"], times["kernel + FFT convolution"]
ratio = scan[LENGTHS[-1]] / conv[LENGTHS[-1]]
per_token_us = {L: 1e3 * scan[L] / L for L in LENGTHS}
print(
    f"at L = {LENGTHS[-1]} the recurrence takes {ratio:.1f} times as long as "
    "kernel + convolution; "
    f"it costs {per_token_us[LENGTHS[-1]]:.1f} us per token"
)

# %%
fig, ax = plt.subplots(figsize=(6.8, 4.6))
for (name, points), style in zip(times.items(), ["o-", "s-", "^--", "v:"]):
    ax.plot(LENGTHS, [points[L] for L in LENGTHS], style, ms=4, label=name)
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set(
    title=f"One SSM layer (H = {H}, N = {N}, float32),\n"
    f"PyTorch timed on {WHERE}",
    xlabel="sequence length L (tokens)",
    ylabel="time (ms)",
)
ax.grid(alpha=0.3, which="both")
# below the axes: the curves fill the panel
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
fig.tight_layout()
fig.savefig("cost.svg", facecolor="white")

# %%
with open("cost.md", "w") as f:
    f.write(
        "| L | "
        + " | ".join(f"{name} (ms)" for name in VIEWS)
        + " | recurrence / (kernel + FFT) |\n"
    )
    f.write("|---:|" + "---:|" * len(VIEWS) + "---:|\n")
    for L in LENGTHS:
        f.write(
            f"| {L} | "
            + " | ".join(f"{times[name][L]:.2f}" for name in VIEWS)
            + f" | {scan[L] / conv[L]:.1f} |\n"
        )
with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "where": WHERE,
            "H": H,
            "N": N,
            "max_length": LENGTHS[-1],
            "scan_over_conv_at_max_length": round(ratio, 1),
            "scan_us_per_token_at_max_length": round(
                per_token_us[LENGTHS[-1]], 1
            ),
            "times_ms": times,
        },
        f,
        indent=2,
    )
