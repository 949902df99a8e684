"""Temporal-consistency metrics for latent videos of :mod:`vin.data`, with no pretrained weights.

All metrics read the latents directly (channels 0-2 colour, channel 3 object coverage, see
:mod:`vin.data`); the only outside algorithm is OpenCV's Farneback optical flow.

* :func:`warp_error` — MAWE, the motion-aware warp error of StreamingT2V (Henschel et al., 2024),
  which the VIN paper reports: ``MAWE = W / OFS`` with ``W`` the mean squared error between every
  frame and the previous frame warped onto it by optical flow (occluded pixels left out), and
  ``OFS`` the mean optical-flow magnitude. A video that flickers, or whose objects change between
  frames, has a large ``W`` for its motion; dividing by the motion keeps a static video from
  scoring well by not moving. Units here: ``W`` in thousandths of the squared ``[0, 1]`` intensity
  range, ``OFS`` in latent pixels per latent frame (the paper's MAWE has a different scale).
  The flow is Farneback's on the decoded RGB frames (:func:`vin.data.to_rgb`, upsampled 4x) for
  generated videos, which have no ground truth; :func:`ground_truth_flow` gives the exact flow of a
  :class:`vin.data.Scenes` video from its object tracks, to calibrate the Farneback numbers.
* :func:`identity_drift` — how much the objects' colours change from one chunk to the next:
  per chunk, the palette of the colours of the object pixels in its frames (``coverage >= 0.75``);
  per border, the symmetric Chamfer distance between the two palettes (RGB distance in ``[-1, 1]``
  units): a colour that one chunk has and the next has not counts, textures and occlusions that
  both chunks show do not. Also the distance between the first and last chunk.
* :func:`scene_cuts` — frame-difference spikes: ``d_t = mean |x_{t+1} - x_t|`` over the latent; a
  transition is a spike when ``d_t > threshold * median(d inside chunks)``. The rate is the fraction
  of chunk borders with a spike in the border's span (the transitions into, through and out of
  the frames two windows share; the one transition between two chunks without overlap), against
  the fraction of spiking transitions inside chunks.

:func:`evaluate` computes them all for a batch of videos and averages over the videos.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vin_kernels import ChunkLayout

from .data import ALPHA_CHANNEL, COLOR_CHANNELS, Scenes, to_rgb

__all__ = [
    "FLOW_SCALE",
    "farneback_flow",
    "ground_truth_flow",
    "warp_error",
    "object_palette",
    "identity_drift",
    "chunk_borders",
    "frame_differences",
    "scene_cuts",
    "evaluate",
]

FLOW_SCALE = 4  # decoded frames are upsampled 4x (16x16 latents -> 64x64) before Farneback
# OpenCV's sample settings (samples/python/opt_flow.py): pyramid scale 0.5, 3 levels, 15 px window,
# 3 iterations, polynomial neighbourhood 5 with sigma 1.2.
_FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def _cv2():
    try:
        import cv2
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("vin.metrics needs OpenCV: pip install 'vin-kernels[quality]' (opencv-python-headless)") from error
    return cv2


def _check_video(name: str, video) -> torch.Tensor:
    """One latent video ``[F, 4, h, w]`` with at least 2 frames."""
    if not isinstance(video, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(video).__name__}")
    if video.dim() != 4 or video.shape[1] != 4 or video.shape[0] < 2:
        raise ValueError(f"{name} must be one latent video [F >= 2, 4, h, w], got shape {tuple(video.shape)}")
    if not torch.isfinite(video).all():
        raise ValueError(f"{name} has NaN or infinite values")
    return video.detach().float().cpu()


def _check_layout(layout, num_frames: int) -> ChunkLayout:
    if not isinstance(layout, ChunkLayout):
        raise TypeError(f"layout must be a ChunkLayout, got {type(layout).__name__}")
    if layout.num_frames != num_frames:
        raise ValueError(f"layout is for {layout.num_frames} frames but the video has {num_frames}")
    return layout


# ------------------------------------------------------------------------------------------ MAWE
def farneback_flow(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward Farneback flow between consecutive RGB frames ``[F, H, W, 3]`` (uint8).

    Returns ``(forward, backward)``, each ``[F-1, H, W, 2]`` float32 (``dx, dy`` in pixels):
    ``frames[t](p) ~ frames[t+1](p + forward[t](p))`` and ``frames[t+1](p) ~ frames[t](p + backward[t](p))``.
    """
    cv2 = _cv2()
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    forward = [cv2.calcOpticalFlowFarneback(a, b, None, **_FARNEBACK) for a, b in zip(gray[:-1], gray[1:])]
    backward = [cv2.calcOpticalFlowFarneback(b, a, None, **_FARNEBACK) for a, b in zip(gray[:-1], gray[1:])]
    return np.stack(forward), np.stack(backward)


