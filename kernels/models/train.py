"""Training the small models on bytes of Python's own standard library, with a checkpoint cache.

Every machine with Python has the text: the ``.py`` files under ``sysconfig.get_paths()["stdlib"]``
(sorted, ``site-packages`` excluded), read as bytes. Training is seeded; a checkpoint is cached
under ``$KERNELS_CACHE`` (default ``~/.cache/kernels``), in ``speculative/``, keyed by everything
that decides the weights (kind, configs, hyperparameters, seed, step count, a hash of the corpus),
and rebuilt when missing. Weights never go into the repository.

    models = load_models("cpu")   # target, draft, Medusa heads, MTP model: trained once, then cached
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .medusa import MedusaHeads
from .model import PRESETS, Config, Transformer
from .mtp import MTPModule

__all__ = ["TrainConfig", "TRAINING", "load_corpus", "get_batch", "train_lm", "train_medusa_heads", "train_mtp",
           "cache_dir", "cached", "load_models"]


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run."""
    steps: int = 300
    batch_size: int = 8
    seq_len: int = 64
    lr: float = 3e-3
    seed: int = 0
    corpus_bytes: int = 2_000_000  # the first bytes of the sorted corpus


TRAINING = {
    "cpu": TrainConfig(steps=300, batch_size=8, seq_len=64, lr=3e-3, corpus_bytes=2_000_000),
    "gpu": TrainConfig(steps=4000, batch_size=32, seq_len=512, lr=1e-3, corpus_bytes=64_000_000),
}


# ----------------------------------------------------------------------------- data
def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files, sorted, without installed third-party packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py")
                  if not {"site-packages", "dist-packages"} & set(p.relative_to(root).parts))


@functools.lru_cache(maxsize=2)
def _read_corpus(max_bytes: int) -> tuple[bytes, str]:
    chunks, total = [], 0
    for path in stdlib_files():
        chunks.append(path.read_bytes())
        total += len(chunks[-1])
        if total >= max_bytes:
            break
    data = b"".join(chunks)[:max_bytes]
    return data, hashlib.sha256(data).hexdigest()


