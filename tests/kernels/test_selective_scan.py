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
from kernels.selective_scan import selective_scan_ref, selective_scan_step_ref

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
ITYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
GRID_LENGTHS = [128, 256, 1024, 4096] if CUDA else [31]

# mamba's grid: (is_variable_B, is_variable_C, varBC_groups); groups > 1 need both input-dependent
BC_FORMS = [
    (vb, vc, g)
    for vb, vc, g in itertools.product([False, True], [False, True], [1, 2])
    if g == 1 or (vb and vc)
]
FLAGS = list(
    itertools.product([False, True], repeat=4)
)  # has_D, has_z, has_delta_bias, delta_softplus


def tolerances(itype):
    """mamba's tolerances: (rtol, atol) for activations, (rtolw, atolw) for weights."""
    rtol, atol = (6e-4, 2e-3) if itype == torch.float32 else (3e-3, 5e-3)
    if itype == torch.bfloat16:
        rtol, atol = 3e-2, 5e-2
    return rtol, atol


def make_inputs(
    b, d, n, L, itype, var_B, var_C, groups, has_D, has_z, has_bias, seed=0
):
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
    bias = (
        to(0.5 * torch.rand(d, generator=g), torch.float32)
        if has_bias
        else None
    )
    u = to(torch.randn(b, d, L, generator=g))
    delta = to(0.5 * torch.rand(b, d, L, generator=g))
    return [u, delta, A, B, C, D, z, bias]


NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def run_and_compare(inputs, softplus, itype, var_B, var_C):
    assert uses_triton(inputs[0]), (
        "the test would compare the reference with itself"
    )
    xs = [None if x is None else x.clone().requires_grad_() for x in inputs]
    refs = [
        None if x is None else x.detach().double().requires_grad_()
        for x in inputs
    ]
    out, last = selective_scan(
        *xs, delta_softplus=softplus, return_last_state=True
    )
    out_ref, last_ref = selective_scan_ref(
        *refs, delta_softplus=softplus, return_last_state=True
    )
    assert (
        out.dtype == itype
        and out.shape == inputs[0].shape
        and last.dtype == torch.float32
    )
    rtol, atol = tolerances(itype)
    assert_close("out", out_ref, out, atol, rtol)
    assert_close("last_state", last_ref, last, atol, rtol)
    g = torch.Generator().manual_seed(1)
    dout = torch.randn(out.shape, generator=g).to(DEVICE, itype)
    dlast = torch.randn(last.shape, generator=g).to(DEVICE)
    (
        (out.double() * dout.double()).sum()
        + (last.double() * dlast.double()).sum()
    ).backward()
    (
        (out_ref * dout.double()).sum() + (last_ref * dlast.double()).sum()
    ).backward()
    # mamba's gradient tolerances: weights get (rtolw, atolw), raised to the activations' with z
    rtolw, atolw = 1e-3, 1e-3
    if inputs[6] is not None:
        rtolw, atolw = max(rtolw, rtol), max(atolw, atol)
    scale = {
        "u": (2 * rtol, 2 * atol),
        "delta": (5 * rtol, 10 * atol),
        "A": (rtolw, 5 * atolw),
        "B": (rtol, atol) if var_B else (rtolw, atolw),
        "C": (rtol, atol) if var_C else (rtolw, atolw),
        "D": (rtolw, atolw),
        "z": (rtolw, atolw),
        "delta_bias": (rtolw, atolw),
    }
    for name, x, r in zip(NAMES, xs, refs):
        if x is not None:
            assert x.grad is not None and x.grad.dtype == x.dtype, name
            assert_close(
                f"d{name}", r.grad, x.grad, scale[name][1], scale[name][0]
            )


