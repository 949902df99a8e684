"""Tile options that fit the device a kernel runs on.

Every autotuned kernel lists its options ``{element bytes: [(BLOCK_M, BLOCK_N, num_warps, num_stages),
...]}`` in order of preference, with a model of the shared memory each option needs
(:class:`Tuning`). Before Triton autotunes a launch, the pruner keeps the options listed for the
element size of the kernel's first tensor whose estimated shared memory fits the device's opt-in
maximum per block (``torch.cuda.get_device_properties(d).shared_memory_per_block_optin``; the table
:data:`ARCHS` for the static report's targets) and whose warps fit a block, less the few that fit
but were measured to spill on that kind of arch at that head dim (:attr:`Tuning.avoid`);
``VIN_KERNELS_AUTOTUNE=0`` keeps the first of them. Registers need no pruning: Triton tells ptxas
the block size, and ptxas caps the registers per thread so that a block fits the register file
(what it cannot keep there spills, which ``python -m bench --suite static`` reports). When no
option fits, the launch raises :class:`TileFitError` naming the device, dtype and head dim instead
of Triton's OutOfResources, and :func:`unfit_reason` lets dispatch refuse the Triton backend before
anything runs (``auto`` then takes ``sdpa``).

The shared-memory models are upper bounds of what Triton allocates, checked against the compiled
``metadata.shared`` of every listed option on every arch of :data:`ARCHS` (Triton 3.6 and 3.9,
``python -m bench --suite static --full-matrix``; the picks on 3.4, 3.5, 3.7, 3.8 with ``--full``)
and in CI by ``tests/build/test_triton_compile.py``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import triton

from .archs import ARCHS, KB, Arch
from .attention_core import INTERPRETED, head_dim_tiles

Option = tuple[int, int, int, int]  # (BLOCK_M, BLOCK_N, num_warps, num_stages)


@lru_cache(maxsize=None)
def _cuda_arch(index: int) -> Arch:
    props = torch.cuda.get_device_properties(index)
    capability = props.major * 10 + props.minor
    known = ARCHS.get(f"sm_{capability}")
    shared = getattr(props, "shared_memory_per_block_optin", 0) or (known.shared_per_block if known else 48 * KB)
    return Arch(
        name=f"sm_{capability}", capability=capability, shared_per_block=shared,
        shared_per_sm=getattr(props, "shared_memory_per_multiprocessor", 0) or shared,
        max_warps_per_sm=props.max_threads_per_multi_processor // 32,
        max_blocks_per_sm=known.max_blocks_per_sm if known else 16,
        tensor_core=known.tensor_core if known else "", gpus=props.name,
    )


def device_arch(device: torch.device) -> Arch | None:
    """The limits the options of a launch on ``device`` must fit: the CUDA device's own, or None
    (CPU interpreter, meta tensors: nothing to fit; the static report passes its target to
    :meth:`Tuning.fitting` itself)."""
    if device.type != "cuda":
        return None
    return _cuda_arch(device.index if device.index is not None else torch.cuda.current_device())


def autotune_enabled() -> bool:
    """False when ``VIN_KERNELS_AUTOTUNE=0``: a launch takes the first option that fits, untimed."""
    return os.environ.get("VIN_KERNELS_AUTOTUNE", "1") != "0"


class TileFitError(ValueError):
    """No tile option of a kernel fits the device (shared memory per block) for the dtype and head dim."""


def _dtype_name(element_size: int) -> str:
    return {2: "16-bit (fp16/bf16)", 4: "float32"}.get(element_size, f"{element_size}-byte")


@dataclass(frozen=True)
class Tuning:
    """The options of one autotuned kernel and the model of the shared memory each needs.

    Attributes:
        kernel: the name the static report gives the kernel ("chunk bwd dq").
        op: the public op that launches it ("chunk_attention").
        options: ``{element bytes: (option, ...)}``, most preferred first.
        shared: ``shared(option, d1, d2, element_bytes, arch) -> bytes``: an upper bound of the
            dynamic shared memory Triton allocates for the option at head-dim tiles ``d1 + d2``
            (``d2 = 0`` without a tail tile) on ``arch``.
        avoid: ``((option, tensor-core instruction, head dims), ...)``: where an option fits but was
            measured to spill (the static report): it is not picked on archs with that instruction
            at those head dims.
    """

    kernel: str
    op: str
    options: dict[int, tuple[Option, ...]]
    shared: Callable[[Option, int, int, int, Arch], int]
    avoid: tuple[tuple[Option, str, tuple[int, ...]], ...] = ()

    def estimates(self, arch: Arch, element_size: int, head_dim: int) -> list[tuple[Option, int]]:
        """``(option, estimated shared bytes on arch)`` of every option listed for the element size."""
        d1, d2 = head_dim_tiles(head_dim)
        return [(o, self.shared(o, d1, d2, element_size, arch)) for o in self.options.get(element_size, ())]

    def fitting(self, arch: Arch | None, element_size: int, head_dim: int) -> list[Option]:
        """The listed options that fit ``arch`` and are not avoided there (all of them without an arch), in order."""
        if arch is None:
            return list(self.options.get(element_size, ()))
        avoided = {o for o, core, dims in self.avoid if core == arch.tensor_core and head_dim in dims}
        return [o for o, need in self.estimates(arch, element_size, head_dim)
                if need <= arch.shared_per_block and o[2] * 32 <= arch.threads_per_block and o not in avoided]

    def problem(self, arch: Arch | None, element_size: int, head_dim: int) -> str | None:
        """Why no option fits (None if one does)."""
        if arch is None or self.fitting(arch, element_size, head_dim):
            return None
        need = min(n for _, n in self.estimates(arch, element_size, head_dim))
        return (f"no tile option of the Triton kernel '{self.kernel}' fits {arch.name} ({arch.gpus}): "
                f"{_dtype_name(element_size)} inputs at head dim {head_dim} need at least {need} B of shared memory "
                f"per block, the device allows {arch.shared_per_block} B; use backend='sdpa'")

    def candidates(self, arch: Arch | None, element_size: int, head_dim: int) -> list[Option]:
        """What a launch autotunes over: the fitting options (the first only without autotuning).

        Raises:
            TileFitError: none fits.
        """
        fitting = self.fitting(arch, element_size, head_dim)
        if not fitting:
            raise TileFitError(self.problem(arch, element_size, head_dim))
        return fitting if autotune_enabled() else fitting[:1]


def _attention_shared(streamed: str, resident: int, tcgen05_copies: int):
    """Shared-memory model of an attention kernel whose loop streams two ``[rows, D]`` tiles per
    step (``streamed``: "N", key blocks (K, V), or "M", query blocks (Q, dO) with their fp32 LSE and
    delta) and keeps ``resident`` ``[rows of the other kind, D]`` tiles loaded before the loop.

    ``stages`` buffers of the streamed tiles plus the resident tiles is what Triton allocates with
    wgmma (sm_90: equal, bf16, D = 128, Triton 3.9) and bounds what it allocates with mma.sync (it
    keeps q / dO in registers: 70-90% of it). tcgen05 (sm_100) reads both operands from shared
    memory: up to ``tcgen05_copies`` more ``[rows, D]`` tiles, a ``[BLOCK_M, BLOCK_N]`` probability
    tile and 4 KB for its barriers. Measured over the estimate without them (bf16, sm_100): dq +16 KB
    (D = 128, Triton 3.9) and +24 KB (D = 72/96, 3.6): two ``[BLOCK_N, D]`` tiles bound it; dk/dv up to
    +23 KB (3.6, D = 72): four ``[BLOCK_M, D]``; the forward's 128x64 tile +18 KB on Triton 3.4 (its
    ``P`` in shared memory), 0.5 KB on 3.5-3.9.
    """

    def shared(option: Option, d1: int, d2: int, element_size: int, arch: Arch) -> int:
        block_m, block_n, _, stages = option
        d = d1 + d2
        loop_rows, fixed_rows = (block_n, block_m) if streamed == "N" else (block_m, block_n)
        per_stage = 2 * loop_rows * d * element_size + (2 * loop_rows * 4 if streamed == "M" else 0)
        need = stages * per_stage + resident * fixed_rows * d * element_size
        if arch.tensor_core == "tcgen05":
            rows = block_n if streamed == "N" else block_m
            need += tcgen05_copies * rows * d * element_size + block_m * block_n * element_size + 4096
        return need

    return shared


shared_fwd = _attention_shared("N", 1, 0)  # q resident; K, V streamed
shared_dq = _attention_shared("N", 2, 2)  # q, dO resident; K, V streamed
shared_dkdv = _attention_shared("M", 2, 4)  # k, v resident; Q, dO, LSE, delta streamed

TUNINGS: dict[str, Tuning] = {}  # by kernel name, filled as the kernel modules are imported

# Where an option of a kernel fits but was measured to spill (bf16, python -m bench --suite static
# --full-matrix, Triton 3.6 and 3.9): not picked on archs with that tensor-core instruction at those
# head dims (Tuning.avoid). At D = 32: chunk forward / dq 128x64 on 8 warps 8 B with mma.sync (3.9
# sm_86/89), forward 64x64/4/2 16-40 B with tcgen05 (3.6/3.9 sm_100), global forward 64x64/4/2 16 B
# with mma.sync (3.6 sm_86/89) and 64x64 on 4 warps 8-40 B with tcgen05; at D = 80: dglobal
# 32x64/4/2 8 B with tcgen05 (3.6 sm_100). (Kept here, not beside the options: a line added to a
# kernel's module moves its kernels' line numbers, which Triton's cache keys include.)
AVOID = {
    "chunk fwd": (((128, 64, 8, 3), "mma.sync", (32,)), ((64, 64, 4, 2), "tcgen05", (32,))),
    "chunk bwd dq": (((128, 64, 8, 2), "mma.sync", (32,)),),
    "chunk bwd dglobal": (((32, 64, 4, 2), "tcgen05", (80,)),),
    "global fwd": (((64, 64, 4, 2), "mma.sync", (32,)), ((64, 64, 4, 2), "tcgen05", (32,)),
                   ((64, 64, 4, 3), "tcgen05", (32,))),
}


def autotune(kernel: str, op: str, options: dict[int, list[Option]], shared, key: list[str]):
    """``@triton.autotune`` over ``options`` pruned to the device (see the module docstring and
    :class:`Tuning` for ``shared``; the options to avoid come from :data:`AVOID`).

    The kernel must take ``HEAD_DIM`` as a keyword argument. In the interpreter one small tile
    stands for all options.
    """
    tuning = Tuning(kernel, op, {size: tuple(tiles) for size, tiles in options.items()}, shared, AVOID.get(kernel, ()))
    TUNINGS[kernel] = tuning
    listed = {size: [(16, 16, 1, 1)] for size in options} if INTERPRETED else tuning.options
    configs = {o: triton.Config({"BLOCK_M": o[0], "BLOCK_N": o[1]}, num_warps=o[2], num_stages=o[3])
               for tiles in listed.values() for o in tiles}

    def prune(configs_, named_args, **kwargs):
        tensor = next(v for v in named_args.values() if hasattr(v, "element_size"))
        if INTERPRETED:
            return [configs[o] for o in listed[tensor.element_size()]]
        chosen = tuning.candidates(device_arch(tensor.device), tensor.element_size(), kwargs["HEAD_DIM"])
        return [configs[o] for o in chosen]

    def decorate(fn):
        tuner = triton.autotune(configs=list(configs.values()), key=key, prune_configs_by={"early_config_prune": prune})(fn)
        tuner.vin_tuning = tuning  # the static report reads the options and models from the kernel object
        return tuner

    return decorate


@lru_cache(maxsize=None)
def _unfit_reason(op: str, arch: Arch, element_size: int, head_dim: int) -> str | None:
    importlib.import_module(f"{__package__}.{op}")  # the op's kernel module registers its tunings
    for tuning in TUNINGS.values():
        if tuning.op == op and (problem := tuning.problem(arch, element_size, head_dim)):
            return problem
    return None


def unfit_reason(op: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why some kernel ``op`` launches (forward or backward) has no tile option that fits ``device``
    for ``dtype`` inputs at ``head_dim``; None when every kernel has one."""
    arch = device_arch(device)
    if arch is None:
        return None
    return _unfit_reason(op, arch, torch.empty((), dtype=dtype).element_size(), head_dim)
