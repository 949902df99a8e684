"""Generated long latent videos with ground truth, for training and checking temporal consistency.

Every video is a scene of objects bouncing around over a slowly drifting background (by default one
plain object, the data the toy model learns in minutes; :class:`SceneConfig` draws up to any number,
textured and occluding each other), rendered straight into the latent layout ``[B, F, 4, h, w]`` that the model denoises, with values in
``[-1, 1]``. The four channels are directly interpretable, so nothing needs a VAE or pretrained
weights:

* channels 0-2 (:data:`COLOR_CHANNELS`): the colour image in RGB (``-1`` black, ``+1`` full
  intensity); :func:`to_rgb` turns them into ``uint8`` images for optical flow and figures;
* channel 3 (:data:`ALPHA_CHANNEL`): object coverage ``2a - 1`` (``-1`` background, ``+1`` object),
  so ``video[:, :, 3] > 0`` segments the objects of a generated video as well as of a real one.

An object keeps its identity for the whole video: shape (disc, square or diamond), radius, colour,
and a stripe texture that moves with it (period, direction, phase; ``stripe_depth=0``: plain). It moves in a straight line at
constant speed and bounces off the frame's edges (elastic reflection, exact in closed form, so any
frame of an arbitrarily long video costs the same); objects pass in front of each other in a fixed
depth order (occlusions). The background is a two-wave pattern translating slowly.

Everything is a function of ``(seed, video index)`` only: ``generate(..., num_frames=96)[:, :24]`` is
``generate(..., num_frames=24)``, and video ``i`` is the same whichever batch it is drawn in. The
ground truth (:class:`Scenes`) holds the exact object tracks, the per-pixel owner and the visible
fraction of every object.

Sizes (default :class:`SceneConfig`): 16x16 latent pixels, one plain object of radius 2.5-3.5 px
moving 0.35-0.8 px per latent frame, the background 0.05-0.15 px per latent frame. (Until the toy
model had to learn them in minutes on 2 CPU cores, the default was 1-3 objects of radius 2-3 px
with stripes of depth 0.35: ``SceneConfig(max_objects=3, radius=(2.0, 3.0), stripe_depth=0.35)``.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "SHAPES",
    "COLOR_CHANNELS",
    "ALPHA_CHANNEL",
    "SceneConfig",
    "Scenes",
    "generate",
    "training_batch",
    "to_rgb",
    "bounce",
]

SHAPES = ("disc", "square", "diamond")
COLOR_CHANNELS = (0, 1, 2)
ALPHA_CHANNEL = 3
_TRAIN_STREAM, _EVAL_STREAM = 0, 1
_EXTENT = {"disc": 1.0, "square": 0.85, "diamond": 1.2}  # half-width along x and y, in radii (_signed_distance)


@dataclass(frozen=True)
class SceneConfig:
    """What the generated scenes look like (lengths in latent pixels, speeds per latent frame)."""

    height: int = 16
    width: int = 16
    min_objects: int = 1
    max_objects: int = 1
    radius: tuple[float, float] = (2.5, 3.5)
    speed: tuple[float, float] = (0.35, 0.8)
    background_speed: tuple[float, float] = (0.05, 0.15)
    stripe_period: tuple[float, float] = (3.0, 5.0)
    stripe_depth: float = 0.0  # an object's colour is darkened by up to this fraction along its stripes

    def __post_init__(self):
        for name in ("height", "width", "min_objects", "max_objects"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SceneConfig.{name} must be a positive int, got {value!r}")
        if self.min_objects > self.max_objects:
            raise ValueError(f"SceneConfig.min_objects ({self.min_objects}) must be <= max_objects ({self.max_objects})")
        for name in ("radius", "speed", "background_speed", "stripe_period"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"SceneConfig.{name} must be a range (lo, hi) with 0 <= lo <= hi, got {(lo, hi)}")
        if 2 * (1.2 * self.radius[1] + 0.75) >= min(self.height, self.width):
            raise ValueError(f"SceneConfig.radius {self.radius} does not fit a {self.height}x{self.width} frame")
        if not 0 <= self.stripe_depth < 1:
            raise ValueError(f"SceneConfig.stripe_depth must be in [0, 1), got {self.stripe_depth}")


@dataclass
class Scenes:
    """A batch of generated videos and their exact ground truth.

    ``K = config.max_objects`` object slots per video; slots beyond a video's object count have
    ``present = False`` (their tracks are zeros). Positions are ``(x, y)`` in latent pixels with
    pixel ``(row i, column j)`` centred at ``(j + 0.5, i + 0.5)``.

    Attributes:
        video: ``[B, F, 4, h, w]`` float32 in ``[-1, 1]`` (channels: R, G, B, object coverage).
        tracks: ``[B, F, K, 2]`` float64, every object's centre in every frame.
        visible: ``[B, F, K]`` float64, the fraction of an object's coverage not hidden by objects
            in front of it (1: fully visible, 0: fully occluded or absent).
        owner: ``[B, F, h, w]`` int64, the front-most object covering a pixel centre by at least
            half, ``-1`` for the background.
        background_offset: ``[B, F, 2]`` float64, how far the background pattern has moved.
        present: ``[B, K]`` bool. shape: ``[B, K]`` int64 index into :data:`SHAPES`.
        radius: ``[B, K]``. color: ``[B, K, 3]`` RGB in ``[-1, 1]`` (before the stripes darken it).
        depth: ``[B, K]`` int64 drawing order, larger is in front.
        extent: ``[B, K]`` how far a centre stays from the frame's edges (the shape's half-width plus
            its antialiased edge): tracks bounce inside ``[extent, size - extent]``.
        stripe: ``[B, K, 3]`` (period px, direction rad, phase rad) of the texture.
        velocity: ``[B, K, 2]`` the initial velocity (the sign of a component flips at each bounce).
        first_frame: index of ``video[:, 0]`` in the underlying endless video.
    """

    video: torch.Tensor
    tracks: torch.Tensor
    visible: torch.Tensor
    owner: torch.Tensor
    background_offset: torch.Tensor
    present: torch.Tensor
    shape: torch.Tensor
    radius: torch.Tensor
    color: torch.Tensor
    depth: torch.Tensor
    extent: torch.Tensor
    stripe: torch.Tensor
    velocity: torch.Tensor
    config: SceneConfig = field(default_factory=SceneConfig)
    first_frame: int = 0

    @property
    def displacement(self) -> torch.Tensor:
        """``[B, F-1, K, 2]``: how far every object moves from frame ``t`` to ``t+1`` (exact, bounces included)."""
        return self.tracks[:, 1:] - self.tracks[:, :-1]


def bounce(position: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Reflect unconstrained positions into ``[low, high]`` (elastic bounces off both walls).

    ``x = low + tri(p - low)`` with the triangle wave ``tri(u) = L - |(u mod 2L) - L|`` of period
    ``2L``, ``L = high - low``: a point moving at constant speed in the unfolded line moves at the
    same speed in ``[low, high]`` and reverses at the walls.
    """
    span = high - low
    folded = np.mod(position - low, 2 * span)
    return low + span - np.abs(folded - span)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _scene_parameters(rng: np.random.Generator, cfg: SceneConfig) -> dict:
    """Draw one scene: object count, shapes, sizes, colours, textures, motion, depth, background."""
    K = cfg.max_objects
    count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    p = {
        "present": np.arange(K) < count,
        "shape": rng.integers(0, len(SHAPES), K),
        "radius": rng.uniform(*cfg.radius, K),
        "depth": rng.permutation(K),
        "stripe": np.stack(
            [rng.uniform(*cfg.stripe_period, K), rng.uniform(0, math.pi, K), rng.uniform(0, 2 * math.pi, K)], axis=1
        ),
    }
    # Well-separated hues: a random rotation of evenly spaced hues, so objects differ in colour.
    hues = (rng.uniform() + np.arange(K) / K + rng.uniform(-0.08, 0.08, K)) % 1.0
    p["color"] = np.stack([_hsv_to_rgb(h, rng.uniform(0.65, 1.0), rng.uniform(0.8, 1.0)) for h in hues]) * 2 - 1
    # Keep every shape inside the frame: its extent along x and y (a diamond reaches 1.2 r, a square
    # 0.85 r) plus the antialiased edge (coverage reaches 0.5 px past a disc's or square's outline,
    # 0.71 px past a diamond's), so the whole shape is drawn wherever it is.
    p["extent"] = p["radius"] * np.array([_EXTENT[SHAPES[s]] for s in p["shape"]]) + 0.75
    low = p["extent"][:, None] * np.ones(2)
    high = np.array([cfg.width, cfg.height]) - low
    p["start"] = rng.uniform(low, high)
    speed, angle = rng.uniform(*cfg.speed, K), rng.uniform(0, 2 * math.pi, K)
    p["velocity"] = np.stack([speed * np.cos(angle), speed * np.sin(angle)], axis=1)
    p["low"], p["high"] = low, high
    # Background: a dark base colour plus two tinted plane waves of wavelength 6-14 px, drifting slowly.
    p["bg_color"] = _hsv_to_rgb(rng.uniform(), rng.uniform(0.2, 0.6), rng.uniform(0.15, 0.35)) * 2 - 1
    p["bg_tint"] = rng.uniform(-1, 1, (2, 3)) * 0.12
    wave_angle = rng.uniform(0, 2 * math.pi, 2)
    p["bg_wave"] = 2 * math.pi / rng.uniform(6.0, 14.0, 2)[:, None] * np.stack([np.cos(wave_angle), np.sin(wave_angle)], 1)
    p["bg_phase"] = rng.uniform(0, 2 * math.pi, 2)
    bg_speed, bg_angle = rng.uniform(*cfg.background_speed), rng.uniform(0, 2 * math.pi)
    p["bg_velocity"] = bg_speed * np.array([math.cos(bg_angle), math.sin(bg_angle)])
    return p


