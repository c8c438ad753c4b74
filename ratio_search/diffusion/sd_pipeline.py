"""The ``stable-diffusion`` backend's pipeline folders, settings, prompts and image conversions.

Shared by its training (:mod:`.sd_train`) and its sampling (:mod:`.sd`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..config import FinetuneConfig
from ..data.imagefolder import pil_to_array
from ..errors import ConfigError, ModelError

# The reference study's fine-tune settings (BK-SDM on OCT scans: AdamW lr 1e-4, batch 8,
# 512 x 512). Used when the user left the corresponding FinetuneConfig field at the tiny backend's
# default.
SD_DEFAULTS = {"lr": 1e-4, "batch_size": 8, "resolution": 512}

# The folders a diffusers text-to-image pipeline needs, and the file that says each one is there.
REQUIRED_PARTS = {
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": None,  # vocab.json + merges.txt, or tokenizer.json: checked separately
    "scheduler": "scheduler_config.json",
}

# No safety checker, in every pipeline we build or load: these are medical scans, and the
# checker's CLIP model would cost memory for nothing.
NO_SAFETY_CHECKER: dict[str, Any] = {
    "safety_checker": None,
    "feature_extractor": None,
    "requires_safety_checker": False,
}

# Written next to the saved pipeline: what SDModel needs beyond the diffusers folder.
SD_CONFIG_FILE = "sd_config.json"


def check_pipeline_folder(path: str | os.PathLike | None, what: str = "--base-model") -> Path:
    """Return ``path`` as a Path if it is a local diffusers text-to-image pipeline folder.

    Raises :class:`ModelError` naming the path and what is missing otherwise.
    """
    if path is None or str(path) == "":
        raise ModelError(
            f"{what} is required for the stable-diffusion backend: a local diffusers pipeline "
            "folder such as a download of nota-ai/bk-sdm-small (nothing is downloaded)"
        )
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"{what} {p}: not found")
    if not p.is_dir():
        raise ModelError(f"{what} {p}: is a file, expected a diffusers pipeline folder")
    if not (p / "model_index.json").is_file():
        raise ModelError(f"{what} {p}: not a diffusers pipeline (no model_index.json)")
    missing = []
    for part, marker in REQUIRED_PARTS.items():
        d = p / part
        if part == "tokenizer":
            ok = (d / "tokenizer.json").is_file() or (
                (d / "vocab.json").is_file() and (d / "merges.txt").is_file()
            )
        else:
            ok = (d / marker).is_file()
        if not ok:
            missing.append(
                f"{part}/" if not d.is_dir() else f"{part}/{marker or 'vocab.json+merges.txt'}"
            )
    if missing:
        raise ModelError(
            f"{what} {p}: not a complete diffusers pipeline, missing {', '.join(missing)}"
        )
    return p


def base_hash(cfg: FinetuneConfig) -> str:
    """Identify a stable-diffusion base pipeline by its folder's config files (cheap, stable)."""
    if not cfg.base_model:
        raise ConfigError(
            "finetune.base_model: the stable-diffusion backend needs --base-model PATH"
        )
    root = Path(cfg.base_model).expanduser()
    if not root.is_dir():
        raise ModelError(f"base model not found: {root}")
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(root)}:{st.st_size}".encode())
            if p.suffix == ".json":
                h.update(p.read_bytes())
    return h.hexdigest()[:16]


def resolve_sd_settings(cfg: FinetuneConfig) -> dict[str, Any]:
    """lr, batch size and resolution for the SD fine-tune.

    A field left at the tiny backend's default takes the study's SD value instead; anything the
    user set explicitly is kept.
    """
    tiny = FinetuneConfig()
    lr = SD_DEFAULTS["lr"] if cfg.lr == tiny.lr else cfg.lr
    batch_size = SD_DEFAULTS["batch_size"] if cfg.batch_size == tiny.batch_size else cfg.batch_size
    resolution = cfg.resolution if cfg.resolution is not None else SD_DEFAULTS["resolution"]
    return {"lr": float(lr), "batch_size": int(batch_size), "resolution": int(resolution)}


def resolve_config(cfg: FinetuneConfig) -> dict[str, Any]:
    """The finetune fields that determine an SD model's weights, with SD defaults resolved.

    The model's content hash and meta.json's ``config``: ``lr`` / ``batch_size`` /
    ``resolution`` as actually used, and none of the tiny-only fields (EMA, class dropout,
    from_scratch).
    """
    return {
        "backend": cfg.backend,
        "base_model": str(Path(cfg.base_model).expanduser().resolve()) if cfg.base_model else None,
        "max_steps": int(cfg.max_steps),
        "prompt": cfg.prompt,
        "seed": int(cfg.seed),
        **resolve_sd_settings(cfg),
    }


def class_prompt(template: str, class_name: str) -> str:
    """The text prompt of one class: ``"OCT scan showing {cls}"`` -> ``"OCT scan showing CNV"``."""
    try:
        return template.format(cls=class_name)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(
            f"finetune.prompt {template!r}: only the placeholder {{cls}} is allowed ({e})"
        ) from None


def images_to_pipeline_input(x: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` (C = 1 or 3) -> float ``(N, 3, res, res)`` in [-1, 1].

    Grayscale is repeated to three channels (SD's VAE expects RGB); resizing is the data layer's
    one rule (:func:`ratio_search.data.imagefolder.pil_to_array`).
    """
    out = np.empty((len(x), 3, resolution, resolution), dtype=np.float32)
    for i, img in enumerate(x):
        if img.shape[0] == 1:
            pil = Image.fromarray(img[0])
        else:
            pil = Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)))
        out[i] = pil_to_array(pil, resolution, channels=3)
    return torch.from_numpy(out / 127.5 - 1.0)


def pipeline_output_to_images(images: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """Pipeline output, float ``(N, H, W, 3)`` in [0, 1] -> uint8 ``(N, C, S, S)`` of the dataset.

    Goes through the data layer's own conversion and resize
    (:func:`ratio_search.data.imagefolder.pil_to_array`: PIL ``L`` for grayscale, box mean when
    reducing), so real and synthetic images are preprocessed identically.
    """
    rgb = (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    out = np.empty((len(rgb), channels, image_size, image_size), dtype=np.uint8)
    for i, img in enumerate(rgb):
        out[i] = pil_to_array(Image.fromarray(img), image_size, channels)
    return out


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (or its type): for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
