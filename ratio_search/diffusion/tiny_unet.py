"""The ``tiny`` backend's network and noise schedule: what every tiny model is built from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent / "base_model"
BASE_CLASSES = ["CNV", "NORMAL"]
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"

# The noise schedule of every tiny model. Cosine betas reach (almost) zero signal at t = T and
# "trailing" timestep spacing makes sampling start there. At (near) zero signal an epsilon-model
# cannot estimate an image's mean brightness (x0 = (x_t - sqrt(1-abar) eps) / sqrt(abar) divides by
# ~0): measured, its per-image brightness followed the initial noise's, too bright and too varied.
# v-prediction (Salimans & Ho 2022; Lin et al. 2023) predicts about -x0 there, which it can learn.
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction",
    "clip_sample": True,
    "timestep_spacing": "trailing",
}

# DDIM's eta: 0 is the deterministic sampler, 1 adds fresh noise at every step (DDPM-like); the
# noise of image i comes only from its own generator seeded by (seed, i) either way. Measured with
# the bundled base (base_model/TRAINING.md): at guidance 2 eta 0 matched the real pixel sd a little
# better (6.2 % off vs 8.2 %) with the same share called CNV, so the default is 0.
DDIM_ETA = 0.0

# A UNet of about ten thousand parameters, for tests (pass as ``unet_config=TEST_UNET``).
TEST_UNET: dict[str, Any] = {
    "block_out_channels": (4, 8),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 2,
    "attention_head_dim": 4,
}


def tiny_unet_config(
    n_classes: int, image_size: int, channels: int, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The UNet2DModel config: blocks (32, 64, 64), one layer each, attention in the lowest block,
    ``n_classes + 1`` class embeddings (the last one is the null class): about 1.1 M parameters."""
    cfg: dict[str, Any] = {
        "sample_size": image_size,
        "in_channels": channels,
        "out_channels": channels,
        "block_out_channels": (32, 64, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        # 8 groups, not diffusers' default 32: with 32 groups on 32 channels every GroupNorm is a
        # per-channel instance norm, and the last one (before conv_out) leaves the predicted noise
        # without a per-image mean, so sampled images get the brightness of their initial noise
        # (measured: too bright, and far too varied in brightness; see base_model/TRAINING.md).
        "norm_num_groups": 8,
        "attention_head_dim": 8,
        "num_class_embeds": n_classes + 1,
    }
    cfg.update(overrides or {})
    cfg["block_out_channels"] = tuple(cfg["block_out_channels"])
    return cfg


def build_unet(unet_cfg: dict[str, Any], seed: int):
    """A freshly initialised UNet2DModel; the seed makes the initialisation repeatable."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)  # the initialisation is part of "same config -> same result"
    return UNet2DModel(**unet_cfg)
