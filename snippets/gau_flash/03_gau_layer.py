"""A gated attention unit (GAU) with mixed chunk
attention: forward, backward and a toy fit.

You will see:
* the GAU layer in PyTorch: one projection to ``U``, ``V`` and a small shared
  ``Z``, four per-dimension scales and offsets of ``Z`` for the queries and
  keys, causal mixed chunk attention, the gate ``U * (A V)`` and the output
  projection;
* its parameter count against a transformer block's attention and feed-forward
  layers;
* forward and backward at a length that is not a multiple of the chunk: finite
  outputs and gradients, and no gradient from an output to any later input;
* a toy regression that needs tokens to exchange information, fitted by four
  versions of the same layer: FLASH's mixed chunk attention, the quadratic GAU
  (one chunk covering the whole sequence: exact squared-ReLU attention over
  every earlier token) with two normalisations, and no attention at all (the
  gated linear unit alone): what chunking costs, or gains, in quality on this
  task.
"""

# %%
import json

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from kernels.linear_attention.naive import mixed_chunk_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
D, T, CHUNK, STEPS = (
    (512, 1000, 256, 300) if DEVICE == "cuda" else (64, 200, 64, 200)
)
if DEVICE == "cpu":
    # many small operations: more threads cost more than they save here
    torch.set_num_threads(1)
torch.manual_seed(0)


# %% [markdown]
# The attention: `mixed_chunk_attention` from the package (the first snippet
# checks it against its definition), the quadratic GAU as the same function with
# one chunk as long as the sequence, and the identity, which turns the GAU into
# a gated feed-forward layer.


# %%
def quadratic_attention(q_quad, k_quad, q_lin, k_lin, v, chunk):
    """The quadratic GAU: one chunk covers the sequence,
    ``A = relu^2(scale Q K^T) / T``, causal.
    """
    return mixed_chunk_attention(q_quad, k_quad, q_lin, k_lin, v, v.shape[1])


def quadratic_attention_per_position(q_quad, k_quad, q_lin, k_lin, v, chunk):
    """The same, with row ``t`` divided by its ``t + 1`` keys instead of by
    ``T``.
    """
    T = v.shape[1]
    # [T, 1]
    keys_seen = torch.arange(1, T + 1, device=v.device, dtype=v.dtype)[:, None]
    return (
        quadratic_attention(q_quad, k_quad, q_lin, k_lin, v, chunk)
        * T
        / keys_seen
    )


def no_attention(q_quad, k_quad, q_lin, k_lin, v, chunk):
    """A = identity: the GAU becomes a gated linear unit, a
    feed-forward layer.
    """
    return v


# %% [markdown]
# The layer. `Z` is narrow (`s = 128` in the paper, here `S`); the queries and
# keys are cheap per-dimension affine maps of it, `z * a + b`, four of them for
# the two halves of the attention. The paper uses SiLU for the activations and
# `e = 2 d`. The scales start near 1 and the offsets at 0 (our choice), so the
# four maps differ from the first step.


# %%
class ScaleOffset(nn.Module):
    """``z * a + b`` with a learned scale ``a`` and offset ``b`` per
    dimension.
    """

    def __init__(self, dim):
        super().__init__()
        self.a = nn.Parameter(1 + 0.1 * torch.randn(dim))
        self.b = nn.Parameter(torch.zeros(dim))

    def forward(self, z):
        return z * self.a + self.b


class GAU(nn.Module):
    """Gated attention unit, causal: ``x + W_o (U * A V)`` on a layer-normalised
    ``x``.
    """

    def __init__(
        self, d, e=None, s=128, chunk=256, attention=mixed_chunk_attention
    ):
        super().__init__()
        self.e, self.s, self.chunk, self.attention = (
            e or 2 * d,
            s,
            chunk,
            attention,
        )
        self.norm = nn.LayerNorm(d)
        # W_u, W_v, W_z in one matrix
        self.to_uvz = nn.Linear(d, 2 * self.e + s)
        self.q_quad, self.k_quad, self.q_lin, self.k_lin = (
            ScaleOffset(s) for _ in range(4)
        )
        self.to_out = nn.Linear(self.e, d)  # W_o

    def forward(self, x):  # x: [B, T, d]
        u, v, z = F.silu(self.to_uvz(self.norm(x))).split(
            [self.e, self.e, self.s], dim=-1
        )
        # [B, T, e]
        o = self.attention(
            self.q_quad(z),
            self.k_quad(z),
            self.q_lin(z),
            self.k_lin(z),
            v,
            self.chunk,
        )
        return x + self.to_out(u * o)


S = 128 if DEVICE == "cuda" else 32
layer = GAU(D, s=S, chunk=CHUNK).to(DEVICE)
n_params = sum(p.numel() for p in layer.parameters())
print(f"GAU with d = {D}, e = {layer.e}, s = {S}: {n_params:,} parameters")
print(
    f"two GAUs: {2 * n_params:,}; a transformer block's attention + "
    f"feed-forward: about 12 d^2 = {12 * D * D:,}"
)

# %% [markdown]
# Forward and backward at a length that is not a multiple of the chunk.

# %%
x = torch.randn(2, T, D, device=DEVICE, requires_grad=True)
y = layer(x)
y.square().mean().backward()
grads = {name: p.grad for name, p in layer.named_parameters()}
finite = bool(torch.isfinite(y).all()) and all(
    bool(torch.isfinite(g).all()) for g in grads.values()
)
nonzero = sum(bool(g.abs().max() > 0) for g in grads.values())
print(
    f"forward {tuple(x.shape)} -> {tuple(y.shape)}; outputs and gradients "
    f"finite: {finite}"
)
print(f"{nonzero} of {len(grads)} parameter tensors receive a nonzero gradient")

