"""vin.parallel: :func:`vin.sample` split across processes on torch.distributed, with the same result.

* :func:`sample` — the sampler; call it on every rank of a process group (gloo on CPUs, NCCL on GPUs).
* :func:`split`, :class:`Plan` — which rank computes which chunks, and every message of a step.
* :func:`launch` — start ``N`` local processes forming a group and run a function on each.
* ``python -m vin.parallel --nproc-per-node N ...`` — the command line (also under ``torchrun``).
"""

from .launch import launch
from .plan import Halo, Plan, Shard, Transfer, split
from .sampling import SampleStats, sample

__all__ = ["sample", "SampleStats", "split", "Plan", "Shard", "Halo", "Transfer", "launch"]
