"""flash_attention (Triton) against the float64 reference, and the references against each other.

Without a GPU the kernels run in Triton's interpreter on the CPU (see tests/conftest.py), at
small, awkward shapes; with a GPU the same tests run on CUDA and add larger shapes.
"""

import math

import pytest
import torch

from _compare import assert_close
from kernels import flash_attention, uses_triton
from kernels.flash_attention import attention_blockwise, attention_ref

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"

# (B, H, Hkv, Tq, Tk, D, causal): lengths of 1 and off the tile sizes, GQA, Tq != Tk both ways.
SHAPES = [
    (1, 1, 1, 1, 1, 16, False),
    (1, 1, 1, 1, 1, 16, True),
    (1, 2, 2, 63, 63, 16, True),
    (2, 3, 3, 129, 129, 40, False),
    (2, 4, 2, 200, 200, 64, True),
    (1, 4, 1, 1, 200, 128, True),  # one decode step against a cache
    (1, 2, 1, 63, 129, 64, True),  # Tq < Tk
    (2, 2, 2, 129, 63, 40, True),  # Tq > Tk: the first 66 queries see no key
    (1, 6, 2, 200, 129, 16, False),
    (2, 2, 1, 33, 47, 8, True),
    (1, 1, 1, 17, 33, 256, True),
]
if CUDA:
    SHAPES += [
        (2, 8, 2, 1024, 1024, 128, True),
        (1, 4, 4, 4097, 4097, 64, False),
        (1, 8, 1, 1, 8192, 128, True),
        (1, 4, 2, 1000, 3000, 256, True),
    ]
# Half-precision runs use a subset, to keep the interpreter's time down.
HALF_SHAPES = [SHAPES[i] for i in (2, 4, 7, 9)] + SHAPES[11:]
HALF_DTYPES = [torch.float16] + ([torch.bfloat16] if CUDA else [])


def shape_id(shape):
    B, H, Hkv, Tq, Tk, D, causal = shape
    return f"B{B}-H{H}-Hkv{Hkv}-Tq{Tq}-Tk{Tk}-D{D}" + (
        "-causal" if causal else ""
    )


def make_inputs(shape, dtype, seed=0):
    B, H, Hkv, Tq, Tk, D, _ = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, D, generator=g)
    k = torch.randn(B, Hkv, Tk, D, generator=g)
    v = torch.randn(B, Hkv, Tk, D, generator=g)
    do = torch.randn(B, H, Tq, D, generator=g)
    return [x.to(DEVICE, dtype) for x in (q, k, v, do)]


