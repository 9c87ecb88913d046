"""A gated attention unit (GAU) with mixed chunk attention: forward, backward and a toy fit.

You will see:
* the GAU layer in PyTorch: one projection to ``U``, ``V`` and a small shared ``Z``, four
  per-dimension scales and offsets of ``Z`` for the queries and keys, causal mixed chunk
  attention, the gate ``U * (A V)`` and the output projection;
* its parameter count against a transformer block's attention and feed-forward layers;
* forward and backward at a length that is not a multiple of the chunk: finite outputs and
  gradients, the same gradients (float64) whether the attention is chunked or naive, and no
  gradient from an output to any later input;
* a toy regression that needs tokens to exchange information, fitted by the GAU and by the
  same layer without attention (the gated linear unit alone).
"""
# %%
import json

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
D, T, CHUNK, STEPS = (512, 1000, 256, 300) if DEVICE == "cuda" else (64, 200, 64, 200)
if DEVICE == "cpu":
    torch.set_num_threads(1)  # many small operations: more threads cost more than they save here
torch.manual_seed(0)


# %% [markdown]
# Mixed chunk attention, as in the first snippet (chunked and naive), so that this file runs on
# its own.

# %%
def to_chunks(x, chunk):
    pad = (-x.shape[1]) % chunk
    return F.pad(x, (0, 0, 0, pad)).reshape(x.shape[0], -1, chunk, x.shape[-1])  # [B, N, C, d]


def mixed_chunk_attention(q_quad, k_quad, q_lin, k_lin, v, chunk):
    """Causal: squared ReLU inside each chunk, linear attention on the chunks before it."""
    qq, kq, ql, kl, vc = (to_chunks(x, chunk) for x in (q_quad, k_quad, q_lin, k_lin, v))
    scores = F.relu(qq.shape[-1] ** -0.5 * qq @ kq.mT) ** 2 / chunk  # [B, N, C, C]
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=v.device).tril()
    o = scores.masked_fill(~causal, 0.0) @ vc
    kv = kl.mT @ vc  # [B, N, S, E]
    before = torch.cat([torch.zeros_like(kv[:, :1]), kv[:, :-1].cumsum(dim=1)], dim=1)
    earlier_tokens = (torch.arange(kv.shape[1], device=v.device) * chunk).clamp_min(1)
    o = o + ql @ before / earlier_tokens[:, None, None]
    return o.reshape(v.shape[0], -1, v.shape[-1])[:, :v.shape[1]]


def mixed_chunk_naive(q_quad, k_quad, q_lin, k_lin, v, chunk):
    """The same function through the full ``[T, T]`` weight matrix."""
    t = torch.arange(v.shape[1], device=v.device)
    g = t // chunk
    quad = F.relu(q_quad.shape[-1] ** -0.5 * q_quad @ k_quad.mT) ** 2 / chunk
    lin = (q_lin @ k_lin.mT) / (g * chunk).clamp_min(1)[:, None]
    W = (torch.where((g[:, None] == g[None, :]) & (t[None, :] <= t[:, None]), quad, 0.0)
         + torch.where(g[None, :] < g[:, None], lin, 0.0))
    return W @ v


def no_attention(q_quad, k_quad, q_lin, k_lin, v, chunk):
    """A = identity: the GAU becomes a gated linear unit, a feed-forward layer."""
    return v


# %% [markdown]
# The layer. `Z` is narrow (`s = 128` in the paper, here `S`); the queries and keys are cheap
# per-dimension affine maps of it, `z * a + b`, four of them for the two halves of the
# attention. The paper uses SiLU for the activations and `e = 2 d`. The scales start near 1 and
# the offsets at 0 (our choice), so the four maps differ from the first step.

# %%
class ScaleOffset(nn.Module):
    """``z * a + b`` with a learned scale ``a`` and offset ``b`` per dimension."""

    def __init__(self, dim):
        super().__init__()
        self.a = nn.Parameter(1 + 0.1 * torch.randn(dim))
        self.b = nn.Parameter(torch.zeros(dim))

    def forward(self, z):
        return z * self.a + self.b


class GAU(nn.Module):
    """Gated attention unit, causal: ``x + W_o (U * A V)`` on a layer-normalised ``x``."""

    def __init__(self, d, e=None, s=128, chunk=256, attention=mixed_chunk_attention):
        super().__init__()
        self.e, self.s, self.chunk, self.attention = e or 2 * d, s, chunk, attention
        self.norm = nn.LayerNorm(d)
        self.to_uvz = nn.Linear(d, 2 * self.e + s)  # W_u, W_v, W_z in one matrix
        self.q_quad, self.k_quad, self.q_lin, self.k_lin = (ScaleOffset(s) for _ in range(4))
        self.to_out = nn.Linear(self.e, d)  # W_o

    def forward(self, x):  # x: [B, T, d]
        u, v, z = F.silu(self.to_uvz(self.norm(x))).split([self.e, self.e, self.s], dim=-1)
        o = self.attention(self.q_quad(z), self.k_quad(z), self.q_lin(z), self.k_lin(z), v, self.chunk)  # [B, T, e]
        return x + self.to_out(u * o)


