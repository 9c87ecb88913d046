"""Linear attention three ways: the quadratic form, the recurrence and the
chunk-wise kernel.

You will see:
* associativity: ``(Q K^T) V`` and ``Q (K^T V)`` are the same matrix, for very
  different costs;
* the masked quadratic form, the token-by-token recurrence and
  ``linear_attention`` (the chunk-wise Triton kernel) give the same outputs,
  with and without a per-head decay, at a length that is not a multiple of the
  chunk;
* the kernel's gradients equal autograd's through the quadratic form;
* the "Transformers are RNNs" normaliser (a column of ones appended to ``v``)
  equals the explicitly row-normalised attention weights;
* decoding: a prompt in one call, then one token at a time with
  ``linear_attention_step``, reproduces a single call over the whole sequence.
"""

# %%
import json

import torch

from kernels import linear_attention, linear_attention_step, uses_triton
from kernels.linear_attention import (
    elu_plus_one,
    linear_attention_quadratic,
    linear_attention_recurrent,
)
from kernels.bench import max_diff

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B, H, T, K, V = (
    (2, 8, 1000, 64, 128) if DEVICE == "cuda" else (2, 3, 100, 32, 48)
)
torch.manual_seed(0)


# %% [markdown]
# Without a causal mask, linear attention is two matrix products, and the order
# in which they are done is ours to choose. Left to right builds the `[T, T]`
# matrix `Q K^T`; right to left builds the `[K, V]` matrix `K^T V` and never
# touches a `T x T` object.

# %%
q, k, v = (
    torch.randn(B, H, T, d, dtype=torch.float64, device=DEVICE)
    for d in (K, K, V)
)
# [B, H, T, T] first: 2 T^2 K + 2 T^2 V FLOPs per head
left = (q @ k.transpose(-1, -2)) @ v
# [B, H, K, V] first: 2 T K V + 2 T K V FLOPs per head
right = q @ (k.transpose(-1, -2) @ v)
associativity_diff = max_diff(left, right)
print(f"(Q K^T) V vs Q (K^T V), max |diff| {associativity_diff:.1e}")
print(
    f"FLOPs per head at T = {T}: (Q K^T) V {2 * T * T * (K + V):,}, Q (K^T V) "
    f"{4 * T * K * V:,}"
)

# %% [markdown]
# The causal form, with positive features `elu(x) + 1` and RetNet's per-head
# decays `gamma_h = 1 - 2^(-5-h)` (passed as log-decays). The quadratic form and
# the recurrence are computed in float64; the kernel runs in float32.

# %%
phi_q, phi_k = elu_plus_one(q), elu_plus_one(k)
retnet_decay = torch.log(
    1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float64, device=DEVICE))
)
path = (
    "chunk-wise Triton kernel"
    if uses_triton(phi_q.float())
    else "PyTorch reference (TRITON_INTERPRET unset)"
)
print(f"linear_attention runs the {path} on {DEVICE}")
print("max |diff| from the float64 quadratic form:")
forms = {}
for name, decay in {"no decay": None, "RetNet decay": retnet_decay}.items():
    o_quadratic, _ = linear_attention_quadratic(phi_q, phi_k, v, decay=decay)
    o_recurrent, _ = linear_attention_recurrent(phi_q, phi_k, v, decay=decay)
    o_kernel = linear_attention(
        phi_q.float(),
        phi_k.float(),
        v.float(),
        decay=None if decay is None else decay.float(),
    )
    forms[name] = {
        "quadratic_vs_recurrent": max_diff(o_quadratic, o_recurrent),
        "kernel_vs_quadratic": max_diff(o_kernel, o_quadratic),
        "largest_output": o_quadratic.abs().max().item(),
    }
    print(
        f"  {name:12s}  recurrence "
        f"{forms[name]['quadratic_vs_recurrent']:.1e}   "
        f"linear_attention (float32) {forms[name]['kernel_vs_quadratic']:.1e}"
    )
print(
    "  (largest |o|: "
    f"{max(form['largest_output'] for form in forms.values()):.1f})"
)

