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


def compile_for_hopper(kernel, constexprs, io, sizes, dtype, num_warps, num_stages=3, capability=90):
    """Compile ``kernel`` to a cubin: ``sizes`` and strides are int32, ``scale`` float32, the rest
    pointers, of ``dtype`` for those named in ``io`` and of float32 for the others."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.startswith("stride") or name in sizes:
            signature[name] = "i32"
        elif name in ("scale", "sm_scale", "softcap"):
            signature[name] = "fp32"
        elif name.startswith("CU_"):  # int32 offsets of packed sequences
            signature[name] = "*i32"
        elif name == "MASK":
            signature[name] = "*u8"
        else:
            signature[name] = "*" + (TRITON_TYPES[dtype] if name in io else "fp32")
    compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", capability, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    assert compiled.asm["cubin"], f"{kernel.__name__}: no cubin"
    return compiled


SHARED_BYTES = {90: 227 * 1024, 80: 163 * 1024}  # shared memory a block may use on H100/H200 and A100


def flash_attention():
    fa = import_module("kernels.flash_attention.triton")  # by path: kernels.flash_attention is the function
    io = {"Q", "K", "V", "O", "DO", "DQ", "DK", "DV"}
    sizes = {"H", "HKV", "GROUP", "Tq", "Tk", "D", "Dv", "LEFT", "RIGHT"}
    kernels = ((fa._fwd_kernel, False), (fa._bwd_dkdv_kernel, True), (fa._bwd_dq_kernel, True))
    # every configuration of each autotune list that survives pruning for that GPU's shared memory
    # (head dims 1 to 256 pad to 16 ... 256: 128 and 256 are the largest tiles of each list, smaller
    # head dims shrink them; float16 tiles weigh what bfloat16 ones do), with every mask, cap and
    # packing flag on (the longest program), and the untuned default with every flag off
    shapes = [(torch.bfloat16, 128, 128), (torch.bfloat16, 256, 256), (torch.float32, 128, 128)]
    for capability in (90, 80):
        for dtype, D, DV in shapes:
            for kernel, backward in kernels:
                tiles = fa._configs(D, DV, dtype, backward, limit=SHARED_BYTES[capability])
                assert fa._config(D, DV, dtype, backward, interpret=False)["BLOCK_M"] in {t["BLOCK_M"] for t in tiles}
                plain = D == 128 and dtype == torch.bfloat16 and capability == 90
                runs = [(t, True) for t in tiles] + [(tiles[0], False)] * plain
                for config, flag in runs:
                    constexprs = dict(HAS_LEFT=flag, HAS_RIGHT=flag, SOFTCAP=flag, VARLEN=flag,
                                      BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"], **fa._head_args(D, DV, dtype))
                    compiled = compile_for_hopper(kernel, constexprs, io, sizes, dtype, config["num_warps"],
                                                  config["num_stages"], capability)
                    shared = compiled.metadata.shared
                    assert shared <= SHARED_BYTES[capability], (
                        f"{kernel.__name__} {dtype} D={D} Dv={DV} sm_{capability}: {shared} bytes of shared "
                        f"memory, the limit is {SHARED_BYTES[capability]} ({config})")
    # lengths of 1 (a decode step) are specialised by Triton into constants: the kernels still compile
    for kernel, backward in kernels:
        config = fa._config(64, 64, torch.bfloat16, backward, interpret=False)
        constexprs = dict(HAS_LEFT=True, HAS_RIGHT=True, SOFTCAP=False, VARLEN=False, Tq=1, Tk=1,
                          BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"], **fa._head_args(64, 64, torch.bfloat16))
        compile_for_hopper(kernel, constexprs, io, sizes - {"Tq", "Tk"}, torch.bfloat16, config["num_warps"],
                           config["num_stages"])


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
