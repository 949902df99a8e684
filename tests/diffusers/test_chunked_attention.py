"""vin.diffusers.chunked_attention on tiny random Wan 2.1/2.2, LTX-Video, HunyuanVideo and CogVideoX models.

(a) a chunk covering every frame equals the stock model; (b) cross-attention models: chunks without
context equal the stock model run on each chunk alone; (c) joint-attention models (and global
tokens) equal a dense masked attention written here; (d) remove() restores bit-identical outputs;
(e) gradients through the processors match the stock model / the dense formulation; (f) the
processors under torch.compile give the eager outputs and gradients.
"""

from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F

import vin
import vin.diffusers as vd
import vin_kernels
from diffusers.models.transformers import transformer_hunyuan_video, transformer_wan

T = 16  # tokens per latent frame of every case (conftest)


def _sample(model, inputs):
    return model(**inputs, return_dict=False)[0]


def _with_grad(inputs):
    out = dict(inputs)
    out["hidden_states"] = inputs["hidden_states"].clone().requires_grad_(True)
    return out


def _output_and_input_grad(model, inputs, weight):
    inputs = _with_grad(inputs)
    out = _sample(model, inputs)
    (out * weight).sum().backward()
    return out.detach(), inputs["hidden_states"].grad


def chunk_mask(num_frames: int, chunk: int, context: int) -> torch.Tensor:
    """``[F*T, F*T]`` bool: query frame ``f`` in chunk ``c = f // chunk`` sees key frames
    ``[c*chunk - context, (c+1)*chunk)`` (clipped to the video)."""
    f = torch.arange(num_frames)
    start = f // chunk * chunk
    lo, hi = (start - context).clamp(min=0), (start + chunk).clamp(max=num_frames)
    frames = (f[None] >= lo[:, None]) & (f[None] < hi[:, None])
    return frames.repeat_interleave(T, 0).repeat_interleave(T, 1)


class DenseDispatch:
    """Stands in for diffusers' ``dispatch_attention_fn``: the self-attention over ``[video; text]`` as one
    dense masked SDPA (video rows: their chunk window, all text, the layer's globals; text rows: all
    video and text). Other calls (cross-attention) are plain attention, as the stock backend does."""

    def __init__(self, num_frames, chunk, context, global_kv=None):
        self.video_mask = chunk_mask(num_frames, chunk, context)
        self.num_video = num_frames * T
        self.global_kv = global_kv
        self.layer = 0

    def __call__(self, query, key, value, attn_mask=None, **_):
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))
        if key.shape[1] != query.shape[1]:  # cross-attention to the text
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2)
        B, N = query.shape[:2]
        Nv = self.num_video
        allowed = torch.ones(N, N, dtype=torch.bool)
        allowed[:Nv, :Nv] = self.video_mask
        allowed = allowed.expand(B, 1, N, N)
        if attn_mask is not None:
            allowed = allowed & attn_mask
        if self.global_kv is not None:
            gk, gv = (g.expand(B, -1, -1, -1).transpose(1, 2) for g in self.global_kv[self.layer])
            k, v = torch.cat([k, gk], dim=2), torch.cat([v, gv], dim=2)
            video_rows = torch.arange(N) < Nv
            sees_globals = video_rows[:, None].expand(N, gk.shape[2]).expand(B, 1, N, -1)
            allowed = torch.cat([allowed, sees_globals], dim=-1)
        self.layer += 1
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed).transpose(1, 2)


def _random_globals(model, count_tokens, generator, batch=1):
    handle = vd.chunked_attention(model, chunk=1)
    modules = [dict(model.named_modules())[name] for name in handle.attentions]
    handle.remove()
    kv = []
    for m in modules:
        heads, head_dim = m.heads, m.to_q.out_features // m.heads
        kv.append(tuple(torch.randn(batch, count_tokens, heads, head_dim, generator=generator) for _ in range(2)))
    return kv


# ----------------------------------------------------------------------------------------------- (a)
@pytest.mark.parametrize("chunk", [5, 9])
def test_chunk_covering_all_frames_equals_stock(case, build, generator, rel_err, chunk):
    model = build(case)
    inputs = case.inputs(5, generator)
    with torch.no_grad():
        ref = _sample(model, inputs)
        with vd.chunked_attention(model, chunk=chunk):
            out = _sample(model, inputs)
    assert rel_err(out, ref) <= 1e-5


