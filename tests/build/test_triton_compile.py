"""The Triton kernels as a GPU would run them, read off the compiler without a GPU (issues 9 and 17).

Every kernel of vin_kernels.triton is compiled with the installed Triton for sm_86 (a 99 KB part:
RTX 3090, A6000; sm_89 and sm_120 have the same limit) and sm_90 (H100) exactly as a launch
specializes it (``vin_bench/suites/static.py``: the launchers' own arguments on meta tensors,
Triton's own binder and ``tt.divisibility`` specialization), for every option the device-aware
pruning lets a 16-bit launch pick at head dims 32-128 and the option an fp32 launch at D = 128 picks
without autotuning. The test fails when one of them needs more shared memory than its tile model
estimated (the pruning relies on the estimate) or than a block can have, and, for 16-bit, when it
spills registers, loses mma.sync (sm_86) / wgmma (sm_90), or has a loop whose loads are not
pipelined with async copies (fp32: more spills than ``static.FP32_SPILL_BOUND``). The whole matrix
(6 archs, Triton 3.4-3.9, every option) is ``python -m bench --suite static --full-matrix``.
Compiles run in a subprocess pool (one worker per CPU) started without TRITON_INTERPRET, which
conftest.py sets without a GPU and kernel modules read when imported.
"""

import math
import os
import subprocess
import sys

import pytest
import torch

from vin_bench.suites import static


def _enforced_jobs() -> list[dict]:
    (archs16, dtypes16, dims16), (archs32, dtypes32, dims32) = static.ENFORCED_MATRIX
    kernels = [k for k in static.KERNELS if not k.name.startswith("anchor")]
    jobs = static.matrix_jobs(((archs16, dtypes16, dims16),), "pickable", kernels)
    jobs += static.matrix_jobs(((archs32, dtypes32, dims32),), "pick", kernels)
    control = next(k for k in static.KERNELS if k.name.startswith("anchor"))
    jobs += static.matrix_jobs(((("sm_90",), ("bf16",), (72,)),), "pick", [control])
    return jobs


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, monkeypatch_module):
    tmp = tmp_path_factory.mktemp("static")
    monkeypatch_module.setenv("TRITON_CACHE_DIR", str(tmp / "triton"))  # a cold compile, nothing left behind
    monkeypatch_module.setenv("VIN_BENCH_STATIC_CACHE", str(tmp / "static"))
    jobs = _enforced_jobs()
    return jobs, static.compile_matrix(jobs)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_every_pickable_option_compiles_lean(compiled):
    jobs, rows = compiled
    kernel_rows = [r for r in rows if not r["kernel"].startswith("anchor")]
    covered = {(r["kernel"], r["arch"], r["dtype"], r["head_dim"]) for r in kernel_rows}
    per_head_dim = [k for k in static.KERNELS if k.per_head_dim and not k.name.startswith("anchor")]
    (archs16, _, dims16), (archs32, _, dims32) = static.ENFORCED_MATRIX
    assert len(covered) == len(per_head_dim) * (len(archs16) * len(dims16) + len(archs32) * len(dims32)) + 2 * len(archs16)
    assert all(r["pickable"] for r in kernel_rows)
    problems = [f"{r['arch']} {r['dtype']} {r['kernel']} D={r['head_dim']} {r.get('config', '')}: {'; '.join(p)}"
                for r in kernel_rows if (p := static.problems(r))]
    assert not problems, "\n".join(problems)


def test_the_check_sees_spills_and_unpipelined_loops(compiled):
    """Negative control: the dense anchor at D = 72 does not mark its rows 16-byte aligned (the head
    stride 72 is not specialized), so none of its loads is pipelined; held to the kernels' bar it fails."""
    rows = [r for r in compiled[1] if r["kernel"].startswith("anchor")]
    assert rows
    for row in rows:
        found = static.problems({**row, "kernel": "control"})
        assert any("pipelined loops 0 of 1" in p for p in found), found


