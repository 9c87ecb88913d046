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
    done = subprocess.run([sys.executable, __file__, family], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{family}: compiled" in done.stdout, done.stdout


def compile_for_hopper(kernel, constexprs, io, sizes, dtype, num_warps, num_stages=3, int_pointers=()):
    """Compile ``kernel`` to a cubin: ``sizes`` and strides are int32, ``scale`` float32, the rest
    pointers, of ``dtype`` for those named in ``io``, int32 for ``int_pointers`` and float32 for
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
        elif name in int_pointers:
            signature[name] = "*i32"
        else:
            signature[name] = "*" + (TRITON_TYPES[dtype] if name in io else "fp32")
    compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    assert compiled.asm["cubin"], f"{kernel.__name__}: no cubin"


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
    la = import_module("kernels.linear_attention.triton")
    sizes = {"T", "DAB", "DC", "H", "NT", "NT", "SIZE"}
    for DAB, DC in ((64, 64), (128, 128), (100, 60), (256, 512)):
        for dtype in (torch.bfloat16, torch.float32):
            for a, c in ((DAB, DC), (DC, DAB)):  # the forward and dq/dk shapes
                config = la._config(a, c, dtype, interpret=False)
                num_warps, num_stages = config.pop("num_warps"), config.pop("num_stages")
                for reverse in (False, True):
                    flags = dict(REVERSE=reverse, HAS_SEG=reverse, **config)  # both branches of each flag
                    compile_for_hopper(la._chunk_state_kernel, flags, {"Bp", "Cp"}, sizes, dtype, num_warps,
                                       num_stages, int_pointers={"SEG", "SEGP"})
                    compile_for_hopper(la._chunk_out_kernel, flags, {"Ap", "Bp", "Cp", "OUT"}, sizes, dtype,
                                       num_warps, num_stages, int_pointers={"SEG", "SEGP"})
    for DK, DV in ((64, 64), (128, 128), (100, 512)):
        step = la._step_config(DK, DV, interpret=False)
        num_warps = step.pop("num_warps")
        for dtype in (torch.bfloat16, torch.float32):
            compile_for_hopper(la._step_kernel, dict(HAS_G=True, G_PER_BATCH=False, **step), {"Q", "K_", "V_", "O"},
                               sizes | {"DK", "DV"}, dtype, num_warps, 1)
    pconf = la._pass_config(interpret=False)
    for reverse in (False, True):
        compile_for_hopper(la._state_pass_kernel, dict(HAS_S0=True, STORE_SN=True, REVERSE=reverse, HAS_DS=reverse,
                                                       HAS_SEG=True, CHUNK=64, BLOCK=pconf["BLOCK"]),
                           set(), sizes, torch.float32, pconf["num_warps"], 1)


def selective_scan():
    ss = import_module("kernels.selective_scan.triton")
    for n in (16, 256):
        for variable in (True, False):
            BLOCK_D, BLOCK_N, CHUNK, num_warps = ss._config(2048, n, (1, 1))
            io = {"u", "delta", "z", "out", "dout", "du", "ddelta", "dz"} | ({"B", "C"} if variable else set())
            constexprs = dict(BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N, CHUNK=CHUNK, B_VARIABLE=variable,
                              C_VARIABLE=variable, HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True)
            sizes = {"d", "n", "L", "g_B", "g_C"}
            compile_for_hopper(ss._selective_scan_fwd_kernel, {**constexprs, "STORE_STATES": True}, io, sizes,
                               torch.bfloat16, num_warps)
            compile_for_hopper(ss._selective_scan_bwd_kernel, constexprs, io, sizes, torch.bfloat16, num_warps)


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
