"""The op smoke of the GPU run: every public op, forward and backward, against its reference.

`make gpu-run` runs this file first on a GPU (`pytest -m smoke`), before any benchmark, and
marks the ops whose case failed, so that a timing of a wrong kernel is never published. On
CUDA each op runs in bfloat16, float16 and float32 at a few awkward shapes; on a CPU (Triton's
interpreter, which refuses bfloat16) in float32 at one small shape, which is the dry run's
smoke and keeps the suite fast. The finer tolerances live in the op's own test file: here
the check is the relative RMSE against a float64 reference on the same rounded inputs (a wrong
kernel is off by order 1), with no NaN or infinity anywhere.

With `GPU_SMOKE_LOG` set (by the GPU run), the module appends to that file, as JSON lines, the
ids of all its cases when it is collected and each case's outcome when it ends; a case id
starts with its op (`flash_attention-bf16-1x3x1x77x77x64`). The GPU run reads the verdict of
each op from it, even when the smoke is cut short or runs in parallel.
"""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from kernels import (
    flash_attention,
    linear_attention,
    linear_attention_step,
    selective_scan,
    selective_scan_step,
    ssd,
)
from kernels.flash_attention import attention_ref
from kernels.linear_attention import (
    linear_attention_quadratic,
    linear_attention_recurrent,
)
from kernels.speculative import tree_attention, tree_attention_ref
from kernels.selective_scan import selective_scan_ref
from kernels.ssd import ssd_ref

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Relative RMSE allowed: the dtype's rounding accumulated over an op and its backward, with room
# to spare (float32 on CUDA may use TF32 matrix products). A wrong kernel is off by order 1; the
# op's own tests hold it to its real tolerances.
TOLERANCE = {"bf16": 6e-2, "fp16": 2e-2, "fp32": 1e-2 if CUDA else 1e-4}


def rel_rmse(ref, out):
    """sqrt(mean((out - ref)^2)) / sqrt(mean(ref^2)), in float64."""
    ref, out = ref.double(), out.double()
    return (
        (out - ref).pow(2).mean().sqrt()
        / ref.pow(2).mean().sqrt().clamp_min(1e-30)
    ).item()


def check(name, ref, out, dtype_name):
    """Fail unless `out` is finite and within the relative RMSE of `dtype_name` from `ref`."""
    assert out.shape == ref.shape, (
        f"{name}: shape {tuple(out.shape)}, expected {tuple(ref.shape)}"
    )
    assert torch.isfinite(out).all(), f"{name}: NaN or infinity in the output"
    error = rel_rmse(ref, out)
    assert error <= TOLERANCE[dtype_name], (
        f"{name}: relative RMSE {error:.2e} above {TOLERANCE[dtype_name]:.0e}"
    )


