"""linear_attention: the chunk-wise Triton kernels against the float64 references, the two
references against each other, the decoding step, the normaliser, the feature maps, bad input.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py) with chunks of 16,
so lengths of 17, 40 and 63 cross several chunk boundaries; with a GPU the tests run on CUDA.
"""

import pytest
import torch

from _compare import assert_close
from kernels import linear_attention, linear_attention_step, uses_triton
from kernels.linear_attention import (
    elu_plus_one,
    gaussian_projection,
    linear_attention_chunk_states,
    linear_attention_quadratic,
    linear_attention_recurrent,
    orthogonal_gaussian,
    positive_random_features,
    trigonometric_random_features,
)

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"

# (B, H, T, K, V, decay strength, initial state, per-token decay): lengths 1, around the chunk,
# several chunks; head dims that are no power of two; per-token log-decays down to -30.
SHAPES = [
    (1, 1, 1, 16, 16, 0.0, False, False),
    (1, 2, 16, 16, 8, 0.5, True, False),
    (2, 3, 17, 40, 24, 1.0, True, True),
    (1, 2, 40, 64, 32, 0.0, False, False),
    (2, 1, 63, 16, 64, 5.0, True, True),
    (1, 3, 33, 8, 16, 0.1, False, False),
    (1, 2, 21, 60, 100, 30.0, True, True),
    (1, 1, 1, 12, 20, 2.0, True, True),
]
if CUDA:
    SHAPES += [
        (2, 4, 1000, 64, 64, 0.05, True, True),
        (1, 8, 4097, 128, 128, 0.01, False, False),
        (1, 2, 300, 256, 256, 1.0, True, True),
        (1, 2, 700, 100, 512, 0.5, True, True),
    ]
HALF_DTYPES = [torch.float16] + ([torch.bfloat16] if CUDA else [])


def shape_id(shape):
    B, H, T, K, V, decay, s0, per_token = shape
    return (
        f"B{B}-H{H}-T{T}-K{K}-V{V}-decay{decay}"
        + ("-per-token" if per_token else "")
        + ("-state" if s0 else "")
    )


def make_inputs(shape, dtype, seed=0):
    B, H, T, K, V, strength, with_state, per_token = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, K, generator=g) * K**-0.25
    k = torch.randn(B, H, T, K, generator=g) * K**-0.25
    v = torch.randn(B, H, T, V, generator=g)
    decay = (
        -strength * torch.rand(*((B, H, T) if per_token else (H,)), generator=g)
        if strength
        else None
    )
    s0 = torch.randn(B, H, K, V, generator=g) if with_state else None
    do, dfinal = (
        torch.randn(B, H, T, V, generator=g),
        torch.randn(B, H, K, V, generator=g),
    )
    to = lambda x, dt=dtype: None if x is None else x.to(DEVICE, dt)  # noqa: E731
    return (
        to(q),
        to(k),
        to(v),
        to(decay, torch.float32),
        to(s0, torch.float32),
        to(do),
        to(dfinal, torch.float32),
    )


def run_and_compare(shape, dtype, atol, rtol):
    q, k, v, decay, s0, do, dfinal = make_inputs(shape, dtype)
    assert uses_triton(q), "the test would compare the reference with itself"
    inputs = [q, k, v, s0, decay]
    for x in inputs:
        if x is not None:
            x.requires_grad_()
    o, final = linear_attention(
        q, k, v, decay=decay, initial_state=s0, return_final_state=True
    )
    assert (
        o.dtype == dtype and o.shape == v.shape and final.dtype == torch.float32
    )
    ((o.float() * do.float()).sum() + (final * dfinal).sum()).backward()
    ref_inputs = [
        None if x is None else x.detach().double().requires_grad_()
        for x in inputs
    ]
    o64, final64 = linear_attention_quadratic(
        *ref_inputs[:3], decay=ref_inputs[4], initial_state=ref_inputs[3]
    )
    ((o64 * do.double()).sum() + (final64 * dfinal.double()).sum()).backward()
    assert_close("o", o64, o, atol, rtol)
    assert_close("final state", final64, final, atol, rtol)
    for name, x, x64 in zip(
        ("dq", "dk", "dv", "d initial_state", "d decay"), inputs, ref_inputs
    ):
        if x is None:
            continue
        assert x.grad.dtype == x.dtype
        # the decay's gradient sums over the sequence: its error grows with the length
        scale = x64.grad.abs().max().item() if name == "d decay" else 1.0
        assert_close(name, x64.grad, x.grad, atol * max(1.0, scale), rtol)


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_float32_matches_reference(shape):
    run_and_compare(shape, torch.float32, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape", [SHAPES[2], SHAPES[4]] + SHAPES[6:], ids=shape_id
)
def test_half_precision_matches_reference(shape, dtype):
    tol = {torch.float16: 2e-2, torch.bfloat16: 8e-2}[dtype]
    run_and_compare(shape, dtype, atol=tol, rtol=tol)


