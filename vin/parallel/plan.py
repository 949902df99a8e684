"""Who computes what and who sends what to whom: the static plan of a parallel sample (no torch.distributed).

A layout's chunks (context mode) or windows (window mode) are split into contiguous ranges, one per
rank (:func:`split`). From the split and the layout alone follow every message of a step:

* **keyframes** (:meth:`Plan.keyframes_of`): each keyframe of the VIN read is provided by exactly one
  rank, the one that owns the frame; an all-gather puts them all on every rank.
* **context halos** (context mode, :meth:`Plan.halo_of`): in every DiT layer rank ``r`` needs the
  keys/values of the context frames before its first chunk, computed by the rank(s) before it.
* **window overlaps** (window mode, :meth:`Plan.window_transfers`): to blend a frame, a rank needs
  the predictions (or states) of every window covering it, some of which run on its neighbours.

Frame, chunk and keyframe indices all come from :class:`vin_kernels.ChunkLayout`; this module only
assigns chunk indices to ranks. :meth:`Plan.step_bytes` counts the bytes of every message of a step,
which the sampler's measured counts must equal (``tests/model/test_parallel.py``) and from which
``bench/suites/parallel.py`` models paper-sized runs.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from numbers import Integral

from vin_kernels import ChunkLayout

__all__ = ["Shard", "Halo", "Transfer", "Plan", "split"]


@dataclass(frozen=True)
class Shard:
    """One rank's part of a layout.

    Attributes:
        rank: index of the rank in its group.
        chunks: the chunk (context mode) or window (window mode) indices it computes.
        frames: the frames it holds: the query frames of its chunks (context mode), or the frames
            its windows cover (window mode; neighbouring shards share the overlaps).
        owned: the frames it provides to the others (keyframes, the final video): the same as
            ``frames`` in context mode; in window mode the frames whose owning window
            (:attr:`ChunkLayout.owners`) is one of its own. The ``owned`` ranges of a split tile the video.
    """

    rank: int
    chunks: range
    frames: range
    owned: range


@dataclass(frozen=True)
class Halo:
    """Context mode: the keys/values a shard needs, in every DiT layer, from the frames before its own.

    Attributes:
        prefix: frames ``[prefix.start, shard.frames.start)``: whole chunks before the shard, so that
            the shard's chunks stay aligned when the prefix is put in front of its sequence.
        context: the part of ``prefix`` its chunks read (the last ``context`` frames); the rest of the
            prefix is zero padding that no query of the shard sees.
        sources: ``(rank, frames)`` pieces of ``context``, in frame order, each held by that rank.
    """

    prefix: range
    context: range
    sources: tuple[tuple[int, range], ...]


@dataclass(frozen=True)
class Transfer:
    """Window mode: the values of window positions ``src`` sends to ``dst``.

    ``entries`` are ``(window, position)`` pairs of windows of ``src``, sorted; the payload is the
    window values at those entries, stacked in that order along the frame axis.
    """

    src: int
    dst: int
    entries: tuple[tuple[int, int], ...]

    def source_index(self, first_window: int, window_len: int) -> list[int]:
        """Positions of the entries in the sender's windows flattened to ``[n_src * L]`` (its first window ``first_window``)."""
        return [(w - first_window) * window_len + p for w, p in self.entries]

    def target_index(self, window_len: int) -> list[int]:
        """Positions of the entries in all the layout's windows flattened to ``[n * L]``."""
        return [w * window_len + p for w, p in self.entries]


def _require_world(world) -> int:
    if isinstance(world, bool) or not isinstance(world, Integral):
        raise TypeError(f"the number of ranks must be an int, got {type(world).__name__} ({world!r})")
    if world < 1:
        raise ValueError(f"the number of ranks must be at least 1, got {world}")
    return int(world)


def split(layout: ChunkLayout, world: int) -> tuple[Shard, ...]:
    """Split ``layout``'s chunks (or windows) into ``world`` contiguous ranges, sizes differing by at most one.

    The first ``num_chunks % world`` ranks get one chunk more (5 windows on 2 ranks: 3 + 2).
    Raises ValueError when there are more ranks than chunks.
    """
    if not isinstance(layout, ChunkLayout):
        raise TypeError(f"layout must be a vin_kernels.ChunkLayout, got {type(layout).__name__}")
    world = _require_world(world)
    n = layout.num_chunks
    unit = "windows" if layout.is_windows else "chunks"
    if world > n:
        raise ValueError(
            f"{world} ranks for a layout with only {n} {unit} ({layout!r}): every rank needs at least one; "
            f"use at most {n} ranks, or a longer video"
        )
    base, extra = divmod(n, world)
    shards, lo = [], 0
    for rank in range(world):
        hi = lo + base + (rank < extra)
        frames = range(layout.query_frames(lo).start, layout.query_frames(hi - 1).stop)
        if layout.is_windows:  # owners are non-decreasing in the frame index (tent weights cross once)
            owned = range(bisect.bisect_left(layout.owners, lo), bisect.bisect_left(layout.owners, hi))
        else:
            owned = frames
        shards.append(Shard(rank, range(lo, hi), frames, owned))
        lo = hi
    return tuple(shards)


