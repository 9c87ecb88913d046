"""HiPPO and S4 building blocks in plain PyTorch: memory matrices, discretisation, the kernel view.

A linear state space model (SSM) maps an input signal ``u(t)`` to an output ``y(t)`` through a
state ``x(t)`` of ``N`` numbers:

    dx/dt = A x + B u,        y = C x.

HiPPO chooses ``A`` and ``B`` so that the state holds the coefficients of the input's history
projected onto Legendre polynomials (`hippo_legs`, `hippo_legt`; `legs_coefficients` runs LegS
online); `legendre_project` computes the ideal coefficients directly, and `legendre_basis` and
`legendre_reconstruct` turn coefficients back into a signal. S4 samples the ODE with a step
(`discretize`: bilinear or zero-order hold), which gives a linear recurrence,

    x_k = Ab x_{k-1} + Bb u_k,        y_k = C x_k        (x_{-1} = 0),

computed step by step by `ssm_scan` (the RNN view) or, unrolled, as a causal convolution
``y = K * u`` with the kernel ``K_k = C Ab^k Bb`` (`ssm_kernel`, `fft_conv`: the CNN view).

Shapes: one SSM maps one scalar signal to one scalar signal (``A [N, N]``, ``B [N]``, ``C [N]``,
``u [L]``); leading dimensions batch independent SSMs and signals and broadcast against each
other, e.g. ``Ab [H, N, N]`` with ``u [batch, H, L]``. Everything accepts float32 and float64;
the HiPPO matrices are built in float64 unless asked otherwise.
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = [
    "hippo_legs",
    "hippo_legt",
    "discretize",
    "ssm_scan",
    "ssm_kernel",
    "fft_conv",
    "legs_coefficients",
    "legendre_basis",
    "legendre_reconstruct",
    "legendre_project",
]

DTYPES = (torch.float32, torch.float64)


# ----------------------------------------------------------------------------- validation


def _check_size(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be a positive int, got {type(value).__name__} {value!r}"
        )
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a positive finite number, got {type(value).__name__} {value!r}"
        )
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"{name} must be a positive finite number, got {value!r}"
        )


def _check_float(name, x, min_dim, layout):
    """``x`` is a float32/float64 tensor with at least ``min_dim`` dimensions, laid out as ``layout``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}"
        )
    if x.dtype not in DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must have shape {layout}, got {tuple(x.shape)}"
        )


def _batch_shape(shapes: dict):
    """The broadcast of the leading (batch) shapes in ``shapes`` (name -> shape), or a ValueError."""
    try:
        return torch.broadcast_shapes(*shapes.values())
    except RuntimeError:
        given = ", ".join(
            f"{name} {tuple(shape)}" for name, shape in shapes.items()
        )
        raise ValueError(
            f"the leading (batch) dimensions must broadcast, got {given}"
        ) from None


def _check_ssm(A, B, C=None, a_name="A", b_name="B"):
    """``A [..., N, N]``, ``B [..., N]`` (and ``C [..., N]``) on one device; returns the batch shape."""
    _check_float(a_name, A, 2, "[..., N, N]")
    if A.shape[-1] != A.shape[-2]:
        raise ValueError(
            f"{a_name} must be square [..., N, N], got {tuple(A.shape)}"
        )
    N = A.shape[-1]
    named = (
        {a_name: A, b_name: B} if C is None else {a_name: A, b_name: B, "C": C}
    )
    for name, x in list(named.items())[1:]:
        _check_float(name, x, 1, f"[..., N] with N = {N}")
        if x.shape[-1] != N:
            raise ValueError(
                f"{name} must have shape [..., N] with N = {N} (the size of {a_name}), "
                f"got {tuple(x.shape)}"
            )
    if len({x.device for x in named.values()}) > 1:
        given = ", ".join(f"{name} on {x.device}" for name, x in named.items())
        raise ValueError(
            f"{', '.join(named)} must be on the same device, got {given}"
        )
    shapes = {
        a_name: A.shape[:-2],
        **{name: x.shape[:-1] for name, x in list(named.items())[1:]},
    }
    return _batch_shape(shapes)


