"""vin: the Video Interface Network model layer, built only on the public vin_kernels API.

:class:`VideoDiT` (a latent video DiT whose self-attention is chunked), :class:`VIN` (the global
tokens), :func:`training_loss`, :func:`sample` (DDIM, chunks in parallel, early fusion),
:mod:`vin.flops` (analytic FLOPs) and :mod:`vin.presets` (``paper()``, ``tiny()``).
"""

from . import flops, presets
from .config import DiTConfig, VINConfig
from .diffusion import DiffusionSchedule
from .dit import VideoDiT
from .interface import VIN
from .sampling import sample
from .training import training_loss

__all__ = [
    "DiTConfig",
    "VINConfig",
    "DiffusionSchedule",
    "VideoDiT",
    "VIN",
    "sample",
    "training_loss",
    "flops",
    "presets",
]