# ----------------------------------------------------------------------------------------------- (b)
# LTX-Video computes its RoPE angles in float32 as freq * (2 * position - 1) with freq up to
# 1e4 * pi / 2, so angles of ~1e4 rad carry rounding of ~1e-3 rad that depends on the absolute
# position: the stock model is translation invariant only up to that. Measured (this test's inputs,
# CPU, sdpa backend): relative error 7.4e-6 for LTX-Video, 8.8e-8 for Wan (its RoPE table is float64).
CHUNK_TOLERANCE = {"wan2.1": 1e-5, "wan2.2-ti2v": 1e-5, "ltx-video": 5e-5}


def test_chunks_without_context_equal_stock_on_each_chunk(cross_case, build, generator, rel_err):
    model = build(cross_case)
    inputs = cross_case.inputs(7, generator)  # chunks of frames [0, 3), [3, 6), [6, 7)
    with vd.chunked_attention(model, chunk=3):
        with torch.no_grad():
            weight = torch.randn(_sample(model, inputs).shape, generator=generator)
        out, grad = _output_and_input_grad(model, inputs, weight)

    pieces, grads = [], []
    for f0, f1 in [(0, 3), (3, 6), (6, 7)]:
        piece_weight = _frames_of(cross_case, weight, f0, f1)
        piece, piece_grad = _output_and_input_grad(model, cross_case.frames(inputs, f0, f1), piece_weight)
        pieces.append(piece)
        grads.append(piece_grad)
    tol = CHUNK_TOLERANCE[cross_case.name]
    assert rel_err(out, torch.cat(pieces, cross_case.frame_dim)) <= tol
    assert rel_err(grad, torch.cat(grads, cross_case.frame_dim)) <= tol


def _frames_of(case, sample, f0, f1):
    """Latent frames ``[f0, f1)`` of an output sample."""
    if case.frame_tokens:
        return sample[:, f0 * T : f1 * T]
    return sample.narrow(case.frame_dim, f0, f1 - f0)


# ----------------------------------------------------------------------------------------------- (c)
def test_joint_attention_equals_dense_masked_attention(joint_case, build, generator, rel_err, monkeypatch):
    """Chunks of 2 frames with 1 context frame over 5 frames (last chunk short), text as shared keys.

    HunyuanVideo runs with a padded prompt (masked text keys) and per-layer global tokens; CogVideoX's
    dense reference is its stock processor given the dense mask through ``attention_kwargs``.
    """
    model = build(joint_case)
    num_frames, chunk, context = 5, 2, 1
    inputs = joint_case.inputs(num_frames, generator)
    hunyuan = joint_case.name.startswith("hunyuan")
    global_kv = _random_globals(model, 3, generator) if hunyuan else None

    with vd.chunked_attention(model, chunk=chunk, context=context, global_tokens=global_kv):
        with torch.no_grad():
            weight = torch.randn(_sample(model, inputs).shape, generator=generator)
        out, grad = _output_and_input_grad(model, inputs, weight)

    if hunyuan:
        dense = DenseDispatch(num_frames, chunk, context, global_kv)
        monkeypatch.setattr(transformer_hunyuan_video, "dispatch_attention_fn", dense)
        ref, ref_grad = _output_and_input_grad(model, inputs, weight)
        assert dense.layer == len(global_kv)
    else:
        text = inputs["encoder_hidden_states"].shape[1]
        N = text + num_frames * T
        allowed = torch.ones(N, N, dtype=torch.bool)
        allowed[text:, text:] = chunk_mask(num_frames, chunk, context)
        dense_inputs = dict(inputs, attention_kwargs={"attention_mask": allowed.expand(2, N, N)})
        ref, ref_grad = _output_and_input_grad(model, dense_inputs, weight)
    assert rel_err(out, ref) <= 1e-5
    assert rel_err(grad, ref_grad) <= 1e-5


