"""The chunked SSD algorithm in PyTorch, and what each form of SSD costs.

You will see:
* SSD computed chunk by chunk: inside each chunk the quadratic, attention-like
  form (the diagonal blocks of ``M ∘ (C B^T)``); between chunks, states of n x p
  numbers that carry the past (the blocks below the diagonal, which have rank at
  most n). It matches ``ssd_ref`` for chunk sizes that do and do not divide the
  length;
* the FLOPs per head and token of the quadratic form, the recurrence and the
  chunked form for Mamba-2's sizes, how many of them are matrix products (the
  work tensor cores do), and how many steps must run one after the other.
"""

# %%
import json

import torch
import torch.nn.functional as F

from kernels.ssd import ssd_ref
from kernels.bench import max_diff

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
b, L, h, p, n = (2, 2000, 4, 64, 64) if DEVICE == "cuda" else (1, 100, 2, 8, 8)
torch.manual_seed(0)


# %% [markdown]
# The algorithm, for one group (B and C shared by all heads), in float64. Per
# chunk of Q tokens, with `a` the log-decays `dt A` and `cum` their running sum
# inside the chunk:
#
# 1. diagonal block: `Y_diag = (M_chunk ∘ C B^T) (dt x)`, a Q x Q masked
#    product;
# 2. the chunk's own contribution to the state:
#    `S_chunk = B^T (exp(cum_end - cum) dt x)`;
# 3. state passing, the only sequential step:
#    `S = exp(cum_end) S_prev + S_chunk`;
# 4. the past seen by the chunk: `Y_off = exp(cum) (C S_prev)`.


# %%
def ssd_chunked(x, dt, A, B, C, chunk):
    """``y [b, L, h, p]`` for ``x [b, L, h, p]``, ``dt [b, L, h]`` (after
    softplus), ``A [h]``, ``B, C [b, L, n]`` (one group)."""
    b, L, h, p = x.shape
    # padded tokens have dt = 0 (no decay, no input) and are dropped at the end
    pad = -L % chunk
    x, dt, B, C = (
        F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C)
    )
    nc = x.shape[1] // chunk
    x, dt = x.reshape(b, nc, chunk, h, p), dt.reshape(b, nc, chunk, h)
    # [b, nc, Q, n]
    B, C = (
        B.reshape(b, nc, chunk, -1),
        C.reshape(b, nc, chunk, -1),
    )
    v = x * dt[..., None]  # dt x
    # [b, nc, Q, h]: log-decay from the chunk's start to each token
    cum = torch.cumsum(dt * A, dim=2)
    seg = cum[:, :, :, None] - cum[:, :, None, :]  # [b, nc, Q(t), Q(s), h]
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).tril()[
        :, :, None
    ]
    M = torch.exp(seg.masked_fill(~causal, float("-inf")))
    y_diag = torch.einsum("bctn,bcsn,bctsh,bcshp->bcthp", C, B, M, v)  # 1.
    to_end = torch.exp(cum[:, :, -1:] - cum)  # [b, nc, Q, h]
    # 2. [b, nc, h, n, p]
    S_chunk = torch.einsum("bcsn,bcsh,bcshp->bchnp", B, to_end, v)
    S, states = torch.zeros_like(S_chunk[:, 0]), []
    for c in range(nc):  # 3. nc sequential steps
        states.append(S)
        S = torch.exp(cum[:, c, -1])[..., None, None] * S + S_chunk[:, c]
    # the state entering each chunk [b, nc, h, n, p]
    S_prev = torch.stack(states, dim=1)
    # 4.
    y_off = torch.einsum("bctn,bcth,bchnp->bcthp", C, torch.exp(cum), S_prev)
    return (y_diag + y_off).reshape(b, nc * chunk, h, p)[:, :L]


x = torch.randn(b, L, h, p, dtype=torch.float64, device=DEVICE)
dt = F.softplus(torch.randn(b, L, h, dtype=torch.float64, device=DEVICE) - 1)
A = -torch.rand(h, dtype=torch.float64, device=DEVICE) - 0.5
B, C = (
    torch.randn(b, L, 1, n, dtype=torch.float64, device=DEVICE)
    for _ in range(2)
)
y_ref = ssd_ref(x, dt, A, B, C)
chunk_diffs = {
    chunk: max_diff(ssd_chunked(x, dt, A, B[:, :, 0], C[:, :, 0], chunk), y_ref)
    for chunk in (16, 25, 64)
    if chunk < L
}
for chunk, value in chunk_diffs.items():
    print(
        f"chunk {chunk:3d} "
        f"({'divides' if L % chunk == 0 else 'does not divide'} L = {L}): "
        f"max |diff| from ssd_ref {value:.1e}"
    )


# %% [markdown]
# FLOPs per head and per token, at Mamba-2's sizes (state n = 128, head dim p =
# 64, T = 4096 tokens). A multiply-add counts 2.
#
# * quadratic: `C B^T` (2 T n per token), the mask (T), times `dt x` (2 T p):
#   grows with T;
# * recurrence: `S = a S + B^T (dt x)` (3 n p) and `y = C S` (2 n p) per token,
#   none of it a matrix product, and T steps one after the other;
# * chunked with chunks of Q: `2 Q (n + p) + Q` for the diagonal blocks, `4 n p`
#   for the two state products, `2 n p / Q` for passing the state; T / Q
#   sequential steps.


# %%
def costs(T, n, p, chunk):
    """For one head: ``{form: (FLOPs per token, of which in matrix products,
    sequential steps)}``."""
    return {
        "quadratic (attention-like)": (2 * T * (n + p) + T, 2 * T * (n + p), 1),
        "recurrence (scan)": (5 * n * p, 0, T),
        f"chunked, Q = {chunk}": (
            2 * chunk * (n + p) + chunk + 4 * n * p + 2 * n * p / chunk,
            2 * chunk * (n + p) + 4 * n * p,
            T // chunk,
        ),
    }


T_COST, N_COST, P_COST = 4096, 128, 64
table = {}
for chunk in (64, 128, 256):
    table.update(costs(T_COST, N_COST, P_COST, chunk))
with open("cost.md", "w") as f:
    f.write(
        "| form | FLOPs per token and head | in matrix products | sequential "
        "steps |\n|---|---:|---:|---:|\n"
    )
    for form, (flops, matmul, steps) in table.items():
        f.write(
            f"| {form} | {flops:,.0f} | {matmul / flops:.1%} | {steps:,} |\n"
        )
    f.write(
        f"\nOne head, state n = {N_COST}, head dim p = {P_COST}, T = {T_COST} "
        "tokens.\n"
    )
print(open("cost.md").read())

chunked_256 = table["chunked, Q = 256"]
with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "L": L,
            "n": n,
            "p": p,
            "chunked_max_abs_diff": max(chunk_diffs.values()),
            "chunk_diffs": {str(c): v for c, v in chunk_diffs.items()},
            "cost_T": T_COST,
            "cost_n": N_COST,
            "cost_p": P_COST,
            "recurrence_flops": table["recurrence (scan)"][0],
            "chunked256_flops": chunked_256[0],
            "chunked256_over_recurrence": chunked_256[0]
            / table["recurrence (scan)"][0],
            "chunked256_matmul_percent": 100 * chunked_256[1] / chunked_256[0],
            "quadratic_flops": table["quadratic (attention-like)"][0],
        },
        f,
        indent=2,
    )
