"""Tiny random diffusers video transformers (the configs of diffusers' own model tests) and their inputs.

Every case builds a model from a config (nothing downloaded) and makes forward arguments for a
batch of 2 videos of ``F`` latent frames with 16 tokens per latent frame. Skipped without diffusers.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

if importlib.util.find_spec("diffusers") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    from diffusers import (
        CogVideoXTransformer3DModel,
        HunyuanVideoTransformer3DModel,
        LTXVideoTransformer3DModel,
        WanTransformer3DModel,
    )
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

TOKENS_PER_FRAME = 16
BATCH = 2


@dataclass(frozen=True)
class Case:
    """A tiny model and how to call it.

    ``inputs(F, generator)``: forward kwargs for ``F`` latent frames (attention frames).
    ``frames(inputs, f0, f1)``: the kwargs of latent frames ``[f0, f1)`` as a video of their own.
    ``frame_dim``: dim of the output sample that holds the latent frames; ``frame_tokens``: True when
    the sample is packed tokens ``[B, F*T, C]``.
    """

    name: str
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[int, torch.Generator], dict]
    joint: bool
    frame_dim: int
    frames: Callable[[dict, int, int], dict]
    frame_tokens: bool = False


def _randn(*shape, generator):
    return torch.randn(*shape, generator=generator)


def _timestep(generator):
    return torch.randint(1, 1000, (BATCH,), generator=generator).float()


# ------------------------------------------------------------------------------------------------ Wan
def _wan(**overrides):
    config = dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )
    return WanTransformer3DModel(**{**config, **overrides})


def _wan_inputs(F, g, per_token_timestep=False):
    timestep = _timestep(g)
    if per_token_timestep:  # Wan 2.2 TI2V: one timestep per token, the conditioning first frame at 0
        timestep = timestep[:, None].repeat(1, F * TOKENS_PER_FRAME)
        timestep[:, :TOKENS_PER_FRAME] = 0
    return {
        "hidden_states": _randn(BATCH, 4, F, 8, 8, generator=g),
        "timestep": timestep,
        "encoder_hidden_states": _randn(BATCH, 6, 16, generator=g),
    }


def _wan_frames(inputs, f0, f1):
    out = dict(inputs, hidden_states=inputs["hidden_states"][:, :, f0:f1])
    if inputs["timestep"].dim() == 2:
        out["timestep"] = inputs["timestep"][:, f0 * TOKENS_PER_FRAME : f1 * TOKENS_PER_FRAME]
    return out


# ------------------------------------------------------------------------------------------------ LTX
def _ltx():
    return LTXVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
        num_layers=1, qk_norm="rms_norm_across_heads", caption_channels=16,
    )


def _ltx_inputs(F, g):
    mask = torch.ones(BATCH, 6, dtype=torch.bool)
    mask[1, 4:] = False
    return {
        "hidden_states": _randn(BATCH, F * TOKENS_PER_FRAME, 4, generator=g),
        "encoder_hidden_states": _randn(BATCH, 6, 16, generator=g),
        "timestep": _timestep(g),
        "encoder_attention_mask": mask,
        "num_frames": F,
        "height": 4,
        "width": 4,
        "rope_interpolation_scale": (8 / 25, 32, 32),  # what LTXPipeline passes (VAE ratios, 25 fps)
    }


def _ltx_frames(inputs, f0, f1):
    tokens = inputs["hidden_states"][:, f0 * TOKENS_PER_FRAME : f1 * TOKENS_PER_FRAME]
    return dict(inputs, hidden_states=tokens, num_frames=f1 - f0)


# ------------------------------------------------------------------------------------------------ HunyuanVideo
def _hunyuan():
    return HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    )


def _hunyuan_inputs(F, g):
    mask = torch.ones(BATCH, 6)
    mask[1, 4:] = 0  # the second prompt is padded: its last two text tokens are masked keys
    return {
        "hidden_states": _randn(BATCH, 4, F, 4, 4, generator=g),
        "timestep": _timestep(g),
        "encoder_hidden_states": _randn(BATCH, 6, 16, generator=g),
        "encoder_attention_mask": mask,
        "pooled_projections": _randn(BATCH, 8, generator=g),
        "guidance": torch.full((BATCH,), 6000.0),
    }


def _hunyuan_frames(inputs, f0, f1):
    return dict(inputs, hidden_states=inputs["hidden_states"][:, :, f0:f1])


# ------------------------------------------------------------------------------------------------ CogVideoX
def _cogvideox(**overrides):
    # 2 layers (diffusers' test has 1): the text rows of the last layer never reach the output, so with
    # one layer a wrong text-query attention would go unnoticed.
    config = dict(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=8, num_layers=2, sample_width=8, sample_height=8, sample_frames=8, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=8,
    )
    return CogVideoXTransformer3DModel(**{**config, **overrides})


def _cogvideox_rope(rope, F):
    """``image_rotary_emb`` for ``F`` latent frames as CogVideoXPipeline computes it (grid 4x4 = sample / patch)."""
    if rope == "1.0":
        return get_3d_rotary_pos_embed(embed_dim=16, crops_coords=((0, 0), (4, 4)), grid_size=(4, 4), temporal_size=F)
    return get_3d_rotary_pos_embed(
        embed_dim=16, crops_coords=None, grid_size=(4, 4), temporal_size=F, grid_type="slice", max_size=(4, 4)
    )


def _cogvideox_inputs(F, g, rope=None, p_t=1):
    inputs = {
        "hidden_states": _randn(BATCH, F * p_t, 4, 8, 8, generator=g),
        "encoder_hidden_states": _randn(BATCH, 8, 8, generator=g),
        "timestep": _timestep(g),
    }
    if rope is not None:
        inputs["image_rotary_emb"] = _cogvideox_rope(rope, F)
    return inputs


def _cogvideox_frames(rope=None, p_t=1):
    def frames(inputs, f0, f1):
        out = dict(inputs, hidden_states=inputs["hidden_states"][:, f0 * p_t : f1 * p_t])
        if rope is not None:
            out["image_rotary_emb"] = _cogvideox_rope(rope, f1 - f0)
        return out

    return frames


CASES = [
    Case("wan2.1", _wan, _wan_inputs, joint=False, frame_dim=2, frames=_wan_frames),
    Case(  # Wan 2.2 A14B has the Wan 2.1 architecture; TI2V 5B differs in its per-token timestep
        "wan2.2-ti2v", _wan, lambda F, g: _wan_inputs(F, g, per_token_timestep=True),
        joint=False, frame_dim=2, frames=_wan_frames,
    ),
    Case("ltx-video", _ltx, _ltx_inputs, joint=False, frame_dim=1, frames=_ltx_frames, frame_tokens=True),
    Case("hunyuan-video", _hunyuan, _hunyuan_inputs, joint=True, frame_dim=2, frames=_hunyuan_frames),
    Case("cogvideox-2b", _cogvideox, _cogvideox_inputs, joint=True, frame_dim=1, frames=_cogvideox_frames()),
    Case(
        "cogvideox-5b-rope",
        lambda: _cogvideox(attention_head_dim=16, use_rotary_positional_embeddings=True),
        lambda F, g: _cogvideox_inputs(F, g, rope="1.0"),
        joint=True, frame_dim=1, frames=_cogvideox_frames("1.0"),
    ),
    Case(
        "cogvideox1.5",
        lambda: _cogvideox(attention_head_dim=16, use_rotary_positional_embeddings=True, patch_size_t=2),
        lambda F, g: _cogvideox_inputs(F, g, rope="1.5", p_t=2),
        joint=True, frame_dim=1, frames=_cogvideox_frames("1.5", p_t=2),
    ),
]


def _built(case: Case):
    torch.manual_seed(0)
    return case.build().eval()


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request):
    return request.param


@pytest.fixture(params=[c for c in CASES if not c.joint], ids=[c.name for c in CASES if not c.joint])
def cross_case(request):
    return request.param


@pytest.fixture(params=[c for c in CASES if c.joint], ids=[c.name for c in CASES if c.joint])
def joint_case(request):
    return request.param


@pytest.fixture
def named_case():
    """``named_case(name)``: the case called ``name``."""
    by_name = {c.name: c for c in CASES}
    return by_name.__getitem__


@pytest.fixture
def build():
    """``build(case)``: the case's model with seed-0 random weights, in eval mode."""
    return _built


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def rel_err():
    """``rel_err(out, ref)``: ``||out - ref|| / ||ref||`` in float64; NaN never passes."""

    def rel(out, ref):
        assert out.shape == ref.shape, (out.shape, ref.shape)
        assert torch.isfinite(out).all(), "non-finite output"
        return ((out.double() - ref.double()).norm() / ref.double().norm()).item()

    return rel
