"""Packed sequences: one call for a batch of sequences of different lengths.

You will see:
* ``linear_attention(..., cu_seqlens=...)`` on sequences concatenated along T
  gives the outputs and final states of one call per sequence, each from its
  own initial state, an empty sequence included;
* what the kernels compute on: a buffer where every sequence starts at a chunk
  boundary, against a batch padded to the longest sequence.
"""

# %%
import json

import torch

from kernels import linear_attention, uses_triton
from kernels.bench import max_diff

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
H, K, V = 4, 32, 32
lengths = (
    [1, 5, 0, 40, 17, 300] if DEVICE == "cpu" else [1, 5, 0, 4000, 17, 900]
)
torch.manual_seed(0)

# %% [markdown]
# Sequence `i` is positions `cu_seqlens[i]:cu_seqlens[i + 1]` of one row,
# as in flash-attn's `flash_attn_varlen_func`. Initial and final states are
# one per sequence, `[N, H, K, V]`.

# %%
cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int32)
total, N = int(cu[-1]), len(lengths)
q, k = (torch.randn(1, H, total, K, device=DEVICE) for _ in range(2))
v = torch.randn(1, H, total, V, device=DEVICE)
decay = -0.2 * torch.rand(1, H, total, device=DEVICE)  # per token
s0 = torch.randn(N, H, K, V, device=DEVICE)
o, final = linear_attention(
    q,
    k,
    v,
    decay=decay,
    initial_state=s0,
    return_final_state=True,
    cu_seqlens=cu,
)
path = "Triton kernels" if uses_triton(q) else "PyTorch reference"
print(f"linear_attention runs the {path} on {DEVICE}")
print(
    f"{N} sequences of lengths {lengths}: o {tuple(o.shape)}, "
    f"final states {tuple(final.shape)}"
)

# %% [markdown]
# The same sequences one call at a time (an empty sequence has nothing to
# compute: its final state is its initial state). Each sequence is cut into
# the same chunks as in a call of its own, so the two can agree exactly.

# %%
o_diff = state_diff = 0.0
for i in range(N):
    a, b = int(cu[i]), int(cu[i + 1])
    if a == b:
        state_diff = max(state_diff, max_diff(final[i], s0[i]))
        continue
    o_i, final_i = linear_attention(
        q[:, :, a:b],
        k[:, :, a:b],
        v[:, :, a:b],
        decay=decay[:, :, a:b],
        initial_state=s0[i : i + 1],
        return_final_state=True,
    )
    o_diff = max(o_diff, max_diff(o[:, :, a:b], o_i))
    state_diff = max(state_diff, max_diff(final[i : i + 1], final_i))
print(
    f"packed vs one call per sequence, max |diff|: outputs {o_diff:.1e}, "
    f"final states {state_diff:.1e}"
)

# %% [markdown]
# The kernels work on chunks of 64 positions (16 in Triton's interpreter).
# Each sequence starts a new chunk, so at most one chunk per sequence is
# partly empty; padding every sequence to the longest would compute
# `N x max(length)` positions instead.

# %%
chunk = 64
aligned = sum(-(-n // chunk) * chunk for n in lengths)
padded = N * max(lengths)
print(
    f"positions computed: packed {total}, chunk-aligned {aligned}, "
    f"padded to the longest {padded}"
)

with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "path": path,
            "lengths": lengths,
            "output_max_abs_diff": o_diff,
            "state_max_abs_diff": state_diff,
            "total": total,
            "chunk_aligned": aligned,
            "padded": padded,
        },
        f,
        indent=2,
    )
