"""The drafters that read a model's hidden states: Medusa heads and a
multi-token-prediction module.

Both are trained in `kernels.models.train`; the decoding loops that use them
(`kernels.speculative.medusa_generate`, `kernels.speculative.mtp_generate`) only
know the interfaces `kernels.speculative.Drafter` and
`kernels.speculative.MultiTokenDrafter`.
"""

from __future__ import annotations

import torch
from torch import nn

from .transformer import Block, Config, KVCache, RMSNorm, Transformer

__all__ = ["MedusaHeads", "MTPModule"]


class MedusaHeads(nn.Module):
    """``num_heads`` Medusa heads as in Cai et al. (2024), section 2.1.1.

    Head ``k`` (0-based) maps the target's last hidden state ``h_t`` to logits
    of the token at ``t + 2 + k``:
    ``logits_k = W2_k (h + silu(W1_k h + b1_k))``, with its own
    ``W1_k [dim, dim]`` (zero at initialisation) and its own output matrix
    ``W2_k [V, dim]``, initialised from the target's output head
    (`from_target`). At initialisation every head therefore predicts what the
    target's head predicts for ``t + 1``; training (Medusa-1: the target frozen)
    moves ``W1_k`` and ``W2_k``.

    Args:
        dim (int): the target's hidden size.
        num_heads (int): how many heads (positions
            ``t + 2 .. t + 1 + num_heads``).
        vocab_size (int): ``V``. Default 256 (bytes).

    Examples:
        >>> from kernels.models import PRESETS, Transformer
        >>> target = Transformer(PRESETS["cpu-draft"])
        >>> heads = MedusaHeads.from_target(target, 3)
        >>> hidden = torch.randn(1, 5, target.config.dim)
        >>> heads(hidden).shape  # [B, T, heads, V]
        torch.Size([1, 5, 3, 256])
    """

    def __init__(self, dim: int, num_heads: int, vocab_size: int = 256):
        super().__init__()
        for name, value in (
            ("dim", dim),
            ("num_heads", num_heads),
            ("vocab_size", vocab_size),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < 1
            ):
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        # W1_k, b1_k
        self.blocks = nn.ModuleList(
            nn.Linear(dim, dim) for _ in range(num_heads)
        )
        # W2_k
        self.out = nn.ModuleList(
            nn.Linear(dim, vocab_size, bias=False) for _ in range(num_heads)
        )
        for block in self.blocks:
            nn.init.zeros_(block.weight)
            nn.init.zeros_(block.bias)

    @classmethod
    def from_target(cls, target: Transformer, num_heads: int) -> "MedusaHeads":
        """Heads for ``target`` on its device and in its dtype, each output
        matrix a copy of its output head."""
        w = target.lm_head.weight
        heads = cls(target.config.dim, num_heads, target.config.vocab_size).to(
            device=w.device, dtype=w.dtype
        )
        with torch.no_grad():
            for out in heads.out:
                out.weight.copy_(target.lm_head.weight)
        return heads

    @property
    def num_heads(self) -> int:
        return len(self.blocks)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden [B, T, dim]`` (the target's last hidden states) -> logits
        ``[B, T, num_heads, V]``."""
        return torch.stack(
            [
                out(hidden + nn.functional.silu(block(hidden)))
                for block, out in zip(self.blocks, self.out)
            ],
            dim=2,
        )


class MTPModule(nn.Module):
    """A DeepSeek-V3 multi-token-prediction module of depth 1, sharing the main
    model's embedding and output head.

    At position ``i`` it sees the main model's last hidden state ``h_i`` and the
    embedding of the next token ``t_{i+1}``, and predicts ``t_{i+2}``:

        h'_i = W [RMSNorm(h_i); RMSNorm(Emb(t_{i+1}))]  (concat, 2 dim -> dim)
        o_i  = TransformerBlock(h'_{<=i})                (causal, own KV cache)
        logits_i = OutHead(RMSNorm(o_i))

    Args:
        config (Config): the main model's config (the block has the same shape).

    Examples:
        >>> from kernels.models import PRESETS, Transformer
        >>> model = Transformer(PRESETS["cpu-draft"])
        >>> mtp = MTPModule(model.config)
        >>> tokens = torch.tensor([[104, 105, 106]])
        >>> logits, h = model(tokens, return_hidden=True)
        >>> # predicts tokens 3 and 4
        >>> mtp(model, h[:, :2], tokens[:, 1:])[0].shape
        torch.Size([1, 2, 256])
    """

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.norm_hidden, self.norm_embed = (
            RMSNorm(config.dim),
            RMSNorm(config.dim),
        )
        self.proj = nn.Linear(2 * config.dim, config.dim, bias=False)
        self.block = Block(config)
        self.norm_out = RMSNorm(config.dim)
        nn.init.normal_(self.proj.weight, std=0.02)

    def new_cache(self, batch_size: int = 1) -> KVCache:
        """An empty one-layer `KVCache` for the module's block."""
        c, w = self.config, self.proj.weight
        return KVCache(
            1,
            batch_size,
            c.n_heads,
            c.max_seq_len,
            c.head_dim,
            w.device,
            w.dtype,
        )

    def forward(
        self,
        model: Transformer,
        hidden: torch.Tensor,
        next_tokens: torch.Tensor,
        cache: KVCache | None = None,
    ):
        """Predict the token after next.

        Args:
            model (Transformer): the main model (embedding, RoPE tables and
                output head are shared).
            hidden (torch.Tensor): ``[B, T, dim]``, the main model's hidden
                states ``h_i``.
            next_tokens (torch.Tensor): int64 ``[B, T]``, the tokens
                ``t_{i+1}``.
            cache (KVCache, optional): the module's own cache (positions ``i``
                already fed).

        Returns:
            ``(logits [B, T, V], out [B, T, dim])``: predictions of ``t_{i+2}``,
            and the normalised output states (what a chained draft feeds back in
            place of ``h``).
        """
        start = cache.length if cache is not None else 0
        positions = torch.arange(
            start, start + hidden.shape[1], device=hidden.device
        )
        cos, sin = model.rope(positions)
        x = self.proj(
            torch.cat(
                [
                    self.norm_hidden(hidden),
                    self.norm_embed(model.embed(next_tokens)),
                ],
                dim=-1,
            )
        )
        x = self.block(x, cos, sin, cache, 0)
        if cache is not None:
            cache.advance(hidden.shape[1])
        out = self.norm_out(x)
        return model.lm_head(out), out
