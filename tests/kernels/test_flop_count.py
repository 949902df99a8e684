"""FlopCounterMode counts every backend's true FLOPs (issue 19.7).

PyTorch registers FLOP formulas for its CUDA SDPA ops only; its CPU flash op (what
``scaled_dot_product_attention`` runs on a CPU, and the sdpa backend) counted 0. vin_kernels registers
PyTorch's own SDPA formulas for it (vin_kernels/sdpa.py), so:

* plain ``scaled_dot_product_attention`` on a CPU counts what PyTorch counts for it on a GPU;
* every backend's forward counts :mod:`vin_kernels.flops` exactly (a multiply-add is 2 FLOPs);
* a backward counts what runs: FlashAttention's 5 products (2.5x the forward) on sdpa and Triton,
  the 4 matmul gradients (2x) of the reference's autograd.

Tiny shapes (Triton runs in the CPU interpreter here).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

import vin_kernels as vk
from vin_kernels import sdpa
from vin_kernels.flops import BACKWARD_FACTOR, chunk_attention_flops, global_attention_flops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B, N, H, D, G = 2, 40, 2, 32, 5
CHUNK, CONTEXT = 12, 5  # 4 chunks, the last short
BACKWARD = {"reference": 2.0, "sdpa": BACKWARD_FACTOR, "triton": BACKWARD_FACTOR}


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _leaves(*shapes, device=DEVICE):
    gen = torch.Generator().manual_seed(7)
    return [torch.randn(*shape, generator=gen).to(device).requires_grad_() for shape in shapes]


@pytest.mark.parametrize("lq, lk", [(64, 64), (48, 80)], ids=["self", "cross"])
def test_plain_cpu_sdpa_counts_what_pytorch_counts_on_a_gpu(lq, lk):
    """Forward and backward of ``F.scaled_dot_product_attention`` on CPU tensors (the CPU flash kernel)."""
    dv = D
    q, k, v = _leaves((2, 3, lq, D), (2, 3, lk, D), (2, 3, lk, dv), device="cpu")
    o = None

    def forward():
        nonlocal o
        o = F.scaled_dot_product_attention(q, k, v)

    forward_flops = _counted(forward)
    assert forward_flops == flop_counter.sdpa_flop_count(q.shape, k.shape, v.shape) == 2 * 2 * 3 * lq * lk * (D + dv)
    backward_flops = _counted(lambda: o.sum().backward())
    assert backward_flops == flop_counter.sdpa_backward_flop_count(o.shape, q.shape, k.shape, v.shape) > 0


def test_cpu_flash_formulas_registered_once():
    """Registering again (a second import, a reload) keeps the one formula and raises nothing."""
    ops = [torch.ops.aten._scaled_dot_product_flash_attention_for_cpu, torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward]
    before = [flop_counter.flop_registry[op] for op in ops]
    sdpa._register_cpu_flash_flops()
    assert [flop_counter.flop_registry[op] for op in ops] == before


@pytest.mark.parametrize("backend", ["reference", "sdpa", "triton"])
@pytest.mark.parametrize("with_globals", [True, False], ids=["globals", "no-globals"])
def test_chunk_attention_counts_its_flops(backend, with_globals):
    q, k, v, gk, gv = _leaves(*[(B, N, H, D)] * 3, (1, G, H, D), (1, G, H, D))
    globals_ = dict(global_k=gk, global_v=gv) if with_globals else {}
    kw = dict(chunk_size=CHUNK, context_size=CONTEXT, context_grad=False, backend=backend, **globals_)
    analytic = chunk_attention_flops(B, N, H, D, CHUNK, CONTEXT, G if with_globals else 0)
    out = {}
    assert _counted(lambda: out.setdefault("o", vk.chunk_attention(q, k, v, **kw))) == analytic
    assert _counted(lambda: out["o"].sum().backward()) == int(BACKWARD[backend] * analytic)


@pytest.mark.parametrize("backend", ["reference", "sdpa", "triton"])
def test_global_attention_counts_its_flops(backend):
    gq, k, v = _leaves((B, G, H, D), (B, N, H, D), (B, N, H, D))
    kw = dict(tokens_per_frame=4, keyframe_stride=3, keyframe_offset=1, backend=backend)
    analytic = global_attention_flops(B, G, H, D, N, 4, 3, 1)
    out = {}
    assert _counted(lambda: out.setdefault("o", vk.global_attention(gq, k, v, **kw))) == analytic
    assert _counted(lambda: out["o"].sum().backward()) == int(BACKWARD[backend] * analytic)


def test_sdpa_with_lse_counts_the_attention_its_backward_runs():
    """``return_lse=True`` on sdpa: an unused lse costs nothing in the backward (2.5x); a used one runs one
    more attention forward and backward for its gradient (``P k`` and ``P^T (dlse q)``): 6x."""
    q, k, v = _leaves(*[(B, N, H, D)] * 3, device="cpu")
    kw = dict(chunk_size=CHUNK, context_size=CONTEXT, return_lse=True, backend="sdpa")
    analytic = chunk_attention_flops(B, N, H, D, CHUNK, CONTEXT, 0)
    for use_lse, factor in ((False, BACKWARD_FACTOR), (True, 1 + 2 * BACKWARD_FACTOR)):
        out = {}
        assert _counted(lambda: out.setdefault("o", vk.chunk_attention(q, k, v, **kw))) == analytic
        o, lse = out["o"]
        assert _counted(lambda: (o.sum() + (lse.sum() if use_lse else 0)).backward()) == int(factor * analytic), use_lse


@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_meta_tensors_count_the_same(backend):
    """Nothing computed: the counts of the default backend and of Triton's registered ops on the meta device."""
    q, k, v = (torch.empty(B, N, H, D, device="meta", requires_grad=True) for _ in range(3))
    out = {}
    analytic = chunk_attention_flops(B, N, H, D, CHUNK, CONTEXT, 0)
    kw = dict(chunk_size=CHUNK, context_size=CONTEXT, backend=backend)
    assert _counted(lambda: out.setdefault("o", vk.chunk_attention(q, k, v, **kw))) == analytic
    assert _counted(lambda: out["o"].sum().backward()) == int(BACKWARD_FACTOR * analytic)
