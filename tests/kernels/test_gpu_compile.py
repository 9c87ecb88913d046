"""Every Triton kernel compiles for Hopper (sm_90) and Ampere (sm_80) with every launch
configuration the package can choose, fits in shared memory, and offsets its large tensors in
64 bits.

Triton's interpreter runs the kernels on the CPU but skips the compiler, which rejects programs
the interpreter accepts, and never notices shared memory: a float32 tile that needs more than a
GPU has fails only at launch. Triton compiles ahead of time without a GPU, so this file builds
each kernel down to a cubin and reads ``metadata.shared``.

The configurations come from the launchers themselves: each ``triton.py`` has one ``_config``
that its launcher, the interpreter path and this test all call. The test calls it over the
whole domain the public functions accept (every dtype, head dim, operand width, state size),
keeps the distinct results, and compiles each with both values of every boolean flag that
changes the program (``IS_CAUSAL``) or with every optional part on (the others). Among configs
that differ only in their integer tile sizes, it keeps the largest (shared memory grows with
the tiles), so a later change to ``_config`` is covered without editing this file.

The compilation runs in a fresh process per family (``python tests/kernels/test_gpu_compile.py
FAMILY``) because the test session imported the kernels for the interpreter; nothing is cached
across runs (Triton's cache is pointed at a fresh folder).
"""

