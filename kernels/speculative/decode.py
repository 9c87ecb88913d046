"""Decoding loops: plain autoregressive decoding, and speculative decoding with
a draft model.

Both keep one invariant: ``tokens`` is the whole sequence so far (prompt and
generated), and a model's KV cache holds the first ``cache.length`` of them.
Feeding a model means feeding ``tokens[cache.length:]``; the last token is fed
by the step that predicts the next one. After a rejection, rolling back is
setting ``cache.length`` to the number of tokens that are still right.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .._checks import check_tensor
from .interface import LanguageModel
from .sampling import (
    _check_generator,
    _check_temperature,
    accept_reject,
    logits_to_probs,
    sample,
)

__all__ = ["generate", "speculative_generate", "DecodeStats"]


@dataclass
class DecodeStats:
    """What a speculative loop did.

    Attributes:
        new_tokens: tokens emitted by the loop (the last step may emit a few
            more than were asked for; the output drops them, the statistics
            count them).
        target_forwards: target forwards in the loop (verification steps; the
            prefill of the prompt is not counted).
        drafted: draft tokens proposed (for a tree: its depth, once per step).
        accepted: draft tokens accepted.
        draft_s, target_s, wall_s: seconds spent in the draft's forwards and
            sampling, in the target's forwards, and in total (verification and
            bookkeeping are the rest). On CUDA each phase ends with a
            synchronisation so that the split is honest.
        accepted_lengths: draft tokens accepted at each step, in order.

    ``acceptance_rate`` is ``accepted / drafted``: for ``k > 1`` it counts the
    drafts behind a rejection, which were never tested, so it lies below the
    per-token acceptance probability ``alpha`` of Leviathan et al.; estimate
    ``alpha`` at ``k = 1`` or from ``accepted_lengths`` (in expectation
    ``(alpha - alpha^(k+1)) / (1 - alpha)`` per step).
    """

    new_tokens: int = 0
    target_forwards: int = 0
    drafted: int = 0
    accepted: int = 0
    draft_s: float = 0.0
    target_s: float = 0.0
    wall_s: float = 0.0
    accepted_lengths: list = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        """Accepted over proposed draft tokens (0 when nothing was proposed)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_target_forward(self) -> float:
        """New tokens per verification forward: ``(1 - a^(k+1)) / (1 - a)`` in
        expectation."""
        return (
            self.new_tokens / self.target_forwards
            if self.target_forwards
            else 0.0
        )


