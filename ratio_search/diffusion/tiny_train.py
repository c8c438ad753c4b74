"""Training of the ``tiny`` backend: plain DDPM with null-class dropout, EMA weights, checkpoints.

All training randomness (batches, flips, dropout, noise, timesteps) comes from one
``torch.Generator`` whose state is checkpointed, so a resumed run continues exactly where the
interrupted one stopped.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .._io import atomic_write_json, atomic_write_with
from ..config import FinetuneConfig
from ..errors import ConfigError, ModelError
from ..home import resolve_device
from .base import META_NAME, STEP_STATS_NAME, read_meta, step_dir_name
from .tiny_unet import BASE_CLASSES, BASE_DIR, WEIGHTS_NAME, build_unet

CHECKPOINT_NAME = "checkpoint.pt"


def base_dir(cfg: FinetuneConfig) -> Path:
    """The base model a tiny fine-tune starts from: ``finetune.base_model`` or the bundled one."""
    return Path(cfg.base_model).expanduser() if cfg.base_model else BASE_DIR


def base_meta(base: Path) -> dict[str, Any]:
    """The base model's meta.json, or {} for a base folder that has only weights and config."""
    return read_meta(base) if (base / META_NAME).is_file() else {}


def base_is_unconditional(base: Path) -> bool:
    """True for a task-naive base (trained without labels, ``finetune.unconditional``)."""
    return bool(base_meta(base).get("config", {}).get("unconditional"))


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    """Write a resumable checkpoint (tensors, numbers, strings only: loadable with weights_only).

    Atomically: a crash mid-write leaves the previous checkpoint intact.
    """
    return atomic_write_with(folder / CHECKPOINT_NAME, lambda tmp: torch.save(state, tmp))


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The checkpoint in ``folder`` or None; never unpickles arbitrary objects."""
    path = folder / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"unreadable checkpoint {path}: {e}") from None


def init_from_base(unet, base: Path, class_names: list[str]) -> dict[str, Any]:
    """Copy the base model's weights into ``unet``; class embeddings by (case-insensitive) name.

    Returns what was mapped, for meta.json. A 1-channel base initialises a 3-channel model by
    spreading conv_in over the channels and repeating conv_out.
    """
    from safetensors.torch import load_file

    meta = base_meta(base)
    base_names = [str(c) for c in meta.get("class_names", BASE_CLASSES)]
    # An unconditional base never trained its class embeddings: every class starts from the
    # null class (the unconditional model) and the fine-tune learns what sets it apart.
    naive = bool(meta.get("config", {}).get("unconditional"))
    state = load_file(str(base / WEIGHTS_NAME))
    own = unet.state_dict()
    mapped, fresh = [], []
    for key, value in own.items():
        if key not in state:
            raise ModelError(f"base model {base} does not fit this network (missing {key})")
        src = state[key]
        if key == "class_embedding.weight":
            new = value.clone()
            lookup = {} if naive else {n.upper(): i for i, n in enumerate(base_names)}
            for i, name in enumerate(class_names):
                j = lookup.get(name.upper())
                if naive:
                    new[i] = src[-1]
                    fresh.append(name)
                elif j is None:
                    fresh.append(name)
                else:
                    new[i] = src[j]
                    mapped.append(name)
            new[-1] = src[-1]  # the null class
            own[key] = new
        elif src.shape == value.shape:
            own[key] = src
        elif key == "conv_in.weight" and src.shape[1] == 1:
            own[key] = src.repeat(1, value.shape[1], 1, 1) / value.shape[1]
        elif key.startswith("conv_out.") and src.shape[0] == 1:
            own[key] = src.repeat(value.shape[0], *([1] * (src.dim() - 1)))
        else:
            raise ModelError(
                f"base model {base} does not fit this network ({key}: {tuple(src.shape)} vs {tuple(value.shape)})"
            )
    unet.load_state_dict(own)
    return {"classes_from_base": mapped, "classes_fresh": fresh, "base_unconditional": naive}


def save_step(unet, ema_shadow: dict[str, Any], noise_sched, folder: Path, stats: dict) -> Path:
    """Save the EMA weights (as the final save does) to ``folder``, atomically: written beside it
    and renamed into place. A copy of the network: training goes on untouched."""
    snap = copy.deepcopy(unet).to("cpu")
    snap.load_state_dict({k: v.detach().cpu() for k, v in ema_shadow.items()})
    part = folder.with_name(folder.name + ".part")
    if part.exists():
        shutil.rmtree(part)
    snap.save_pretrained(str(part), safe_serialization=True)
    noise_sched.save_pretrained(str(part))
    atomic_write_json(part / STEP_STATS_NAME, stats, indent=2, sort_keys=True)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(part, folder)
    return folder


class _EMA:
    """Exponential moving average of the parameters, with the usual warm-up of the decay."""

    def __init__(self, unet, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in unet.state_dict().items()}

    @torch.no_grad()
    def update(self, unet, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in unet.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)


def _train_images(data, resolution: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split only, as [-1, 1] floats on the device (thousands of small images)."""
    train_x = np.array(data.train_x)  # a writable copy of the (memory-mapped) cache
    train_y = np.array(data.train_y)
    if train_x.ndim != 4 or len(train_x) != len(train_y) or len(train_x) == 0:
        raise ConfigError(
            f"finetune: expected train images (N, C, H, W) and N labels, got {train_x.shape}"
        )
    x_all = torch.from_numpy(train_x).float().div_(127.5).sub_(1.0)
    if x_all.shape[-1] != resolution:
        x_all = F.interpolate(
            x_all, size=(resolution, resolution), mode="bilinear", antialias=True,
            align_corners=False,
        )  # fmt: skip
    return x_all.to(device), torch.from_numpy(train_y.astype(np.int64)).to(device)