def run_and_compare(shape, dtype, atol, rtol):
    causal = shape[-1]
    q, k, v, do = make_inputs(shape, dtype)
    assert uses_triton(q), "the test would compare the reference with itself"
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    o, lse = flash_attention(q, k, v, causal=causal, return_lse=True)
    o.backward(do)
    assert (
        o.dtype == dtype
        and o.shape == q.shape
        and lse.shape == q.shape[:3]
        and lse.dtype == torch.float32
    )
    # The reference sees the very same (rounded) inputs, in float64.
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    o64, lse64 = attention_ref(q64, k64, v64, causal=causal, return_lse=True)
    o64.backward(do.double())
    assert_close("o", o64, o, atol, rtol)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(lse64)), (
        "rows that see no key differ"
    )
    finite = torch.isfinite(lse64)
    assert_close("lse", lse64[finite], lse[finite], atol, rtol)
    for name, x, x64 in (("dq", q, q64), ("dk", k, k64), ("dv", v, v64)):
        assert x.grad.dtype == dtype
        assert_close(name, x64.grad, x.grad, atol, rtol)


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_float32_matches_reference(shape):
    run_and_compare(shape, torch.float32, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("shape", HALF_SHAPES, ids=shape_id)
def test_half_precision_matches_reference(shape, dtype):
    # bfloat16 keeps 8 bits of mantissa, float16 11: the probabilities p and the gradient
    # terms are rounded to the input dtype before each matrix product, as in every fp16 kernel.
    tol = {torch.float16: 5e-3, torch.bfloat16: 4e-2}[dtype]
    run_and_compare(shape, dtype, atol=tol, rtol=tol)


def test_noncontiguous_inputs():
    """Tensors laid out as [B, T, H, D] and viewed as [B, H, T, D] work without a copy by the caller."""
    B, H, T, D = 2, 3, 70, 32
    q, k, v = (
        torch.randn(B, T, H, D, device=DEVICE).transpose(1, 2) for _ in range(3)
    )
    assert not q.is_contiguous()
    assert_close(
        "o",
        attention_ref(q.double(), k.double(), v.double(), causal=True),
        flash_attention(q, k, v, causal=True),
        2e-5,
        1e-4,
    )


def test_scale_argument():
    q, k, v, _ = make_inputs((1, 2, 2, 40, 50, 24, False), torch.float32)
    for scale in (0.01, 1, 3.5):
        assert_close(
            f"scale={scale}",
            attention_ref(q.double(), k.double(), v.double(), scale=scale),
            flash_attention(q, k, v, scale=scale),
            2e-5,
            1e-4,
        )


def test_rows_without_keys_are_zero():
    q, k, v, _ = make_inputs((1, 2, 2, 10, 4, 16, True), torch.float32)
    o, lse = flash_attention(q, k, v, causal=True, return_lse=True)
    assert torch.all(o[:, :, :6] == 0) and torch.all(
        torch.isneginf(lse[:, :, :6])
    )
    assert torch.all(torch.isfinite(lse[:, :, 6:]))


def test_lse_merges_chunks():
    """Attention over two halves of the keys, merged through the log-sum-exp, equals the whole."""
    q, k, v, _ = make_inputs((1, 2, 2, 33, 90, 32, False), torch.float32)
    o1, l1 = flash_attention(q, k[:, :, :41], v[:, :, :41], return_lse=True)
    o2, l2 = flash_attention(q, k[:, :, 41:], v[:, :, 41:], return_lse=True)
    lse = torch.logaddexp(l1, l2)
    merged = (
        torch.exp(l1 - lse)[..., None] * o1
        + torch.exp(l2 - lse)[..., None] * o2
    )
    assert_close("merged", attention_ref(q, k, v), merged, 2e-5, 1e-4)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "tq,tk", [(1, 1), (63, 63), (129, 200), (200, 129), (1, 77)]
)
def test_blockwise_reference_matches_naive(tq, tk, causal):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, tq, 24, generator=g, dtype=torch.float64)
    k, v = (
        torch.randn(2, 2, tk, 24, generator=g, dtype=torch.float64)
        for _ in range(2)
    )
    o, lse = attention_ref(q, k, v, causal=causal, return_lse=True)
    ob, lseb = attention_blockwise(
        q, k, v, causal=causal, block_m=32, block_n=48, return_lse=True
    )
    assert_close("o", o, ob, 1e-12, 1e-12)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(lseb))
    assert_close(
        "lse", lse[torch.isfinite(lse)], lseb[torch.isfinite(lse)], 1e-12, 1e-12
    )


def test_reference_matches_sdpa():
    g = torch.Generator().manual_seed(2)
    q, k, v = (
        torch.randn(2, 4, 37, 16, generator=g, dtype=torch.float64)
        for _ in range(3)
    )
    for causal in (False, True):
        sdpa = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=causal
        )
        assert_close(
            "sdpa", sdpa, attention_ref(q, k, v, causal=causal), 1e-12, 1e-12
        )


# ----------------------------------------------------------------------------- bad input
def _qkv(B=1, H=2, Hkv=2, Tq=8, Tk=8, D=16, dtype=torch.float32):
    return (
        torch.randn(B, H, Tq, D, dtype=dtype),
        torch.randn(B, Hkv, Tk, D, dtype=dtype),
        torch.randn(B, Hkv, Tk, D, dtype=dtype),
    )