@contextmanager
def timed(stats: DecodeStats, field: str, device: torch.device):
    """Add the seconds spent in the block to ``stats.<field>`` (synchronising
    CUDA at both ends)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    setattr(stats, field, getattr(stats, field) + time.perf_counter() - start)


def check_draft_count(num_draft_tokens) -> None:
    """``num_draft_tokens`` must be an int ``>= 1``."""
    if (
        isinstance(num_draft_tokens, bool)
        or not isinstance(num_draft_tokens, int)
        or num_draft_tokens < 1
    ):
        raise ValueError(
            f"num_draft_tokens must be an int >= 1, got {num_draft_tokens!r}"
        )


def check_decode_args(
    model, prompt, max_new_tokens, temperature, generator, extra: int = 0
) -> None:
    """Validation shared by every decoding loop; ``extra`` = positions a step
    may add beyond the tokens."""
    check_tensor("prompt", prompt, 1, "[T] (batch 1)")
    if prompt.is_floating_point() or prompt.dtype == torch.bool:
        raise TypeError(
            f"prompt must hold integer token ids, got {prompt.dtype}"
        )
    if len(prompt) == 0:
        raise ValueError("prompt must hold at least one token")
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 1
    ):
        raise ValueError(
            f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}"
        )
    _check_temperature(temperature)
    _check_generator(generator)
    V, limit = model.vocab_size, model.max_seq_len
    if prompt.min() < 0 or prompt.max() >= V:
        raise ValueError(f"prompt tokens must lie in [0, {V})")
    if len(prompt) + max_new_tokens + extra > limit:
        raise ValueError(
            f"prompt ({len(prompt)}) + max_new_tokens ({max_new_tokens}) + "
            f"lookahead ({extra}) = {len(prompt) + max_new_tokens + extra} "
            f"tokens exceeds the model's context, max_seq_len={limit} (the "
            "length it was trained on)"
        )


def feed(
    model,
    cache,
    tokens: torch.Tensor,
    extra: torch.Tensor | None = None,
    **kwargs,
):
    """Run ``model`` on the tokens its cache lacks (``tokens[cache.length:]``),
    then ``extra``.

    Returns the logits of those positions ``[n, V]`` (and hidden states when
    asked).
    """
    new = tokens[cache.length :]
    if extra is not None:
        new = torch.cat([new, extra])
    out = model(new[None], cache, **kwargs)
    return tuple(x[0] for x in out) if isinstance(out, tuple) else out[0]


def prefill(model, cache, tokens: torch.Tensor, **kwargs):
    """Feed all tokens but the last (the first step feeds it); returns what
    `feed` returns, or None."""
    if len(tokens) > 1:
        return feed(model, cache, tokens[:-1], **kwargs)
    return None


@torch.no_grad()
def generate(
    model: LanguageModel,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Plain autoregressive decoding with a KV cache: one forward per token.

    Args:
        model (LanguageModel): the model (see `kernels.speculative.interface`).
        prompt (torch.Tensor): integer ``[T]`` (batch 1), on the model's device.
        max_new_tokens (int): how many tokens to generate.
        temperature (float): 0 for greedy decoding. Default 1.
        generator (torch.Generator, optional): random source on the model's
            device.

    Returns:
        tokens (torch.Tensor): int64 ``[max_new_tokens]``, the generated tokens
        only.

    Examples:
        >>> from kernels.models import PRESETS, Transformer
        >>> model = Transformer(PRESETS["cpu-draft"])
        >>> generate(model, torch.tensor([104, 105]), 5, temperature=0).shape
        torch.Size([5])
    """
    check_decode_args(model, prompt, max_new_tokens, temperature, generator)
    cache = model.new_cache()
    tokens = prompt.long()
    prefill(model, cache, tokens)
    for _ in range(max_new_tokens):
        logits = feed(model, cache, tokens)[-1]  # [V]
        nxt = sample(logits_to_probs(logits, temperature), generator)
        tokens = torch.cat([tokens, nxt.view(1)])
    return tokens[len(prompt) :]


def draft_step(draft, cache, tokens, k: int, temperature: float, generator):
    """Sample ``k`` tokens from the draft model, one forward each (the first
    also catches up).

    Returns ``(drafts [k], probs [k, V])``: the tokens and the distributions
    they came from. The last draft token is not fed, so the draft cache ends
    ``k - 1`` positions past ``tokens``.
    """
    drafts, probs = [], []
    for i in range(k):
        logits = feed(
            draft, cache, tokens, torch.stack(drafts[-1:]) if drafts else None
        )[-1]
        p = logits_to_probs(logits, temperature)
        drafts.append(sample(p, generator))
        probs.append(p)
    return torch.stack(drafts), torch.stack(probs)


def verify_step(
    target,
    cache,
    tokens,
    drafts,
    draft_probs,
    temperature,
    generator,
    stats,
    return_hidden=False,
):
    """One target forward over the pending token and the drafts, then
    accept/reject.

    Returns the emitted tokens (accepted drafts + one), and the target's hidden
    states over the fed positions when asked. The target's cache is rolled back
    to the tokens that stay: everything fed except the rejected drafts (the
    emitted last token is not fed yet).
    """
    with timed(stats, "target_s", tokens.device):
        out = feed(target, cache, tokens, drafts, return_hidden=return_hidden)
    logits, hidden = out if return_hidden else (out, None)
    # [k+1, V]
    target_probs = logits_to_probs(logits[-(len(drafts) + 1) :], temperature)
    # the rule of verify_draft
    emitted = accept_reject(drafts, draft_probs, target_probs, generator)
    # fed: tokens[-1] and k drafts; keep tokens[-1] and the n = len(emitted) - 1
    # accepted ones
    cache.truncate(len(tokens) + len(emitted) - 1)
    stats.target_forwards += 1
    stats.drafted += len(drafts)
    stats.accepted += len(emitted) - 1
    stats.accepted_lengths.append(len(emitted) - 1)
    return emitted, hidden


