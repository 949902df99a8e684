"""VINAdapter: global tokens from a Video Interface Network for a frozen diffusers video transformer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DiTConfig, VINConfig
from ..interface import VIN
from ._families import VideoInputs, family_of
from .attention import ATTENTION_OPS, ChunkedAttention, check_backend, chunked_attention

__all__ = ["VINAdapter"]


class VINAdapter(nn.Module):
    """``global_kv = adapter(video)``: a :class:`vin.VIN` that gives every video self-attention global tokens.

    The VIN reads the keyframes of the noisy latent video (one latent frame every
    ``config.keyframe_interval_s`` seconds), refines its ``config.num_global_tokens`` tokens with the
    text, and projects them to every video self-attention's keys and values
    ``[B, G, heads, head_dim]`` — no RoPE, no QK-norm: they are learned in the attention's space.
    :meth:`attach` installs :func:`vin.diffusers.chunked_attention` with the adapter as its
    ``global_tokens`` and :attr:`gate` as its ``global_gate``; the transformer stays frozen and only
    the adapter's parameters train (:meth:`training_loss`), plug-and-play on a pretrained model.

    **Zero-initialized gate.** Per video self-attention and head, the output is ``o_c + gate * (o_cg
    - o_c)``: ``o_c`` the chunk attention without global tokens, ``o_cg`` the one softmax over the
    chunk window and the global tokens. :attr:`gate` starts at 0, so a freshly attached adapter gives
    exactly what ``chunked_attention`` with the same chunk/context and no global tokens gives (with
    one chunk covering the video: the stock model). Its first gradient reaches the gate only
    (``d o / d gate = o_cg - o_c``; the VIN's is ``gate`` times its ungated gradient, 0 at first);
    once the gate moves, the VIN trains too. ``gate = 1`` is the ungated VIN attention; the gate is
    not bounded (a negative one pushes the output away from the global tokens). Adam moves it by
    about its learning rate per step, so give it a larger one than the VIN's (the tests and
    ``examples/wan_long_video.py`` use 10x; in ``test_short_training_run_lowers_the_loss`` 30 steps
    then lower the loss by 16% instead of 4.5%).

    The VIN is built for the transformer's geometry: latent channels, spatial patch and text width
    from its config, heads/head dim and layer count from its video self-attentions, and a fixed
    latent ``height`` x ``width`` (its spatial position table).

    Args:
        transformer: a supported diffusers video transformer (not registered as a submodule: the
            adapter's ``parameters()`` are the VIN's and the gate).
        config: the VIN's :class:`vin.VINConfig` (tokens, width, depth, heads, keyframe interval,
            fps and video frames per latent frame of the model's VAE).
        height, width: latent height and width of the videos (before patching).
        backend: vin_kernels backend of the VIN's attention (checked here).

    Attributes:
        vin: the :class:`vin.VIN`. gate: ``[layers, heads]`` float32 parameter, zeros at construction.
    """

    def __init__(self, transformer, config: VINConfig, *, height: int, width: int, backend: str = "auto"):
        super().__init__()
        family = family_of(transformer)
        if not isinstance(config, VINConfig):
            raise TypeError(f"config must be a vin.VINConfig, got {type(config).__name__}")
        channels, patch, text_dim = family.vin_dims(transformer)
        attentions = family.attention_modules(transformer)
        first = attentions[0][1]
        heads = first.heads
        head_dim = first.to_q.out_features // heads
        self.dit_config = DiTConfig(
            in_channels=channels, height=height, width=width, patch=patch, hidden=heads * head_dim,
            depth=len(attentions), heads=heads, text_dim=text_dim,
        )
        self.vin = VIN(config, self.dit_config, backend=check_backend(backend, ATTENTION_OPS))
        self.gate = nn.Parameter(torch.zeros(len(attentions), heads))
        self._transformer = (transformer,)  # a tuple keeps it out of the registered submodules
        self._handle: ChunkedAttention | None = None

    @property
    def transformer(self):
        return self._transformer[0]

    def forward(self, video: VideoInputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per video self-attention, the global ``(keys, values)`` ``[B, G, heads, head_dim]``."""
        cfg = self.dit_config
        expected = (cfg.in_channels, cfg.height, cfg.width)
        if tuple(video.latents.shape[2:]) != expected or video.patch_size != cfg.patch:
            raise ValueError(
                f"this VINAdapter was built for latent frames (C, H, W) = {expected} with patch {cfg.patch}; "
                f"the transformer got {tuple(video.latents.shape[2:])} with patch {video.patch_size}"
            )
        return self.vin(video.latents, video.timestep, video.text)

    def attach(
        self, *, chunk: int, context: int = 0, context_grad: bool = False, backend: str = "auto"
    ) -> ChunkedAttention:
        """Freeze the transformer and install chunked attention with this adapter's gated global tokens.

        ``context_grad=False`` (the default here) is the paper's inter-chunk stop-gradient for
        training. Returns the :class:`vin.diffusers.ChunkedAttention` handle (``remove()`` detaches).
        """
        self.transformer.requires_grad_(False)
        self._handle = chunked_attention(
            self.transformer, chunk=chunk, context=context, global_tokens=self, global_gate=self.gate,
            context_grad=context_grad, backend=backend,
        )
        return self._handle

    def training_loss(
        self,
        x0: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        *,
        generator: torch.Generator,
        num_train_timesteps: int = 1000,
        **forward_kwargs,
    ) -> torch.Tensor:
        """Flow-matching loss ``mean ||v_theta(x_t, t) - (eps - x0)||^2``: frozen transformer, the VIN's tokens.

        ``sigma ~ U(0, 1)`` per video and ``eps ~ N(0, I)`` from ``generator``, ``x_t = (1 - sigma) x0 +
        sigma eps``, ``t = sigma * num_train_timesteps``: the objective Wan, LTX-Video and HunyuanVideo
        are trained with (CogVideoX is a v-prediction DDPM model; its objective is not this one).
        Needs :meth:`attach` first; gradients reach only the adapter (the gate, and the VIN once the gate is nonzero).

        Args:
            x0: clean latents in the layout the transformer's forward takes as ``hidden_states``.
            encoder_hidden_states: the text embedding the forward takes.
            forward_kwargs: further forward arguments (e.g. ``encoder_attention_mask``,
                ``pooled_projections`` for HunyuanVideo; ``num_frames``, ``height``, ``width`` for LTX).
        Returns:
            the scalar float32 loss.
        """
        if self._handle is None or not self._handle.installed:
            raise RuntimeError("call adapter.attach(chunk=...) before adapter.training_loss(...)")
        B = x0.shape[0]
        sigma = torch.rand(B, generator=generator, device=generator.device).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=generator.device, dtype=x0.dtype).to(x0.device)
        s = sigma.view(B, *([1] * (x0.dim() - 1))).to(x0.dtype)
        x_t = (1 - s) * x0 + s * noise
        prediction = self.transformer(
            hidden_states=x_t, timestep=sigma * num_train_timesteps, encoder_hidden_states=encoder_hidden_states,
            return_dict=False, **forward_kwargs,
        )[0]
        return F.mse_loss(prediction.float(), (noise - x0).float())
