"""flash_attention's head dims, sliding windows, soft-capping, packed sequences, layouts and
host synchronisation, against the float64 reference `attention_ref`, forward and backward.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py), at small, awkward
shapes: lengths off the tile size (the interpreter's tiles are 32), length 1, batch 1, GQA.
"""

from importlib import import_module

import pytest
import torch

from _compare import assert_close
from kernels import flash_attention, uses_triton
from kernels.flash_attention import attention_blockwise, attention_ref
from kernels.flash_attention.naive import attention_ref_backward
from kernels.flash_attention.api import _check_inputs

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
TOL = dict(atol=2e-5, rtol=1e-4)  # float32 kernels against float64


def make(B, H, Hkv, Tq, Tk, D, Dv=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    Dv = D if Dv is None else Dv
    q = torch.randn(B, H, Tq, D, generator=g)
    k = torch.randn(B, Hkv, Tk, D, generator=g)
    v = torch.randn(B, Hkv, Tk, Dv, generator=g)
    do = torch.randn(B, H, Tq, Dv, generator=g)
    return [x.to(DEVICE) for x in (q, k, v, do)]


def check(q, k, v, do, ref_kwargs=None, **kwargs):
    """Output, log-sum-exp and the three gradients of the kernel against the float64 reference."""
    assert uses_triton(q), "the test would compare the reference with itself"
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    o, lse = flash_attention(q, k, v, return_lse=True, **kwargs)
    o.backward(do)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    o64, lse64 = attention_ref(
        q64, k64, v64, return_lse=True, **(ref_kwargs or {})
    )
    o64.backward(do.double())
    assert o.shape == o64.shape
    assert_close("o", o64, o, **TOL)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(lse64)), (
        "rows that see no key differ"
    )
    finite = torch.isfinite(lse64)
    assert_close("lse", lse64[finite], lse[finite], **TOL)
    for name, x, x64 in (("dq", q, q64), ("dk", k, k64), ("dv", v, v64)):
        assert_close(name, x64.grad, x.grad, **TOL)


# ----------------------------------------------------------------------------- head dims
@pytest.mark.parametrize(
    "D,Dv",
    [(1, 1), (3, 5), (59, 59), (111, 111), (59, 111), (200, 72)],
    ids=lambda d: str(d),
)
def test_any_head_dim(D, Dv):
    check(
        *make(1, 2, 1, 37, 45, D, Dv), causal=True, ref_kwargs=dict(causal=True)
    )


# ----------------------------------------------------------------------------- windows, softcap
WINDOWS = {  # (B, H, Hkv, Tq, Tk, window, causal)
    "wider-than-T": (1, 2, 1, 45, 45, (500, 500), False),
    "zero": (1, 2, 2, 45, 45, (0, 0), False),
    "left-only": (1, 2, 1, 70, 70, (9, -1), False),
    "right-only": (1, 2, 1, 70, 70, (-1, 5), False),
    "left-and-right": (2, 3, 1, 66, 50, (17, 3), False),
    "causal-window": (1, 4, 2, 70, 70, (20, -1), True),
    "causal-window-Tq<Tk": (1, 2, 1, 33, 100, (40, 0), True),
    "Tq>Tk": (1, 2, 1, 80, 40, (3, 0), False),
    "length-1": (1, 1, 1, 1, 1, (0, 0), False),
    "decode-step": (1, 4, 1, 1, 90, (31, 0), False),
}


@pytest.mark.parametrize("case", WINDOWS, ids=list(WINDOWS))
def test_sliding_window(case):
    B, H, Hkv, Tq, Tk, window, causal = WINDOWS[case]
    right = 0 if causal else window[1]
    check(
        *make(B, H, Hkv, Tq, Tk, 16),
        window=window,
        causal=causal,
        ref_kwargs=dict(window=(window[0], right)),
    )


@pytest.mark.parametrize(
    "window,causal",
    [((-1, -1), False), ((-1, -1), True), ((12, 0), False)],
    ids=str,
)
def test_softcap_with_gradients(window, causal):
    q, k, v, do = make(1, 4, 2, 50, 61, 24)
    q = q * 4  # large scores, so that the cap bites
    check(
        q,
        k,
        v,
        do,
        window=window,
        causal=causal,
        softcap=3.0,
        ref_kwargs=dict(
            window=(window[0], 0 if causal else window[1]), softcap=3.0
        ),
    )