def load_corpus(max_bytes: int = 2_000_000) -> tuple[torch.Tensor, str]:
    """The first ``max_bytes`` bytes of the concatenated standard-library sources.

    Returns:
        ``(data, digest)``: uint8 ``[N]`` (a fresh tensor) and the sha256 of those bytes (part of
        checkpoint keys: another Python version has other sources, hence other weights).
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1024:
        raise ValueError(f"max_bytes must be an int >= 1024, got {max_bytes!r}")
    data, digest = _read_corpus(max_bytes)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), digest


def split(data: torch.Tensor, val_fraction: float = 0.05):
    """``(train, val)``: the last ``val_fraction`` of the bytes is held out."""
    n = int(len(data) * (1 - val_fraction))
    return data[:n], data[n:]


def get_batch(data: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator, device=None):
    """Random windows of ``seq_len + 1`` bytes: int64 ``[batch_size, seq_len + 1]`` on ``device``."""
    starts = torch.randint(len(data) - seq_len - 1, (batch_size,), generator=generator)
    windows = torch.stack([data[s:s + seq_len + 1] for s in starts.tolist()])
    return windows.long().to(device)


# ----------------------------------------------------------------------------- training loops
def _device(device) -> torch.device:
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


def _autocast(device: torch.device):
    """bfloat16 autocast on CUDA (the attention kernels take it), full float32 on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _cross_entropy(logits, targets):
    return nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _optimize(name: str, params, loss_fn, train: TrainConfig, data, device, verbose: bool):
    """AdamW with warmup and cosine decay; ``loss_fn(batch) -> (loss, {name: value})``. Returns the history."""
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=train.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, train.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, train.steps) / train.steps))))  # warmup, cosine to 10%
    g = torch.Generator().manual_seed(train.seed + 1)
    history, start, every = {}, time.perf_counter(), max(1, train.steps // 10)
    for step in range(train.steps):
        batch = get_batch(data, train.batch_size, train.seq_len, g, device)
        with _autocast(device):
            loss, parts = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        for key, value in parts.items():
            history.setdefault(key, []).append(value.item())
        if verbose and (step % every == 0 or step == train.steps - 1):
            shown = " ".join(f"{k} {v[-1]:.3f}" for k, v in history.items())
            print(f"[train {name}] step {step + 1}/{train.steps} {shown} ({time.perf_counter() - start:.1f}s)",
                  flush=True)
    return history


def train_lm(config: Config, train: TrainConfig = TRAINING["cpu"], device=None, verbose: bool = True):
    """Train a `Transformer` on next-byte prediction. Returns ``(model, history)``; history: ``{"loss": [...]}``."""
    device = _device(device)
    torch.manual_seed(train.seed)
    model = Transformer(config).to(device)
    data, _ = split(load_corpus(train.corpus_bytes)[0])

    def loss_fn(batch):
        loss = _cross_entropy(model(batch[:, :-1]), batch[:, 1:])
        return loss, {"loss": loss.detach()}

    history = _optimize(f"lm d{config.dim} L{config.n_layers}", model.parameters(), loss_fn, train, data, device,
                        verbose)
    return model.eval(), history


def train_medusa_heads(target: Transformer, num_heads: int = 4, train: TrainConfig = TRAINING["cpu"], device=None,
                       verbose: bool = True):
    """Train `MedusaHeads` on a frozen target (Medusa-1). Returns ``(heads, history)``.

    Head ``i`` learns the token ``i + 2`` positions ahead with cross-entropy; losses are summed
    with weights ``0.8 ** i`` as in Medusa. History: ``{"head0": [...], ...}``.
    """
    device = _device(device)
    torch.manual_seed(train.seed)
    target = target.to(device).eval().requires_grad_(False)
    heads = MedusaHeads(target.config.dim, num_heads).to(device)
    data, _ = split(load_corpus(train.corpus_bytes)[0])

    def loss_fn(batch):
        with torch.no_grad():
            _, hidden = target(batch[:, :-1], return_hidden=True)  # [B, T, dim]
        logits = heads(hidden, target)  # [B, T, heads, V]
        total, parts = 0.0, {}
        for i in range(num_heads):  # head i at position t predicts t + 2 + i = batch[:, t + 2 + i]
            loss = _cross_entropy(logits[:, :-(i + 1), i], batch[:, i + 2:])
            total = total + 0.8 ** i * loss
            parts[f"head{i}"] = loss.detach()
        return total, parts

    history = _optimize(f"medusa x{num_heads}", heads.parameters(), loss_fn, train, data, device, verbose)
    return heads.eval(), history


def train_mtp(config: Config, mtp_weight: float = 0.3, train: TrainConfig = TRAINING["cpu"], device=None,
              verbose: bool = True):
    """Train a `Transformer` and its `MTPModule` jointly: ``loss = main + mtp_weight * mtp``.

    The main loss predicts ``t_{i+1}`` from ``t_{<=i}``; the MTP loss predicts ``t_{i+2}`` from the
    main model's ``h_i`` and ``t_{i+1}``. Its gradient reaches the main model through ``h``.
    ``mtp_weight = 0`` trains the main model alone (the baseline of a loss comparison; the module
    then stays untrained and its loss is not computed). Returns ``(model, mtp, history)``;
    history: ``{"main": [...], "mtp": [...]}`` (``"main"`` only when ``mtp_weight = 0``).
    """
    device = _device(device)
    torch.manual_seed(train.seed)
    model = Transformer(config).to(device)
    mtp = MTPModule(config).to(device)
    data, _ = split(load_corpus(train.corpus_bytes)[0])

    def loss_fn(batch):
        x, y = batch[:, :-1], batch[:, 1:]  # inputs t_0..t_{T-1}, targets t_1..t_T
        logits, hidden = model(x, return_hidden=True)
        main = _cross_entropy(logits, y)
        if mtp_weight == 0:
            return main, {"main": main.detach()}
        mtp_logits, _ = mtp(model, hidden[:, :-1], x[:, 1:])  # pairs (h_i, t_{i+1}) -> t_{i+2}
        extra = _cross_entropy(mtp_logits, y[:, 1:])
        return main + mtp_weight * extra, {"main": main.detach(), "mtp": extra.detach()}

    params = list(model.parameters()) + list(mtp.parameters())
    history = _optimize(f"mtp lambda={mtp_weight}", params, loss_fn, train, data, device, verbose)
    return model.eval(), mtp.eval(), history


# ----------------------------------------------------------------------------- checkpoint cache
def cache_dir() -> Path:
    """``$KERNELS_CACHE/speculative`` (default ``~/.cache/kernels/speculative``)."""
    return Path(os.environ.get("KERNELS_CACHE", Path.home() / ".cache" / "kernels")) / "speculative"


def cached(kind: str, key: dict, build, verbose: bool = True) -> dict:
    """Load the checkpoint for ``(kind, key)``, or ``build()`` it (a dict for `torch.save`) and store it.

    The file name is ``<kind>-<sha256 of the key>.pt``; the file is written to a temporary name
    first, so an interrupted run never leaves a broken checkpoint.
    """
    digest = hashlib.sha256(json.dumps({"kind": kind, **key}, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"{kind}-{digest}.pt"
    if path.exists():
        if verbose:
            print(f"[cache] {kind}: loaded {path}", flush=True)
        return torch.load(path, map_location="cpu", weights_only=False)
    if verbose:
        print(f"[cache] {kind}: no checkpoint at {path}, training", flush=True)
    state = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return state


def _state(module):
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def load_models(size: str = "cpu", device=None, train: TrainConfig | None = None, num_heads: int = 4,
                mtp_weight: float = 0.3, verbose: bool = True) -> dict:
    """The models of the speculative-decoding articles, trained once per machine and cached.

    Args:
        size (str): ``"cpu"`` or ``"gpu"``: the presets ``<size>-target``, ``<size>-draft`` and
            the hyperparameters ``TRAINING[size]``.
        device: where to train and put the models (default CUDA if available).
        train (TrainConfig, optional): overrides ``TRAINING[size]`` (e.g. fewer steps).
        num_heads (int): Medusa heads. mtp_weight (float): lambda of the MTP run.

    Returns:
        dict with ``target``, ``draft`` (`Transformer`), ``heads`` (`MedusaHeads` on the target),
        ``mtp_model`` and ``mtp`` (main model and `MTPModule` trained jointly), ``baseline``
        (the same main model trained without MTP), all in eval mode on ``device``, and
        ``history``: the loss curves of every run.
    """
    if size not in ("cpu", "gpu"):
        raise ValueError(f"size must be 'cpu' or 'gpu', got {size!r}")
    device = _device(device)
    train = train or TRAINING[size]
    target_cfg, draft_cfg = PRESETS[f"{size}-target"], PRESETS[f"{size}-draft"]
    corpus = load_corpus(train.corpus_bytes)[1]
    base = {"train": asdict(train), "corpus": corpus}

    def lm(cfg):
        def build():
            model, history = train_lm(cfg, train, device, verbose)
            return {"model": _state(model), "history": history}
        return cached("lm", {**base, "config": asdict(cfg)}, build, verbose)

    def mtp_run(weight):
        def build():
            model, mtp, history = train_mtp(target_cfg, weight, train, device, verbose)
            return {"model": _state(model), "mtp": _state(mtp), "history": history}
        return cached("mtp", {**base, "config": asdict(target_cfg), "mtp_weight": weight}, build, verbose)

    target_ck, draft_ck = lm(target_cfg), lm(draft_cfg)
    target = _load(Transformer(target_cfg), target_ck["model"], device)

    def build_heads():
        heads, history = train_medusa_heads(target, num_heads, train, device, verbose)
        return {"heads": _state(heads), "history": history}

    heads_ck = cached("medusa", {**base, "config": asdict(target_cfg), "num_heads": num_heads}, build_heads, verbose)
    mtp_ck, baseline_ck = mtp_run(mtp_weight), mtp_run(0.0)
    return {
        "target": target,
        "draft": _load(Transformer(draft_cfg), draft_ck["model"], device),
        "heads": _load(MedusaHeads(target_cfg.dim, num_heads), heads_ck["heads"], device),
        "mtp_model": _load(Transformer(target_cfg), mtp_ck["model"], device),
        "mtp": _load(MTPModule(target_cfg), mtp_ck["mtp"], device),
        "baseline": _load(Transformer(target_cfg), baseline_ck["model"], device),
        "history": {"target": target_ck["history"], "draft": draft_ck["history"], "medusa": heads_ck["history"],
                    "mtp": mtp_ck["history"], "baseline": baseline_ck["history"]},
    }


def _load(module, state, device):
    module.load_state_dict(state)
    return module.to(device).eval().requires_grad_(False)
