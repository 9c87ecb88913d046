"""The environment of a GPU run, with the device's measured ceilings (run by `make gpu-run`).

    python tests/gpu_environment.py OUT_JSON

Prints and writes to OUT_JSON: `nvidia-smi`'s report, Python, torch, CUDA, triton and numpy
versions, the device, and two measured ceilings: the copy bandwidth (GB/s, bytes read plus
written by `Tensor.copy_` of a large buffer) and the dense matrix product rate (TFLOP/s,
`2·n³` per product; bfloat16 on a GPU, float32 at a small size on a CPU, where the numbers only
show that the probe works). Each figure is the median of several timed repetitions.
"""

import json
import platform
import statistics
import subprocess
import sys
import time

import torch


def nvidia_smi() -> str | None:
    """The full report of `nvidia-smi`, or None without one."""
    try:
        result = subprocess.run(
            ["nvidia-smi"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def median_seconds(fn, repeats: int, cuda: bool) -> float:
    """The median wall time of `fn()` over `repeats` runs after one warm-up, synchronised."""
    fn()
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = (
                torch.cuda.Event(enable_timing=True),
                torch.cuda.Event(enable_timing=True),
            )
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def ceilings(cuda: bool) -> dict:
    """Measured copy bandwidth and matrix product rate of the device."""
    device = "cuda" if cuda else "cpu"
    size = (1 << 30) if cuda else (64 << 20)  # bytes per buffer
    src = torch.empty(size // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy_s = median_seconds(lambda: dst.copy_(src), 20 if cuda else 5, cuda)
    n, dtype = (8192, torch.bfloat16) if cuda else (512, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    mm_s = median_seconds(lambda: a @ b, 20 if cuda else 5, cuda)
    return {
        "copy_gb_per_s": round(2 * size / copy_s / 1e9, 1),
        "copy_buffer_bytes": size,
        "matmul_tflops": round(2 * n**3 / mm_s / 1e12, 2 if cuda else 4),
        "matmul_n": n,
        "matmul_dtype": str(dtype).removeprefix("torch."),
    }


def main(path: str) -> None:
    cuda = torch.cuda.is_available()
    facts = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": cuda,
        "device": torch.cuda.get_device_name(0)
        if cuda
        else platform.processor() or "cpu",
    }
    for name in ("triton", "numpy"):
        try:
            facts[name] = __import__(name).__version__
        except (
            Exception
        ) as error:  # missing, or failing to import on this platform
            facts[name] = f"unavailable ({type(error).__name__})"
    if cuda:
        props = torch.cuda.get_device_properties(0)
        facts.update(
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
        )
    facts.update(ceilings(cuda))
    facts["nvidia_smi"] = nvidia_smi()
    for key, value in facts.items():
        if key != "nvidia_smi":
            print(f"{key:18} {value}")
    print(facts["nvidia_smi"] or "nvidia-smi: not available")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(facts, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tests/gpu_environment.py OUT_JSON")
    main(sys.argv[1])
