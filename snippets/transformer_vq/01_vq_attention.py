"""Softmax attention with vector-quantised keys, in linear time and exactly.

You will see:
* keys replaced by their nearest codewords, and the identity
  ``softmax(scale Q K_hat^T) V
  = (exp(scale Q C^T) D^T V) / (exp(scale Q C^T) D^T 1)``
  with ``D`` the one-hot matrix of codes;
* the causal, block-by-block form with a compressed cache (per-code sums of
  values and counts) equal to the quadratic form with quantised keys, in
  float64, with and without a per-head decay, at lengths that are not multiples
  of the block, and T = 1;
* the same in float32 against
  ``kernels.flash_attention(q, k_hat, v, causal=True)``;
* VQ attention as linear attention: ``kernels.linear_attention`` with the
  features ``exp(scale q C^T)`` for queries and one-hot codes for keys gives the
  same outputs;
* the memory a decoder keeps: about ``(S_c + L) (V + 1)`` numbers instead of
  ``T (K + V)``.
"""

# %%
import json

import torch
import torch.nn.functional as F

from kernels import flash_attention, linear_attention, uses_triton
from kernels.bench import max_diff

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B, H, K, V, CODES, BLOCK, LENGTHS = (
    (2, 4, 64, 64, 128, 64, [1, 63, 64, 1000, 2049])
    if DEVICE == "cuda"
    else (2, 2, 32, 32, 64, 16, [1, 15, 16, 50, 101])
)
SCALE = K**-0.5
torch.manual_seed(0)


# %% [markdown]
# Quantising the keys: each key is replaced by the nearest of `CODES` codewords.
# The codebook has one set of codewords per head, `[H, S_c, K]`; here it is
# random, because the identities below hold for any codebook (the third snippet
# learns one).


# %%
def quantise(k, codebook):
    """Codes ``z [B, H, T]`` (index of the nearest codeword) and quantised keys
    ``k_hat [B, H, T, K]``.
    """
    distance = (
        k.square().sum(-1, keepdim=True)
        - 2 * k @ codebook.mT
        # [B, H, T, S_c]: squared distances
        + codebook.square().sum(-1)[:, None, :]
    )
    z = distance.argmin(dim=-1)
    heads = torch.arange(codebook.shape[0], device=k.device)[None, :, None]
    return z, codebook[heads, z]


def dense_attention(q, k, v, scale, decay=None):
    """Causal softmax attention through the ``[T, T]`` scores; ``decay`` adds
    ``log(gamma_h) (t - s)``.
    """
    t = torch.arange(q.shape[2], device=q.device)
    lag = t[:, None] - t[None, :]
    logits = scale * q @ k.mT
    if decay is not None:
        logits = logits + decay[:, None, None] * lag.clamp_min(0)
    return torch.softmax(logits.masked_fill(lag < 0, float("-inf")), dim=-1) @ v


q, k, v = (
    torch.randn(B, H, LENGTHS[-1], d, dtype=torch.float64, device=DEVICE)
    for d in (K, K, V)
)
codebook = torch.randn(H, CODES, K, dtype=torch.float64, device=DEVICE)
z, k_hat = quantise(k, codebook)
print(
    f"{LENGTHS[-1]} keys per head quantised to {CODES} codewords: "
    f"{z.unique().numel()} distinct codes used"
)

# %% [markdown]
# Without a mask: `exp(scale q_t . k_hat_s) = exp(scale q_t . c_{z_s})` depends
# on `s` only through its code, so the sum over the `T` keys becomes a sum over
# the `S_c` codes, each weighted by the sum (numerator) or count (denominator)
# of the values that carry it.

# %%
delta = F.one_hot(z, CODES).double()  # [B, H, T, S_c]: D, one row per key
weights = torch.exp(SCALE * q @ codebook.mT)  # [B, H, T, S_c]: exp(scale Q C^T)
# D^T V: [S_c, V]
linear_form = (weights @ (delta.mT @ v)) / (
    weights @ delta.sum(dim=-2)[..., None]
)
quadratic_form = torch.softmax(SCALE * q @ k_hat.mT, dim=-1) @ v
identity_diff = max_diff(linear_form, quadratic_form)
print(
    "non-causal, exp(Q C^T) D^T V / exp(Q C^T) D^T 1 vs softmax(Q K_hat^T) V: "
    f"max |diff| {identity_diff:.1e}"
)