BAD_INPUTS = {
    "not a tensor": (
        lambda q, k, v: ([[1.0]], k, v, {}),
        TypeError,
        "q must be a torch.Tensor",
    ),
    "3 dims": (
        lambda q, k, v: (q[0], k, v, {}),
        ValueError,
        r"q must have 4 dimensions \[B, H, Tq, D\], got shape \(2, 8, 16\)",
    ),
    "5 dims": (
        lambda q, k, v: (q, k[None], v, {}),
        ValueError,
        "k must have 4 dimensions",
    ),
    "integer dtype": (
        lambda q, k, v: (q.long(), k.long(), v.long(), {}),
        TypeError,
        "q must be float16, bfloat16 or float32, got torch.int64",
    ),
    "float64": (
        lambda q, k, v: (q.double(), k.double(), v.double(), {}),
        TypeError,
        "got torch.float64",
    ),
    "mixed dtypes": (
        lambda q, k, v: (q, k.half(), v, {}),
        TypeError,
        "q, k, v must have the same dtype, got q torch.float32, k torch.float16",
    ),
    "batch": (
        lambda q, k, v: (q, torch.cat([k, k]), torch.cat([v, v]), {}),
        ValueError,
        r"k must have batch size \(that of q\) 1, got 2",
    ),
    "head dim": (
        lambda q, k, v: (q, k[..., :8], v[..., :8], {}),
        ValueError,
        r"k must have head dim \(that of q\) 16, got 8",
    ),
    "k v shapes": (
        lambda q, k, v: (q, k, v[:, :, :5], {}),
        ValueError,
        r"k and v must have the same shape",
    ),
    "heads not divisible": (
        lambda q, k, v: (torch.randn(1, 3, 8, 16), k, v, {}),
        ValueError,
        "query heads H=3 must be a multiple of the number of key/value heads Hkv=2",
    ),
    "head dim too large": (
        lambda q, k, v: (
            torch.randn(1, 2, 4, 264),
            torch.randn(1, 2, 4, 264),
            torch.randn(1, 2, 4, 264),
            {},
        ),
        ValueError,
        "head dim D must be between 1 and 256, got 264",
    ),
    "v head dim too large": (
        lambda q, k, v: (q, k, torch.randn(1, 2, 8, 300), {}),
        ValueError,
        "head dim Dv of v must be between 1 and 256, got 300",
    ),
    "empty queries": (
        lambda q, k, v: (q[:, :, :0], k, v, {}),
        ValueError,
        r"Tq >= 1",
    ),
    "empty keys": (
        lambda q, k, v: (q, k[:, :, :0], v[:, :, :0], {}),
        ValueError,
        r"Tk >= 1",
    ),
    "devices": (
        lambda q, k, v: (q, k.to("meta"), v, {}),
        ValueError,
        "q, k, v must be on the same device, got q on cpu, k on meta",
    ),
    "scale zero": (
        lambda q, k, v: (q, k, v, {"scale": 0.0}),
        ValueError,
        "scale must be a positive finite number or None, got 0.0",
    ),
    "scale negative": (
        lambda q, k, v: (q, k, v, {"scale": -1}),
        ValueError,
        "got -1",
    ),
    "scale nan": (
        lambda q, k, v: (q, k, v, {"scale": math.nan}),
        ValueError,
        "got nan",
    ),
    "scale inf": (
        lambda q, k, v: (q, k, v, {"scale": math.inf}),
        ValueError,
        "got inf",
    ),
    "scale string": (
        lambda q, k, v: (q, k, v, {"scale": "0.1"}),
        TypeError,
        "scale must be a positive finite number or None, got str",
    ),
    "scale tensor": (
        lambda q, k, v: (q, k, v, {"scale": torch.tensor(0.1)}),
        TypeError,
        "got Tensor",
    ),
    "causal not bool": (
        lambda q, k, v: (q, k, v, {"causal": "yes"}),
        TypeError,
        "causal must be True or False, got 'yes'",
    ),
    "return_lse not bool": (
        lambda q, k, v: (q, k, v, {"return_lse": 1}),
        TypeError,
        "return_lse must be True or False",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_rejected_with_a_clear_message(case):
    make, error, message = BAD_INPUTS[case]
    q, k, v, kwargs = make(*_qkv())
    with pytest.raises(error, match=message):
        flash_attention(q, k, v, **kwargs)
