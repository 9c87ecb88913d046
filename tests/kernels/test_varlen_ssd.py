"""ssd on packed sequences (cu_seqlens, return_varlen_states, as mamba_ssm's
mamba_chunk_scan_combined): against a float64 loop of ssd_ref over the sequences, outputs,
final and per-sequence states and every gradient; state_dtype; agreement with seq_idx; bad input.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py) with chunks of 16.
"""

import pytest
import torch

from _compare import assert_close
from kernels import ssd, uses_triton
from kernels.ssd import ssd_ref

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"

# (offsets, h, p, n, g): lengths 1, 5, an empty one, 16, 17; a single sequence; uneven heads.
CASES = [
    ([0, 1, 6, 6, 22, 39], 3, 4, 5, 3),
    ([0, 33], 2, 3, 8, 1),
    ([0, 0, 5, 21, 21], 4, 2, 6, 2),
]


def packed_inputs(offsets, h, p, n, g, seed=0):
    gen = torch.Generator().manual_seed(seed)
    L = offsets[-1]
    x = dict(
        x=torch.randn(1, L, h, p, generator=gen),
        dt=torch.rand(1, L, h, generator=gen) - 0.5,
        A=-torch.rand(h, generator=gen),
        B=torch.randn(1, L, g, n, generator=gen),
        C=torch.randn(1, L, g, n, generator=gen),
        D=torch.randn(h, generator=gen),
        z=torch.randn(1, L, h, p, generator=gen),
        dt_bias=torch.rand(h, generator=gen),
        initial_states=torch.randn(1, h, p, n, generator=gen),
    )
    return {name: t.to(DEVICE) for name, t in x.items()}


def loop_reference(
    offsets, x, dt, A, B, C, D, z, dt_bias, initial_states, **flags
):
    """ssd_ref on each sequence alone: ``(y, final, varlen_states)``; the initial state is the first's."""
    ys, states = [], []
    for i in range(len(offsets) - 1):
        a, b = offsets[i], offsets[i + 1]
        s0 = initial_states if i == 0 else torch.zeros_like(initial_states)
        if a == b:
            states.append(s0)
            continue
        y, final = ssd_ref(
            x[:, a:b],
            dt[:, a:b],
            A,
            B[:, a:b],
            C[:, a:b],
            D=D,
            z=z[:, a:b],
            dt_bias=dt_bias,
            initial_states=s0,
            return_final_states=True,
            **flags,
        )
        ys.append(y)
        states.append(final)
    last = max(
        i for i in range(len(offsets) - 1) if offsets[i] < offsets[i + 1]
    )
    return torch.cat(ys, dim=1), states[last], torch.cat(states, dim=0)


@pytest.mark.parametrize(
    "offsets, h, p, n, g", CASES, ids=["1-5-0-16-17", "single-33", "0-5-16-0"]
)
def test_packed_ssd_matches_a_loop_over_the_sequences(offsets, h, p, n, g):
    inputs = packed_inputs(offsets, h, p, n, g, seed=len(offsets))
    assert uses_triton(inputs["x"]), (
        "the test would compare the reference with itself"
    )
    cu = torch.tensor(offsets, dtype=torch.int32, device=DEVICE)
    xs = {name: t.clone().requires_grad_() for name, t in inputs.items()}
    refs = {
        name: t.detach().double().requires_grad_() for name, t in inputs.items()
    }
    y, final, states = ssd(
        **xs,
        chunk_size=64,
        cu_seqlens=cu,
        dt_softplus=True,
        return_final_states=True,
        return_varlen_states=True,
    )
    y_ref, final_ref, states_ref = loop_reference(
        offsets, **refs, dt_softplus=True
    )
    assert states.shape == (len(offsets) - 1, h, p, n) and final.shape == (
        1,
        h,
        p,
        n,
    )
    assert states.dtype == final.dtype == torch.float32
    for name, ref, out in (
        ("y", y_ref, y),
        ("final_states", final_ref, final),
        ("varlen_states", states_ref, states),
    ):
        assert_close(name, ref, out, 1e-4, 1e-4)
    gen = torch.Generator().manual_seed(5)
    dy, dfinal, dstates = (
        torch.randn(t.shape, generator=gen, dtype=torch.float64).to(DEVICE)
        for t in (y_ref, final_ref, states_ref)
    )
    (
        (y.double() * dy).sum()
        + (final.double() * dfinal).sum()
        + (states.double() * dstates).sum()
    ).backward()
    (
        (y_ref * dy).sum()
        + (final_ref * dfinal).sum()
        + (states_ref * dstates).sum()
    ).backward()
    for name in xs:
        assert xs[name].grad is not None, f"no gradient flows to {name}"
        ref = refs[name].grad
        assert_close(
            f"d{name}",
            ref,
            xs[name].grad,
            1e-4 * max(1.0, ref.abs().max().item()),
            1e-4,
        )


