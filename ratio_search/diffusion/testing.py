"""Test helpers: a tiny, randomly initialised Stable Diffusion pipeline (no download).

Used by the test suite, GPU checks and end-to-end runs of the stable-diffusion backend on a CPU;
production code never imports this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch

from ..errors import ModelError
from .sd_pipeline import NO_SAFETY_CHECKER

# Words the tiny tokenizer knows whole; anything else is spelled out byte by byte (still valid).
_TINY_WORDS = ("oct", "scan", "showing", "cnv", "normal", "dme", "drusen", "class", "image", "of")


def tiny_tokenizer_vocab(
    words: Iterable[str] = _TINY_WORDS,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A small CLIP BPE vocabulary: all 256 byte symbols (alone and word-final), merges that
    assemble ``words`` left to right, then ``<|startoftext|>`` and ``<|endoftext|>``."""
    try:  # GPT-2/CLIP's reversible byte -> printable character map (what ByteLevel pre-tokenises to)
        from transformers.convert_slow_tokenizer import bytes_to_unicode
    except ImportError:  # transformers 4.x
        from transformers.models.clip.tokenization_clip import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            pair, merged = (left, right), left + right
            if pair not in merges:
                merges.append(pair)
            if merged not in vocab_list:
                vocab_list.append(merged)
            left = merged
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def build_tiny_pipeline(path: str | os.PathLike, image_size: int = 32, seed: int = 0) -> Path:
    """Write a tiny, randomly initialised Stable Diffusion pipeline to ``path`` and return it.

    Same architecture family as SD / BK-SDM (CLIP text encoder, KL-VAE with 4 latent channels and
    a 4x downsampling, cross-attention UNet), a few thousand parameters each, so the
    stable-diffusion backend can be exercised end to end on a CPU in seconds without downloading
    anything. ``image_size`` is the pixel resolution it is meant for (a multiple of 8).
    """
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if image_size % 8:
        raise ModelError(f"tiny pipeline image_size {image_size}: must be a multiple of 8")
    vocab, merges = tiny_tokenizer_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(4, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=image_size,
    )
    unet = UNet2DConditionModel(
        sample_size=image_size // 4,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    # SD 1.x's noise schedule and sampler (PNDM), as in a real pipeline folder.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    parts = {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet}
    pipe = StableDiffusionPipeline(**parts, scheduler=scheduler, **NO_SAFETY_CHECKER)
    out = Path(path)
    pipe.save_pretrained(out, safe_serialization=True)
    return out
