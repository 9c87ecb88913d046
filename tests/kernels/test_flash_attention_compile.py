"""flash_attention as a custom op: torch.library.opcheck, torch.compile(fullgraph=True), and the
whole call on tensors that hold no data (meta, fake CUDA), so that any read of a value fails."""

import pytest
import torch

from _compare import assert_close
from kernels import flash_attention, uses_triton
from kernels.flash_attention.op import flash_attention_fwd

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _args(dtype, B=1, H=2, Hkv=1, T=37, D=16, Dv=24, packed=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g).to(DEVICE, dtype).requires_grad_()
    k = (
        torch.randn(B, Hkv, T, D, generator=g)
        .to(DEVICE, dtype)
        .requires_grad_()
    )
    v = (
        torch.randn(B, Hkv, T, Dv, generator=g)
        .to(DEVICE, dtype)
        .requires_grad_()
    )
    cu = (
        torch.tensor([0, 1, 20, T], dtype=torch.int32, device=DEVICE)
        if packed
        else None
    )
    return (
        q,
        k,
        v,
        D**-0.5,
        9,
        0,
        2.5 if packed else 0.0,
        cu,
        cu,
        T if packed else 0,
        T if packed else 0,
    )


# float32 CPU tensors take the Triton kernels in the interpreter; bfloat16 CPU tensors the reference
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16], ids=["kernels", "reference"]
)
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_opcheck(dtype, packed):
    args = _args(dtype, packed=packed)
    assert uses_triton(args[0]) == (dtype == torch.float32 or CUDA)
    torch.library.opcheck(flash_attention_fwd, args)


class TinyBlock(torch.nn.Module):
    """One attention layer: projections around `flash_attention`, [B, T, H, D] in and out."""

    def __init__(self, dim=32, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, x):  # x [B, T, C]
        B, T, C = x.shape
        q, k, v = (
            self.qkv(x).view(B, T, 3, self.heads, C // self.heads).unbind(2)
        )  # [B, T, H, D] each
        o = flash_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            causal=True,
            window=(15, 0),
            softcap=20.0,
        )  # [B, H, T, D], no copy
        return self.out(o.transpose(1, 2).reshape(B, T, C))


def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = TinyBlock().to(DEVICE)
    x = torch.randn(2, 45, 32, device=DEVICE)
    eager = model(x)
    eager.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(
        model, fullgraph=True, backend="aot_eager" if not CUDA else "inductor"
    )
    out = compiled(x)
    out.square().sum().backward()
    assert_close("out", eager, out, 1e-5, 1e-5)
    for (name, p), g in zip(model.named_parameters(), grads):
        assert_close(name, g, p.grad, 1e-5, 1e-5)


@pytest.mark.parametrize("device", ["meta", "cuda"])
def test_whole_call_reads_no_values(device):
    """The whole call, checks, launch sizes and backward included, on tensors without data: on the
    meta device, and on fake CUDA tensors where torch has CUDA (a GPU need not be present for the
    forward; torch's autograd engine asks the driver for a device even for fake CUDA tensors, so
    the backward runs where there is one). Reading a value (``.item()``, ``.tolist()``, a tensor
    in an ``if``) would raise."""
    from contextlib import nullcontext

    from torch._subclasses.fake_tensor import FakeTensorMode

    if device == "cuda" and not torch.backends.cuda.is_built():
        pytest.skip("this torch is built without CUDA: no fake CUDA tensors")
    with FakeTensorMode() if device == "cuda" else nullcontext():
        q = torch.empty(
            1,
            8,
            4096,
            128,
            device=device,
            dtype=torch.bfloat16,
            requires_grad=True,
        )
        k, v = (
            torch.empty(1, 2, 4096, 128, device=device, dtype=torch.bfloat16)
            for _ in range(2)
        )
        cu = torch.empty(5, dtype=torch.int32, device=device)
        o = flash_attention(
            q,
            k,
            v,
            causal=True,
            window=(255, 0),
            softcap=30.0,
            cu_seqlens=cu,
            max_seqlen=2048,
        )
        assert o.shape == (1, 8, 4096, 128) and o.device.type == device
        if device == "cuda" and not torch.cuda.is_available():
            return
        o.sum().backward()
        assert q.grad.shape == q.shape


def test_autotune_lists_are_pruned_to_the_shared_memory_of_each_gpu():
    """Each list keeps only what fits (consumer 99 KiB, A100 163 KiB, H100 227 KiB), never nothing;
    the autotuners are keyed on head dims, mask sides, cap and packing (dtypes are added by Triton)."""
    from importlib import import_module

    fa = import_module("kernels.flash_attention.triton")
    for limit in (99 * 1024, 163 * 1024, 227 * 1024):
        for dtype, elsize in ((torch.bfloat16, 2), (torch.float32, 4)):
            for D, DV in (
                (16, 16),
                (64, 64),
                (128, 128),
                (192, 128),
                (256, 256),
            ):
                for backward in (False, True):
                    kept = fa._configs(D, DV, dtype, backward, limit)
                    assert kept, (limit, dtype, D, backward)
                    pad = fa._head_args(D, DV, dtype)
                    sizes = [
                        fa._shared_estimate(
                            c["BLOCK_M"],
                            c["BLOCK_N"],
                            c["num_stages"],
                            pad["BLOCK_D"],
                            pad["BLOCK_DV"],
                            elsize,
                            backward,
                        )
                        for c in kept
                    ]
                    table = fa.BWD_CONFIGS if backward else fa.FWD_CONFIGS
                    assert (
                        all(s <= limit for s in sizes)
                        or len(kept) == 1
                        and kept[0]["BLOCK_M"] == table[-1][0]
                    )
    assert len(fa._configs(64, 64, torch.bfloat16, False, 227 * 1024)) == len(
        fa.FWD_CONFIGS
    )
    assert len(fa._configs(256, 256, torch.float32, False, 99 * 1024)) < len(
        fa.FWD_CONFIGS
    )
    for tuned in (fa._fwd_tuned, fa._bwd_dkdv_tuned, fa._bwd_dq_tuned):
        assert tuned.keys == [
            "D",
            "Dv",
            "HAS_LEFT",
            "HAS_RIGHT",
            "SOFTCAP",
            "VARLEN",
        ]
