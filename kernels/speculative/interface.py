"""The small model interface the decoding loops are written against.

The loops in `kernels.speculative` never import a model class: they call any object with the
methods below. `kernels.models.Transformer` (with its `KVCache`), `kernels.models.MedusaHeads`
and `kernels.models.MTPModule` are one implementation, used by the articles.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["Cache", "LanguageModel", "Drafter", "MultiTokenDrafter"]


@runtime_checkable
class Cache(Protocol):
    """A KV cache that holds the first ``length`` tokens fed to its model and can forget some."""

    length: int

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` positions."""

    def keep(self, start: int, offsets) -> None:
        """Keep positions ``start + offsets[i]`` as ``start + i`` (a tree's accepted path), drop the rest."""


@runtime_checkable
class LanguageModel(Protocol):
    """A causal language model with a KV cache.

    Attributes:
        vocab_size (int): ``V``, the number of token ids.
        max_seq_len (int): the longest sequence the model takes (the context it was trained on);
            the loops refuse a prompt and a number of new tokens that would exceed it.
    """

    vocab_size: int
    max_seq_len: int

    def new_cache(self) -> Cache:
        """An empty cache for one sequence (batch 1)."""

    def __call__(
        self,
        tokens: torch.Tensor,
        cache: Cache | None = None,
        tree_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_hidden: bool = False,
    ):
        """Logits ``[B, T, V]`` of the new ``tokens [B, T]`` (appended to ``cache``), and the last
        hidden states ``[B, T, dim]`` when ``return_hidden``. ``tree_mask [T, T]`` (bool) says which
        new token sees which (default causal), ``position_ids [T]`` their positions."""


@runtime_checkable
class Drafter(Protocol):
    """Medusa heads: from the target's last hidden states, guesses of the tokens 2, 3, ... ahead."""

    num_heads: int

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden [B, T, dim]`` -> logits ``[B, T, num_heads, V]``; head ``i`` predicts position ``t + 2 + i``."""


@runtime_checkable
class MultiTokenDrafter(Protocol):
    """A multi-token-prediction module that reads its main model's hidden states."""

    def new_cache(self) -> Cache:
        """An empty cache for one sequence."""

    def __call__(
        self,
        model: LanguageModel,
        hidden: torch.Tensor,
        next_tokens: torch.Tensor,
        cache: Cache | None = None,
    ):
        """``(logits [B, T, V], out [B, T, dim])``: predictions of ``t_{i+2}`` from the pairs
        ``(hidden [B, T, dim] = h_i, next_tokens [B, T] = t_{i+1})``, and the output states a chained
        draft feeds back in place of ``h``."""