# %% [markdown]
# Causality through the whole layer: the gradient of the output at position `t0`
# with respect to every input after `t0` must be exactly zero.

# %%
layer64 = layer.double()
x64 = torch.randn(2, T, D, dtype=torch.float64, device=DEVICE)
t0 = CHUNK + 5
x64.requires_grad_(True)
layer64(x64)[:, t0].sum().backward()
future = x64.grad[:, t0 + 1 :].abs().max().item()
past = x64.grad[:, : t0 + 1].abs().amax(dim=(0, 2))
print(f"d output[{t0}] / d x: largest |gradient| on later inputs {future:.1e}")
print(
    f"nonzero on {int((past > 0).sum())} of the {t0 + 1} inputs up to {t0} (a "
    "negative squared-ReLU score gives weight 0, and no gradient)"
)

# %% [markdown]
# A toy task that needs token mixing. Each sequence has a hidden vector `mu` of
# its own; every token is `mu` plus noise twice as large, and the target at
# every position is `mu`. One token alone says little about `mu`; the average of
# the tokens so far says a lot. A feed-forward layer sees one token at a time,
# attention sees the context. All four models are the same GAU, trained from the
# same initial weights on the same batches: with mixed chunk attention, with
# quadratic attention over the whole sequence (divided by `T` as in the formula,
# and, since this task rewards a proper average, divided by the `t + 1` keys
# each row sees), and with `A = I`. The loss is relative to the variance of the
# target; the final loss is the mean of the last 10 steps, also split into the
# first chunk's positions and the rest (where mixed chunk attention relies on
# its linear part).


# %%
def batch(n=8, noise=2.0):
    mu = torch.randn(n, 1, D, device=DEVICE)
    return mu + noise * torch.randn(n, T, D, device=DEVICE), mu.expand(n, T, D)


MODELS = {
    "GAU, mixed chunk attention": mixed_chunk_attention,
    "GAU, quadratic attention": quadratic_attention,
    "GAU, quadratic attention, 1/(t+1)": quadratic_attention_per_position,
    "same layer, A = I (GLU)": no_attention,
}
curves, by_part = {}, {}
for name, attention in MODELS.items():
    # the same initial weights and the same batches for every model
    torch.manual_seed(2)
    model = GAU(D, s=S, chunk=CHUNK, attention=attention).to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    curves[name], parts = [], []
    for step in range(STEPS):
        x, target = batch()
        # [T]: the layer's update is the prediction
        error = (model(x) - x - target).square().mean(dim=(0, 2))
        loss = error.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        curves[name].append(loss.item())
        if step >= STEPS - 10:
            parts.append(
                (error[:CHUNK].mean().item(), error[CHUNK:].mean().item())
            )
    by_part[name] = {
        "first chunk": sum(p[0] for p in parts) / 10,
        "later positions": sum(p[1] for p in parts) / 10,
    }
    print(
        f"{name}: loss {curves[name][0]:.3f} at the first step, "
        f"{sum(curves[name][-10:]) / 10:.3f} over the last 10 (first {CHUNK} "
        f"positions {by_part[name]['first chunk']:.3f}, later ones "
        f"{by_part[name]['later positions']:.3f})"
    )

fig, ax = plt.subplots(figsize=(6.8, 4.2))
for name, losses in curves.items():
    ax.plot(range(1, STEPS + 1), losses, label=name)
ax.set_yscale("log")
ax.set(
    xlabel="training step (optimizer steps)",
    ylabel="mean squared error (target variance 1)",
    title=(
        f"Toy task: recover each sequence's hidden vector\n$T = {T}$, "
        f"$d = {D}$, chunks of {CHUNK}"
    ),
)
ax.grid(alpha=0.3, which="both")
ax.legend()
fig.tight_layout()
fig.savefig("toy_fit.svg")

with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "d": D,
            "e": layer.e,
            "s": S,
            "T": T,
            "chunk": CHUNK,
            "parameters": n_params,
            "finite": finite,
            "nonzero_grads": nonzero,
            "param_tensors": len(grads),
            "future_grad_max_abs": future,
            "t0": t0,
            "steps": STEPS,
            "final_loss": {
                name: sum(c[-10:]) / 10 for name, c in curves.items()
            },
            "final_loss_by_part": by_part,
            "gau_final_loss": sum(curves["GAU, mixed chunk attention"][-10:])
            / 10,
            "quadratic_final_loss": sum(
                curves["GAU, quadratic attention"][-10:]
            )
            / 10,
            "gau_final_loss_later": by_part["GAU, mixed chunk attention"][
                "later positions"
            ],
            "quadratic_final_loss_later": by_part["GAU, quadratic attention"][
                "later positions"
            ],
            "gau_final_loss_first_chunk": by_part["GAU, mixed chunk attention"][
                "first chunk"
            ],
            "quadratic_final_loss_first_chunk": by_part[
                "GAU, quadratic attention"
            ]["first chunk"],
            "quadratic_pp_final_loss": sum(
                curves["GAU, quadratic attention, 1/(t+1)"][-10:]
            )
            / 10,
            "quadratic_pp_final_loss_later": by_part[
                "GAU, quadratic attention, 1/(t+1)"
            ]["later positions"],
            "quadratic_pp_final_loss_first_chunk": by_part[
                "GAU, quadratic attention, 1/(t+1)"
            ]["first chunk"],
            "glu_final_loss": sum(curves["same layer, A = I (GLU)"][-10:]) / 10,
        },
        f,
        indent=2,
    )
