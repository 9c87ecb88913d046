"""selective_scan: the Triton scan against the float64 sequential reference, the decoding
step, bad input (SSD's tests are in test_ssd.py).

The first test is the parameter grid of ``tests/ops/test_selective_scan.py`` in state-spaces/mamba
(time-invariant or input-dependent B and C, groups, D, z, delta_bias, softplus), with its
tolerances, at a CPU length; with a GPU it also runs mamba's lengths and bfloat16. Without a GPU
the kernels run in Triton's interpreter (tests/conftest.py) with chunks of 16 tokens.
"""
import itertools

import pytest
import torch

from _compare import assert_close
from kernels import selective_scan, selective_scan_step, uses_triton
from kernels.selective_scan import selective_scan_ref

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
ITYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
GRID_LENGTHS = [128, 256, 1024, 4096] if CUDA else [31]

# mamba's grid: (is_variable_B, is_variable_C, varBC_groups); groups > 1 need both input-dependent
BC_FORMS = [(vb, vc, g) for vb, vc, g in itertools.product([False, True], [False, True], [1, 2]) if g == 1 or (vb and vc)]
FLAGS = list(itertools.product([False, True], repeat=4))  # has_D, has_z, has_delta_bias, delta_softplus


def tolerances(itype):
    """mamba's tolerances: (rtol, atol) for activations, (rtolw, atolw) for weights."""
    rtol, atol = (6e-4, 2e-3) if itype == torch.float32 else (3e-3, 5e-3)
    if itype == torch.bfloat16:
        rtol, atol = 3e-2, 5e-2
    return rtol, atol


def make_inputs(b, d, n, L, itype, var_B, var_C, groups, has_D, has_z, has_bias, seed=0):
    """mamba's test inputs: A in (-0.5, 0], delta in [0, 0.5), weights float32, activations in itype."""
    g = torch.Generator().manual_seed(seed)
    to = lambda x, dt=itype: None if x is None else x.to(DEVICE, dt)  # noqa: E731

    def BC(variable):
        if not variable:
            return to(torch.randn(d, n, generator=g), torch.float32)
        shape = (b, n, L) if groups == 1 else (b, groups, n, L)
        return to(torch.randn(*shape, generator=g))

    A = to(-0.5 * torch.rand(d, n, generator=g), torch.float32)
    B, C = BC(var_B), BC(var_C)
    D = to(torch.randn(d, generator=g), torch.float32) if has_D else None
    z = to(torch.randn(b, d, L, generator=g)) if has_z else None
    bias = to(0.5 * torch.rand(d, generator=g), torch.float32) if has_bias else None
    u = to(torch.randn(b, d, L, generator=g))
    delta = to(0.5 * torch.rand(b, d, L, generator=g))
    return [u, delta, A, B, C, D, z, bias]


NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def run_and_compare(inputs, softplus, itype, var_B, var_C):
    assert uses_triton(inputs[0]), "the test would compare the reference with itself"
    xs = [None if x is None else x.clone().requires_grad_() for x in inputs]
    refs = [None if x is None else x.detach().double().requires_grad_() for x in inputs]
    out, last = selective_scan(*xs, delta_softplus=softplus, return_last_state=True)
    out_ref, last_ref = selective_scan_ref(*refs, delta_softplus=softplus, return_last_state=True)
    assert out.dtype == itype and out.shape == inputs[0].shape and last.dtype == torch.float32
    rtol, atol = tolerances(itype)
    assert_close("out", out_ref, out, atol, rtol)
    assert_close("last_state", last_ref, last, atol, rtol)
    g = torch.Generator().manual_seed(1)
    dout = torch.randn(out.shape, generator=g).to(DEVICE, itype)
    dlast = torch.randn(last.shape, generator=g).to(DEVICE)
    ((out.double() * dout.double()).sum() + (last.double() * dlast.double()).sum()).backward()
    ((out_ref * dout.double()).sum() + (last_ref * dlast.double()).sum()).backward()
    # mamba's gradient tolerances: weights get (rtolw, atolw), raised to the activations' with z
    rtolw, atolw = 1e-3, 1e-3
    if inputs[6] is not None:
        rtolw, atolw = max(rtolw, rtol), max(atolw, atol)
    scale = {"u": (2 * rtol, 2 * atol), "delta": (5 * rtol, 10 * atol), "A": (rtolw, 5 * atolw),
             "B": (rtol, atol) if var_B else (rtolw, atolw), "C": (rtol, atol) if var_C else (rtolw, atolw),
             "D": (rtolw, atolw), "z": (rtolw, atolw), "delta_bias": (rtolw, atolw)}
    for name, x, r in zip(NAMES, xs, refs):
        if x is not None:
            assert x.grad is not None and x.grad.dtype == x.dtype, name
            assert_close(f"d{name}", r.grad, x.grad, scale[name][1], scale[name][0])