# %% [markdown]
# Gradients: the same upstream gradient `do` through the kernel (its backward is
# two more kinds of sweep over the chunks) and through autograd of the float64
# quadratic form.

# %%
inputs = [x.float().requires_grad_() for x in (phi_q, phi_k, v)]
inputs64 = [x.detach().clone().requires_grad_() for x in (phi_q, phi_k, v)]
do = torch.randn(B, H, T, V, dtype=torch.float64, device=DEVICE)
(
    linear_attention(*inputs, decay=retnet_decay.float()) * do.float()
).sum().backward()
(
    linear_attention_quadratic(*inputs64, decay=retnet_decay)[0] * do
).sum().backward()
gradient_diff = max(
    max_diff(x.grad, x64.grad) for x, x64 in zip(inputs, inputs64)
)
print(
    "gradients (dq, dk, dv) vs autograd of the quadratic form, max |diff| "
    f"{gradient_diff:.1e}"
)

# %% [markdown]
# The normaliser of "Transformers are RNNs": each output divided by the sum of
# its (decayed) weights. Written out, those weights are a `[T, T]` matrix whose
# rows are normalised to one.

# %%
# t - s
lag = (
    torch.arange(T, device=DEVICE)[:, None]
    - torch.arange(T, device=DEVICE)[None, :]
)
# [H, T, T]
D = torch.where(
    lag >= 0, torch.exp(retnet_decay[:, None, None] * lag.clamp_min(0)), 0.0
)
# the scale cancels in the ratio
weights = (phi_q @ phi_k.transpose(-1, -2)) * D
explicit = (weights / weights.sum(-1, keepdim=True)) @ v
normalized = linear_attention(
    phi_q.float(),
    phi_k.float(),
    v.float(),
    decay=retnet_decay.float(),
    normalize=True,
)
normalizer_diff = max_diff(normalized, explicit)
print(
    "normalize=True vs row-normalised weights, max |diff| "
    f"{normalizer_diff:.1e}"
)

# %% [markdown]
# Decoding. A prompt of `T - 20` tokens goes through one call that also returns
# the state; the last 20 tokens follow one at a time, each a single
# `linear_attention_step` from the state.

# %%
q32, k32, v32, decay32 = (
    phi_q.float(),
    phi_k.float(),
    v.float(),
    retnet_decay.float(),
)
prompt = T - 20
outputs, state = linear_attention(
    q32[:, :, :prompt],
    k32[:, :, :prompt],
    v32[:, :, :prompt],
    decay=decay32,
    return_final_state=True,
)
outputs = [outputs]
for t in range(prompt, T):
    o_t, state = linear_attention_step(
        q32[:, :, t], k32[:, :, t], v32[:, :, t], state, decay=decay32
    )
    outputs.append(o_t[:, :, None])  # [B, H, 1, V]
whole, final = linear_attention(
    q32, k32, v32, decay=decay32, return_final_state=True
)
decode_diff = max_diff(torch.cat(outputs, dim=2), whole)
state_diff = max_diff(state, final)
print(
    f"prompt + {T - prompt} steps vs one call, max |diff|: outputs "
    f"{decode_diff:.1e}, states {state_diff:.1e}"
)
print(
    f"numbers kept per head: state K x V = {K * V}, cache of T tokens T x (K "
    f"+ V) = {T * (K + V)}"
)

with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "kernel_path": path,
            "T": T,
            "K": K,
            "V": V,
            "associativity_max_abs_diff": associativity_diff,
            "quadratic_vs_recurrent_max_abs_diff": max(
                form["quadratic_vs_recurrent"] for form in forms.values()
            ),
            "kernel_vs_quadratic_max_abs_diff": max(
                form["kernel_vs_quadratic"] for form in forms.values()
            ),
            "largest_output": max(
                form["largest_output"] for form in forms.values()
            ),
            "gradient_max_abs_diff": gradient_diff,
            "normalizer_max_abs_diff": normalizer_diff,
            "decode_max_abs_diff": decode_diff,
            "decode_state_max_abs_diff": state_diff,
            "forms": forms,
        },
        f,
        indent=2,
    )