def test_occupancy_follows_the_cuda_calculator():
    # 255 registers x 256 threads: one block (8 warps) per SM; 128 registers: two; 64 KB + 1 KB of
    # shared memory: three blocks of 4 warps on sm_90 (228 KB), two on sm_80 (164 KB), one on sm_86.
    archs = static.ARCHS
    assert static.occupancy(archs["sm_90"], 255, 0, 8) == (8, "registers")
    assert static.occupancy(archs["sm_90"], 128, 0, 8) == (16, "registers")
    assert static.occupancy(archs["sm_90"], 32, 64 * 1024, 4) == (12, "shared")
    assert static.occupancy(archs["sm_80"], 32, 64 * 1024, 4) == (8, "shared")
    assert static.occupancy(archs["sm_86"], 32, 64 * 1024, 4) == (4, "shared")
    assert static.occupancy(archs["sm_80"], 32, 200 * 1024, 4) == (0, "shared")


def test_problems_names_each_failure():
    row = dict(kernel="chunk fwd", dtype="bf16", arch="sm_90", uses_dot=True, pickable=True, shared_estimate=230_000,
               shared_bytes=240_000, shared_limit_bytes=232_448, spill_bytes=16, local_loads=2, local_stores=2,
               tensor_core="mma.sync", loops_with_loads=2, pipelined_loops=1)
    found = " | ".join(static.problems(row))
    for text in ("240000 B > the estimate 230000 B", "shared memory 240000 B > 232448 B", "spills 16 B",
                 "expected wgmma", "pipelined loops 1 of 2"):
        assert text in found, found
    clean = dict(row, shared_bytes=1, spill_bytes=0, local_loads=0, local_stores=0, tensor_core="wgmma",
                 pipelined_loops=2)
    assert static.problems(clean) == []
    assert static.problems(dict(clean, arch="sm_100")) == ["tensor cores: wgmma, expected tcgen05"]
    # An option the pruning drops is held only to its estimate; fp32 only to shared memory and the spill bound.
    assert static.problems(dict(row, pickable=False, shared_bytes=1)) == []
    fp32 = dict(clean, dtype="fp32", tensor_core="none", spill_bytes=static.FP32_SPILL_BOUND + 8)
    assert static.problems(fp32) == [f"fp32 spills {static.FP32_SPILL_BOUND + 8} B > {static.FP32_SPILL_BOUND} B"]


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


KERNEL_MODULES = "vin_kernels.triton.chunk_attention, vin_kernels.triton.global_attention, " \
                 "vin_kernels.triton.merge_attention, vin_kernels.triton.overlap_fuse, vin_kernels.triton.tiles"


def test_the_kernels_import_without_a_gpu():
    """Compiled mode (no TRITON_INTERPRET), no GPU: decorating the kernels asks no driver (Triton 3.2
    and 3.3 did: "0 active drivers"; bench/triton_versions.sh + the static suite check 3.4-3.9)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", f"import {KERNEL_MODULES}"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]


def test_an_older_triton_fails_with_one_clear_message(tmp_path):
    """A triton older than 3.4 (a stand-in package reporting 3.3.0): vin_kernels imports, the triton
    backend is unavailable and says why, importing a kernel module raises ImportError saying the same."""
    (tmp_path / "triton" / "language").mkdir(parents=True)
    (tmp_path / "triton" / "__init__.py").write_text("__version__ = '3.3.0'\n")
    (tmp_path / "triton" / "language" / "__init__.py").write_text("")
    (tmp_path / "triton-3.3.0.dist-info").mkdir()
    (tmp_path / "triton-3.3.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: triton\nVersion: 3.3.0\n")
    script = f"""
import vin_kernels
print(vin_kernels.backends()["triton"])
try:
    import {KERNEL_MODULES}
except ImportError as error:
    print("ImportError:", error)
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    message = "vin_kernels' Triton kernels need triton >= 3.4 (torch >= 2.8 brings it); triton 3.3.0 is installed"
    status, error = out.stdout.strip().splitlines()
    assert status.startswith("triton: unavailable (" + message), status
    assert error.startswith("ImportError: " + message), error
