"""The CUDA architectures the kernels are built for, with the limits tiles and occupancy depend on.

Plain data (no triton import): the device-aware tile pruning (:mod:`vin_kernels.triton.tiles`) and
the static report (``python -m bench --suite static``) share it. Numbers: CUDA C++ Programming
Guide, "Compute Capabilities" (technical specifications per compute capability); the shared memory
per block is the opt-in maximum that ``cudaFuncSetAttribute`` allows and Triton requests, what
``torch.cuda.get_device_properties(d).shared_memory_per_block_optin`` reports on such a device.
"""

from __future__ import annotations

from dataclasses import dataclass

KB = 1024


@dataclass(frozen=True)
class Arch:
    """One compute capability's limits."""

    name: str  # "sm_90"
    capability: int  # 90, what Triton's GPUTarget takes
    shared_per_block: int  # opt-in maximum of dynamic shared memory per block, bytes
    shared_per_sm: int
    max_warps_per_sm: int
    max_blocks_per_sm: int
    tensor_core: str  # the instruction a 16-bit tl.dot should compile to: mma.sync, wgmma or tcgen05
    gpus: str = ""
    registers_per_sm: int = 65536
    registers_per_thread: int = 255  # ptxas caps a thread here and, with the block size Triton gives it, at 65536 per block
    threads_per_block: int = 1024
    register_unit: int = 256  # registers are allocated per warp in units of 256
    warp_unit: int = 4  # ... to groups of 4 warps
    shared_unit: int = 128
    shared_reserved_per_block: int = 1024  # the runtime reserves 1 KB of shared memory per block (sm_80+)


ARCHS = {
    "sm_80": Arch("sm_80", 80, 163 * KB, 164 * KB, 64, 32, "mma.sync", "A100, A30"),
    "sm_86": Arch("sm_86", 86, 99 * KB, 100 * KB, 48, 16, "mma.sync", "RTX 3090, RTX A6000, A40, A10"),
    "sm_89": Arch("sm_89", 89, 99 * KB, 100 * KB, 48, 24, "mma.sync", "RTX 4090, L40S, L4"),
    "sm_90": Arch("sm_90", 90, 227 * KB, 228 * KB, 64, 32, "wgmma", "H100, H200"),
    "sm_100": Arch("sm_100", 100, 227 * KB, 228 * KB, 64, 32, "tcgen05", "B200, GB200"),
    "sm_120": Arch("sm_120", 120, 99 * KB, 100 * KB, 48, 32, "mma.sync", "RTX 5090, RTX PRO 6000"),
}


def occupancy(arch: Arch, registers: int, shared: int, num_warps: int) -> tuple[int, str]:
    """``(resident warps per SM, what limits them)`` for blocks of ``num_warps`` warps (the CUDA
    occupancy calculator).

    Blocks per SM = min over: ``max_blocks``, ``max_warps / num_warps``; registers:
    ``floor(floor(65536 / ceil(32 * registers, 256), 4) / num_warps)``; shared memory:
    ``shared_per_sm / ceil(shared + 1 KB, 128)`` (0 when ``shared`` exceeds the per-block maximum).
    """
    by_warps = min(arch.max_blocks_per_sm, arch.max_warps_per_sm // num_warps)
    per_warp = -(-registers * 32 // arch.register_unit) * arch.register_unit
    warps_by_regs = (arch.registers_per_sm // per_warp) // arch.warp_unit * arch.warp_unit
    by_regs = warps_by_regs // num_warps
    block_shared = -(-(shared + arch.shared_reserved_per_block) // arch.shared_unit) * arch.shared_unit
    by_shared = arch.shared_per_sm // block_shared if shared <= arch.shared_per_block else 0
    blocks, limit = min((by_warps, "warps"), (by_regs, "registers"), (by_shared, "shared"), key=lambda x: x[0])
    return blocks * num_warps, limit
