"""Device-aware tile options (vin_kernels.triton.tiles, design.md "Backends and dispatch").

A fake GPU stands in for a real one: ``torch.cuda.get_device_properties`` is replaced by the
properties of a 99 KB part (RTX 3090 / A6000 / L40S / RTX 5090 report 101,376 B of opt-in shared
memory per block). Whether the shared-memory estimates bound what Triton really allocates is checked
against the compiler in tests/build/test_triton_compile.py.
"""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import vin_kernels as vk
from vin_kernels import dispatch
from vin_kernels.checks import TRITON_HEAD_DIMS
from vin_kernels.triton import chunk_attention, global_attention, tiles  # noqa: F401 (registers the tunings)
from vin_kernels.triton.archs import ARCHS

NINETY_NINE_KB = 101_376


def _props(shared: int, name: str = "Fake GeForce RTX 3090"):
    return SimpleNamespace(name=name, major=8, minor=6, shared_memory_per_block_optin=shared,
                           shared_memory_per_multiprocessor=shared + 1024, max_threads_per_multi_processor=1536)


@pytest.fixture
def fake_gpu(monkeypatch):
    """``set(shared_bytes)``: the fake device 0's opt-in shared memory per block (99 KB to start)."""
    current = {"props": _props(NINETY_NINE_KB)}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index=None: current["props"])
    monkeypatch.setattr(dispatch, "_status", lambda name: (True, "a fake GPU"))
    tiles._cuda_arch.cache_clear()
    tiles._unfit_reason.cache_clear()

    def set_shared(shared: int):
        current["props"] = _props(shared)
        tiles._cuda_arch.cache_clear()
        tiles._unfit_reason.cache_clear()

    yield set_shared
    tiles._cuda_arch.cache_clear()
    tiles._unfit_reason.cache_clear()


GPU = torch.device("cuda", 0)


def test_the_fake_device_is_read_as_a_99kb_sm86(fake_gpu):
    arch = tiles.device_arch(GPU)
    assert (arch.name, arch.shared_per_block, arch.gpus) == ("sm_86", NINETY_NINE_KB, "Fake GeForce RTX 3090")
    assert ARCHS["sm_86"].shared_per_block == ARCHS["sm_89"].shared_per_block == ARCHS["sm_120"].shared_per_block == NINETY_NINE_KB


@pytest.mark.parametrize("element_size", [2, 4], ids=["16-bit", "fp32"])
def test_every_kernel_has_an_option_that_fits_99kb_at_every_head_dim(fake_gpu, element_size):
    arch = tiles.device_arch(GPU)
    for tuning in tiles.TUNINGS.values():
        for head_dim in TRITON_HEAD_DIMS:
            fitting = tuning.fitting(arch, element_size, head_dim)
            assert fitting, f"{tuning.kernel}: nothing fits 99 KB at D={head_dim}"
            estimates = dict(tuning.estimates(arch, element_size, head_dim))
            assert all(estimates[o] <= NINETY_NINE_KB for o in fitting)
            avoided = {o for o, core, dims in tuning.avoid if core == "mma.sync" and head_dim in dims}
            assert all(estimates[o] > NINETY_NINE_KB or o in avoided
                       for o in tuning.options[element_size] if o not in fitting)


def test_an_option_measured_to_spill_is_not_picked_where_it_spills(fake_gpu):
    """chunk fwd's 128x64/8/3 fits a 99 KB sm_86 at D = 32 but spilled there (static report): the
    pruning skips it at D = 32 only; on an H100 (wgmma) it stays the first choice."""
    tuning = tiles.TUNINGS["chunk fwd"]
    first = tuning.options[2][0]
    assert (first, "mma.sync", (32,)) in tuning.avoid
    assert first not in tuning.fitting(tiles.device_arch(GPU), 2, 32)
    assert tuning.fitting(ARCHS["sm_90"], 2, 32)[0] == first
    fake_gpu(ARCHS["sm_80"].shared_per_block)  # an sm_86 with an A100's shared memory: 128x64/8/3 fits at D = 64
    assert tuning.fitting(tiles.device_arch(GPU), 2, 64)[0] == first


def test_autotune_off_takes_the_first_option_that_fits(fake_gpu, monkeypatch):
    arch = tiles.device_arch(GPU)
    # Cases where the most preferred option does not fit 99 KB (it does on an H100): the test's point.
    pruned = [(t, size, d) for t in tiles.TUNINGS.values() for size in (2, 4) for d in TRITON_HEAD_DIMS
              if t.options[size][0] not in t.fitting(arch, size, d) and t.options[size][0] in t.fitting(ARCHS["sm_90"], size, d)]
    assert pruned
    monkeypatch.setenv("VIN_KERNELS_AUTOTUNE", "0")
    for tuning, size, head_dim in pruned:
        fitting = tuning.fitting(arch, size, head_dim)
        assert tuning.candidates(arch, size, head_dim) == fitting[:1]
    monkeypatch.setenv("VIN_KERNELS_AUTOTUNE", "1")
    tuning, size, head_dim = pruned[0]
    assert tuning.candidates(arch, size, head_dim) == tuning.fitting(arch, size, head_dim)