import os
import re
import subprocess
import sys
import tempfile
from importlib import import_module
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = [
    "flash_attention",
    "linear_attention",
    "selective_scan",
    "tree_attention",
]
SHARED_MEMORY = {
    90: 232448,
    80: 166912,
}  # bytes a block may use: H100/H200 (sm_90), A100 (sm_80)
TRITON_TYPES = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_kernels_compile_for_sm90_and_sm80(family):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    with tempfile.TemporaryDirectory() as cache:
        env["TRITON_CACHE_DIR"] = cache
        done = subprocess.run(
            [sys.executable, __file__, family],
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
            cwd=ROOT,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(rf"{family}: compiled (\d+) configurations", done.stdout)
    assert found and int(found.group(1)) > 0, done.stdout + done.stderr


TTIR = """
  tt.func public @kernel(%X: !tt.ptr<f16> loc("X"(#loc)), %Y: !tt.ptr<f32> loc("Y"(#loc)), %W: !tt.ptr<f32> loc("W"(#loc))) {
    %base = tt.addptr %X, %off64 : !tt.ptr<f16>, i64 loc(#loc3)
    %tile = tt.splat %base : !tt.ptr<f16> -> tensor<64x!tt.ptr<f16>> loc(#loc4)
    %p = tt.addptr %tile, %offs : tensor<64x!tt.ptr<f16>>, tensor<64xi32> loc(#loc5)
    %y = tt.splat %Y : !tt.ptr<f32> -> tensor<8x1x!tt.ptr<f32>> loc(#loc6)
    %q = tt.addptr %y, %rows : tensor<8x1x!tt.ptr<f32>>, tensor<8x1xi32> loc(#loc7)
    %w = tt.addptr %W, %small : !tt.ptr<f32>, i32 loc(#loc8)
"""


def test_narrow_offsets_finds_32_bit_offsets_applied_to_an_argument():
    """The 64-bit check of the compile test: a 64-bit base offset first (X) passes, a 32-bit
    offset applied to an argument or to its splat (Y, W) does not, unless the argument is small."""
    assert narrow_offsets(TTIR, ["X", "Y", "W"], small=()) == {"Y", "W"}
    assert narrow_offsets(TTIR, ["X", "Y", "W"], small={"W"}) == {"Y"}


# ------------------------------------------------------------------ run in the child process


class Case:
    """One kernel with one launch configuration: what to compile and what to check."""

    def __init__(
        self,
        kernel,
        constexprs,
        io,
        sizes,
        dtype,
        num_warps,
        num_stages,
        small=(),
        int_pointers=(),
        archs=None,
    ):
        self.kernel, self.constexprs, self.io, self.sizes, self.dtype = (
            kernel,
            constexprs,
            io,
            sizes,
            dtype,
        )
        self.num_warps, self.num_stages = num_warps, num_stages
        self.archs = tuple(
            archs or SHARED_MEMORY
        )  # the GPUs a launch may choose this case on
        self.small = set(
            small
        )  # pointer arguments small enough for 32-bit offsets (parameters)
        self.int_pointers = set(
            int_pointers
        )  # pointers to int32 (sequence ids)

    def key(self):
        """Everything but the integer tile sizes: cases with equal keys differ only in tiles."""
        flags = tuple(
            sorted(
                (k, v) for k, v in self.constexprs.items() if not _is_tile(v)
            )
        )
        return (
            self.kernel.__name__,
            self.dtype,
            flags,
            self.num_warps,
            self.num_stages,
            tuple(sorted(self.small)),
            self.archs,
        )

    def tiles(self):
        return {k: v for k, v in self.constexprs.items() if _is_tile(v)}

    def __repr__(self):
        tiles = ", ".join(
            f"{k}={v}" for k, v in sorted(self.constexprs.items())
        )
        return (
            f"{self.kernel.__name__}[{TRITON_TYPES[self.dtype]}, {tiles}, num_warps={self.num_warps}, "
            f"num_stages={self.num_stages}, sm_{'/'.join(map(str, self.archs))}]"
        )


def _is_tile(value):
    return isinstance(value, int) and not isinstance(value, bool)


def largest(cases):
    """The cases that no other case dominates: same key, every tile size at least as large."""
    unique = {repr(c): c for c in cases}.values()
    keep = []
    for c in unique:
        dominated = any(
            o is not c
            and o.key() == c.key()
            and o.tiles() != c.tiles()
            and all(o.tiles()[k] >= v for k, v in c.tiles().items())
            for o in unique
        )
        if not dominated:
            keep.append(c)
    return keep


def distinct(configs):
    """The distinct ``(constexprs, num_warps, num_stages)`` among ``_config`` results, in order."""
    seen = {}
    for config in configs:
        constexprs = {
            k: v
            for k, v in config.items()
            if k not in ("num_warps", "num_stages")
        }
        seen.setdefault(
            tuple(sorted(config.items())),
            (constexprs, config["num_warps"], config["num_stages"]),
        )
    return list(seen.values())


def flash_attention_cases():
    fa = import_module(
        "kernels.flash_attention.triton"
    )  # by path: kernels.flash_attention is the function
    io = {"Q", "K", "V", "O", "DO", "DQ", "DK", "DV"}
    sizes = {"H", "HKV", "GROUP", "Tq", "Tk", "D", "Dv", "LEFT", "RIGHT"}
    kernels = (
        (fa._fwd_kernel, False),
        (fa._bwd_dkdv_kernel, True),
        (fa._bwd_dq_kernel, True),
    )
    small = {"CU_Q", "CU_K", "CU_SEQLENS_Q", "CU_SEQLENS_K"}
    # Every configuration of each autotune list that survives pruning for that GPU's shared memory.
    # Head dims 1 to 256 pad to 16 ... 256: 128 and 256 are the largest tiles of each list (smaller
    # head dims shrink them; float16 tiles weigh what bfloat16 ones do). Every mask, cap and packing
    # flag is on (the longest program), and the untuned default runs with every flag off.
    shapes = [
        (torch.bfloat16, 128, 128),
        (torch.bfloat16, 256, 256),
        (torch.float32, 128, 128),
    ]
    for arch, limit in SHARED_MEMORY.items():
        for dtype, D, DV in shapes:
            for kernel, backward in kernels:
                tiles = fa._configs(D, DV, dtype, backward, limit=limit)
                default = fa._config(D, DV, dtype, backward, interpret=False)
                assert default["BLOCK_M"] in {t["BLOCK_M"] for t in tiles}, (
                    default,
                    tiles,
                )
                runs = [(t, True) for t in tiles] + [(default, False)]
                for config, flag in runs:
                    constexprs = dict(
                        HAS_LEFT=flag,
                        HAS_RIGHT=flag,
                        SOFTCAP=flag,
                        VARLEN=flag,
                        BLOCK_M=config["BLOCK_M"],
                        BLOCK_N=config["BLOCK_N"],
                        **fa._head_args(D, DV, dtype),
                    )
                    yield Case(
                        kernel,
                        constexprs,
                        io,
                        sizes,
                        dtype,
                        config["num_warps"],
                        config["num_stages"],
                        small,
                        archs=(arch,),
                    )
    # lengths of 1 (a decoding step) are specialised by Triton into constants: the kernels still compile
    for kernel, backward in kernels:
        config = fa._config(64, 64, torch.bfloat16, backward, interpret=False)
        constexprs = dict(
            HAS_LEFT=True,
            HAS_RIGHT=True,
            SOFTCAP=False,
            VARLEN=False,
            Tq=1,
            Tk=1,
            BLOCK_M=config["BLOCK_M"],
            BLOCK_N=config["BLOCK_N"],
            **fa._head_args(64, 64, torch.bfloat16),
        )
        yield Case(
            kernel,
            constexprs,
            io,
            sizes - {"Tq", "Tk"},
            torch.bfloat16,
            config["num_warps"],
            config["num_stages"],
            small,
        )


def linear_attention_cases():
    from kernels._checks import FLOAT_DTYPES

    la = import_module("kernels.linear_attention.triton")
    # On a GPU every launch autotunes among a list that depends on the widths only through their
    # next power of two (tiles no wider than the operands): one width of each bucket, from 1 to 513
    # (V up to 512, plus the column of ones that normalize=True appends). The chunk kernels' lists
    # are pruned to each GPU's shared memory: what survives for a GPU is compiled for it. CHUNK and
    # PRECISION are never tuned: they come from _config.
    widths = [
        *range(1, 17),
        *(2**k + 1 for k in range(4, 10)),
        *(2**k for k in range(5, 10)),
    ]
    sizes = {"T", "DAB", "DC", "H", "NT", "SIZE", "DK", "DV"}
    seg = {"SEG", "SEGP"}
    for arch, limit in SHARED_MEMORY.items():
        for dtype in FLOAT_DTYPES:
            base = la._config(64, 64, dtype, interpret=False)
            fixed = dict(CHUNK=base["CHUNK"], PRECISION=base["PRECISION"])
            tuned = distinct(
                c
                for a in widths
                for b in widths
                for c in la._chunk_configs(a, b, dtype, limit)
            )
            for constexprs, num_warps, num_stages in tuned:
                for reverse, has_seg in (
                    (False, False),
                    (True, True),
                    (False, True),
                    (True, False),
                ):
                    flags = dict(
                        constexprs, **fixed, REVERSE=reverse, HAS_SEG=has_seg
                    )
                    yield Case(
                        la._chunk_state_kernel,
                        flags,
                        {"Bp", "Cp"},
                        sizes,
                        dtype,
                        num_warps,
                        num_stages,
                        small=seg,
                        int_pointers=seg,
                        archs=(arch,),
                    )
                    yield Case(
                        la._chunk_out_kernel,
                        flags,
                        {"Ap", "Bp", "Cp", "OUT"},
                        sizes,
                        dtype,
                        num_warps,
                        num_stages,
                        small=seg,
                        int_pointers=seg,
                        archs=(arch,),
                    )
    for dtype in FLOAT_DTYPES:
        for constexprs, num_warps, num_stages in distinct(
            c for k in widths for v in widths for c in la._step_configs(k, v)
        ):
            for has_g, per_batch in (
                (False, False),
                (True, False),
                (True, True),
            ):
                yield Case(
                    la._step_kernel,
                    dict(constexprs, HAS_G=has_g, G_PER_BATCH=per_batch),
                    {"Q", "K_", "V_", "O"},
                    sizes,
                    dtype,
                    num_warps,
                    num_stages,
                    small={"G"},
                )
    chunk = la._config(64, 64, torch.bfloat16, interpret=False)["CHUNK"]
    for config in la._pass_configs(512 * 513):
        for reverse in (False, True):
            for has_seg, varlen in (
                (False, False),
                (True, False),
                (False, True),
            ):
                flags = dict(
                    HAS_S0=True,
                    STORE_SN=True,
                    REVERSE=reverse,
                    HAS_DS=reverse,
                    HAS_SEG=has_seg,
                    CHUNK=chunk,
                    BLOCK=config["BLOCK"],
                    VARLEN=varlen,
                )
                yield Case(
                    la._state_pass_kernel,
                    flags,
                    set(),
                    sizes,
                    torch.float32,
                    config["num_warps"],
                    1,
                    small={"KEEP", "FIRST", "LAST"},
                    int_pointers={"FIRST", "LAST"},
                )


def selective_scan_cases():
    from kernels._checks import FLOAT_DTYPES
    from kernels.selective_scan.api import MAX_STATE

    ss = import_module("kernels.selective_scan.triton")
    sizes = {"d", "n", "L", "g_B", "g_C", "dg_B", "dg_C"}
    # Channels d and groups only ever shrink BLOCK_D (a divisor of the channels of a group):
    # small d with one group and a large d cover every BLOCK_D. On a GPU the launchers autotune
    # BLOCK_D and the warps among _scan_configs / _step_configs: every one of those is a case too.
    scan, step = [], []
    for n in range(1, MAX_STATE + 1):
        for d in [*range(1, 65), 4096]:
            base = ss._config(d, n, (1, 1), interpret=False)
            fixed = dict(BLOCK_N=base["BLOCK_N"], CHUNK=base["CHUNK"])
            scan.append(base)
            for c in ss._scan_configs(
                ss.SCAN_CONFIGS, {"d": d, "g_B": 1, "g_C": 1}, **fixed
            ):
                scan.append(
                    dict(
                        **fixed,
                        **c.kwargs,
                        num_warps=c.num_warps,
                        num_stages=c.num_stages,
                    )
                )
            base = ss._step_config(d, n, interpret=False)
            step.append(dict(base, num_stages=3))
            for c in ss._step_configs(
                ss.STEP_CONFIGS, {"d": d}, BLOCK_N=base["BLOCK_N"]
            ):
                step.append(
                    dict(
                        BLOCK_N=base["BLOCK_N"],
                        **c.kwargs,
                        num_warps=c.num_warps,
                        num_stages=c.num_stages,
                    )
                )
    scan, step = distinct(scan), distinct(step)
    flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True)
    for dtype in FLOAT_DTYPES:
        for constexprs, num_warps, num_stages in scan:
            for variable in (True, False):
                io = {
                    "u",
                    "delta",
                    "z",
                    "out",
                    "dout",
                    "du",
                    "ddelta",
                    "dz",
                } | ({"B", "C"} if variable else set())
                small = {"A", "D", "delta_bias"} | (
                    set() if variable else {"B", "C"}
                )  # [d, n] and [d]
                both = dict(flags, B_VARIABLE=variable, C_VARIABLE=variable)
                yield Case(
                    ss._selective_scan_fwd_kernel,
                    {**constexprs, **both, "STORE_STATES": True},
                    io,
                    sizes,
                    dtype,
                    num_warps,
                    num_stages,
                    small,
                )
                yield Case(
                    ss._selective_scan_bwd_kernel,
                    {**constexprs, **both},
                    io,
                    sizes,
                    dtype,
                    num_warps,
                    num_stages,
                    small,
                )
        for constexprs, num_warps, num_stages in step:
            yield Case(
                ss._selective_scan_step_kernel,
                {**constexprs, **flags},
                {"u", "delta", "z", "out", "B", "C"},
                sizes,
                dtype,
                num_warps,
                num_stages,
                {"A", "D", "delta_bias"},
            )


