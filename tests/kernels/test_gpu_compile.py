"""Every Triton kernel compiles for a Hopper GPU (sm_90), with the tile sizes the launchers choose there.

Triton's interpreter runs the kernels on the CPU but skips the compiler, which rejects programs
the interpreter accepts (a helper returning tensors of different types from two branches, for
one). Triton compiles ahead of time without a GPU: this file builds each kernel down to a cubin
for the configurations a GPU run uses, so a compile error shows here and not on the first GPU.
The compilation runs in a fresh process (``python tests/kernels/test_gpu_compile.py FAMILY``)
because the test session imported the kernels for the interpreter.
"""
import os
import subprocess
import sys
from importlib import import_module

import pytest
import torch

FAMILIES = ["flash_attention", "linear_attention", "selective_scan", "tree_attention"]
TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@pytest.mark.parametrize("family", FAMILIES)
def test_kernels_compile_for_hopper(family):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))  # this checkout's kernels
    done = subprocess.run([sys.executable, __file__, family], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{family}: compiled" in done.stdout, done.stdout


def compile_for_hopper(kernel, constexprs, io, sizes, dtype, num_warps, num_stages=3, arch=90):
    """Compile ``kernel`` to a cubin (for sm_``arch``) and return it: ``sizes`` and strides are int32,
    ``scale`` float32, the rest pointers, of ``dtype`` for those named in ``io`` and of float32 for
    the others."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.startswith("stride") or name in sizes:
            signature[name] = "i32"
        elif name in ("scale", "sm_scale"):
            signature[name] = "fp32"
        elif name == "MASK":
            signature[name] = "*u8"
        else:
            signature[name] = "*" + (TRITON_TYPES[dtype] if name in io else "fp32")
    compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    assert compiled.asm["cubin"], f"{kernel.__name__}: no cubin"
    return compiled


def flash_attention():
    fa = import_module("kernels.flash_attention.triton")  # by path: kernels.flash_attention is the function
    io = {"Q", "K", "V", "O", "DO", "DQ", "DK", "DV"}
    sizes = {"H", "HKV", "GROUP", "Tq", "Tk", "D"}
    for D, dtype in ((64, torch.bfloat16), (128, torch.bfloat16), (128, torch.float32), (256, torch.bfloat16)):
        for kernel, backward in ((fa._fwd_kernel, False), (fa._bwd_dkdv_kernel, True), (fa._bwd_dq_kernel, True)):
            BLOCK_M, BLOCK_N, num_warps, num_stages = fa._config(D, dtype, backward=backward)
            constexprs = dict(IS_CAUSAL=True, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=D,
                              PRECISION=fa._precision(dtype))
            compile_for_hopper(kernel, constexprs, io, sizes, dtype, num_warps, num_stages)


def linear_attention():
    import triton
    la = import_module("kernels.linear_attention.triton")
    for DAB, DC in ((64, 64), (128, 129), (256, 256)):
        BLOCK_AB = max(16, triton.next_power_of_2(DAB))
        BLOCK_C = min(64, max(16, triton.next_power_of_2(DC)))
        for kernel, flags in ((la._chunk_fwd_kernel, ("HAS_S0", "STORE_SN")),
                              (la._chunk_rev_kernel, ("HAS_G0", "STORE_GN"))):
            constexprs = {flags[0]: True, flags[1]: True, "CHUNK": 64, "BLOCK_AB": BLOCK_AB, "BLOCK_C": BLOCK_C,
                          "PRECISION": "tf32"}
            compile_for_hopper(kernel, constexprs, {"A", "B", "C", "OUT"}, {"T", "DAB", "DC", "H"}, torch.bfloat16, 4 if BLOCK_AB <= 64 else 8)


SHARED_BYTES = {90: 227 * 1024, 80: 163 * 1024}  # shared memory a block may use on H100/H200 and A100


def selective_scan():
    """The scan's forward and backward and the decoding step for sm_90 and sm_80, at state sizes 16
    and 256: every configuration of the autotune lists a GPU launch can choose among (input-dependent
    B and C), and the deterministic one (time-invariant B and C); each within shared memory."""
    ss = import_module("kernels.selective_scan.triton")
    io = {"u", "delta", "z", "out", "dout", "du", "ddelta", "dz", "state"}
    sizes = {"d", "n", "L", "g_B", "g_C", "dg_B", "dg_C"}
    flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True)
    d = 2048
    for n in (16, 256):
        base = ss._config(d, n, (1, 1), interpret=False)
        fixed = dict(BLOCK_N=base["BLOCK_N"], CHUNK=base["CHUNK"])
        tuned = ss._scan_configs(ss.SCAN_CONFIGS, {"d": d, "g_B": 1, "g_C": 1}, **fixed)
        assert len(tuned) > 1, f"n = {n}: nothing to tune among {tuned}"
        runs = [(c.kwargs["BLOCK_D"], c.num_warps, c.num_stages, True) for c in tuned]
        runs.append((base["BLOCK_D"], base["num_warps"], base["num_stages"], False))
        for arch in (90, 80):
            for BLOCK_D, num_warps, num_stages, variable in runs:
                constexprs = dict(**fixed, BLOCK_D=BLOCK_D, B_VARIABLE=variable, C_VARIABLE=variable, **flags)
                bc = {"B", "C"} if variable else set()
                for kernel, extra in ((ss._selective_scan_fwd_kernel, {"STORE_STATES": True}),
                                      (ss._selective_scan_bwd_kernel, {})):
                    compiled = compile_for_hopper(kernel, {**constexprs, **extra}, io | bc, sizes, torch.bfloat16,
                                                  num_warps, num_stages, arch=arch)
                    check_shared(compiled, kernel, arch, constexprs)
            step = ss._step_config(d, n, interpret=False)
            configs = ss._step_configs(ss.STEP_CONFIGS, {"d": d}, BLOCK_N=step["BLOCK_N"])
            assert len(configs) > 1 and step["BLOCK_D"] in {c.kwargs["BLOCK_D"] for c in configs}
            for c in configs:
                constexprs = dict(BLOCK_N=step["BLOCK_N"], BLOCK_D=c.kwargs["BLOCK_D"], **flags)
                compiled = compile_for_hopper(ss._selective_scan_step_kernel, constexprs, io | {"B", "C"}, sizes,
                                              torch.bfloat16, c.num_warps, arch=arch)
                check_shared(compiled, ss._selective_scan_step_kernel, arch, constexprs)


def check_shared(compiled, kernel, arch, config):
    shared = compiled.metadata.shared
    assert shared <= SHARED_BYTES[arch], (f"{kernel.__name__} {config} needs {shared} bytes of shared memory, "
                                          f"sm_{arch} allows {SHARED_BYTES[arch]}")


def tree_attention():
    tt = import_module("kernels.speculative.tree_triton")
    sizes = {"H", "GROUP", "Tq", "Tk", "D"}
    for D, BLOCK_M in ((64, 16), (128, 64)):  # the launcher's tiles for a small and a large tree
        BLOCK_N, num_warps, num_stages = (64, 4, 3)
        constexprs = dict(BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=D, PRECISION="tf32")
        compile_for_hopper(tt._tree_fwd_kernel, constexprs, {"Q", "K", "V", "O"}, sizes, torch.bfloat16,
                           num_warps, num_stages)


if __name__ == "__main__":
    family = sys.argv[1]
    globals()[family]()
    print(f"{family}: compiled")
