"""Training the small models on bytes of Python's own standard library, with a checkpoint cache.

Training is seeded, on windows of exactly the model's context (``config.max_seq_len``
tokens, so no evaluation can run a model past the positions it was trained on: the model
refuses longer inputs). A checkpoint is cached under ``$KERNELS_CACHE`` (default
``~/.cache/kernels``), in ``speculative/``, keyed by everything that decides the weights (kind,
configs, hyperparameters, seed, step count, a hash of the corpus), and rebuilt when missing.
Weights never go into the repository.

    models = load_models("cpu", models=("target", "draft"))   # trained once, then cached
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .corpus import get_batch, load_corpus, split
from .heads import MedusaHeads, MTPModule
from .transformer import PRESETS, Config, Transformer

__all__ = [
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


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run (the window length is the model's ``max_seq_len``)."""

    steps: int = 300
    batch_size: int = 8
    lr: float = 3e-3
    seed: int = 0
    corpus_bytes: int = 2_000_000  # the first bytes of the sorted corpus


# CPU: 300 steps of 8 windows of 128 bytes, 0.3M bytes per run (about 10-20 s per run on one core).
# GPU: 1500 steps of 32 windows of 512 bytes = 24.6M tokens per run. Estimated from FLOPs
# (6 x parameters x tokens, at a conservative 30 % of an H100's ~990 dense bf16 TFLOP/s, since
# small models use a GPU poorly): the 26M-parameter target needs 6 * 26e6 * 24.6e6 = 3.8e15
# FLOP, about 13 s; the MTP run (target + one block, ~30M) about 15 s; the Medusa heads (a
# frozen target forward, 2 * 26e6 per token, plus 1.6M trained parameters) about 5 s; the 0.5M
# draft is bound by step latency rather than FLOPs (1500 small steps, ~10 s). Each benchmark
# trains only the models it uses (`load_models(models=...)`): at most about 30 s.
TRAINING = {
    "cpu": TrainConfig(
        steps=300, batch_size=8, lr=3e-3, corpus_bytes=2_000_000
    ),
    "gpu": TrainConfig(
        steps=1500, batch_size=32, lr=1e-3, corpus_bytes=64_000_000
    ),
}


# ----------------------------------------------------------------------------- training loops
def _device(device) -> torch.device:
    return torch.device(
        device
        if device is not None
        else ("cuda" if torch.cuda.is_available() else "cpu")
    )


def _autocast(device: torch.device):
    """bfloat16 autocast on CUDA (the attention kernels take it), full float32 on the CPU."""
    return torch.autocast(
        "cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"
    )


def _cross_entropy(logits, targets):
    return nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1)
    )


