"""ssd: against its quadratic form (float64, gradients of every tensor argument), against the
selective scan on the same inputs, against linear attention with a per-token decay; mamba_ssm's
signature (positional chunk_size, float32 dt beside half x, dt_limit, initial_states); bad input.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py) with chunks of 16.
"""

import pytest
import torch

from _compare import assert_close
from kernels import linear_attention, selective_scan, ssd, uses_triton
from kernels.ssd import ssd_ref

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"

# (b, L, h, p, n, g): L = 1, around and across chunks of 16; groups of 1, 2 and 3 heads.
SHAPES = [
    (1, 1, 2, 4, 8, 1),
    (2, 33, 4, 3, 8, 2),
    (1, 20, 3, 5, 6, 3),
    (1, 37, 6, 8, 16, 2),
]
if CUDA:
    SHAPES += [(2, 1000, 8, 64, 128, 1), (1, 4097, 4, 64, 64, 2)]


def ssd_inputs(b, L, h, p, n, g, dtype=torch.float32, seed=0, A_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(b, L, h, p, generator=gen).to(DEVICE, dtype),
        dt=(torch.rand(b, L, h, generator=gen) - 0.5).to(
            DEVICE
        ),  # float32 beside x, as mamba_ssm
        A=(-A_scale * torch.rand(h, generator=gen)).to(DEVICE),
        B=torch.randn(b, L, g, n, generator=gen).to(DEVICE, dtype),
        C=torch.randn(b, L, g, n, generator=gen).to(DEVICE, dtype),
    )


def extras(b, L, h, p, n, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        D=torch.randn(h, p, generator=gen).to(DEVICE),
        z=torch.randn(b, L, h, p, generator=gen).to(DEVICE),
        dt_bias=torch.rand(h, generator=gen).to(DEVICE),
        initial_states=torch.randn(b, h, p, n, generator=gen).to(DEVICE),
    )


def compare_with_reference(inputs, dtype, atol, rtol, **flags):
    xs = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    refs = {k: v.detach().double().requires_grad_() for k, v in inputs.items()}
    y, final = ssd(**xs, **flags, return_final_states=True)
    y_ref, final_ref = ssd_ref(**refs, **flags, return_final_states=True)
    assert y.dtype == dtype and final.dtype == torch.float32
    assert_close("y", y_ref, y, atol, rtol)
    assert_close("final_states", final_ref, final, atol, rtol)
    gen = torch.Generator().manual_seed(5)
    dy = torch.randn(y_ref.shape, generator=gen, dtype=torch.float64).to(DEVICE)
    dfinal = torch.randn(
        final_ref.shape, generator=gen, dtype=torch.float64
    ).to(DEVICE)
    ((y.double() * dy).sum() + (final.double() * dfinal).sum()).backward()
    ((y_ref * dy).sum() + (final_ref * dfinal).sum()).backward()
    for name in xs:
        assert xs[name].grad is not None, f"no gradient flows to {name}"
        ref = refs[name].grad
        assert_close(
            f"d{name}",
            ref,
            xs[name].grad,
            atol * max(1, ref.abs().max().item()),
            rtol,
        )


@pytest.mark.parametrize(
    "shape", SHAPES, ids=lambda s: "b{}-L{}-h{}-p{}-n{}-g{}".format(*s)
)
def test_ssd_matches_its_quadratic_form_with_gradients(shape):
    b, L, h, p, n, g = shape
    inputs = {**ssd_inputs(*shape, seed=sum(shape)), **extras(b, L, h, p, n)}
    assert uses_triton(inputs["x"]), (
        "the test would compare the reference with itself"
    )
    compare_with_reference(inputs, torch.float32, 1e-4, 1e-4, dt_softplus=True)


def test_ssd_without_options_and_strong_decays():
    """No D, z, bias or initial state; log-decays dt A down to about -30 per step."""
    inputs = ssd_inputs(1, 40, 4, 4, 8, 2, A_scale=60.0)
    inputs["dt"] = inputs["dt"] + 0.5  # in [0, 1): dt A down to -60
    # In-chunk cumulative log-decays reach -60 * 16 here, so float32 carries them to ~1e-4 absolute:
    # every decay weight exp(c_i - c_j) is good to ~1e-4 relative, and dA, a sum over the sequence, too.
    compare_with_reference(inputs, torch.float32, 5e-4, 1e-3)