def tree_attention_cases():
    import triton

    from kernels._checks import HEAD_DIMS

    tt = import_module("kernels.speculative.tree_attention.triton")
    sizes = {"H", "GROUP", "Tq", "Tk", "D"}
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        configs = {}
        for D in HEAD_DIMS:
            for Tq in range(
                1, 129
            ):  # a tree has tens of nodes; larger ones take the largest tile
                BLOCK_M, BLOCK_N, num_warps, num_stages = tt._config(
                    Tq, D, dtype
                )
                BLOCK_D = max(16, triton.next_power_of_2(D))
                configs[(BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages)] = (
                    None
                )
        for BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages in configs:
            constexprs = dict(
                BLOCK_M=BLOCK_M,
                BLOCK_N=BLOCK_N,
                BLOCK_D=BLOCK_D,
                PRECISION="ieee" if dtype == torch.float32 else "tf32",
            )
            yield Case(
                tt._tree_fwd_kernel,
                constexprs,
                {"Q", "K", "V", "O"},
                sizes,
                dtype,
                num_warps,
                num_stages,
                small={"MASK"},
            )


def compile_case(case, arch):
    """Compile ``case`` for ``sm_<arch>``: sizes and strides are int32, ``scale`` float32, ``MASK``
    bytes, the rest pointers, of the case's dtype for those in ``io`` and float32 for the others."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {}
    for name in case.kernel.arg_names:
        if name in case.constexprs:
            signature[name] = "constexpr"
        elif name.startswith("stride") or name in case.sizes:
            signature[name] = "i32"
        elif name in ("scale", "sm_scale", "softcap"):
            signature[name] = "fp32"
        elif name.startswith("CU_"):  # int32 offsets of packed sequences
            signature[name] = "*i32"
        elif name == "MASK":
            signature[name] = "*u8"
        elif name in case.int_pointers:
            signature[name] = "*i32"
        else:
            signature[name] = "*" + (
                TRITON_TYPES[case.dtype] if name in case.io else "fp32"
            )
    compiled = triton.compile(
        ASTSource(case.kernel, signature, case.constexprs),
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": case.num_warps, "num_stages": case.num_stages},
    )
    pointers = [n for n, t in signature.items() if t.startswith("*")]
    return compiled, pointers


def narrow_offsets(ttir, pointers, small):
    """The pointer arguments (outside ``small``) that some ``tt.addptr`` offsets by a 32-bit value
    directly, before a 64-bit base offset was added: their offsets would wrap past 2^31."""
    from_arg = {f"%{name}": name for name in pointers}
    for line in (
        ttir.splitlines()
    ):  # `%x = tt.splat %Q : ...` still points at Q's first element
        m = re.match(r"\s*(%[\w.]+) = tt\.splat (%[\w.]+) ", line)
        if m and m.group(2) in from_arg:
            from_arg[m.group(1)] = from_arg[m.group(2)]
    narrow = set()
    for line in ttir.splitlines():
        m = re.match(
            r"\s*%[\w.]+ = tt\.addptr (%[\w.]+), %[\w.]+ : [^,]+, (.+?) loc",
            line,
        )
        if (
            m
            and m.group(1) in from_arg
            and not m.group(2).rstrip(">").endswith("i64")
        ):
            narrow.add(from_arg[m.group(1)])
    return narrow - set(small)


CASES = []  # the family's cases, set in the child process before the worker processes fork


def check_case(index):
    """Compile ``CASES[index]`` for every architecture; return its report lines and its failures."""
    case, lines, failures = CASES[index], [], []
    for arch, limit in SHARED_MEMORY.items():
        if arch not in case.archs:
            continue
        compiled, pointers = compile_case(case, arch)
        shared = compiled.metadata.shared
        lines.append(f"sm_{arch} {case}: {shared} bytes of shared memory")
        if not compiled.asm.get("cubin"):
            failures.append(f"sm_{arch} {case}: no cubin")
        if shared > limit:
            failures.append(
                f"sm_{arch} {case}: {shared} bytes of shared memory, more than the {limit} allowed"
            )
    narrow = narrow_offsets(compiled.asm["ttir"], pointers, case.small)
    if narrow:
        failures.append(f"{case}: 32-bit offsets into {sorted(narrow)}")
    return lines, failures


def main(family):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    CASES.extend(largest(globals()[f"{family}_cases"]()))
    failures = []
    # one compilation per core: the workers fork from this process and read CASES
    with ProcessPoolExecutor(
        os.cpu_count(), mp_context=multiprocessing.get_context("fork")
    ) as pool:
        for lines, failed in pool.map(check_case, range(len(CASES))):
            print("\n".join(lines), flush=True)
            failures += failed
    if failures:
        print("\n".join(["FAILED:"] + failures))
        sys.exit(1)
    print(
        f"{family}: compiled {len(CASES)} configurations for sm_{' and sm_'.join(map(str, SHARED_MEMORY))}"
    )


if __name__ == "__main__":
    main(sys.argv[1])
