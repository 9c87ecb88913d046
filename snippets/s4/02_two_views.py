"""One SSM layer, two computations: the recurrence (an RNN) and the long
convolution (a CNN).

You will see:
* an S4-style layer: H channels, each its own copy of the HiPPO-LegS SSM with
  its own step and read-out, computed token by token by ``ssm_scan`` and all at
  once by ``fft_conv`` with the kernel ``K_k = C Ab^k Bb`` from ``ssm_kernel``:
  the same outputs, in float64 and in float32;
* the kernels of channels with different steps: the step sets how far back a
  channel looks;
* the S4 view and Mamba's view agree when nothing is selective: a diagonal SSM
  discretised by zero-order hold, as a convolution, equals
  ``kernels.selective_scan`` with a constant step and time-invariant B and C.
"""

# %%
import json
import math

import matplotlib.pyplot as plt
import torch

from kernels import selective_scan, uses_triton
from kernels.hippo import discretize, fft_conv, hippo_legs, ssm_kernel, ssm_scan

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH, H, N, L = (4, 64, 64, 4096) if DEVICE == "cuda" else (2, 8, 64, 1000)
F64 = torch.float64
generator = torch.Generator().manual_seed(0)
print(f"batch {BATCH}, H = {H} channels, N = {N}, L = {L}, on {DEVICE}")

# %% [markdown]
# The layer's parameters, as S4 initialises them: `A` and `B` from HiPPO-LegS
# (shared), a step per channel drawn log-uniformly between 0.001 and 0.1, and a
# random read-out `C` per channel. Each channel is discretised with the bilinear
# rule, S4's choice.

# %%
A, B = hippo_legs(N, device=DEVICE)
steps = torch.exp(
    torch.empty(H, dtype=F64).uniform_(
        math.log(1e-3), math.log(1e-1), generator=generator
    )
).to(DEVICE)
C = (torch.randn(H, N, generator=generator, dtype=F64) / math.sqrt(N)).to(
    DEVICE
)
Ab, Bb = discretize(A, B, steps, "bilinear")  # [H, N, N], [H, N]
# [batch, H, L]
u = torch.randn(BATCH, H, L, generator=generator, dtype=F64).to(DEVICE)

# %% [markdown]
# The RNN view runs `L` dependent steps; the CNN view computes the kernel once
# per channel and convolves every sequence with it through the FFT. Then the
# same in float32, against float64.

# %%
y_scan = ssm_scan(Ab, Bb, C, u)  # [batch, H, L]
K = ssm_kernel(Ab, Bb, C, L)  # [H, L]
y_conv = fft_conv(u, K)
scale = y_scan.abs().max().item()
diff64 = (y_scan - y_conv).abs().max().item()
y_scan32 = ssm_scan(Ab.float(), Bb.float(), C.float(), u.float())
y_conv32 = fft_conv(u.float(), ssm_kernel(Ab.float(), Bb.float(), C.float(), L))
diff32_scan = (y_scan32.double() - y_scan).abs().max().item()
diff32_conv = (y_conv32.double() - y_scan).abs().max().item()
print(
    f"largest |y| {scale:.2f}; recurrence vs convolution, float64: max |diff| "
    f"{diff64:.1e}"
)
print(
    f"float32 against float64: recurrence {diff32_scan:.1e}, convolution "
    f"{diff32_conv:.1e}"
)

# %%
fig, ax = plt.subplots(figsize=(6.8, 4.4))
order = torch.argsort(steps)
for h in order[torch.linspace(0, H - 1, 4).long()].tolist():
    ax.plot(
        range(1, L + 1),
        K[h].abs().cpu().numpy(),
        lw=1,
        label=f"channel {h}, step {steps[h].item():.4f}",
    )
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_ylim(bottom=1e-8)
ax.set(
    title=f"Kernels $|K_k|$ of four channels (HiPPO-LegS, N = {N}, bilinear)",
    xlabel="lag k + 1 (tokens)",
    ylabel="$|K_k|$",
)
ax.grid(alpha=0.3, which="both")
ax.legend()
fig.tight_layout()
fig.savefig("kernels.svg", facecolor="white")

# %% [markdown]
# Mamba's selective scan with nothing selective. Mamba discretises `A` by
# zero-order hold but takes `step * B` for the input
# (`x_t = exp(step A) x_{t-1} + step B u_t`), so to run the exact
# zero-order-hold SSM through it we hand it the ZOH input matrix divided by the
# step. `A` is diagonal (S4D-Real: `-(n+1)`, the diagonal of LegS), one step per
# channel. The scan runs in float32.

# %%
b, d, n, Ls = (2, 64, 16, 2048) if DEVICE == "cuda" else (1, 4, 16, 128)
# [d, n]: the diagonal of A per channel
a = -(torch.arange(n, dtype=F64) + 1).expand(d, n).to(DEVICE)
B_d = torch.ones(d, n, dtype=F64, device=DEVICE)
C_d = (torch.randn(d, n, generator=generator, dtype=F64) / math.sqrt(n)).to(
    DEVICE
)
step_d = torch.logspace(-3, -1, d, dtype=F64, device=DEVICE)  # [d]
u_d = torch.randn(b, d, Ls, generator=generator, dtype=F64).to(DEVICE)
# [d, n, n], [d, n]
Ab_d, Bb_d = discretize(torch.diag_embed(a), B_d, step_d, "zoh")
y_s4 = fft_conv(u_d, ssm_kernel(Ab_d, Bb_d, C_d, Ls))  # [b, d, Ls]
delta = step_d[None, :, None].expand(b, d, Ls).float().contiguous()
u32 = u_d.float()
where = " in Triton's interpreter" if DEVICE == "cpu" else ""
path = (
    f"Triton kernel{where}"
    if uses_triton(u32)
    else "sequential PyTorch reference"
)
y_mamba = selective_scan(
    u32, delta, a.float(), (Bb_d / step_d[:, None]).float(), C_d.float()
)
mamba_diff = (y_mamba.double() - y_s4).abs().max().item()
print(
    f"selective_scan ({path})\n"
    "  vs the S4 convolution, float32 vs float64:\n"
    f"  max |diff| {mamba_diff:.1e} (largest |y| {y_s4.abs().max().item():.2f})"
)

with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "batch": BATCH,
            "H": H,
            "N": N,
            "L": L,
            "largest_output": round(scale, 2),
            "scan_vs_conv_float64_max_abs_diff": diff64,
            "scan_float32_max_abs_diff": diff32_scan,
            "conv_float32_max_abs_diff": diff32_conv,
            "selective_scan_path": path,
            "selective_scan_vs_s4_max_abs_diff": mamba_diff,
            "selective_scan_L": Ls,
        },
        f,
        indent=2,
    )
