"""Every Triton kernel compiles for Hopper (sm_90) with the installed Triton, without a GPU.

The CPU interpreter runs the kernels' Python, not Triton's compiled front end (types of loop-carried
values, constexpr branches, tile shapes, shared memory), so the kernels are also compiled here to
PTX/cubin for an sm_90 target. Runs in a subprocess because TRITON_INTERPRET, which conftest.py sets
on machines without a GPU, decides at import time whether kernels are compiled or interpreted.

Kernel arguments follow one convention the signature builder below relies on: pointers have
upper-case names, float scalars are listed in FLOATS, every other argument is an integer.
"""

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

from vin_kernels.triton import attention_core, chunk_attention, global_attention, merge_attention, overlap_fuse

FLOATS = {"qk_scale", "sm_scale", "coef_a", "coef_b"}
FP32_POINTERS = {"LSE", "DELTA", "DGK", "DGV", "LA", "LB", "L", "WEIGHT"}
I32_POINTERS = {"FRAME_PTR", "WINDOW", "POSITION"}
H100_SHARED_BYTES = 232448  # 227 KB per block
dtype = sys.argv[1]


def compile_kernel(kernel, constexprs, num_warps=4, num_stages=3):
    fn = kernel
    while not isinstance(fn, JITFunction):
        fn = fn.fn  # unwrap the autotuner
    signature = {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in FLOATS:
            signature[name] = "fp32"
        elif name.isupper() and name not in ("N", "H", "G", "F", "C", "SPLITS", "TUNE_BUCKET"):
            signature[name] = "*fp32" if name in FP32_POINTERS else "*i32" if name in I32_POINTERS else "*" + dtype
        else:
            signature[name] = "i32"
    consts = {(fn.arg_names.index(k),): v for k, v in constexprs.items()}
    source = ASTSource(fn=fn, signature=signature, constexprs=consts)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages})
    shared = compiled.metadata.shared
    assert shared <= H100_SHARED_BYTES, f"{fn.__name__}: {shared} bytes of shared memory"
    print(f"{fn.__name__} {constexprs.get('HEAD_DIM', '')}: {shared} B shared", flush=True)


for D in (72, 128):
    d1, d2 = attention_core.head_dim_tiles(D)
    head = dict(HEAD_DIM=D, BLOCK_D1=d1, BLOCK_D2=max(d2, 16), HAS_D2=d2 > 0, PRECISION="tf32")
    for kernel, extra, (bm, bn, warps, stages) in [
        (chunk_attention._fwd_kernel, dict(HAS_GLOBALS=True), chunk_attention._FWD_OPTIONS[0]),
        (chunk_attention._bwd_dq_kernel, dict(HAS_GLOBALS=True), chunk_attention._BWD_DQ_OPTIONS[0]),
        (chunk_attention._bwd_dkdv_kernel, dict(CONTEXT_GRAD=False), chunk_attention._BWD_DKDV_OPTIONS[0]),
        (chunk_attention._bwd_dglobal_kernel, {}, chunk_attention._BWD_DKDV_OPTIONS[0]),
        (global_attention._fwd_kernel, {}, global_attention._FWD_OPTIONS[0]),
        (global_attention._bwd_dq_kernel, {}, global_attention._BWD_OPTIONS[0]),
        (global_attention._bwd_dkdv_kernel, {}, global_attention._BWD_OPTIONS[0]),
    ]:
        compile_kernel(kernel, dict(head, **extra, BLOCK_M=bm, BLOCK_N=bn), warps, stages)
compile_kernel(merge_attention._merge_kernel, dict(HEAD_DIM=72, BLOCK_D=128, BLOCK_R=32))
compile_kernel(overlap_fuse._overlap_fuse_kernel, dict(HAS_X=True, OUT_WINDOWS=True, BLOCK_C=1024))
print("compiled", flush=True)
"""


@pytest.mark.parametrize("dtype", ["bf16"])
def test_triton_kernels_compile_for_sm90(dtype, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # a cold compile every time, nothing left behind
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, dtype], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0 and "compiled" in result.stdout, result.stdout + result.stderr
