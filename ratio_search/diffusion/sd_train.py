"""Fine-tuning of the ``stable-diffusion`` backend: the UNet only, on the synthetic class.

The UNet is trained, the VAE and the CLIP text encoder stay frozen; DDPM noise + MSE loss on the
VAE latents (diffusers' ``train_text_to_image.py`` recipe). On a GPU under autocast (bf16 where
supported, else fp16 with a gradient scaler) with gradient checkpointing; on the CPU in plain
fp32. Every ``checkpoint_every`` steps the UNet, the optimiser and the step are written to
``out_dir/checkpoint`` (safetensors + a ``weights_only`` optimiser file), and ``resume=True``
continues from there. The batch order and the noise of step ``s`` are drawn from generators
seeded by ``(seed, s)``, so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .._io import atomic_dir, atomic_write_json
from ..config import FinetuneConfig
from ..errors import DataError, ModelError
from ..home import resolve_device
from .sd_pipeline import (
    NO_SAFETY_CHECKER,
    SD_CONFIG_FILE,
    check_pipeline_folder,
    class_prompt,
    first_line,
    images_to_pipeline_input,
    resolve_sd_settings,
)

CHECKPOINT_DIR = "checkpoint"

# Gradient-norm clip of the UNet update (diffusers' train_text_to_image.py default).
MAX_GRAD_NORM = 1.0


def _step_seed(seed: int, step: int) -> int:
    # Training randomness of step `step` (batch noise, timesteps, VAE posterior sample); a
    # different entropy word than image_seed so the two streams never coincide.
    return int(
        np.random.SeedSequence([int(seed), 0x5D, int(step)]).generate_state(1, dtype=np.uint64)[0]
        >> 1
    )


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
            raise ModelError(f"--base-model {base}: cannot load {name} ({first_line(e)})") from None
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

    with atomic_dir(out_dir / CHECKPOINT_DIR, replace=True) as tmp:
        weights = {k: v.detach().contiguous().cpu() for k, v in unet.state_dict().items()}
        save_file(weights, str(tmp / "unet.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        state = dict(state)
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        (tmp / "state.json").write_text(json.dumps(state, indent=1))


def _find_checkpoint(out_dir: Path) -> Path | None:
    # The previous checkpoint, moved aside, is all there is after a crash mid-swap.
    for d in [out_dir / CHECKPOINT_DIR, *sorted(out_dir.glob(f".old-{CHECKPOINT_DIR}.*"))]:
        if (d / "state.json").is_file() and (d / "unet.safetensors").is_file():
            return d
    return None


def _remove_checkpoints(out_dir: Path) -> None:
    """The checkpoint and any half-written or moved-aside one (an SD UNet + AdamW state: ~10 GB)."""
    for pattern in (CHECKPOINT_DIR, f".old-{CHECKPOINT_DIR}.*", f".tmp-{CHECKPOINT_DIR}.*"):
        for d in out_dir.glob(pattern):
            shutil.rmtree(d, ignore_errors=True)


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
    bar = tqdm(
        total=cfg.max_steps, initial=start, desc="fine-tune (SD)", disable=not progress,
        leave=False,
    )  # fmt: skip

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
    atomic_write_json(out_dir / SD_CONFIG_FILE, sd_config, indent=1)
    _remove_checkpoints(out_dir)  # the finished pipeline supersedes them
    return stats


def _save_pipeline(base: Path, out_dir: Path, unet, vae, text_encoder, tokenizer) -> None:
    """Save the base pipeline with the fine-tuned UNet into ``out_dir`` (safetensors).

    No safety checker (:data:`NO_SAFETY_CHECKER`). The sampler is the base pipeline's (its config seeds DDIM / DPM-Solver later).
    """
    from diffusers import StableDiffusionPipeline

    parts = {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer}
    pipe = StableDiffusionPipeline.from_pretrained(base, **parts, **NO_SAFETY_CHECKER)
    pipe.save_pretrained(out_dir, safe_serialization=True)
