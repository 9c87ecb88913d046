"""``python -m kernels.models [cpu|gpu]``: train (or load from the cache) the target of the
speculative-decoding articles, then print one greedy continuation."""

import sys

import torch

from ..speculative import generate
from .train import load_models

size = sys.argv[1] if len(sys.argv) > 1 else "cpu"
target = load_models(
    size, device="cpu" if size == "cpu" else None, models=("target",)
)["target"]
prompt = torch.tensor(
    list(b"    def __init__(self"), device=target.lm_head.weight.device
)
print(
    bytes(generate(target, prompt, 60, temperature=0).tolist()).decode(
        errors="replace"
    )
)
