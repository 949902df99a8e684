"""VideoDiT: a latent video DiT whose self-attention is chunked, with local context and VIN global tokens."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

import vin_kernels
from vin_kernels import ChunkLayout

from .config import DiTConfig
from .diffusion import PREDICTIONS
from .layers import (
    Mlp,
    TimestepEmbedding,
    cross_attention,
    layer_norm,
    modulate,
    patchify,
    rotary_angles,
    rotate,
    split_heads,
    unpatchify,
    zero_,
)

__all__ = ["VideoDiT", "GlobalKV", "PrefixKV", "ROPE_BASE"]

# Rotary base of the positions: angles p * ROPE_BASE^(-2j/R) over R channels of an axis turn by 1 rad
# down to ~ROPE_BASE^-1 per frame (or patch), so distances of 1 to ~100 latent frames are told apart.
ROPE_BASE = 100.0

# Per DiT layer, the VIN's global keys and values ``[B, G, heads, head_dim]`` (or None: no VIN).
GlobalKV = list[tuple[torch.Tensor, torch.Tensor]]
# ``prefix_kv(block, k, v)``: keys/values of the tokens before a part of a video (see VideoDiT.forward).
PrefixKV = Callable[[int, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor] | None"]


class DiTBlock(nn.Module):
    """adaLN-Zero block: chunked self-attention (+ global tokens), text cross-attention, MLP."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        h = cfg.hidden
        self.heads = cfg.heads
        self.norm1 = layer_norm(h)
        self.qkv = nn.Linear(h, 3 * h)
        self.proj = nn.Linear(h, h)
        self.norm2 = layer_norm(h, affine=True)
        self.cross_q = nn.Linear(h, h)
        self.cross_kv = nn.Linear(h, 2 * h)
        self.cross_proj = nn.Linear(h, h)
        self.norm3 = layer_norm(h)
        self.mlp = Mlp(h, cfg.mlp_hidden)
        self.ada = nn.Sequential(nn.SiLU(), zero_(nn.Linear(h, 6 * h)))

    def forward(self, x, c, text, attention: dict, global_kv, backend: str, rope, prefix_kv=None, rows=None):
        """x ``[B, N, hidden]``, c ``[B, hidden]``, text ``[B, L, hidden]``; attention: chunk_attention sizes.

        ``rope = (cos, sin, timeless)``: the rotation ``[N, head_dim/2]`` of every head's queries and
        keys (:func:`~vin.layers.rotate`) and the ``[head_dim]`` mask that zeroes the global keys' time
        channels, so a query's score with a global token does not depend on its time position.

        ``rows``: the modulation is computed for all rows of ``c`` and these rows kept (``c`` then
        covers more sequences than ``x``; see ``window_range`` of :meth:`VideoDiT.forward`).
        ``prefix_kv(k, v)`` (see :meth:`VideoDiT.forward`) returns the keys/values ``[B, P, H, D]`` of
        the ``P`` tokens before ``x`` (whole chunks) or None; they join as ``P`` zero queries whose
        outputs are dropped, so every chunk of ``x`` attends to exactly the keys it would in the whole
        sequence, through the same ``chunk_attention`` call.
        """
        B, N, _ = x.shape
        modulation = self.ada(c) if rows is None else self.ada(c)[rows]
        shift1, scale1, gate1, shift2, scale2, gate2 = modulation.chunk(6, dim=-1)
        q, k, v = split_heads(self.qkv(modulate(self.norm1(x), shift1, scale1)), 3, self.heads)
        cos, sin, timeless = rope
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        gk, gv = global_kv if global_kv is not None else (None, None)
        if gk is not None:
            gk = gk * timeless.to(gk.dtype)
        prefix = prefix_kv(k, v) if prefix_kv is not None else None
        if prefix is not None:
            pk, pv = prefix
            q, k, v = torch.cat([q.new_zeros(pk.shape), q], 1), torch.cat([pk, k], 1), torch.cat([pv, v], 1)
        a = vin_kernels.chunk_attention(q, k, v, global_k=gk, global_v=gv, backend=backend, **attention)
        if prefix is not None:
            a = a[:, prefix[0].shape[1] :]
        x = x + gate1[:, None] * self.proj(a.reshape(B, N, -1))
        q = self.cross_q(self.norm2(x)).view(B, N, self.heads, -1)
        tk, tv = split_heads(self.cross_kv(text), 2, self.heads)
        x = x + self.cross_proj(cross_attention(q, tk, tv, backend).reshape(B, N, -1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm3(x), shift2, scale2))