# ----------------------------------------------------------------------------- HiPPO matrices


def hippo_legs(N, dtype=torch.float64, device=None):
    """HiPPO-LegS: the memory of the whole history, projected onto scaled Legendre polynomials.

    The coefficients ``x_n(t) = (1/t) ∫_0^t f(s) g_n(s/t) ds`` of a signal's history on ``[0, t]``
    against the orthonormal polynomials ``g_n(r) = sqrt(2n+1) P_n(2r - 1)`` (Legendre ``P_n``)
    obey the ODE, with the sign convention

        dx/dt = (1/t) (A x + B f(t)),

    where ``A[n, k] = -sqrt(2n+1) sqrt(2k+1)`` for ``n > k``, ``-(n+1)`` for ``n = k``, ``0`` for
    ``n < k`` and ``B[n] = sqrt(2n+1)``. ``A`` already carries the minus sign: S4 uses the same
    matrices in the time-invariant ODE ``dx/dt = A x + B u``.

    Args:
        N (int): state size (number of polynomials), ``N >= 1``.
        dtype (torch.dtype): float32 or float64 (default).
        device: where to build the matrices.

    Returns:
        ``(A [N, N], B [N])``; ``A`` is lower triangular.

    Examples:
        >>> A, B = hippo_legs(3)
        >>> A
        tensor([[-1.0000,  0.0000,  0.0000],
                [-1.7321, -2.0000,  0.0000],
                [-2.2361, -3.8730, -3.0000]], dtype=torch.float64)
    """
    _check_size("N", N)
    if dtype not in DTYPES:
        raise TypeError(
            f"dtype must be torch.float32 or torch.float64, got {dtype}"
        )
    n = torch.arange(N, dtype=torch.float64, device=device)
    r = torch.sqrt(2 * n + 1)  # [N]
    A = torch.diag(-(n + 1)) - torch.tril(
        r[:, None] * r[None, :], diagonal=-1
    )  # [N, N]
    return A.to(dtype), r.to(dtype)


def hippo_legt(N, theta=1.0, dtype=torch.float64, device=None):
    """HiPPO-LegT: the memory of a sliding window ``[t - theta, t]``, on translated Legendre polynomials.

    The coefficients ``x_n(t) = (1/theta) ∫_{t-theta}^t f(s) g_n((s - t)/theta + 1) ds`` against
    the orthonormal ``g_n(r) = sqrt(2n+1) P_n(2r - 1)`` obey, when the value that leaves the window,
    ``f(t - theta)``, is replaced by its reconstruction from ``x``, the time-invariant ODE

        dx/dt = A x + B f(t),

    with ``A[n, k] = -(1/theta) sqrt(2n+1) sqrt(2k+1)`` times ``1`` for ``k <= n`` and ``(-1)^(n-k)``
    for ``k > n``, and ``B[n] = sqrt(2n+1) / theta`` (the S4 convention: ``A`` carries the sign).

    Args:
        N (int): state size, ``N >= 1``.
        theta (float): window length, in the units of ``t``, positive.
        dtype (torch.dtype): float32 or float64 (default).
        device: where to build the matrices.

    Returns:
        ``(A [N, N], B [N])``.

    Examples:
        >>> A, B = hippo_legt(2, theta=2.0)
        >>> A
        tensor([[-0.5000,  0.8660],
                [-0.8660, -1.5000]], dtype=torch.float64)
    """
    _check_size("N", N)
    _check_positive("theta", theta)
    if dtype not in DTYPES:
        raise TypeError(
            f"dtype must be torch.float32 or torch.float64, got {dtype}"
        )
    n = torch.arange(N, dtype=torch.float64, device=device)
    r = torch.sqrt(2 * n + 1)
    lag = n[:, None] - n[None, :]  # n - k
    sign = torch.where(
        lag >= 0, 1.0, torch.where(lag.remainder(2) == 0, 1.0, -1.0)
    )  # [N, N]
    A = -(r[:, None] * r[None, :]) * sign / theta
    return A.to(dtype), (r / theta).to(dtype)


