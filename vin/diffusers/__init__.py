"""vin.diffusers: chunked attention, long videos and VIN global tokens for diffusers video transformers.

Needs the optional extra ``diffusers`` (``pip install "vin-kernels[diffusers]"``). Three tools, each
installed on an existing transformer and removed again by a handle, with no change to the model's
weights or to the pipeline that calls it:

* :func:`chunked_attention` — every video self-attention runs as :func:`vin_kernels.chunk_attention`
  (chunks of latent frames, optional context frames before each chunk, optional global tokens).
* :class:`LongVideo` — an unmodified pipeline asked for more frames than its model takes in one
  piece denoises overlapping windows of latent frames, batched in one transformer call, and blends
  their predictions with :func:`vin_kernels.overlap_fuse`.
* :class:`VINAdapter` — a :class:`vin.VIN` that reads the keyframes of the noisy latent video and
  gives every video self-attention of a frozen transformer per-layer global keys/values through a
  zero-initialized gate (attached untrained, it changes nothing), trained alone with
  :meth:`VINAdapter.training_loss`.

:func:`installed` lists the tools installed on a transformer, :func:`remove` removes them all (also
those whose handle was dropped).

Supported transformers: ``WanTransformer3DModel`` (Wan 2.1, Wan 2.2), ``LTXVideoTransformer3DModel``,
``HunyuanVideoTransformer3DModel`` and ``CogVideoXTransformer3DModel``.
"""

from __future__ import annotations

try:
    import diffusers as _diffusers  # noqa: F401  (absolute import: the library, not this package)
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "vin.diffusers needs the diffusers package: pip install 'vin-kernels[diffusers]'"
    ) from error

from ._installed import installed, remove
from .adapter import VINAdapter
from .attention import ChunkedAttention, VideoInputs, chunked_attention, supported_transformers
from .long_video import LongVideo

__all__ = [
    "ChunkedAttention",
    "LongVideo",
    "VINAdapter",
    "VideoInputs",
    "chunked_attention",
    "installed",
    "remove",
    "supported_transformers",
]