# %% [markdown]
# The causal form, one block of `BLOCK` positions at a time. Inside the block,
# the quadratic form with quantised keys. For everything before the block, the
# cache: per code, the sum of the values (`cache_sum`, `[S_c, V]`) and the
# number of tokens (`cache_count`, `[S_c]`). The two parts share one softmax:
# the cache enters as `S_c` extra logits `scale q . c + log(count)` whose values
# are the per-code means. With a decay `gamma = exp(decay[h])`, a key `s` steps
# back is weighted by `gamma^s`: inside the block as a bias on the logits, in
# the cache by decaying the sums and counts as they age.


# %%
def vq_attention_blockwise(q, z, codebook, v, block, scale, decay=None):
    """Causal softmax attention with the keys ``codebook[z]``, in
    ``O(T (block + S_c))`` time.

    q ``[B, H, T, K]``, z ``[B, H, T]`` codes, codebook ``[H, S_c, K]``, v
    ``[B, H, T, V]``, decay ``[H]`` log-decays <= 0 or None. Returns
    ``[B, H, T, V]``.
    """
    Bq, Hq, T, _ = q.shape
    n_codes = codebook.shape[1]
    g = (
        torch.zeros(Hq, dtype=q.dtype, device=q.device)
        if decay is None
        else decay.to(q.dtype)
    ).view(Hq, 1, 1)
    heads = torch.arange(Hq, device=q.device)[None, :, None]
    # per code: sum of (decayed) values
    cache_sum = q.new_zeros(Bq, Hq, n_codes, v.shape[-1])
    # per code: (decayed) number of tokens
    cache_count = q.new_zeros(Bq, Hq, n_codes)
    outputs = []
    for start in range(0, T, block):
        qb, zb, vb = (
            q[:, :, start : start + block],
            z[:, :, start : start + block],
            v[:, :, start : start + block],
        )
        L = qb.shape[2]
        i = torch.arange(L, device=q.device, dtype=q.dtype)
        lag = i[:, None] - i[None, :]  # i - j inside the block
        # [B, H, L, L]
        local = scale * qb @ codebook[heads, zb].mT + g * lag.clamp_min(0)
        local = local.masked_fill(lag < 0, float("-inf"))
        # [B, H, L, S_c]
        cached = (
            scale * qb @ codebook.mT
            + cache_count.log()[:, :, None, :]
            + g * (i[:, None] + 1)
        )
        # one softmax over L + S_c logits
        p = torch.softmax(torch.cat([local, cached], dim=-1), dim=-1)
        code_means = (
            cache_sum
            / cache_count.clamp_min(torch.finfo(q.dtype).tiny)[..., None]
        )
        outputs.append(p[..., :L] @ vb + p[..., L:] @ code_means)
        # aged to the block's end
        onehot = F.one_hot(zb, n_codes).to(v.dtype) * torch.exp(
            g * (L - 1 - i)[:, None]
        )
        cache_sum = torch.exp(g * L) * cache_sum + onehot.mT @ vb
        cache_count = torch.exp(g[..., 0] * L) * cache_count + onehot.sum(
            dim=-2
        )
    return torch.cat(outputs, dim=2)


retnet_decay = torch.log(
    1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float64, device=DEVICE))
)
causal = {}
print(
    f"causal, blocks of {BLOCK}: blockwise with cache vs quadratic form, "
    "quantised keys, float64, max |diff|:"
)
for T in LENGTHS:
    causal[T] = {}
    for name, decay in (("no decay", None), ("decay", retnet_decay)):
        blockwise = vq_attention_blockwise(
            q[:, :, :T], z[:, :, :T], codebook, v[:, :, :T], BLOCK, SCALE, decay
        )
        reference = dense_attention(
            q[:, :, :T], k_hat[:, :, :T], v[:, :, :T], SCALE, decay
        )
        causal[T][name] = max_diff(blockwise, reference)
    print(
        f"  T = {T:4d}: no decay {causal[T]['no decay']:.1e}, RetNet decay "
        f"{causal[T]['decay']:.1e}"
    )

# %% [markdown]
# In float32, the reference is the FlashAttention kernel itself: it accepts any
# keys, so `flash_attention(q, k_hat, v, causal=True)` is exact softmax
# attention with quantised keys.

