"""Packed sequences in SSD, with mamba_ssm's arguments.

You will see:
* ``ssd(..., seq_idx=..., cu_seqlens=..., return_varlen_states=True)`` on
  sequences concatenated along L gives the outputs of one call per sequence,
  and the state after each sequence, as ``mamba_chunk_scan_combined`` does;
* ``seq_idx`` alone (the ids of the sequences) gives the same outputs.
"""

# %%
import json

import torch

from kernels import ssd, uses_triton
from kernels.bench import max_diff

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
h, p, g, n = 4, 16, 1, 32  # heads, channels per head, groups, state size
lengths = [7, 1, 50, 20] if DEVICE == "cpu" else [700, 1, 5000, 2000]
torch.manual_seed(0)

# %% [markdown]
# Mamba-2's layout: `x [b, L, h, p]`, step sizes `dt [b, L, h]` (float32),
# `A [h]`, `B`, `C [b, L, g, n]`. The packed batch is one row (`b = 1`);
# `cu_seqlens` holds the offsets of the sequences and `seq_idx` the sequence
# of every position, as mamba_ssm's callers pass both.

# %%
cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int32)
L, N = int(cu[-1]), len(lengths)
seq_idx = torch.repeat_interleave(
    torch.arange(N, device=DEVICE, dtype=torch.int32),
    torch.tensor(lengths, device=DEVICE),
)[None]
x = torch.randn(1, L, h, p, device=DEVICE)
dt = torch.randn(1, L, h, device=DEVICE)
A = -torch.rand(h, device=DEVICE)
B, C = (torch.randn(1, L, g, n, device=DEVICE) for _ in range(2))
dt_bias = torch.rand(h, device=DEVICE)
args = dict(D=torch.ones(h, device=DEVICE), dt_bias=dt_bias, dt_softplus=True)
y, states = ssd(
    x,
    dt,
    A,
    B,
    C,
    64,
    seq_idx=seq_idx,
    cu_seqlens=cu,
    return_varlen_states=True,
    **args,
)
path = "Triton kernels" if uses_triton(x) else "PyTorch reference"
print(f"ssd runs linear attention's {path} on {DEVICE}")
print(
    f"{N} sequences of lengths {lengths}: y {tuple(y.shape)}, "
    f"states {tuple(states.shape)}"
)

# %% [markdown]
# The same sequences one call at a time, each from a zero state.

# %%
y_diff = state_diff = 0.0
for i in range(N):
    a, b = int(cu[i]), int(cu[i + 1])
    y_i, final_i = ssd(
        x[:, a:b],
        dt[:, a:b],
        A,
        B[:, a:b],
        C[:, a:b],
        64,
        return_final_states=True,
        **args,
    )
    y_diff = max(y_diff, max_diff(y[:, a:b], y_i))
    state_diff = max(state_diff, max_diff(states[i : i + 1], final_i))
y_ids = ssd(x, dt, A, B, C, 64, seq_idx=seq_idx, **args)
ids_diff = max_diff(y, y_ids)
print(
    f"packed vs one call per sequence, max |diff|: outputs {y_diff:.1e}, "
    f"states {state_diff:.1e}"
)
print(f"cu_seqlens vs seq_idx alone, max |diff| of the outputs: {ids_diff:.1e}")

with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "path": path,
            "lengths": lengths,
            "output_max_abs_diff": y_diff,
            "state_max_abs_diff": state_diff,
            "seq_idx_max_abs_diff": ids_diff,
        },
        f,
        indent=2,
    )