@pytest.mark.parametrize("L", GRID_LENGTHS, ids=lambda L: f"L{L}")
@pytest.mark.parametrize(
    "itype", ITYPES, ids=lambda t: str(t).replace("torch.", "")
)
@pytest.mark.parametrize(
    "flags",
    FLAGS,
    ids=lambda f: "D{}-z{}-bias{}-softplus{}".format(*map(int, f)),
)
@pytest.mark.parametrize(
    "form", BC_FORMS, ids=lambda f: "varB{}-varC{}-g{}".format(*map(int, f))
)
def test_mamba_grid(form, flags, itype, L):
    var_B, var_C, groups = form
    has_D, has_z, has_bias, softplus = flags
    inputs = make_inputs(
        2, 4, 8, L, itype, var_B, var_C, groups, has_D, has_z, has_bias
    )
    run_and_compare(inputs, softplus, itype, var_B, var_C)


# awkward shapes: length 1, one chunk and a bit, several chunks; d not a multiple of the block,
# n not a power of two, batch 1, three groups
SHAPES = [
    (1, 4, 8, 1, 1),
    (2, 4, 8, 129, 2),
    (1, 6, 5, 17, 1),
    (1, 6, 16, 40, 3),
    (3, 1, 1, 20, 1),
]
if CUDA:
    SHAPES += [(2, 64, 16, 1000, 1), (1, 96, 64, 4097, 4), (2, 8, 256, 300, 2)]


@pytest.mark.parametrize(
    "shape", SHAPES, ids=lambda s: "b{}-d{}-n{}-L{}-g{}".format(*s)
)
def test_awkward_shapes(shape):
    b, d, n, L, groups = shape
    inputs = make_inputs(
        b,
        d,
        n,
        L,
        torch.float32,
        True,
        True,
        groups,
        True,
        True,
        True,
        seed=sum(shape),
    )
    run_and_compare(inputs, True, torch.float32, True, True)


# mamba_ssm's mixes beside a half-precision u: float32 delta, B and C (and z); bfloat16 runs the
# reference on the CPU (the interpreter's bfloat16 support), the kernel on a GPU
MIX_TYPES = [torch.float16] + ([torch.bfloat16] if CUDA else [])
MIXES = [("delta",), ("B", "C"), ("delta", "B", "C", "z")]


@pytest.mark.parametrize(
    "itype", MIX_TYPES, ids=lambda t: str(t).replace("torch.", "")
)
@pytest.mark.parametrize("mix", MIXES, ids="+".join)
def test_dtype_mixes(mix, itype):
    b, d, n, L, groups = 1, 6, 5, 19, 3
    inputs = make_inputs(
        b, d, n, L, itype, True, True, groups, True, True, True, seed=7
    )
    named = dict(zip(NAMES, inputs))
    for name in mix:
        named[name] = named[name].float()
    run_and_compare([named[name] for name in NAMES], True, itype, True, True)


@pytest.mark.parametrize(
    "itype, state_type, wtype",
    [
        (torch.float16, torch.float32, torch.float32),
        (torch.float16, torch.float16, torch.float32),
        (torch.float32, torch.float32, torch.float32),
        (torch.bfloat16, torch.bfloat16, torch.float32),
    ],
    ids=lambda t: str(t).replace("torch.", ""),
)
def test_step_dtype_mixes(itype, state_type, wtype):
    """The step against its float64 reference: float32 delta, B, C beside half-precision u and
    state, as in mamba_ssm's test of selective_state_update (and its tolerances)."""
    b, d, n, groups = 2, 37, 5, 1
    inp = step_inputs(b, d, n, groups, itype, wtype, seed=5)
    state = torch.randn(b, d, n, generator=torch.Generator().manual_seed(6)).to(
        DEVICE, state_type
    )
    state_ref = state.double()
    out = selective_scan_step(state, **inp)
    out_ref = selective_scan_step_ref(
        state_ref,
        **{
            k: v.double() if isinstance(v, torch.Tensor) else v
            for k, v in inp.items()
        },
    )
    assert out.dtype == itype and state.dtype == state_type
    rtol, atol = {
        torch.float32: (3e-4, 1e-3),
        torch.float16: (5e-3, 1e-2),
        torch.bfloat16: (1e-2, 5e-2),
    }[itype]
    if (
        state_type != torch.float32
    ):  # the state itself is rounded to half precision
        rtol, atol = (
            max(rtol, 1e-2 if state_type == torch.bfloat16 else 5e-3),
            max(atol, 1e-2),
        )
    assert_close("out", out_ref, out, atol, rtol)
    assert_close("state", state_ref, state, atol, rtol)


