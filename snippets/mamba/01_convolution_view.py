"""Why selectivity breaks the convolution view of a state space model.

You will see:
* with a step size Δ and matrices B, C that do not change over time, the scan
  equals one causal convolution with the kernel
  ``K_k = sum_n C[n] exp(k Δ A[n]) Δ B[n]``, computed with an FFT;
* with Δ_t, B_t, C_t that change at every token (Mamba's selection), the map
  from inputs to outputs is still linear in u, but its matrix ``W[t, s]``
  depends on t and s separately: no single kernel reproduces it, and the FFT
  route is closed;
* the same matrix, written out, multiplies u to give exactly what
  ``selective_scan`` computes.
"""

# %%
import json

import matplotlib.pyplot as plt
import torch

from kernels import selective_scan
from kernels.bench import max_diff

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# sequence length, state size (one channel)
L, N = (256, 16) if DEVICE == "cuda" else (48, 8)
torch.manual_seed(0)


# %% [markdown]
# One channel (b = 1, d = 1) of a diagonal state space model with N states. `A`
# is negative, so every state decays. First the time-invariant case: one Δ, one
# B and one C for every token.

# %%
A = -torch.linspace(0.2, 2.0, N, device=DEVICE)[None]  # [d = 1, N]
u = torch.randn(1, 1, L, device=DEVICE)  # [b, d, L]
delta_lti = torch.full((1, 1, L), 0.3, device=DEVICE)
# [d, N]: time-invariant
B_lti, C_lti = (
    torch.randn(1, N, device=DEVICE),
    torch.randn(1, N, device=DEVICE),
)
y_scan = selective_scan(u, delta_lti, A, B_lti, C_lti)  # [1, 1, L]

# the convolution kernel K_k = C diag(exp(k Δ A)) Δ B, for lags k = 0 .. L-1
k = torch.arange(L, device=DEVICE, dtype=torch.float32)[:, None]  # [L, 1]
K = (C_lti * torch.exp(k * 0.3 * A) * 0.3 * B_lti).sum(-1)  # [L]
# zero padding: the FFT's circular convolution becomes a causal one
n_fft = 2 * L
y_fft = torch.fft.irfft(
    torch.fft.rfft(u[0, 0], n=n_fft) * torch.fft.rfft(K, n=n_fft), n=n_fft
)[:L]
lti_diff = max_diff(y_fft, y_scan[0, 0])
print(f"time-invariant: scan vs FFT convolution, max |diff| {lti_diff:.1e}")


# %% [markdown]
# Now the selective case. In Mamba, Δ, B and C are computed from the token at
# each position; here they are random tensors standing in for those projections.
# For fixed Δ, B, C the output is still a linear function of `u`:
# `y_t = sum_{s <= t} W[t, s] u_s` with
# `W[t, s] = sum_n C_t[n] exp(A[n] (Δ_{s+1} + ... + Δ_t)) Δ_s B_s[n]`.


# %%
def scan_matrix(delta, A, B, C):
    """The ``[L, L]`` matrix of the scan of one channel: ``y = W u`` (zero above
    the diagonal).

    ``delta [L]``, ``A [N]``, ``B, C [N, L]``.
    """
    cum = torch.cumsum(delta, 0)  # Δ_0 + ... + Δ_t
    seg = cum[:, None] - cum[None, :]  # Δ_{s+1} + ... + Δ_t  [t, s]
    causal = torch.ones(
        len(delta), len(delta), dtype=torch.bool, device=delta.device
    ).tril()
    decay = torch.exp(A[:, None, None] * seg.clamp_min(0)[None])  # [N, t, s]
    W = torch.einsum("nt,nts,ns->ts", C, decay, delta * B)
    return torch.where(causal, W, 0.0)


# Δ_t > 0
delta_sel = torch.nn.functional.softplus(
    torch.randn(1, 1, L, device=DEVICE) - 1
)
# [b, N, L]
B_sel, C_sel = (
    torch.randn(1, N, L, device=DEVICE),
    torch.randn(1, N, L, device=DEVICE),
)
y_sel = selective_scan(u, delta_sel, A, B_sel, C_sel)
W_sel = scan_matrix(delta_sel[0, 0], A[0], B_sel[0], C_sel[0])
W_lti = scan_matrix(
    delta_lti[0, 0],
    A[0],
    B_lti[0, :, None].expand(N, L),
    C_lti[0, :, None].expand(N, L),
)
matrix_diff = max_diff(W_sel @ u[0, 0], y_sel[0, 0])
print(f"selective: W u vs selective_scan, max |diff| {matrix_diff:.1e}")


# %% [markdown]
# A convolution's matrix is Toeplitz: constant along every diagonal,
# `W[t, s] = K[t - s]`. Measure how far each matrix is from that: for every lag,
# the spread of the diagonal's entries, relative to the largest entry of the
# matrix.


# %%
def toeplitz_defect(W) -> float:
    """max over lags of (max - min along the diagonal), over max |W|: 0 for a
    convolution."""
    spread = max(
        (W.diagonal(-lag).max() - W.diagonal(-lag).min()).item()
        for lag in range(W.shape[0])
    )
    return spread / W.abs().max().item()


defects = {
    "time-invariant": toeplitz_defect(W_lti),
    "selective": toeplitz_defect(W_sel),
}
for name, value in defects.items():
    print(
        f"{name:15s} distance from a convolution (Toeplitz defect): {value:.2e}"
    )

# %%
fig, axes = plt.subplots(2, 1, figsize=(6.8, 8.6), layout="constrained")
for ax, W, title in (
    (axes[0], W_lti, r"time-invariant $\Delta$, $B$, $C$: a convolution"),
    (axes[1], W_sel, r"selective $\Delta_t$, $B_t$, $C_t$: no convolution"),
):
    # colours saturate at the largest 1% of entries
    limit = W.abs().flatten().quantile(0.99).item()
    image = ax.imshow(W.cpu(), cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set(title=title, xlabel="input position s", ylabel="output position t")
    fig.colorbar(image, ax=ax, extend="both", label="$W[t, s]$")
fig.suptitle(f"The matrix of one channel's scan (N = {N} states, L = {L})")
fig.savefig("scan_matrices.svg", facecolor="white")

with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "L": L,
            "N": N,
            "lti_scan_vs_fft_max_abs_diff": lti_diff,
            "selective_matrix_vs_scan_max_abs_diff": matrix_diff,
            "toeplitz_defect_lti": defects["time-invariant"],
            "toeplitz_defect_selective": defects["selective"],
        },
        f,
        indent=2,
    )