# ----------------------------------------------------------------------------- Legendre polynomials


def _legendre(N, z):
    """``P_0(z), ..., P_{N-1}(z)`` stacked on a last dimension, by Bonnet's recurrence
    ``(n+1) P_{n+1}(z) = (2n+1) z P_n(z) - n P_{n-1}(z)``."""
    P = [torch.ones_like(z), z]
    for n in range(1, N - 1):
        P.append(((2 * n + 1) * z * P[n] - n * P[n - 1]) / (n + 1))
    return torch.stack(P[:N], dim=-1)


def legendre_basis(N, s):
    """The orthonormal polynomials ``g_n(s) = sqrt(2n+1) P_n(2s - 1)`` on ``[0, 1]``, ``n < N``.

    ``s`` is a position in the memory's window, 0 at its oldest end and 1 at the present; the
    ``g_n`` are orthonormal for the uniform measure on ``[0, 1]``.

    Args:
        N (int): number of polynomials.
        s (torch.Tensor): positions ``[...]``, float32 or float64, in ``[0, 1]``.

    Returns:
        ``[..., N]``: ``g_n(s)`` for every position (last dimension ``n``), in the dtype of ``s``.
    """
    _check_size("N", N)
    _check_float("s", s, 0, "[...]")
    scale = torch.sqrt(2 * torch.arange(N, dtype=s.dtype, device=s.device) + 1)
    return _legendre(N, 2 * s - 1) * scale  # [..., N]


def legendre_reconstruct(c, s):
    """The signal that HiPPO coefficients remember: ``f(s) ≈ Σ_n c_n g_n(s)`` at positions ``s``.

    Args:
        c (torch.Tensor): coefficients ``[..., N]`` (from LegS or LegT), float32 or float64.
        s (torch.Tensor): positions ``[P]`` in the memory's window, 0 oldest, 1 the present. For
            LegS at time ``t`` the window is ``[0, t]`` (time ``τ`` is at ``s = τ / t``); for LegT
            it is ``[t - theta, t]`` (``s = (τ - t) / theta + 1``).

    Returns:
        ``[..., P]``: the reconstruction at every position.

    Examples:
        >>> s = torch.linspace(0, 1, 5, dtype=torch.float64)
        >>> c = torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64)  # a constant 0.5
        >>> legendre_reconstruct(c, s)
        tensor([0.5000, 0.5000, 0.5000, 0.5000, 0.5000], dtype=torch.float64)
    """
    _check_float("c", c, 1, "[..., N]")
    _check_float("s", s, 1, "[P]")
    if s.dim() != 1:
        raise ValueError(f"s must have shape [P], got {tuple(s.shape)}")
    return c @ legendre_basis(c.shape[-1], s.to(c.dtype)).T  # [..., N] @ [N, P]


def legendre_project(f, N):
    """The exact projection of a piecewise-constant signal onto the first ``N`` polynomials.

    Sample ``j`` of ``f [..., L]`` is held over ``[j / L, (j+1) / L]``; the coefficients are
    ``c_n = ∫_0^1 f(s) g_n(s) ds``, computed exactly from the antiderivative
    ``∫ P_n(z) dz = (P_{n+1}(z) - P_{n-1}(z)) / (2n+1)``. This is the best approximation of the
    signal by ``N`` polynomials (least squares for the uniform measure): what an ideal memory of
    ``N`` numbers holds, and what `legs_coefficients` computes online with ``method="zoh"``.

    Args:
        f (torch.Tensor): samples ``[..., L]``, float32 or float64.
        N (int): number of polynomials.

    Returns:
        ``[..., N]`` in the dtype of ``f``.
    """
    _check_float("f", f, 1, "[..., L]")
    _check_size("N", N)
    L = f.shape[-1]
    z = (
        2 * torch.arange(L + 1, dtype=torch.float64, device=f.device) / L - 1
    )  # cell edges in [-1, 1]
    P = _legendre(N + 1, z)  # [L + 1, N + 1]
    n = torch.arange(N, dtype=torch.float64, device=f.device)
    P_below = torch.cat(
        [torch.zeros_like(z)[:, None], P[:, : N - 1]], dim=-1
    )  # P_{n-1}, with P_{-1} = 0
    antiderivative = (
        (P[:, 1:] - P_below) / (2 * n + 1) * torch.sqrt(2 * n + 1) / 2
    )  # [L + 1, N]: ∫ g_n ds
    weights = (
        antiderivative[1:] - antiderivative[:-1]
    )  # [L, N]: ∫ of g_n over each cell
    return (f.to(torch.float64) @ weights).to(f.dtype)


