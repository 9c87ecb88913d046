"""The small byte-level language models that the speculative-decoding articles run on.

Not ops: a test bed. A Llama-style `Transformer` with a `KVCache` that rolls back, the
drafters that read its hidden states (`MedusaHeads`, `MTPModule`), training on the standard
library's sources (`corpus`, `train`) and a checkpoint cache (`load_models`). This package
imports the ops (`kernels.flash_attention`, `kernels.speculative.tree_attention`); the ops never
import it, and ``import kernels`` does not load it.

    from kernels.models import load_models
    models = load_models("cpu", models=("target", "draft"))   # trained on first use, then cached
"""

from .corpus import get_batch, load_corpus, split, stdlib_files
from .heads import MedusaHeads, MTPModule
from .train import (
    MODELS,
    TRAINING,
    TrainConfig,
    cache_dir,
    cached,
    load_models,
    train_lm,
    train_medusa_heads,
    train_mtp,
)
from .transformer import PRESETS, Config, KVCache, Transformer

__all__ = [
    "Config",
    "PRESETS",
    "KVCache",
    "Transformer",
    "MedusaHeads",
    "MTPModule",
    "load_corpus",
    "split",
    "get_batch",
    "stdlib_files",
    "TrainConfig",
    "TRAINING",
    "MODELS",
    "train_lm",
    "train_medusa_heads",
    "train_mtp",
    "cache_dir",
    "cached",
    "load_models",
]