def test_half_x_with_float32_dt():
    b, L, h, p, n, g = 1, 35, 4, 8, 16, 2
    inputs = {
        **ssd_inputs(b, L, h, p, n, g, dtype=torch.float16),
        **extras(b, L, h, p, n),
    }
    compare_with_reference(inputs, torch.float16, 3e-2, 3e-2, dt_softplus=True)


def test_dt_limit_clamps_the_step_and_its_gradient():
    b, L, h, p, n, g = 1, 21, 2, 4, 8, 1
    inputs = ssd_inputs(b, L, h, p, n, g)
    compare_with_reference(
        inputs, torch.float32, 1e-4, 1e-4, dt_softplus=True, dt_limit=(0.6, 0.8)
    )
    dt = inputs["dt"].clone().requires_grad_()
    ssd(
        **{**inputs, "dt": dt}, dt_softplus=True, dt_limit=(0.6, 0.8)
    ).sum().backward()
    step = torch.nn.functional.softplus(inputs["dt"])
    clamped = (step < 0.6) | (step > 0.8)
    assert (
        clamped.any()
        and (dt.grad[clamped] == 0).all()
        and (dt.grad[~clamped] != 0).any()
    )


def test_ssd_equals_the_selective_scan_on_the_same_inputs():
    """Every channel (h, p) is a selective scan with A[h] on all n states and dt[h] as its step."""
    b, L, h, p, n, g = 2, 29, 4, 3, 8, 2
    inp = ssd_inputs(b, L, h, p, n, g)
    D = extras(b, L, h, p, n)["D"]
    y, final = ssd(**inp, D=D, dt_softplus=True, return_final_states=True)
    to_channels = lambda t: t.permute(0, 2, 3, 1).reshape(b, h * p, L)  # noqa: E731 [b, L, h, p] -> [b, h p, L]
    out, last = selective_scan(
        to_channels(inp["x"]),
        to_channels(inp["dt"][..., None].expand(b, L, h, p)),
        inp["A"].repeat_interleave(p)[:, None].expand(h * p, n).contiguous(),
        inp["B"].permute(0, 2, 3, 1),
        inp["C"].permute(0, 2, 3, 1),
        D.reshape(h * p),
        delta_softplus=True,
        return_last_state=True,
    )
    assert_close(
        "y", out.reshape(b, h, p, L).permute(0, 3, 1, 2), y, 1e-4, 1e-4
    )
    assert_close("final_states", last.reshape(b, h, p, n), final, 1e-4, 1e-4)


def test_ssd_is_linear_attention_with_a_per_token_decay():
    b, L, h, p, n = 2, 37, 3, 8, 16
    inp = ssd_inputs(b, L, h, p, n, g=h)
    step = inp["dt"].clamp_min(0)  # the default dt_limit (0, inf)
    y = ssd(**inp)
    q, k = (inp[name].transpose(1, 2) for name in ("C", "B"))  # [b, h, L, n]
    v = (inp["x"] * step[..., None]).transpose(1, 2)  # [b, h, L, p]
    o = linear_attention(
        q, k, v, decay=(step * inp["A"]).transpose(1, 2), scale=1.0
    )
    assert_close("ssd vs linear_attention", o.transpose(1, 2), y, 1e-5, 1e-5)


def test_initial_states_continue_a_sequence():
    """Two calls, the second starting from the first's final states: one call over both."""
    b, L, h, p, n, g = 1, 30, 2, 4, 8, 1
    inp = ssd_inputs(b, L, h, p, n, g)
    whole = ssd(**inp, chunk_size=64)
    first, state = ssd(
        **{k: v[:, :13] if v.dim() > 1 else v for k, v in inp.items()},
        return_final_states=True,
    )
    second = ssd(
        **{k: v[:, 13:] if v.dim() > 1 else v for k, v in inp.items()},
        initial_states=state,
    )
    assert_close("pieces", whole, torch.cat([first, second], dim=1), 1e-5, 1e-5)


