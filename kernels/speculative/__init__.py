"""Speculative decoding: exact draft-and-verify, Medusa heads with tree attention, multi-token prediction.

* `sampling`: `logits_to_probs`, `sample`, the accept/reject step `verify_draft` (exact) and
  Medusa's `typical_accept`.
* `model`: a small byte-level Transformer with a KV cache that rolls back (`Transformer`, `Config`).
* `decode`: `generate` (plain) and `speculative_generate` (draft model), with `DecodeStats`.
* `medusa`: `MedusaHeads`, candidate trees (`build_tree`), `medusa_generate`; `tree_attention`
  (Triton kernel beside `tree_attention_ref`) verifies a tree in one forward.
* `mtp`: a DeepSeek-V3-style `MTPModule` and self-speculative `mtp_generate`.
* `train`: training on the standard library's sources, with cached checkpoints (`load_models`).
"""
from .decode import DecodeStats, generate, speculative_generate
from .medusa import DEFAULT_TREE, MedusaHeads, Tree, build_tree, medusa_generate, typical_tree, verify_tree
from .model import PRESETS, Config, KVCache, Transformer
from .mtp import MTPModule, mtp_generate
from .naive import tree_attention_ref
from .sampling import logits_to_probs, residual_probs, sample, typical_accept, typical_mask, verify_draft
from .train import TRAINING, TrainConfig, load_corpus, load_models, train_lm, train_medusa_heads, train_mtp
from .tree_attention import tree_attention

__all__ = [
    "verify_draft", "typical_accept", "typical_mask", "logits_to_probs", "sample", "residual_probs",
    "Config", "PRESETS", "KVCache", "Transformer",
    "generate", "speculative_generate", "DecodeStats",
    "MedusaHeads", "Tree", "build_tree", "DEFAULT_TREE", "verify_tree", "typical_tree", "medusa_generate",
    "tree_attention", "tree_attention_ref",
    "MTPModule", "mtp_generate",
    "TrainConfig", "TRAINING", "load_corpus", "train_lm", "train_medusa_heads", "train_mtp", "load_models",
]
