"""A small decoder-only Transformer over bytes, with a KV cache that can roll back.

It implements `kernels.speculative.LanguageModel`, the interface the decoding loops use.

Llama-style blocks: RMSNorm, rotary position embeddings (RoPE), causal self-attention, SwiGLU
feed-forward. The vocabulary is the 256 byte values. The forward takes new tokens and a
`KVCache`, and optionally a boolean mask among the new tokens and their position ids: that is
all tree attention needs to verify a tree of candidates in one forward.

Where attention runs: on CUDA tensors through `kernels.flash_attention` (causal) and
`kernels.speculative.tree_attention` (with a tree mask), both Triton kernels. On CPU tensors
through the plain PyTorch references `kernels.flash_attention.attention_ref` and
`tree_attention_ref`, even under ``TRITON_INTERPRET=1``: Triton's interpreter is far too slow
to train or decode with, and the references take float64, which the exactness tests use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..flash_attention import attention_ref, flash_attention
from ..speculative.tree_attention import tree_attention, tree_attention_ref

__all__ = ["Config", "PRESETS", "KVCache", "Transformer", "RMSNorm", "Block"]


@dataclass(frozen=True)
class Config:
    """Shape of a model. ``dim`` must be ``n_heads`` times a head dim that is a multiple of 8.

    ``max_seq_len`` is the context: the model trains on windows of exactly that many tokens
    (`kernels.models.train`), and its forward refuses positions beyond it, so that no
    experiment runs a model past the positions it was trained on.
    """

    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    hidden: int = 176  # SwiGLU hidden size, about 8/3 dim
    vocab_size: int = 256  # bytes
    max_seq_len: int = 512
    rope_base: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)


# Draft and target per size. On a GPU at batch 1 a forward costs roughly in proportion to the
# number of layers (each is a few kernel launches and a read of its weights): the GPU target has
# four times the draft's layers and about 50 times its weights (26M and 0.5M parameters). The
# contexts are the longest sequences the articles run (prompt, new tokens and lookahead).
PRESETS = {
    "cpu-target": Config(
        dim=64, n_layers=2, n_heads=4, hidden=176, max_seq_len=128
    ),
    "cpu-draft": Config(
        dim=32, n_layers=1, n_heads=2, hidden=96, max_seq_len=128
    ),
    "gpu-target": Config(
        dim=512, n_layers=8, n_heads=8, hidden=1408, max_seq_len=512
    ),
    "gpu-draft": Config(
        dim=128, n_layers=2, n_heads=2, hidden=352, max_seq_len=512
    ),
}


class KVCache:
    """Keys and values of every layer for the tokens fed so far, preallocated up to ``max_len``.

    ``k`` and ``v`` have shape ``[n_layers, B, H, max_len, D]``; positions ``[0, length)`` are
    valid. The model writes new entries at ``length`` and then advances it. Speculative decoding
    drops the entries of rejected draft tokens with `rollback` / `truncate` (nothing is erased:
    the next tokens overwrite them), and Medusa keeps the accepted path of a tree with `keep`.
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_heads: int,
        max_len: int,
        head_dim: int,
        device=None,
        dtype=torch.float32,
    ):
        shape = (n_layers, batch_size, n_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write ``k, v [B, H, T, D]`` at positions ``[length, length + T)`` of ``layer``.

        Returns the keys and values of positions ``[0, length + T)``, ``[B, H, length + T, D]``.
        ``length`` itself moves on only when the model calls `advance` after its last layer.
        """
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(
                f"the KV cache holds at most {self.max_len} positions, "
                f"{self.length} are used and {k.shape[2]} more were given"
            )
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` positions (``0 <= length <= self.length``)."""
        if not 0 <= length <= self.length:
            raise ValueError(
                f"length must be between 0 and the cached length {self.length}, got {length}"
            )
        self.length = length

    def rollback(self, n: int) -> None:
        """Forget the last ``n`` positions (``0 <= n <= self.length``)."""
        if not 0 <= n <= self.length:
            raise ValueError(
                f"n must be between 0 and the cached length {self.length}, got {n}"
            )
        self.length -= n

    def keep(self, start: int, offsets) -> None:
        """Keep positions ``start + offsets[i]`` as ``start + i`` and drop everything after.

        Used after tree verification: the tree's nodes were written at ``start, start + 1, ...``
        in node order, and only the accepted path (``offsets``, increasing) stays.
        """
        offsets = torch.as_tensor(
            offsets, dtype=torch.long, device=self.k.device
        )
        if len(offsets) and (
            offsets[0] < 0
            or start + offsets[-1] >= self.length
            or (offsets[1:] <= offsets[:-1]).any()
        ):
            raise ValueError(
                f"offsets must increase and stay within the cache, got {offsets.tolist()} "
                f"from start {start} with length {self.length}"
            )
        src = start + offsets
        self.k[:, :, :, start : start + len(offsets)] = self.k[:, :, :, src]
        self.v[:, :, :, start : start + len(offsets)] = self.v[:, :, :, src]
        self.length = start + len(offsets)


class RMSNorm(nn.Module):
    """``x / rms(x) * weight``, with the statistics in float32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x if x.dtype == torch.float64 else x.float()
        return (
            x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        ).type_as(x) * self.weight


def rope_tables(config: Config):
    """``cos, sin`` of shape ``[max_seq_len, head_dim / 2]`` for rotary embeddings."""
    half = config.head_dim // 2
    freqs = config.rope_base ** (
        -torch.arange(half, dtype=torch.float64) / half
    )  # [D/2]
    angles = (
        torch.arange(config.max_seq_len, dtype=torch.float64)[:, None] * freqs
    )  # [T, D/2]
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate pairs ``(x[..., :D/2], x[..., D/2:])`` of ``x [B, H, T, D]`` by the angles of ``cos/sin [T, D/2]``."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def attend(q, k, v, tree_mask=None):
    """Attention of ``q [B, H, Tq, D]`` over ``k, v [B, H, Tk, D]`` (cache then new tokens).

    Without ``tree_mask`` the new tokens attend causally (bottom-right aligned, so each sees the
    whole cache); with it, as the mask ``[Tq, Tq]`` says. Triton on CUDA, references on the CPU.
    """
    if tree_mask is None:
        if q.is_cuda:
            return flash_attention(q, k, v, causal=True)
        return attention_ref(q, k, v, causal=True)
    if q.is_cuda:
        return tree_attention(q, k, v, tree_mask)
    return tree_attention_ref(q, k, v, tree_mask)


class Attention(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.wqkv = nn.Linear(config.dim, 3 * config.dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)

    def forward(self, x, cos, sin, cache=None, layer=0, tree_mask=None):
        B, T, _ = x.shape
        q, k, v = (
            self.wqkv(x)
            .view(B, T, 3, self.n_heads, self.head_dim)
            .permute(2, 0, 3, 1, 4)
        )  # 3 x [B, H, T, D]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # [B, H, cached + T, D]
        o = attend(q, k, v, tree_mask)  # [B, H, T, D]
        return self.wo(o.transpose(1, 2).reshape(B, T, -1))


class Block(nn.Module):
    """Pre-norm Transformer block: ``x + attn(norm(x))``, then ``x + swiglu(norm(x))``."""

    def __init__(self, config: Config):
        super().__init__()
        self.attn_norm, self.ffn_norm = RMSNorm(config.dim), RMSNorm(config.dim)
        self.attn = Attention(config)
        self.w_gate_up = nn.Linear(config.dim, 2 * config.hidden, bias=False)
        self.w_down = nn.Linear(config.hidden, config.dim, bias=False)

    def forward(self, x, cos, sin, cache=None, layer=0, tree_mask=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, layer, tree_mask)
        gate, up = self.w_gate_up(self.ffn_norm(x)).chunk(2, dim=-1)
        return x + self.w_down(nn.functional.silu(gate) * up)


class Transformer(nn.Module):
    """Decoder-only byte-level Transformer.

    Args:
        config (Config): the shape; see `PRESETS`.

    Examples:
        >>> model = Transformer(PRESETS["cpu-draft"])
        >>> cache = model.new_cache()
        >>> logits = model(torch.tensor([[104, 105]]), cache)  # [1, 2, 256]
        >>> cache.length
        2
    """

    def __init__(self, config: Config):
        super().__init__()
        if config.dim % config.n_heads or config.head_dim % 8:
            raise ValueError(
                f"dim must be n_heads times a multiple of 8, got dim={config.dim}, "
                f"n_heads={config.n_heads}"
            )
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(
            Block(config) for _ in range(config.n_layers)
        )
        self.norm = RMSNorm(config.dim)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        cos, sin = rope_tables(config)
        self.register_buffer("cos", cos.float(), persistent=False)
        self.register_buffer("sin", sin.float(), persistent=False)
        self.apply(_init_weights)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_seq_len(self) -> int:
        """The context the model was trained on: it refuses longer sequences."""
        return self.config.max_seq_len

    def new_cache(
        self, batch_size: int = 1, max_len: int | None = None
    ) -> KVCache:
        """An empty `KVCache` on the model's device, in its dtype."""
        c, w = self.config, self.lm_head.weight
        return KVCache(
            c.n_layers,
            batch_size,
            c.n_heads,
            max_len or c.max_seq_len,
            c.head_dim,
            w.device,
            w.dtype,
        )

    def rope(self, position_ids: torch.Tensor):
        """``cos, sin [T, D/2]`` at the given positions (the tables are kept in the model's dtype).

        Raises:
            ValueError: a position at or beyond ``max_seq_len``, the context the model was trained on.
        """
        if len(position_ids) and position_ids.max() >= self.config.max_seq_len:
            raise ValueError(
                f"the model was trained on sequences of at most max_seq_len={self.config.max_seq_len} "
                f"tokens; this input reaches {position_ids.max().item() + 1} positions"
            )
        return self.cos[position_ids], self.sin[position_ids]

    def forward(
        self,
        tokens: torch.Tensor,
        cache: KVCache | None = None,
        tree_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_hidden: bool = False,
    ):
        """Logits for every new token.

        Args:
            tokens (torch.Tensor): int64 ``[B, T]``, the new tokens.
            cache (KVCache, optional): holds the earlier tokens; the new ones are appended.
            tree_mask (torch.Tensor, optional): bool ``[T, T]``: which new token sees which
                (every one sees the whole cache). Default: causal.
            position_ids (torch.Tensor, optional): int64 ``[T]``, default
                ``cache.length + arange(T)``. A tree gives each node ``cache.length + depth``.
            return_hidden (bool): also return the last hidden states (after the final norm,
                what the output head reads), ``[B, T, dim]``.

        Returns:
            ``logits [B, T, vocab_size]``, and ``hidden`` when asked.
        """
        if tokens.dim() != 2:
            raise ValueError(
                f"tokens must have shape [B, T], got {tuple(tokens.shape)}"
            )
        start = cache.length if cache is not None else 0
        T = tokens.shape[1]
        if position_ids is None:
            position_ids = torch.arange(start, start + T, device=tokens.device)
        if tree_mask is not None and tuple(tree_mask.shape) != (T, T):
            raise ValueError(
                f"tree_mask must have shape [T, T] = ({T}, {T}), got {tuple(tree_mask.shape)}"
            )
        cos, sin = self.rope(position_ids)
        x = self.embed(tokens)  # [B, T, dim]
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i, tree_mask)
        if cache is not None:
            cache.advance(T)
        hidden = self.norm(x)
        logits = self.lm_head(hidden)  # [B, T, V]
        return (logits, hidden) if return_hidden else logits


def _init_weights(module):
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
