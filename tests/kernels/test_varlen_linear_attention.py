"""linear_attention on packed sequences (cu_seqlens): the kernels against a float64 loop over
the sequences (outputs, per-sequence final states, gradients of every input), the loop against
the seq_idx reference, the chunk-aligned layout, bad input.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py) with chunks of 16, so
lengths 1, 5, 16, 17 and 33 put sequence boundaries inside, at and across chunk boundaries.
"""

import pytest
import torch

from _compare import assert_close
from kernels import linear_attention, uses_triton
from kernels.linear_attention.naive import (
    linear_attention_quadratic,
    linear_attention_varlen,
)

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"

# offsets: lengths 1, 5, an empty one, 16, 17; a single sequence; empty ones first and last;
# 33 = two chunks and one position.
OFFSETS = {
    "1-5-0-16-17": [0, 1, 6, 6, 22, 39],
    "single-33": [0, 33],
    "0-5-16-0": [0, 0, 5, 21, 21],
    "1-1-1": [0, 1, 2, 3],
    "17-33": [0, 17, 50],
}
if CUDA:
    OFFSETS["long"] = [0, 1, 63, 64, 65, 1000, 1000, 4097]


def make_inputs(offsets, H, K, V, decay, initial, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    total, N = offsets[-1], len(offsets) - 1
    x = dict(
        q=torch.randn(1, H, total, K, generator=gen),
        k=torch.randn(1, H, total, K, generator=gen),
        v=torch.randn(1, H, total, V, generator=gen),
    )
    x = {name: t.to(dtype) for name, t in x.items()}
    if decay == "head":
        x["decay"] = -torch.rand(H, generator=gen)
    elif decay == "token":
        x["decay"] = -2.0 * torch.rand(1, H, total, generator=gen)
    if initial:
        x["initial_state"] = torch.randn(N, H, K, V, generator=gen)
    return {name: t.to(DEVICE) for name, t in x.items()}


def check_against_reference(offsets, inputs, atol, rtol, want_final=True):
    cu = torch.tensor(offsets, dtype=torch.int32, device=DEVICE)
    xs = {name: t.clone().requires_grad_() for name, t in inputs.items()}
    refs = {
        name: t.detach().double().requires_grad_() for name, t in inputs.items()
    }
    out = linear_attention(**xs, cu_seqlens=cu, return_final_state=want_final)
    o, final = out if want_final else (out, None)
    o_ref, final_ref = linear_attention_varlen(
        refs["q"],
        refs["k"],
        refs["v"],
        cu,
        decay=refs.get("decay"),
        initial_state=refs.get("initial_state"),
    )
    assert o.shape == o_ref.shape and o.dtype == inputs["q"].dtype
    assert_close("o", o_ref, o, atol, rtol)
    gen = torch.Generator().manual_seed(7)
    do = torch.randn(o_ref.shape, generator=gen, dtype=torch.float64).to(DEVICE)
    loss, loss_ref = (o.double() * do).sum(), (o_ref * do).sum()
    if want_final:
        assert (
            final.shape == (len(offsets) - 1, *final_ref.shape[1:])
            and final.dtype == torch.float32
        )
        assert_close("final states", final_ref, final, atol, rtol)
        dfinal = torch.randn(
            final_ref.shape, generator=gen, dtype=torch.float64
        ).to(DEVICE)
        loss, loss_ref = (
            loss + (final.double() * dfinal).sum(),
            loss_ref + (final_ref * dfinal).sum(),
        )
    loss.backward()
    loss_ref.backward()
    for name in xs:
        assert xs[name].grad is not None, f"no gradient flows to {name}"
        ref = refs[name].grad
        assert_close(
            f"d{name}",
            ref,
            xs[name].grad,
            atol * max(1.0, ref.abs().max().item()),
            rtol,
        )


@pytest.mark.parametrize("decay", [None, "head", "token"])
@pytest.mark.parametrize("name", list(OFFSETS))
def test_packed_sequences_match_a_loop_over_them(name, decay):
    offsets = OFFSETS[name]
    inputs = make_inputs(
        offsets,
        H=3,
        K=5,
        V=7,
        decay=decay,
        initial=decay != "head",
        seed=len(offsets),
    )
    assert uses_triton(inputs["q"]), (
        "the test would compare the reference with itself"
    )
    check_against_reference(offsets, inputs, 1e-4, 1e-4)


def test_packed_sequences_without_final_states_and_wide_heads():
    """No gradient of the final states reaches the reverse pass; K and V wider than one tile."""
    offsets = [0, 5, 5, 38]
    inputs = make_inputs(
        offsets, H=2, K=70, V=33, decay="token", initial=True, seed=3
    )
    check_against_reference(offsets, inputs, 1e-4, 1e-4, want_final=False)


def test_packed_half_precision():
    offsets = [0, 1, 6, 6, 22, 39]
    inputs = make_inputs(
        offsets,
        H=2,
        K=16,
        V=8,
        decay="token",
        initial=True,
        seed=4,
        dtype=torch.float16,
    )
    check_against_reference(offsets, inputs, 2e-2, 2e-2)


def test_empty_sequences_keep_their_initial_state():
    offsets = [0, 0, 4, 4]
    inputs = make_inputs(
        offsets, H=2, K=4, V=3, decay="token", initial=True, seed=5
    )
    cu = torch.tensor(offsets, dtype=torch.int64, device=DEVICE)
    _, final = linear_attention(
        **inputs, cu_seqlens=cu, return_final_state=True
    )
    for i in (0, 2):
        assert torch.equal(final[i], inputs["initial_state"][i].float())
    inputs.pop("initial_state")
    _, final = linear_attention(
        **inputs, cu_seqlens=cu, return_final_state=True
    )
    assert (
        not final[0].any() and not final[2].any() and final[1].abs().sum() > 0
    )


def test_the_loop_reference_agrees_with_the_seq_idx_reference():
    """Without initial states past the first sequence, packing is what seq_idx describes."""
    offsets = [0, 3, 3, 20, 21]
    inputs = make_inputs(
        offsets, H=2, K=4, V=5, decay="token", initial=True, seed=6
    )
    inputs = {name: t.double().cpu() for name, t in inputs.items()}
    inputs["initial_state"][1:] = 0
    cu = torch.tensor(offsets)
    o, final = linear_attention_varlen(
        inputs["q"],
        inputs["k"],
        inputs["v"],
        cu,
        decay=inputs["decay"],
        initial_state=inputs["initial_state"],
    )
    seq_idx = torch.searchsorted(cu[1:], torch.arange(offsets[-1]), right=True)[
        None
    ]
    o_seq, final_seq = linear_attention_quadratic(
        inputs["q"],
        inputs["k"],
        inputs["v"],
        decay=inputs["decay"],
        initial_state=inputs["initial_state"][:1],
        seq_idx=seq_idx,
    )
    assert_close("o", o_seq, o, 1e-12, 1e-12)
    assert_close("last final state", final_seq, final[-1:], 1e-12, 1e-12)


def test_layout_starts_every_sequence_at_a_chunk():
    triton_module = pytest.importorskip("kernels.linear_attention.triton")
    cu = torch.tensor([0, 1, 6, 6, 22, 39])
    layout = triton_module.varlen_layout(cu, 39, 16)
    assert (
        layout.N == 5 and layout.length == 128
    )  # 39 + 5 * 15 rounded up to whole chunks
    starts = [
        0,
        16,
        32,
        32,
        48,
    ]  # sequence i starts at the chunk after sequence i - 1's chunks
    expected = [
        starts[i] + t - cu[i].item()
        for i in range(5)
        for t in range(cu[i], cu[i + 1])
    ]
    assert layout.dest.tolist() == expected
    first, last = layout.first.tolist(), layout.last.tolist()
    assert (
        first[:5] == [0, 1, 3, 4, -1]
        and last[:5] == [0, 1, 3, -1, 4]
        and set(first[5:] + last[5:]) == {-1}
    )
    assert layout.empty.tolist() == [False, False, True, False, False]


def test_layout_reads_no_values():
    """Everything is computed on the device from the offsets: meta tensors go through."""
    triton_module = pytest.importorskip("kernels.linear_attention.triton")
    layout = triton_module.varlen_layout(
        torch.empty(5, dtype=torch.int32, device="meta"), 100, 64
    )
    assert (
        layout.dest.shape == (100,) and layout.length == 384
    )  # 100 + 4 * 63 rounded up to whole chunks


BAD = {
    "cu_seqlens dtype": (
        lambda a: a.update(cu_seqlens=a["cu_seqlens"].float()),
        TypeError,
        "cu_seqlens must hold int32 or int64 offsets",
    ),
    "cu_seqlens dims": (
        lambda a: a.update(cu_seqlens=a["cu_seqlens"][None]),
        ValueError,
        r"cu_seqlens must have 1 dimensions \[N \+ 1\]",
    ),
    "one offset": (
        lambda a: a.update(cu_seqlens=a["cu_seqlens"][:1]),
        ValueError,
        "N \\+ 1 >= 2 offsets",
    ),
    "batch of two": (
        lambda a: a.update(
            q=a["q"].expand(2, -1, -1, -1),
            k=a["k"].expand(2, -1, -1, -1),
            v=a["v"].expand(2, -1, -1, -1),
        ),
        ValueError,
        "got batch size 2",
    ),
    "not from 0": (
        lambda a: a.update(
            cu_seqlens=torch.tensor([1, 4, 9], dtype=torch.int32)
        ),
        ValueError,
        "cu_seqlens must rise from 0 to the packed length 9",
    ),
    "short of total": (
        lambda a: a.update(
            cu_seqlens=torch.tensor([0, 4, 8], dtype=torch.int32)
        ),
        ValueError,
        "packed length 9",
    ),
    "falling": (
        lambda a: a.update(
            cu_seqlens=torch.tensor([0, 5, 4, 9], dtype=torch.int32)
        ),
        ValueError,
        "without falling",
    ),
    "initial_state shape": (
        lambda a: a.update(initial_state=torch.zeros(1, 2, 4, 3)),
        ValueError,
        (
            r"initial_state must have shape \[N, H, K, V\] \(one per packed sequence\) = "
            r"\(2, 2, 4, 3\), got \(1, 2, 4, 3\)"
        ),
    ),
    "with seq_idx": (
        lambda a: a.update(seq_idx=torch.zeros(1, 9, dtype=torch.int32)),
        ValueError,
        "cu_seqlens does not go together with seq_idx",
    ),
    "with normalize": (
        lambda a: a.update(normalize=True),
        ValueError,
        "cu_seqlens does not go together with normalize",
    ),
    "with chunk states": (
        lambda a: a.update(return_chunk_states=True),
        ValueError,
        "cu_seqlens does not go together with return_chunk_states",
    ),
    "non-causal": (
        lambda a: a.update(causal=False),
        ValueError,
        "cu_seqlens needs causal=True",
    ),
    "decay shape": (
        lambda a: a.update(decay=torch.zeros(2, 2, 9)),
        ValueError,
        r"decay must have shape",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_packed_input_is_rejected_with_a_clear_message(case):
    change, error, message = BAD[case]
    args = dict(
        q=torch.randn(1, 2, 9, 4),
        k=torch.randn(1, 2, 9, 4),
        v=torch.randn(1, 2, 9, 3),
        cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32),
    )
    change(args)
    with pytest.raises(error, match=message):
        linear_attention(**args)
