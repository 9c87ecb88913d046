"""linear_attention and ssd as registered operators: torch.library.opcheck on every optional
part (decay per head and per token, initial state, chunk states, packed sequence ids),
torch.compile(fullgraph=True) against the eager call, wide value heads (V = 512) and odd key
widths against the float64 reference, and the autotune lists of the GPU launches.

Without a GPU the ops run the Triton kernels in the interpreter (tests/conftest.py), where a
chunk is 16 positions: T = 37 makes three chunks, the last one partial.
"""

import pytest
import torch

from _compare import assert_close
from kernels import linear_attention, ssd, uses_triton
from kernels.linear_attention.naive import (
    linear_attention_chunk_states,
    linear_attention_quadratic,
    linear_attention_recurrent,
)
from kernels.linear_attention.op import (
    linear_attention_bwd,
    linear_attention_fwd,
)

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _la_args(
    decay="token",
    state=True,
    want_states=True,
    packed=False,
    B=2,
    H=3,
    T=37,
    K=8,
    V=12,
    seed=0,
):
    """Arguments of ``kernels::linear_attention_fwd``, float32, those that can requiring grad."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, T, K, generator=g) * K**-0.25 for _ in range(2))
    v = torch.randn(B, H, T, V, generator=g)
    q, k, v = (x.to(DEVICE).requires_grad_() for x in (q, k, v))
    if decay == "token":
        log_decay = (
            (-torch.rand(B, H, T, generator=g)).to(DEVICE).requires_grad_()
        )
    elif (
        decay == "head"
    ):  # a per-head decay reaches the op expanded, as linear_attention passes it
        log_decay = (
            (-torch.rand(H, generator=g))
            .to(DEVICE)
            .requires_grad_()[None, :, None]
            .expand(B, H, T)
        )
    else:
        log_decay = torch.zeros(B, H, T, device=DEVICE)
    s0 = (
        torch.randn(B, H, K, V, generator=g).to(DEVICE).requires_grad_()
        if state
        else None
    )
    seq_idx = None
    if packed:  # three sequences in row 0 (one starts inside a chunk, one at a chunk's start), one in row 1
        seq_idx = torch.zeros(B, T, dtype=torch.int32)
        seq_idx[0, 5:], seq_idx[0, 16:] = 1, 2
        seq_idx = seq_idx.to(DEVICE)
    return (q, k, v, log_decay, K**-0.5, s0, want_states, seq_idx)


OPCHECK_CASES = {
    "plain": dict(decay=None, state=False, want_states=False),
    "head-decay-state": dict(decay="head", state=True, want_states=False),
    "token-decay-chunk-states": dict(
        decay="token", state=True, want_states=True
    ),
    "packed": dict(decay="token", state=True, want_states=True, packed=True),
    "length-1-batch-1": dict(
        decay="token", state=True, want_states=True, B=1, T=1, K=5, V=3
    ),
}


@pytest.mark.parametrize("case", list(OPCHECK_CASES))
def test_opcheck_linear_attention(case):
    args = _la_args(**OPCHECK_CASES[case])
    assert uses_triton(args[0])
    torch.library.opcheck(linear_attention_fwd, args)


def test_opcheck_linear_attention_backward():
    q, k, v, g, scale, s0, want, seq_idx = _la_args(packed=True)
    with torch.no_grad():
        o, final, states = linear_attention_fwd(
            q, k, v, g, scale, s0, want, seq_idx
        )
    gen = torch.Generator().manual_seed(1)
    do, dfinal, dstates = (
        torch.randn(x.shape, generator=gen).to(DEVICE)
        for x in (o, final, states)
    )
    args = (
        do,
        dfinal,
        dstates,
        q.detach(),
        k.detach(),
        v.detach(),
        g.detach(),
        s0.detach(),
        final,
        seq_idx,
        scale,
        want,
        True,
    )
    torch.library.opcheck(linear_attention_bwd, args)


def test_op_results_match_the_public_function_and_the_reference():
    """The op's three outputs and its gradients against the float64 reference (chunk states at
    the kernel's chunk), so that a wrong registration cannot pass by agreeing with itself."""
    q, k, v, g, scale, s0, want, seq_idx = _la_args(packed=True)
    o, final, states = linear_attention_fwd(
        q, k, v, g, scale, s0, want, seq_idx
    )
    chunk = 16 if not CUDA else 64
    assert states.shape == (2, 3, (37 + chunk - 1) // chunk, 8, 12)
    gen = torch.Generator().manual_seed(2)
    do, dfinal, dstates = (
        torch.randn(x.shape, generator=gen).to(DEVICE)
        for x in (o, final, states)
    )
    grads = torch.autograd.grad(
        (o * do).sum() + (final * dfinal).sum() + (states * dstates).sum(),
        (q, k, v, g, s0),
    )
    q64, k64, v64, g64, s064 = (
        x.detach().double().requires_grad_() for x in (q, k, v, g, s0)
    )
    o_ref, final_ref = linear_attention_quadratic(
        q64,
        k64,
        v64,
        decay=g64,
        scale=scale,
        initial_state=s064,
        seq_idx=seq_idx,
    )
    states_ref = linear_attention_chunk_states(
        k64, v64, g64, s064, chunk, seq_idx
    )
    for name, ref, out in (
        ("o", o_ref, o),
        ("final", final_ref, final),
        ("states", states_ref, states),
    ):
        assert_close(name, ref, out, 1e-4, 1e-4)
    refs = torch.autograd.grad(
        (o_ref * do.double()).sum()
        + (final_ref * dfinal.double()).sum()
        + (states_ref * dstates.double()).sum(),
        (q64, k64, v64, g64, s064),
    )
    for name, ref, out in zip(("dq", "dk", "dv", "dg", "ds0"), refs, grads):
        assert_close(name, ref, out, 1e-3, 1e-3)


def test_op_refuses_tensors_it_cannot_run():
    q, k, v, g, scale, s0, want, seq_idx = _la_args(state=False)
    with pytest.raises(ValueError, match="Triton kernels"):
        linear_attention_fwd(
            q.detach().bfloat16().cpu(),
            k.detach().bfloat16().cpu(),
            v.detach().bfloat16().cpu(),
            g.cpu(),
            scale,
            None,
            want,
            None,
        )


def _ssd_args(b=2, L=37, h=4, p=6, g=2, n=8, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    x, z = r(b, L, h, p), r(b, L, h, p)
    dt, A, D, dt_bias = (
        torch.rand(b, L, h, generator=gen),
        -torch.rand(h, generator=gen),
        r(h),
        r(h) * 0.1,
    )
    B, C, s0 = r(b, L, g, n), r(b, L, g, n), r(b, h, p, n)
    seq_idx = torch.zeros(b, L, dtype=torch.int32)
    seq_idx[0, 20:] = 1
    tensors = [
        t.to(DEVICE, dtype if i in (0, 1) else torch.float32).requires_grad_()
        for i, t in enumerate((x, z, dt, A, D, dt_bias, B, C, s0))
    ]
    x, z, dt, A, D, dt_bias, B, C, s0 = tensors
    return (
        x,
        dt,
        A,
        B,
        C,
        D,
        z,
        dt_bias,
        s0,
        seq_idx.to(DEVICE),
        None,
        True,
        0.0,
        float("inf"),
    )


# float32 CPU tensors take the Triton kernels in the interpreter; bfloat16 CPU tensors the reference
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16], ids=["kernels", "reference"]
)
def test_opcheck_ssd(dtype):
    args = _ssd_args(dtype=dtype)
    assert uses_triton(args[0]) == (dtype == torch.float32 or CUDA)
    # dA sums over every batch element and position: the traced backward sums in another order
    torch.library.opcheck(
        torch.ops.kernels.ssd.default, args, atol=1e-4, rtol=1e-4
    )


