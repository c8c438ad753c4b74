"""The ``stable-diffusion`` backend: the reference study's text-to-image fine-tune, done locally.

The study fine-tuned a distilled Stable Diffusion (nota-ai BK-SDM) on CNV scans with the prompt
"OCT scan showing CNV": the UNet is trained, the VAE and the CLIP text encoder stay frozen, DDPM
noise + MSE loss on the VAE latents, AdamW lr 1e-4, batch 8, 512 x 512 (REFERENCE_STUDY.md).
This module does the same on a diffusers pipeline folder that is already on disk. Nothing is ever
downloaded: ``--base-model`` must be a local folder written by ``save_pretrained`` (or a snapshot
of a hub repository), holding ``model_index.json`` and the ``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/`` and ``scheduler/`` subfolders.

Pointing it at BK-SDM or SD 1.5 on disk::

    # once, on a machine with internet access (any way of getting the folder works):
    #   huggingface-cli download nota-ai/bk-sdm-small --local-dir /path/to/bk-sdm-small
    #   (or stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir /path/to/sd-1.5)
    ratio-search finetune --backend stable-diffusion --base-model /path/to/bk-sdm-small --image-size 64

``--image-size`` is the size of the dataset's images (what the classifier sees, and the size the
generated images are resized back to); the fine-tune itself runs at ``--resolution``
(``finetune.resolution``; default 512, the study's; 256 is about four times cheaper and plenty for
64 px data). Add ``--device cuda`` (the default ``auto`` picks a GPU when there is one),
``--max-steps`` (the study: 30 epochs of 30,000 images at batch 8, about 112,000 steps) and
``--resume`` after an interruption. On a CPU only the tiny test pipeline is practical.
Grayscale images are repeated to three channels and resized to the resolution with the data
layer's resize rule; generated images come back through that same rule.

Defaults that differ from the ``tiny`` backend: when ``finetune.lr``, ``finetune.batch_size`` or
``finetune.resolution`` are left at the tiny backend's defaults, the study's values are used
(lr 1e-4, batch 8, 512 px); the resolved values are returned in the training stats (and so end up
in ``meta.json``).

On a GPU the UNet is trained under autocast (bf16 where supported, else fp16 with a gradient
scaler) with gradient checkpointing; on the CPU in plain fp32. Every ``checkpoint_every`` steps the
UNet, the optimiser and the step are written to ``out_dir/checkpoint`` (safetensors + a
``weights_only`` optimiser file), and ``resume=True`` continues from there. The batch order and
the noise of step ``s`` are drawn from generators seeded by ``(seed, s)``, so a resumed run
reproduces an uninterrupted one. The result is a complete pipeline saved with
``save_pretrained`` (safetensors), loadable with :meth:`SDModel.load`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import FinetuneConfig
from ..data.imagefolder import pil_to_array
from ..errors import ConfigError, DataError, ModelError
from .common import META_NAME, GenerativeModel, file_hash, image_seed, read_meta

# The study's fine-tune settings (REFERENCE_STUDY.md). Used when the user left the corresponding
# FinetuneConfig field at the tiny backend's default.
SD_DEFAULTS = {"lr": 1e-4, "batch_size": 8, "resolution": 512}

# The folders a diffusers text-to-image pipeline needs, and the file that says each one is there.
REQUIRED_PARTS = {
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": None,  # vocab.json + merges.txt, or tokenizer.json: checked separately
    "scheduler": "scheduler_config.json",
}

# Written next to the saved pipeline: what SDModel needs beyond the diffusers folder.
SD_CONFIG_FILE = "sd_config.json"
CHECKPOINT_DIR = "checkpoint"

# Gradient-norm clip of the UNet update (diffusers' train_text_to_image.py default).
MAX_GRAD_NORM = 1.0


# --------------------------------------------------------------------------------------------
# Checking a pipeline folder
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Resolving the SD defaults
# --------------------------------------------------------------------------------------------


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

    For the model's content hash and meta.json: ``lr`` / ``batch_size`` / ``resolution`` as
    actually used, and none of the tiny-only fields (EMA, class dropout, from_scratch).
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


# --------------------------------------------------------------------------------------------
# Images in and out
# --------------------------------------------------------------------------------------------


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


def _step_seed(seed: int, step: int) -> int:
    # Training randomness of step `step` (batch noise, timesteps, VAE posterior sample); a
    # different entropy word than image_seed so the two streams never coincide.
    return int(
        np.random.SeedSequence([int(seed), 0x5D, int(step)]).generate_state(1, dtype=np.uint64)[0]
        >> 1
    )


# --------------------------------------------------------------------------------------------
# Fine-tuning
# --------------------------------------------------------------------------------------------


def _load_components(base: Path) -> dict[str, Any]:
    """Tokenizer, text encoder, VAE, UNet and DDPM noise scheduler of the pipeline at ``base``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    parts: dict[str, Any] = {}
    loaders = {
        "tokenizer": lambda: CLIPTokenizer.from_pretrained(base, subfolder="tokenizer"),
        "text_encoder": lambda: CLIPTextModel.from_pretrained(base, subfolder="text_encoder"),
        "vae": lambda: AutoencoderKL.from_pretrained(base, subfolder="vae"),
        "unet": lambda: UNet2DConditionModel.from_pretrained(base, subfolder="unet"),
        # Whatever sampler the pipeline ships with, training adds noise the DDPM way; diffusers'
        # own train_text_to_image.py does the same.
        "noise_scheduler": lambda: DDPMScheduler.from_pretrained(base, subfolder="scheduler"),
    }
    for name, load in loaders.items():
        try:
            parts[name] = load()
        except Exception as e:  # broken config / weights, whatever the library raises: one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"--base-model {base}: cannot load {name} ({first})") from None
    return parts


