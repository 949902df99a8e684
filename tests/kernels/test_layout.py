"""ChunkLayout: chunk/window positions, blend weights, keyframes, token offsets, validation."""

import dataclasses
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vin_kernels import ChunkLayout, reference


# ------------------------------------------------------------------------------------ context mode
def test_context_chunks_with_short_last_chunk():
    layout = ChunkLayout.context(50, chunk=20, context=8)
    assert layout.num_chunks == 3
    assert [layout.query_frames(i) for i in range(3)] == [range(0, 20), range(20, 40), range(40, 50)]
    assert [layout.key_frames(i) for i in range(3)] == [range(0, 20), range(12, 40), range(32, 50)]
    assert [layout.context_frames_of(i) for i in range(3)] == [range(0, 0), range(12, 20), range(32, 40)]
    assert layout.owners == tuple([0] * 20 + [1] * 20 + [2] * 10)


def test_context_one_chunk_when_video_fits():
    layout = ChunkLayout.context(12, chunk=20, context=8)
    assert layout.num_chunks == 1
    assert layout.chunk_len == 12
    assert layout.query_frames(0) == range(0, 12) == layout.key_frames(0)


def test_context_larger_than_chunk_reaches_two_chunks_back():
    layout = ChunkLayout.context(12, chunk=4, context=6)
    assert layout.key_frames(2) == range(2, 12)
    assert layout.key_frames(1) == range(0, 8)


def test_token_ranges_and_attention_sizes():
    layout = ChunkLayout.context(80, chunk=20, context=8)
    assert layout.query_tokens(1, 240) == range(20 * 240, 40 * 240)
    assert layout.key_tokens(1, 240) == range(12 * 240, 40 * 240)
    assert layout.attention_sizes(240) == {"chunk_size": 4800, "context_size": 1920}
    windows = ChunkLayout.windows(44, 20, 12)
    assert windows.attention_sizes(10) == {"chunk_size": 200, "context_size": 0}


# ------------------------------------------------------------------------------------ window mode
def test_windows_positions_paper_inference():
    layout = ChunkLayout.windows(44, window=20, overlap=12)
    assert layout.num_chunks == math.ceil((44 - 12) / 8) == 4
    assert layout.starts == (0, 8, 16, 24)
    assert layout.query_frames(3) == range(24, 44)


def test_windows_clamped_last_window():
    layout = ChunkLayout.windows(30, window=20, overlap=12)
    assert layout.num_chunks == 3
    assert layout.starts == (0, 8, 10)  # the last window is pulled back to end at F
    assert layout.overlaps == ((0, 12), (12, 18), (18, 0))
    assert layout.query_frames(2) == range(10, 30)


def test_windows_one_window_when_video_fits():
    layout = ChunkLayout.windows(7, window=20, overlap=3)
    assert layout.num_chunks == 1
    assert layout.starts == (0,)
    assert layout.chunk_len == 7
    assert layout.blend_weights == ((1.0,) * 7,)


def test_windows_without_overlap_tile_the_video():
    layout = ChunkLayout.windows(41, window=8, overlap=0)
    assert layout.starts == (0, 8, 16, 24, 32, 33)
    assert layout.blend_weights[0] == (1.0,) * 8


def test_two_windows_reproduce_the_paper_ramp():
    """eps[k] = ((O - W(k)) eps_i[k] + W(k) eps_{i+1}[k]) / O with W(k) = j + 1/2."""
    W, O = 20, 12
    layout = ChunkLayout.windows(2 * W - O, W, O)
    assert layout.num_chunks == 2
    norm = layout.normalized_blend_weights
    for j in range(O):
        left = norm[0][W - O + j]
        right = norm[1][j]
        assert left == pytest.approx((O - (j + 0.5)) / O, abs=1e-15)
        assert right == pytest.approx((j + 0.5) / O, abs=1e-15)
    assert norm[0][: W - O] == (1.0,) * (W - O)
    assert norm[1][O:] == (1.0,) * (W - O)


def test_two_window_fusion_equals_paper_formula():
    W, O = 10, 4
    layout = ChunkLayout.windows(16, W, O)
    eps = torch.randn(2, 2, W, 3, dtype=torch.float64)
    fused = reference.overlap_fuse(eps, layout)
    expected = torch.cat([eps[:, 0, : W - O], torch.zeros(2, O, 3, dtype=torch.float64), eps[:, 1, O:]], dim=1)
    for j in range(O):
        k = W - O + j
        expected[:, k] = ((O - (j + 0.5)) * eps[:, 0, k] + (j + 0.5) * eps[:, 1, j]) / O
    torch.testing.assert_close(fused, expected, rtol=1e-14, atol=1e-14)


def test_owner_in_window_mode_is_the_heaviest_window():
    layout = ChunkLayout.windows(16, 10, 4)
    # overlap frames 6..9: weights of window 0 are 3.5/4, 2.5/4, 1.5/4, 0.5/4
    assert layout.owners == tuple([0] * 8 + [1] * 8)
    assert layout.owner(7) == 0 and layout.owner(8) == 1