class VideoDiT(nn.Module):
    """Latent video DiT over chunks: ``out = VideoDiT(x_t, t, text, layout=..., global_kv=...)``.

    ``out`` is the noise ``eps`` or the velocity ``v`` (``prediction``, :class:`vin.DiffusionSchedule`);
    :func:`vin.sample` and :func:`vin.training_loss` read :attr:`prediction`.

    Patch embedding 1 x p x p, timestep embedding with adaLN-Zero modulation, ``depth`` blocks of
    (self-attention through :func:`vin_kernels.chunk_attention`, cross-attention to the text,
    MLP), a final adaLN layer back to latent frames.

    The chunking comes from the layout:

    * ``layout=None`` or ``ChunkLayout.full(F)`` ("full" mode): one chunk over the whole video, the
      full-attention baseline.
    * context layout: ``x [B, F, C, h, w]``; chunk ``i``'s queries see their own frames, the
      layout's context frames before them and the global tokens.
    * window layout: ``x [B, n, L, C, h, w]`` (the windows); all ``B*n`` windows run in one batched
      call, each seeing itself and the global tokens of its video.

    Positions (docs/design.md, Time positions and the prediction target) enter only the
    self-attention, as a rotary embedding (:data:`ROPE_BASE`) of the latent frame index, the patch
    row and the patch column on every head's query and key channels (Wan's split), so a score
    depends on two tokens' positions only through their differences; the global keys are zero in the
    time channels (their scores carry no time). Frames are numbered from the first frame of the video
    (full and context layouts) or of the window, so a chunk with its context, an inference window
    over the same frames and a whole video all see the same relative positions, and nothing depends
    on where in the video a chunk lies.
    """

    def __init__(self, cfg: DiTConfig, backend: str = "auto", prediction: str = "epsilon"):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if cfg.head_dim % 2:
            raise ValueError(f"VideoDiT rotates every head's channels in pairs: head_dim must be even, got {cfg.head_dim}")
        self.cfg = cfg
        self.backend = backend
        self.prediction = prediction
        h = cfg.hidden
        self.patch_embed = nn.Linear(cfg.patch_dim, h)
        self.grid = (cfg.height // cfg.patch, cfg.width // cfg.patch)
        self.time_pairs = (cfg.head_dim - 4 * (cfg.head_dim // 6)) // 2
        self.t_embed = TimestepEmbedding(h, cfg.frequency_dim)
        self.text_proj = Mlp(cfg.text_dim, h, h)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final_norm = layer_norm(h)
        self.final_ada = nn.Sequential(nn.SiLU(), zero_(nn.Linear(h, 2 * h)))
        self.final = zero_(nn.Linear(h, cfg.patch_dim))

    @torch.no_grad()
    def randomize_zero_layers(self, std: float = 0.02) -> "VideoDiT":
        """Give the zero-initialized linear layers (adaLN-Zero modulations, the final layer) ``N(0, std)``
        weights, in place, from torch's global generator: a fresh DiT predicts exactly 0, so benchmarks and
        tests of an untrained model call this first. Returns ``self``."""
        for module in self.modules():
            if isinstance(module, nn.Linear) and not module.weight.any():
                module.weight.normal_(0, std)
        return self

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        *,
        layout: ChunkLayout | None = None,
        global_kv: GlobalKV | None = None,
        context_grad: bool = True,
        first_frame: int = 0,
        prefix_kv: PrefixKV | None = None,
        window_range: range | None = None,
    ) -> torch.Tensor:
        """Predict the noise (or the velocity: :attr:`prediction`) of ``x``.

        Args:
            x: ``[B, F, C, h, w]`` (full or context layout) or ``[B, n, L, C, h, w]`` (window layout).
            t: ``[B]`` diffusion timesteps. text: ``[B, text_len, text_dim]``.
            global_kv: per block the VIN's ``(gk, gv)`` ``[B, G, heads, head_dim]``, or None.
            context_grad: False stops gradients through the context frames (training).
            first_frame: context layout, for a video split across processes (:mod:`vin.parallel`):
                ``x`` holds the layout's frames ``[first_frame, first_frame + F)``, ``first_frame``
                the start of a chunk.
            prefix_kv: with ``first_frame``: called in block ``i`` as ``prefix_kv(i, k, v)`` with the
                block's keys/values ``[B, F*T, heads, head_dim]`` of ``x``; returns the keys/values
                ``[B, P, heads, head_dim]`` of the ``P`` tokens before ``x`` (whole chunks; only the
                layout's context is read, the rest may be zeros) or None. :mod:`vin.parallel` sends and
                receives them here. No prefix: the chunks of ``x`` see no context before it.
            window_range: window layout, for a video split across processes: ``x``
                ``[B, len(window_range), L, ...]`` holds these windows of the layout. The adaLN
                modulation is still computed for all ``layout.num_chunks`` windows, and these rows
                kept, so a process's numbers are bitwise one process's: MKL rounds a matrix product
                of fewer than 4 rows differently (measured on a 2-core AVX-512 CPU, torch 2.13).
        Returns:
            the predicted noise, shaped like ``x``, in the model's dtype (inputs are cast to it).
        """
        cfg = self.cfg
        dtype = self.patch_embed.weight.dtype
        x, text = x.to(dtype), text.to(dtype)
        c, text = self.t_embed(t), self.text_proj(text)  # per video, before windows repeat them
        full, layout = layout is None, layout or ChunkLayout.full(x.shape[1])
        windows = layout.is_windows
        rows = None
        if windows:
            B, n = x.shape[:2]
            x = x.flatten(0, 1)
            text = text.repeat_interleave(n, dim=0)
            if window_range is not None:
                self._check_window_range(layout, window_range, n)
                window_index = torch.tensor(window_range, device=x.device)
                rows = (torch.arange(B, device=x.device)[:, None] * layout.num_chunks + window_index).flatten()
                n = layout.num_chunks
            c = c.repeat_interleave(n, dim=0)
        elif window_range is not None:
            raise ValueError("window_range needs a window-mode layout")
        F = x.shape[1]
        T = cfg.tokens_per_frame
        tokens = self.patch_embed(patchify(x, cfg.patch))
        if (first_frame or prefix_kv is not None) and (windows or full):
            raise ValueError("first_frame and prefix_kv need a context-mode layout")
        positions = self._time_positions(layout, F, x.device, first_frame)
        rope = self._rope(positions, T)
        attention = layout.attention_sizes(T) | {"context_grad": context_grad}
        for i, block in enumerate(self.blocks):
            prefix = None if prefix_kv is None else functools.partial(prefix_kv, i)
            kv = None if global_kv is None else global_kv[i]
            tokens = block(tokens, c, text, attention, kv, self.backend, rope, prefix, rows)
        shift, scale = (self.final_ada(c) if rows is None else self.final_ada(c)[rows]).chunk(2, dim=-1)
        out = self.final(modulate(self.final_norm(tokens), shift, scale))
        eps = unpatchify(out, F, cfg.in_channels, cfg.height, cfg.width, cfg.patch)
        return eps.unflatten(0, (B, -1)) if windows else eps

    def _rope(self, positions: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(cos, sin, timeless)``: the rotary angles ``[F*T, head_dim/2]`` of every token (frame index
        ``positions [F]``, then row and column of its patch) and the ``[head_dim]`` mask that zeroes
        the global keys' time channels. Channel pairs ``(i, i + head_dim/2)``: the first
        :attr:`time_pairs` turn with the frame, the next ``head_dim // 6`` with the row, the last
        ``head_dim // 6`` with the column (Wan's split of a head)."""
        D, (rows, cols) = self.cfg.head_dim, self.grid
        cos_t, sin_t = rotary_angles(positions, 2 * self.time_pairs, ROPE_BASE, tokens_per_position=T)
        r = torch.arange(rows, device=positions.device).repeat_interleave(cols)
        c = torch.arange(cols, device=positions.device).repeat(rows)
        cos_r, sin_r = rotary_angles(r, 2 * (D // 6), ROPE_BASE)
        cos_c, sin_c = rotary_angles(c, 2 * (D // 6), ROPE_BASE)
        F = len(positions)
        cos = torch.cat([cos_t, cos_r.repeat(F, 1), cos_c.repeat(F, 1)], dim=-1)
        sin = torch.cat([sin_t, sin_r.repeat(F, 1), sin_c.repeat(F, 1)], dim=-1)
        timeless = torch.ones(D, device=positions.device)
        timeless[: self.time_pairs] = 0
        timeless[D // 2 : D // 2 + self.time_pairs] = 0
        return cos, sin, timeless

    @staticmethod
    def _check_window_range(layout: ChunkLayout, window_range, windows_in_x: int) -> None:
        if not isinstance(window_range, range) or window_range.step != 1 or len(window_range) != windows_in_x:
            raise ValueError(f"window_range must be a range of the {windows_in_x} windows in x, got {window_range!r}")
        if window_range.start < 0 or window_range.stop > layout.num_chunks:
            raise ValueError(f"window_range must lie in range(0, {layout.num_chunks}), got {window_range!r}")

    @staticmethod
    def _time_positions(layout: ChunkLayout, num_frames: int, device, first_frame: int = 0) -> torch.Tensor:
        """Per frame of ``x``: its index in the window (window layout) or in the video (full and context layouts)."""
        if layout.is_windows:
            return torch.arange(num_frames, device=device)
        if first_frame not in layout.starts or first_frame + num_frames > layout.num_frames:
            raise ValueError(
                f"first_frame must be a chunk start {layout.starts} with first_frame + frames <= "
                f"{layout.num_frames}, got first_frame={first_frame} for {num_frames} frames"
            )
        return torch.arange(first_frame, first_frame + num_frames, device=device)