def legs_coefficients(f, N, method="bilinear"):
    """HiPPO-LegS online: the coefficients of the history after each sample.

    Sample ``f_k`` is the signal's value over ``[k, k+1]`` (one time unit per sample), and the
    coefficients after it describe the history on ``[0, k+1]``. In log-time ``s = log t`` the LegS
    ODE ``dx/dt = (1/t)(A x + B f)`` becomes time-invariant, ``dx/ds = A x + B f``, so each sample
    is one step of `discretize` with the step ``log((k+1)/k)``:

        x_0 = (f_0, 0, ..., 0),        x_k = Ab_k x_{k-1} + Bb_k f_k.

    The first sample is exact (a constant's only coefficient is ``g_0 = 1``). With ``"zoh"``
    every step is exact for the held samples: the result equals `legendre_project` of
    ``f_0..f_k``. The bilinear rule is the cheaper approximation HiPPO uses. The LegS matrices
    have no window length or time scale: the same recurrence serves any ``L``.

    Args:
        f (torch.Tensor): signals ``[..., L]``, float32 or float64.
        N (int): state size.
        method (str): ``"bilinear"`` or ``"zoh"``, as in `discretize`.

    Returns:
        ``[..., L, N]``: the coefficients after each sample, in the dtype of ``f``.
    """
    _check_float("f", f, 1, "[..., L]")
    _check_size("N", N)
    if method not in ("bilinear", "zoh"):
        raise ValueError(f'method must be "bilinear" or "zoh", got {method!r}')
    A, B = hippo_legs(N, dtype=f.dtype, device=f.device)
    L = f.shape[-1]
    x = (
        f[..., 0, None] * torch.eye(N, dtype=f.dtype, device=f.device)[0]
    )  # [..., N]
    out = [x]
    for first in range(1, L, 256):  # discretise 256 steps at a time
        k = torch.arange(
            first, min(first + 256, L), dtype=f.dtype, device=f.device
        )
        Ab, Bb = discretize(
            A, B, torch.log((k + 1) / k), method
        )  # [steps, N, N], [steps, N]
        for i in range(k.shape[0]):
            x = x @ Ab[i].T + Bb[i] * f[..., first + i, None]
            out.append(x)
    return torch.stack(out, dim=-2)


# ----------------------------------------------------------------------------- discretisation