def test_seq_idx_restarts_the_state_at_each_packed_sequence():
    """Packed sequences against the reference with every option and gradient, and against
    separate calls: the first sequence continues the initial state, the others start from zero."""
    b, L, h, p, n, g = 1, 40, 4, 4, 8, 2
    inputs = {**ssd_inputs(b, L, h, p, n, g, seed=3), **extras(b, L, h, p, n)}
    seq_idx = torch.tensor([[0] * 7 + [1] * 25 + [2] * 8], device=DEVICE)
    compare_with_reference(
        inputs, torch.float32, 1e-4, 1e-4, dt_softplus=True, seq_idx=seq_idx
    )
    y, final = ssd(
        **inputs, dt_softplus=True, seq_idx=seq_idx, return_final_states=True
    )
    pieces, state = [], inputs["initial_states"]
    for start, end in ((0, 7), (7, 32), (32, 40)):
        part = {
            k: (v[:, start:end] if v.dim() > 1 and v.shape[1] == L else v)
            for k, v in inputs.items()
        }
        out, state = ssd(
            **{**part, "initial_states": state if start == 0 else None},
            dt_softplus=True,
            return_final_states=True,
        )
        pieces.append(out)
    assert_close("packed vs separate", torch.cat(pieces, dim=1), y, 1e-5, 1e-4)
    assert_close("final state of the last sequence", state, final, 1e-5, 1e-4)


def test_chunk_size_is_positional_as_in_mamba_ssm():
    inp = ssd_inputs(1, 9, 2, 4, 8, 1)
    D = torch.ones(2, device=DEVICE)
    args = [inp[k] for k in ("x", "dt", "A", "B", "C")]
    assert_close(
        "positional chunk_size",
        ssd(*args, chunk_size=64, D=D),
        ssd(*args, 64, D),
        0,
        0,
    )
    assert not torch.equal(ssd(*args, 64), ssd(*args, 64, D))


BAD = [
    (
        lambda a: a.update(
            B=torch.zeros(1, 5, 3, 8), C=torch.zeros(1, 5, 3, 8)
        ),
        ValueError,
        r"B has g = 3 groups, which must divide the number of heads h = 4",
    ),
    (
        lambda a: a.update(dt=a["dt"][:, :4]),
        ValueError,
        r"dt must have shape \[b, L, h\]",
    ),
    (
        lambda a: a.update(D=torch.zeros(4, 3)),
        ValueError,
        r"D must have shape \[h, p\]",
    ),
    (
        lambda a: a.update(initial_states=torch.zeros(1, 4, 8, 2)),
        ValueError,
        r"initial_states must have shape \[b, h, p, n\] = \(1, 4, 2, 8\)",
    ),
    (
        lambda a: a.update(chunk_size=0),
        ValueError,
        "chunk_size must be a positive int",
    ),
    (
        lambda a: a.update(dt_limit=(1.0, 0.5)),
        ValueError,
        "dt_limit must be a pair",
    ),
    (lambda a: a.update(dt_limit=(-1.0, 1.0)), ValueError, "dt_min >= 0"),
    (
        lambda a: a.update(A=torch.ones(4)),
        ValueError,
        "A must hold finite decay rates <= 0",
    ),
    (
        lambda a: a.update(dt=a["dt"].long()),
        TypeError,
        "dt must be a real floating-point tensor",
    ),
    (
        lambda a: a.update(return_final_states=1),
        TypeError,
        "return_final_states must be True or False",
    ),
    (
        lambda a: a.update(seq_idx=torch.zeros(1, 4, dtype=torch.int32)),
        ValueError,
        r"seq_idx must have shape \[b, L\]",
    ),
    (
        lambda a: a.update(cu_seqlens=torch.tensor([0, 5], dtype=torch.int16)),
        TypeError,
        "cu_seqlens must hold int32",
    ),
]


@pytest.mark.parametrize(
    "change, error, message", BAD, ids=[str(i) for i in range(len(BAD))]
)
def test_bad_input(change, error, message):
    args = ssd_inputs(1, 5, 4, 2, 8, 2)
    args = {k: v.cpu() for k, v in args.items()}
    args["chunk_size"] = 64
    change(args)
    with pytest.raises(error, match=message):
        ssd(**args)


def test_no_value_is_read_on_a_device_without_data():
    """On meta tensors every check passes and the call runs: no value is read back to the host."""
    m = dict(device="meta")
    y, final = ssd(
        torch.empty(1, 20, 4, 8, **m),
        torch.empty(1, 20, 4, **m),
        torch.empty(4, **m),
        torch.empty(1, 20, 2, 16, **m),
        torch.empty(1, 20, 2, 16, **m),
        64,
        D=torch.empty(4, **m),
        initial_states=torch.empty(1, 4, 8, 16, **m),
        return_final_states=True,
    )
    assert y.shape == (1, 20, 4, 8) and final.shape == (1, 4, 8, 16)
