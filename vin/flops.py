"""Analytic FLOPs of the DiT and the VIN, per component: a denoising step, a sample, a training step.

Counts every matrix product of :class:`vin.VideoDiT` and :class:`vin.VIN` as ``2 * M * K * N``
(a multiply-add is 2 FLOPs) and the attention ops with :mod:`vin_kernels.flops`; elementwise work
(norms, softmax, modulation, blending) is not counted, as ``torch.utils.flop_counter`` does not.
These are exactly ``FlopCounterMode``'s counts of the model on every backend (forward), and of a
training step on the sdpa and Triton backends (``tests/model/test_flop_count.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from vin_kernels import ChunkLayout
from vin_kernels.flops import BACKWARD_FACTOR, chunk_attention_flops, global_attention_flops

from .config import DiTConfig, VINConfig
from .presets import Preset

__all__ = ["FlopBreakdown", "dit_flops", "vin_flops", "step_flops", "sample_flops", "training_step_flops"]

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


@dataclass(frozen=True)
class _Products:
    """Forward FLOPs of a component by what its backward costs: ``linear`` layers (input and weight
    gradients: 2x), ``data`` layers whose input is data (the patch embeddings, the first layers of the
    timestep and text MLPs: weight gradient only, 1x) and ``attention`` (FlashAttention's five
    products for two: :data:`vin_kernels.flops.BACKWARD_FACTOR`, what the sdpa and Triton backends run)."""

    linear: int = 0
    data: int = 0
    attention: int = 0

    @property
    def forward(self) -> int:
        return self.linear + self.data + self.attention

    @property
    def training(self) -> int:
        """Forward plus backward."""
        return self.forward + 2 * self.linear + self.data + int(BACKWARD_FACTOR * self.attention)


def _breakdown(products: dict[str, _Products], training: bool) -> FlopBreakdown:
    return FlopBreakdown({k: p.training if training else p.forward for k, p in products.items()})


def _mm(m: int, k: int, n: int) -> int:
    return 2 * m * k * n


def _dit_products(cfg: DiTConfig, num_frames: int, layout: ChunkLayout | None, num_global: int, batch: int) -> dict[str, _Products]:
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
    return {
        "patch_embed": _Products(data=_mm(M, cfg.patch_dim, h)),
        "conditioning": _Products(
            data=_mm(batch, cfg.frequency_dim, h) + _mm(batch * L, cfg.text_dim, h),  # timestep MLP, text projection
            linear=_mm(batch, h, h) + _mm(batch * L, h, h) + depth * _mm(rows, h, 6 * h) + _mm(rows, h, 2 * h),  # + adaLN
        ),
        "qkv_out": _Products(linear=depth * (_mm(M, h, 3 * h) + _mm(M, h, h))),
        "self_attention": _Products(
            attention=depth * chunk_attention_flops(rows, S, cfg.heads, D, sizes["chunk_size"], sizes["context_size"], num_global)
        ),
        "cross_attention_proj": _Products(linear=depth * (_mm(M, h, h) + _mm(rows * L, h, 2 * h) + _mm(M, h, h))),
        "cross_attention": _Products(attention=depth * global_attention_flops(rows, S, cfg.heads, D, L, L, 1, 0)),
        "mlp": _Products(linear=depth * (_mm(M, h, cfg.mlp_hidden) + _mm(M, cfg.mlp_hidden, h))),
        "final": _Products(linear=_mm(M, h, cfg.patch_dim)),
    }


def _vin_products(cfg: VINConfig, dit: DiTConfig, num_frames: int, batch: int) -> dict[str, _Products]:
    d, G, L, T = cfg.dim, cfg.num_global_tokens, dit.text_len, dit.tokens_per_frame
    stride = ChunkLayout.keyframe_stride(cfg.fps, cfg.keyframe_interval_s, cfg.frames_per_latent)
    K = len(ChunkLayout.keyframes_of(num_frames, stride)) * T  # keyframe tokens
    bG, bK, bL = batch * G, batch * K, batch * L
    block_linear = _mm(bG, d, 3 * d) + _mm(bL, d, 2 * d) + _mm(bG, d, d) + _mm(bG, d, cfg.mlp_hidden) + _mm(bG, cfg.mlp_hidden, d)
    return {
        "vin_encoder": _Products(
            data=_mm(bK, dit.patch_dim, d) + _mm(batch, dit.frequency_dim, d),  # keyframe patches, timestep MLP
            linear=_mm(batch, d, d) + _mm(bG, d, d) + _mm(bK, d, 2 * d) + _mm(bG, d, d),  # timestep MLP, q, kv, out
            attention=global_attention_flops(batch, G, cfg.heads, cfg.head_dim, K, K, 1, 0),
        ),
        "vin_processor": _Products(
            data=_mm(bL, dit.text_dim, d),  # text projection
            linear=_mm(bL, d, d) + cfg.depth * block_linear,
            attention=cfg.depth * chunk_attention_flops(batch, G, cfg.heads, cfg.head_dim, G, 0, L),
        ),
        "vin_output": _Products(linear=_mm(bG, d, dit.hidden) + dit.depth * _mm(bG, dit.hidden, 2 * dit.hidden)),
    }


def dit_flops(cfg: DiTConfig, num_frames: int, layout: ChunkLayout | None, num_global: int, batch: int = 1) -> FlopBreakdown:
    """One forward of :class:`vin.VideoDiT` on ``batch`` videos of ``num_frames`` latent frames.

    ``layout=None`` is full attention; a window layout runs ``n`` windows of ``chunk_len`` frames.
    ``num_global``: global tokens every chunk attends to (0 without a VIN).
    """
    return _breakdown(_dit_products(cfg, num_frames, layout, num_global, batch), training=False)


def vin_flops(cfg: VINConfig, dit: DiTConfig, num_frames: int, batch: int = 1) -> FlopBreakdown:
    """One forward of :class:`vin.VIN` on ``batch`` videos of ``num_frames`` latent frames."""
    return _breakdown(_vin_products(cfg, dit, num_frames, batch), training=False)


def _step_products(preset: Preset, num_frames: int, layout: ChunkLayout | None, batch: int, with_vin: bool | None):
    with_vin = layout is not None if with_vin is None else with_vin
    G = preset.vin.num_global_tokens if with_vin else 0
    products = _dit_products(preset.dit, num_frames, layout, G, batch)
    return products | _vin_products(preset.vin, preset.dit, num_frames, batch) if with_vin else products


def step_flops(preset: Preset, num_frames: int, layout: ChunkLayout | None, batch: int = 1, with_vin: bool | None = None) -> FlopBreakdown:
    """FLOPs of one denoising step: the VIN (``with_vin``, default: whenever there is a layout) and the DiT."""
    return _breakdown(_step_products(preset, num_frames, layout, batch, with_vin), training=False)


def training_step_flops(preset: Preset, num_frames: int, layout: ChunkLayout | None, batch: int = 1, with_vin: bool | None = None) -> FlopBreakdown:
    """FLOPs of one training step, :func:`vin.training_loss` and its backward, per component.

    The forward is :func:`step_flops`; the backward adds twice every linear layer (input and weight
    gradients) but once the layers whose input is data (patch embeddings, the first layers of the
    timestep and text MLPs), and :data:`vin_kernels.flops.BACKWARD_FACTOR` (2.5) times every attention:
    FlashAttention's backward, which the sdpa and Triton backends run and count (the reference
    backend's autograd backward runs 2x instead). ``context_grad=False`` saves no products.
    """
    return _breakdown(_step_products(preset, num_frames, layout, batch, with_vin), training=True)


def sample_flops(preset: Preset, num_frames: int, layout: ChunkLayout | None, batch: int = 1, steps: int | None = None, with_vin: bool | None = None) -> FlopBreakdown:
    """FLOPs of a whole sample: ``steps`` (default ``preset.steps``) denoising steps."""
    return step_flops(preset, num_frames, layout, batch, with_vin) * (steps or preset.steps)
