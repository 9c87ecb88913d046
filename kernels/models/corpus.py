"""The corpus of the small models: the bytes of Python's own standard library.

Every machine with Python has the text: the ``.py`` files under ``sysconfig.get_paths()["stdlib"]``
(sorted, ``site-packages`` excluded), read as bytes, so training needs no network.
"""

from __future__ import annotations

import functools
import hashlib
import sysconfig
from pathlib import Path

import torch

__all__ = ["stdlib_files", "load_corpus", "split", "get_batch"]


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files, sorted, without installed third-party packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        p
        for p in root.rglob("*.py")
        if not {"site-packages", "dist-packages"}
        & set(p.relative_to(root).parts)
    )


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
    if (
        isinstance(max_bytes, bool)
        or not isinstance(max_bytes, int)
        or max_bytes < 1024
    ):
        raise ValueError(f"max_bytes must be an int >= 1024, got {max_bytes!r}")
    data, digest = _read_corpus(max_bytes)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), digest


def split(data: torch.Tensor, val_fraction: float = 0.05):
    """``(train, val)``: the last ``val_fraction`` of the bytes is held out."""
    n = int(len(data) * (1 - val_fraction))
    return data[:n], data[n:]


def get_batch(
    data: torch.Tensor,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator,
    device=None,
):
    """Random windows of ``seq_len + 1`` bytes: int64 ``[batch_size, seq_len + 1]`` on ``device``."""
    starts = torch.randint(
        len(data) - seq_len - 1, (batch_size,), generator=generator
    )
    windows = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()])
    return windows.long().to(device)
