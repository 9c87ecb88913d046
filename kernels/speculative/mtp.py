"""Multi-token prediction (DeepSeek-V3 style): self-speculation with one
sequential MTP module.

The module (any `MultiTokenDrafter`; `kernels.models.MTPModule` is one) sees, at
position ``i``, the main model's last hidden state ``h_i`` and the embedding of
the next token ``t_{i+1}``, and predicts ``t_{i+2}``:

    h'_i = W [RMSNorm(h_i); RMSNorm(Emb(t_{i+1}))]  (concatenate, 2 dim -> dim)
    o_i  = TransformerBlock(h'_{<=i})                (causal, its own KV cache)
    logits_i = OutHead(RMSNorm(o_i))                 (embedding, OutHead shared)

Trained beside the main loss (``loss = main + lambda * mtp``,
`kernels.models.train_mtp`), it densifies the training signal; at inference it
is a free draft for the main model (`mtp_generate`): one token per step, or
``k`` chained, feeding its own output state in place of ``h`` (as EAGLE does).
"""

from __future__ import annotations

import time

import torch

from .decode import (
    DecodeStats,
    check_decode_args,
    check_draft_count,
    prefill,
    timed,
    verify_step,
)
from .interface import LanguageModel, MultiTokenDrafter
from .sampling import logits_to_probs, sample

__all__ = ["mtp_generate"]


@torch.no_grad()
def mtp_generate(
    model: LanguageModel,
    mtp: MultiTokenDrafter,
    prompt: torch.Tensor,
    max_new_tokens: int,
    num_draft_tokens: int = 1,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
):
    """Self-speculative decoding: the MTP module drafts, the main model
    verifies.

    The main model's forward gives, besides its logits, the hidden states that
    the MTP module needs; the module's cache holds one entry per pair
    ``(h_i, t_{i+1})`` already fed. Each step: the module catches up on the
    pairs of the tokens accepted last step and drafts one token; with
    ``num_draft_tokens > 1`` it chains, feeding its own output state and its
    draft back in. The main model then verifies as in `speculative_generate`
    (exact speculative sampling; greedy at ``temperature=0``), and the module's
    cache drops its chained, unverified entries. Batch 1.

    Args:
        model (LanguageModel): the main model.
        mtp (MultiTokenDrafter): its MTP module (trained with it, e.g.
            `kernels.models.train_mtp`).
        prompt (torch.Tensor): integer ``[T]``.
        max_new_tokens (int): tokens to return.
        num_draft_tokens (int): ``k >= 1`` drafts per step. Default 1 (what the
            module was trained for).
        temperature (float): 0 is greedy. Default 1.
        generator (torch.Generator, optional): random source.

    Returns:
        ``(tokens [max_new_tokens], DecodeStats)``.
    """
    check_draft_count(num_draft_tokens)
    check_decode_args(
        model,
        prompt,
        max_new_tokens,
        temperature,
        generator,
        extra=num_draft_tokens,
    )
    stats, device = DecodeStats(), prompt.device
    start_time = time.perf_counter()
    cache, mtp_cache = model.new_cache(), mtp.new_cache()
    tokens = prompt.long()
    out = prefill(model, cache, tokens, return_hidden=True)
    # pending pairs (h_i, t_{i+1}) not yet fed to the module: hidden states of
    # tokens[j:j+n]
    # None: a one-token prompt, no hidden state yet
    pending = out[1] if out is not None else None
    while len(tokens) - len(prompt) < max_new_tokens:
        with timed(stats, "draft_s", device):
            # pairs (h_i, t_{i+1}) for i < fed are in the module's cache
            fed = mtp_cache.length
            drafts, probs = [], []
            h = pending
            nxt = (
                tokens[fed + 1 : fed + 1 + len(pending)]
                if pending is not None
                else None
            )
            for _ in range(num_draft_tokens):
                # a one-token prompt: no hidden state to draft from yet
                if h is None:
                    break
                logits, o = mtp(model, h[None], nxt[None], mtp_cache)
                p = logits_to_probs(logits[0, -1], temperature)
                drafts.append(sample(p, generator))
                probs.append(p)
                h, nxt = (
                    o[0, -1:],
                    drafts[-1].view(1),
                )  # chain: the module's output stands in for h
            # drop the chained entries: only verified pairs stay
            mtp_cache.truncate(
                fed + (len(pending) if pending is not None else 0)
            )
        drafts = torch.stack(drafts) if drafts else tokens.new_zeros(0)
        probs = (
            torch.stack(probs)
            if probs
            else torch.zeros(0, model.vocab_size, device=device)
        )
        emitted, hidden = verify_step(
            model,
            cache,
            tokens,
            drafts,
            probs,
            temperature,
            generator,
            stats,
            return_hidden=True,
        )
        # hidden states of tokens[-1] and the accepted drafts: pairs for the
        # next step
        pending = hidden[: len(emitted)]
        tokens = torch.cat([tokens, emitted])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats.wall_s = time.perf_counter() - start_time
    stats.new_tokens = len(tokens) - len(prompt)
    return tokens[len(prompt) : len(prompt) + max_new_tokens], stats