def test_large_delta_and_strong_decay():
    """Δ |A| of order 10 per token: the states decay to nothing within a chunk, without overflow."""
    u, delta, A, B, C, D, z, bias = make_inputs(
        1, 4, 8, 40, torch.float32, True, True, 1, False, False, False
    )
    inputs = [u, delta * 40, A * 40, B, C, None, None, None]
    run_and_compare(inputs, False, torch.float32, True, True)


def test_noncontiguous_inputs():
    u, delta, A, B, C, D, z, bias = make_inputs(
        2, 4, 8, 20, torch.float32, True, True, 1, True, True, True
    )
    views = [
        x.transpose(-1, -2).contiguous().transpose(-1, -2)
        for x in (u, delta, B, C, z)
    ]
    assert not views[0].is_contiguous()
    out = selective_scan(
        views[0], views[1], A, views[2], views[3], D, views[4], bias, True
    )
    assert_close(
        "out",
        selective_scan(u, delta, A, B, C, D, z, bias, True),
        out,
        1e-6,
        1e-6,
    )


# (b, d, n, L, prompt, groups): d not a multiple of the step's block (32 channels in the
# interpreter), blocks straddling groups, n = 5, batch 1, a one-token prompt
STEP_SHAPES = [
    (2, 6, 8, 12, 7, 2),
    (1, 37, 5, 6, 3, 1),
    (1, 40, 5, 4, 1, 4),
    (3, 1, 1, 3, 2, 1),
]


@pytest.mark.parametrize(
    "shape", STEP_SHAPES, ids=lambda s: "b{}-d{}-n{}-L{}-T{}-g{}".format(*s)
)
def test_step_continues_the_scan(shape):
    """Scanning a prompt, then stepping token by token, equals scanning the whole sequence."""
    b, d, n, L, T, groups = shape
    u, delta, A, B, C, D, z, bias = make_inputs(
        b,
        d,
        n,
        L,
        torch.float32,
        True,
        True,
        groups,
        True,
        True,
        True,
        seed=sum(shape),
    )
    full, last_full = selective_scan_ref(
        u.double(), delta, A, B, C, D, z, bias, True, return_last_state=True
    )
    out, state = selective_scan(
        u[..., :T],
        delta[..., :T],
        A,
        B[..., :T],
        C[..., :T],
        D,
        z[..., :T],
        bias,
        True,
        return_last_state=True,
    )
    assert uses_triton(u)
    steps = [
        selective_scan_step(
            state,
            u[..., t],
            delta[..., t],
            A,
            B[..., t],
            C[..., t],
            D,
            z[..., t],
            bias,
            True,
        )
        for t in range(T, L)
    ]
    assert all(
        y.shape == (b, d) and y.dtype == torch.float32 and not y.requires_grad
        for y in steps
    )
    assert_close("prompt", full[..., :T], out, 1e-5, 1e-5)
    assert_close("steps", full[..., T:], torch.stack(steps, -1), 1e-5, 1e-5)
    assert_close("state", last_full, state, 1e-5, 1e-5)