def train(
    data,
    cfg: FinetuneConfig,
    resolved: dict[str, Any],
    out_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
    time_limit_s: float | None = None,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Train in ``out_dir`` (checkpointing there) and save the EMA weights with save_pretrained.

    Reads only ``data.train_x`` / ``data.train_y``. Returns the training stats for meta.json.
    After each step ``s`` of ``cfg.save_steps`` below ``cfg.max_steps`` the EMA weights are also
    saved to ``out_dir/at-<s>`` (:func:`save_step`); saving never changes the run's randomness, so
    the final weights are the same with or without save_steps. ``stop_at``: stop after that many
    steps (a run of ``cfg.max_steps`` steps, cut short: only its saved steps are wanted) without
    saving final weights.
    """
    from diffusers import DDPMScheduler

    device = resolve_device(cfg.device)
    class_names = [str(c) for c in data.class_names]
    null_class = len(class_names)
    unet = build_unet(resolved["unet"], cfg.seed)
    init_info: dict[str, Any] = {"from_scratch": bool(cfg.from_scratch)}
    if not cfg.from_scratch:
        init_info.update(init_from_base(unet, base_dir(cfg), class_names))
    unet.to(device).train()
    noise_sched = DDPMScheduler(**resolved["scheduler"])
    alphas = noise_sched.alphas_cumprod.to(device)
    n_timesteps = noise_sched.config.num_train_timesteps
    v_target = noise_sched.config.prediction_type == "v_prediction"
    x_all, y_all = _train_images(data, resolved["resolution"], device)

    scale = float(resolved.get("class_embedding_lr_scale", 1.0))
    if scale != 1.0:  # one more parameter group: the (fresh) class embeddings learn faster
        emb = [p for n, p in unet.named_parameters() if n.startswith("class_embedding.")]
        rest = [p for n, p in unet.named_parameters() if not n.startswith("class_embedding.")]
        groups = [{"params": rest, "lr_scale": 1.0}, {"params": emb, "lr_scale": scale}]
    else:  # one group, as before: the same weights as every earlier fine-tune
        groups = [{"params": list(unet.parameters()), "lr_scale": 1.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=1e-2)
    ema = _EMA(unet, cfg.ema_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    warmup = max(1, min(100, cfg.max_steps // 10))
    step, losses, seconds_before = 0, [], 0.0

    saves = sorted({int(s) for s in cfg.save_steps if 0 < int(s) < cfg.max_steps})
    ckpt = load_checkpoint(out_dir) if resume else None
    if ckpt is not None and any(
        s <= int(ckpt["step"]) and not (out_dir / step_dir_name(s)).is_dir() for s in saves
    ):
        ckpt = None  # a step to save is behind the checkpoint and its weights are gone: again
    if ckpt is not None:
        unet.load_state_dict(ckpt["model"])
        ema.shadow = {k: v.to(device) for k, v in ckpt["ema"].items()}
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["rng"])
        step = int(ckpt["step"])
        losses = [float(v) for v in ckpt["losses"].tolist()]
        seconds_before = float(ckpt["seconds"])
    resumed_from = step
    last = cfg.max_steps if stop_at is None else min(cfg.max_steps, int(stop_at))

    def checkpoint() -> None:
        save_checkpoint(
            out_dir,
            {
                "step": step,
                "model": unet.state_dict(),
                "ema": ema.shadow,
                "optimizer": opt.state_dict(),
                "rng": gen.get_state(),
                "losses": torch.tensor(losses, dtype=torch.float64),
                "seconds": seconds_before + (time.time() - t0),
            },
        )

    t0 = time.time()
    bar = tqdm(
        total=cfg.max_steps, initial=step, desc="finetune", disable=not progress, leave=False
    )
    batch = cfg.batch_size  # indices are drawn with replacement, so any batch size works
    stopped_early = False
    while step < last:
        idx = torch.randint(len(x_all), (batch,), generator=gen)
        flip = torch.rand(batch, generator=gen) < 0.5
        drop = torch.rand(batch, generator=gen) < cfg.null_class_prob
        noise = torch.randn((batch, *x_all.shape[1:]), generator=gen)
        t = torch.randint(0, n_timesteps, (batch,), generator=gen)
        x0 = x_all[idx.to(device)]
        if resolved.get("hflip"):
            x0 = torch.where(flip.to(device)[:, None, None, None], x0.flip(-1), x0)
        if resolved.get("unconditional"):  # no labels seen: every image is the null class
            drop = torch.ones_like(drop)
        labels = torch.where(drop, torch.full_like(idx, null_class), y_all.cpu()[idx]).to(device)
        noise, t = noise.to(device), t.to(device)
        a = alphas[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, t, class_labels=labels).sample
        if v_target:  # v = sqrt(abar) * noise - sqrt(1 - abar) * x0
            loss = F.mse_loss(pred, a.sqrt() * noise - (1 - a).sqrt() * x0)
        else:
            loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * group["lr_scale"] * min(1.0, (step + 1) / warmup)
        opt.step()
        ema.update(unet, step)
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step in saves:  # before the resumable checkpoint: a resume past s finds it saved
            save_step(unet, ema.shadow, noise_sched, out_dir / step_dir_name(step), {
                "steps": step, "of_steps": cfg.max_steps,
                "final_loss": round(float(np.mean(losses[-50:])), 5),
                "first_loss": round(float(np.mean(losses[:50])), 5),
                "seconds": round(seconds_before + (time.time() - t0), 2),
            })  # fmt: skip
        if step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
            checkpoint()
        if callback is not None:
            callback(step, losses[-1])
        if time_limit_s is not None and time.time() - t0 >= time_limit_s:
            stopped_early = step < cfg.max_steps
            break
    bar.close()
    seconds = seconds_before + (time.time() - t0)
    checkpoint()  # always: a later resume (time limit, or a larger max_steps) goes on from here
    stats = {
        "steps": step,
        "resumed_from_step": resumed_from,
        "stopped_by_time_limit": stopped_early,
        "final_loss": round(float(np.mean(losses[-50:])), 5) if losses else None,
        "first_loss": round(float(np.mean(losses[:50])), 5) if losses else None,
        "seconds": round(seconds, 2),
        "seconds_per_step": round((time.time() - t0) / max(1, step - resumed_from), 4),
        "batch_size": batch,
        "n_params": sum(p.numel() for p in unet.parameters()),
        "device": device,
        "threads": torch.get_num_threads(),
        **init_info,
    }
    if step < cfg.max_steps and not stopped_early:  # cut short by stop_at: no final weights
        return stats

    # Save the EMA weights the diffusers way (config.json + safetensors) and the noise schedule.
    unet.load_state_dict(ema.shadow)
    unet.to("cpu").save_pretrained(str(out_dir), safe_serialization=True)
    noise_sched.save_pretrained(str(out_dir))
    return stats
