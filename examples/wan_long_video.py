"""vin.diffusers on a tiny random Wan pipeline, on a CPU, offline: chunked attention, long videos, a VIN adapter.

    python examples/wan_long_video.py [--frames 97] [--steps 4] [--train-steps 30] [--out video.mp4]

The pipeline is built from configs with random weights (vin.diffusers.tiny), so the frames are
noise-like; what the example shows is the API, the shapes and that an unmodified WanPipeline makes
videos longer than its transformer can take in one piece. Its transformer knows 8 RoPE positions
per axis (rope_max_seq_len=8), i.e. at most 8 latent frames = 29 video frames per forward.
"""

from __future__ import annotations

import argparse
import time

import torch

import vin
import vin.diffusers as vd
from vin.diffusers.tiny import tiny_wan_pipeline

PROMPT = "a red ball rolls over the green grass"
SIZE = 32  # pixels; the VAE makes 4x4 latents, the transformer 2x2 tokens per latent frame


def generate(pipe, frames: int, steps: int, seed: int = 0) -> torch.Tensor:
    return pipe(
        PROMPT, negative_prompt="cat", height=SIZE, width=SIZE, num_frames=frames, num_inference_steps=steps,
        max_sequence_length=8, output_type="pt", generator=torch.Generator().manual_seed(seed),
    ).frames[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=97, help="video frames of the long video (4k+1)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps")
    parser.add_argument("--train-steps", type=int, default=30, help="VIN adapter training steps")
    parser.add_argument("--out", help="write the long video here (mp4, needs opencv or imageio)")
    args = parser.parse_args()
    pipe = tiny_wan_pipeline(rope_max_seq_len=8)
    transformer = pipe.transformer

    # 1. A short video (fits the model), then the same with chunked attention: chunks of 2 latent
    #    frames that also see 1 frame before them.
    short = generate(pipe, 29, args.steps)
    with vd.chunked_attention(transformer, chunk=2, context=1) as handle:
        print(handle)
        chunked = generate(pipe, 29, args.steps)
    print(f"short video {tuple(short.shape)}; chunked attention changes it by "
          f"{(chunked - short).norm() / short.norm():.3f} (relative)")

    # 2. A long video: the transformer alone cannot take it.
    latent_frames = (args.frames - 1) // 4 + 1
    try:
        generate(pipe, args.frames, args.steps)
    except RuntimeError as error:
        print(f"{latent_frames} latent frames in one piece: RuntimeError ({str(error)[:60]}...)")
    with vd.LongVideo(transformer, window=8, overlap=3) as long_video:
        layout = long_video.layout(latent_frames)
        start = time.perf_counter()
        video = generate(pipe, args.frames, args.steps)
        seconds = time.perf_counter() - start
    print(f"{long_video}: windows start at latent frames {layout.starts}; video {tuple(video.shape)} "
          f"in {seconds:.1f} s ({torch.get_num_threads()} threads)")

    # 3. A VIN adapter: global tokens for the frozen transformer, trained alone on the pipeline's
    #    own latents of short videos (flow matching), then used for the long video.
    config = vin.VINConfig(num_global_tokens=8, dim=32, depth=1, heads=4, fps=16, frames_per_latent=4)
    adapter = vd.VINAdapter(transformer, config, height=SIZE // 8, width=SIZE // 8)
    # The gate starts at 0 (the adapter changes nothing until trained) and moves by about its learning
    # rate per Adam step: it trains at 10x the VIN's rate.
    optimizer = torch.optim.Adam([{"params": adapter.vin.parameters()}, {"params": [adapter.gate], "lr": 3e-2}], lr=3e-3)
    vae = pipe.vae.config
    mean, std = (torch.tensor(v).view(1, -1, 1, 1, 1) for v in (vae.latents_mean, vae.latents_std))
    with torch.no_grad():  # the pipeline's latent space (the VAE's latents, normalized) and text embedding
        data = (pipe.vae.encode(short.permute(1, 0, 2, 3)[None] * 2 - 1).latent_dist.mode() - mean) / std
        prompt_embeds, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=8)

    def loss(seed: int) -> torch.Tensor:
        return adapter.training_loss(data, prompt_embeds, generator=torch.Generator().manual_seed(seed))

    def evaluation() -> float:  # the same 8 noise draws every time
        with torch.no_grad():
            return sum(loss(seed).item() for seed in range(8)) / 8

    with adapter.attach(chunk=4, context=2) as handle:
        handle.global_tokens = None
        frozen = evaluation()
        handle.global_tokens = adapter
        for step in range(args.train_steps):
            optimizer.zero_grad()
            loss(1000 + step).backward()
            optimizer.step()
        print(f"flow-matching loss of the frozen transformer: {frozen:.4f} without global tokens, "
              f"{evaluation():.4f} with the VIN's after {args.train_steps} steps")
        with vd.LongVideo(transformer, window=8, overlap=3):
            video = generate(pipe, args.frames, args.steps)
    print(f"long video with the VIN's global tokens: {tuple(video.shape)}")

    if args.out:
        from diffusers.utils import export_to_video

        export_to_video(list(video.permute(0, 2, 3, 1).numpy()), args.out, fps=16)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
