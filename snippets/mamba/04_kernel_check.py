"""The selective scan kernel against the sequential reference.

You will see ``selective_scan`` (the chunked Triton scan) compared with
``selective_scan_ref`` (one token at a time, in PyTorch) with every option Mamba
uses switched on (skip connection D, gate z, Δ bias and softplus,
input-dependent B and C in two groups), at lengths that are not multiples of the
kernel's chunk:
* the outputs and the last states;
* the gradients of all eight tensor inputs for the same upstream gradient;
* the same with a time-invariant B and C (the S4 case);
* decoding: a prompt in one call, then one token at a time with
  ``selective_scan_step`` (one fused kernel per token, which updates the state
  in place).
"""

# %%
import json

import torch

from kernels import selective_scan, selective_scan_step, uses_triton
from kernels.selective_scan import selective_scan_ref
from kernels.bench import max_diff

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
b, d, n, LENGTHS = (
    (2, 64, 16, [1, 31, 129, 1000])
    if DEVICE == "cuda"
    else (1, 8, 8, [1, 31, 61])
)
torch.manual_seed(0)


def make_inputs(L, groups=2, time_invariant=False):
    """Random inputs in Mamba's layout, float32, every one requiring a
    gradient."""
    u, delta, z = (torch.randn(b, d, L, device=DEVICE) for _ in range(3))
    A = -torch.rand(d, n, device=DEVICE) - 0.5  # negative: a stable system
    shape = (d, n) if time_invariant else (b, groups, n, L)
    B, C = torch.randn(shape, device=DEVICE), torch.randn(shape, device=DEVICE)
    D, delta_bias = (
        torch.randn(d, device=DEVICE),
        torch.randn(d, device=DEVICE) * 0.5,
    )
    return [x.requires_grad_() for x in (u, delta, A, B, C, D, z, delta_bias)]


NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
if uses_triton(torch.empty(1, device=DEVICE)):
    path = (
        "Triton kernel"
        if DEVICE == "cuda"
        else "Triton kernel, in Triton's interpreter"
    )
else:
    path = "PyTorch reference (TRITON_INTERPRET unset)"
print(f"selective_scan runs the {path} on {DEVICE}")


# %% [markdown]
# Forward and backward of both, for the same inputs and the same upstream
# gradients of the output and of the last state, in float32. The inputs are of
# order one.


# %%
def compare(L, **kind):
    inputs = make_inputs(L, **kind)
    dout, dlast = (
        torch.randn(b, d, L, device=DEVICE),
        torch.randn(b, d, n, device=DEVICE),
    )
    runs = []
    for fn in (selective_scan, selective_scan_ref):
        out, last = fn(
            *inputs[:5],
            D=inputs[5],
            z=inputs[6],
            delta_bias=inputs[7],
            delta_softplus=True,
            return_last_state=True,
        )
        grads = torch.autograd.grad(
            (out * dout).sum() + (last * dlast).sum(), inputs
        )
        runs.append((out, last, grads))
    (out, last, grads), (out_ref, last_ref, grads_ref) = runs
    return {
        "out": max_diff(out, out_ref),
        "last_state": max_diff(last, last_ref),
        "grad": {
            name: max_diff(g, g_ref)
            for name, g, g_ref in zip(NAMES, grads, grads_ref)
        },
    }


results = {}
for label, kind in (
    ("input-dependent B, C (2 groups)", {}),
    ("time-invariant B, C", {"time_invariant": True}),
):
    for L in LENGTHS:
        key = f"{label}, L={L}"
        results[key] = compare(L, **kind)
        worst = max(results[key]["grad"].items(), key=lambda item: item[1])
        print(
            f"{key}:\n  out {results[key]['out']:.1e}  last state "
            f"{results[key]['last_state']:.1e}  "
            f"worst gradient d{worst[0]} {worst[1]:.1e}"
        )


# %% [markdown]
# Decoding: the first `L - 10` tokens in one call that also returns the state,
# then the last 10 tokens one at a time. `selective_scan_step` takes B and C of
# one token, `[b, g, n]`, updates the state in place (one kernel launch per
# token) and returns the token's output.

# %%
L = LENGTHS[-1]
u, delta, A, B, C, D, z, delta_bias = (x.detach() for x in make_inputs(L))
options = dict(D=D, delta_bias=delta_bias, delta_softplus=True)
prompt = L - 10
outs, state = selective_scan(
    u[..., :prompt],
    delta[..., :prompt],
    A,
    B[..., :prompt],
    C[..., :prompt],
    z=z[..., :prompt],
    return_last_state=True,
    **options,
)
outs = [outs]
for t in range(prompt, L):
    out_t = selective_scan_step(
        state,
        u[..., t],
        delta[..., t],
        A,
        B[..., t],
        C[..., t],
        z=z[..., t],
        **options,
    )
    outs.append(out_t[..., None])  # [b, d, 1]
whole, last = selective_scan(
    u, delta, A, B, C, z=z, return_last_state=True, **options
)
decode = {
    "out": max_diff(torch.cat(outs, dim=-1), whole),
    "state": max_diff(state, last),
}
print(
    f"prompt of {prompt} + 10 steps vs one call: max |diff| outputs "
    f"{decode['out']:.1e}, states {decode['state']:.1e}"
)

summary = {
    "device": DEVICE,
    "path": path,
    "lengths": LENGTHS,
    "b": b,
    "d": d,
    "n": n,
    "out_max_abs_diff": max(r["out"] for r in results.values()),
    "last_state_max_abs_diff": max(r["last_state"] for r in results.values()),
    "grad_max_abs_diff": max(max(r["grad"].values()) for r in results.values()),
    "decode_out_max_abs_diff": decode["out"],
    "decode_state_max_abs_diff": decode["state"],
    "cases": results,
}
with open("results.json", "w") as f:
    json.dump(summary, f, indent=2)
