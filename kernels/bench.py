"""Measuring what the articles report: time, peak memory and the difference of two results.

Every snippet imports these three helpers instead of writing its own, so that one rule is
used for every timing in the book:

- on a CUDA tensor, :func:`time_ms` is ``triton.testing.do_bench`` (the median of repeated
  launches after a warm-up, with the L2 cache flushed between them);
- on a CPU, it is the *minimum* of repeated calls after one warm-up call: other work on the
  machine only ever adds time, so the minimum is the best estimate of the cost of the code
  itself. It repeats at least 3 times, and until 0.2 s have been spent, at most 30 times.

CPU timings say nothing about GPUs; the pages publish them only as CPU timings.

Example:
    >>> import torch
    >>> from kernels.bench import time_ms, max_diff
    >>> x = torch.randn(256, 256)
    >>> ms = time_ms(lambda: x @ x)
    >>> max_diff(x @ x, (x.double() @ x.double()).float()) < 1e-3
    True
"""

from __future__ import annotations

import time
from typing import Callable

import torch

__all__ = ["time_ms", "peak_memory_bytes", "max_diff"]

CPU_MIN_RUNS, CPU_MAX_RUNS, CPU_MIN_SECONDS = 3, 30, 0.2


def _on_cuda(device: str | torch.device | None) -> bool:
    if device is None:
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda"


def time_ms(
    fn: Callable[[], object],
    device: str | torch.device | None = None,
    *,
    warmup: int = 25,
    rep: int = 100,
) -> float:
    """Time of one call of ``fn()`` in milliseconds.

    Args:
        fn: the work to time, called with no arguments.
        device: where ``fn`` runs (default: CUDA when available, else the CPU).
        warmup: on CUDA, milliseconds of warm-up (``do_bench``'s ``warmup``).
        rep: on CUDA, milliseconds of measured repetitions (``do_bench``'s ``rep``).

    Returns:
        On CUDA the median over ``do_bench``'s repetitions; on the CPU the minimum over
        repeated calls (see the module docstring).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if _on_cuda(device):
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    fn()  # warm-up
    runs: list[float] = []
    while len(runs) < CPU_MIN_RUNS or (
        sum(runs) < CPU_MIN_SECONDS and len(runs) < CPU_MAX_RUNS
    ):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return 1e3 * min(runs)


def peak_memory_bytes(
    fn: Callable[[], object], device: str | torch.device | None = None
) -> int:
    """Peak bytes allocated while ``fn()`` runs, beyond what was allocated before the call.

    On CUDA this is what the caching allocator reports (``max_memory_allocated``); on the
    CPU it is what PyTorch's memory tracker counts for the tensors alive during the call.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if _on_cuda(device):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - before)
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    with tracker:
        fn()
    return int(
        tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    )


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference between two tensors of one shape, compared in float64."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(
            f"a and b must be tensors, got {type(a).__name__} and {type(b).__name__}"
        )
    if a.shape != b.shape:
        raise ValueError(
            f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.numel() == 0:
        return 0.0
    return (
        (a.detach().double().cpu() - b.detach().double().cpu())
        .abs()
        .max()
        .item()
    )