def discretize(A, B, step, method="bilinear"):
    """Sample ``dx/dt = A x + B u`` with a step: ``x_k = Ab x_{k-1} + Bb u_k``.

    - ``"bilinear"`` (Tustin, the trapezoid rule, used by S4):
      ``Ab = (I - step/2 A)^{-1} (I + step/2 A)``, ``Bb = (I - step/2 A)^{-1} step B``.
    - ``"zoh"`` (zero-order hold: exact when ``u`` is constant over each step, used by Mamba):
      ``Ab = exp(step A)``, ``Bb = ∫_0^step exp(s A) ds B``, both read off one matrix exponential
      of the augmented matrix ``step [[A, B], [0, 0]]``, which stays valid when ``A`` is singular.

    Args:
        A (torch.Tensor): ``[..., N, N]``, float32 or float64.
        B (torch.Tensor): ``[..., N]``, same dtype.
        step (float or torch.Tensor): a positive number, or a tensor of positive steps whose shape
            broadcasts against the batch dimensions ``[...]`` (one step per SSM, as S4 learns).
        method (str): ``"bilinear"`` or ``"zoh"``.

    Returns:
        ``(Ab [..., N, N], Bb [..., N])`` over the broadcast batch shape.

    Examples:
        >>> A, B = torch.tensor([[-1.0]], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
        >>> discretize(A, B, 0.5, "zoh")  # exp(-0.5) and 1 - exp(-0.5)
        (tensor([[0.6065]], dtype=torch.float64), tensor([0.3935], dtype=torch.float64))
    """
    batch = _check_ssm(A, B)
    if B.dtype != A.dtype:
        raise TypeError(
            f"A and B must have the same dtype, got A {A.dtype}, B {B.dtype}"
        )
    if method not in ("bilinear", "zoh"):
        raise ValueError(f'method must be "bilinear" or "zoh", got {method!r}')
    if isinstance(step, torch.Tensor):
        _check_float("step", step, 0, "[...]")
        if step.device != A.device:
            raise ValueError(
                f"step must be on the device of A ({A.device}), got {step.device}"
            )
        if not (torch.isfinite(step).all() and (step > 0).all()):
            raise ValueError(
                f"step must hold positive finite values, got {step.tolist()}"
            )
        batch = _batch_shape(
            {"A": A.shape[:-2], "B": B.shape[:-1], "step": step.shape}
        )
        step = step.to(A.dtype)[..., None, None]  # [..., 1, 1]
    else:
        _check_positive("step", step)
    N = A.shape[-1]
    A, B = A.expand(*batch, N, N), B.expand(*batch, N)
    if method == "bilinear":
        I = torch.eye(N, dtype=A.dtype, device=A.device)
        lhs = I - step / 2 * A
        Ab = torch.linalg.solve(lhs, I + step / 2 * A)
        Bb = torch.linalg.solve(lhs, (step * B[..., None]))[..., 0]
        return Ab, Bb
    M = torch.zeros(
        *batch, N + 1, N + 1, dtype=A.dtype, device=A.device
    )  # [[A, B], [0, 0]]
    M[..., :N, :N] = A
    M[..., :N, N] = B
    E = torch.linalg.matrix_exp(step * M)
    return E[..., :N, :N], E[..., :N, N]


# ----------------------------------------------------------------------------- the two views


def ssm_scan(Ab, Bb, C, u, return_states=False):
    """The recurrent view: ``x_k = Ab x_{k-1} + Bb u_k``, ``y_k = C · x_k``, one step at a time.

    ``O(N^2)`` work per step and ``L`` dependent steps; the reference for `fft_conv`.

    Args:
        Ab (torch.Tensor): ``[..., N, N]``.
        Bb (torch.Tensor): ``[..., N]``.
        C (torch.Tensor): ``[..., N]``.
        u (torch.Tensor): inputs ``[..., L]``; its leading dimensions broadcast with the others'.
        return_states (bool): also return every state ``x_k``.

    Returns:
        ``y [..., L]``, or ``(y, states [..., L, N])``, over the broadcast batch shape.
    """
    batch = _check_ssm(Ab, Bb, C, "Ab", "Bb")
    _check_float("u", u, 1, "[..., L]")
    if u.device != Ab.device:
        raise ValueError(
            f"u must be on the device of Ab ({Ab.device}), got {u.device}"
        )
    if not isinstance(return_states, bool):
        raise TypeError(
            f"return_states must be True or False, got {return_states!r}"
        )
    batch = _batch_shape({"Ab, Bb and C": batch, "u": u.shape[:-1]})
    dtype = torch.promote_types(
        torch.promote_types(Ab.dtype, Bb.dtype),
        torch.promote_types(C.dtype, u.dtype),
    )
    Ab, Bb, C, u = Ab.to(dtype), Bb.to(dtype), C.to(dtype), u.to(dtype)
    x = torch.zeros(
        *batch, Ab.shape[-1], dtype=dtype, device=u.device
    )  # [..., N]
    ys, states = [], []
    for k in range(u.shape[-1]):
        x = (Ab @ x[..., None])[..., 0] + Bb * u[..., k, None]  # [..., N]
        ys.append((C * x).sum(-1))
        states.append(x)
    y = torch.stack(ys, dim=-1)  # [..., L]
    return (y, torch.stack(states, dim=-2)) if return_states else y