def step_inputs(b, d, n, groups, itype, wtype=None, seed=0):
    """One token's inputs: activations in ``itype``; ``delta``, ``B``, ``C`` in ``wtype`` (default ``itype``)."""
    wtype = wtype or itype
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    shape_BC = (b, n) if groups == 1 else (b, groups, n)
    return dict(
        u=r(b, d).to(DEVICE, itype),
        delta=(0.5 * torch.rand(b, d, generator=g)).to(DEVICE, wtype),
        A=(-0.5 * torch.rand(d, n, generator=g)).to(DEVICE),
        B=r(*shape_BC).to(DEVICE, wtype),
        C=r(*shape_BC).to(DEVICE, wtype),
        D=r(d).to(DEVICE),
        z=r(b, d).to(DEVICE, itype),
        delta_bias=(0.5 * torch.rand(d, generator=g)).to(DEVICE),
        delta_softplus=True,
    )


def test_step_updates_a_strided_state_in_place():
    """A state that is a slice of a larger cache, inputs that are views of ``[b, d, L]`` tensors,
    and a time-invariant B passed as ``B.expand(b, d, n)``: the kernel takes strides and writes
    the cache itself."""
    b, d, n = 3, 10, 6
    inp = step_inputs(b, d, n, 2, torch.float32, seed=3)
    cache = torch.randn(5, n, d, device=DEVICE).transpose(
        1, 2
    )  # [5, d, n], strides (n d, 1, d)
    state = cache[1 : 1 + b]
    state_ref, untouched = state.clone(), (cache[0].clone(), cache[4].clone())
    u = torch.randn(b, d, 7, device=DEVICE)[..., 2]  # stride 7 along d
    B_ti = torch.randn(d, n, device=DEVICE)
    args = {**inp, "u": u, "B": B_ti.expand(b, d, n)}
    out = selective_scan_step(state, **args)
    out_ref = selective_scan_step_ref(
        state_ref, **{**args, "B": B_ti.expand(b, d, n).contiguous()}
    )
    assert state.data_ptr() == cache[1].data_ptr()
    assert_close("out", out_ref, out, 1e-6, 1e-5)
    assert_close("state", state_ref, cache[1 : 1 + b], 1e-6, 1e-5)
    assert torch.equal(untouched[0], cache[0]) and torch.equal(
        untouched[1], cache[4]
    ), "rows outside the slice"


@pytest.mark.parametrize(
    "form", [(True, True, 2), (False, True, 1)], ids=["varBC-g2", "fixedB-varC"]
)
def test_opcheck(form):
    """The registered operator: schema, fake (meta) shapes, autograd registration and its traces."""
    var_B, var_C, groups = form
    inputs = make_inputs(
        1, 4, 3, 5, torch.float32, var_B, var_C, groups, True, True, True
    )
    args = [x.requires_grad_() for x in inputs] + [True, True]
    torch.library.opcheck(torch.ops.kernels.selective_scan.default, args)
    torch.library.opcheck(
        torch.ops.kernels.selective_scan.default,
        [x.detach() for x in inputs] + [False, False],
    )


def test_opcheck_step():
    inp = step_inputs(2, 6, 5, 2, torch.float16, torch.float32)
    args = [torch.randn(2, 6, 5, device=DEVICE)] + [
        inp[k]
        for k in (
            "u",
            "delta",
            "A",
            "B",
            "C",
            "D",
            "z",
            "delta_bias",
            "delta_softplus",
        )
    ]
    torch.library.opcheck(torch.ops.kernels.selective_scan_step.default, args)


def test_torch_compile_step():
    """A compiled decoding step (no graph break) updates the state in place like the uncompiled one."""
    inp = step_inputs(2, 6, 5, 2, torch.float32)
    state = torch.randn(2, 6, 5, device=DEVICE)
    state_ref, state_c = state.clone(), state.clone()

    def two_steps(state, inp):
        return selective_scan_step(state, **inp) + selective_scan_step(
            state, **inp
        )

    out = two_steps(state_ref, inp)
    out_c = torch.compile(
        two_steps,
        fullgraph=True,
        backend="aot_eager" if not CUDA else "inductor",
    )(state_c, inp)
    assert_close("out", out, out_c, 1e-6, 1e-5)
    assert_close("state", state_ref, state_c, 1e-6, 1e-5)
    assert not torch.equal(state, state_c)