def test_window_only_properties_reject_context_layouts():
    layout = ChunkLayout.context(40, 20, 8)
    for name in ("overlaps", "frame_blend", "window_frame_index", "fusion_table"):
        with pytest.raises(ValueError, match="window-mode"):
            getattr(layout, name)


def test_fusion_table_is_frame_blend_flattened():
    layout = ChunkLayout.windows(30, 20, 12)
    ptr, win, pos, wgt = layout.fusion_table
    assert len(ptr) == layout.num_frames + 1 and ptr[0] == 0 and ptr[-1] == len(win) == len(pos) == len(wgt)
    for f, entries in enumerate(layout.frame_blend):
        assert tuple(zip(win[ptr[f] : ptr[f + 1]], pos[ptr[f] : ptr[f + 1]], wgt[ptr[f] : ptr[f + 1]])) == entries
        for i, p, _ in entries:
            assert layout.starts[i] + p == f


# ------------------------------------------------------------------------------------ properties
window_layouts = st.integers(1, 12).flatmap(
    lambda window: st.builds(
        ChunkLayout.windows, st.integers(1, 80), st.just(window), st.integers(0, window - 1)
    )
)
context_layouts = st.builds(ChunkLayout.context, st.integers(1, 80), st.integers(1, 25), st.integers(0, 30))


@given(window_layouts)
def test_window_layout_invariants(layout):
    F, n, L = layout.num_frames, layout.num_chunks, layout.chunk_len
    assert n == (1 if F <= layout.chunk_frames else math.ceil((F - layout.overlap_frames) / layout.stride))
    starts = layout.starts
    assert starts[0] == 0 and starts[-1] + L == F
    assert all(a < b for a, b in zip(starts, starts[1:]))
    assert all(b - a <= layout.stride for a, b in zip(starts, starts[1:]))
    for f, entries in enumerate(layout.frame_blend):
        assert entries, f"frame {f} is covered by no window"
        assert math.fsum(w for _, _, w in entries) == pytest.approx(1.0, abs=1e-12)
        assert all(w > 0 for _, _, w in entries)
        assert layout.owners[f] in {i for i, _, _ in entries}
    for row in layout.blend_weights:
        assert len(row) == L and all(0 < w <= 1 for w in row)


@given(window_layouts, st.floats(-3, 3, allow_nan=False))
def test_constant_input_is_reproduced(layout, value):
    eps = torch.full((2, layout.num_chunks, layout.chunk_len, 3), value, dtype=torch.float64)
    fused = reference.overlap_fuse(eps, layout)
    torch.testing.assert_close(fused, torch.full((2, layout.num_frames, 3), value, dtype=torch.float64))


@given(context_layouts)
def test_context_layout_invariants(layout):
    F, chunk, ctx = layout.num_frames, layout.chunk_frames, layout.context_frames
    covered = []
    for i in range(layout.num_chunks):
        q, k = layout.query_frames(i), layout.key_frames(i)
        covered.extend(q)
        assert k.stop == q.stop and k.start == max(0, q.start - ctx)
        assert len(q) == min(chunk, F - i * chunk) > 0
        assert all(layout.owner(f) == i for f in q)
    assert covered == list(range(F))


# ------------------------------------------------------------------------------------ keyframes
def test_keyframe_stride_paper():
    assert ChunkLayout.keyframe_stride() == 5
    assert ChunkLayout.keyframe_stride(fps=16, interval_s=1.0, frames_per_latent=16 / 5) == 5
    assert ChunkLayout.keyframe_stride(interval_s=0.2) == 1
    assert ChunkLayout.keyframe_stride(interval_s=0.5) == 3  # 2.5 latents: halves round up
    assert ChunkLayout.keyframe_stride(fps=24, interval_s=2.0, frames_per_latent=4) == 12


def test_keyframes_list():
    layout = ChunkLayout.context(80, 20, 8)
    assert layout.keyframes(5) == tuple(range(0, 80, 5))
    assert layout.keyframes(5, offset=2) == tuple(range(2, 80, 5))
    assert ChunkLayout.context(3, 20).keyframes(5) == (0,)


@pytest.mark.parametrize(
    "kwargs, param",
    [
        (dict(interval_s=0.05), "interval_s"),
        (dict(fps=0), "fps"),
        (dict(frames_per_latent=-1.0), "frames_per_latent"),
        (dict(interval_s=float("nan")), "interval_s"),
    ],
)
def test_keyframe_stride_rejects_bad_parameters(kwargs, param):
    with pytest.raises(ValueError, match=param):
        ChunkLayout.keyframe_stride(**kwargs)


def test_keyframes_reject_bad_offset_and_stride():
    layout = ChunkLayout.context(10, 5)
    with pytest.raises(ValueError, match="keyframe_offset"):
        layout.keyframes(2, offset=10)
    with pytest.raises(ValueError, match="keyframe_stride"):
        layout.keyframes(0)