def test_softcap_reference_matches_definition():
    g = torch.Generator().manual_seed(3)
    q, k, v = (
        torch.randn(1, 2, 9, 8, generator=g, dtype=torch.float64)
        for _ in range(3)
    )
    s = q @ k.transpose(-1, -2) * 8**-0.5
    expected = torch.softmax(2.0 * torch.tanh(s / 2.0), -1) @ v
    assert_close(
        "softcap", expected, attention_ref(q, k, v, softcap=2.0), 1e-12, 1e-12
    )


def test_window_reference_against_sdpa_mask():
    """flash-attn's convention: query i sees keys i + Tk - Tq - left .. i + Tk - Tq + right."""
    g = torch.Generator().manual_seed(4)
    q = torch.randn(1, 2, 7, 8, generator=g, dtype=torch.float64)
    k, v = (
        torch.randn(1, 2, 11, 8, generator=g, dtype=torch.float64)
        for _ in range(2)
    )
    i, j = torch.arange(7)[:, None] + 4, torch.arange(11)[None, :]
    mask = (j >= i - 2) & (j <= i + 1)
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask
    )
    assert_close(
        "window", sdpa, attention_ref(q, k, v, window=(2, 1)), 1e-12, 1e-12
    )


@pytest.mark.parametrize("window", [(5, 0), (40, 3), (-1, 7)], ids=str)
def test_blockwise_reference_skips_tiles_and_matches(window):
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 2, 90, 8, generator=g, dtype=torch.float64)
    k, v = (
        torch.randn(1, 1, 100, 8, generator=g, dtype=torch.float64)
        for _ in range(2)
    )
    expected = attention_ref(q, k, v, window=window, softcap=1.5)
    got = attention_blockwise(
        q, k, v, block_m=16, block_n=16, window=window, softcap=1.5
    )
    assert_close("blockwise", expected, got, 1e-12, 1e-12)


# ----------------------------------------------------------------------------- packed sequences
VARLEN = {  # (lengths of q, lengths of k or None for shared, H, Hkv, causal, window, total padding)
    "shared-causal": ([1, 40, 7, 33], None, 2, 1, True, (-1, -1), 0),
    "shared-window": ([50, 1, 29], None, 2, 2, False, (6, 2), 0),
    "separate-q<k": ([3, 1, 20], [40, 5, 33], 4, 2, True, (-1, -1), 0),
    "separate-empty-q": ([5, 0, 9], [7, 8, 9], 2, 1, True, (10, 0), 0),
    "trailing-rows": ([17, 30], None, 2, 1, False, (-1, -1), 5),
}


@pytest.mark.parametrize("case", VARLEN, ids=list(VARLEN))
def test_packed_sequences(case):
    lq, lk, H, Hkv, causal, window, pad = VARLEN[case]
    cu_q = (
        torch.tensor([0] + lq, dtype=torch.int32)
        .cumsum(0, dtype=torch.int32)
        .to(DEVICE)
    )
    cu_k = (
        cu_q
        if lk is None
        else torch.tensor([0] + lk, dtype=torch.int32)
        .cumsum(0, dtype=torch.int32)
        .to(DEVICE)
    )
    Tq, Tk = int(cu_q[-1]) + pad, int(cu_k[-1]) + pad
    q, k, v, do = make(1, H, Hkv, Tq, Tk, 24)
    if lk is None:
        kwargs = dict(cu_seqlens=cu_q, max_seqlen=max(lq))
    else:
        kwargs = dict(
            cu_seqlens_q=cu_q,
            cu_seqlens_k=cu_k,
            max_seqlen_q=max(lq),
            max_seqlen_k=max(lk),
        )
    ref = dict(
        window=(window[0], 0 if causal else window[1]),
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
    )
    check(q, k, v, do, causal=causal, window=window, ref_kwargs=ref, **kwargs)


def test_packed_equals_separate_calls():
    """Packing is only a layout: each sequence gets what a call on it alone gives."""
    lengths = [33, 1, 64]
    cu = torch.tensor([0, 33, 34, 98], dtype=torch.int32, device=DEVICE)
    q, k, v, _ = make(1, 2, 1, 98, 98, 16)
    packed = flash_attention(
        q, k, v, causal=True, cu_seqlens=cu
    )  # max_seqlen defaults to 98
    for n in range(len(lengths)):
        s = slice(int(cu[n]), int(cu[n + 1]))
        assert_close(
            f"sequence {n}",
            flash_attention(q[:, :, s], k[:, :, s], v[:, :, s], causal=True),
            packed[:, :, s],
            1e-6,
            1e-5,
        )


