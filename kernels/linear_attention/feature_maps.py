"""Feature maps that turn linear attention into an approximation of softmax
attention.

Linear attention with a feature map ``phi`` computes ``phi(q) . phi(k)`` in
place of ``exp(q . k)``. The maps here act on the last dimension and compose
with `kernels.linear_attention`: ``linear_attention(phi(q), phi(k), v, ...)``.

* `elu_plus_one` and `relu`: deterministic, positive (Katharopoulos et al.
  2020).
* `positive_random_features` (FAVOR+, Choromanski et al. 2021) and
  `trigonometric_random_features`: random features with
  ``E[phi(x) . phi(y)] = exp(x . y)``, drawn with `orthogonal_gaussian` or plain
  Gaussian projections.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1``: positive, and close to ``1 + x`` near zero. Any shape."""
    return F.elu(x) + 1


def relu(x: torch.Tensor) -> torch.Tensor:
    """``max(x, 0)``. Any shape."""
    return F.relu(x)


def gaussian_projection(
    m: int, d: int, generator=None, dtype=torch.float32, device=None
) -> torch.Tensor:
    """``[m, d]`` matrix of independent standard normal rows."""
    return torch.randn(m, d, generator=generator, dtype=dtype, device=device)


def orthogonal_gaussian(
    m: int, d: int, generator=None, dtype=torch.float32, device=None
) -> torch.Tensor:
    """``[m, d]`` projection whose rows are orthogonal within each block of
    ``d`` rows.

    Each block is the Q factor of a Gaussian matrix (uniform on the orthogonal
    group), and each row is rescaled to the norm of an independent Gaussian
    vector, so that every row is still marginally ``N(0, I_d)`` (Choromanski et
    al. 2021, section 2.4). The numbers are drawn on the CPU in float64
    (``generator`` must be a CPU generator) and then moved to ``device``.
    """
    if m < 1 or d < 1:
        raise ValueError(f"m and d must be positive, got m={m}, d={d}")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            "generator must be a CPU torch.Generator (the draws are made on "
            f"the CPU), got one on {generator.device}"
        )
    blocks = []
    for start in range(0, m, d):
        g = torch.randn(d, d, generator=generator, dtype=torch.float64)
        Q, R = torch.linalg.qr(g)
        # make the factorisation unique, hence Haar-distributed
        Q = Q * torch.sign(torch.diagonal(R))
        blocks.append(Q.T[: min(d, m - start)])
    norms = torch.randn(m, d, generator=generator, dtype=torch.float64).norm(
        dim=1, keepdim=True
    )
    return (torch.cat(blocks) * norms).to(dtype=dtype, device=device)


def positive_random_features(
    x: torch.Tensor, projection: torch.Tensor
) -> torch.Tensor:
    """FAVOR+ features ``exp(w_i . x - |x|^2 / 2) / sqrt(m)`` for the ``m`` rows
    ``w_i``.

    Args:
        x (torch.Tensor): ``[..., d]``; for softmax attention pass
            ``q * d ** -0.25`` (and the same for ``k``), so that
            ``phi(q) . phi(k)`` estimates ``exp(q . k / sqrt(d))``.
        projection (torch.Tensor): ``[m, d]``, from `orthogonal_gaussian` or
            `gaussian_projection`.

    Returns:
        ``[..., m]`` positive features; ``E[phi(x) . phi(y)] = exp(x . y)``.
    """
    m = projection.shape[0]
    wx = x @ projection.T.to(x.dtype)  # [..., m]
    return torch.exp(wx - x.pow(2).sum(-1, keepdim=True) / 2) / math.sqrt(m)


def trigonometric_random_features(
    x: torch.Tensor, projection: torch.Tensor
) -> torch.Tensor:
    """Random Fourier features of the softmax kernel:
    ``exp(|x|^2 / 2) [sin(w x), cos(w x)] / sqrt(m)``.

    Same arguments as `positive_random_features`; returns ``[..., 2 m]``
    features with ``E[phi(x) . phi(y)] = exp(x . y)``, but not all positive, so
    estimates can be negative.
    """
    m = projection.shape[0]
    wx = x @ projection.T.to(x.dtype)
    scale = torch.exp(x.pow(2).sum(-1, keepdim=True) / 2) / math.sqrt(m)
    return torch.cat([torch.sin(wx), torch.cos(wx)], dim=-1) * scale