@pytest.mark.parametrize("provider", ["pairs", "callable"])
def test_global_tokens_equal_dense_attention_wan(named_case, build, generator, rel_err, monkeypatch, provider):
    """Per-layer global keys/values reach the right layer and batch rows (Wan; LTX shares the code path)."""
    case = named_case("wan2.1")
    model = build(case)
    num_frames, chunk, context = 6, 2, 1
    inputs = case.inputs(num_frames, generator)
    global_kv = _random_globals(model, 3, generator, batch=2)
    seen = []

    def from_video(video):
        seen.append(video)
        return global_kv

    tokens = global_kv if provider == "pairs" else from_video
    with torch.no_grad():
        with vd.chunked_attention(model, chunk=chunk, context=context, global_tokens=tokens):
            out = _sample(model, inputs)
        dense = DenseDispatch(num_frames, chunk, context, global_kv)
        monkeypatch.setattr(transformer_wan, "dispatch_attention_fn", dense)
        ref = _sample(model, inputs)
    assert dense.layer == len(global_kv)
    assert rel_err(out, ref) <= 1e-5
    if provider == "callable":
        (video,) = seen
        assert video.latents.shape == (2, num_frames, 4, 8, 8) and video.tokens_per_frame == T
        assert torch.equal(video.latents, inputs["hidden_states"].transpose(1, 2))
        assert torch.equal(video.timestep, inputs["timestep"])
        assert video.windows_per_video == 1


# ----------------------------------------------------------------------------------------------- (d)
def test_remove_restores_stock_processors(case, build, generator):
    model = build(case)
    inputs = case.inputs(4, generator)
    stock = {name: m.processor for name, m in model.named_modules() if hasattr(m, "processor")}
    with torch.no_grad():
        ref = _sample(model, inputs)
        handle = vd.chunked_attention(model, chunk=1, context=1)
        chunked = _sample(model, inputs)
        handle.remove()
        handle.remove()  # idempotent
        again = _sample(model, inputs)
    assert {name: m.processor for name, m in model.named_modules() if hasattr(m, "processor")} == stock
    assert all(stock[name] is m.processor for name, m in model.named_modules() if hasattr(m, "processor"))
    assert not torch.equal(chunked, ref)  # the processors were in use
    assert torch.equal(again, ref)


# ----------------------------------------------------------------------------------------------- (e)
def test_backward_matches_stock_for_every_parameter(case, build, generator, rel_err):
    """A chunk covering all frames: gradients of the input and of every parameter equal the stock ones."""
    model = build(case)
    inputs = case.inputs(3, generator)
    with torch.no_grad():
        weight = torch.randn(_sample(model, inputs).shape, generator=generator)

    def grads():
        model.zero_grad(set_to_none=True)
        _, input_grad = _output_and_input_grad(model, inputs, weight)
        return input_grad, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    ref_input, ref_params = grads()
    with vd.chunked_attention(model, chunk=3):
        input_grad, params = grads()
    assert params.keys() == ref_params.keys()
    assert rel_err(input_grad, ref_input) <= 1e-5
    flat, ref_flat = (torch.cat([g.flatten() for g in d.values()]) for d in (params, ref_params))
    assert rel_err(flat, ref_flat) <= 1e-5
    for name, g in params.items():  # each parameter whose gradient is not rounding noise (key biases)
        if ref_params[name].norm() > 1e-6 * ref_flat.norm():
            assert rel_err(g, ref_params[name]) <= 1e-4, name


# ----------------------------------------------------------------------------------------------- (f)
def test_processors_under_torch_compile_match_eager(case, build, generator, rel_err):
    """Chunks with context and global tokens, forward and backward through ``torch.compile`` (AOT
    autograd, so the ops' fake kernels and autograd formulas are traced): the eager results.
    One graph, except HunyuanVideo: its text key mask decides on the host which text keys a chunk
    sees (the kernels take no mask), a graph break where that mask is given."""
    model = build(case)
    inputs = case.inputs(5, generator)
    globals_ = _random_globals(model, 3, generator)
    with torch.no_grad():
        weight = torch.randn(_sample(model, inputs).shape, generator=generator)
    with vd.chunked_attention(model, chunk=2, context=1, global_tokens=globals_):
        expected, expected_grad = _output_and_input_grad(model, inputs, weight)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="aot_eager", fullgraph=case.name != "hunyuan-video")
        out, grad = _output_and_input_grad(compiled, inputs, weight)
    assert rel_err(out, expected) <= 1e-6
    assert rel_err(grad, expected_grad) <= 1e-6


def test_context_grad_false_stops_gradient_through_context(named_case, build, generator):
    """Same forward; without context gradient a chunk's loss does not reach the previous chunk's frames."""
    case = named_case("wan2.1")
    model = build(case)
    inputs = case.inputs(4, generator)
    weight = torch.zeros(2, 4, 4, 8, 8)
    weight[:, :, 2:] = 1  # the loss reads the second chunk (frames 2, 3) only
    results = {}
    for context_grad in (True, False):
        with vd.chunked_attention(model, chunk=2, context=2, context_grad=context_grad):
            results[context_grad] = _output_and_input_grad(model, inputs, weight)
    (out_t, grad_t), (out_f, grad_f) = results[True], results[False]
    assert torch.equal(out_t, out_f)
    assert grad_t[:, :, :2].abs().sum() > 0
    assert grad_f[:, :, :2].abs().sum() == 0
    assert torch.equal(grad_t[:, :, 2:], grad_f[:, :, 2:])