# ----------------------------------------------------------------------------- layouts
def test_bthd_layout_runs_without_a_copy(monkeypatch):
    """[B, T, H, D] tensors viewed as [B, H, T, D] reach the kernel as they are, strides and all."""
    fa = import_module(
        "kernels.flash_attention.triton"
    )  # by path: kernels.flash_attention is the function
    seen, kernel = [], fa._fwd_kernel

    class Spy:  # records what the launcher hands to the kernel
        def __getitem__(self, grid):
            def launch(q, k, v, *args, **kwargs):
                seen.append(
                    (q.data_ptr(), q.stride(), k.data_ptr(), v.data_ptr())
                )
                return kernel[grid](q, k, v, *args, **kwargs)

            return launch

    monkeypatch.setattr(fa, "_fwd_kernel", Spy())
    B, T, H, D = 2, 45, 3, 16
    q, k, v = (torch.randn(B, T, H, D, device=DEVICE) for _ in range(3))
    o = flash_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True
    )
    assert seen and seen[0] == (
        q.data_ptr(),
        q.transpose(1, 2).stride(),
        k.data_ptr(),
        v.data_ptr(),
    )
    expected = attention_ref(
        *(x.double().transpose(1, 2) for x in (q, k, v)), causal=True
    )
    assert_close("o", expected, o, **TOL)
    assert o.transpose(1, 2).shape == (B, T, H, D)