def _signed_distance(shape: int, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Approximate signed distance (px) to the outline of a shape centred at the origin (negative inside)."""
    if SHAPES[shape] == "disc":
        return np.hypot(dx, dy) - radius
    if SHAPES[shape] == "square":  # half-side 0.85 r: about the disc's area
        return np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * radius
    return (np.abs(dx) + np.abs(dy) - 1.2 * radius) / math.sqrt(2)  # diamond


def _render(p: dict, frames: np.ndarray, cfg: SceneConfig) -> dict:
    """Render one scene at the given frame indices: video ``[F, 4, h, w]`` and its ground truth."""
    F, K = len(frames), len(p["present"])
    t = frames.astype(np.float64)[:, None, None]
    tracks = bounce(p["start"][None] + t * p["velocity"][None], p["low"][None], p["high"][None])  # [F, K, 2]
    ys, xs = np.mgrid[0 : cfg.height, 0 : cfg.width] + 0.5
    xs, ys = xs[None], ys[None]  # [1, h, w]

    offset = frames.astype(np.float64)[:, None] * p["bg_velocity"]  # [F, 2]
    image = np.broadcast_to(p["bg_color"][:, None, None, None], (3, F, cfg.height, cfg.width)).copy()
    for wave, phase, tint in zip(p["bg_wave"], p["bg_phase"], p["bg_tint"]):
        arg = wave[0] * (xs - offset[:, 0, None, None]) + wave[1] * (ys - offset[:, 1, None, None]) + phase
        image += tint[:, None, None, None] * np.sin(arg)[None]

    coverage = np.zeros((K, F, cfg.height, cfg.width))
    uncovered = np.ones((F, cfg.height, cfg.width))  # product of (1 - a) of the objects drawn so far
    owner = np.full((F, cfg.height, cfg.width), -1, dtype=np.int64)
    for k in np.argsort(p["depth"]):  # back to front
        if not p["present"][k]:
            continue
        dx, dy = xs - tracks[:, k, 0, None, None], ys - tracks[:, k, 1, None, None]
        a = np.clip(0.5 - _signed_distance(int(p["shape"][k]), dx, dy, p["radius"][k]), 0.0, 1.0)
        period, direction, phase = p["stripe"][k]
        along = dx * math.cos(direction) + dy * math.sin(direction)
        shade = 1 - cfg.stripe_depth * 0.5 * (1 + np.sin(2 * math.pi * along / period + phase))
        color = (p["color"][k][:, None, None, None] + 1) * shade[None] - 1  # darkening in [0, 1] units
        image = image * (1 - a[None]) + color * a[None]
        uncovered *= 1 - a
        coverage[k] = a
        owner[a >= 0.5] = k

    visible = np.zeros((F, K))
    order = np.argsort(p["depth"])
    for pos, k in enumerate(order):
        if not p["present"][k]:
            continue
        hidden_by = np.ones_like(coverage[k])
        for j in order[pos + 1 :]:
            hidden_by *= 1 - coverage[j]
        visible[:, k] = (coverage[k] * hidden_by).sum((1, 2)) / coverage[k].sum((1, 2))
    video = np.concatenate([image.transpose(1, 0, 2, 3), (1 - 2 * uncovered)[:, None]], axis=1)
    tracks = tracks * p["present"][None, :, None]
    return {"video": video, "tracks": tracks, "visible": visible, "owner": owner, "background_offset": offset}


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def generate(
    num_videos: int,
    num_frames: int,
    *,
    seed: int = 0,
    first_video: int = 0,
    first_frame: int = 0,
    split: str = "eval",
    config: SceneConfig | None = None,
) -> Scenes:
    """Render videos ``first_video .. first_video + num_videos - 1`` of a seed's stream, frames
    ``first_frame .. first_frame + num_frames - 1``, with their ground truth.

    Video ``i`` of ``(seed, split)`` is drawn from ``numpy.random.SeedSequence([seed, split, i])``;
    ``split`` is ``"train"`` or ``"eval"`` (disjoint streams: evaluation scenes are never trained on).

    Returns:
        :class:`Scenes` with ``video [num_videos, num_frames, 4, h, w]`` float32.
    """
    num_videos = _check_count("num_videos", num_videos, 1)
    num_frames = _check_count("num_frames", num_frames, 1)
    seed = _check_count("seed", seed, 0)
    first_video = _check_count("first_video", first_video, 0)
    first_frame = _check_count("first_frame", first_frame, 0)
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    cfg = config if config is not None else SceneConfig()
    if not isinstance(cfg, SceneConfig):
        raise TypeError(f"config must be a SceneConfig, got {type(cfg).__name__}")
    stream = _TRAIN_STREAM if split == "train" else _EVAL_STREAM
    frames = np.arange(first_frame, first_frame + num_frames)
    params, rendered = [], []
    for i in range(first_video, first_video + num_videos):
        rng = np.random.default_rng(np.random.SeedSequence([seed, stream, i]))
        params.append(_scene_parameters(rng, cfg))
        rendered.append(_render(params[-1], frames, cfg))

    def stack(items, dtype=torch.float64):
        return torch.as_tensor(np.stack(items)).to(dtype)

    return Scenes(
        video=stack([r["video"] for r in rendered], torch.float32),
        tracks=stack([r["tracks"] for r in rendered]),
        visible=stack([r["visible"] for r in rendered]),
        owner=stack([r["owner"] for r in rendered], torch.int64),
        background_offset=stack([r["background_offset"] for r in rendered]),
        present=stack([p["present"] for p in params], torch.bool),
        shape=stack([p["shape"] for p in params], torch.int64),
        radius=stack([p["radius"] for p in params]),
        color=stack([p["color"] for p in params]),
        depth=stack([p["depth"] for p in params], torch.int64),
        extent=stack([p["extent"] for p in params]),
        stripe=stack([p["stripe"] for p in params]),
        velocity=stack([p["velocity"] for p in params]),
        config=cfg,
        first_frame=first_frame,
    )


def training_batch(step: int, batch: int, num_frames: int, *, seed: int = 0, config: SceneConfig | None = None) -> torch.Tensor:
    """Clips ``[batch, num_frames, 4, h, w]`` for training step ``step``: videos ``step*batch ..`` of the
    ``"train"`` stream (every step sees new scenes; the same ``(step, seed)`` gives the same clips)."""
    step = _check_count("step", step, 0)
    batch = _check_count("batch", batch, 1)
    return generate(batch, num_frames, seed=seed, first_video=step * batch, split="train", config=config).video


def to_rgb(video: torch.Tensor, scale: int = 1) -> np.ndarray:
    """Latent videos ``[B, F, 4, h, w]`` (or one ``[F, 4, h, w]``) -> ``uint8`` RGB ``[..., F, h*scale, w*scale, 3]``.

    Channels 0-2 mapped from ``[-1, 1]`` to ``[0, 255]`` (clipped); ``scale > 1`` upsamples bilinearly
    (optical flow needs more than a few pixels per object).
    """
    if not isinstance(video, torch.Tensor):
        raise TypeError(f"video must be a torch.Tensor, got {type(video).__name__}")
    if video.dim() not in (4, 5) or video.shape[-3] != 4:
        raise ValueError(f"video must be [B, F, 4, h, w] or [F, 4, h, w] latents, got shape {tuple(video.shape)}")
    scale = _check_count("scale", scale, 1)
    rgb = video[..., list(COLOR_CHANNELS), :, :].detach().float().cpu()
    lead = rgb.shape[:-3]
    rgb = rgb.reshape(-1, *rgb.shape[-3:])
    if scale > 1:
        rgb = torch.nn.functional.interpolate(rgb, scale_factor=scale, mode="bilinear", align_corners=False)
    rgb = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rgb.permute(0, 2, 3, 1).reshape(*lead, *rgb.shape[-2:], 3).numpy()