def test_return_forms_state_dtype_and_seq_idx():
    """mamba_ssm's return tuples; state_dtype sets the states' dtype; a matching seq_idx changes nothing."""
    offsets = [0, 5, 5, 21]
    inputs = packed_inputs(offsets, 2, 3, 4, 1, seed=1)
    cu = torch.tensor(offsets, dtype=torch.int64, device=DEVICE)
    seq_idx = torch.tensor(
        [[0] * 5 + [2] * 16], dtype=torch.int32, device=DEVICE
    )
    y, states = ssd(**inputs, cu_seqlens=cu, return_varlen_states=True)
    y2, final, states2 = ssd(
        **inputs,
        cu_seqlens=cu,
        seq_idx=seq_idx,
        return_final_states=True,
        return_varlen_states=True,
        state_dtype=torch.float64,
    )
    assert (
        states.dtype == torch.float32
        and states2.dtype == final.dtype == torch.float64
    )
    assert_close("y with seq_idx", y, y2, 0, 0)
    assert_close("varlen_states in float64", states, states2, 0, 0)
    assert_close("final_states: the last sequence's", states[2:], final, 0, 0)
    assert torch.equal(
        ssd(**inputs, cu_seqlens=cu), y
    )  # cu_seqlens alone: the packed output only
    y_seq = ssd(
        **inputs, seq_idx=seq_idx
    )  # seq_idx alone gives the same output
    assert_close("y as with seq_idx", y_seq, y, 1e-5, 1e-5)


BAD = [
    (
        lambda a: a.update(cu_seqlens=None, return_varlen_states=True),
        ValueError,
        "return_varlen_states needs cu_seqlens",
    ),
    (
        lambda a: a.update(cu_seqlens=a["cu_seqlens"].float()),
        TypeError,
        "cu_seqlens must hold int32 or int64",
    ),
    (
        lambda a: a.update(
            cu_seqlens=torch.tensor([0, 3, 4], dtype=torch.int32)
        ),
        ValueError,
        "cu_seqlens must rise from 0 to the packed length L = 5",
    ),
    (
        lambda a: a.update(
            seq_idx=torch.tensor([[0, 0, 0, 1, 1]], dtype=torch.int32)
        ),
        ValueError,
        "seq_idx and cu_seqlens must describe the same sequences",
    ),
    (
        lambda a: a.update(
            **{k: torch.cat([a[k], a[k]]) for k in ("x", "dt", "B", "C")}
        ),
        ValueError,
        "batch of one, x \\[1, L, h, p\\]; got b = 2",
    ),
    (
        lambda a: a.update(state_dtype="float32"),
        TypeError,
        "state_dtype must be a floating torch.dtype",
    ),
]


@pytest.mark.parametrize(
    "change, error, message", BAD, ids=[str(i) for i in range(len(BAD))]
)
def test_bad_packed_input(change, error, message):
    args = {
        k: v.cpu()
        for k, v in packed_inputs([0, 2, 5], 4, 2, 8, 2).items()
        if k in ("x", "dt", "A", "B", "C")
    }
    args["cu_seqlens"] = torch.tensor([0, 2, 5], dtype=torch.int32)
    change(args)
    with pytest.raises(error, match=message):
        ssd(**args)