@pytest.mark.parametrize("shape", SHAPES[:5], ids=shape_id)
def test_references_agree(shape):
    q, k, v, decay, s0, _, _ = make_inputs(shape, torch.float64)
    decay = None if decay is None else decay.double()
    s0 = (
        None if s0 is None else s0.double()
    )  # per-head and per-token decays alike
    o1, f1 = linear_attention_quadratic(
        q.cpu(),
        k.cpu(),
        v.cpu(),
        decay=None if decay is None else decay.cpu(),
        initial_state=None if s0 is None else s0.cpu(),
    )
    o2, f2 = linear_attention_recurrent(
        q.cpu(),
        k.cpu(),
        v.cpu(),
        decay=None if decay is None else decay.cpu(),
        initial_state=None if s0 is None else s0.cpu(),
    )
    assert_close("o", o1, o2, 1e-10, 1e-10)
    assert_close("final state", f1, f2, 1e-10, 1e-10)


def test_non_causal_is_q_times_kt_v():
    q, k, v, *_ = make_inputs(
        (2, 2, 30, 16, 24, 0.0, False, False), torch.float32
    )
    expected = (
        16**-0.5 * q.double() @ (k.double().transpose(-1, -2) @ v.double())
    )
    assert_close(
        "o", expected, linear_attention(q, k, v, causal=False), 1e-5, 1e-5
    )


@pytest.mark.parametrize(
    "per_token", [False, True], ids=["per-head", "per-token"]
)
def test_state_carries_over_between_calls_and_steps(per_token):
    """Prefill in two pieces, then decode token by token: the same as one call over everything."""
    q, k, v, decay, _, _, _ = make_inputs(
        (1, 2, 40, 16, 16, 0.5, False, per_token), torch.float32
    )
    piece = (
        (lambda a, b: decay[..., a:b]) if per_token else (lambda a, b: decay)
    )  # noqa: E731
    whole = linear_attention(q, k, v, decay=decay)
    first, state = linear_attention(
        q[:, :, :23],
        k[:, :, :23],
        v[:, :, :23],
        decay=piece(0, 23),
        return_final_state=True,
    )
    second, state = linear_attention(
        q[:, :, 23:35],
        k[:, :, 23:35],
        v[:, :, 23:35],
        decay=piece(23, 35),
        initial_state=state,
        return_final_state=True,
    )
    steps = []
    for t in range(35, 40):
        step_decay = decay[..., t] if per_token else decay
        o_t, state = linear_attention_step(
            q[:, :, t], k[:, :, t], v[:, :, t], state, decay=step_decay
        )
        steps.append(o_t)
    assert_close(
        "pieces",
        whole,
        torch.cat([first, second, torch.stack(steps, dim=2)], dim=2),
        2e-5,
        1e-4,
    )


