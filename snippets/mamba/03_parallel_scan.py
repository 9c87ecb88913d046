"""The recurrence as a parallel scan, written in PyTorch.

You will see:
* the operator ``(a1, b1) ∘ (a2, b2) = (a1 a2, a2 b1 + b2)`` (apply step 1, then
  step 2, of ``x -> a x + b``) is associative: both bracketings of three random
  steps agree;
* three ways to compute every ``x_t = a_t x_{t-1} + b_t`` of a sequence give the
  same states: the sequential loop (L dependent steps), the doubling scan (log2
  L steps, each over the whole sequence) and the two-level chunked scan that the
  Triton kernel uses (a scan inside every chunk, in parallel, then one pass over
  the chunks that carries the state between them);
* how many dependent steps and how many operator applications each one needs.
"""

# %%
import json
import math

import torch

from kernels.bench import max_diff

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# L need not be a power of 2
L, CHANNELS, CHUNK = (4096, 1024, 32) if DEVICE == "cuda" else (1000, 16, 16)
torch.manual_seed(0)


def combine(a1, b1, a2, b2):
    """The scan operator: the affine map ``x -> a2 (a1 x + b1) + b2`` as a
    pair."""
    return a1 * a2, a2 * b1 + b2


# %% [markdown]
# Associativity, on many random triples in float64: `(s1 ∘ s2) ∘ s3` against
# `s1 ∘ (s2 ∘ s3)`.

# %%
s1, s2, s3 = (
    torch.rand(2, 10_000, dtype=torch.float64, device=DEVICE) for _ in range(3)
)
left = combine(*combine(*s1, *s2), *s3)
right = combine(*s1, *combine(*s2, *s3))
assoc_diff = max(max_diff(x, y) for x, y in zip(left, right))
print(f"(s1 ∘ s2) ∘ s3 vs s1 ∘ (s2 ∘ s3): max |diff| {assoc_diff:.1e}")


# %% [markdown]
# The three scans. Each takes `a, b [channels, L]` and returns every state
# `x [channels, L]`, starting from `x_{-1} = 0`. Channels are independent, as
# the d channels (and n states) of Mamba's scan are.


# %%
def scan_sequential(a, b):
    """L dependent steps: ``x_t = a_t x_{t-1} + b_t``."""
    x, xs = torch.zeros_like(b[:, 0]), []
    for t in range(a.shape[1]):
        x = a[:, t] * x + b[:, t]
        xs.append(x)
    return torch.stack(xs, dim=1)


def scan_doubling(a, b):
    """Hillis and Steele's scan: after step j, position t holds the composition
    of the last ``2^j`` steps up to t. ceil(log2 L) dependent steps, each over
    the whole sequence."""
    a, b = a.clone(), b.clone()
    shift = 1
    while shift < a.shape[1]:
        a_prev = torch.ones_like(a)
        b_prev = torch.zeros_like(b)  # the identity (1, 0) before the start
        a_prev[:, shift:], b_prev[:, shift:] = a[:, :-shift], b[:, :-shift]
        a, b = combine(a_prev, b_prev, a, b)
        shift *= 2
    return b  # the composition from the start applied to x_{-1} = 0 is its b


def scan_chunked(a, b, chunk):
    """The two-level scan: (1) scan inside every chunk from a zero state, all
    chunks at once; (2) carry the state across chunks sequentially; (3) add each
    chunk's decayed carry-in."""
    channels, length = a.shape
    pad = -length % chunk
    # identity steps
    a = torch.cat(
        [a, torch.ones(channels, pad, dtype=a.dtype, device=a.device)], 1
    )
    b = torch.cat(
        [b, torch.zeros(channels, pad, dtype=b.dtype, device=b.device)], 1
    )
    # [channels, n_chunks, chunk]
    a, b = (
        a.reshape(channels, -1, chunk),
        b.reshape(channels, -1, chunk),
    )
    prod = torch.cumprod(a, dim=-1)  # a_0 ... a_i inside each chunk
    # (1)
    local = scan_doubling(a.reshape(-1, chunk), b.reshape(-1, chunk)).reshape(
        a.shape
    )
    carry, carries = torch.zeros_like(b[:, 0, 0]), []
    # (2): one step per chunk, with the chunk's total (prod, local) at its end
    for c in range(a.shape[1]):
        carries.append(carry)
        carry = prod[:, c, -1] * carry + local[:, c, -1]
    x = local + prod * torch.stack(carries, dim=1)[..., None]  # (3)
    return x.reshape(channels, -1)[:, :length]


# %% [markdown]
# Random steps with `a_t` in (0, 1), as `exp(Δ_t A)` is for a negative `A`, at a
# length that is not a multiple of the chunk.

# %%
a = torch.rand(CHANNELS, L, dtype=torch.float64, device=DEVICE) * 0.5 + 0.5
b = torch.randn(CHANNELS, L, dtype=torch.float64, device=DEVICE)
reference = scan_sequential(a, b)
diffs = {
    "doubling": max_diff(scan_doubling(a, b), reference),
    "chunked": max_diff(scan_chunked(a, b, CHUNK), reference),
}
for name, value in diffs.items():
    print(f"{name:9s} scan vs sequential loop: max |diff| {value:.1e}")

# %% [markdown]
# Dependent steps (the depth: what must happen one after the other) and operator
# applications (the work) per channel. The doubling scan buys its depth with
# about `L log2 L` work. The chunked scan pays `C log2 C` inside each chunk of C
# tokens (all chunks at once), L / C steps over the chunks, and one more
# application per token to add the carried state.

# %%
log_L, log_C, n_chunks = (
    math.ceil(math.log2(L)),
    math.ceil(math.log2(CHUNK)),
    math.ceil(L / CHUNK),
)
costs = {
    "sequential": (L, L),
    "doubling": (log_L, sum(L - 2**j for j in range(log_L))),
    "chunked": (
        log_C + n_chunks + 1,
        n_chunks * sum(CHUNK - 2**j for j in range(log_C)) + n_chunks + L,
    ),
}
print(
    f"\nL = {L}, chunk = {CHUNK}: dependent steps and operator applications "
    "per channel"
)
for name, (depth, work) in costs.items():
    print(f"  {name:10s} depth {depth:5d}   work {work:8d}")

with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "L": L,
            "chunk": CHUNK,
            "associativity_max_abs_diff": assoc_diff,
            "doubling_max_abs_diff": diffs["doubling"],
            "chunked_max_abs_diff": diffs["chunked"],
            "depth": {name: depth for name, (depth, _) in costs.items()},
            "work": {name: work for name, (_, work) in costs.items()},
        },
        f,
        indent=2,
    )