# ----------------------------------------------------------------------------------------------- errors
def test_bad_arguments_raise_clear_errors(named_case, build, generator):
    model = build(named_case("wan2.1"))
    with pytest.raises(TypeError, match="transformer must be one of"):
        vd.chunked_attention(torch.nn.Linear(2, 2), chunk=2)
    with pytest.raises(ValueError, match=r"chunk \(latent frames\) must be >= 1"):
        vd.chunked_attention(model, chunk=0)
    with pytest.raises(TypeError, match=r"chunk \(latent frames\) must be an int"):
        vd.chunked_attention(model, chunk=2.0)
    with pytest.raises(ValueError, match=r"context \(latent frames\) must be >= 0"):
        vd.chunked_attention(model, chunk=2, context=-1)
    with pytest.raises(TypeError, match="global_tokens must be"):
        vd.chunked_attention(model, chunk=2, global_tokens=torch.zeros(3))
    with vd.chunked_attention(model, chunk=2):
        with pytest.raises(ValueError, match="already installed"):
            vd.chunked_attention(model, chunk=2)
    with vd.chunked_attention(model, chunk=2, global_tokens=[]):
        with pytest.raises(ValueError, match="one \\(global_k, global_v\\) pair per video self-attention \\(2\\)"):
            _sample(model, named_case("wan2.1").inputs(2, generator))


def test_bad_backend_or_gate_fails_at_install(named_case, build):
    """Issue 19.13: a backend name is checked when the tool is installed, not at its first forward."""
    model = build(named_case("wan2.1"))
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        vd.chunked_attention(model, chunk=2, backend="foo")
    with pytest.raises(ValueError, match="backend 'cuda' does not implement chunk_attention"):
        vd.chunked_attention(model, chunk=2, backend="cuda")
    with pytest.raises(TypeError, match="backend must be a str"):
        vd.chunked_attention(model, chunk=2, backend=None)
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        vd.LongVideo(model, window=4, overlap=1, backend="foo")
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        vd.VINAdapter(model, vin.VINConfig(num_global_tokens=2, dim=8, depth=1, heads=1), height=8, width=8, backend="foo")
    if not vin_kernels.backends()["triton"].available:
        with pytest.raises(RuntimeError, match="backend 'triton' is unavailable here"):
            vd.chunked_attention(model, chunk=2, backend="triton")
    for gate in (torch.zeros(3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), [0.0, 0.0]):
        with pytest.raises(TypeError, match=r"global_gate must be None or a float tensor of shape \(2,\) or \(2, 2\)"):
            vd.chunked_attention(model, chunk=2, global_gate=gate)
    assert vd.installed(model) == ()  # nothing was left half-installed


def test_dropped_handles_are_removed_through_the_transformer(named_case, build, generator):
    """Issue 19.13: handles dropped without remove() stay installed (their hooks hold them) and block a
    second install; vin.diffusers.remove(transformer) removes them, after which the model is stock again."""
    case = named_case("wan2.1")
    model = build(case)
    inputs = case.inputs(6, generator)
    stock = {name: m.processor for name, m in model.named_modules() if hasattr(m, "processor")}
    with torch.no_grad():
        ref = _sample(model, inputs)
        vd.chunked_attention(model, chunk=2)
        vd.LongVideo(model, window=4, overlap=1)
        gc.collect()
        assert [type(h).__name__ for h in vd.installed(model)] == ["ChunkedAttention", "LongVideo"]
        assert not torch.equal(_sample(model, inputs), ref)
        with pytest.raises(ValueError, match=r"already installed.*vin.diffusers.remove\(transformer\)"):
            vd.chunked_attention(model, chunk=3)
        removed = vd.remove(model)
        assert [h.installed for h in removed] == [False, False]
        assert vd.installed(model) == () and vd.remove(model) == ()
        assert all(stock[name] is m.processor for name, m in model.named_modules() if hasattr(m, "processor"))
        assert torch.equal(_sample(model, inputs), ref)
        with vd.chunked_attention(model, chunk=6) as handle:  # installable again
            assert vd.installed(model) == (handle,)
            assert torch.equal(_sample(model, inputs), ref)