@torch.no_grad()
def speculative_generate(
    target: LanguageModel,
    draft: LanguageModel,
    prompt: torch.Tensor,
    max_new_tokens: int,
    num_draft_tokens: int = 4,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
):
    """Speculative decoding: the draft proposes ``k`` tokens, one target forward
    verifies them.

    Each step: the draft samples ``k = num_draft_tokens`` tokens
    autoregressively (``k`` cheap forwards); the target scores the pending token
    and the ``k`` drafts in one forward (``k + 1`` distributions);
    `verify_draft` accepts a prefix and adds one token, so a step emits
    ``1..k+1`` tokens, distributed exactly as the target's own samples. Both KV
    caches are then rolled back to drop the rejected drafts. With
    ``temperature=0`` the output is the target's greedy decoding, token for
    token.

    Batch 1 only (``prompt`` is ``[T]``): in a batch every sequence accepts a
    different number of tokens, so caches would need per-sequence lengths
    (ragged rollback) or padding that wastes the gain; this loop does not
    attempt it.

    Args:
        target (LanguageModel): the model whose distribution is sampled.
        draft (LanguageModel): the cheap proposer; same vocabulary.
        prompt (torch.Tensor): integer ``[T]`` on the models' device.
        max_new_tokens (int): tokens to return (the last step's surplus is
            dropped).
        num_draft_tokens (int): ``k >= 1``. Default 4.
        temperature (float): for both models; 0 is greedy. Default 1.
        generator (torch.Generator, optional): random source on the models'
            device.

    Returns:
        ``(tokens, stats)``: int64 ``[max_new_tokens]`` and a `DecodeStats`
        (acceptance rate, tokens per target forward, draft/target time split).

    Raises:
        TypeError, ValueError: bad prompt, counts, temperature or generator;
            vocabularies that differ; a sequence that would outgrow a model's
            ``max_seq_len`` (its trained context).

    Examples:
        >>> from kernels.models import PRESETS, Transformer
        >>> target = Transformer(PRESETS["cpu-target"])
        >>> draft = Transformer(PRESETS["cpu-draft"])
        >>> prompt = torch.tensor([104, 105])
        >>> tokens, stats = speculative_generate(
        ...     target, draft, prompt, 8, temperature=0
        ... )
        >>> torch.equal(tokens, generate(target, prompt, 8, temperature=0))
        True
    """
    check_draft_count(num_draft_tokens)
    for model in (target, draft):
        check_decode_args(
            model,
            prompt,
            max_new_tokens,
            temperature,
            generator,
            extra=num_draft_tokens,
        )
    if target.vocab_size != draft.vocab_size:
        raise ValueError(
            "target and draft must share a vocabulary, got sizes "
            f"{target.vocab_size} and {draft.vocab_size}"
        )
    stats, device = DecodeStats(), prompt.device
    start = time.perf_counter()
    t_cache, d_cache = target.new_cache(), draft.new_cache()
    tokens = prompt.long()
    prefill(target, t_cache, tokens)
    prefill(draft, d_cache, tokens)
    while len(tokens) - len(prompt) < max_new_tokens:
        with timed(stats, "draft_s", device):
            drafts, draft_probs = draft_step(
                draft, d_cache, tokens, num_draft_tokens, temperature, generator
            )
        emitted, _ = verify_step(
            target,
            t_cache,
            tokens,
            drafts,
            draft_probs,
            temperature,
            generator,
            stats,
        )
        # The draft fed tokens[-1] and drafts[:k-1]; those that were accepted
        # stay in its cache.
        d_cache.truncate(min(d_cache.length, len(tokens) + len(emitted) - 1))
        tokens = torch.cat([tokens, emitted])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats.wall_s = time.perf_counter() - start
    stats.new_tokens = len(tokens) - len(prompt)
    return tokens[len(prompt) : len(prompt) + max_new_tokens], stats