class TinyMamba(torch.nn.Module):
    """A projection to the scan's inputs, the scan, a projection back: enough to trace a model."""

    def __init__(self, d_model=3, d=4, n=5):
        super().__init__()
        self.proj_in = torch.nn.Linear(d_model, 3 * d + 2 * n)
        self.A_log = torch.nn.Parameter(torch.randn(d, n))
        self.D, self.delta_bias = (
            torch.nn.Parameter(torch.randn(d)),
            torch.nn.Parameter(torch.rand(d)),
        )
        self.proj_out = torch.nn.Linear(d, d_model)
        self.sizes = (d, d, d, n, n)

    def forward(self, x):  # [b, L, d_model]
        u, delta, z, B, C = (
            t.transpose(1, 2) for t in self.proj_in(x).split(self.sizes, dim=-1)
        )
        y = selective_scan(
            u,
            delta,
            -torch.exp(self.A_log),
            B,
            C,
            self.D,
            z,
            self.delta_bias,
            delta_softplus=True,
        )
        return self.proj_out(y.transpose(1, 2))  # [b, L, d_model]


def test_torch_compile_fullgraph():
    """``torch.compile(fullgraph=True)`` traces a model around the scan without a graph break, and its
    forward and backward equal the uncompiled ones."""
    torch.manual_seed(0)
    model = TinyMamba().to(DEVICE)
    x = torch.randn(2, 21, 3, device=DEVICE)
    compiled = torch.compile(
        model, fullgraph=True, backend="aot_eager" if not CUDA else "inductor"
    )
    results = []
    for fn in (model, compiled):
        model.zero_grad()
        y = fn(x)
        y.square().sum().backward()
        results.append(
            (y.detach(), [p.grad.clone() for p in model.parameters()])
        )
    (y, grads), (y_c, grads_c) = results
    assert_close("out", y, y_c, 1e-6, 1e-5)
    for (name, _), g, g_c in zip(model.named_parameters(), grads, grads_c):
        assert_close(f"d{name}", g, g_c, 1e-6, 1e-5)


