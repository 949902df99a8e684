"""vin-kernels: GPU kernels for long-video diffusion transformers with Video Interface Networks.

Public API: the ops :func:`chunk_attention`, :func:`global_attention`, :func:`merge_attention`,
:func:`overlap_fuse`; :class:`ChunkLayout`, which holds all chunk/window/keyframe index math;
:func:`backends`, which says which implementations can run here. :mod:`vin_kernels.reference` is the
pure-PyTorch specification of every op.
"""

from . import reference
from .dispatch import backends
from .layout import ChunkLayout
from .ops.chunk_attention import chunk_attention
from .ops.global_attention import global_attention
from .ops.merge_attention import merge_attention
from .ops.overlap_fuse import overlap_fuse

__version__ = "0.1.0"

__all__ = [
    "ChunkLayout",
    "backends",
    "chunk_attention",
    "global_attention",
    "merge_attention",
    "overlap_fuse",
    "reference",
    "__version__",
]