def test_normalize_divides_by_the_decayed_key_sum():
    q, k, v, decay, _, _, _ = make_inputs(
        (1, 2, 37, 16, 8, 0.3, False, False), torch.float64
    )
    q, k = elu_plus_one(q), elu_plus_one(k)
    T = q.shape[2]
    lag = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    D = torch.where(
        lag >= 0,
        torch.exp(decay.double().cpu()[:, None, None] * lag.clamp_min(0)),
        0.0,
    )
    A = (q.cpu() @ k.cpu().transpose(-1, -2)) * D  # the scale cancels
    expected = (A @ v.cpu()) / A.sum(-1, keepdim=True)
    got = linear_attention(
        q.float(), k.float(), v.float(), decay=decay, normalize=True
    )
    assert_close("normalized", expected, got.cpu(), 1e-5, 1e-4)


def test_normalize_gradients_with_v_plus_ones_wider_than_a_tile():
    """normalize=True appends a column of ones to v, so the gradient of q runs the kernels on
    operands of width V + 1 = 65, wider than a float32 tile (64): the kernel loops over tiles."""
    q, k, v, decay, _, do, _ = make_inputs(
        (1, 2, 21, 16, 64, 0.3, False, False), torch.float32
    )
    assert uses_triton(q), "the test would compare the reference with itself"
    q, k, v = (elu_plus_one(x).detach().requires_grad_() for x in (q, k, v))
    (
        linear_attention(q, k, v, decay=decay, normalize=True) * do
    ).sum().backward()
    ref = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ones = torch.ones(*v.shape[:-1], 1, dtype=torch.float64, device=v.device)
    out, _ = linear_attention_quadratic(
        ref[0], ref[1], torch.cat([ref[2], ones], -1), decay=decay.double()
    )
    ((out[..., :-1] / (out[..., -1:] + 1e-6)) * do.double()).sum().backward()
    for name, x, x64 in zip(("dq", "dk", "dv"), (q, k, v), ref):
        assert_close(name, x64.grad, x.grad, 1e-4, 1e-4)


def test_per_head_decay_is_a_constant_per_token_decay():
    """A per-head decay [H] and the same values repeated over [B, H, T] give the same outputs,
    and the gradient of the per-head decay is the per-token one summed over batch and time."""
    q, k, v, decay, s0, do, _ = make_inputs(
        (2, 2, 19, 16, 16, 0.7, True, False), torch.float32
    )
    per_head = decay.clone().requires_grad_()
    per_token = decay[None, :, None].expand(2, 2, 19).clone().requires_grad_()
    o1 = linear_attention(q, k, v, decay=per_head, initial_state=s0)
    o2 = linear_attention(q, k, v, decay=per_token, initial_state=s0)
    assert_close("o", o1, o2, 1e-6, 1e-6)
    (o1 * do).sum().backward()
    (o2 * do).sum().backward()
    assert_close(
        "d decay", per_token.grad.sum((0, 2)), per_head.grad, 1e-4, 1e-4
    )


def test_strong_decays_stay_finite():
    """Log-decays of -30 per token (exp(-30) ~ 1e-13 per step): nothing overflows into inf or NaN."""
    q, k, v, _, s0, do, _ = make_inputs(
        (1, 2, 40, 16, 16, 0.0, True, False), torch.float32
    )
    decay = torch.full((1, 2, 40), -30.0, device=q.device).requires_grad_()
    o, final = linear_attention(
        q, k, v, decay=decay, initial_state=s0, return_final_state=True
    )
    (o * do).sum().backward()
    o64, final64 = linear_attention_recurrent(
        q.double(),
        k.double(),
        v.double(),
        decay=decay.detach().double(),
        initial_state=s0.double(),
    )
    assert torch.isfinite(decay.grad).all()
    assert_close("o", o64, o, 1e-5, 1e-4)
    assert_close("final state", final64, final, 1e-5, 1e-4)


