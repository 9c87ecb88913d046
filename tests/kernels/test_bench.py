"""The measurement helper every snippet imports: its rules and its errors."""

import pytest
import torch

from kernels.bench import max_diff, peak_memory_bytes, time_ms


def test_time_ms_measures_a_sleep():
    import time

    ms = time_ms(lambda: time.sleep(0.002), device="cpu")
    assert 2.0 <= ms < 50.0


def test_peak_memory_counts_a_temporary():
    n = 1 << 20

    def work():
        x = torch.ones(n, dtype=torch.float32)  # 4 MiB alive during the call
        return x.sum()

    assert peak_memory_bytes(work, device="cpu") >= 4 * n


def test_max_diff_is_float64_and_checks_shapes():
    a = torch.tensor([1.0, 2.0, 3.0])
    assert max_diff(a, a + torch.tensor([0.0, -0.5, 0.25])) == 0.5
    assert max_diff(torch.empty(0), torch.empty(0)) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        max_diff(a, a[:2])
    with pytest.raises(TypeError, match="tensors"):
        max_diff(a, [1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="callable"):
        time_ms(3)
