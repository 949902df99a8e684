"""A tiny random ``WanPipeline`` built from configs, offline: for examples, tests and CI.

Nothing is downloaded: the tokenizer is a word-level ``tokenizers`` vocabulary wrapped in
``transformers.PreTrainedTokenizerFast``, the text encoder a 2-layer ``UMT5EncoderModel`` (Wan's
encoder class), the VAE and transformer the configs of diffusers' own Wan pipeline tests. The
output is noise-like (random weights); the point is the shapes, the code paths and the cost.
"""

from __future__ import annotations

import torch

__all__ = ["VOCABULARY", "tiny_wan_pipeline"]

VOCABULARY = tuple(
    "<pad> </s> <unk> a an the red green blue ball cube cat dog monkey rolls jumps dances runs over on in "
    "grass street room slowly quickly".split()
)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocabulary = {word: i for i, word in enumerate(VOCABULARY)}
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_wan_pipeline(*, rope_max_seq_len: int = 32, two_experts: bool = False, seed: int = 0):
    """``WanPipeline`` with random tiny components (Wan 2.1 T2V, or Wan 2.2 A14B-style with ``two_experts``).

    Transformer: 2 layers, 2 heads of 12 channels, patch (1, 2, 2), ``rope_max_seq_len`` RoPE
    positions per axis, so at most ``rope_max_seq_len`` latent frames in one forward. VAE: 8x
    spatial, 4x temporal compression, 16 latent channels (``num_frames = 4 * k + 1`` video frames
    give ``k + 1`` latent frames). Scheduler: flow matching, UniPC. Runs on a CPU in about a
    second for 9 frames at 16x16.
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    def transformer():
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=rope_max_seq_len,
        )

    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(VOCABULARY), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4)
    )
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanPipeline(
        tokenizer=_tokenizer(), text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer(),
        transformer_2=transformer() if two_experts else None, boundary_ratio=0.875 if two_experts else None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
