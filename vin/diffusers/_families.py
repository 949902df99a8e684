"""What vin.diffusers knows about each supported diffusers video transformer.

Per model family: where its video self-attentions are, which processor replaces their stock one,
how a forward's arguments give the latent frames and tokens per frame of its attention sequence,
the video as ``[B, F, C, H, W]`` latent frames for a VIN, and how a forward's arguments are cut into
overlapping windows of latent frames (and the windows' outputs put back together) for
:class:`vin.diffusers.LongVideo`.

Frame quantities here are latent frames of the attention sequence (after temporal patching);
every window/owner index comes from :class:`vin_kernels.ChunkLayout`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from diffusers import (
    CogVideoXTransformer3DModel,
    HunyuanVideoTransformer3DModel,
    LTXVideoTransformer3DModel,
    WanTransformer3DModel,
)

import vin_kernels
from vin_kernels import ChunkLayout

from ._processors import (
    CogVideoXChunkedProcessor,
    HunyuanVideoChunkedProcessor,
    LTXVideoChunkedProcessor,
    WanChunkedProcessor,
)

__all__ = ["VideoInputs", "Family", "family_of", "bind_forward", "FAMILIES"]


@dataclass(frozen=True)
class VideoInputs:
    """One transformer forward's video, in the form a :class:`vin.VIN` reads.

    Attributes:
        latents: ``[B, F, C, H, W]`` latent frames (``F`` frames of the attention sequence; a
            temporal patch of ``p_t`` frames is folded into the channels), a view of the forward's
            ``hidden_states`` where the layout allows it.
        timestep: ``[B]`` noise level of each video (the largest one where the model takes one per token).
        text: ``encoder_hidden_states`` as passed to the forward, ``[B, L, text_dim]``.
        patch_size: spatial patch of the model: ``tokens_per_frame = (H / p) * (W / p)``.
        windows_per_video: set by :class:`vin.diffusers.LongVideo`: the forward runs ``B * n``
            windows of these ``B`` videos (window ``r`` belongs to video ``r // n``).
    """

    latents: torch.Tensor
    timestep: torch.Tensor
    text: torch.Tensor
    patch_size: int
    windows_per_video: int = 1

    @property
    def num_frames(self) -> int:
        return self.latents.shape[1]

    @property
    def tokens_per_frame(self) -> int:
        H, W = self.latents.shape[-2:]
        return (H // self.patch_size) * (W // self.patch_size)


def bind_forward(module: torch.nn.Module, args: tuple, kwargs: dict) -> inspect.BoundArguments:
    """The arguments of one ``module.forward`` call by name (defaults filled in)."""
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    return bound


def _per_video(timestep, batch: int, device) -> torch.Tensor:
    """A forward's timestep (scalar, ``[B]`` or per token ``[B, N]``) as ``[B]``: the largest per video."""
    t = torch.as_tensor(timestep, device=device)
    if t.dim() > 1:
        t = t.flatten(1).amax(dim=1)
    return t.expand(batch) if t.dim() == 0 or t.shape[0] != batch else t


def _windows(x: torch.Tensor, frame_dim: int, layout: ChunkLayout) -> torch.Tensor:
    """``x`` with frames on ``frame_dim`` -> the layout's windows batched: ``[B * n, ..., L, ...]``."""
    index = torch.tensor(layout.window_frame_index, device=x.device)
    windows = x.index_select(frame_dim, index.flatten()).unflatten(frame_dim, tuple(index.shape))
    return windows.movedim(frame_dim, 1).flatten(0, 1)


def _blend(windows: torch.Tensor, frame_dim: int, layout: ChunkLayout, ramp: bool, backend: str) -> torch.Tensor:
    """Inverse of :func:`_windows`: ``[B * n, ..., L, ...]`` -> ``[B, ..., F, ...]``.

    ``ramp``: blend overlapping frames with the layout's ramp weights (:func:`vin_kernels.overlap_fuse`);
    otherwise each frame is taken from the window that owns it (:attr:`ChunkLayout.owners`).
    """
    per_window = windows.unflatten(0, (-1, layout.num_chunks)).movedim(frame_dim + 1, 2)  # [B, n, L, *feat]
    if ramp:
        video = vin_kernels.overlap_fuse(per_window.contiguous(), layout, backend=backend)
    else:
        owner_entry = [
            next(e for e in entries if e[0] == owner) for entries, owner in zip(layout.frame_blend, layout.owners)
        ]
        window = torch.tensor([e[0] for e in owner_entry], device=windows.device)
        position = torch.tensor([e[1] for e in owner_entry], device=windows.device)
        video = per_window[:, window, position]
    return video.movedim(1, frame_dim)


def _repeat_per_video(value, batch: int, copies: int):
    """Per-video tensors (first dim ``batch``) repeated for each of a video's ``copies`` windows."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value.repeat_interleave(copies, dim=0)
    return value


def _window_timestep(timestep, batch: int, tokens_per_frame: int, layout: ChunkLayout):
    """A per-token timestep ``[B, F*T]`` cut into windows ``[B*n, L*T]``; a per-video one repeated."""
    per_token = layout.num_frames * tokens_per_frame
    if isinstance(timestep, torch.Tensor) and timestep.dim() == 2 and timestep.shape[1] == per_token:
        return _windows(timestep.unflatten(1, (layout.num_frames, tokens_per_frame)), 1, layout).flatten(1)
    return _repeat_per_video(timestep, batch, layout.num_chunks)


class Family:
    """Base of the per-model descriptions. Subclasses set the class attributes and the hooks below."""

    name: str
    model_class: type
    joint: bool  # text and video tokens share the self-attention
    processor_class: type
    per_video_arguments: tuple[str, ...] = ()

    def attention_modules(self, transformer) -> list[tuple[str, torch.nn.Module]]:
        raise NotImplementedError

    def geometry(self, transformer, arguments: dict) -> tuple[int, int]:
        """``(latent frames, tokens per frame)`` of the attention sequence of one forward."""
        raise NotImplementedError

    def video_inputs(self, transformer, arguments: dict) -> VideoInputs:
        raise NotImplementedError

    def vin_dims(self, transformer) -> tuple[int, int, int]:
        """``(channels, spatial patch, text_dim)`` of :attr:`VideoInputs.latents` and ``.text`` of this model."""
        raise NotImplementedError

    # ---------------------------------------------------------------- long videos (LongVideo)
    def long_video_frames(self, transformer, arguments: dict) -> int:
        """Latent frames of the forward's video, checked to be windowable."""
        raise NotImplementedError

    def to_windows(self, transformer, arguments: dict, layout: ChunkLayout) -> dict:
        """The forward's arguments for the layout's windows of every video, batched ``[B * n, ...]``."""
        raise NotImplementedError

    def from_windows(self, sample: torch.Tensor, layout: ChunkLayout, ramp: bool, backend: str) -> torch.Tensor:
        """The windows' output sample put back together as the whole videos' sample."""
        raise NotImplementedError

    def _repeat_arguments(self, arguments: dict, batch: int, copies: int) -> dict:
        out = dict(arguments)
        for name in self.per_video_arguments:
            out[name] = _repeat_per_video(out[name], batch, copies)
        return out


def _require_no_temporal_patch(name: str, p_t) -> None:
    if p_t not in (None, 1):
        raise NotImplementedError(
            f"vin.diffusers.LongVideo cuts {name} videos into windows of latent frames and supports only "
            f"models without a temporal patch; this one has patch_size_t={p_t}"
        )


class _FramesFirstFamily(Family):
    """``hidden_states [B, C, F, H, W]``, video tokens in (frame, row, column) order: Wan, HunyuanVideo."""

    def _patches(self, transformer) -> tuple[int, int, int]:
        raise NotImplementedError

    def geometry(self, transformer, arguments):
        p_t, p_h, p_w = self._patches(transformer)
        _, _, F, H, W = arguments["hidden_states"].shape
        return F // p_t, (H // p_h) * (W // p_w)

    def video_inputs(self, transformer, arguments):
        p_t, p_h, _ = self._patches(transformer)
        x = arguments["hidden_states"]
        B, C, F, H, W = x.shape
        latents = x[:, :, : F - F % p_t].unflatten(2, (F // p_t, p_t)).permute(0, 2, 3, 1, 4, 5).flatten(2, 3)
        t = _per_video(arguments["timestep"], B, x.device)
        return VideoInputs(latents=latents, timestep=t, text=arguments["encoder_hidden_states"], patch_size=p_h)

    def vin_dims(self, transformer):
        p_t, p_h, p_w = self._patches(transformer)
        if p_h != p_w:
            raise NotImplementedError(f"a VIN needs square patches, this {self.name} model has {p_h}x{p_w}")
        return transformer.config.in_channels * p_t, p_h, self._text_dim(transformer)

    def _text_dim(self, transformer) -> int:
        raise NotImplementedError

    def long_video_frames(self, transformer, arguments):
        _require_no_temporal_patch(self.name, self._patches(transformer)[0])
        return arguments["hidden_states"].shape[2]

    def to_windows(self, transformer, arguments, layout):
        x = arguments["hidden_states"]
        out = self._repeat_arguments(arguments, x.shape[0], layout.num_chunks)
        out["hidden_states"] = _windows(x, 2, layout)
        tokens_per_frame = self.geometry(transformer, arguments)[1]
        out["timestep"] = _window_timestep(arguments["timestep"], x.shape[0], tokens_per_frame, layout)
        return out

    def from_windows(self, sample, layout, ramp, backend):
        return _blend(sample, 2, layout, ramp, backend)


class WanFamily(_FramesFirstFamily):
    """Wan 2.1 and 2.2 (``WanTransformer3DModel``): video self-attention ``blocks[i].attn1``.

    Cross-attention model: ``attn1`` holds only video tokens; ``attn2`` (text, and the image of the
    I2V models) keeps its stock processor. Wan 2.2 TI2V passes one timestep per token ``[B, N]``.
    """

    name = "Wan"
    model_class = WanTransformer3DModel
    joint = False
    processor_class = WanChunkedProcessor
    per_video_arguments = ("encoder_hidden_states", "encoder_hidden_states_image")

    def attention_modules(self, transformer):
        return [(f"blocks.{i}.attn1", block.attn1) for i, block in enumerate(transformer.blocks)]

    def _patches(self, transformer):
        return tuple(transformer.config.patch_size)

    def _text_dim(self, transformer):
        return transformer.config.text_dim


class HunyuanVideoFamily(_FramesFirstFamily):
    """HunyuanVideo (``HunyuanVideoTransformer3DModel``): joint attention in every dual-stream block
    (``transformer_blocks[i].attn``) and single-stream block (``single_transformer_blocks[i].attn``).
    The text refiner's self-attention (text only) keeps its stock processor.
    """

    name = "HunyuanVideo"
    model_class = HunyuanVideoTransformer3DModel
    joint = True
    processor_class = HunyuanVideoChunkedProcessor
    per_video_arguments = ("encoder_hidden_states", "encoder_attention_mask", "pooled_projections", "guidance")

    def attention_modules(self, transformer):
        dual = [(f"transformer_blocks.{i}.attn", b.attn) for i, b in enumerate(transformer.transformer_blocks)]
        single = [
            (f"single_transformer_blocks.{i}.attn", b.attn) for i, b in enumerate(transformer.single_transformer_blocks)
        ]
        return dual + single

    def _patches(self, transformer):
        p, p_t = transformer.config.patch_size, transformer.config.patch_size_t
        return p_t, p, p

    def _text_dim(self, transformer):
        return transformer.config.text_embed_dim


class LTXVideoFamily(Family):
    """LTX-Video (``LTXVideoTransformer3DModel``): video self-attention ``transformer_blocks[i].attn1``.

    ``hidden_states`` are packed tokens ``[B, F*H*W, C]`` (the pipeline patchifies); the forward's
    ``num_frames``, ``height``, ``width`` give the token grid. A per-token timestep ``[B, N]`` (image
    conditioning) is supported; ``video_coords`` (conditioning tokens outside the grid) is not.
    """

    name = "LTX-Video"
    model_class = LTXVideoTransformer3DModel
    joint = False
    processor_class = LTXVideoChunkedProcessor
    per_video_arguments = ("encoder_hidden_states", "encoder_attention_mask")

    def attention_modules(self, transformer):
        return [(f"transformer_blocks.{i}.attn1", b.attn1) for i, b in enumerate(transformer.transformer_blocks)]

    def geometry(self, transformer, arguments):
        num_frames = arguments["num_frames"]
        if num_frames is None:
            raise NotImplementedError(
                "vin.diffusers needs LTXVideoTransformer3DModel's num_frames argument to find the latent frames "
                "(calls with only video_coords, as LTXConditionPipeline makes, are not supported)"
            )
        N = arguments["hidden_states"].shape[1]
        if N % num_frames:
            raise ValueError(f"hidden_states holds {N} tokens, not a multiple of num_frames={num_frames}")
        return num_frames, N // num_frames

    def video_inputs(self, transformer, arguments):
        x = arguments["hidden_states"]
        F, H, W = arguments["num_frames"], arguments["height"], arguments["width"]
        if F is None or H is None or W is None or F * H * W != x.shape[1]:
            raise ValueError(
                f"LTX hidden_states {tuple(x.shape)} are not the grid num_frames x height x width = {F} x {H} x {W}"
            )
        latents = x.unflatten(1, (F, H, W)).permute(0, 1, 4, 2, 3)
        t = _per_video(arguments["timestep"], x.shape[0], x.device)
        return VideoInputs(latents=latents, timestep=t, text=arguments["encoder_hidden_states"], patch_size=1)

    def vin_dims(self, transformer):
        return transformer.config.in_channels, 1, transformer.config.caption_channels

    def long_video_frames(self, transformer, arguments):
        if arguments.get("video_coords") is not None:
            raise NotImplementedError("vin.diffusers.LongVideo does not support LTX calls with video_coords")
        return self.geometry(transformer, arguments)[0]

    def to_windows(self, transformer, arguments, layout):
        x = arguments["hidden_states"]
        F, T = self.geometry(transformer, arguments)
        out = self._repeat_arguments(arguments, x.shape[0], layout.num_chunks)
        out["hidden_states"] = _windows(x.unflatten(1, (F, T)), 1, layout).flatten(1, 2)
        out["timestep"] = _window_timestep(arguments["timestep"], x.shape[0], T, layout)
        out["num_frames"] = layout.chunk_len
        return out

    def from_windows(self, sample, layout, ramp, backend):
        frames = sample.unflatten(1, (layout.chunk_len, -1))
        return _blend(frames, 1, layout, ramp, backend).flatten(1, 2)


class CogVideoXFamily(Family):
    """CogVideoX 1.0 and 1.5 (``CogVideoXTransformer3DModel``): joint attention ``transformer_blocks[i].attn1``.

    ``hidden_states [B, F, C, H, W]``; the sequence is ``[text; video]``; RoPE (5B models) arrives as
    ``image_rotary_emb`` computed by the pipeline for the whole video.
    """

    name = "CogVideoX"
    model_class = CogVideoXTransformer3DModel
    joint = True
    processor_class = CogVideoXChunkedProcessor
    per_video_arguments = ("encoder_hidden_states", "timestep", "timestep_cond", "ofs")

    def attention_modules(self, transformer):
        return [(f"transformer_blocks.{i}.attn1", b.attn1) for i, b in enumerate(transformer.transformer_blocks)]

    def _patches(self, transformer) -> tuple[int, int]:
        p_t = transformer.config.patch_size_t
        return (1 if p_t is None else p_t), transformer.config.patch_size

    def geometry(self, transformer, arguments):
        p_t, p = self._patches(transformer)
        _, F, _, H, W = arguments["hidden_states"].shape
        return F // p_t, (H // p) * (W // p)

    def video_inputs(self, transformer, arguments):
        p_t, p = self._patches(transformer)
        x = arguments["hidden_states"]
        B, F = x.shape[:2]
        latents = x[:, : F - F % p_t].unflatten(1, (F // p_t, p_t)).flatten(2, 3)
        t = _per_video(arguments["timestep"], B, x.device)
        return VideoInputs(latents=latents, timestep=t, text=arguments["encoder_hidden_states"], patch_size=p)

    def vin_dims(self, transformer):
        p_t, p = self._patches(transformer)
        return transformer.config.in_channels * p_t, p, transformer.config.text_embed_dim

    def long_video_frames(self, transformer, arguments):
        _require_no_temporal_patch(self.name, transformer.config.patch_size_t)
        return arguments["hidden_states"].shape[1]

    def to_windows(self, transformer, arguments, layout):
        x = arguments["hidden_states"]
        out = self._repeat_arguments(arguments, x.shape[0], layout.num_chunks)
        out["hidden_states"] = _windows(x, 1, layout)
        rotary = arguments.get("image_rotary_emb")
        if rotary is not None:  # rows are (frame, row, column); a window's are those of frames 0 .. L-1
            tokens = layout.chunk_len * self.geometry(transformer, arguments)[1]
            out["image_rotary_emb"] = tuple(r[:tokens] for r in rotary)
        return out

    def from_windows(self, sample, layout, ramp, backend):
        return _blend(sample, 1, layout, ramp, backend)


FAMILIES: tuple[Family, ...] = (WanFamily(), LTXVideoFamily(), HunyuanVideoFamily(), CogVideoXFamily())


def family_of(transformer) -> Family:
    """The family of a supported transformer, or a TypeError that lists the supported classes."""
    for family in FAMILIES:
        if isinstance(transformer, family.model_class):
            return family
    names = ", ".join(f.model_class.__name__ for f in FAMILIES)
    raise TypeError(f"transformer must be one of diffusers' {names}; got {type(transformer).__name__}")
