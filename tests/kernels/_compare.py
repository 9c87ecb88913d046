"""Comparison helper shared by the kernel tests."""

import torch


def assert_close(name, ref, out, atol, rtol):
    """Elementwise |out - ref| <= atol + rtol |ref|, reported as max error and relative RMSE."""
    ref, out = ref.double(), out.double()
    err = (out - ref).abs()
    rmse = (
        err.pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30)
    ).item()
    bad = err > atol + rtol * ref.abs()
    assert not bad.any(), (
        f"{name}: {bad.sum().item()} of {bad.numel()} elements off, "
        f"max abs error {err.max().item():.3e}, relative RMSE {rmse:.3e}"
    )