# ----------------------------------------------------------------------------- no host sync
def test_checks_read_no_values():
    """On tensors without data (meta), every check still runs: none of them reads a value."""
    q, k, v = (torch.empty(1, 4, 100, 64, device="meta") for _ in range(3))
    cu = torch.empty(4, dtype=torch.int32, device="meta")
    out = _check_inputs(
        q,
        k,
        v,
        True,
        None,
        True,
        (8, 0),
        30.0,
        cu,
        None,
        None,
        None,
        None,
        None,
    )
    assert (
        out[0] == (8, 0) and out[4] == 100
    )  # without max_seqlen the packed length bounds the launch
    with pytest.raises(
        ValueError, match="head dim D must be between 1 and 256, got 300"
    ):
        _check_inputs(
            torch.empty(1, 4, 8, 300, device="meta"),
            *(torch.empty(1, 4, 8, 300, device="meta"),) * 2,
            False,
            None,
            False,
            (-1, -1),
            0.0,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def test_reference_path_reads_no_values_on_meta():
    q, k, v = (torch.empty(2, 4, 100, 64, device="meta") for _ in range(3))
    o = flash_attention(q, k, v, window=(7, 0), softcap=5.0)
    assert o.shape == (2, 4, 100, 64) and o.device.type == "meta"


@pytest.mark.skipif(
    not CUDA, reason="needs a GPU: torch.cuda.set_sync_debug_mode"
)
def test_cuda_path_makes_no_synchronising_call():
    q, k, v, do = make(1, 4, 2, 300, 300, 64)
    q, k, v = (x.half().requires_grad_() for x in (q, k, v))
    cu = torch.tensor([0, 100, 101, 300], dtype=torch.int32, device="cuda")
    calls = (
        dict(causal=True),
        dict(window=(31, 0), softcap=20.0),
        dict(causal=True, cu_seqlens=cu, max_seqlen=199),
    )
    for kwargs in (
        calls
    ):  # compile and autotune first: autotuning times the kernels, which waits
        flash_attention(q, k, v, **kwargs).backward(do.half())
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for kwargs in calls:
            flash_attention(q, k, v, **kwargs).backward(do.half())
    finally:
        torch.cuda.set_sync_debug_mode(0)


# ----------------------------------------------------------------------------- bad input
BAD = {
    "window not a pair": (
        dict(window=5),
        TypeError,
        r"window must be a pair of ints \(left, right\)",
    ),
    "window floats": (
        dict(window=(1.0, 0)),
        TypeError,
        "window must be a pair of ints",
    ),
    "window below -1": (
        dict(window=(-2, 0)),
        ValueError,
        r"window sides must be >= 0, or -1 for unbounded, got \(-2, 0\)",
    ),
    "causal with right side": (
        dict(causal=True, window=(4, 2)),
        ValueError,
        "right side must be 0 or -1",
    ),
    "softcap negative": (
        dict(softcap=-1.0),
        ValueError,
        "softcap must be a finite number >= 0",
    ),
    "softcap string": (
        dict(softcap="1"),
        TypeError,
        "softcap must be a number",
    ),
    "cu_seqlens int64": (
        dict(cu_seqlens=torch.tensor([0, 8])),
        TypeError,
        "cu_seqlens must be int32",
    ),
    "cu_seqlens 2-d": (
        dict(cu_seqlens=torch.zeros(1, 2, dtype=torch.int32)),
        ValueError,
        "cu_seqlens must have 1 dimensions",
    ),
    "cu_seqlens not from 0": (
        dict(cu_seqlens=torch.tensor([1, 8], dtype=torch.int32)),
        ValueError,
        r"must rise from 0 to at most the packed length 8, got \[1, 8\]",
    ),
    "cu_seqlens decreasing": (
        dict(cu_seqlens=torch.tensor([0, 5, 3], dtype=torch.int32)),
        ValueError,
        "must rise from 0",
    ),
    "cu_seqlens past T": (
        dict(cu_seqlens=torch.tensor([0, 9], dtype=torch.int32)),
        ValueError,
        "at most the packed length 8",
    ),
    "cu_seqlens one entry": (
        dict(cu_seqlens=torch.tensor([0], dtype=torch.int32)),
        ValueError,
        "N \\+ 1 >= 2 offsets",
    ),
    "both cu_seqlens": (
        dict(
            cu_seqlens=torch.tensor([0, 8], dtype=torch.int32),
            cu_seqlens_q=torch.tensor([0, 8], dtype=torch.int32),
        ),
        ValueError,
        "not both",
    ),
    "cu_seqlens_q alone": (
        dict(cu_seqlens_q=torch.tensor([0, 8], dtype=torch.int32)),
        ValueError,
        "give both or neither",
    ),
    "different N": (
        dict(
            cu_seqlens_q=torch.tensor([0, 8], dtype=torch.int32),
            cu_seqlens_k=torch.tensor([0, 4, 8], dtype=torch.int32),
        ),
        ValueError,
        "same number of sequences",
    ),
    "max_seqlen too short": (
        dict(
            cu_seqlens=torch.tensor([0, 2, 8], dtype=torch.int32), max_seqlen=5
        ),
        ValueError,
        "max_seqlen=5 is shorter than the longest packed sequence, 6",
    ),
    "max_seqlen zero": (
        dict(cu_seqlens=torch.tensor([0, 8], dtype=torch.int32), max_seqlen=0),
        ValueError,
        "max_seqlen must be a positive int",
    ),
    "max_seqlen without cu": (
        dict(max_seqlen=8),
        ValueError,
        "only applies to packed sequences",
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_feature_arguments(case):
    kwargs, error, message = BAD[case]
    q, k, v = (
        torch.randn(1, 2, 8, 16),
        torch.randn(1, 2, 8, 16),
        torch.randn(1, 2, 8, 16),
    )
    with pytest.raises(error, match=message):
        flash_attention(q, k, v, **kwargs)


def test_packed_needs_batch_of_one():
    q = torch.randn(2, 2, 8, 16)
    with pytest.raises(
        ValueError,
        match=r"batch of one, \[1, H, total, D\]; got q of shape \(2, 2, 8, 16\)",
    ):
        flash_attention(
            q, q, q, cu_seqlens=torch.tensor([0, 8], dtype=torch.int32)
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(causal=True),
        dict(window=(4, 2), softcap=1.5),
        dict(
            causal=True,
            cu_seqlens_q=torch.tensor([0, 1, 9, 20], dtype=torch.int32),
            cu_seqlens_k=torch.tensor([0, 5, 15, 30], dtype=torch.int32),
        ),
    ],
    ids=str,
)
def test_written_out_backward_matches_autograd(kwargs):
    g = torch.Generator().manual_seed(6)
    q = torch.randn(
        1, 4, 20, 8, generator=g, dtype=torch.float64, requires_grad=True
    )
    k = torch.randn(
        1, 2, 30, 8, generator=g, dtype=torch.float64, requires_grad=True
    )
    v = torch.randn(
        1, 2, 30, 5, generator=g, dtype=torch.float64, requires_grad=True
    )
    do = torch.randn(1, 4, 20, 5, generator=g, dtype=torch.float64)
    attention_ref(q, k, v, **kwargs).backward(do)
    for name, x, got in zip(
        "qkv",
        (q, k, v),
        attention_ref_backward(
            do, q.detach(), k.detach(), v.detach(), **kwargs
        ),
    ):
        assert_close(f"d{name}", x.grad, got, 1e-12, 1e-12)