def test_opcheck_ssd_packed():
    """The packed form: one row of three sequences (one of them empty) given by offsets."""
    x, dt, A, B, C, D, z, dt_bias, s0, _, _, *flags = _ssd_args(b=1, L=29)
    cu = torch.tensor([0, 11, 11, 29], dtype=torch.int32, device=DEVICE)
    args = (x, dt, A, B, C, D, z, dt_bias, s0, None, cu, *flags)
    torch.library.opcheck(
        torch.ops.kernels.ssd.default, args, atol=1e-4, rtol=1e-4
    )


class Mixer(torch.nn.Module):
    """A linear-attention layer over ``[B, T, C]`` with a per-token decay, an initial state and
    packed sequences, followed by an ssd layer on the same input."""

    def __init__(self, dim=24, heads=2, state=8):
        super().__init__()
        self.heads, self.state = heads, state
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.gate = torch.nn.Linear(dim, heads)
        self.s0 = torch.nn.Parameter(
            torch.randn(1, heads, dim // heads, dim // heads) * 0.1
        )
        self.ssd_in = torch.nn.Linear(dim, dim + heads + 2 * state)
        self.A = torch.nn.Parameter(-torch.rand(heads))

    def forward(self, x, seq_idx):
        B, T, C = x.shape
        q, k, v = (
            self.qkv(x)
            .view(B, T, 3, self.heads, C // self.heads)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        decay = torch.nn.functional.logsigmoid(self.gate(x)).transpose(
            1, 2
        )  # [B, H, T]
        o, final, states = linear_attention(
            q,
            k,
            v,
            decay=decay,
            initial_state=self.s0.expand(B, -1, -1, -1),
            return_final_state=True,
            return_chunk_states=True,
            seq_idx=seq_idx,
        )
        xs, dt, Bm, Cm = self.ssd_in(x).split(
            [C, self.heads, self.state, self.state], dim=-1
        )
        y, s = ssd(
            xs.view(B, T, self.heads, -1),
            dt,
            self.A,
            Bm[:, :, None],
            Cm[:, :, None],
            D=self.A,
            dt_softplus=True,
            seq_idx=seq_idx,
            return_final_states=True,
        )
        return o.transpose(1, 2).reshape(B, T, C) + y.reshape(
            B, T, C
        ), final.square().sum() + states.sum() + s.sum()


def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = Mixer().to(DEVICE)
    x = torch.randn(2, 37, 24, device=DEVICE)
    seq_idx = torch.zeros(2, 37, dtype=torch.int32, device=DEVICE)
    seq_idx[1, 11:] = 1

    def loss(fn):
        out, extra = fn(x, seq_idx)
        (out.square().sum() + extra).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        return out.detach(), grads

    eager, eager_grads = loss(model)
    compiled, compiled_grads = loss(
        torch.compile(
            model, fullgraph=True, backend="inductor" if CUDA else "aot_eager"
        )
    )
    assert_close("out", eager, compiled, 1e-5, 1e-5)
    for (name, _), ref, out in zip(
        model.named_parameters(), eager_grads, compiled_grads
    ):
        assert_close(name, ref, out, 1e-4, 1e-4)


# Wide value heads and key widths that are no power of two, at a small length: the kernels loop
# over the key width in tiles and split the value width over programs.
@pytest.mark.parametrize("K,V", [(60, 512), (100, 512), (1, 512), (100, 33)])
def test_wide_heads_match_the_float64_reference(K, V):
    B, H, T = 1, 2, 19
    gen = torch.Generator().manual_seed(K + V)
    q, k = (torch.randn(B, H, T, K, generator=gen) * K**-0.25 for _ in range(2))
    v = torch.randn(B, H, T, V, generator=gen)
    decay = -torch.rand(B, H, T, generator=gen)
    s0 = torch.randn(B, H, K, V, generator=gen)
    do, dfinal = (
        torch.randn(B, H, T, V, generator=gen),
        torch.randn(B, H, K, V, generator=gen),
    )
    leaves = [x.to(DEVICE).requires_grad_() for x in (q, k, v, decay, s0)]
    assert uses_triton(leaves[0])
    o, final = linear_attention(
        *leaves[:3],
        decay=leaves[3],
        initial_state=leaves[4],
        return_final_state=True,
    )
    grads = torch.autograd.grad(
        (o * do.to(DEVICE)).sum() + (final * dfinal.to(DEVICE)).sum(), leaves
    )
    refs = [x.detach().double().requires_grad_() for x in (q, k, v, decay, s0)]
    o_ref, final_ref = linear_attention_quadratic(
        *refs[:3], decay=refs[3], initial_state=refs[4]
    )
    ref_grads = torch.autograd.grad(
        (o_ref * do.double()).sum() + (final_ref * dfinal.double()).sum(), refs
    )
    assert_close("o", o_ref, o, 2e-4, 2e-4)
    assert_close("final", final_ref, final, 2e-4, 2e-4)
    for name, ref, out in zip(
        ("dq", "dk", "dv", "ddecay", "ds0"), ref_grads, grads
    ):
        assert_close(name, ref, out, 1e-3, 1e-3)


def test_autotune_lists_are_pruned_to_the_shared_memory_of_each_gpu():
    """Each list is never empty, keeps the tiles within the operand widths, and keeps only what
    is estimated to fit (A100 163 KiB, H100 227 KiB, a consumer GPU 99 KiB) unless nothing does."""
    from importlib import import_module

    la = import_module("kernels.linear_attention.triton")
    for limit in (99 * 1024, 163 * 1024, 227 * 1024):
        for dtype, elsize in ((torch.bfloat16, 2), (torch.float32, 4)):
            for DAB, DC in (
                (1, 1),
                (16, 16),
                (60, 512),
                (64, 64),
                (128, 128),
                (256, 256),
                (512, 100),
            ):
                kept = la._chunk_configs(DAB, DC, dtype, limit)
                assert kept, (limit, dtype, DAB, DC)
                assert len({tuple(sorted(c.items())) for c in kept}) == len(
                    kept
                )
                for c in kept:
                    assert c["BLOCK_AB"] <= max(16, 2 ** (DAB - 1).bit_length())
                    assert c["BLOCK_C"] <= max(16, 2 ** (DC - 1).bit_length())
                sizes = [
                    la._shared_estimate(
                        64, c["BLOCK_AB"], c["BLOCK_C"], c["num_stages"], elsize
                    )
                    for c in kept
                ]
                assert all(s <= limit for s in sizes) or len(kept) == 1
    assert len(la._chunk_configs(128, 128, torch.bfloat16, 227 * 1024)) == len(
        la.CHUNK_CONFIGS
    )
    assert len(la._chunk_configs(128, 128, torch.float32, 163 * 1024)) < len(
        la.CHUNK_CONFIGS
    )
    assert [c["BLOCK"] for c in la._pass_configs(16)] == [128]
    assert len(la._pass_configs(128 * 128)) == len(la.PASS_CONFIGS)
    assert {(c["BLOCK_K"], c["BLOCK_V"]) for c in la._step_configs(1, 1)} == {
        (16, 16)
    }
    for tuned in (la._chunk_state_tuned, la._chunk_out_tuned):
        assert tuned.keys == ["DAB", "DC", "REVERSE", "HAS_SEG"]
    assert la._state_pass_tuned.restore_value == ["HC"]


@pytest.mark.parametrize("decay", [None, "head", "batch"])
def test_opcheck_and_compile_decoding_step(decay):
    from kernels import linear_attention_step
    from kernels.linear_attention.op import linear_attention_step_op

    gen = torch.Generator().manual_seed(3)
    B, H, K, V = 2, 3, 20, 36
    q, k, state = (
        torch.randn(B, H, K, generator=gen),
        torch.randn(B, H, K, generator=gen),
        torch.randn(B, H, K, V, generator=gen),
    )
    v = torch.randn(B, H, V, generator=gen)
    g = {
        None: None,
        "head": -torch.rand(H, generator=gen),
        "batch": -torch.rand(B, H, generator=gen),
    }[decay]
    q, k, v, state, g = (
        None if x is None else x.to(DEVICE) for x in (q, k, v, state, g)
    )
    torch.library.opcheck(
        linear_attention_step_op, (q, k, v, state, g, K**-0.5)
    )
    eager = linear_attention_step(q, k, v, state, g)
    compiled = torch.compile(
        linear_attention_step,
        fullgraph=True,
        backend="inductor" if CUDA else "aot_eager",
    )
    for name, ref, out in zip(
        ("o", "state"), eager, compiled(q, k, v, state, g)
    ):
        assert_close(name, ref, out, 1e-6, 1e-6)
    o_ref, s_ref = linear_attention_recurrent(
        q[:, :, None].double(),
        k[:, :, None].double(),
        v[:, :, None].double(),
        decay=None if g is None else (g if g.dim() == 1 else g[..., None]),
        initial_state=state.double(),
    )
    assert_close("o vs reference", o_ref[:, :, 0], eager[0], 1e-5, 1e-5)
    assert_close("state vs reference", s_ref, eager[1], 1e-5, 1e-5)


def test_bfloat16_compiles_fullgraph():
    """bfloat16 on the CPU takes the PyTorch references (the interpreter cannot run it), which
    trace as they are; on a GPU it takes the ops. Either way: one graph, the eager results."""
    gen = torch.Generator().manual_seed(4)
    q, k, v = (
        torch.randn(1, 2, 37, d, generator=gen)
        .to(DEVICE, torch.bfloat16)
        .requires_grad_()
        for d in (4, 4, 6)
    )
    decay = (-torch.rand(1, 2, 37, generator=gen)).to(DEVICE).requires_grad_()
    s0 = torch.randn(1, 2, 4, 6, generator=gen).to(DEVICE).requires_grad_()
    seq_idx = torch.zeros(1, 37, dtype=torch.int32, device=DEVICE)
    seq_idx[0, 20:] = 1

    def f(q, k, v, decay, s0):
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
        y = ssd(
            v.transpose(1, 2),
            -decay.transpose(1, 2),
            -torch.ones(2, device=DEVICE),
            k.transpose(1, 2)[:, :, :1],
            q.transpose(1, 2)[:, :, :1],
            seq_idx=seq_idx,
        )
        return (
            o.float().square().sum()
            + final.sum()
            + states.sum()
            + y.float().sum()
        )

    leaves = (q, k, v, decay, s0)
    eager = torch.autograd.grad(f(*leaves), leaves)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    grads = torch.autograd.grad(compiled(*leaves), leaves)
    for name, ref, out in zip(
        ("dq", "dk", "dv", "ddecay", "ds0"), eager, grads
    ):
        assert_close(name, ref, out, 1e-2, 1e-2)


@pytest.mark.parametrize("device", ["meta", "cuda"])
def test_whole_call_reads_no_values(device):
    """linear_attention and ssd with every option, backward included, on tensors without data:
    on the meta device (the references) and on fake CUDA tensors where torch has CUDA (the ops; a
    GPU need not be present for the forwards; torch's autograd engine asks the driver for a device
    even for fake CUDA tensors, so the backwards run where there is one). Reading a value
    (``.item()``, a tensor in an ``if``) would raise."""
    from contextlib import nullcontext

    from torch._subclasses.fake_tensor import FakeTensorMode

    if device == "cuda" and not torch.backends.cuda.is_built():
        pytest.skip("this torch is built without CUDA: no fake CUDA tensors")
    backward = device != "cuda" or torch.cuda.is_available()
    with FakeTensorMode() if device == "cuda" else nullcontext():
        B, H, T, K, V = 2, 4, 4100, 64, 128
        q, k = (
            torch.empty(B, H, T, K, device=device, requires_grad=True)
            for _ in range(2)
        )
        v = torch.empty(B, H, T, V, device=device, requires_grad=True)
        decay = torch.empty(B, H, T, device=device, requires_grad=True)
        s0 = torch.empty(B, H, K, V, device=device, requires_grad=True)
        seq_idx = torch.empty(B, T, dtype=torch.int32, device=device)
        o, final, states = linear_attention(
            q,
            k,
            v,
            decay=decay,
            initial_state=s0,
            return_final_state=True,
            return_chunk_states=True,
            chunk_size=128,
            seq_idx=seq_idx,
        )
        assert (
            o.shape == v.shape
            and final.shape == s0.shape
            and states.shape == (B, H, 33, K, V)
        )
        if backward:
            (o.sum() + final.sum() + states.sum()).backward()
            assert (
                q.grad.shape == q.shape
                and decay.grad.shape == decay.shape
                and s0.grad.shape == s0.shape
            )
        x = torch.empty(B, T, H, V, device=device, requires_grad=True)
        dt = torch.empty(B, T, H, device=device)
        A = torch.empty(H, device=device, requires_grad=True)
        Bm, Cm = (torch.empty(B, T, 1, K, device=device) for _ in range(2))
        y, last = ssd(
            x,
            dt,
            A,
            Bm,
            Cm,
            D=A,
            seq_idx=seq_idx,
            dt_softplus=True,
            return_final_states=True,
        )
        assert y.shape == x.shape and last.shape == (B, H, V, K)
        if backward:
            (y.sum() + last.sum()).backward()
            assert x.grad.shape == x.shape
