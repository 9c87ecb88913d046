"""kernels.hippo: the HiPPO matrices, discretisation, and the S4 kernel (convolution) view.

The matrices are checked entry by entry against their closed forms and against small cases
worked out by hand; the LegS ODE against the exact projection it is derived from; the
discretisations against scalar closed forms and a fine Euler integration; the FFT convolution
against the recurrence; and the S4 view against ``kernels.selective_scan`` when nothing is
selective. Everything runs in float64 on the CPU except the selective scan (float32).
"""

import math

import pytest
import torch

from _compare import assert_close
from kernels import selective_scan
from kernels.hippo import (
    discretize,
    fft_conv,
    hippo_legs,
    hippo_legt,
    legendre_basis,
    legendre_project,
    legendre_reconstruct,
    legs_coefficients,
    ssm_kernel,
    ssm_scan,
)

F64 = torch.float64


def stable_ssm(N, batch=(), seed=0):
    """A random continuous SSM ``(A [*batch, N, N], B, C)`` whose eigenvalues have negative real parts."""
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(*batch, N, N, generator=g, dtype=F64) / math.sqrt(N)
    A = (
        M - M.transpose(-1, -2) - torch.eye(N, dtype=F64)
    )  # skew-symmetric minus identity
    return (
        A,
        torch.randn(*batch, N, generator=g, dtype=F64),
        torch.randn(*batch, N, generator=g, dtype=F64),
    )


# ----------------------------------------------------------------------------- the HiPPO matrices


@pytest.mark.parametrize("N", [1, 5, 17])
def test_legs_closed_form(N):
    A, B = hippo_legs(N)
    assert A.dtype == B.dtype == F64 and A.shape == (N, N) and B.shape == (N,)
    for n in range(N):
        assert B[n] == pytest.approx(math.sqrt(2 * n + 1), abs=1e-15)
        for k in range(N):
            expected = (
                -math.sqrt((2 * n + 1) * (2 * k + 1))
                if n > k
                else -(n + 1)
                if n == k
                else 0.0
            )
            assert A[n, k] == pytest.approx(expected, abs=1e-14), (n, k)


def test_legs_by_hand():
    s3, s5, s15 = math.sqrt(3), math.sqrt(5), math.sqrt(15)
    A, B = hippo_legs(3)
    torch.testing.assert_close(
        A,
        torch.tensor([[-1.0, 0, 0], [-s3, -2, 0], [-s5, -s15, -3]], dtype=F64),
    )
    torch.testing.assert_close(B, torch.tensor([1.0, s3, s5], dtype=F64))
    A32, _ = hippo_legs(3, dtype=torch.float32)
    assert A32.dtype == torch.float32


@pytest.mark.parametrize("N, theta", [(1, 1.0), (6, 0.5), (9, 3.0)])
def test_legt_closed_form(N, theta):
    A, B = hippo_legt(N, theta)
    for n in range(N):
        assert B[n] == pytest.approx(math.sqrt(2 * n + 1) / theta, abs=1e-14)
        for k in range(N):
            sign = 1.0 if k <= n else (-1.0) ** (n - k)
            assert A[n, k] == pytest.approx(
                -math.sqrt((2 * n + 1) * (2 * k + 1)) * sign / theta, abs=1e-13
            )


def test_legt_by_hand():
    A, B = hippo_legt(
        2, theta=2.0
    )  # (1/theta) [[-1, +sqrt3], [-sqrt3, -3]], B = (1/theta) [1, sqrt3]
    h = math.sqrt(3) / 2
    torch.testing.assert_close(
        A, torch.tensor([[-0.5, h], [-h, -1.5]], dtype=F64)
    )
    torch.testing.assert_close(B, torch.tensor([0.5, h], dtype=F64))


# ----------------------------------------------------------------------------- the memory they define


def test_legendre_basis_is_orthonormal():
    L = 4096
    s = (torch.arange(L, dtype=F64) + 0.5) / L  # midpoint rule on [0, 1]
    G = legendre_basis(8, s)  # [L, 8]
    assert_close(
        "gram", torch.eye(8, dtype=F64), G.T @ G / L, atol=1e-5, rtol=0
    )
    assert_close(
        "g_n(1)",
        torch.sqrt(2 * torch.arange(8, dtype=F64) + 1),
        legendre_basis(8, torch.ones(1, dtype=F64))[0],
        atol=1e-13,
        rtol=0,
    )