def test_autotune_lists_respect_groups_and_tiles():
    """What a GPU launch may choose among: never empty, blocks inside one group and within the
    channels, tiles no larger than the compile test's (it compiles the lists at n = 16 and 256)."""
    import triton

    from kernels.selective_scan import triton as ss

    for d, n, groups in itertools.product(
        (1, 6, 48, 2048, 5120), (1, 5, 16, 256), ((1, 1), (3, 1), (2, 8))
    ):
        if any(d % g for g in groups):
            continue
        fixed = {
            k: v
            for k, v in ss._config(d, n, groups, interpret=False).items()
            if k in ("BLOCK_N", "CHUNK")
        }
        configs = ss._scan_configs(
            ss.SCAN_CONFIGS,
            {"d": d, "g_B": groups[0], "g_C": groups[1]},
            **fixed,
        )
        assert configs, (d, n, groups)
        for c in configs:
            bd = c.kwargs["BLOCK_D"]
            assert bd <= triton.next_power_of_2(d) and all(
                (d // g) % bd == 0 for g in groups if g > 1
            ), (d, groups, bd)
            assert bd * fixed["BLOCK_N"] * fixed["CHUNK"] <= max(ss.SCAN_TILES)
        steps = ss._step_configs(
            ss.STEP_CONFIGS, {"d": d}, BLOCK_N=fixed["BLOCK_N"]
        )
        assert steps and all(
            c.kwargs["BLOCK_D"] * fixed["BLOCK_N"] <= max(ss.STEP_TILES)
            for c in steps
        )


def test_bfloat16_on_cpu_runs_the_reference():
    inputs = make_inputs(
        1, 4, 8, 5, torch.bfloat16, True, True, 1, False, False, False
    )
    out = selective_scan(*inputs)
    assert out.dtype == torch.bfloat16
    assert_close(
        "out",
        selective_scan_ref(*[x if x is None else x.double() for x in inputs]),
        out,
        5e-2,
        3e-2,
    )


def good_inputs():
    return make_inputs(
        2, 4, 8, 6, torch.float32, True, True, 2, True, True, True
    )


BAD = [
    ("u", lambda a: a.update(u=[1.0]), TypeError, "u must be a torch.Tensor"),
    (
        "u",
        lambda a: a.update(u=a["u"][0]),
        ValueError,
        "u must have 3 dimensions [b, d, L]",
    ),
    (
        "u",
        lambda a: a.update(u=a["u"].long()),
        TypeError,
        "u must be float16, bfloat16 or float32",
    ),
    (
        "delta",
        lambda a: a.update(delta=a["delta"][..., :3]),
        ValueError,
        "delta must have shape [b, d, L]",
    ),
    (
        "delta",
        lambda a: a.update(delta=a["delta"].half()),
        TypeError,
        "delta must have the dtype of u (torch.float32), got torch.float16",
    ),
    (
        "A",
        lambda a: a.update(A=a["A"][:3]),
        ValueError,
        "A must have shape [d, n]",
    ),
    (
        "A",
        lambda a: a.update(A=a["A"].to(torch.complex64)),
        TypeError,
        "complex",
    ),
    (
        "A",
        lambda a: a.update(A=a["A"].double()),
        TypeError,
        "A must be float32",
    ),
    (
        "A",
        lambda a: a.update(A=torch.zeros(4, 300)),
        ValueError,
        "state size n between 1 and 256",
    ),
    (
        "B",
        lambda a: a.update(B=a["B"][:, :1, :, :5]),
        ValueError,
        "B must have shape [b, g, n, L]",
    ),
    (
        "B",
        lambda a: a.update(B=torch.zeros(2, 3, 8, 6)),
        ValueError,
        "g = 3 groups, which must divide",
    ),
    (
        "B",
        lambda a: a.update(B=torch.zeros(2, 8)),
        ValueError,
        "B must have shape [d, n]",
    ),
    (
        "B",
        lambda a: a.update(B=torch.zeros(8)),
        ValueError,
        "B must have shape [d, n] or [b, n, L] or [b, g, n, L]",
    ),
    (
        "C",
        lambda a: a.update(C=a["C"].half()),
        TypeError,
        "C [b, g, n, L] is input-dependent and must have the dtype of u",
    ),
    (
        "C",
        lambda a: a.update(C=torch.zeros(4, 8, dtype=torch.float16)),
        TypeError,
        "C must be float32",
    ),
    (
        "D",
        lambda a: a.update(D=torch.zeros(5)),
        ValueError,
        "D must have shape [d]",
    ),
    (
        "z",
        lambda a: a.update(z=a["z"][:1]),
        ValueError,
        "z must have shape [b, d, L]",
    ),
    (
        "delta_bias",
        lambda a: a.update(delta_bias=torch.zeros(4, dtype=torch.float16)),
        TypeError,
        "delta_bias must be float32",
    ),
    (
        "delta_softplus",
        lambda a: a.update(delta_softplus=1),
        TypeError,
        "delta_softplus must be True or False",
    ),
    (
        "return_last_state",
        lambda a: a.update(return_last_state="yes"),
        TypeError,
        "return_last_state must be True or False",
    ),
    (
        "u",
        lambda a: a.update(u=a["u"][..., :0], delta=a["delta"][..., :0]),
        ValueError,
        "at least one",
    ),
]


@pytest.mark.parametrize(
    "arg, change, error, message",
    BAD,
    ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)],
)
def test_bad_input(arg, change, error, message):
    args = dict(zip(NAMES, good_inputs()))
    change(args)
    with pytest.raises(error) as info:
        selective_scan(**args)
    assert message in str(info.value), str(info.value)


