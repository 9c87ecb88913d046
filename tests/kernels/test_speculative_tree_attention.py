"""tree_attention (Triton) against its PyTorch reference, and the reference against causal attention.

Without a GPU the kernel runs in Triton's interpreter on the CPU (see tests/conftest.py), at small,
awkward sizes: an empty cache, blocks of one query, lengths off the tile sizes, grouped-query heads.
"""

import pytest
import torch

from _compare import assert_close
from kernels import uses_triton
from kernels.flash_attention import attention_ref
from kernels.speculative import build_tree, tree_attention, tree_attention_ref

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"

# (B, H, Hkv, Tq, cached, D): Tk = cached + Tq
SHAPES = [
    (1, 1, 1, 1, 0, 16),
    (1, 2, 2, 1, 37, 16),
    (2, 3, 3, 7, 0, 40),
    (1, 4, 2, 13, 50, 64),
    (2, 2, 1, 33, 31, 24),
    (1, 2, 2, 17, 64, 128),
    (1, 1, 1, 40, 3, 8),
]
if CUDA:
    SHAPES += [
        (1, 12, 12, 63, 2000, 64),
        (4, 8, 2, 128, 777, 128),
        (1, 4, 4, 26, 4096, 256),
    ]


def shape_id(shape):
    B, H, Hkv, Tq, cached, D = shape
    return f"B{B}-H{H}-Hkv{Hkv}-Tq{Tq}-cache{cached}-D{D}"


def make_inputs(shape, dtype, seed=0):
    B, H, Hkv, Tq, cached, D = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, D, generator=g)
    k = torch.randn(B, Hkv, cached + Tq, D, generator=g)
    v = torch.randn(B, Hkv, cached + Tq, D, generator=g)
    mask = torch.rand(Tq, Tq, generator=g) < 0.4
    mask |= torch.eye(
        Tq, dtype=torch.bool
    )  # every node sees itself, as in a tree
    return [x.to(DEVICE, dtype) for x in (q, k, v)] + [mask.to(DEVICE)]


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_float32_matches_reference(shape):
    q, k, v, mask = make_inputs(shape, torch.float32)
    assert uses_triton(q), "the test would compare the reference with itself"
    o = tree_attention(q, k, v, mask)
    assert o.shape == q.shape and o.dtype == torch.float32
    assert_close(
        "o",
        tree_attention_ref(q.double(), k.double(), v.double(), mask),
        o,
        2e-5,
        1e-4,
    )


@pytest.mark.parametrize("shape", SHAPES[2:5], ids=shape_id)
def test_float16_matches_reference(shape):
    q, k, v, mask = make_inputs(shape, torch.float16)
    o = tree_attention(q, k, v, mask)
    assert o.dtype == torch.float16
    assert_close(
        "o",
        tree_attention_ref(q.double(), k.double(), v.double(), mask),
        o,
        5e-3,
        5e-3,
    )


def test_a_real_tree_and_rows_without_keys():
    tree = build_tree([(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0)])
    q, k, v, _ = make_inputs((1, 2, 2, tree.num_nodes, 19, 32), torch.float32)
    assert_close(
        "tree",
        tree_attention_ref(q.double(), k.double(), v.double(), tree.mask),
        tree_attention(q, k, v, tree.mask.to(DEVICE)),
        2e-5,
        1e-4,
    )
    # no cache and an all-False mask: no query sees a key, the output is 0 (as flash_attention's)
    q, k, v, mask = make_inputs((1, 2, 2, 5, 0, 16), torch.float32)
    assert torch.all(tree_attention(q, k, v, torch.zeros_like(mask)) == 0)


@pytest.mark.parametrize("tq,cached", [(1, 0), (6, 0), (6, 20), (30, 3)])
def test_reference_with_a_triangular_mask_is_causal_attention(tq, cached):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, tq, 16, generator=g, dtype=torch.float64)
    k, v = (
        torch.randn(2, 2, cached + tq, 16, generator=g, dtype=torch.float64)
        for _ in range(2)
    )
    tril = torch.ones(tq, tq, dtype=torch.bool).tril()
    assert_close(
        "causal",
        attention_ref(q, k, v, causal=True),
        tree_attention_ref(q, k, v, tril),
        1e-12,
        1e-12,
    )


def test_noncontiguous_inputs():
    B, H, Tq, Tk, D = 1, 2, 9, 30, 32
    q = torch.randn(B, Tq, H, D, device=DEVICE).transpose(1, 2)
    k, v = (
        torch.randn(B, Tk, H, D, device=DEVICE).transpose(1, 2)
        for _ in range(2)
    )
    mask = (
        torch.ones(Tq, Tq, dtype=torch.bool, device=DEVICE)
        .tril()
        .T.contiguous()
        .T
    )  # a transposed view
    assert not q.is_contiguous()
    assert_close(
        "o",
        tree_attention_ref(q.double(), k.double(), v.double(), mask),
        tree_attention(q, k, v, mask),
        2e-5,
        1e-4,
    )


def _qkvm(Tq=4, Tk=10, dtype=torch.float32):
    return (
        torch.randn(1, 2, Tq, 16, dtype=dtype),
        torch.randn(1, 2, Tk, 16, dtype=dtype),
        torch.randn(1, 2, Tk, 16, dtype=dtype),
        torch.ones(Tq, Tq, dtype=torch.bool),
    )


BAD = {
    "mask not bool": (
        lambda q, k, v, m: (q, k, v, m.int()),
        TypeError,
        "tree_mask must be a bool tensor, got torch.int32",
    ),
    "mask shape": (
        lambda q, k, v, m: (q, k, v, m[:3]),
        ValueError,
        r"tree_mask must have shape \[Tq, Tq\] = \(4, 4\), got \(3, 4\)",
    ),
    "mask 3-D": (
        lambda q, k, v, m: (q, k, v, m[None]),
        ValueError,
        r"tree_mask must have 2 dimensions \[Tq, Tq\]",
    ),
    "fewer keys than queries": (
        lambda q, k, v, m: (q, k[:, :, :3], v[:, :, :3], m),
        ValueError,
        r"Tk >= Tq\), got Tk=3",
    ),
    "float64": (
        lambda q, k, v, m: (q.double(), k.double(), v.double(), m),
        TypeError,
        "q must be float16, bfloat16 or float32",
    ),
    "k v shapes": (
        lambda q, k, v, m: (q, k, v[:, :, :5], m),
        ValueError,
        "k and v must have the same shape",
    ),
    "head dim": (
        lambda q, k, v, m: (q[..., :12], k[..., :12], v[..., :12], m),
        ValueError,
        "multiple of 8 between 8 and 256, got 12",
    ),
    "heads": (
        lambda q, k, v, m: (torch.randn(1, 3, 4, 16), k, v, m),
        ValueError,
        "H=3 must be a multiple",
    ),
    "devices": (
        lambda q, k, v, m: (q, k, v, m.to("meta")),
        ValueError,
        "must be on the same device",
    ),
    "requires grad": (
        lambda q, k, v, m: (q.requires_grad_(), k, v, m),
        ValueError,
        "tree_attention has no backward",
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_rejected(case):
    make, error, message = BAD[case]
    with pytest.raises(error, match=message):
        tree_attention(*make(*_qkvm()))