@contextmanager
def _one_cpu_thread(device: torch.device):
    """Train on one thread on the CPU (tiny matrices: one thread is faster, and far faster on a busy
    machine); the caller's setting is restored afterwards."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _optimize(
    name: str,
    params,
    loss_fn,
    train: TrainConfig,
    seq_len: int,
    data,
    device,
    verbose: bool,
):
    """AdamW with warmup and cosine decay on windows of ``seq_len + 1`` bytes;
    ``loss_fn(batch) -> (loss, {name: value})``. Returns the history. One thread on the CPU."""
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(
        params, lr=train.lr, betas=(0.9, 0.95), weight_decay=0.1
    )
    warmup = max(1, train.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warmup)
            * (
                0.1
                + 0.9
                * 0.5
                * (1 + math.cos(math.pi * min(s, train.steps) / train.steps))
            )
        ),
    )  # warmup, cosine to 10%
    g = torch.Generator().manual_seed(train.seed + 1)
    history, start, every = {}, time.perf_counter(), max(1, train.steps // 10)
    with _one_cpu_thread(device):
        for step in range(train.steps):
            batch = get_batch(data, train.batch_size, seq_len, g, device)
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
                print(
                    f"[train {name}] step {step + 1}/{train.steps} {shown} ({time.perf_counter() - start:.1f}s)",
                    flush=True,
                )
    return history


def train_lm(
    config: Config,
    train: TrainConfig = TRAINING["cpu"],
    device=None,
    verbose: bool = True,
):
    """Train a `Transformer` on next-byte prediction. Returns ``(model, history)``; history: ``{"loss": [...]}``."""
    device = _device(device)
    torch.manual_seed(train.seed)
    model = Transformer(config).to(device)
    data, _ = split(load_corpus(train.corpus_bytes)[0])

    def loss_fn(batch):
        loss = _cross_entropy(model(batch[:, :-1]), batch[:, 1:])
        return loss, {"loss": loss.detach()}

    history = _optimize(
        f"lm d{config.dim} L{config.n_layers}",
        model.parameters(),
        loss_fn,
        train,
        config.max_seq_len,
        data,
        device,
        verbose,
    )
    return model.eval(), history


def train_medusa_heads(
    target: Transformer,
    num_heads: int = 4,
    train: TrainConfig = TRAINING["cpu"],
    device=None,
    verbose: bool = True,
):
    """Train `MedusaHeads` on a frozen target (Medusa-1). Returns ``(heads, history)``.

    The heads start from `MedusaHeads.from_target` (output matrices copied from the target's
    head, ``W1`` zero) and train both matrices. Head ``i`` learns the token ``i + 2`` positions ahead with cross-entropy; losses are summed
    with weights ``0.8 ** i`` as in Medusa. History: ``{"head0": [...], ...}``.
    """
    device = _device(device)
    torch.manual_seed(train.seed)
    target = target.to(device).eval().requires_grad_(False)
    heads = MedusaHeads.from_target(target, num_heads)
    data, _ = split(load_corpus(train.corpus_bytes)[0])

    def loss_fn(batch):
        with torch.no_grad():
            _, hidden = target(batch[:, :-1], return_hidden=True)  # [B, T, dim]
        logits = heads(hidden)  # [B, T, heads, V]
        total, parts = 0.0, {}
        for i in range(
            num_heads
        ):  # head i at position t predicts t + 2 + i = batch[:, t + 2 + i]
            loss = _cross_entropy(logits[:, : -(i + 1), i], batch[:, i + 2 :])
            total = total + 0.8**i * loss
            parts[f"head{i}"] = loss.detach()
        return total, parts

    history = _optimize(
        f"medusa x{num_heads}",
        heads.parameters(),
        loss_fn,
        train,
        target.config.max_seq_len,
        data,
        device,
        verbose,
    )
    return heads.eval(), history


def train_mtp(
    config: Config,
    mtp_weight: float = 0.3,
    train: TrainConfig = TRAINING["cpu"],
    device=None,
    verbose: bool = True,
):
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
        x, y = (
            batch[:, :-1],
            batch[:, 1:],
        )  # inputs t_0..t_{T-1}, targets t_1..t_T
        logits, hidden = model(x, return_hidden=True)
        main = _cross_entropy(logits, y)
        if mtp_weight == 0:
            return main, {"main": main.detach()}
        mtp_logits, _ = mtp(
            model, hidden[:, :-1], x[:, 1:]
        )  # pairs (h_i, t_{i+1}) -> t_{i+2}
        extra = _cross_entropy(mtp_logits, y[:, 1:])
        return main + mtp_weight * extra, {
            "main": main.detach(),
            "mtp": extra.detach(),
        }

    params = list(model.parameters()) + list(mtp.parameters())
    history = _optimize(
        f"mtp lambda={mtp_weight}",
        params,
        loss_fn,
        train,
        config.max_seq_len,
        data,
        device,
        verbose,
    )
    return model.eval(), mtp.eval(), history


# ----------------------------------------------------------------------------- checkpoint cache
def cache_dir() -> Path:
    """``$KERNELS_CACHE/speculative`` (default ``~/.cache/kernels/speculative``)."""
    return (
        Path(
            os.environ.get("KERNELS_CACHE", Path.home() / ".cache" / "kernels")
        )
        / "speculative"
    )


def cached(kind: str, key: dict, build, verbose: bool = True) -> dict:
    """Load the checkpoint for ``(kind, key)``, or ``build()`` it (a dict for `torch.save`) and store it.

    The file name is ``<kind>-<sha256 of the key>.pt``; the file is written to a temporary name
    first, so an interrupted run never leaves a broken checkpoint.
    """
    digest = hashlib.sha256(
        json.dumps({"kind": kind, **key}, sort_keys=True).encode()
    ).hexdigest()[:16]
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


MODELS = ("target", "draft", "heads", "mtp", "baseline")


def load_models(
    size: str = "cpu",
    device=None,
    *,
    models=MODELS,
    train: TrainConfig | None = None,
    num_heads: int = 4,
    mtp_weight: float = 0.3,
    verbose: bool = True,
) -> dict:
    """The models of the speculative-decoding articles, trained once per machine and cached.

    Args:
        size (str): ``"cpu"`` or ``"gpu"``: the presets ``<size>-target``, ``<size>-draft`` and
            the hyperparameters ``TRAINING[size]``.
        device: where to train and put the models (default CUDA if available).
        models: which to load (and train when no checkpoint exists), any of `MODELS`:
            ``"target"``, ``"draft"``, ``"heads"`` (Medusa heads, which need the target),
            ``"mtp"`` (a main model and its MTP module trained jointly with weight
            ``mtp_weight``), ``"baseline"`` (the same main model trained without MTP).
        train (TrainConfig, optional): overrides ``TRAINING[size]`` (e.g. fewer steps).
        num_heads (int): Medusa heads. mtp_weight (float): lambda of the MTP run.

    Returns:
        dict with the requested entries, in eval mode on ``device`` (``target`` comes with
        ``heads``): ``target``, ``draft``
        (`Transformer`), ``heads`` (`MedusaHeads`), ``mtp_model`` and ``mtp`` (`Transformer`
        and `MTPModule`), ``baseline`` (`Transformer`); and ``history``: the loss curves of
        those runs (keys ``target``, ``draft``, ``medusa``, ``mtp``, ``baseline``).
    """
    if size not in ("cpu", "gpu"):
        raise ValueError(f"size must be 'cpu' or 'gpu', got {size!r}")
    models = (models,) if isinstance(models, str) else tuple(models)
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"models must name some of {MODELS}, got {models!r}")
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
            model, mtp, history = train_mtp(
                target_cfg, weight, train, device, verbose
            )
            return {
                "model": _state(model),
                "mtp": _state(mtp),
                "history": history,
            }

        return cached(
            "mtp",
            {**base, "config": asdict(target_cfg), "mtp_weight": weight},
            build,
            verbose,
        )

    out, history = {}, {}
    if "target" in models or "heads" in models:
        ck = lm(target_cfg)
        out["target"], history["target"] = (
            _load(Transformer(target_cfg), ck["model"], device),
            ck["history"],
        )
    if "draft" in models:
        ck = lm(draft_cfg)
        out["draft"], history["draft"] = (
            _load(Transformer(draft_cfg), ck["model"], device),
            ck["history"],
        )
    if "heads" in models:

        def build_heads():
            heads, h = train_medusa_heads(
                out["target"], num_heads, train, device, verbose
            )
            return {"heads": _state(heads), "history": h}

        ck = cached(
            "medusa",
            {**base, "config": asdict(target_cfg), "num_heads": num_heads},
            build_heads,
            verbose,
        )
        heads = MedusaHeads(target_cfg.dim, num_heads, target_cfg.vocab_size)
        out["heads"], history["medusa"] = (
            _load(heads, ck["heads"], device),
            ck["history"],
        )
    if "mtp" in models:
        ck = mtp_run(mtp_weight)
        out["mtp_model"] = _load(Transformer(target_cfg), ck["model"], device)
        out["mtp"], history["mtp"] = (
            _load(MTPModule(target_cfg), ck["mtp"], device),
            ck["history"],
        )
    if "baseline" in models:
        ck = mtp_run(0.0)
        out["baseline"], history["baseline"] = (
            _load(Transformer(target_cfg), ck["model"], device),
            ck["history"],
        )
    out["history"] = history
    return out


def _load(module, state, device):
    module.load_state_dict(state)
    return module.to(device).eval().requires_grad_(False)
