"""A small model that calls every op of the package (flash_attention, linear_attention,
selective_scan, ssd) under torch.compile(fullgraph=True): one graph, each op an opaque node,
and the same outputs and parameter gradients as the eager call.

Without a GPU the ops run the Triton kernels in the interpreter (tests/conftest.py). The
compile uses inductor on the CPU too: it generates C++ for the PyTorch around the ops, and the
ops stay calls to their kernels.
"""

import torch
import torch.nn.functional as F

from _compare import assert_close
from kernels import (
    flash_attention,
    linear_attention,
    selective_scan,
    ssd,
    uses_triton,
)
from kernels.linear_attention import elu_plus_one

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


class AllOps(torch.nn.Module):
    """``[B, T, C]`` in and out: softmax attention and linear attention on shared projections,
    a selective scan over the channels and an SSD layer, summed."""

    def __init__(self, dim=32, heads=2, state=8):
        super().__init__()
        self.heads, self.state = heads, state
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.decay = torch.nn.Linear(dim, heads)
        self.scan_in = torch.nn.Linear(dim, 2 * dim + 2 * state)
        self.scan_A = torch.nn.Parameter(-torch.rand(dim, state) - 0.1)
        self.scan_D = torch.nn.Parameter(torch.ones(dim))
        self.ssd_in = torch.nn.Linear(dim, dim + heads + 2 * state)
        self.ssd_A = torch.nn.Parameter(-torch.rand(heads) - 0.1)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        H, n = self.heads, self.state
        q, k, v = (
            self.qkv(x)
            .view(B, T, 3, H, C // H)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )  # [B, H, T, d]
        soft = flash_attention(q, k, v, causal=True)
        log_decay = F.logsigmoid(self.decay(x)).transpose(1, 2)  # [B, H, T]
        lin = linear_attention(
            elu_plus_one(q), elu_plus_one(k), v, decay=log_decay
        )
        u, delta, Bs, Cs = (
            self.scan_in(x).transpose(1, 2).split([C, C, n, n], dim=1)
        )  # [B, ., T]
        scan = selective_scan(
            u, delta, self.scan_A, Bs, Cs, D=self.scan_D, delta_softplus=True
        )  # [B, C, T]
        xs, dt, Bm, Cm = self.ssd_in(x).split([C, H, n, n], dim=-1)
        y = ssd(
            xs.view(B, T, H, C // H),
            dt,
            self.ssd_A,
            Bm[:, :, None],
            Cm[:, :, None],
            dt_softplus=True,
        )
        mixed = (
            (soft + lin).transpose(1, 2).reshape(B, T, C)
            + scan.transpose(1, 2)
            + y.reshape(B, T, C)
        )
        return self.out(mixed)


def _run(model, fn, x):
    out = fn(x)
    out.square().mean().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    return out.detach(), grads


def test_model_with_every_op_compiles_fullgraph_and_matches_eager():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch.manual_seed(0)
    model = AllOps().to(DEVICE)
    x = torch.randn(2, 37, 32, device=DEVICE)
    assert uses_triton(x), "the test would compile the references, not the ops"
    eager, eager_grads = _run(model, model, x)
    counter = CompileCounterWithBackend("inductor")
    compiled, compiled_grads = _run(
        model, torch.compile(model, fullgraph=True, backend=counter), x
    )
    assert counter.frame_count == 1
    targets = {
        str(node.target)
        for graph in counter.graphs
        for node in graph.graph.nodes
    }
    for op in (
        "kernels.flash_attention_fwd",
        "kernels.linear_attention_fwd",
        "kernels.selective_scan",
        "kernels.ssd",
    ):
        assert any(t.startswith(op) for t in targets), (
            op,
            sorted(t for t in targets if "kernels" in t),
        )
    assert_close("out", eager, compiled, 1e-5, 1e-5)
    assert eager_grads.keys() == compiled_grads.keys()
    for name, ref in eager_grads.items():
        assert ref.abs().sum() > 0, name  # every parameter is reached
        assert_close(name, ref, compiled_grads[name], 1e-5, 1e-4)