def test_a_configuration_that_cannot_fit_raises_a_clear_error(fake_gpu):
    fake_gpu(32 * 1024)  # a device with 32 KB per block: no fp32 option of the backward fits at D = 128
    tuning = tiles.TUNINGS["chunk bwd dk/dv"]
    with pytest.raises(tiles.TileFitError, match=r"'chunk bwd dk/dv' fits sm_86 \(Fake GeForce RTX 3090\): float32 "
                                                 r"inputs at head dim 128 need at least \d+ B .* allows 32768 B"):
        tuning.candidates(tiles.device_arch(GPU), 4, 128)
    # Dispatch refuses the backend before anything runs: by name it raises, auto takes sdpa.
    with pytest.raises(ValueError, match=r"chunk_attention: backend='triton': no tile option .* float32 inputs at "
                                         r"head dim 128"):
        dispatch.implementation("chunk_attention", "triton", GPU, head_dim=128, dtype=torch.float32)
    assert dispatch.select_backend("chunk_attention", "auto", GPU, head_dim=128, dtype=torch.float32) == "sdpa"
    assert dispatch.select_backend("global_attention", "auto", GPU, head_dim=128, dtype=torch.float32) == "sdpa"
    fake_gpu(NINETY_NINE_KB)
    assert dispatch.select_backend("chunk_attention", "auto", GPU, head_dim=128, dtype=torch.float32) == "triton"


def test_the_public_ops_ask_dispatch_with_their_dtype(monkeypatch):
    """chunk_attention / global_attention pass dtype and head dim to dispatch (what the fit check needs)."""
    seen = []
    real = dispatch.implementation

    def spy(op, backend, device, head_dim=None, dtype=None):
        seen.append((op, head_dim, dtype))
        return real(op, backend, device, head_dim, dtype)

    monkeypatch.setattr(vk.ops.chunk_attention, "implementation", spy)
    monkeypatch.setattr(vk.ops.global_attention, "implementation", spy)
    q = torch.randn(1, 8, 1, 32, dtype=torch.float32)
    vk.chunk_attention(q, q, q, chunk_size=4, backend="reference")
    vk.global_attention(q[:, :2], q, q, tokens_per_frame=2, keyframe_stride=2, backend="reference")
    assert seen == [("chunk_attention", 32, torch.float32), ("global_attention", 32, torch.float32)]


PRUNE_SCRIPT = r"""
import json, os
from types import SimpleNamespace
import torch
props = SimpleNamespace(name="Fake RTX 3090", major=8, minor=6, shared_memory_per_block_optin=0,
                        shared_memory_per_multiprocessor=102400, max_threads_per_multi_processor=1536)
torch.cuda.get_device_properties = lambda index=None: props
from vin_kernels.triton import global_attention as ga, tiles
from vin_kernels.triton.attention_core import head_meta

class FakeTensor:  # what the pruner reads of a launch's first tensor argument
    device = torch.device("cuda", 0)
    def __init__(self, dtype): self.dtype = dtype
    def element_size(self): return torch.empty((), dtype=self.dtype).element_size()

kernel = ga._bwd_dq_kernel
out = {}
for shared, autotune in ((101376, "1"), (101376, "0"), (16384, "1")):
    props.shared_memory_per_block_optin = shared
    os.environ["VIN_KERNELS_AUTOTUNE"] = autotune
    tiles._cuda_arch.cache_clear()
    for dtype in (torch.bfloat16, torch.float32):
        kernel.nargs = {"GQ": FakeTensor(dtype)}
        try:
            pruned = kernel.prune_configs(head_meta(torch.empty(1, 1, 1, 128, dtype=dtype, device="meta")))
            found = [[c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages] for c in pruned]
        except Exception as error:
            found = f"{type(error).__name__}: {error}"
        out.setdefault(f"{shared} {autotune}", {})[str(dtype)] = found
print(json.dumps(out))
"""


def test_the_autotuner_prunes_to_the_device():
    """Triton's autotuner itself, as a launch on a 99 KB GPU runs it (compiled kernels, not the
    interpreter): global dq's options at D = 128, pruned; autotuning off; a device too small."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", PRUNE_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout)
    tuning = tiles.TUNINGS["global bwd dq"]
    fit16, fit32 = ([list(o) for o in tuning.fitting(ARCHS["sm_86"], size, 128)] for size in (2, 4))
    assert found["101376 1"] == {"torch.bfloat16": fit16, "torch.float32": fit32}
    assert found["101376 0"] == {"torch.bfloat16": fit16[:1], "torch.float32": fit32[:1]}
    assert all(text.startswith("TileFitError: no tile option of the Triton kernel 'global bwd dq' fits sm_86")
               for text in found["16384 1"].values()), found