def ssm_kernel(Ab, Bb, C, L):
    """The convolution kernel of a discrete SSM: ``K_k = C Ab^k Bb`` for ``k = 0, ..., L-1``.

    Computed by doubling: the columns ``[Bb, Ab Bb, ..., Ab^{m-1} Bb]`` are extended to ``2m``
    with one product by ``Ab^m``, and ``Ab^m`` squared, so ``ceil(log2 L)`` rounds of matrix
    products (``O(N^2 L)`` work) instead of ``L`` dependent steps. S4's structured (DPLR)
    parameterisation computes the same kernel in ``O(N + L)`` operations up to log factors; this
    function works for any ``Ab``.

    Args:
        Ab (torch.Tensor): ``[..., N, N]``.
        Bb (torch.Tensor): ``[..., N]``.
        C (torch.Tensor): ``[..., N]``.
        L (int): kernel length.

    Returns:
        ``K [..., L]`` over the broadcast batch shape.

    Examples:
        >>> Ab = torch.tensor([[0.5]], dtype=torch.float64)
        >>> ones = torch.ones(1, dtype=torch.float64)
        >>> ssm_kernel(Ab, ones, ones, 4)
        tensor([1.0000, 0.5000, 0.2500, 0.1250], dtype=torch.float64)
    """
    batch = _check_ssm(Ab, Bb, C, "Ab", "Bb")
    _check_size("L", L)
    dtype = torch.promote_types(
        torch.promote_types(Ab.dtype, Bb.dtype), C.dtype
    )
    N = Ab.shape[-1]
    power = Ab.to(dtype).expand(*batch, N, N)  # Ab^m
    columns = Bb.to(dtype).expand(*batch, N)[
        ..., None
    ]  # [..., N, m]: Ab^j Bb for j < m
    while columns.shape[-1] < L:
        columns = torch.cat([columns, power @ columns], dim=-1)
        power = power @ power
    return (C.to(dtype)[..., None, :] @ columns[..., :L])[..., 0, :]  # [..., L]


def fft_conv(u, K):
    """The convolutional view: the causal convolution ``y_k = Σ_{j <= k} K_j u_{k-j}`` by FFT.

    Both signals are zero-padded to ``2L`` so that the circular convolution of the FFT does not
    wrap around; ``O(L log L)`` work per signal. With ``K = ssm_kernel(Ab, Bb, C, L)`` it equals
    ``ssm_scan(Ab, Bb, C, u)``.

    Args:
        u (torch.Tensor): inputs ``[..., L]``, float32 or float64.
        K (torch.Tensor): kernels ``[..., L]`` (same length), leading dimensions broadcast with ``u``'s.

    Returns:
        ``y [..., L]`` in the promoted dtype of ``u`` and ``K``.

    Examples:
        >>> u = torch.tensor([1.0, 2.0, 3.0])
        >>> fft_conv(u, torch.tensor([1.0, 0.5, 0.0]))  # y_k = u_k + 0.5 u_{k-1}
        tensor([1.0000, 2.5000, 4.0000])
    """
    _check_float("u", u, 1, "[..., L]")
    _check_float("K", K, 1, "[..., L]")
    if K.shape[-1] != u.shape[-1]:
        raise ValueError(
            f"K must have the length of u, L = {u.shape[-1]}, got shape {tuple(K.shape)}"
        )
    if K.device != u.device:
        raise ValueError(
            f"u and K must be on the same device, got u on {u.device}, K on {K.device}"
        )
    _batch_shape({"u": u.shape[:-1], "K": K.shape[:-1]})
    L = u.shape[-1]
    y = torch.fft.irfft(
        torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(K, n=2 * L), n=2 * L
    )
    return y[..., :L]
