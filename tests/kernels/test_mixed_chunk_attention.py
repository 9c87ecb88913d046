"""mixed_chunk_attention (FLASH): the chunked form against its definition as one [T, T] matrix of
weights, in float64, at lengths that are not multiples of the chunk; gradients; causality; the
quadratic GAU as one chunk; bad input.
"""

import pytest
import torch

from _compare import assert_close
from kernels.linear_attention.naive import mixed_chunk_attention


def mixed_chunk_quadratic(q_quad, k_quad, q_lin, k_lin, v, chunk, scale=None):
    """The definition: weights ``relu(scale q_quad_t . k_quad_s)^2 / C`` in the causal part of
    ``t``'s own chunk, ``q_lin_t . k_lin_s / (g(t) C)`` on every earlier chunk, 0 elsewhere."""
    scale = q_quad.shape[-1] ** -0.5 if scale is None else scale
    T = v.shape[-2]
    t = torch.arange(T)
    g = t // chunk  # [T]: chunk of each position
    same = (g[:, None] == g[None, :]) & (t[None, :] <= t[:, None])  # [T, T]
    earlier = g[None, :] < g[:, None]  # [T, T]
    quad = (
        torch.relu(scale * q_quad @ k_quad.transpose(-1, -2)) ** 2 / chunk
    )  # [..., T, T]
    lin = (q_lin @ k_lin.transpose(-1, -2)) / (g * chunk).clamp_min(1)[
        :, None
    ].to(v.dtype)
    W = torch.where(same, quad, 0.0) + torch.where(earlier, lin, 0.0)
    return W @ v


def make_inputs(
    lead, T, S, E, dtype=torch.float64, seed=0, requires_grad=False
):
    g = torch.Generator().manual_seed(seed)
    xs = [
        torch.randn(*lead, T, S, generator=g, dtype=torch.float64)
        for _ in range(4)
    ]
    xs.append(torch.randn(*lead, T, E, generator=g, dtype=torch.float64))
    return [x.to(dtype).requires_grad_(requires_grad) for x in xs]


# (leading dims, T, S, E, chunk): length 1, shorter than a chunk, exact multiples, ragged ends.
CASES = [
    ((2, 3), 1, 8, 12, 16),
    ((1, 1), 5, 8, 8, 16),
    ((2, 3), 16, 8, 12, 16),
    ((2, 3), 37, 16, 12, 16),
    ((2,), 64, 8, 24, 16),
    ((1, 2), 50, 8, 8, 7),
]


@pytest.mark.parametrize(
    "case",
    CASES,
    ids=lambda c: (
        f"lead{'x'.join(map(str, c[0]))}-T{c[1]}-S{c[2]}-E{c[3]}-C{c[4]}"
    ),
)
def test_chunked_form_equals_the_definition(case):
    lead, T, S, E, chunk = case
    inputs = make_inputs(lead, T, S, E)
    out = mixed_chunk_attention(*inputs, chunk)
    assert out.shape == (*lead, T, E) and out.dtype == torch.float64
    assert_close(
        "output",
        mixed_chunk_quadratic(*inputs, chunk),
        out,
        atol=1e-12,
        rtol=1e-12,
    )


def test_scale_and_float32():
    inputs = make_inputs((2, 1), 45, 16, 8, seed=1)
    ref = mixed_chunk_quadratic(*inputs, 10, scale=0.3)
    out = mixed_chunk_attention(*(x.float() for x in inputs), 10, scale=0.3)
    assert out.dtype == torch.float32
    assert_close("float32 output", ref, out, atol=1e-4, rtol=1e-4)


def test_gradients_match_the_definition():
    inputs = make_inputs((2,), 29, 8, 12, seed=2, requires_grad=True)
    do = torch.randn(2, 29, 12, dtype=torch.float64)
    mixed_chunk_attention(*inputs, 8).backward(do)
    grads = [x.grad.clone() for x in inputs]
    for x in inputs:
        x.grad = None
    mixed_chunk_quadratic(*inputs, 8).backward(do)
    for name, x, grad in zip(
        ("q_quad", "k_quad", "q_lin", "k_lin", "v"), inputs, grads
    ):
        assert grad.abs().max() > 0, f"{name} receives no gradient"
        assert_close(f"d{name}", x.grad, grad, atol=1e-11, rtol=1e-11)


def test_causal_and_exclusive_across_chunks():
    """Changing position p leaves every earlier output unchanged, including those of p's own chunk."""
    T, chunk, p = 40, 8, 21  # p in the middle of the third chunk
    inputs = make_inputs((1, 2), T, 8, 8, seed=3)
    changed = [x.clone() for x in inputs]
    for x in changed:
        x[..., p, :] = torch.randn_like(x[..., p, :])
    before, after = (
        mixed_chunk_attention(*inputs, chunk),
        mixed_chunk_attention(*changed, chunk),
    )
    assert torch.equal(before[..., :p, :], after[..., :p, :])
    assert not torch.allclose(before[..., p:, :], after[..., p:, :])


def test_one_chunk_is_quadratic_squared_relu_attention():
    """With chunk >= T there is no linear part: causal relu^2 attention divided by the chunk."""
    T, chunk = 30, 32
    q_quad, k_quad, q_lin, k_lin, v = make_inputs((2,), T, 8, 8, seed=4)
    scores = (
        torch.relu(8**-0.5 * q_quad @ k_quad.transpose(-1, -2)) ** 2 / chunk
    )
    ref = (
        scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), 0.0) @ v
    )
    out = mixed_chunk_attention(q_quad, k_quad, 100 * q_lin, k_lin, v, chunk)
    assert_close("one chunk", ref, out, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (
            lambda a: {**a, "chunk": 0},
            ValueError,
            "chunk must be a positive int",
        ),
        (
            lambda a: {**a, "chunk": 2.5},
            ValueError,
            "chunk must be a positive int",
        ),
        (
            lambda a: {**a, "chunk": True},
            ValueError,
            "chunk must be a positive int",
        ),
        (lambda a: {**a, "scale": -1.0}, ValueError, "scale"),
        (
            lambda a: {**a, "k_lin": a["k_lin"][..., :4]},
            ValueError,
            "k_lin must have the shape of q_quad",
        ),
        (
            lambda a: {**a, "v": a["v"][:, :5]},
            ValueError,
            "v must have the leading dims",
        ),
        (
            lambda a: {**a, "q_quad": a["q_quad"][0, 0]},
            ValueError,
            "q_quad must have at least 2 dimensions",
        ),
        (lambda a: {**a, "v": a["v"].long()}, TypeError, "v must be"),
        (
            lambda a: {**a, "q_lin": a["q_lin"].float()},
            TypeError,
            "must have the same dtype",
        ),
        (
            lambda a: {**a, "q_quad": a["q_quad"].tolist()},
            TypeError,
            "q_quad must be a torch.Tensor",
        ),
        (
            lambda a: {
                name: x[:, :0] if name != "chunk" else x
                for name, x in a.items()
            },
            ValueError,
            "at least one position",
        ),
    ],
)
def test_bad_input(change, error, match):
    q_quad, k_quad, q_lin, k_lin, v = make_inputs((2,), 9, 8, 8)
    args = {
        "q_quad": q_quad,
        "k_quad": k_quad,
        "q_lin": q_lin,
        "k_lin": k_lin,
        "v": v,
        "chunk": 4,
    }
    with pytest.raises(error, match=match):
        mixed_chunk_attention(**change(args))