def _precision(device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, gradient checkpointing?) for training on ``device``.

    Mixed precision and gradient checkpointing are for the GPU only: on a CPU autocast is slow and
    memory is rarely the limit at the sizes a CPU can train.
    """
    if device.type != "cuda":
        return None, False
    return (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16), True


@torch.no_grad()
def _encode_prompt(tokenizer, text_encoder, prompt: str, device: torch.device) -> torch.Tensor:
    ids = tokenizer(
        [prompt],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    return text_encoder(ids)[0]


def _fingerprint(
    base: Path, settings: dict[str, Any], cfg: FinetuneConfig, n_images: int, prompt: str
) -> dict:
    # What a checkpoint must agree with to be resumed (max_steps may change: that is the point).
    return {
        "base_model": str(base.resolve()),
        "lr": settings["lr"],
        "batch_size": settings["batch_size"],
        "resolution": settings["resolution"],
        "seed": cfg.seed,
        "n_images": n_images,
        "prompt": prompt,
    }


def _save_checkpoint(out_dir: Path, unet, optimizer, scaler, state: dict[str, Any]) -> None:
    """Write the checkpoint to a temp folder, then swap it in (a crash never leaves half of one)."""
    from safetensors.torch import save_file

    final = out_dir / CHECKPOINT_DIR
    tmp = out_dir / f"{CHECKPOINT_DIR}.tmp"
    old = out_dir / f"{CHECKPOINT_DIR}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in unet.state_dict().items()}
    save_file(weights, str(tmp / "unet.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    state = dict(state)
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _find_checkpoint(out_dir: Path) -> Path | None:
    for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.old"):  # .old: a crash mid-swap
        d = out_dir / name
        if (d / "state.json").is_file() and (d / "unet.safetensors").is_file():
            return d
    return None


def _load_checkpoint(ckpt: Path, unet, optimizer, scaler, fingerprint: dict) -> dict[str, Any]:
    from safetensors.torch import load_file

    state = json.loads((ckpt / "state.json").read_text())
    for key, value in fingerprint.items():
        if state.get("fingerprint", {}).get(key) != value:
            raise ModelError(
                f"checkpoint {ckpt} was made with {key}={state.get('fingerprint', {}).get(key)!r}, "
                f"this run has {key}={value!r}; delete the checkpoint or run without --resume"
            )
    unet.load_state_dict(load_file(str(ckpt / "unet.safetensors")))
    optimizer.load_state_dict(
        torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
    )
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state


def _batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of training step ``step``: epochs of seeded permutations, a function of the step only."""
    per_epoch = math.ceil(n / batch_size)
    epoch, j = divmod(step, per_epoch)
    perm = np.random.default_rng([int(seed), 0xE9, epoch]).permutation(n)
    return perm[j * batch_size : (j + 1) * batch_size]