@pytest.mark.parametrize("L", GRID_LENGTHS, ids=lambda L: f"L{L}")
@pytest.mark.parametrize("itype", ITYPES, ids=lambda t: str(t).replace("torch.", ""))
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "D{}-z{}-bias{}-softplus{}".format(*map(int, f)))
@pytest.mark.parametrize("form", BC_FORMS, ids=lambda f: "varB{}-varC{}-g{}".format(*map(int, f)))
def test_mamba_grid(form, flags, itype, L):
    var_B, var_C, groups = form
    has_D, has_z, has_bias, softplus = flags
    inputs = make_inputs(2, 4, 8, L, itype, var_B, var_C, groups, has_D, has_z, has_bias)
    run_and_compare(inputs, softplus, itype, var_B, var_C)


# awkward shapes: length 1, one chunk and a bit, several chunks; d not a multiple of the block,
# n not a power of two, batch 1, three groups
SHAPES = [(1, 4, 8, 1, 1), (2, 4, 8, 129, 2), (1, 6, 5, 17, 1), (1, 6, 16, 40, 3), (3, 1, 1, 20, 1)]
if CUDA:
    SHAPES += [(2, 64, 16, 1000, 1), (1, 96, 64, 4097, 4), (2, 8, 256, 300, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}-d{}-n{}-L{}-g{}".format(*s))
def test_awkward_shapes(shape):
    b, d, n, L, groups = shape
    inputs = make_inputs(b, d, n, L, torch.float32, True, True, groups, True, True, True, seed=sum(shape))
    run_and_compare(inputs, True, torch.float32, True, True)


def test_large_delta_and_strong_decay():
    """Δ |A| of order 10 per token: the states decay to nothing within a chunk, without overflow."""
    u, delta, A, B, C, D, z, bias = make_inputs(1, 4, 8, 40, torch.float32, True, True, 1, False, False, False)
    inputs = [u, delta * 40, A * 40, B, C, None, None, None]
    run_and_compare(inputs, False, torch.float32, True, True)


def test_noncontiguous_inputs():
    u, delta, A, B, C, D, z, bias = make_inputs(2, 4, 8, 20, torch.float32, True, True, 1, True, True, True)
    views = [x.transpose(-1, -2).contiguous().transpose(-1, -2) for x in (u, delta, B, C, z)]
    assert not views[0].is_contiguous()
    out = selective_scan(views[0], views[1], A, views[2], views[3], D, views[4], bias, True)
    assert_close("out", selective_scan(u, delta, A, B, C, D, z, bias, True), out, 1e-6, 1e-6)


def test_step_continues_the_scan():
    """Scanning a prompt, then stepping token by token, equals scanning the whole sequence."""
    b, d, n, L, T = 2, 6, 8, 20, 13
    u, delta, A, B, C, D, z, bias = make_inputs(b, d, n, L, torch.float32, True, True, 2, True, True, True)
    full = selective_scan_ref(u, delta, A, B, C, D, z, bias, True)
    out, state = selective_scan(u[..., :T], delta[..., :T], A, B[..., :T], C[..., :T], D, z[..., :T], bias, True,
                                return_last_state=True)
    steps = []
    for t in range(T, L):
        y, state = selective_scan_step(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D, z[..., t],
                                       bias, True)
        steps.append(y)
    assert_close("prompt", full[..., :T], out, 1e-5, 1e-5)
    assert_close("steps", full[..., T:], torch.stack(steps, -1), 1e-5, 1e-5)


def test_bfloat16_on_cpu_runs_the_reference():
    inputs = make_inputs(1, 4, 8, 5, torch.bfloat16, True, True, 1, False, False, False)
    out = selective_scan(*inputs)
    assert out.dtype == torch.bfloat16
    assert_close("out", selective_scan_ref(*[x if x is None else x.double() for x in inputs]), out, 5e-2, 3e-2)


def good_inputs():
    return make_inputs(2, 4, 8, 6, torch.float32, True, True, 2, True, True, True)


BAD = [
    ("u", lambda a: a.update(u=[1.0]), TypeError, "u must be a torch.Tensor"),
    ("u", lambda a: a.update(u=a["u"][0]), ValueError, "u must have 3 dimensions [b, d, L]"),
    ("u", lambda a: a.update(u=a["u"].long()), TypeError, "u must be float16, bfloat16 or float32"),
    ("delta", lambda a: a.update(delta=a["delta"][..., :3]), ValueError, "delta must have shape [b, d, L]"),
    ("delta", lambda a: a.update(delta=a["delta"].half()), TypeError, "must have the same dtype"),
    ("A", lambda a: a.update(A=a["A"][:3]), ValueError, "A must have shape [d, n]"),
    ("A", lambda a: a.update(A=a["A"].to(torch.complex64)), TypeError, "complex"),
    ("A", lambda a: a.update(A=a["A"].double()), TypeError, "A must be float32"),
    ("A", lambda a: a.update(A=torch.zeros(4, 300)), ValueError, "state size n between 1 and 256"),
    ("B", lambda a: a.update(B=a["B"][:, :1, :, :5]), ValueError, "B must have shape [b, g, n, L]"),
    ("B", lambda a: a.update(B=torch.zeros(2, 3, 8, 6)), ValueError, "g = 3 groups, which must divide"),
    ("B", lambda a: a.update(B=torch.zeros(2, 8)), ValueError, "B must have shape [d, n]"),
    ("B", lambda a: a.update(B=torch.zeros(8)), ValueError, "B must have shape [d, n] or [b, n, L] or [b, g, n, L]"),
    ("C", lambda a: a.update(C=a["C"].half()), TypeError, "C [b, g, n, L] is input-dependent and must have the dtype of u"),
    ("C", lambda a: a.update(C=torch.zeros(4, 8, dtype=torch.float16)), TypeError, "C must be float32"),
    ("D", lambda a: a.update(D=torch.zeros(5)), ValueError, "D must have shape [d]"),
    ("z", lambda a: a.update(z=a["z"][:1]), ValueError, "z must have shape [b, d, L]"),
    ("delta_bias", lambda a: a.update(delta_bias=torch.zeros(4, dtype=torch.float16)), TypeError, "delta_bias must be float32"),
    ("delta_softplus", lambda a: a.update(delta_softplus=1), TypeError, "delta_softplus must be True or False"),
    ("return_last_state", lambda a: a.update(return_last_state="yes"), TypeError, "return_last_state must be True or False"),
    ("u", lambda a: a.update(u=a["u"][..., :0], delta=a["delta"][..., :0]), ValueError, "at least one"),
]


@pytest.mark.parametrize("arg, change, error, message", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input(arg, change, error, message):
    args = dict(zip(NAMES, good_inputs()))
    change(args)
    with pytest.raises(error) as info:
        selective_scan(**args)
    assert message in str(info.value), str(info.value)


def test_bad_input_on_other_device():
    if not CUDA:
        args = dict(zip(NAMES, good_inputs()))
        args["D"] = args["D"].to("meta")
        with pytest.raises(ValueError, match="same device"):
            selective_scan(**args)


def test_bad_step_input():
    u, delta, A, B, C, *_ = make_inputs(1, 4, 8, 3, torch.float32, True, True, 1, False, False, False)
    with pytest.raises(ValueError, match=r"state must have shape \[b, d, n\]"):
        selective_scan_step(torch.zeros(1, 4, 7), u[..., 0], delta[..., 0], A, B[..., 0], C[..., 0])
    with pytest.raises(ValueError, match=r"B must have shape \[b, n\] or \[b, g, n\]"):
        selective_scan_step(torch.zeros(1, 4, 8), u[..., 0], delta[..., 0], A, B[..., None], C[..., 0])