def test_projection_of_a_polynomial_reconstructs_it():
    L = 2000
    s = (torch.arange(L, dtype=F64) + 0.5) / L
    f = 1 - 3 * s + 2 * s**2
    c = legendre_project(f, 6)
    assert (
        c[3:].abs().max() < 1e-6
    )  # degree 2: nothing beyond g_2 (up to the piecewise-constant holding)
    assert_close(
        "reconstruction", f, legendre_reconstruct(c, s), atol=1e-5, rtol=0
    )


def test_legs_online_equals_the_projection():
    """The LegS ODE (zero-order hold, exact for held samples) computes the projection of every prefix."""
    f = torch.randn(
        2, 50, generator=torch.Generator().manual_seed(1), dtype=F64
    )
    c = legs_coefficients(f, 10, method="zoh")  # [2, 50, 10]
    assert c.shape == (2, 50, 10)
    for k in [0, 1, 2, 17, 49]:
        assert_close(
            f"prefix {k + 1}",
            legendre_project(f[:, : k + 1], 10),
            c[:, k],
            atol=1e-12,
            rtol=0,
        )


def test_legs_bilinear_approaches_the_projection():
    L = 1000
    s = (torch.arange(L, dtype=F64) + 0.5) / L
    f = torch.sin(7 * s) + 0.5 * torch.cos(23 * s**2)
    c = legs_coefficients(f, 24)[-1]
    assert_close("bilinear LegS", legendre_project(f, 24), c, atol=2e-4, rtol=0)
    assert (legendre_reconstruct(c, s) - f).pow(2).mean().sqrt() < 1e-3


def test_legt_remembers_the_window():
    """LegT (approximating the value leaving the window) follows the projection of the last theta."""
    L, theta, N = 2000, 0.25, 24
    t = (torch.arange(L, dtype=F64) + 0.5) / L
    f = torch.sin(7 * t) + 0.5 * torch.cos(23 * t**2)
    Ab, Bb = discretize(*hippo_legt(N, theta), 1 / L, method="zoh")
    _, states = ssm_scan(
        Ab, Bb, torch.zeros(N, dtype=F64), f, return_states=True
    )
    W = int(theta * L)
    for k in [999, 1999]:
        window = f[k - W + 1 : k + 1]
        assert_close(
            f"window ending at {k}",
            legendre_project(window, N),
            states[k],
            atol=3e-3,
            rtol=0,
        )


# ----------------------------------------------------------------------------- discretisation


@pytest.mark.parametrize(
    "a, b, step", [(-1.0, 1.0, 0.5), (-3.0, 2.0, 0.1), (0.5, -1.0, 0.2)]
)
def test_discretize_scalar_closed_form(a, b, step):
    A, B = torch.tensor([[a]], dtype=F64), torch.tensor([b], dtype=F64)
    Ab, Bb = discretize(A, B, step, "bilinear")
    assert Ab.item() == pytest.approx(
        (1 + step * a / 2) / (1 - step * a / 2), rel=1e-14
    )
    assert Bb.item() == pytest.approx(step * b / (1 - step * a / 2), rel=1e-14)
    Ab, Bb = discretize(A, B, step, "zoh")
    assert Ab.item() == pytest.approx(math.exp(step * a), rel=1e-14)
    assert Bb.item() == pytest.approx(
        (math.exp(step * a) - 1) / a * b, rel=1e-13
    )


def test_zoh_with_a_singular_matrix():
    """A = 0 (an integrator) has no inverse; the augmented exponential gives Bb = step B."""
    A = torch.tensor(
        [[0.0, 1.0], [0.0, 0.0]], dtype=F64
    )  # x1' = x2, x2' = u: a double integrator
    Ab, Bb = discretize(A, torch.tensor([0.0, 1.0], dtype=F64), 0.5, "zoh")
    torch.testing.assert_close(
        Ab, torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=F64)
    )
    torch.testing.assert_close(
        Bb, torch.tensor([0.125, 0.5], dtype=F64)
    )  # step^2 / 2, step


def euler(A, B, x0, u, step, substeps):
    """Integrate ``dx/dt = A x + B u(t)`` over one step with many explicit Euler substeps."""
    x, h = x0.clone(), step / substeps
    for i in range(substeps):
        x = x + h * (A @ x + B * u(i * h))
    return x