@pytest.mark.parametrize(
    "T, chunk_size", [(150, 64), (64, 64), (1, 128), (200, 128)]
)
def test_chunk_states_and_their_gradients(T, chunk_size):
    """The state before each chunk, against the float64 reference, with gradients flowing through
    the chunk states into q, k, v, the per-token decay and the initial state."""
    q, k, v, decay, s0, do, dfinal = make_inputs(
        (1, 2, T, 16, 24, 2.0, True, True), torch.float32, seed=T
    )
    inputs = [q, k, v, decay, s0]
    for x in inputs:
        x.requires_grad_()
    o, final, states = linear_attention(
        q,
        k,
        v,
        decay=decay,
        initial_state=s0,
        return_final_state=True,
        return_chunk_states=True,
        chunk_size=chunk_size,
    )
    assert (
        states.shape == (1, 2, -(-T // chunk_size), 16, 24)
        and states.dtype == torch.float32
    )
    dstates = torch.randn(
        states.shape, generator=torch.Generator().manual_seed(1)
    ).to(DEVICE)
    (
        (o * do).sum() + (final * dfinal).sum() + (states * dstates).sum()
    ).backward()
    refs = [x.detach().double().requires_grad_() for x in inputs]
    o64, final64 = linear_attention_quadratic(
        refs[0], refs[1], refs[2], decay=refs[3], initial_state=refs[4]
    )
    states64 = linear_attention_chunk_states(
        refs[1], refs[2], refs[3], refs[4], chunk_size
    )
    (
        (o64 * do.double()).sum()
        + (final64 * dfinal.double()).sum()
        + (states64 * dstates.double()).sum()
    ).backward()
    assert_close("chunk states", states64, states, 5e-5, 1e-4)
    assert_close("first chunk state", s0, states[:, :, 0], 0, 0)
    for name, x, x64 in zip(
        ("dq", "dk", "dv", "d decay", "d initial_state"), inputs, refs
    ):
        assert_close(
            name,
            x64.grad,
            x.grad,
            5e-5 * max(1.0, x64.grad.abs().max().item()),
            1e-4,
        )


def test_chunk_states_match_the_recurrence():
    q, k, v, decay, s0, _, _ = make_inputs(
        (2, 1, 130, 8, 8, 0.5, True, True), torch.float32
    )
    _, states = linear_attention(
        q,
        k,
        v,
        decay=decay,
        initial_state=s0,
        return_chunk_states=True,
        chunk_size=64,
    )
    q, k, v, decay, s0 = (x.double() for x in (q, k, v, decay, s0))
    for i, t0 in enumerate((0, 64, 128)):
        S = (
            s0
            if t0 == 0
            else linear_attention_recurrent(
                q[:, :, :t0],
                k[:, :, :t0],
                v[:, :, :t0],
                decay=decay[..., :t0],
                initial_state=s0,
            )[1]
        )
        assert_close(f"state before {t0}", S, states[:, :, i], 2e-5, 1e-4)


@pytest.mark.parametrize(
    "starts",
    [(5, 65, 68), (16, 32, 33)],
    ids=["inside-chunks", "at-chunk-starts"],
)
def test_packed_sequences_with_seq_idx(starts):
    """Sequences packed into one row restart from a zero state: outputs, final and chunk states and
    all gradients against the float64 reference; row 2 is one sequence. The reference itself is
    checked against the recurrence, which zeroes the state where the id changes."""
    q, k, v, decay, s0, do, dfinal = make_inputs(
        (2, 2, 70, 16, 8, 1.0, True, True), torch.float32, seed=7
    )
    seq_idx = torch.zeros(2, 70, dtype=torch.int64)
    for start in starts:
        seq_idx[0, start:] += 1
    seq_idx = seq_idx.to(DEVICE)
    inputs = [q, k, v, decay, s0]
    for x in inputs:
        x.requires_grad_()
    o, final, states = linear_attention(
        q,
        k,
        v,
        decay=decay,
        initial_state=s0,
        return_final_state=True,
        return_chunk_states=True,
        seq_idx=seq_idx,
    )
    gen = torch.Generator().manual_seed(3)
    dstates = torch.randn(states.shape, generator=gen).to(DEVICE)
    (
        (o * do).sum() + (final * dfinal).sum() + (states * dstates).sum()
    ).backward()
    refs = [x.detach().double().requires_grad_() for x in inputs]
    o64, final64 = linear_attention_quadratic(
        *refs[:3], decay=refs[3], initial_state=refs[4], seq_idx=seq_idx
    )
    states64 = linear_attention_chunk_states(
        refs[1], refs[2], refs[3], refs[4], 64, seq_idx
    )
    (
        (o64 * do.double()).sum()
        + (final64 * dfinal.double()).sum()
        + (states64 * dstates.double()).sum()
    ).backward()
    q64, k64, v64, decay64, s064 = (x.detach() for x in refs)
    o_rec, final_rec = linear_attention_recurrent(
        q64, k64, v64, decay=decay64, initial_state=s064, seq_idx=seq_idx
    )
    assert_close("recurrence vs quadratic", o_rec, o64, 1e-10, 1e-10)
    assert_close(
        "recurrence vs quadratic, final", final_rec, final64, 1e-10, 1e-10
    )
    for name, ref, got in (
        ("o", o64, o),
        ("final state", final64, final),
        ("chunk states", states64, states),
    ):
        assert_close(name, ref, got, 5e-5, 1e-4)
    for name, x, x64 in zip(
        ("dq", "dk", "dv", "d decay", "d initial_state"), inputs, refs
    ):
        assert_close(
            name,
            x64.grad,
            x.grad,
            5e-5 * max(1.0, x64.grad.abs().max().item()),
            1e-4,
        )


@pytest.mark.parametrize("decay_shape", [None, "per-head", "per-batch"])
@pytest.mark.parametrize(
    "dims", [(2, 3, 16, 24), (1, 1, 100, 72)], ids=["K16-V24", "K100-V72"]
)
def test_fused_step_matches_the_plain_step(dims, decay_shape):
    """The fused decoding kernel against the plain PyTorch step (under autograd, which takes the
    PyTorch path), float16 inputs with a float32 state."""
    B, H, K, V = dims
    g = torch.Generator().manual_seed(K)
    q, k = (torch.randn(B, H, K, generator=g) * K**-0.25 for _ in range(2))
    v, state = (
        torch.randn(B, H, V, generator=g),
        torch.randn(B, H, K, V, generator=g),
    )
    decay = {
        None: None,
        "per-head": -torch.rand(H, generator=g),
        "per-batch": -torch.rand(B, H, generator=g),
    }[decay_shape]
    q, k, v = (x.to(DEVICE, torch.float16) for x in (q, k, v))
    state = state.to(DEVICE)
    decay = None if decay is None else decay.to(DEVICE)
    assert uses_triton(q), "the test would compare the plain step with itself"
    o, new = linear_attention_step(q, k, v, state, decay=decay)
    q_ref = (
        q.clone().requires_grad_()
    )  # a gradient is needed: the PyTorch step runs
    o_ref, new_ref = linear_attention_step(q_ref, k, v, state, decay=decay)
    assert o.dtype == torch.float16 and new.dtype == torch.float32
    assert_close("new state", new_ref.detach(), new, 1e-6, 1e-6)
    assert_close("o", o_ref.detach(), o, 2e-3, 2e-3)


def test_no_value_is_read_on_a_device_without_data():
    """On meta tensors (shapes without values) every check passes and the call runs: nothing in
    it reads a value back, which on a GPU would make the host wait for the device."""
    m = dict(device="meta")
    q, v = torch.empty(2, 3, 50, 16, **m), torch.empty(2, 3, 50, 8, **m)
    o, S, states = linear_attention(
        q,
        q,
        v,
        decay=torch.empty(2, 3, 50, **m),
        initial_state=torch.empty(2, 3, 16, 8, **m),
        return_final_state=True,
        return_chunk_states=True,
    )
    assert (
        o.shape == v.shape
        and S.shape == (2, 3, 16, 8)
        and states.shape == (2, 3, 1, 16, 8)
    )
    o1, _ = linear_attention_step(
        q[:, :, 0], q[:, :, 0], v[:, :, 0], S, decay=torch.empty(2, 3, **m)
    )
    assert o1.shape == (2, 3, 8)


def test_decay_checks_read_no_values():
    """The decay's shape, dtype and device are checked everywhere; its values only on CPU tensors
    (a meta tensor has none: reading one would raise)."""
    from kernels.linear_attention.api import check_log_decay

    check_log_decay(
        torch.empty(2, 3, 5, device="meta"), 2, 3, 5, torch.device("meta")
    )
    with pytest.raises(
        ValueError, match=r"decay must have shape \[H\] = \(3,\) or \[B, H, T\]"
    ):
        check_log_decay(
            torch.empty(2, 3, 4, device="meta"), 2, 3, 5, torch.device("meta")
        )


@pytest.mark.parametrize(
    "features", [positive_random_features, trigonometric_random_features]
)
def test_random_features_estimate_the_softmax_kernel(features):
    g = torch.Generator().manual_seed(3)
    d, m = (
        16,
        16384,
    )  # the estimators are unbiased; their variance grows like exp(|x + y|^2)
    x, y = (
        0.2 * torch.randn(8, d, generator=g, dtype=torch.float64),
        0.2 * torch.randn(8, d, generator=g, dtype=torch.float64),
    )
    w = orthogonal_gaussian(m, d, generator=g, dtype=torch.float64)
    estimate = features(x, w) @ features(y, w).T
    assert_close("exp(x.y)", torch.exp(x @ y.T), estimate, 0.0, 0.1)
    if features is positive_random_features:
        assert (features(x, w) > 0).all()


def test_orthogonal_projection_rows_are_orthogonal_within_a_block():
    w = orthogonal_gaussian(
        40, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    assert w.shape == (40, 16)
    block = w[:16] / w[:16].norm(dim=1, keepdim=True)
    assert_close(
        "gram", torch.eye(16, dtype=torch.float64), block @ block.T, 1e-10, 0
    )
    assert gaussian_projection(5, 16).shape == (5, 16)


# ----------------------------------------------------------------------------- bad input
def _qkv(B=1, H=2, T=8, K=16, V=8):
    return (
        torch.randn(B, H, T, K),
        torch.randn(B, H, T, K),
        torch.randn(B, H, T, V),
    )


BAD_INPUTS = {
    "not a tensor": (
        lambda q, k, v: ("q", k, v, {}),
        TypeError,
        "q must be a torch.Tensor",
    ),
    "3 dims": (
        lambda q, k, v: (q[0], k, v, {}),
        ValueError,
        r"q must have 4 dimensions \[B, H, T, K\]",
    ),
    "integer": (
        lambda q, k, v: (q.int(), k.int(), v.int(), {}),
        TypeError,
        "q must be float16, bfloat16 or float32",
    ),
    "mixed dtypes": (
        lambda q, k, v: (q, k, v.half(), {}),
        TypeError,
        "must have the same dtype",
    ),
    "k shape": (
        lambda q, k, v: (q, k[:, :, :5], v, {}),
        ValueError,
        "k must have the shape of q",
    ),
    "v length": (
        lambda q, k, v: (q, k, v[:, :, :5], {}),
        ValueError,
        r"v must have length \(that of q\) 8, got 5",
    ),
    "value dim": (
        lambda q, k, v: (q, k, torch.randn(1, 2, 8, 0), {}),
        ValueError,
        "V .* must be at least 1, got 0",
    ),
    "decay shape": (
        lambda q, k, v: (q, k, v, {"decay": torch.zeros(3)}),
        ValueError,
        r"one log-decay per head, shape \[2\], got \(3,\)",
    ),
    "decay positive": (
        lambda q, k, v: (q, k, v, {"decay": torch.tensor([-0.1, 0.2])}),
        ValueError,
        "log-decays <= 0",
    ),
    "decay nan": (
        lambda q, k, v: (
            q,
            k,
            v,
            {"decay": torch.tensor([-0.1, float("nan")])},
        ),
        ValueError,
        "finite",
    ),
    "decay integer": (
        lambda q, k, v: (q, k, v, {"decay": torch.tensor([0, 0])}),
        TypeError,
        "decay must be a floating-point",
    ),
    "decay per token shape": (
        lambda q, k, v: (q, k, v, {"decay": torch.zeros(1, 2, 7)}),
        ValueError,
        r"decay must have shape \[H\] = \(2,\) or \[B, H, T\] = \(1, 2, 8\), got \(1, 2, 7\)",
    ),
    "decay per token positive": (
        lambda q, k, v: (q, k, v, {"decay": torch.full((1, 2, 8), 0.1)}),
        ValueError,
        "log-decays <= 0",
    ),
    "decay not causal": (
        lambda q, k, v: (q, k, v, {"decay": torch.zeros(2), "causal": False}),
        ValueError,
        "decay needs causal=True",
    ),
    "state not causal": (
        lambda q, k, v: (
            q,
            k,
            v,
            {"initial_state": torch.zeros(1, 2, 16, 8), "causal": False},
        ),
        ValueError,
        "initial_state needs causal=True",
    ),
    "final not causal": (
        lambda q, k, v: (
            q,
            k,
            v,
            {"return_final_state": True, "causal": False},
        ),
        ValueError,
        "return_final_state needs causal=True",
    ),
    "state shape": (
        lambda q, k, v: (q, k, v, {"initial_state": torch.zeros(1, 2, 8, 16)}),
        ValueError,
        r"initial_state must have shape \[B, H, K, V\] = \(1, 2, 16, 8\), got \(1, 2, 8, 16\)",
    ),
    "chunk_size": (
        lambda q, k, v: (
            q,
            k,
            v,
            {"return_chunk_states": True, "chunk_size": 48},
        ),
        ValueError,
        "chunk_size must be a positive multiple of 64",
    ),
    "chunk states not causal": (
        lambda q, k, v: (
            q,
            k,
            v,
            {"return_chunk_states": True, "causal": False},
        ),
        ValueError,
        "return_chunk_states needs causal=True",
    ),
    "seq_idx shape": (
        lambda q, k, v: (
            q,
            k,
            v,
            {"seq_idx": torch.zeros(1, 7, dtype=torch.int64)},
        ),
        ValueError,
        r"seq_idx must have shape \[B, T\] = \(1, 8\), got \(1, 7\)",
    ),
    "seq_idx dtype": (
        lambda q, k, v: (q, k, v, {"seq_idx": torch.zeros(1, 8)}),
        TypeError,
        "seq_idx must hold int32 or int64",
    ),
    "seq_idx order": (
        lambda q, k, v: (
            q,
            k,
            v,
            {"seq_idx": torch.tensor([[0, 0, 1, 1, 0, 2, 2, 2]])},
        ),
        ValueError,
        "seq_idx must be nondecreasing",
    ),
    "state dims": (
        lambda q, k, v: (q, k, v, {"initial_state": torch.zeros(2, 16, 8)}),
        ValueError,
        "initial_state must have 4 dimensions",
    ),
    "normalize with state": (
        lambda q, k, v: (
            q,
            k,
            v,
            {"normalize": True, "return_final_state": True},
        ),
        ValueError,
        "normalize=True",
    ),
    "scale": (
        lambda q, k, v: (q, k, v, {"scale": -2.0}),
        ValueError,
        "scale must be a positive finite number",
    ),
    "causal not bool": (
        lambda q, k, v: (q, k, v, {"causal": 1}),
        TypeError,
        "causal must be True or False",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_rejected_with_a_clear_message(case):
    make, error, message = BAD_INPUTS[case]
    q, k, v, kwargs = make(*_qkv())
    with pytest.raises(error, match=message):
        linear_attention(q, k, v, **kwargs)


def test_step_rejects_a_state_of_the_wrong_shape():
    q, k, v = torch.randn(1, 2, 16), torch.randn(1, 2, 16), torch.randn(1, 2, 8)
    with pytest.raises(
        ValueError,
        match=r"state must have shape \[B, H, K, V\] = \(1, 2, 16, 8\)",
    ):
        linear_attention_step(q, k, v, torch.zeros(1, 2, 8, 16))
    with pytest.raises(
        ValueError, match=r"decay must have one log-decay per head, shape \[2\]"
    ):
        linear_attention_step(
            q, k, v, torch.zeros(1, 2, 16, 8), decay=torch.tensor([-0.5])
        )
