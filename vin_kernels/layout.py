"""ChunkLayout: every chunk, window, overlap, keyframe and blend-weight index computation.

This module is the only place in vin-kernels where frame indices of chunks are computed. Kernels,
the reference ops, the model layer and the benchmarks all ask a :class:`ChunkLayout`.

Two modes cut a video of ``F`` latent frames into chunks:

* **context mode** (``ChunkLayout.context(F, chunk, context)``, training and cheap inference):
  chunk ``i`` owns frames ``[i*chunk, min((i+1)*chunk, F))`` (the last chunk may be short) and its
  queries see the keys of frames ``[max(0, i*chunk - context), end)``.
* **window mode** (``ChunkLayout.windows(F, window, overlap)``, the paper's inference):
  ``n = 1`` if ``F <= window`` else ``ceil((F - overlap) / (window - overlap))`` windows of
  ``window`` frames; window ``i`` starts at ``min(i*(window - overlap), F - window)`` so the last one
  ends exactly at ``F``. Overlapping predictions are blended with tent weights that reproduce the
  paper's ramp ``((O - W(k)) * eps_i + W(k) * eps_{i+1}) / O`` with ``W(k) = j + 1/2``.

Frame quantities become token quantities by multiplying with ``tokens_per_frame``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from .checks import check_finite, check_int

__all__ = ["ChunkGroup", "ChunkLayout", "PAPER_FRAMES_PER_LATENT"]

_MODES = ("context", "windows")
PAPER_FRAMES_PER_LATENT = 16 / 5  # the paper's 3D VAE turns 16 video frames into 5 latent frames


def _positive(name: str, value) -> float:
    return check_finite(name, value, positive=True)


def _window_starts(num_frames: int, window: int, overlap: int) -> tuple[int, ...]:
    """Window mode: first frame of each window; the last is clamped to end at ``num_frames``."""
    if num_frames <= window:
        return (0,)
    stride = window - overlap
    count = -(-(num_frames - overlap) // stride)
    return tuple(min(i * stride, num_frames - window) for i in range(count))


def _tent_weights(starts: tuple[int, ...], length: int) -> tuple[tuple[float, ...], ...]:
    """Unnormalized blend weight of every window position (docs/design.md, ChunkLayout: blend weights)."""
    rows = []
    for i, start in enumerate(starts):
        left = starts[i - 1] + length - start if i > 0 else 0
        right = start + length - starts[i + 1] if i + 1 < len(starts) else 0
        row = []
        for p in range(length):
            w = 1.0
            if p < left:
                w = min(w, (p + 0.5) / left)
            if p >= length - right:
                w = min(w, (length - p - 0.5) / right)
            row.append(w)
        rows.append(tuple(row))
    return tuple(rows)


def _normalize(starts, weights, num_frames: int) -> tuple[tuple[float, ...], ...]:
    """Divide every weight by the sum of the weights of all windows covering the same frame."""
    covering: list[list[float]] = [[] for _ in range(num_frames)]
    for start, row in zip(starts, weights):
        for p, w in enumerate(row):
            covering[start + p].append(w)
    totals = [math.fsum(ws) for ws in covering]
    return tuple(tuple(w / totals[start + p] for p, w in enumerate(row)) for start, row in zip(starts, weights))


def _frame_entries(starts, normalized, num_frames: int) -> tuple[tuple[tuple[int, int, float], ...], ...]:
    """For every frame, ``(window, position, normalized weight)`` of each covering window."""
    covering: list[list[tuple[int, int, float]]] = [[] for _ in range(num_frames)]
    for i, (start, row) in enumerate(zip(starts, normalized)):
        for p, w in enumerate(row):
            covering[start + p].append((i, p, w))
    return tuple(tuple(entries) for entries in covering)


@dataclass(frozen=True)
class ChunkGroup:
    """``count`` consecutive chunks of a context-mode layout whose queries and keys have equal lengths.

    Chunk ``j`` of the group (``0 <= j < count``, layout chunk ``first_chunk + j``) has the query
    frames ``[query_start + j*stride, ... + query_len)`` and the key frames ``[key_start + j*stride,
    ... + key_len)``; the first :attr:`context_len` of those keys are its context. Batched kernels
    run one call per group (see :meth:`ChunkLayout.context_groups`).
    """

    first_chunk: int
    count: int
    query_start: int
    key_start: int
    query_len: int
    key_len: int
    stride: int

    @property
    def context_len(self) -> int:
        """Key frames before the chunk's own queries."""
        return self.key_len - self.query_len

    def query_range(self, j: int) -> range:
        """Query frames of the group's chunk ``j``."""
        start = self.query_start + j * self.stride
        return range(start, start + self.query_len)

    def key_range(self, j: int) -> range:
        """Key frames (context, then its own) of the group's chunk ``j``."""
        start = self.key_start + j * self.stride
        return range(start, start + self.key_len)