def test_discretizations_against_fine_euler():
    A, B, _ = stable_ssm(4)
    x0 = torch.randn(4, generator=torch.Generator().manual_seed(2), dtype=F64)
    step = 0.05
    Ab, Bb = discretize(
        A, B, step, "zoh"
    )  # exact for an input held at its value (here 1)
    assert_close(
        "zoh",
        euler(A, B, x0, lambda t: 1.0, step, 20000),
        Ab @ x0 + Bb * 1.0,
        atol=1e-6,
        rtol=0,
    )
    # bilinear: the trapezoid rule, fed the average of the input at both ends of the step (here
    # the input 1 + t); its error per step shrinks like step^3, Euler's like step^2
    errors = []
    for h in (step, step / 2):
        Ab, Bb = discretize(A, B, h, "bilinear")
        exact = euler(A, B, x0, lambda t: 1.0 + t, h, 20000)
        errors.append((Ab @ x0 + Bb * (1.0 + h / 2) - exact).abs().max().item())
        one_euler_step = (x0 + h * (A @ x0 + B) - exact).abs().max().item()
        assert errors[-1] < one_euler_step / 10
    assert 6 < errors[0] / errors[1] < 10, errors


def test_discretize_one_step_per_ssm():
    A, B, _ = stable_ssm(3, batch=(4,))
    steps = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    for method in ("bilinear", "zoh"):
        Ab, Bb = discretize(A, B, steps, method)
        assert Ab.shape == (4, 3, 3) and Bb.shape == (4, 3)
        for h in range(4):
            Ab_h, Bb_h = discretize(A[h], B[h], steps[h].item(), method)
            torch.testing.assert_close(Ab[h], Ab_h)
            torch.testing.assert_close(Bb[h], Bb_h)


# ----------------------------------------------------------------------------- the two views


def test_ssm_kernel_is_powers():
    A, B, C = stable_ssm(5)
    Ab, Bb = discretize(A, B, 0.1)
    for L in (1, 2, 7, 16):
        expected = torch.stack(
            [C @ torch.linalg.matrix_power(Ab, k) @ Bb for k in range(L)]
        )
        assert_close(
            f"L={L}", expected, ssm_kernel(Ab, Bb, C, L), atol=1e-13, rtol=0
        )


@pytest.mark.parametrize("L", [1, 31, 129])
@pytest.mark.parametrize("method", ["bilinear", "zoh"])
def test_fft_conv_equals_the_recurrence(L, method):
    """S4's two views: the convolution with K = (C Ab^k Bb)_k is the recurrence, for H SSMs at once."""
    A, B = hippo_legs(8)
    _, _, C = stable_ssm(8, batch=(3,))
    steps = torch.tensor([0.01, 0.1, 0.5], dtype=F64)
    Ab, Bb = discretize(
        A, B, steps, method
    )  # [3, 8, 8], [3, 8]: one step per channel
    u = torch.randn(
        2, 3, L, generator=torch.Generator().manual_seed(L), dtype=F64
    )  # [batch, H, L]
    y_scan = ssm_scan(Ab, Bb, C, u)
    y_conv = fft_conv(u, ssm_kernel(Ab, Bb, C, L))
    assert y_scan.shape == y_conv.shape == (2, 3, L)
    assert_close("fft_conv vs scan", y_scan, y_conv, atol=1e-12, rtol=1e-12)