# %%
path = (
    "Triton kernels"
    if uses_triton(q.float())
    else "PyTorch references (TRITON_INTERPRET unset)"
)
float32 = {}
for T in LENGTHS:
    q32, k32, v32 = (x[:, :, :T].float().contiguous() for x in (q, k_hat, v))
    by_flash = flash_attention(q32, k32, v32, causal=True, scale=SCALE)
    float32[T] = max_diff(
        vq_attention_blockwise(
            q32, z[:, :, :T], codebook.float(), v32, BLOCK, SCALE
        ),
        by_flash,
    )
print(
    "float32, blockwise vs flash_attention(q, k_hat, v, causal=True) "
    f"({path}), max |diff|:"
)
print("  " + ", ".join(f"T = {T}: {d:.1e}" for T, d in float32.items()))


# %% [markdown]
# The same function is linear attention. With the query features
# `exp(scale q C^T)` (one per codeword; a constant per row, here the row
# maximum, cancels in the ratio) and one-hot codes as key features,
# `linear_attention` on the values with a column of ones appended gives the
# numerator and the denominator in one call, decay included. The ones column is
# padded with zeros to a multiple of 8 columns, as the kernel asks.


# %%
def vq_attention_with_kernel(q, z, codebook, v, scale, decay=None):
    """Causal VQ attention through ``kernels.linear_attention``, one token at a
    time in effect.
    """
    logits = scale * q @ codebook.mT  # [B, H, T, S_c]
    phi_q = torch.exp(logits - logits.amax(dim=-1, keepdim=True))
    phi_k = F.one_hot(z, codebook.shape[1]).to(q.dtype)
    ones = torch.zeros(*v.shape[:-1], 8, dtype=v.dtype, device=v.device)
    ones[..., 0] = 1
    o = linear_attention(
        phi_q, phi_k, torch.cat([v, ones], dim=-1), decay=decay, scale=1.0
    )
    return o[..., : v.shape[-1]] / o[..., v.shape[-1] : v.shape[-1] + 1]


T = LENGTHS[-1]
kernel_diff = {}
for name, decay in (("no decay", None), ("decay", retnet_decay)):
    by_kernel = vq_attention_with_kernel(
        q.float(),
        z,
        codebook.float(),
        v.float(),
        SCALE,
        None if decay is None else decay.float(),
    )
    kernel_diff[name] = max_diff(
        by_kernel, dense_attention(q, k_hat, v, SCALE, decay)
    )
print(
    "linear_attention on (exp(scale q C^T), one-hot codes), float32, vs "
    f"float64 quadratic form, T = {T}:"
)
print(
    f"  max |diff| no decay {kernel_diff['no decay']:.1e}, RetNet decay "
    f"{kernel_diff['decay']:.1e}"
)

# %% [markdown]
# Equal to attention with *quantised* keys, not to attention with the original
# keys: how far apart those two are depends on the codebook, the subject of the
# third snippet.

# %%
exact = dense_attention(q, k, v, SCALE)
vq_error = (
    (dense_attention(q, k_hat, v, SCALE) - exact).norm() / exact.norm()
).item()
print(
    "with this random codebook, VQ attention differs from exact attention by "
    f"{vq_error:.0%} (relative, Frobenius)"
)
print(
    f"numbers a decoder keeps per head after T = {T} tokens: key/value cache T "
    f"(K + V) = {T * (K + V)};"
)
print(
    "  VQ cache S_c (V + 1) plus the current block's codes and values L (V + "
    f"1) = {(CODES + BLOCK) * (V + 1)}"
)

with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "K": K,
            "V": V,
            "codes": CODES,
            "block": BLOCK,
            "lengths": LENGTHS,
            "identity_max_abs_diff": identity_diff,
            "causal_max_abs_diff": max(
                max(d.values()) for d in causal.values()
            ),
            "causal_by_T": causal,
            "flash_path": path,
            "float32_vs_flash_max_abs_diff": max(float32.values()),
            "kernel_vs_quadratic_max_abs_diff": max(kernel_diff.values()),
            "random_codebook_relative_error": vq_error,
            "kv_cache_numbers": T * (K + V),
            "vq_cache_numbers": (CODES + BLOCK) * (V + 1),
        },
        f,
        indent=2,
    )