class Plan:
    """The split of ``layout`` over ``world`` ranks and every message of a parallel sampling step.

    Args:
        layout: the sampling layout.
        world: number of ranks.
        keyframe_stride: the VIN's keyframe stride (:attr:`vin.VIN.keyframe_stride`); None: no VIN.
    """

    def __init__(self, layout: ChunkLayout, world: int, keyframe_stride: int | None):
        self.layout = layout
        self.shards = split(layout, world)
        self.world = len(self.shards)
        self.keyframes = layout.keyframes(keyframe_stride) if keyframe_stride is not None else ()
        self._rank_of_chunk = tuple(s.rank for s in self.shards for _ in s.chunks)

    def rank_of_chunk(self, chunk: int) -> int:
        """The rank that computes chunk (window) ``chunk``."""
        return self._rank_of_chunk[chunk]

    # ------------------------------------------------------------------ keyframes
    def keyframes_of(self, rank: int) -> tuple[int, ...]:
        """The keyframes ``rank`` provides to the VIN read (those in its owned frames)."""
        owned = self.shards[rank].owned
        return tuple(f for f in self.keyframes if f in owned)

    # ------------------------------------------------------------------ context mode
    def halo_of(self, rank: int) -> Halo | None:
        """Context mode: the context keys/values ``rank`` receives in every layer (None: it needs none)."""
        layout, shard = self.layout, self.shards[rank]
        context = layout.context_frames_of(shard.chunks.start)
        if layout.is_windows or not context:
            return None
        prefix = range(layout.starts[layout.owner(context.start)], shard.frames.start)
        sources = []
        for other in self.shards[:rank]:
            piece = range(max(context.start, other.frames.start), min(context.stop, other.frames.stop))
            if piece:
                sources.append((other.rank, piece))
        return Halo(prefix, context, tuple(sources))

    def halo_sends(self, rank: int) -> tuple[tuple[int, range], ...]:
        """Context mode: ``(dst, frames)`` of every piece of its frames ``rank`` sends, in every layer."""
        sends = []
        for dst in range(rank + 1, self.world):
            halo = self.halo_of(dst)
            sends += [(dst, frames) for src, frames in (halo.sources if halo else ()) if src == rank]
        return tuple(sends)

    # ------------------------------------------------------------------ window mode
    def window_transfers(self, needed: list[tuple[int, ...]] | tuple) -> tuple[Transfer, ...]:
        """Window mode: the window values each rank must receive to blend the frames it needs.

        ``needed[r]`` are the frames rank ``r`` blends; for each, every window covering it
        (:attr:`ChunkLayout.frame_blend`) that another rank computes sends that frame's value.
        """
        pairs: dict[tuple[int, int], set[tuple[int, int]]] = {}
        for dst, frames in enumerate(needed):
            own = self.shards[dst].chunks
            for f in frames:
                for window, position, _ in self.layout.frame_blend[f]:
                    if window not in own:
                        pairs.setdefault((self.rank_of_chunk(window), dst), set()).add((window, position))
        return tuple(Transfer(src, dst, tuple(sorted(e))) for (src, dst), e in sorted(pairs.items()))

    def fused_step_transfers(self) -> tuple[Transfer, ...]:
        """Window mode, fused steps: every rank blends all the frames its windows cover."""
        return self.window_transfers([tuple(s.frames) for s in self.shards])

    def keyframe_transfers(self) -> tuple[Transfer, ...]:
        """Window mode, independent steps: every rank blends the keyframes it owns (for the VIN read)."""
        return self.window_transfers([self.keyframes_of(r) for r in range(self.world)])

    def final_transfers(self) -> tuple[Transfer, ...]:
        """Window mode, after independent steps: every rank blends the frames it owns (the output)."""
        return self.window_transfers([tuple(s.owned) for s in self.shards])

    # ------------------------------------------------------------------ bytes
    def step_bytes(
        self,
        *,
        batch: int,
        frame_elements: int,
        token_elements: int,
        depth: int,
        model_itemsize: int,
        vin_itemsize: int,
        state_itemsize: int = 4,
    ) -> dict[str, int]:
        """Bytes all ranks together send in one step of each kind (an all-gather of ``s`` bytes per rank
        counts ``(world - 1) * s`` per rank, what a ring all-gather sends).

        Args:
            batch: videos sampled together.
            frame_elements: values of one latent frame (``C * h * w``).
            token_elements: key (or value) values of one frame in one layer (``tokens_per_frame * hidden``).
            depth: DiT layers.
            model_itemsize, vin_itemsize, state_itemsize: bytes per value of the DiT, the VIN and the
                float32 sampling state.
        Returns:
            ``{"context"}`` (context mode) or ``{"fused", "independent"}`` (window mode): bytes per
            step; ``"final"``: the one all-gather of the sampled video, plus (window mode, when the
            last step was independent) ``"final_blend"``: the overlaps exchanged to blend it; and
            (window mode) ``"fusion_start"``: what the first fused step after independent ones (late
            fusion) sends in addition, the windows' states of the frames it blends.
        """
        P = self.world
        frame = batch * frame_elements

        def gather(counts: list[int], itemsize: int) -> int:  # padded to the largest piece
            return P * (P - 1) * max(counts) * frame * itemsize if P > 1 else 0

        def transfers(plan: tuple[Transfer, ...], itemsize: int) -> int:
            return sum(len(t.entries) for t in plan) * frame * itemsize

        keyframes = gather([len(self.keyframes_of(r)) for r in range(P)], vin_itemsize)
        final = gather([len(s.owned) for s in self.shards], state_itemsize)
        if not self.layout.is_windows:
            halo = sum(len(frames) for r in range(P) for _, frames in self.halo_sends(r))
            return {"context": keyframes + 2 * depth * halo * batch * token_elements * model_itemsize, "final": final}
        return {
            "fused": keyframes + transfers(self.fused_step_transfers(), model_itemsize),
            "independent": keyframes + transfers(self.keyframe_transfers(), state_itemsize),
            "final": final,
            "final_blend": transfers(self.final_transfers(), state_itemsize),
            "fusion_start": transfers(self.fused_step_transfers(), state_itemsize),
        }
