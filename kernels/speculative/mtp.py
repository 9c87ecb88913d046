"""Multi-token prediction (DeepSeek-V3 style): one sequential MTP module, then self-speculation.

The module sees, at position ``i``, the main model's last hidden state ``h_i`` and the embedding
of the next token ``t_{i+1}``, and predicts ``t_{i+2}``:

    h'_i = W [RMSNorm(h_i); RMSNorm(Emb(t_{i+1}))]        (concatenate, project 2 dim -> dim)
    o_i  = TransformerBlock(h'_{<=i})                      (causal, its own KV cache)
    logits_i = OutHead(RMSNorm(o_i))                       (embedding and output head shared)

Trained beside the main loss (``loss = main + lambda * mtp``, `train.train_mtp`), it densifies
the training signal; at inference it is a free draft for the main model (`mtp_generate`): one
token per step, or ``k`` chained, feeding its own output state in place of ``h`` (as EAGLE does).
"""
from __future__ import annotations

import time

import torch
from torch import nn

from .decode import DecodeStats, check_decode_args, check_draft_count, prefill, timed, verify_step
from .model import Block, Config, KVCache, RMSNorm
from .sampling import logits_to_probs, sample

__all__ = ["MTPModule", "mtp_generate"]


class MTPModule(nn.Module):
    """A DeepSeek-V3 MTP module for depth 1, sharing the main model's embedding and output head.

    Args:
        config (Config): the main model's config (the block has the same shape).

    Examples:
        >>> from kernels.speculative import Transformer, PRESETS
        >>> model = Transformer(PRESETS["cpu-draft"])
        >>> mtp = MTPModule(model.config)
        >>> logits, h = model(torch.tensor([[104, 105, 106]]), return_hidden=True)
        >>> mtp(model, h[:, :2], torch.tensor([[105, 106]]))[0].shape  # predicts tokens 3 and 4
        torch.Size([1, 2, 256])
    """

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.norm_hidden, self.norm_embed = RMSNorm(config.dim), RMSNorm(config.dim)
        self.proj = nn.Linear(2 * config.dim, config.dim, bias=False)
        self.block = Block(config)
        self.norm_out = RMSNorm(config.dim)
        nn.init.normal_(self.proj.weight, std=0.02)

    def new_cache(self, batch_size: int = 1) -> KVCache:
        c, w = self.config, self.proj.weight
        return KVCache(1, batch_size, c.n_heads, c.max_seq_len, c.head_dim, w.device, w.dtype)

    def forward(self, model, hidden: torch.Tensor, next_tokens: torch.Tensor, cache: KVCache | None = None):
        """Predict the token after next.

        Args:
            model (Transformer): the main model (embedding, RoPE tables and output head are shared).
            hidden (torch.Tensor): ``[B, T, dim]``, the main model's hidden states ``h_i``.
            next_tokens (torch.Tensor): int64 ``[B, T]``, the tokens ``t_{i+1}``.
            cache (KVCache, optional): the module's own cache (positions ``i`` already fed).

        Returns:
            ``(logits [B, T, V], out [B, T, dim])``: predictions of ``t_{i+2}``, and the normalised
            output states (what a chained draft feeds back in place of ``h``).
        """
        start = cache.length if cache is not None else 0
        positions = torch.arange(start, start + hidden.shape[1], device=hidden.device)
        cos, sin = model.rope(positions)
        x = self.proj(torch.cat([self.norm_hidden(hidden), self.norm_embed(model.embed(next_tokens))], dim=-1))
        x = self.block(x, cos, sin, cache, 0)
        if cache is not None:
            cache.advance(hidden.shape[1])
        out = self.norm_out(x)
        return model.lm_head(out), out


@torch.no_grad()
def mtp_generate(model, mtp: MTPModule, prompt: torch.Tensor, max_new_tokens: int, num_draft_tokens: int = 1,
                 temperature: float = 1.0, generator: torch.Generator | None = None):
    """Self-speculative decoding: the MTP module drafts, the main model verifies.

    The main model's forward gives, besides its logits, the hidden states that the MTP module
    needs; the module's cache holds one entry per pair ``(h_i, t_{i+1})`` already fed. Each step:
    the module catches up on the pairs of the tokens accepted last step and drafts one token;
    with ``num_draft_tokens > 1`` it chains, feeding its own output state and its draft back in.
    The main model then verifies as in `speculative_generate` (exact speculative sampling;
    greedy at ``temperature=0``), and the module's cache drops its chained, unverified entries.
    Batch 1.

    Args:
        model (Transformer): the main model.
        mtp (MTPModule): its MTP module (trained with it, `train.train_mtp`).
        prompt (torch.Tensor): integer ``[T]``.
        max_new_tokens (int): tokens to return.
        num_draft_tokens (int): ``k >= 1`` drafts per step. Default 1 (what the module was trained for).
        temperature (float): 0 is greedy. Default 1.
        generator (torch.Generator, optional): random source.

    Returns:
        ``(tokens [max_new_tokens], DecodeStats)``.
    """
    check_draft_count(num_draft_tokens)
    check_decode_args(model, prompt, max_new_tokens, temperature, generator, extra=num_draft_tokens)
    stats, device = DecodeStats(), prompt.device
    start_time = time.perf_counter()
    cache, mtp_cache = model.new_cache(), mtp.new_cache()
    tokens = prompt.long()
    out = prefill(model, cache, tokens, return_hidden=True)
    # pending pairs (h_i, t_{i+1}) not yet fed to the module: hidden states of tokens[j:j+n]
    pending = out[1] if out is not None else tokens.new_zeros(0, model.config.dim, dtype=cache.k.dtype)
    while len(tokens) - len(prompt) < max_new_tokens:
        with timed(stats, "draft_s", device):
            fed = mtp_cache.length  # pairs (h_i, t_{i+1}) for i < fed are in the module's cache
            drafts, probs = [], []
            h, nxt = pending, tokens[fed + 1:fed + 1 + len(pending)]
            for _ in range(num_draft_tokens):
                if len(h) == 0:  # a one-token prompt: no hidden state to draft from yet
                    break
                logits, o = mtp(model, h[None], nxt[None], mtp_cache)
                p = logits_to_probs(logits[0, -1], temperature)
                drafts.append(sample(p, generator))
                probs.append(p)
                h, nxt = o[0, -1:], drafts[-1].view(1)  # chain: the module's output stands in for h
            mtp_cache.truncate(fed + len(pending))  # drop chained entries: only verified pairs stay
        drafts = torch.stack(drafts) if drafts else tokens.new_zeros(0)
        probs = torch.stack(probs) if probs else torch.zeros(0, model.config.vocab_size, device=device)
        emitted, hidden = verify_step(model, cache, tokens, drafts, probs, temperature, generator, stats,
                                      return_hidden=True)
        # hidden states of tokens[-1] and the accepted drafts: pairs for the next step
        pending = hidden[:len(emitted)]
        tokens = torch.cat([tokens, emitted])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats.wall_s = time.perf_counter() - start_time
    stats.new_tokens = len(tokens) - len(prompt)
    return tokens[len(prompt):len(prompt) + max_new_tokens], stats
