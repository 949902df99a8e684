"""LongVideo: an unmodified diffusers pipeline makes videos longer than its transformer takes in one piece."""

from __future__ import annotations

from numbers import Real

import torch

from vin_kernels import ChunkLayout

from . import _installed
from ._families import bind_forward, family_of
from .attention import LONG_VIDEO_CALLS, _require_int, check_backend

__all__ = ["LongVideo"]


class LongVideo:
    """Every forward of ``transformer`` on a long video runs as overlapping windows, blended back into one video.

    Installed on a transformer (forward hooks; nothing else changes), so the pipeline that calls it
    stays as it is. A forward whose video has ``F > window`` latent frames is cut into the windows of
    ``ChunkLayout.windows(F, window, overlap)``; the windows of all ``B`` videos run as one batch of
    ``B * n`` short videos through the transformer (each window gets positions ``0 .. window-1``, so a
    model limited to ``window`` frames, e.g. by Wan's ``rope_max_seq_len``, never sees more), and
    their predictions are blended into one prediction per video with
    :func:`vin_kernels.overlap_fuse` (the paper's linear ramp over every overlap). The sampler then
    updates the whole video as usual. Forwards with ``F <= window`` pass through untouched.

    **Fusion schedule.** By default (``fuse_until=None``) the ramp blends the windows at every step.
    The paper blends only in early steps (``t > t_alpha``) and then lets the windows evolve
    independently, because its windows keep separate copies of the shared frames (and a VIN keeps
    them consistent). A pipeline keeps one latent per frame, so independent windows cannot exist
    here: after ``fuse_until`` each frame would take its owning window's prediction alone, a hard
    cut at every window border that a model without global tokens does nothing to hide. Blending at
    every step keeps every frame's update a weighted mean of the windows covering it, so overlapping
    windows agree at the end. ``fuse_until=t`` (in the pipeline's timestep units, e.g. 0..1000 for
    Wan) gives the paper's early-fusion schedule: ramp while ``timestep > t``, owner windows after.

    Args:
        transformer: a supported diffusers video transformer (see
            :func:`vin.diffusers.supported_transformers`; models with a temporal patch are not supported).
        window: latent frames per window (what the model handles in one piece). overlap: latent
            frames consecutive windows share, ``0 <= overlap < window``.
        fuse_until: None (blend every step) or a timestep at and below which overlaps are no longer blended.
        backend: vin_kernels backend of :func:`vin_kernels.overlap_fuse` (checked here, as in
            :func:`vin.diffusers.chunked_attention`).

    Composes with :func:`vin.diffusers.chunked_attention` on the same transformer (each window is
    then chunked) and with a :class:`vin.diffusers.VINAdapter`, whose VIN reads the whole video and
    gives the same global tokens to all windows of a video. For two-transformer pipelines (Wan 2.2
    A14B: ``transformer`` and ``transformer_2``) install one ``LongVideo`` on each.

    Example::

        with vin.diffusers.LongVideo(pipe.transformer, window=21, overlap=8):
            frames = pipe(prompt, num_frames=321).frames[0]
    """

    def __init__(
        self, transformer, *, window: int, overlap: int, fuse_until: float | None = None, backend: str = "auto"
    ):
        self.family = family_of(transformer)
        self.window = _require_int("window", window, 1)
        self.overlap = _require_int("overlap", overlap, 0)
        if overlap >= window:
            raise ValueError(f"overlap must be smaller than window, got overlap={overlap} >= window={window}")
        if fuse_until is not None and (isinstance(fuse_until, bool) or not isinstance(fuse_until, Real)):
            raise TypeError(f"fuse_until must be None or a timestep (a number), got {fuse_until!r}")
        check_backend(backend, ("overlap_fuse",))
        installed = _installed.lookup(transformer, "long_video")
        if installed is not None:  # windows of windows make no sense
            raise ValueError(
                f"a LongVideo is already installed on this transformer ({installed!r}); remove it first "
                "(handle.remove(), or vin.diffusers.remove(transformer) without the handle)"
            )
        self.fuse_until = None if fuse_until is None else float(fuse_until)
        self.backend = backend
        self.transformer = transformer
        self._call: tuple[ChunkLayout, bool] | None = None
        # prepend: cut into windows before any other pre-hook (chunked_attention's) reads the shapes
        self._pre = transformer.register_forward_pre_hook(self._pre_forward, with_kwargs=True, prepend=True)
        self._post = transformer.register_forward_hook(self._post_forward, with_kwargs=True, always_call=True)
        self._removed = False
        _installed.register(transformer, "long_video", self)

    def layout(self, num_frames: int) -> ChunkLayout:
        """The windows a video of ``num_frames`` latent frames is cut into."""
        return ChunkLayout.windows(num_frames, self.window, self.overlap)

    def _ramp(self, timestep) -> bool:
        if self.fuse_until is None:
            return True
        return float(torch.as_tensor(timestep).max()) > self.fuse_until

    def _pre_forward(self, module, args, kwargs):
        bound = bind_forward(module, args, kwargs)
        frames = self.family.long_video_frames(module, bound.arguments)
        if frames <= self.window:
            return None
        layout = self.layout(frames)
        ramp = self._ramp(bound.arguments["timestep"])
        whole_video = dict(bound.arguments)
        bound.arguments.update(self.family.to_windows(module, bound.arguments, layout))
        LONG_VIDEO_CALLS[module] = (whole_video, layout)
        self._call = (layout, ramp)
        return (), dict(bound.arguments)  # the supported forwards take every argument by name

    def _post_forward(self, module, args, kwargs, output):
        call, self._call = self._call, None
        LONG_VIDEO_CALLS.pop(module, None)
        if call is None or output is None:
            return output
        layout, ramp = call
        if isinstance(output, tuple):
            return (self.family.from_windows(output[0], layout, ramp, self.backend), *output[1:])
        return type(output)(sample=self.family.from_windows(output.sample, layout, ramp, self.backend))

    @property
    def installed(self) -> bool:
        """True until :meth:`remove`."""
        return not self._removed

    def remove(self) -> None:
        """Remove the hooks; the transformer runs whole videos again. Idempotent."""
        if not self._removed:
            self._pre.remove()
            self._post.remove()
            self._removed = True
            _installed.unregister(self.transformer, "long_video", self)

    def __enter__(self) -> LongVideo:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        fuse = "every step" if self.fuse_until is None else f"while timestep > {self.fuse_until:g}"
        return (
            f"LongVideo({type(self.transformer).__name__}, window={self.window}, overlap={self.overlap}, "
            f"blend {fuse})"
        )