def finetune_sd(
    data,
    cfg: FinetuneConfig,
    out_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Fine-tune the UNet of the pipeline at ``cfg.base_model`` on the synthetic class's train images.

    Args:
        data: a :class:`ratio_search.data.Dataset`; only ``train_x[train_y == synthetic_label]``
            is used (the diffusion model never sees val or test images).
        cfg: the finetune section; ``base_model``, ``max_steps``, ``lr``, ``batch_size``,
            ``resolution``, ``prompt``, ``checkpoint_every``, ``seed`` and ``device`` are used.
        out_dir: where the fine-tuned pipeline is saved (``save_pretrained``, safetensors), plus
            ``sd_config.json`` and, while training, ``checkpoint/``.
        resume: continue from ``out_dir/checkpoint`` when there is one.
        progress: show a tqdm bar.

    Returns:
        Training stats: ``steps``, ``final_loss`` (mean of the last 10 steps), ``seconds`` and the
        resolved ``lr``, ``batch_size``, ``resolution``, ``prompt``, ``mixed_precision``,
        ``gradient_checkpointing``, ``n_train_images``, ``resumed_from_step``.
    """
    from ..home import resolve_device

    base = check_pipeline_folder(cfg.base_model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = resolve_sd_settings(cfg)
    device = torch.device(resolve_device(cfg.device))
    amp_dtype, grad_ckpt = _precision(device)
    return _train(
        data, cfg, base, out_dir, settings, device, amp_dtype, grad_ckpt, resume, progress
    )


def _train(
    data,
    cfg: FinetuneConfig,
    base: Path,
    out_dir: Path,
    settings: dict[str, Any],
    device: torch.device,
    amp_dtype: torch.dtype | None,
    grad_ckpt: bool,
    resume: bool,
    progress: bool,
) -> dict[str, Any]:
    """The training loop of :func:`finetune_sd` with the precision choices made explicit."""
    t0 = time.perf_counter()
    label = int(data.synthetic_label)
    class_name = data.class_names[label]
    x = data.train_x[data.train_y == label]
    if len(x) == 0:
        raise DataError(f"no training images of class {class_name!r} to fine-tune on")
    prompt = class_prompt(cfg.prompt, class_name)
    lr, batch_size, resolution = settings["lr"], settings["batch_size"], settings["resolution"]

    parts = _load_components(base)
    tokenizer, text_encoder, vae = parts["tokenizer"], parts["text_encoder"], parts["vae"]
    unet, noise_scheduler = parts["unet"], parts["noise_scheduler"]
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if resolution % vae_factor:
        raise ModelError(
            f"finetune.resolution {resolution}: must be a multiple of {vae_factor} for the VAE of {base}"
        )

    # Frozen parts stay in fp32 (saved unchanged); autocast runs their matmuls in half precision.
    for frozen in (text_encoder, vae):
        frozen.requires_grad_(False).eval().to(device)
    unet.to(device).train()
    if grad_ckpt:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    # One prompt for every image: encode it once instead of per step.
    prompt_embeds = _encode_prompt(tokenizer, text_encoder, prompt, device)
    fingerprint = _fingerprint(base, settings, cfg, len(x), prompt)

    start, losses, prev_seconds, resumed_from = 0, [], 0.0, None
    ckpt = _find_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        state = _load_checkpoint(ckpt, unet, optimizer, scaler, fingerprint)
        start, losses, prev_seconds = state["step"], state["losses"], state["seconds"]
        resumed_from = start

    scaling = vae.config.scaling_factor
    n_train_t = noise_scheduler.config.num_train_timesteps
    prediction = noise_scheduler.config.prediction_type
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    bar = _progress_bar(progress, total=cfg.max_steps, initial=start, desc="fine-tune (SD)")

    for step in range(start, cfg.max_steps):
        idx = _batch_indices(len(x), batch_size, cfg.seed, step)
        pixels = images_to_pipeline_input(x[idx], resolution).to(device)
        gen = torch.Generator().manual_seed(_step_seed(cfg.seed, step))
        with autocast:
            with torch.no_grad():
                posterior = vae.encode(pixels).latent_dist
                latents = posterior.sample(generator=gen).float() * scaling
            # Noise and timesteps drawn on the CPU from the step's generator: the same on any device.
            noise = torch.randn(latents.shape, generator=gen).to(device)
            t = torch.randint(0, n_train_t, (len(idx),), generator=gen).to(device)
            noisy = noise_scheduler.add_noise(latents, noise, t)
            if prediction == "epsilon":
                target = noise
            elif prediction == "v_prediction":
                target = noise_scheduler.get_velocity(latents, noise, t)
            else:
                raise ModelError(f"--base-model {base}: unsupported prediction_type {prediction!r}")
            cond = prompt_embeds.expand(len(idx), -1, -1)
            pred = unet(noisy, t, encoder_hidden_states=cond, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), target.float())

        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(unet.parameters(), MAX_GRAD_NORM)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), MAX_GRAD_NORM)
            optimizer.step()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")

        done = step + 1
        if done % cfg.checkpoint_every == 0 and done < cfg.max_steps:
            seconds = prev_seconds + time.perf_counter() - t0
            _save_checkpoint(
                out_dir,
                unet,
                optimizer,
                scaler,
                {"step": done, "losses": losses, "seconds": seconds, "fingerprint": fingerprint},
            )
    if bar is not None:
        bar.close()

    unet.eval()
    _save_pipeline(base, out_dir, unet, vae, text_encoder, tokenizer)
    seconds = prev_seconds + time.perf_counter() - t0
    stats = {
        "steps": int(cfg.max_steps),
        "final_loss": float(np.mean(losses[-10:])) if losses else None,
        "seconds": round(seconds, 3),
        "lr": lr,
        "batch_size": batch_size,
        "resolution": resolution,
        "prompt": prompt,
        "prompt_template": cfg.prompt,
        "base_model": str(base.resolve()),
        "mixed_precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "no",
        "gradient_checkpointing": grad_ckpt,
        "n_train_images": int(len(x)),
        "resumed_from_step": resumed_from,
        "device": str(device),
    }
    sd_config = {
        "prompt_template": cfg.prompt,
        "resolution": resolution,
        "class_names": list(data.class_names),
        "synthetic_label": label,
        "image_size": int(data.train_x.shape[-1]),
        "channels": int(data.train_x.shape[1]),
    }
    (out_dir / SD_CONFIG_FILE).write_text(json.dumps(sd_config, indent=1))
    # The finished pipeline supersedes the checkpoint (an SD UNet + AdamW state is ~10 GB).
    for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.old", f"{CHECKPOINT_DIR}.tmp"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    return stats


def _save_pipeline(base: Path, out_dir: Path, unet, vae, text_encoder, tokenizer) -> None:
    """Save the base pipeline with the fine-tuned UNet into ``out_dir`` (safetensors).

    No safety checker: these are medical scans, and the checker's CLIP model would cost memory
    for nothing. The sampler is the base pipeline's (its config seeds DDIM / DPM-Solver later).
    """
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        base,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)


def _progress_bar(enabled: bool, **kw):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(**kw)


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def _unet_hash(path: Path) -> str:
    weights = sorted((path / "unet").glob("*.safetensors"))
    if not weights:
        raise ModelError(f"model {path}: no unet/*.safetensors weights")
    return file_hash(weights[0])


def _dtype_argument() -> str:
    """The name of from_pretrained's dtype argument (diffusers renamed torch_dtype to dtype)."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def _guided_pipeline_class():
    """StableDiffusionPipeline whose guidance means what the tiny backend's does for every scale.

    diffusers skips classifier-free guidance for ``guidance_scale <= 1`` (conditional only). Here
    only exactly 1 skips it: ``uncond + g * (cond - uncond)`` is applied for any other g, so that
    0 is unconditional and 0 < g < 1 interpolates, as in the tiny backend.
    """
    from diffusers import StableDiffusionPipeline

    class GuidedStableDiffusionPipeline(StableDiffusionPipeline):
        @property
        def do_classifier_free_guidance(self):
            return self._guidance_scale != 1.0 and self.unet.config.time_cond_proj_dim is None

    return GuidedStableDiffusionPipeline


class SDModel(GenerativeModel):
    """A fine-tuned Stable Diffusion pipeline folder, sampled class by class with text prompts.

    ``image_size`` / ``channels`` are the dataset's (from ``meta.json``): samples are generated at
    the fine-tune's ``resolution`` and brought back to the dataset's format through the data
    layer's resize rule.
    """

    backend = "stable-diffusion"

    def __init__(self, path: Path, meta: dict[str, Any], sd_config: dict[str, Any]) -> None:
        self.path = Path(path)
        self.meta = meta
        # Without meta.json: identify the model by the UNet weights, the only part fine-tuned.
        self.model_hash = str(meta.get("model_hash") or _unet_hash(self.path))
        self.image_size = int(meta.get("image_size", sd_config["image_size"]))
        self.channels = int(meta.get("channels", sd_config["channels"]))
        self.class_names = [str(c) for c in meta.get("class_names", sd_config["class_names"])]
        self.prompt_template = str(sd_config["prompt_template"])
        self.resolution = int(sd_config["resolution"])
        self._pipes: dict[str, Any] = {}  # device -> loaded pipeline

    @classmethod
    def load(cls, path: str | os.PathLike) -> SDModel:
        """Open a folder written by :func:`finetune_sd` (plus the common code's ``meta.json``).

        Without a ``meta.json`` (a bare :func:`finetune_sd` output) the dataset's size, channels
        and classes come from ``sd_config.json`` and the hash from the UNet weights.
        """
        p = check_pipeline_folder(path, what="model")
        if not (p / SD_CONFIG_FILE).is_file():
            raise ModelError(
                f"model {p}: no {SD_CONFIG_FILE}; not a stable-diffusion model saved by ratio-search"
            )
        meta = read_meta(p) if (p / META_NAME).is_file() else {}
        try:
            return cls(p, meta, json.loads((p / SD_CONFIG_FILE).read_text()))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ModelError(f"model {p}: unreadable {SD_CONFIG_FILE} ({e!r})") from None

    def prompt(self, class_index: int) -> str:
        """The text prompt that generates class ``class_index``."""
        return class_prompt(self.prompt_template, self.class_names[class_index])

    def _pipeline(self, device: str):
        if device not in self._pipes:
            # fp16 on the GPU: twice the speed and half the memory of fp32 for sampling.
            dtype = torch.float16 if device.startswith("cuda") else torch.float32
            try:
                pipe = _guided_pipeline_class().from_pretrained(
                    self.path,
                    safety_checker=None,
                    feature_extractor=None,
                    requires_safety_checker=False,
                    **{_dtype_argument(): dtype},
                )
            except Exception as e:  # broken config / weights: one clear line, not a traceback
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ModelError(f"model {self.path}: cannot load the pipeline ({first})") from None
            pipe.set_progress_bar_config(disable=True)
            self._pipes[device] = pipe.to(device)
        return self._pipes[device]

    @staticmethod
    def _scheduler(config, scheduler: str):
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

        if scheduler == "ddim":
            return DDIMScheduler.from_config(config)
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")

    @torch.no_grad()
    def _sample(
        self, n, class_index, guidance, steps, scheduler, seed, batch_size, device, progress
    ) -> np.ndarray:
        """See :meth:`GenerativeModel.sample` (arguments already checked there).

        Classifier-free guidance is the pipeline's own batched cond/uncond pass. Image ``i``
        starts from latents drawn by a CPU generator seeded with ``image_seed(seed, i)``, so it
        depends only on ``(seed, i)``.
        """
        from tqdm.auto import tqdm

        from ..home import resolve_device

        out = np.empty((n, self.channels, self.image_size, self.image_size), dtype=np.uint8)
        if n == 0:
            return out
        device = resolve_device(device)
        pipe = self._pipeline(device)
        pipe.scheduler = self._scheduler(pipe.scheduler.config, scheduler)
        prompt = self.prompt(class_index)
        bar = tqdm(total=n, desc=f"sample (SD, {scheduler})", disable=not progress, leave=False)
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            gens = [torch.Generator().manual_seed(image_seed(seed, i)) for i in range(lo, hi)]
            images = pipe(
                prompt=[prompt] * (hi - lo),
                height=self.resolution,
                width=self.resolution,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=gens,
                output_type="np",
            ).images
            out[lo:hi] = pipeline_output_to_images(
                np.asarray(images), self.image_size, self.channels
            )
            bar.update(hi - lo)
        bar.close()
        return out


# --------------------------------------------------------------------------------------------
# A tiny randomly initialised pipeline (tests, GPU checks, end-to-end runs without a download)
# --------------------------------------------------------------------------------------------

# Words the tiny tokenizer knows whole; anything else is spelled out byte by byte (still valid).
_TINY_WORDS = ("oct", "scan", "showing", "cnv", "normal", "dme", "drusen", "class", "image", "of")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map (what ByteLevel pre-tokenises to)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def tiny_tokenizer_vocab(
    words: Iterable[str] = _TINY_WORDS,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A small CLIP BPE vocabulary: all 256 byte symbols (alone and word-final), merges that
    assemble ``words`` left to right, then ``<|startoftext|>`` and ``<|endoftext|>``."""
    symbols = list(_bytes_to_unicode().values())
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
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out = Path(path)
    pipe.save_pretrained(out, safe_serialization=True)
    return out