def test_scan_states_and_float32():
    A, B, C = stable_ssm(4)
    Ab, Bb = discretize(A, B, 0.2, "zoh")
    u = torch.randn(20, generator=torch.Generator().manual_seed(3), dtype=F64)
    y, states = ssm_scan(Ab, Bb, C, u, return_states=True)
    assert states.shape == (20, 4)
    torch.testing.assert_close(states @ C, y)
    torch.testing.assert_close(states[1], Ab @ states[0] + Bb * u[1])
    y32 = fft_conv(u.float(), ssm_kernel(Ab.float(), Bb.float(), C.float(), 20))
    assert y32.dtype == torch.float32
    assert_close("float32", y, y32, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("L", [1, 31, 129])
def test_s4_is_the_selective_scan_without_selectivity(L):
    """A diagonal SSM discretised by zero-order hold, as a convolution, equals Mamba's scan with a
    constant delta and time-invariant B and C. Mamba multiplies B by delta (x_t = exp(delta A) x +
    delta B u), so it is handed the ZOH input matrix divided by the step."""
    b, d, n, step = 2, 4, 8, 0.1
    g = torch.Generator().manual_seed(L)
    a = -(
        0.5 + torch.rand(d, n, generator=g, dtype=F64)
    )  # the diagonal of A, per channel
    B, C = (
        torch.randn(d, n, generator=g, dtype=F64),
        torch.randn(d, n, generator=g, dtype=F64),
    )
    u = torch.randn(b, d, L, generator=g, dtype=F64)
    Ab, Bb = discretize(
        torch.diag_embed(a), B, step, "zoh"
    )  # [d, n, n], [d, n]
    y_conv = fft_conv(u, ssm_kernel(Ab, Bb, C, L))  # [b, d, L]
    delta = torch.full((b, d, L), step, dtype=torch.float32)
    y_scan = selective_scan(
        u.float(), delta, a.float(), (Bb / step).float(), C.float()
    )
    assert_close(
        "selective_scan vs S4 convolution", y_conv, y_scan, atol=1e-5, rtol=1e-4
    )


# ----------------------------------------------------------------------------- bad input


def good():
    A, B, C = stable_ssm(4)
    return {"A": A, "B": B, "C": C, "u": torch.randn(10, dtype=F64)}


BAD = [
    (lambda: hippo_legs(0), ValueError, "N must be a positive int, got 0"),
    (lambda: hippo_legs(3.0), TypeError, "N must be a positive int, got float"),
    (lambda: hippo_legs(True), TypeError, "N must be a positive int"),
    (
        lambda: hippo_legs(3, dtype=torch.float16),
        TypeError,
        "dtype must be torch.float32 or torch.float64",
    ),
    (
        lambda: hippo_legt(3, theta=0.0),
        ValueError,
        "theta must be a positive finite number, got 0.0",
    ),
    (
        lambda: hippo_legt(3, theta="1"),
        TypeError,
        "theta must be a positive finite number, got str",
    ),
    (
        lambda: discretize(good()["A"][:3], good()["B"], 0.1),
        ValueError,
        "A must be square [..., N, N], got (3, 4)",
    ),
    (
        lambda: discretize(good()["A"], good()["B"][:3], 0.1),
        ValueError,
        "B must have shape [..., N] with N = 4",
    ),
    (
        lambda: discretize(good()["A"].numpy(), good()["B"], 0.1),
        TypeError,
        "A must be a torch.Tensor",
    ),
    (
        lambda: discretize(good()["A"].half(), good()["B"], 0.1),
        TypeError,
        "A must be float32 or float64, got torch.float16",
    ),
    (
        lambda: discretize(good()["A"], good()["B"].float(), 0.1),
        TypeError,
        "A and B must have the same dtype",
    ),
    (
        lambda: discretize(good()["A"], good()["B"], -0.1),
        ValueError,
        "step must be a positive finite number, got -0.1",
    ),
    (
        lambda: discretize(
            good()["A"], good()["B"], torch.tensor([0.1, 0.0], dtype=F64)
        ),
        ValueError,
        "step must hold positive finite values",
    ),
    (
        lambda: discretize(
            good()["A"][None].expand(3, 4, 4),
            good()["B"],
            torch.ones(2, dtype=F64),
        ),
        ValueError,
        "the leading (batch) dimensions must broadcast",
    ),
    (
        lambda: discretize(good()["A"], good()["B"], 0.1, method="euler"),
        ValueError,
        'method must be "bilinear" or "zoh", got \'euler\'',
    ),
    (
        lambda: ssm_scan(
            good()["A"], good()["B"], good()["C"][:2], good()["u"]
        ),
        ValueError,
        "C must have shape [..., N] with N = 4 (the size of Ab)",
    ),
    (
        lambda: ssm_scan(
            good()["A"], good()["B"], good()["C"], good()["u"], return_states=1
        ),
        TypeError,
        "return_states must be True or False",
    ),
    (
        lambda: ssm_scan(
            good()["A"], good()["B"], good()["C"], torch.tensor(1.0, dtype=F64)
        ),
        ValueError,
        "u must have shape [..., L]",
    ),
    (
        lambda: ssm_kernel(good()["A"], good()["B"], good()["C"], 0),
        ValueError,
        "L must be a positive int, got 0",
    ),
    (
        lambda: fft_conv(good()["u"], torch.ones(9, dtype=F64)),
        ValueError,
        "K must have the length of u, L = 10",
    ),
    (
        lambda: fft_conv(torch.ones(2, 10), torch.ones(3, 10)),
        ValueError,
        "the leading (batch) dimensions must broadcast",
    ),
    (
        lambda: fft_conv(torch.ones(10, dtype=torch.int64), torch.ones(10)),
        TypeError,
        "u must be float32 or float64",
    ),
    (
        lambda: legs_coefficients(good()["u"], 4, method="foh"),
        ValueError,
        'method must be "bilinear" or "zoh"',
    ),
    (
        lambda: legendre_reconstruct(
            torch.ones(3, dtype=F64), torch.ones(2, 2, dtype=F64)
        ),
        ValueError,
        "s must have shape [P], got (2, 2)",
    ),
    (
        lambda: legendre_project([1.0, 2.0], 3),
        TypeError,
        "f must be a torch.Tensor of shape [..., L], got list",
    ),
]


@pytest.mark.parametrize(
    "call, error, message", BAD, ids=[m[:40] for _, _, m in BAD]
)
def test_bad_input(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)