S = 128 if DEVICE == "cuda" else 32
layer = GAU(D, s=S, chunk=CHUNK).to(DEVICE)
n_params = sum(p.numel() for p in layer.parameters())
print(f"GAU with d = {D}, e = {layer.e}, s = {S}: {n_params:,} parameters")
print(f"two GAUs: {2 * n_params:,}; a transformer block's attention + feed-forward: about 12 d^2 = {12 * D * D:,}")

# %% [markdown]
# Forward and backward at a length that is not a multiple of the chunk.

# %%
x = torch.randn(2, T, D, device=DEVICE, requires_grad=True)
y = layer(x)
y.square().mean().backward()
grads = {name: p.grad for name, p in layer.named_parameters()}
finite = bool(torch.isfinite(y).all()) and all(bool(torch.isfinite(g).all()) for g in grads.values())
nonzero = sum(bool(g.abs().max() > 0) for g in grads.values())
print(f"forward {tuple(x.shape)} -> {tuple(y.shape)}; outputs and gradients finite: {finite}")
print(f"{nonzero} of {len(grads)} parameter tensors receive a nonzero gradient")

# %% [markdown]
# Chunked against naive attention inside the layer, in float64: outputs and every parameter's
# gradient. Then causality through the whole layer: the gradient of the output at position
# `t0` with respect to every input after `t0` must be exactly zero.

# %%
layer64 = layer.double()
x64 = torch.randn(2, T, D, dtype=torch.float64, device=DEVICE)
results = {}
for name, attention in (("chunked", mixed_chunk_attention), ("naive", mixed_chunk_naive)):
    layer64.zero_grad()
    layer64.attention = attention
    out = layer64(x64)
    out.square().mean().backward()
    results[name] = (out.detach(), [p.grad.clone() for p in layer64.parameters()])
layer64.attention = mixed_chunk_attention
output_diff = (results["chunked"][0] - results["naive"][0]).abs().max().item()
grad_diff = max((a - b).abs().max().item() for a, b in zip(results["chunked"][1], results["naive"][1]))
print(f"float64, chunked vs naive attention in the layer, max |diff|: outputs {output_diff:.1e}, "
      f"gradients {grad_diff:.1e}")

t0 = CHUNK + 5
x64.requires_grad_(True)
layer64(x64)[:, t0].sum().backward()
future = x64.grad[:, t0 + 1:].abs().max().item()
past = x64.grad[:, :t0 + 1].abs().amax(dim=(0, 2))
print(f"d output[{t0}] / d x: largest |gradient| on later inputs {future:.1e}")
print(f"nonzero on {int((past > 0).sum())} of the {t0 + 1} inputs up to {t0} "
      f"(a negative squared-ReLU score gives weight 0, and no gradient)")

# %% [markdown]
# A toy task that needs token mixing. Each sequence has a hidden vector `mu` of its own; every
# token is `mu` plus noise twice as large, and the target at every position is `mu`. One token
# alone says little about `mu`; the average of the tokens so far says a lot. A feed-forward
# layer sees one token at a time, attention sees the context. Both models are the same GAU, one
# with `A = I`; the loss is relative to the variance of the target.

# %%
def batch(n=8, noise=2.0):
    mu = torch.randn(n, 1, D, device=DEVICE)
    return mu + noise * torch.randn(n, T, D, device=DEVICE), mu.expand(n, T, D)


curves = {}
for name, attention in (("GAU, mixed chunk attention", mixed_chunk_attention),
                        ("same layer, A = I (GLU)", no_attention)):
    torch.manual_seed(2)
    model = GAU(D, s=S, chunk=CHUNK, attention=attention).to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    curves[name] = []
    for step in range(STEPS):
        x, target = batch()
        loss = F.mse_loss(model(x) - x, target)  # the layer's update (output minus residual) is the prediction
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        curves[name].append(loss.item())
    print(f"{name}: loss {curves[name][0]:.3f} at the first step, {sum(curves[name][-10:]) / 10:.3f} over the last 10")

fig, ax = plt.subplots(figsize=(7, 4.2))
for name, losses in curves.items():
    ax.plot(range(1, STEPS + 1), losses, label=name)
ax.set_yscale("log")
ax.set(xlabel="training step", ylabel="mean squared error (target variance = 1)",
       title=f"Toy task: recover each sequence's hidden vector\nT = {T}, d = {D}, chunks of {CHUNK}")
ax.grid(alpha=0.3, which="both")
ax.legend()
fig.tight_layout()
fig.savefig("toy_fit.svg")

with open("results.json", "w") as f:
    json.dump({"device": DEVICE, "d": D, "e": layer.e, "s": S, "T": T, "chunk": CHUNK, "parameters": n_params,
               "finite": finite, "nonzero_grads": nonzero, "param_tensors": len(grads),
               "layer_output_max_abs_diff": output_diff, "layer_grad_max_abs_diff": grad_diff,
               "future_grad_max_abs": future, "t0": t0,
               "final_loss": {name: sum(c[-10:]) / 10 for name, c in curves.items()},
               "gau_final_loss": sum(curves["GAU, mixed chunk attention"][-10:]) / 10,
               "glu_final_loss": sum(curves["same layer, A = I (GLU)"][-10:]) / 10}, f, indent=2)
