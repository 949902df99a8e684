"""The Triton kernels as a GPU would run them, read off the compiler without a GPU (issue 9).

Every kernel of vin_kernels.triton is compiled for sm_90 and sm_80 exactly as a launch specializes
it (``bench/suites/static.py``: the launchers' own arguments on meta tensors, the autotuner's pruner,
Triton's ``tt.divisibility`` specialization), for every option the autotuner can pick for 16-bit
inputs at head dims 64, 72, 80, 96 and 128, and the test fails when one of them spills registers,
needs more shared memory than a block can have, loses wgmma (sm_90) / mma.sync (sm_80), or has a
loop whose loads are not pipelined with async copies. (fp32 options, whose exact dots compile for
10-40 s each, are checked against the shared-memory limit by ``python -m bench --suite static``.)
Compiles run in parallel worker processes, one per CPU, in a subprocess because TRITON_INTERPRET,
which conftest.py sets without a GPU, is read when kernel modules are imported.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from vin_bench.suites import static

SCRIPT = r"""
import json, sys
from vin_bench.suites import static

archs, dtypes, dims = static.ENFORCED_MATRIX
kernels = [k for k in static.KERNELS if not k.name.startswith("anchor")]
jobs = static.matrix_jobs(archs, dtypes, dims, kernels)
control = next(k for k in static.KERNELS if k.name.startswith("anchor"))
jobs.append((control, 72, "bf16", "sm_90"))
rows = static.compile_matrix(jobs)
json.dump(rows, sys.stdout)
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("static")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp / "triton")  # a cold compile, nothing left behind
    env["VIN_BENCH_STATIC_CACHE"] = str(tmp / "static")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


def test_every_pickable_option_compiles_lean(compiled):
    kernel_rows = [r for r in compiled if not r["kernel"].startswith("anchor")]
    covered = {(r["kernel"], r["arch"], r["head_dim"]) for r in kernel_rows if r["dtype"] == "bf16"}
    assert len(covered) == (len(static.KERNELS) - 2) * 2 * 5 + 2, sorted(covered)  # + overlap_fuse on 2 archs
    problems = [f"{r['arch']} {r['dtype']} {r['kernel']} D={r['head_dim']} {r.get('config', '')}: {'; '.join(p)}"
                for r in kernel_rows if (p := static.problems(r))]
    assert not problems, "\n".join(problems)


def test_the_check_sees_spills_and_unpipelined_loops(compiled):
    """Negative control: the dense anchor at D = 72 does not mark its rows 16-byte aligned (the head
    stride 72 is not specialized), so none of its loads is pipelined; held to the kernels' bar it fails."""
    rows = [r for r in compiled if r["kernel"].startswith("anchor")]
    assert rows
    for row in rows:
        found = static.problems({**row, "kernel": "control"})
        assert any("pipelined loops 0 of 1" in p for p in found), found


def test_occupancy_follows_the_cuda_calculator():
    # 255 registers x 256 threads: one block (8 warps) per SM; 128 registers: two; 64 KB + 1 KB of
    # shared memory: three blocks of 4 warps on sm_90 (228 KB), two on sm_80 (164 KB).
    assert static.occupancy("sm_90", 255, 0, 8) == (8, "registers")
    assert static.occupancy("sm_90", 128, 0, 8) == (16, "registers")
    assert static.occupancy("sm_90", 32, 64 * 1024, 4) == (12, "shared")
    assert static.occupancy("sm_80", 32, 64 * 1024, 4) == (8, "shared")
    assert static.occupancy("sm_80", 32, 200 * 1024, 4) == (0, "shared")


def test_problems_names_each_failure():
    row = dict(kernel="chunk fwd", dtype="bf16", arch="sm_90", uses_dot=True, shared_bytes=240_000,
               shared_limit_bytes=232_448, spill_bytes=16, local_loads=2, local_stores=2, tensor_core="mma.sync",
               loops_with_loads=2, pipelined_loops=1)
    found = " | ".join(static.problems(row))
    for text in ("shared memory 240000 B", "spills 16 B", "expected wgmma", "pipelined loops 1 of 2"):
        assert text in found, found
    clean = dict(row, shared_bytes=1, spill_bytes=0, local_loads=0, local_stores=0, tensor_core="wgmma",
                 pipelined_loops=2)
    assert static.problems(clean) == []


def test_anchor_computes_attention():
    """The anchor the static report compares against is dense softmax attention (interpreter, fp32)."""
    from vin_bench.anchors import flash_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 40, 2, 32, generator=gen) for _ in range(3))
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    device = "cpu" if interpreted else "cuda"
    tol = 1e-5 if interpreted else 2e-3  # tf32 dots on a GPU
    block = 16 if interpreted else 64
    o, lse2 = flash_attention.forward(q.to(device), k.to(device), v.to(device), 32**-0.5, block, block, 4, 2)
    o, lse2 = o.cpu(), lse2.cpu()
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * 32**-0.5
    want = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v.double())
    torch.testing.assert_close(o.double(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(lse2.double(), torch.logsumexp(scores, -1) / math.log(2), rtol=tol, atol=tol)