def _sample(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``image(p + flow(p))``, bilinear, for every pixel ``p`` (OpenCV remap, edges replicated)."""
    cv2 = _cv2()
    H, W = flow.shape[:2]
    grid = np.stack(np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32)), axis=-1)
    where = grid + flow
    return cv2.remap(image, where[..., 0], where[..., 1], interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _consistent(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Pixels of frame ``t+1`` whose backward flow the forward flow undoes (not occluded; Sundaram et al., 2010):
    ``|b + f(p + b)|^2 < 0.01 (|b|^2 + |f(p + b)|^2) + 0.5``, and ``p + b`` inside the frame."""
    H, W = backward.shape[:2]
    f_at = _sample(forward, backward)
    error = ((backward + f_at) ** 2).sum(-1)
    bound = 0.01 * ((backward**2).sum(-1) + (f_at**2).sum(-1)) + 0.5
    x = np.arange(W)[None, :] + backward[..., 0]
    y = np.arange(H)[:, None] + backward[..., 1]
    inside = (x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)
    return (error < bound) & inside


def ground_truth_flow(scenes: Scenes, index: int, scale: int = FLOW_SCALE) -> tuple[np.ndarray, np.ndarray]:
    """The exact backward flow of video ``index`` of ``scenes`` at ``scale`` times its resolution.

    Every pixel of frame ``t+1`` moves back with the object that owns it (:attr:`Scenes.owner`)
    by that object's track displacement, or with the background. Returns ``(backward, valid)``:
    ``[F-1, H, W, 2]`` float32 and ``[F-1, H, W]`` bool, valid where the pixel's owner is the same
    in both frames (no occlusion), away from edges between owners (the 3x3 latent pixels around it
    have one owner: antialiased edges mix colours that do not move together) and inside the frame.
    """
    owner = scenes.owner[index].numpy()  # [F, h, w]
    moves = scenes.displacement[index].numpy()  # [F-1, K, 2]
    background = np.diff(scenes.background_offset[index].numpy(), axis=0)  # [F-1, 2]
    F, h, w = owner.shape
    cv2 = _cv2()
    kernel = np.ones((3, 3), np.uint8)
    labels = (owner + 1).astype(np.uint8)
    interior = np.stack([cv2.erode(m, kernel) == cv2.dilate(m, kernel) for m in labels])  # 3x3 of one owner
    big = owner.repeat(scale, axis=1).repeat(scale, axis=2)  # nearest upsampling of the owner map
    big_interior = interior.repeat(scale, axis=1).repeat(scale, axis=2)
    flows = np.concatenate([moves, background[:, None]], axis=1)  # owner -1 reads the last row
    backward = -flows[np.arange(F - 1)[:, None, None], big[1:]] * scale
    ys, xs = np.mgrid[0 : h * scale, 0 : w * scale]
    src_x = np.rint(xs + backward[..., 0]).astype(int)
    src_y = np.rint(ys + backward[..., 1]).astype(int)
    inside = (src_x >= 0) & (src_x < w * scale) & (src_y >= 0) & (src_y < h * scale)
    source_owner = big[np.arange(F - 1)[:, None, None], src_y.clip(0, h * scale - 1), src_x.clip(0, w * scale - 1)]
    return backward.astype(np.float32), inside & (source_owner == big[1:]) & big_interior[1:]


def warp_error(video: torch.Tensor, *, flow: tuple[np.ndarray, np.ndarray] | None = None, scale: int = FLOW_SCALE) -> dict:
    """MAWE of one latent video ``[F, 4, h, w]``: ``{"mawe", "warp_error", "motion", "valid_fraction"}``.

    ``warp_error = 1000 * mean_t mean_{valid p} |I_{t+1}(p) - I_t(p + b_t(p))|^2`` over RGB in
    ``[0, 1]`` at ``scale`` x resolution, ``motion = mean_t mean_p |f_t(p)| / scale`` (latent px per
    frame), ``mawe = warp_error / motion``. ``flow=None``: Farneback's forward flow ``f`` and backward
    flow ``b``, valid pixels by the forward-backward check; or ``flow=(backward, valid)`` at ``scale``
    (e.g. :func:`ground_truth_flow`), whose motion is then ``|b|``.
    """
    video = _check_video("video", video)
    frames = to_rgb(video, scale)
    images = frames.astype(np.float32) / 255.0
    if flow is None:
        forward, backward = farneback_flow(frames)
        valid = np.stack([_consistent(f, b) for f, b in zip(forward, backward)])
        magnitude = np.linalg.norm(forward, axis=-1)
    else:
        backward, valid = flow
        shape = (len(frames) - 1, *frames.shape[1:3])
        if backward.shape != (*shape, 2) or valid.shape != shape:
            raise ValueError(f"flow must be (backward {(*shape, 2)}, valid {shape}), got {backward.shape} and {valid.shape}")
        magnitude = np.linalg.norm(backward, axis=-1)
    errors = []
    for t in range(len(frames) - 1):
        warped = _sample(images[t], backward[t].astype(np.float32))
        squared = ((images[t + 1] - warped) ** 2).mean(-1)
        errors.append(squared[valid[t]].mean() if valid[t].any() else 0.0)
    error = 1000.0 * float(np.mean(errors))
    motion = float(magnitude.mean()) / scale
    return {
        "mawe": error / motion if motion > 0 else (0.0 if error == 0 else math.inf),
        "warp_error": error,
        "motion": motion,
        "valid_fraction": float(valid.mean()),
    }


# ------------------------------------------------------------------------------------------ identity drift
def object_palette(frame: torch.Tensor, coverage: float = 0.75) -> np.ndarray:
    """RGB ``[n, 3]`` (``[-1, 1]``) of the object pixels of one latent frame ``[4, h, w]``: those
    covered by at least ``coverage`` (channel 3 above ``2 * coverage - 1``; edges, which mix an object
    with what lies behind it, are left out)."""
    mask = frame[ALPHA_CHANNEL] > 2 * coverage - 1
    return frame[list(COLOR_CHANNELS)][:, mask].T.double().numpy()


def _chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Chamfer distance between two point sets (mean nearest-neighbour distance, both ways)."""
    distance = np.linalg.norm(a[:, None] - b[None], axis=-1)
    return 0.5 * (distance.min(1).mean() + distance.min(0).mean())


def identity_drift(video: torch.Tensor, layout: ChunkLayout) -> dict:
    """Object-colour change across the chunk borders of one latent video ``[F, 4, h, w]``.

    Chunk ``i``'s palette holds :func:`object_palette` of every frame it owns (``layout.owners``).
    Returns ``{"drift": mean Chamfer distance between consecutive chunks' palettes, "drift_first_last":
    between the first and the last chunk, "chunks_with_objects": fraction of chunks with any object}``;
    a distance is NaN when a palette is empty.
    """
    video = _check_video("video", video)
    layout = _check_layout(layout, video.shape[0])
    palettes: list[list[np.ndarray]] = [[] for _ in range(layout.num_chunks)]
    for f, chunk in enumerate(layout.owners):
        palettes[chunk].append(object_palette(video[f]))
    pooled = [np.concatenate(p) for p in palettes]

    def distance(a, b):
        return _chamfer(a, b) if len(a) and len(b) else math.nan

    steps = [distance(a, b) for a, b in zip(pooled[:-1], pooled[1:])]
    return {
        "drift": float(np.nanmean(steps)) if steps and not all(map(math.isnan, steps)) else math.nan,
        "drift_first_last": distance(pooled[0], pooled[-1]),
        "chunks_with_objects": float(np.mean([len(p) > 0 for p in pooled])),
    }


# ------------------------------------------------------------------------------------------ scene cuts
def chunk_borders(layout: ChunkLayout) -> list[range]:
    """Per border between consecutive chunks, its span of transitions (``t`` is the step ``t -> t+1``).

    Context mode: the one transition into the next chunk. Window mode: the frames two windows share
    (:attr:`ChunkLayout.frame_blend` lists more than one window) and the transitions into and out of
    them; with no overlap, the transition where the owning window changes.
    """
    if not isinstance(layout, ChunkLayout):
        raise TypeError(f"layout must be a ChunkLayout, got {type(layout).__name__}")
    F = layout.num_frames
    shared = [len(entries) > 1 for entries in layout.frame_blend] if layout.is_windows else [False] * F
    spans: list[range] = []
    f = 0
    while f < F:
        if shared[f]:
            end = f
            while end < F and shared[end]:
                end += 1
            spans.append(range(max(f - 1, 0), min(end, F - 1)))
            f = end
        else:
            if f + 1 < F and not shared[f + 1] and layout.owners[f] != layout.owners[f + 1]:
                spans.append(range(f, f + 1))
            f += 1
    return spans


def frame_differences(video: torch.Tensor) -> np.ndarray:
    """``d_t = mean |x_{t+1} - x_t|`` over all latent channels and pixels, ``[F-1]``."""
    video = _check_video("video", video)
    return (video[1:] - video[:-1]).abs().mean(dim=(1, 2, 3)).double().numpy()


def scene_cuts(video: torch.Tensor, layout: ChunkLayout, threshold: float = 2.5) -> dict:
    """Frame-difference spikes at the chunk borders of one latent video ``[F, 4, h, w]`` and inside chunks.

    A transition spikes when ``d_t > threshold * median(d_t over transitions in no border span)``
    (:func:`frame_differences`, :func:`chunk_borders`). Returns ``{"cut_rate": fraction of borders
    whose span has a spike, "inside_rate": fraction of the other transitions that spike,
    "border_ratio": mean over borders of max(d in span) / median}``.
    """
    video = _check_video("video", video)
    layout = _check_layout(layout, video.shape[0])
    if not (isinstance(threshold, (int, float)) and threshold > 0):
        raise ValueError(f"threshold must be a positive number, got {threshold!r}")
    d = frame_differences(video)
    spans = chunk_borders(layout)
    in_span = np.zeros(len(d), dtype=bool)
    for span in spans:
        in_span[list(span)] = True
    inside = d[~in_span]
    if len(inside) == 0:
        raise ValueError(f"{layout} leaves no transition inside a chunk to compare the borders with")
    median = max(float(np.median(inside)), 1e-8)
    spike = d > threshold * median
    return {
        "cut_rate": float(np.mean([spike[list(s)].any() for s in spans])) if spans else 0.0,
        "inside_rate": float(spike[~in_span].mean()),
        "border_ratio": float(np.mean([d[list(s)].max() / median for s in spans])) if spans else math.nan,
    }


# ------------------------------------------------------------------------------------------ all
def evaluate(videos: torch.Tensor, layout: ChunkLayout, *, progress: bool = False) -> dict:
    """Every metric of every video in ``[B, F, 4, h, w]`` at ``layout``'s chunk borders, averaged over videos
    (NaN-aware for the drift), with the per-video values under ``"per_video"``."""
    if not isinstance(videos, torch.Tensor) or videos.dim() != 5:
        raise ValueError(f"videos must be a [B, F, 4, h, w] tensor, got {getattr(videos, 'shape', type(videos).__name__)}")
    items = range(videos.shape[0])
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="metrics", leave=False)
    per_video = [warp_error(videos[b]) | identity_drift(videos[b], layout) | scene_cuts(videos[b], layout) for b in items]
    summary = {}
    for key in per_video[0]:
        values = np.array([v[key] for v in per_video], dtype=np.float64)
        summary[key] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
    return summary | {"per_video": per_video}
