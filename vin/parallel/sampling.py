"""vin.sample split across the ranks of a torch.distributed group, with the same result."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

import vin_kernels
from vin_kernels import ChunkLayout

from ..diffusion import DiffusionSchedule
from ..dit import VideoDiT
from ..interface import VIN
from ..sampling import _check_clip, _check_fusion, _fuses, _randn, schedule_for
from .comm import Communicator
from .plan import Plan, Transfer

__all__ = ["sample", "SampleStats"]


@dataclass
class SampleStats:
    """What :func:`sample` measured on this rank (pass one as ``stats=``).

    Attributes:
        step_kinds: per step ``"context"``, ``"fused"`` (window mode, blended) or ``"independent"``.
        step_seconds: per step, wall seconds (after a device synchronization).
        step_bytes: per step, bytes this rank sent (keyframes, halos, overlaps).
        final_bytes: bytes this rank sent to assemble the video at the end.
    """

    step_kinds: list[str] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    step_bytes: list[int] = field(default_factory=list)
    final_bytes: int = 0


def _digest(tensors) -> str:
    """A digest of tensors' values: exact float64 sums per tensor (cheap on any device), hashed."""
    sums = [torch.stack([t.double().sum(), t.double().abs().sum()]).tolist() for t in tensors]
    return hashlib.sha256(repr(sums).encode()).hexdigest()[:16]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Rank:
    """One rank's side of the plan: its shard, and the messages it sends and receives."""

    def __init__(self, plan: Plan, comm: Communicator, batch: int, frame_shape: tuple[int, ...]):
        self.plan, self.comm = plan, comm
        self.layout = plan.layout
        self.shard = plan.shards[comm.rank]
        self.batch, self.frame_shape = batch, frame_shape
        self.device = comm.device

    # ------------------------------------------------------------------ VIN read
    def keyframe_video(self, owned_frames: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The video the VIN reads: every keyframe in place (zeros elsewhere), gathered from the owners.

        ``owned_frames``: ``[B, k, ...]`` this rank's keyframes (:meth:`Plan.keyframes_of`), sent in the
        VIN's dtype (the VIN casts its input to that dtype before reading, so the values are the same).
        """
        counts = [len(self.plan.keyframes_of(r)) for r in range(self.plan.world)]
        pieces = self.comm.all_gather(owned_frames.to(dtype), counts)
        video = torch.zeros((self.batch, self.layout.num_frames, *self.frame_shape), dtype=dtype, device=self.device)
        index = torch.tensor(self.plan.keyframes, device=self.device)
        video[:, index] = torch.cat(pieces, dim=1)
        return video

    # ------------------------------------------------------------------ context halos
    def prefix_kv(self, block: int, k: torch.Tensor, v: torch.Tensor):
        """Context mode, in every DiT block: send the context keys/values the next ranks need, receive ours.

        Returns ``(pk, pv)`` ``[B, P, H, D]`` over :attr:`Halo.prefix` (zeros before the context), or None.
        """
        T = k.shape[1] // len(self.shard.frames)
        first = self.shard.frames.start
        sends = [
            (dst, torch.stack([k[:, (f.start - first) * T : (f.stop - first) * T], v[:, (f.start - first) * T : (f.stop - first) * T]]))
            for dst, f in self.plan.halo_sends(self.comm.rank)
        ]
        halo = self.plan.halo_of(self.comm.rank)
        sources = halo.sources if halo else ()
        receives = [(src, (2, k.shape[0], len(f) * T, *k.shape[2:]), k.dtype) for src, f in sources]
        pieces = self.comm.exchange(sends, receives)
        if halo is None:
            return None
        padding = k.new_zeros((2, k.shape[0], (halo.context.start - halo.prefix.start) * T, *k.shape[2:]))
        prefix = torch.cat([padding, *pieces], dim=2)
        return prefix[0], prefix[1]

    # ------------------------------------------------------------------ window overlaps
    def window_entries(self, windows: torch.Tensor, transfers: tuple[Transfer, ...]) -> torch.Tensor:
        """All windows ``[B, n, L, ...]`` with this rank's ``windows`` ``[B, n_r, L, ...]`` in place, the
        entries ``transfers`` bring from other ranks filled in, zeros elsewhere (what
        :func:`vin_kernels.overlap_fuse` needs to blend the frames those transfers were planned for)."""
        rank, chunks, L = self.comm.rank, self.shard.chunks, self.layout.chunk_len
        flat = windows.flatten(1, 2)  # [B, n_r * L, ...]
        sends = [
            (t.dst, flat[:, torch.tensor(t.source_index(chunks.start, L), device=self.device)])
            for t in transfers
            if t.src == rank
        ]
        incoming = [t for t in transfers if t.dst == rank]
        receives = [(t.src, (self.batch, len(t.entries), *windows.shape[3:]), windows.dtype) for t in incoming]
        pieces = self.comm.exchange(sends, receives)
        full = windows.new_zeros((self.batch, self.layout.num_chunks, L, *windows.shape[3:]))
        full[:, chunks] = windows
        for t, piece in zip(incoming, pieces):
            full.flatten(1, 2)[:, torch.tensor(t.target_index(L), device=self.device)] = piece
        return full

    def gather_video(self, owned: torch.Tensor) -> torch.Tensor:
        """The whole video on every rank from each rank's owned frames ``[B, len(owned), ...]``."""
        return torch.cat(self.comm.all_gather(owned, [len(s.owned) for s in self.plan.shards]), dim=1)


@torch.no_grad()
def sample(
    model: VideoDiT,
    vin: VIN | None,
    text: torch.Tensor,
    *,
    layout: ChunkLayout,
    steps: int = 50,
    eta: float = 0.0,
    t_alpha: int = 20,
    fusion: str = "early",
    generator: torch.Generator,
    schedule: DiffusionSchedule | None = None,
    clip_x0: float | None = None,
    progress: bool = False,
    group: dist.ProcessGroup | None = None,
    stats: SampleStats | None = None,
) -> torch.Tensor:
    """:func:`vin.sample` with the chunks (context layout) or windows (window layout) split across ``group``.

    Call it on every rank of ``group`` (default: the whole world) with the same arguments (same model
    weights, text, layout, and a generator in the same state; checked once, ValueError if not).
    Returns the float32 latent video ``[B, F, C, h, w]`` on **every** rank, equal to what
    :func:`vin.sample` returns in one process.

    Rank ``r`` computes a contiguous range of chunks (:func:`vin.parallel.split`: sizes differ by at
    most one; more ranks than chunks is a ValueError). Per step:

    * VIN read: each keyframe comes from the rank owning its frame, one all-gather puts all of them
      on every rank, and the VIN (encoder and processor) runs replicated. (A partial read per rank,
      merged by log-sum-exp, would move ``world`` copies of the ``[B, G, dim]`` encoder output; the
      keyframe latents are fewer bytes at every preset: see ``python -m bench --suite parallel``.)
    * context layout: in every DiT block rank ``r`` sends the context keys/values of its last frames
      to rank ``r + 1`` (point to point, forward only) and attends over them exactly as one process.
    * window layout, fused steps: ranks exchange the network outputs (``eps`` or ``v``, by
      ``schedule.prediction``) of the frames their windows share with a neighbour's, then blend and
      update with :func:`vin_kernels.overlap_fuse` (with ``clip_x0``: blend, then
      :meth:`DiffusionSchedule.ddim_step`);
      independent steps exchange the states of the shared keyframes (for the VIN's blended read).
      ``fusion`` schedules them as in :func:`vin.sample`; where late fusion starts, the windows'
      states of the shared frames are exchanged once and blended.
    * finally each rank's owned frames (:attr:`Shard.owned`) are all-gathered onto every rank (after
      independent steps blended from the neighbours' windows first, except with ``fusion="none"``,
      which takes each frame from its owning window).

    Numerics: every value a rank computes goes through the same operations, on the same inputs, as
    in one process: the attention over a received context is the same ``chunk_attention`` call on
    the same keys, the windows' adaLN rows are computed for all windows (``VideoDiT(window_range=)``),
    blends are the same ``overlap_fuse`` per frame, and nothing is summed across ranks. So the video
    is bitwise equal wherever a backend computes a row independently of how many rows a call holds:
    on a CPU at equal threads per process (tested with 1 to 3 gloo ranks, both layouts, the sdpa and
    reference backends). On GPUs, cuBLAS may choose other algorithms for other row counts: not tested.

    ``stats``: filled with this rank's per-step timings and bytes sent.
    """
    if not isinstance(layout, ChunkLayout):
        raise TypeError(f"layout must be a ChunkLayout (ChunkLayout.full(F) for full attention), got {layout!r}")
    _check_fusion(fusion)
    _check_clip(clip_x0)
    if stats is not None and not isinstance(stats, SampleStats):
        raise TypeError(f"stats must be a vin.parallel.SampleStats or None, got {type(stats).__name__}")
    schedule = schedule_for(model, schedule)
    device = text.device
    comm = Communicator(group, device)
    plan = Plan(layout, comm.world, vin.keyframe_stride if vin is not None else None)
    nets = [model] if vin is None else [model, vin]
    comm.check_same(
        "the arguments of vin.parallel.sample",
        {
            "layout": repr(layout),
            "sampling": (steps, eta, t_alpha, fusion, repr(schedule), clip_x0),
            "text": (tuple(text.shape), str(text.dtype), device.type, _digest([text])),
            "model": (repr(model.cfg), None if vin is None else repr(vin.cfg)),
            "weights": _digest([p for net in nets for p in net.parameters()]),
            "generator": hashlib.sha256(generator.get_state().cpu().numpy().tobytes()).hexdigest()[:16],
        },
    )
    cfg = model.cfg
    frame_shape = (cfg.in_channels, cfg.height, cfg.width)
    batch = text.shape[0]
    me = _Rank(plan, comm, batch, frame_shape)
    shard = me.shard
    frames = torch.tensor(shard.frames, device=device)
    like = torch.empty((), device=device, dtype=torch.float32)
    video_shape = (batch, layout.num_frames, *frame_shape)
    # Every rank draws the whole initial noise (and any later noise) from the shared generator and
    # keeps its part: the generator stays in step with one process, at the cost of a latent video.
    noise = _randn(video_shape, generator, like)
    vin_dtype = vin.tokens.dtype if vin is not None else None
    timesteps = schedule.timesteps(steps)

    fusing = _fuses(fusion, layout, 0, steps, t_alpha)
    if layout.is_windows:
        # Fused steps hold the video (zeros outside this rank's frames), independent steps the rank's windows.
        window_index = torch.tensor(layout.window_frame_index, device=device)
        own_windows = window_index[shard.chunks.start : shard.chunks.stop]
        if fusing:
            state = torch.zeros_like(noise)
            state[:, frames] = noise[:, frames]
        else:
            state = noise[:, own_windows]
        fused_plan, keyframe_plan = plan.fused_step_transfers(), plan.keyframe_transfers()
    else:
        state = noise[:, frames]
    # This rank's keyframes: frame indices, and their positions in its part of the video (context layout).
    keyframes = torch.tensor(plan.keyframes_of(comm.rank), device=device, dtype=torch.long)
    local_keyframes = keyframes - shard.frames.start

    iterator = enumerate(timesteps)
    if progress and comm.rank == 0:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=steps, desc=f"sampling on {comm.world} ranks")
    for i, t in iterator:
        start, sent = time.perf_counter(), comm.bytes_sent
        fuse = _fuses(fusion, layout, i, steps, t_alpha)
        if fuse != fusing:
            if fuse:  # late fusion starts: blend the windows' copies of this rank's frames into the video
                state = vin_kernels.overlap_fuse(me.window_entries(state, fused_plan), layout)
            else:  # early fusion is over: cut the video into this rank's windows
                state = state[:, own_windows]
            fusing = fuse
        t_prev = timesteps[i + 1] if i + 1 < steps else -1
        a, b, sigma = schedule.ddim(t, t_prev, eta)
        t_batch = torch.full((batch,), t, device=device, dtype=torch.long)
        if not layout.is_windows:
            kind = "context"
            global_kv = None if vin is None else vin(me.keyframe_video(state[:, local_keyframes], vin_dtype), t_batch, text)
            eps = model(
                state, t_batch, text, layout=layout, global_kv=global_kv, first_frame=shard.frames.start,
                prefix_kv=me.prefix_kv if comm.world > 1 else None,
            )
            state = schedule.ddim_step(state, eps.to(state.dtype), t, t_prev, eta=eta, clip_x0=clip_x0)
        elif fusing:
            kind = "fused"
            global_kv = None if vin is None else vin(me.keyframe_video(state[:, keyframes], vin_dtype), t_batch, text)
            eps = model(state[:, own_windows], t_batch, text, layout=layout, global_kv=global_kv, window_range=shard.chunks)
            eps = me.window_entries(eps, fused_plan).to(state.dtype)  # sent in the model's dtype: exact
            if clip_x0 is None:
                state = vin_kernels.overlap_fuse(eps, layout, x=state, coeffs=(a, b))
            else:
                state = schedule.ddim_step(state, vin_kernels.overlap_fuse(eps, layout), t, t_prev, eta=eta, clip_x0=clip_x0)
        else:
            kind = "independent"
            global_kv = None
            if vin is not None:
                blended = vin_kernels.overlap_fuse(me.window_entries(state, keyframe_plan), layout)
                global_kv = vin(me.keyframe_video(blended[:, keyframes], vin_dtype), t_batch, text)
            eps = model(state, t_batch, text, layout=layout, global_kv=global_kv, window_range=shard.chunks).to(state.dtype)
            state = schedule.ddim_step(state, eps, t, t_prev, eta=eta, clip_x0=clip_x0)
        if sigma > 0:
            if kind == "independent":
                state = state + sigma * _randn((batch, *window_index.shape, *frame_shape), generator, state)[:, shard.chunks.start : shard.chunks.stop]
            elif kind == "fused":
                state[:, frames] = state[:, frames] + sigma * _randn(video_shape, generator, state)[:, frames]
            else:
                state = state + sigma * _randn(video_shape, generator, state)[:, frames]
        if stats is not None:
            _sync(device)
            stats.step_kinds.append(kind)
            stats.step_seconds.append(time.perf_counter() - start)
            stats.step_bytes.append(comm.bytes_sent - sent)

    sent = comm.bytes_sent
    owned_index = torch.tensor(shard.owned, device=device)
    if layout.is_windows and fusion == "none":  # each frame from the window owning it: one of this rank's
        owned = layout.owned_frames(me.window_entries(state, ()))[:, owned_index]
    elif layout.is_windows:
        if not fusing:  # blend the windows (as vin.sample does) where this rank owns the frames
            state = vin_kernels.overlap_fuse(me.window_entries(state, plan.final_transfers()), layout)
        owned = state[:, owned_index]
    else:
        owned = state
    result = me.gather_video(owned)
    if stats is not None:
        stats.final_bytes = comm.bytes_sent - sent
    return result
