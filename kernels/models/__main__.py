"""``python -m kernels.speculative [cpu|gpu]``: train (or load from the cache) the models of the
speculative-decoding articles, then print one greedy continuation of the target."""
import sys

import torch

from .decode import generate
from .train import load_models

size = sys.argv[1] if len(sys.argv) > 1 else "cpu"
models = load_models(size, device="cpu" if size == "cpu" else None)
prompt = torch.tensor(list(b"    def __init__(self"), device=models["target"].lm_head.weight.device)
print(bytes(generate(models["target"], prompt, 60, temperature=0).tolist()).decode(errors="replace"))