# ------------------------------------------------------------------------------------ validation, identity
@pytest.mark.parametrize(
    "build, param",
    [
        (lambda: ChunkLayout.context(0, 20, 8), "num_frames"),
        (lambda: ChunkLayout.context(40, 0, 8), "chunk"),
        (lambda: ChunkLayout.context(40, 20, -1), "context"),
        (lambda: ChunkLayout.windows(40, 0, 0), "window"),
        (lambda: ChunkLayout.windows(40, 20, 20), "overlap"),
        (lambda: ChunkLayout.windows(40, 20, 25), "overlap"),
        (lambda: ChunkLayout.windows(40, 20, -1), "overlap"),
        (lambda: ChunkLayout("diagonal", 40, 20), "mode"),
        (lambda: ChunkLayout("context", 40, 20, overlap_frames=3), "overlap"),
        (lambda: ChunkLayout("windows", 40, 20, context_frames=3), "context"),
    ],
)
def test_impossible_parameters_raise_value_error_naming_them(build, param):
    with pytest.raises(ValueError, match=param):
        build()


@pytest.mark.parametrize("bad", [2.0, True, "4", None])
def test_non_integer_sizes_raise_type_error(bad):
    with pytest.raises(TypeError, match="num_frames"):
        ChunkLayout.context(bad, 4)
    with pytest.raises(TypeError, match="window"):
        ChunkLayout.windows(10, bad, 0)


def test_chunk_index_out_of_range():
    layout = ChunkLayout.context(40, 20)
    with pytest.raises(ValueError, match="chunk index"):
        layout.query_frames(2)
    with pytest.raises(ValueError, match="frame"):
        layout.owner(40)


def test_immutable_and_hashable():
    a = ChunkLayout.windows(44, 20, 12)
    b = ChunkLayout.windows(44, 20, 12)
    assert a == b and hash(a) == hash(b) and len({a, b, ChunkLayout.windows(44, 20, 11)}) == 2
    _ = a.blend_weights  # cached derived data does not change identity
    assert a == b and hash(a) == hash(b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.num_frames = 10


# ------------------------------------------------------------------------------------ groups, full, repr
@given(F=st.integers(0, 60), chunk=st.integers(1, 25), context=st.integers(0, 40))
def test_context_groups_cover_every_chunk_in_order(F, chunk, context):
    """The groups list every chunk once, in order, with the chunk's own query and key frames."""
    groups = ChunkLayout.context_groups(F, chunk, context)
    chunks = [(g.query_range(j), g.key_range(j)) for g in groups for j in range(g.count)]
    if F == 0:
        assert chunks == []
        return
    layout = ChunkLayout.context(F, chunk, context)
    assert chunks == [(layout.query_frames(i), layout.key_frames(i)) for i in range(layout.num_chunks)]
    assert [g.first_chunk for g in groups] == [sum(h.count for h in groups[:i]) for i in range(len(groups))]
    assert layout.chunk_groups() == groups
    assert len(groups) <= -(-context // chunk) + 2  # clamped chunks one by one, then full, then a short last


def test_context_groups_of_the_paper_layout():
    (first, full, last) = ChunkLayout.context_groups(50, 20, 8)
    assert (first.count, first.query_len, first.key_len, first.context_len) == (1, 20, 20, 0)
    assert (full.count, full.key_start, full.context_len) == (1, 12, 8)
    assert (last.count, last.query_start, last.query_len, last.key_len) == (1, 40, 10, 18)
    with pytest.raises(ValueError, match="chunk_groups needs a context-mode layout"):
        ChunkLayout.windows(50, 20, 8).chunk_groups()


def test_full_layout_is_one_chunk():
    layout = ChunkLayout.full(37)
    assert layout.is_full and layout.num_chunks == 1 and layout.key_frames(0) == range(37)
    assert layout.positions_in_chunk == tuple(range(37))
    assert not ChunkLayout.context(37, 20).is_full and not ChunkLayout.windows(10, 12, 4).is_full


def test_repr_states_the_effective_sizes():
    assert repr(ChunkLayout.windows(4, window=6, overlap=2)) == (
        "ChunkLayout.windows(num_frames=4, window=6, overlap=2): 1 window of 4 frames"
    )
    assert repr(ChunkLayout.windows(44, 20, 12)) == "ChunkLayout.windows(num_frames=44, window=20, overlap=12): 4 windows of 20 frames"
    assert repr(ChunkLayout.context(50, 20, 8)) == (
        "ChunkLayout.context(num_frames=50, chunk=20, context=8): 3 chunks of 20 frames, the last of 10"
    )


@pytest.mark.parametrize("layout", [ChunkLayout.windows(30, 20, 12), ChunkLayout.windows(25, 6, 5), ChunkLayout.windows(7, 20, 3)])
def test_frame_source_is_the_first_covering_window(layout):
    for f, (window, position) in enumerate(layout.frame_source):
        assert layout.starts[window] + position == f
        assert window == min(i for i, s in enumerate(layout.starts) if s <= f < s + layout.chunk_len)


def test_keyframe_slice_matches_keyframes():
    for F, stride, offset in [(11, 5, 1), (20, 5, 0), (3, 7, 2), (9, 1, 0)]:
        assert tuple(range(F)[ChunkLayout.keyframe_slice(F, stride, offset)]) == ChunkLayout.keyframes_of(F, stride, offset)