def randn(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


def compare(fn, ref_fn, inputs, dtype_name, grads=True, outputs=("out",)):
    """Run `fn` on `inputs` ({name: float32 CPU tensor, or (tensor, keep_float32)}) cast to the
    dtype on the device, and `ref_fn` on the same rounded values in float64; compare the outputs
    and, with `grads`, the gradients of every input under one random upstream gradient."""
    dtype = DTYPES[dtype_name]
    ours, ref = {}, {}
    for name, value in inputs.items():
        tensor, keep = value if isinstance(value, tuple) else (value, False)
        x = tensor.to(DEVICE, torch.float32 if keep else dtype)
        ours[name] = x.clone().requires_grad_(grads and x.is_floating_point())
        ref[name] = (
            x.detach().double().requires_grad_(grads and x.is_floating_point())
        )
    got, want = fn(**ours), ref_fn(**ref)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for name, a, b in zip(outputs, got, want):
        check(name, b, a, dtype_name)
    if grads:
        g = torch.Generator().manual_seed(1)
        upstream = randn(g, *want[0].shape).to(DEVICE)
        got[0].backward(upstream.to(got[0].dtype))
        want[0].backward(upstream.double())
        for name in ours:
            if ours[name].grad is not None or ref[name].grad is not None:
                assert ours[name].grad is not None, (
                    f"no gradient reached {name}"
                )
                check(f"d{name}", ref[name].grad, ours[name].grad, dtype_name)


def case_flash_attention(shape, dtype_name):
    B, H, Hkv, Tq, Tk, D = shape
    g = torch.Generator().manual_seed(0)
    inputs = {
        "q": randn(g, B, H, Tq, D),
        "k": randn(g, B, Hkv, Tk, D),
        "v": randn(g, B, Hkv, Tk, D),
    }
    compare(
        lambda **x: flash_attention(**x, causal=True),
        lambda **x: attention_ref(**x, causal=True),
        inputs,
        dtype_name,
    )


def case_linear_attention(shape, dtype_name):
    B, H, T, K, V = shape
    g = torch.Generator().manual_seed(0)
    decay = (-torch.rand(H, generator=g) * 0.2).to(DEVICE)
    inputs = {
        "q": randn(g, B, H, T, K),
        "k": randn(g, B, H, T, K),
        "v": randn(g, B, H, T, V),
    }
    compare(
        lambda **x: linear_attention(**x, decay=decay, return_final_state=True),
        lambda **x: linear_attention_quadratic(**x, decay=decay.double()),
        inputs,
        dtype_name,
        outputs=("o", "final state"),
    )


def case_linear_attention_step(shape, dtype_name):
    B, H, _, K, V = shape
    g = torch.Generator().manual_seed(0)
    decay = (-torch.rand(H, generator=g) * 0.2).to(DEVICE)
    inputs = {
        "q": randn(g, B, H, K),
        "k": randn(g, B, H, K),
        "v": randn(g, B, H, V),
        "state": (randn(g, B, H, K, V), True),
    }

    def reference(q, k, v, state):
        o, S = linear_attention_recurrent(
            q[:, :, None],
            k[:, :, None],
            v[:, :, None],
            decay=decay.double(),
            initial_state=state,
        )
        return o[:, :, 0], S

    compare(
        lambda **x: linear_attention_step(**x, decay=decay),
        reference,
        inputs,
        dtype_name,
        grads=False,
        outputs=("o", "state"),
    )


def scan_inputs(shape, token=False):
    b, d, n, L = shape
    g = torch.Generator().manual_seed(0)
    seq = () if token else (L,)
    return {
        "u": randn(g, b, d, *seq),
        "delta": randn(g, b, d, *seq, scale=0.5),
        "A": (-torch.rand(d, n, generator=g) - 0.5, True),
        "B": randn(g, b, n, *seq),
        "C": randn(g, b, n, *seq),
        "D": (randn(g, d), True),
        "z": randn(g, b, d, *seq),
        "delta_bias": (randn(g, d, scale=0.1), True),
    }


def case_selective_scan(shape, dtype_name):
    compare(
        lambda **x: selective_scan(
            **x, delta_softplus=True, return_last_state=True
        ),
        lambda **x: selective_scan_ref(
            **x, delta_softplus=True, return_last_state=True
        ),
        scan_inputs(shape),
        dtype_name,
        outputs=("out", "last state"),
    )


def case_selective_scan_step(shape, dtype_name):
    b, d, n, _ = shape
    inputs = scan_inputs(shape, token=True)
    inputs["state"] = (
        torch.randn(b, d, n, generator=torch.Generator().manual_seed(2)),
        True,
    )

    def reference(state, u, delta, A, B, C, D, z, delta_bias):
        step = F.softplus(delta + delta_bias)[..., None]  # [b, d, 1]
        x = (
            torch.exp(step * A) * state + step * B[:, None, :] * u[..., None]
        )  # [b, d, n]
        y = (x * C[:, None, :]).sum(-1) + D * u
        return y * F.silu(z), x

    compare(
        lambda **x: selective_scan_step(**x, delta_softplus=True),
        reference,
        inputs,
        dtype_name,
        grads=False,
        outputs=("out", "state"),
    )


def case_ssd(shape, dtype_name):
    b, L, h, p, g_, n = shape
    g = torch.Generator().manual_seed(0)
    inputs = {
        "x": randn(g, b, L, h, p),
        "dt": randn(g, b, L, h, scale=0.5),
        "A": (-torch.rand(h, generator=g) - 0.5, True),
        "B": randn(g, b, L, g_, n),
        "C": randn(g, b, L, g_, n),
        "D": (randn(g, h), True),
        "z": randn(g, b, L, h, p),
        "dt_bias": (randn(g, h, scale=0.1), True),
    }
    compare(
        lambda **x: ssd(**x, dt_softplus=True, return_final_states=True),
        lambda **x: ssd_ref(**x, dt_softplus=True, return_final_states=True),
        inputs,
        dtype_name,
        outputs=("y", "final state"),
    )


def case_tree_attention(shape, dtype_name):
    B, H, Hkv, Tq, Tk, D = shape
    g = torch.Generator().manual_seed(0)
    parent = [-1] + [
        int(torch.randint(0, i, (1,), generator=g)) for i in range(1, Tq)
    ]
    mask = torch.zeros(Tq, Tq, dtype=torch.bool)
    for i in range(Tq):  # each node sees itself and its ancestors
        j = i
        while j >= 0:
            mask[i, j], j = True, parent[j]
    mask = mask.to(DEVICE)
    inputs = {
        "q": randn(g, B, H, Tq, D),
        "k": randn(g, B, Hkv, Tk, D),
        "v": randn(g, B, Hkv, Tk, D),
    }
    with torch.no_grad():
        compare(
            lambda **x: tree_attention(**x, tree_mask=mask),
            lambda **x: tree_attention_ref(**x, tree_mask=mask),
            inputs,
            dtype_name,
            grads=False,
        )


# op: (its case, shapes on CUDA, the shape on a CPU). Shapes are awkward on purpose: lengths
# off the tile sizes, length 1, batch 1, grouped heads.
OPS = {
    "flash_attention": (
        case_flash_attention,
        [
            (1, 3, 1, 77, 77, 64),
            (2, 4, 2, 1, 200, 128),
            (1, 2, 2, 300, 129, 40),
        ],
        (1, 3, 1, 37, 37, 16),
    ),
    "linear_attention": (
        case_linear_attention,
        [(1, 3, 77, 64, 64), (2, 2, 1, 32, 16), (1, 2, 300, 128, 64)],
        (1, 2, 37, 16, 16),
    ),
    "linear_attention_step": (
        case_linear_attention_step,
        [(2, 3, 1, 64, 32)],
        (1, 2, 1, 16, 8),
    ),
    "selective_scan": (
        case_selective_scan,
        [(1, 5, 16, 77), (2, 3, 4, 1), (1, 8, 16, 300)],
        (1, 3, 4, 37),
    ),
    "selective_scan_step": (
        case_selective_scan_step,
        [(2, 5, 16, 1)],
        (1, 3, 4, 1),
    ),
    "ssd": (
        case_ssd,
        [(1, 77, 4, 16, 2, 32), (2, 1, 2, 8, 1, 16), (1, 300, 3, 32, 1, 64)],
        (1, 37, 2, 8, 1, 8),
    ),
    "tree_attention": (
        case_tree_attention,
        [(1, 4, 2, 9, 150, 64), (2, 3, 3, 1, 33, 128)],
        (1, 2, 1, 5, 20, 16),
    ),
}
CASES = [
    (op, dtype, shape)
    for op, (_, shapes, cpu_shape) in OPS.items()
    for dtype in (DTYPES if CUDA else ["fp32"])
    for shape in (shapes if CUDA else [cpu_shape])
]


IDS = [
    f"{op}-{dtype}-" + "x".join(map(str, shape)) for op, dtype, shape in CASES
]
LOG = os.environ.get("GPU_SMOKE_LOG")


def log(record: dict) -> None:
    """Append `record` as one JSON line to the GPU run's smoke log, when there is one."""
    if LOG:
        with open(LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


log({"expected": IDS})


@pytest.mark.smoke
@pytest.mark.parametrize("op,dtype,shape", CASES, ids=IDS)
def test_smoke(op, dtype, shape):
    case = IDS[CASES.index((op, dtype, shape))]
    try:
        OPS[op][0](shape, dtype)
    except BaseException:
        log({"case": case, "outcome": "failed"})
        raise
    log({"case": case, "outcome": "passed"})


def test_every_public_op_is_smoked():
    import kernels

    # verify_draft and speculative_generate are pure PyTorch; uses_triton is no op
    public = set(kernels.__all__) - {
        "verify_draft",
        "speculative_generate",
        "uses_triton",
    }
    assert public | {"tree_attention"} == set(OPS)