def test_bad_dtype_mixes():
    args = dict(
        zip(
            NAMES,
            make_inputs(
                1, 4, 8, 5, torch.float16, True, True, 1, True, True, True
            ),
        )
    )
    for name, dtype in (
        ("delta", torch.bfloat16),
        ("B", torch.float64),
        ("z", torch.bfloat16),
    ):
        with pytest.raises(
            TypeError,
            match=rf"{name}.* must have the dtype of u \(torch.float16\) or float32, "
            rf"got {dtype}",
        ):
            selective_scan(**{**args, name: args[name].to(dtype)})
    inp = step_inputs(1, 4, 8, 1, torch.float32)
    with pytest.raises(
        TypeError,
        match=r"state must have the dtype of u \(torch.float32\), got torch.float16",
    ):
        selective_scan_step(torch.zeros(1, 4, 8, dtype=torch.float16), **inp)
    with pytest.raises(
        TypeError,
        match=r"B \[b, n\] is input-dependent and must have the dtype of u",
    ):
        selective_scan_step(
            torch.zeros(1, 4, 8), **{**inp, "B": inp["B"].half()}
        )


def test_checks_read_no_values():
    """``meta`` tensors have shapes, dtypes and a device but no data: the checks pass on them (so they
    never wait for a GPU), still reject a bad shape, and the call returns outputs of the right shapes."""
    args = {
        k: None if v is None else v.to("meta")
        for k, v in zip(NAMES, good_inputs())
    }
    out, last = selective_scan(
        **args, delta_softplus=True, return_last_state=True
    )
    assert (
        out.device.type == "meta"
        and out.shape == (2, 4, 6)
        and last.shape == (2, 4, 8)
    )
    with pytest.raises(ValueError, match=r"z must have shape \[b, d, L\]"):
        selective_scan(**{**args, "z": args["z"][:1]})
    inp = {
        k: v.to("meta") if isinstance(v, torch.Tensor) else v
        for k, v in step_inputs(
            2, 4, 8, 2, torch.float16, torch.float32
        ).items()
    }
    out = selective_scan_step(torch.empty(2, 4, 8, device="meta"), **inp)
    assert (
        out.device.type == "meta"
        and out.shape == (2, 4)
        and out.dtype == torch.float16
    )


@pytest.mark.skipif(
    not CUDA,
    reason="needs a GPU to synchronise with; test_checks_read_no_values covers the checks",
)
def test_cuda_path_does_not_synchronise():
    """Forward, backward and decoding step on CUDA, after a first call (which may autotune), make no
    call that waits for the GPU."""
    inputs = [
        None if x is None else x.requires_grad_()
        for x in make_inputs(
            2, 64, 16, 300, torch.bfloat16, True, True, 2, True, True, True
        )
    ]
    inp = step_inputs(2, 64, 16, 2, torch.bfloat16, torch.float32)
    state = torch.zeros(2, 64, 16, device=DEVICE)

    def run():
        out, last = selective_scan(
            *inputs, delta_softplus=True, return_last_state=True
        )
        (out.float().sum() + last.sum()).backward()
        selective_scan_step(state, **inp)

    run()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_bad_input_on_other_device():
    if not CUDA:
        args = dict(zip(NAMES, good_inputs()))
        args["D"] = args["D"].to("meta")
        with pytest.raises(ValueError, match="same device"):
            selective_scan(**args)


def test_bad_step_input():
    u, delta, A, B, C, *_ = make_inputs(
        1, 4, 8, 3, torch.float32, True, True, 1, False, False, False
    )
    with pytest.raises(ValueError, match=r"state must have shape \[b, d, n\]"):
        selective_scan_step(
            torch.zeros(1, 4, 7),
            u[..., 0],
            delta[..., 0],
            A,
            B[..., 0],
            C[..., 0],
        )
    with pytest.raises(
        ValueError, match=r"B must have shape \[b, n\] or \[b, g, n\]"
    ):
        selective_scan_step(
            torch.zeros(1, 4, 8),
            u[..., 0],
            delta[..., 0],
            A,
            B[..., None],
            C[..., 0],
        )
