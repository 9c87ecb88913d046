"""Speculative decoding: exact draft-and-verify, Medusa trees with tree attention, multi-token prediction.

The ops, written against a small model interface and never against a concrete model:

* `sampling`: `logits_to_probs`, `sample`, the accept/reject step `verify_draft` (exact) and
  Medusa's `typical_accept`.
* `interface`: the protocols the loops call, `LanguageModel` (logits and hidden states of new
  tokens over a KV cache that can roll back), `Drafter` (Medusa heads) and `MultiTokenDrafter`.
* `decode`: `generate` (plain) and `speculative_generate` (draft model), with `DecodeStats`.
* `medusa`: candidate trees (`build_tree`), their acceptance (`verify_tree`, `typical_tree`) and
  `medusa_generate`; `tree_attention` (a Triton kernel beside `tree_attention_ref`) verifies a
  tree in one forward.
* `mtp`: self-speculative `mtp_generate`.

The small models the articles run these on live apart, in `kernels.models`, which imports this
package (never the other way round) and is not loaded by ``import kernels``.
"""

from .decode import DecodeStats, generate, speculative_generate
from .interface import Cache, Drafter, LanguageModel, MultiTokenDrafter
from .medusa import (
    DEFAULT_TREE,
    Tree,
    build_tree,
    medusa_generate,
    tree_candidates,
    typical_tree,
    verify_tree,
)
from .mtp import mtp_generate
from .sampling import (
    logits_to_probs,
    residual_probs,
    sample,
    typical_accept,
    typical_mask,
    verify_draft,
)
from .tree_attention import tree_attention, tree_attention_ref

__all__ = [
    "verify_draft",
    "typical_accept",
    "typical_mask",
    "logits_to_probs",
    "sample",
    "residual_probs",
    "LanguageModel",
    "Cache",
    "Drafter",
    "MultiTokenDrafter",
    "generate",
    "speculative_generate",
    "DecodeStats",
    "Tree",
    "build_tree",
    "DEFAULT_TREE",
    "tree_candidates",
    "verify_tree",
    "typical_tree",
    "medusa_generate",
    "tree_attention",
    "tree_attention_ref",
    "mtp_generate",
]