@dataclass(frozen=True, repr=False)
class ChunkLayout:
    """How a video of ``num_frames`` latent frames is cut into chunks. Immutable and hashable.

    Build it with :meth:`context` or :meth:`windows` rather than the constructor. Every derived
    table is computed once, at construction (so reading one is free, also under ``torch.compile``).

    Attributes:
        mode: ``"context"`` or ``"windows"``.
        num_frames: ``F``, latent frames of the whole video.
        chunk_frames: frames per chunk (context mode) or per window (window mode), as requested;
            :attr:`chunk_len` is the effective length when the video is shorter.
        context_frames: context mode: key frames reaching back into the previous chunk(s).
        overlap_frames: window mode: frames consecutive windows share.
    """

    mode: str
    num_frames: int
    chunk_frames: int
    context_frames: int = 0
    overlap_frames: int = 0

    def __post_init__(self):
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {self.mode!r}")
        check_int("num_frames", self.num_frames, 1)
        check_int("chunk" if self.mode == "context" else "window", self.chunk_frames, 1)
        check_int("context", self.context_frames, 0)
        check_int("overlap", self.overlap_frames, 0)
        if self.mode == "context" and self.overlap_frames:
            raise ValueError("overlap must be 0 in context mode; use ChunkLayout.windows for overlapping windows")
        if self.mode == "windows":
            if self.context_frames:
                raise ValueError("context must be 0 in window mode; use ChunkLayout.context for chunks with context")
            if self.overlap_frames >= self.chunk_frames:
                raise ValueError(
                    f"overlap must be smaller than window, got overlap={self.overlap_frames} "
                    f">= window={self.chunk_frames}"
                )
        self._derive()

    def _derive(self) -> None:
        """Compute the tables (stored outside the dataclass fields: equality and hash ignore them)."""
        F, L = self.num_frames, min(self.chunk_frames, self.num_frames)
        tables = {}
        if self.mode == "context":
            tables["starts"] = tuple(range(0, F, self.chunk_frames))
            tables["owners"] = tuple(f // self.chunk_frames for f in range(F))
        else:
            starts = _window_starts(F, self.chunk_frames, self.overlap_frames)
            weights = _tent_weights(starts, L)
            normalized = _normalize(starts, weights, F)
            entries = _frame_entries(starts, normalized, F)
            tables.update(
                starts=starts,
                blend_weights=weights,
                normalized_blend_weights=normalized,
                frame_blend=entries,
                frame_source=tuple(e[0][:2] for e in entries),
                owners=tuple(max(e, key=lambda x: (x[2], -x[0]))[0] for e in entries),
                overlaps=tuple(
                    (
                        starts[i - 1] + L - starts[i] if i > 0 else 0,
                        starts[i] + L - starts[i + 1] if i + 1 < len(starts) else 0,
                    )
                    for i in range(len(starts))
                ),
                window_frame_index=tuple(tuple(range(s, s + L)) for s in starts),
                fusion_table=(
                    tuple(itertools.accumulate((len(e) for e in entries), initial=0)),
                    tuple(i for e in entries for i, _, _ in e),
                    tuple(p for e in entries for _, p, _ in e),
                    tuple(w for e in entries for _, _, w in e),
                ),
            )
        object.__setattr__(self, "_tables", tables)

    def _window_table(self, name: str):
        if self.mode != "windows":
            raise ValueError(f"{name} needs a window-mode layout (ChunkLayout.windows); this one is in context mode")
        return self._tables[name]

    # ------------------------------------------------------------------ constructors
    @classmethod
    def context(cls, num_frames: int, chunk: int, context: int = 0) -> ChunkLayout:
        """Chunks of ``chunk`` frames whose keys also reach ``context`` frames back (training mode)."""
        return cls("context", num_frames, chunk, context_frames=context)

    @classmethod
    def windows(cls, num_frames: int, window: int, overlap: int) -> ChunkLayout:
        """Windows of ``window`` frames, consecutive ones sharing ``overlap`` frames (paper inference).

        A video shorter than ``window`` is one window of ``num_frames`` frames (:attr:`chunk_len`).
        """
        return cls("windows", num_frames, window, overlap_frames=overlap)

    @classmethod
    def full(cls, num_frames: int) -> ChunkLayout:
        """One chunk over the whole video: full attention (``context(num_frames, num_frames)``)."""
        return cls.context(num_frames, num_frames)

    def __repr__(self) -> str:
        n, L = self.num_chunks, self.chunk_len
        if self.is_windows:
            call = f"ChunkLayout.windows(num_frames={self.num_frames}, window={self.chunk_frames}, overlap={self.overlap_frames})"
            return f"{call}: {n} window{'s' * (n > 1)} of {L} frames"
        call = f"ChunkLayout.context(num_frames={self.num_frames}, chunk={self.chunk_frames}, context={self.context_frames})"
        last = self.num_frames - self.starts[-1]
        short = f", the last of {last}" if last != L else ""
        return f"{call}: {n} chunk{'s' * (n > 1)} of {L} frames{short}"

    @property
    def is_full(self) -> bool:
        """True for one context-mode chunk over the whole video (full attention)."""
        return self.mode == "context" and self.num_chunks == 1

    # ------------------------------------------------------------------ chunks
    @property
    def is_windows(self) -> bool:
        return self.mode == "windows"

    @property
    def chunk_len(self) -> int:
        """Frames per chunk/window actually used: ``min(chunk_frames, num_frames)``."""
        return min(self.chunk_frames, self.num_frames)

    @property
    def stride(self) -> int:
        """Frames between consecutive chunk starts (``chunk`` or ``window - overlap``)."""
        return self.chunk_frames - self.overlap_frames

    @property
    def num_chunks(self) -> int:
        """Number of chunks (context mode) or windows (window mode)."""
        return len(self._tables["starts"])

    @property
    def starts(self) -> tuple[int, ...]:
        """First query frame of every chunk/window (the last window is clamped to end at ``F``)."""
        return self._tables["starts"]

    def query_frames(self, i: int) -> range:
        """Frames whose queries belong to chunk/window ``i``."""
        start = self.starts[self._chunk_index(i)]
        return range(start, min(start + self.chunk_len, self.num_frames))

    def key_frames(self, i: int) -> range:
        """Frames whose keys chunk/window ``i`` attends to (its own frames plus the context)."""
        q = self.query_frames(i)
        return range(max(0, q.start - self.context_frames), q.stop)

    def context_frames_of(self, i: int) -> range:
        """The context part of :meth:`key_frames` (frames before the chunk's own queries)."""
        return range(self.key_frames(i).start, self.query_frames(i).start)

    @property
    def owners(self) -> tuple[int, ...]:
        """Owning chunk of every frame.

        Context mode: the chunk whose queries contain the frame. Window mode: the covering window
        with the largest blend weight (the earlier one on a tie).
        """
        return self._tables["owners"]

    @property
    def positions_in_chunk(self) -> tuple[int, ...]:
        """Context mode: every frame's index inside its owning chunk (``f - starts[owners[f]]``)."""
        if self.mode != "context":
            raise ValueError("positions_in_chunk needs a context-mode layout; a window's frames are 0 .. chunk_len-1")
        return tuple(f - self.starts[o] for f, o in enumerate(self.owners))

    def owner(self, frame: int) -> int:
        """Owning chunk of ``frame`` (see :attr:`owners`)."""
        check_int("frame", frame, 0)
        if frame >= self.num_frames:
            raise ValueError(f"frame must be < num_frames={self.num_frames}, got {frame}")
        return self.owners[frame]

    def chunk_groups(self) -> tuple[ChunkGroup, ...]:
        """Context mode: the chunks grouped by equal query and key lengths (see :meth:`context_groups`)."""
        if self.mode != "context":
            raise ValueError("chunk_groups needs a context-mode layout; the windows of a window layout are all alike")
        return ChunkLayout.context_groups(self.num_frames, self.chunk_frames, self.context_frames)

    @staticmethod
    def context_groups(num_frames: int, chunk: int, context: int = 0) -> tuple[ChunkGroup, ...]:
        """The chunks of ``ChunkLayout.context(num_frames, chunk, context)`` as :class:`ChunkGroup` runs.

        Computed without building the layout's tables (``O(context / chunk)`` work), so kernels
        can call it per launch with token counts as "frames". Typically three groups: the chunks
        whose context is cut by the video's start (one each), the full chunks, a short last chunk.
        """
        F = check_int("num_frames", num_frames, 0)
        chunk = check_int("chunk", chunk, 1)
        context = check_int("context", context, 0)
        n, n_full = -(-F // chunk), F // chunk
        clamped = min(n, -(-context // chunk))  # chunks i with i*chunk < context: keys start at frame 0

        def single(i: int) -> ChunkGroup:
            q0, q1 = i * chunk, min(i * chunk + chunk, F)
            k0 = max(0, q0 - context)
            return ChunkGroup(i, 1, q0, k0, q1 - q0, q1 - k0, chunk)

        groups = [single(i) for i in range(clamped)]
        if n_full > clamped:
            start = clamped * chunk
            groups.append(ChunkGroup(clamped, n_full - clamped, start, start - context, chunk, chunk + context, chunk))
        if n > n_full and n - 1 >= clamped:
            groups.append(single(n - 1))
        return tuple(groups)

    # ------------------------------------------------------------------ blending (window mode)
    @property
    def window_frame_index(self) -> tuple[tuple[int, ...], ...]:
        """Window mode: ``[n][chunk_len]`` frame index of every window position (to materialize windows)."""
        return self._window_table("window_frame_index")

    @property
    def overlaps(self) -> tuple[tuple[int, int], ...]:
        """Window mode: ``(left, right)`` frames each window shares with the previous / next window."""
        return self._window_table("overlaps")

    @property
    def blend_weights(self) -> tuple[tuple[float, ...], ...]:
        """Window mode: unnormalized tent weight of every window position, ``[n][chunk_len]``.

        ``w(p) = min(1, (p + 0.5) / Ol if p < Ol, (L - p - 0.5) / Or if p >= L - Or)`` with ``Ol``,
        ``Or`` the left/right overlaps of the window and ``L`` its length.
        """
        return self._window_table("blend_weights")

    @property
    def normalized_blend_weights(self) -> tuple[tuple[float, ...], ...]:
        """Window mode: ``[n][chunk_len]`` blend weights divided by the sum over all windows covering that frame.

        A frame's blended prediction is ``sum_i normalized_blend_weights[i][f - starts[i]] * eps_i``
        over the windows ``i`` covering it; those weights sum to 1.
        """
        return self._window_table("normalized_blend_weights")

    @property
    def frame_blend(self) -> tuple[tuple[tuple[int, int, float], ...], ...]:
        """Window mode: for every frame, ``(window, position, normalized weight)`` of each covering window."""
        return self._window_table("frame_blend")

    @property
    def frame_source(self) -> tuple[tuple[int, int], ...]:
        """Window mode: for every frame, ``(window, position)`` of the first window covering it.

        Where a video is held as windows whose overlapping frames are identical copies (what
        :func:`vin_kernels.overlap_fuse` writes with ``out_windows=True``), this is where a frame is
        read from.
        """
        return self._window_table("frame_source")

    @property
    def fusion_table(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[float, ...]]:
        """:attr:`frame_blend` flattened for kernels (CSR): ``(frame_ptr[F+1], window[E], position[E], weight[E])``.

        Entries ``frame_ptr[f] : frame_ptr[f+1]`` are the windows covering frame ``f``.
        """
        return self._window_table("fusion_table")

    # ------------------------------------------------------------------ tensors (window mode)
    def cut_windows(self, video):
        """Window mode: a video ``[B, F, *feat]`` as its windows ``[B, n, L, *feat]`` (overlaps copied)."""
        import torch

        index = torch.tensor(self.window_frame_index, dtype=torch.long, device=video.device)
        return video[:, index]

    def frames_from_copies(self, windows):
        """Window mode: the video ``[B, F, *feat]`` held by windows ``[B, n, L, *feat]`` whose overlapping
        frames are copies (each frame read from :attr:`frame_source`). Blending is
        :func:`vin_kernels.overlap_fuse`; this reads, exactly."""
        import torch

        window, position = (torch.tensor(c, dtype=torch.long, device=windows.device) for c in zip(*self.frame_source))
        return windows[:, window, position]

    def owned_frames(self, windows):
        """Window mode: the video ``[B, F, *feat]`` taking every frame from its owning window
        (:attr:`owners`; the prediction the training loss scores)."""
        import torch

        owner = torch.tensor(self.owners, dtype=torch.long, device=windows.device)
        position = torch.tensor(
            [f - self.starts[o] for f, o in enumerate(self.owners)], dtype=torch.long, device=windows.device
        )
        return windows[:, owner, position]

    # ------------------------------------------------------------------ tokens
    def query_tokens(self, i: int, tokens_per_frame: int) -> range:
        """Token range of chunk ``i``'s queries in the full-length sequence."""
        return self._to_tokens(self.query_frames(i), tokens_per_frame)

    def key_tokens(self, i: int, tokens_per_frame: int) -> range:
        """Token range of chunk ``i``'s keys in the full-length sequence."""
        return self._to_tokens(self.key_frames(i), tokens_per_frame)

    def attention_sizes(self, tokens_per_frame: int) -> dict[str, int]:
        """``chunk_size`` / ``context_size`` in tokens for :func:`vin_kernels.chunk_attention`.

        Context mode: over the full sequence ``[B, F*T, H, D]``. Window mode: over the windows batched
        as ``[B*n, chunk_len*T, H, D]`` (each window is one chunk, no context).
        """
        T = check_int("tokens_per_frame", tokens_per_frame, 1)
        return {"chunk_size": self.chunk_len * T, "context_size": self.context_frames * T}

    # ------------------------------------------------------------------ keyframes
    @staticmethod
    def keyframe_stride(
        fps: float = 16.0, interval_s: float = 1.0, frames_per_latent: float = PAPER_FRAMES_PER_LATENT
    ) -> int:
        """Latent frames between keyframes: ``round(interval_s * fps / frames_per_latent)``.

        Paper: one keyframe per 1.0 s at 16 fps with a VAE that turns 16 frames into 5 latents
        (``frames_per_latent = 3.2``) gives 5. Halves round up.
        """
        fps = _positive("fps", fps)
        interval_s = _positive("interval_s", interval_s)
        frames_per_latent = _positive("frames_per_latent", frames_per_latent)
        exact = interval_s * fps / frames_per_latent
        stride = math.floor(exact + 0.5 + 1e-9)
        if stride < 1:
            raise ValueError(
                f"interval_s={interval_s} is shorter than half a latent frame at fps={fps} and "
                f"frames_per_latent={frames_per_latent} ({exact:.3g} latent frames); use a longer interval_s"
            )
        return stride

    def keyframes(self, stride: int, offset: int = 0) -> tuple[int, ...]:
        """Keyframe latent frames ``offset, offset + stride, ... < num_frames`` of this layout's video."""
        return ChunkLayout.keyframes_of(self.num_frames, stride, offset)

    @staticmethod
    def keyframes_of(num_frames: int, stride: int, offset: int = 0) -> tuple[int, ...]:
        """Keyframe latent frames ``offset, offset + stride, ... < num_frames`` of any video (no layout needed)."""
        num_frames = check_int("num_frames", num_frames, 1)
        stride = check_int("keyframe_stride", stride, 1)
        offset = check_int("keyframe_offset", offset, 0)
        if offset >= num_frames:
            raise ValueError(f"keyframe_offset must be < num_frames={num_frames}, got {offset}")
        return tuple(range(offset, num_frames, stride))

    @staticmethod
    def keyframe_slice(num_frames: int, stride: int, offset: int = 0) -> slice:
        """:meth:`keyframes_of` as a slice of the frame axis (to read the keyframes as a strided view)."""
        frames = ChunkLayout.keyframes_of(num_frames, stride, offset)
        return slice(frames[0], frames[-1] + 1, stride)

    # ------------------------------------------------------------------ helpers
    def _chunk_index(self, i: int) -> int:
        i = check_int("chunk index", i, 0)
        if i >= self.num_chunks:
            raise ValueError(f"chunk index must be < num_chunks={self.num_chunks}, got {i}")
        return i

    @staticmethod
    def _to_tokens(frames: range, tokens_per_frame: int) -> range:
        T = check_int("tokens_per_frame", tokens_per_frame, 1)
        return range(frames.start * T, frames.stop * T)
