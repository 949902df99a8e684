"""Analytic forward FLOPs of the DiT and the VIN, per component, per denoising step and per sample.

Counts every matrix product of :class:`vin.VideoDiT` and :class:`vin.VIN` as ``2 * M * K * N``
(a multiply-add is 2 FLOPs) and the attention ops with :mod:`vin_kernels.flops`; elementwise work
(norms, softmax, modulation, blending) is not counted, as ``torch.utils.flop_counter`` does not.
"""

from __future__ import annotations

from dataclasses import dataclass

from vin_kernels import ChunkLayout
from vin_kernels.flops import chunk_attention_flops, global_attention_flops

from .config import DiTConfig, VINConfig
from .presets import Preset

__all__ = ["FlopBreakdown", "dit_flops", "vin_flops", "step_flops", "sample_flops"]

ATTENTION = ("self_attention", "cross_attention")


@dataclass(frozen=True)
class FlopBreakdown:
    """FLOPs per named component; groups: attention products, the DiT's linear layers, the VIN."""

    components: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.components.values())

    @property
    def attention(self) -> int:
        """Score and value products of the DiT's self- and cross-attention."""
        return sum(v for k, v in self.components.items() if k in ATTENTION)

    @property
    def vin(self) -> int:
        return sum(v for k, v in self.components.items() if k.startswith("vin_"))

    @property
    def linear(self) -> int:
        """The DiT's linear layers (everything but attention products and the VIN)."""
        return self.total - self.attention - self.vin

    def __mul__(self, factor: int) -> FlopBreakdown:
        return FlopBreakdown({k: v * factor for k, v in self.components.items()})

    def __add__(self, other: FlopBreakdown) -> FlopBreakdown:
        keys = dict.fromkeys([*self.components, *other.components])
        return FlopBreakdown({k: self.components.get(k, 0) + other.components.get(k, 0) for k in keys})


def _mm(m: int, k: int, n: int) -> int:
    return 2 * m * k * n


def dit_flops(cfg: DiTConfig, num_frames: int, layout: ChunkLayout | None, num_global: int, batch: int = 1) -> FlopBreakdown:
    """One forward of :class:`vin.VideoDiT` on ``batch`` videos of ``num_frames`` latent frames.

    ``layout=None`` is full attention; a window layout runs ``n`` windows of ``chunk_len`` frames.
    ``num_global``: global tokens every chunk attends to (0 without a VIN).
    """
    h, T, L, D = cfg.hidden, cfg.tokens_per_frame, cfg.text_len, cfg.head_dim
    layout = layout or ChunkLayout.full(num_frames)
    if layout.is_windows:
        rows, frames = batch * layout.num_chunks, layout.chunk_len
    else:
        rows, frames = batch, num_frames
    S = frames * T  # tokens per sequence
    M = rows * S  # tokens through the DiT
    sizes = layout.attention_sizes(T)
    depth = cfg.depth
    return FlopBreakdown(
        {
            "patch_embed": _mm(M, cfg.patch_dim, h),
            "conditioning": _mm(batch, cfg.frequency_dim, h) + _mm(batch, h, h)  # timestep MLP
            + _mm(batch * L, cfg.text_dim, h) + _mm(batch * L, h, h)  # text projection
            + depth * _mm(rows, h, 6 * h) + _mm(rows, h, 2 * h),  # adaLN
            "qkv_out": depth * (_mm(M, h, 3 * h) + _mm(M, h, h)),
            "self_attention": depth
            * chunk_attention_flops(rows, S, cfg.heads, D, sizes["chunk_size"], sizes["context_size"], num_global),
            "cross_attention_proj": depth * (_mm(M, h, h) + _mm(rows * L, h, 2 * h) + _mm(M, h, h)),
            "cross_attention": depth * global_attention_flops(rows, S, cfg.heads, D, L, L, 1, 0),
            "mlp": depth * (_mm(M, h, cfg.mlp_hidden) + _mm(M, cfg.mlp_hidden, h)),
            "final": _mm(M, h, cfg.patch_dim),
        }
    )


def vin_flops(cfg: VINConfig, dit: DiTConfig, num_frames: int, batch: int = 1) -> FlopBreakdown:
    """One forward of :class:`vin.VIN` on ``batch`` videos of ``num_frames`` latent frames."""
    d, G, L, T = cfg.dim, cfg.num_global_tokens, dit.text_len, dit.tokens_per_frame
    stride = ChunkLayout.keyframe_stride(cfg.fps, cfg.keyframe_interval_s, cfg.frames_per_latent)
    K = len(ChunkLayout.keyframes_of(num_frames, stride)) * T  # keyframe tokens
    bG, bK, bL = batch * G, batch * K, batch * L
    block = (
        _mm(bG, d, 3 * d)
        + _mm(bL, d, 2 * d)
        + chunk_attention_flops(batch, G, cfg.heads, cfg.head_dim, G, 0, L)
        + _mm(bG, d, d)
        + _mm(bG, d, cfg.mlp_hidden)
        + _mm(bG, cfg.mlp_hidden, d)
    )
    return FlopBreakdown(
        {
            "vin_encoder": _mm(bK, dit.patch_dim, d)
            + _mm(batch, dit.frequency_dim, d) + _mm(batch, d, d)  # timestep MLP
            + _mm(bG, d, d) + _mm(bK, d, 2 * d) + _mm(bG, d, d)  # q, kv, out
            + global_attention_flops(batch, G, cfg.heads, cfg.head_dim, K, K, 1, 0),
            "vin_processor": _mm(bL, dit.text_dim, d) + _mm(bL, d, d) + cfg.depth * block,
            "vin_output": _mm(bG, d, dit.hidden) + dit.depth * _mm(bG, dit.hidden, 2 * dit.hidden),
        }
    )


def step_flops(preset: Preset, num_frames: int, layout: ChunkLayout | None, batch: int = 1, with_vin: bool | None = None) -> FlopBreakdown:
    """FLOPs of one denoising step: the VIN (``with_vin``, default: whenever there is a layout) and the DiT."""
    with_vin = layout is not None if with_vin is None else with_vin
    G = preset.vin.num_global_tokens if with_vin else 0
    total = dit_flops(preset.dit, num_frames, layout, G, batch)
    return total + vin_flops(preset.vin, preset.dit, num_frames, batch) if with_vin else total


def sample_flops(preset: Preset, num_frames: int, layout: ChunkLayout | None, batch: int = 1, steps: int | None = None, with_vin: bool | None = None) -> FlopBreakdown:
    """FLOPs of a whole sample: ``steps`` (default ``preset.steps``) denoising steps."""
    return step_flops(preset, num_frames, layout, batch, with_vin) * (steps or preset.steps)
