"""The ``tiny`` backend: a class-conditional ``diffusers.UNet2DModel`` small enough for a CPU.

Training is plain DDPM (epsilon prediction, MSE) with null-class dropout so that classifier-free
guidance works at sampling time; the saved weights are an exponential moving average. By default
training starts from the base model that ships in ``ratio_search/base_model/`` (trained by
``ratio-search finetune --from-scratch --export-base`` on phantom images from the reserved "base"
seed stream); class embeddings are carried over by class name, unknown names start fresh.

All training randomness (batches, dropout, noise, timesteps) comes from one ``torch.Generator``
whose state is checkpointed, so a resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import FinetuneConfig, GenerateConfig
from ..errors import ConfigError, ModelError
from .common import (
    META_NAME,
    SAMPLES_NAME,
    GenerativeModel,
    ModelInfo,
    file_hash,
    hashed_config,
    image_seed,
    load_checkpoint,
    model_hash,
    package_versions,
    read_meta,
    save_checkpoint,
    save_grid,
    to_uint8,
    write_json_atomic,
)

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


def _base_dir(cfg: FinetuneConfig) -> Path:
    return Path(cfg.base_model).expanduser() if cfg.base_model else BASE_DIR


def resolve(
    data, cfg: FinetuneConfig, unet_overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], str | None]:
    """The resolved config (what determines the weights) and the base model's hash (None when
    training from scratch). Raises ModelError when the base model is missing."""
    size = int(data.train_x.shape[-1])
    channels = int(data.train_x.shape[1])
    resolution = int(cfg.resolution or size)
    if resolution % 4:
        raise ConfigError(
            f"finetune.resolution: the tiny UNet needs a multiple of 4, got {resolution}"
        )
    resolved = hashed_config(cfg)
    resolved.pop("prompt", None)  # stable-diffusion only
    resolved.pop("base_model", None)  # identified by its hash instead of its path
    resolved["resolution"] = resolution
    resolved["unet"] = tiny_unet_config(len(data.class_names), resolution, channels, unet_overrides)
    resolved["scheduler"] = dict(SCHEDULER_CONFIG)
    resolved["hflip"] = True  # B-scans of left and right eyes are mirror images of each other
    resolved["ddim_eta"] = DDIM_ETA  # sampling behaviour is part of the model (and its pools)
    if cfg.from_scratch:
        return resolved, None
    base = _base_dir(cfg)
    weights = base / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelError(
            f"tiny base model not found: {weights}; train it with "
            "`ratio-search finetune --from-scratch --export-base` or use --from-scratch"
        )
    return resolved, file_hash(weights)


# ---------------------------------------------------------------------------------- the network


def _build_unet(unet_cfg: dict[str, Any], seed: int):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)  # the initialisation is part of "same config -> same result"
    return UNet2DModel(**unet_cfg)


def _init_from_base(unet, base: Path, class_names: list[str]) -> dict[str, Any]:
    """Copy the base model's weights into ``unet``; class embeddings by (case-insensitive) name.

    Returns what was mapped, for meta.json. A 1-channel base initialises a 3-channel model by
    spreading conv_in over the channels and repeating conv_out.
    """
    from safetensors.torch import load_file

    base_meta = read_meta(base) if (base / META_NAME).is_file() else {}
    base_names = [str(c) for c in base_meta.get("class_names", BASE_CLASSES)]
    state = load_file(str(base / WEIGHTS_NAME))
    own = unet.state_dict()
    mapped, fresh = [], []
    for key, value in own.items():
        if key not in state:
            raise ModelError(f"base model {base} does not fit this network (missing {key})")
        src = state[key]
        if key == "class_embedding.weight":
            new = value.clone()
            lookup = {n.upper(): i for i, n in enumerate(base_names)}
            for i, name in enumerate(class_names):
                j = lookup.get(name.upper())
                if j is None:
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
    return {"classes_from_base": mapped, "classes_fresh": fresh}


def _scheduler(kind: str, config: dict[str, Any]):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if kind == "ddpm":
        return DDPMScheduler(**config)
    if kind == "ddim":
        return DDIMScheduler(**config)
    if kind == "dpm-solver++":
        cfg = {k: v for k, v in config.items() if k != "clip_sample"}
        return DPMSolverMultistepScheduler(**cfg, algorithm_type="dpmsolver++", solver_order=2)
    raise ConfigError(f"generate.scheduler: {kind!r} is not one of: ddim, dpm-solver++")


# ------------------------------------------------------------------------------------- training


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
) -> dict[str, Any]:
    """Train in ``out_dir`` (checkpointing there) and save the EMA weights with save_pretrained.

    Reads only ``data.train_x`` / ``data.train_y``. Returns the training stats for meta.json.
    """
    from tqdm.auto import tqdm

    from ..home import resolve_device

    device = resolve_device(cfg.device)
    class_names = [str(c) for c in data.class_names]
    n_classes = len(class_names)
    null_class = n_classes
    unet = _build_unet(resolved["unet"], cfg.seed)
    init_info: dict[str, Any] = {"from_scratch": bool(cfg.from_scratch)}
    if not cfg.from_scratch:
        init_info.update(_init_from_base(unet, _base_dir(cfg), class_names))
    unet.to(device).train()
    noise_sched = _scheduler("ddpm", resolved["scheduler"])
    alphas = noise_sched.alphas_cumprod.to(device)
    n_timesteps = noise_sched.config.num_train_timesteps
    v_target = noise_sched.config.prediction_type == "v_prediction"

    # The training split only, as [-1, 1] floats on the device (small: thousands of small images).
    train_x = np.array(data.train_x)  # a writable copy of the (memory-mapped) cache
    train_y = np.array(data.train_y)
    if train_x.ndim != 4 or len(train_x) != len(train_y) or len(train_x) == 0:
        raise ConfigError(
            f"finetune: expected train images (N, C, H, W) and N labels, got {train_x.shape}"
        )
    x_all = torch.from_numpy(train_x).float().div_(127.5).sub_(1.0)
    res = resolved["resolution"]
    if x_all.shape[-1] != res:
        x_all = F.interpolate(
            x_all, size=(res, res), mode="bilinear", antialias=True, align_corners=False
        )
    x_all = x_all.to(device)
    y_all = torch.from_numpy(train_y.astype(np.int64)).to(device)

    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=1e-2)
    ema = _EMA(unet, cfg.ema_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    warmup = max(1, min(100, cfg.max_steps // 10))
    step, losses, seconds_before = 0, [], 0.0

    ckpt = load_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        unet.load_state_dict(ckpt["model"])
        ema.shadow = {k: v.to(device) for k, v in ckpt["ema"].items()}
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["rng"])
        step = int(ckpt["step"])
        losses = [float(v) for v in ckpt["losses"].tolist()]
        seconds_before = float(ckpt["seconds"])
    resumed_from = step

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
    while step < cfg.max_steps:
        idx = torch.randint(len(x_all), (batch,), generator=gen)
        flip = torch.rand(batch, generator=gen) < 0.5
        drop = torch.rand(batch, generator=gen) < cfg.null_class_prob
        noise = torch.randn((batch, *x_all.shape[1:]), generator=gen)
        t = torch.randint(0, n_timesteps, (batch,), generator=gen)
        x0 = x_all[idx.to(device)]
        if resolved.get("hflip"):
            x0 = torch.where(flip.to(device)[:, None, None, None], x0.flip(-1), x0)
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
            group["lr"] = cfg.lr * min(1.0, (step + 1) / warmup)
        opt.step()
        ema.update(unet, step)
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
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

    # Save the EMA weights the diffusers way (config.json + safetensors) and the noise schedule.
    unet.load_state_dict(ema.shadow)
    unet.to("cpu").save_pretrained(str(out_dir), safe_serialization=True)
    noise_sched.save_pretrained(str(out_dir))
    n_params = sum(p.numel() for p in unet.parameters())
    return {
        "steps": step,
        "resumed_from_step": resumed_from,
        "stopped_by_time_limit": stopped_early,
        "final_loss": round(float(np.mean(losses[-50:])), 5) if losses else None,
        "first_loss": round(float(np.mean(losses[:50])), 5) if losses else None,
        "seconds": round(seconds, 2),
        "seconds_per_step": round((time.time() - t0) / max(1, step - resumed_from), 4),
        "batch_size": batch,
        "n_params": n_params,
        "device": device,
        "threads": torch.get_num_threads(),
        **init_info,
    }


# -------------------------------------------------------------------------------------- sampling


class TinyModel(GenerativeModel):
    """A saved tiny-backend model, ready to sample."""

    def __init__(self, unet, scheduler_config: dict[str, Any], meta: dict[str, Any], path: Path):
        self.unet = unet.eval()
        self.scheduler_config = scheduler_config
        self.meta = meta
        self.path = Path(path)
        self.model_hash = str(meta.get("model_hash") or file_hash(self.path / WEIGHTS_NAME))
        self.image_size = int(meta.get("image_size") or unet.config.sample_size)
        self.channels = int(unet.config.in_channels)
        self.class_names = [str(c) for c in meta["class_names"]]
        self.ddim_eta = float(meta.get("config", {}).get("ddim_eta", DDIM_ETA))

    @classmethod
    def load(cls, path: str | os.PathLike) -> TinyModel:
        """Load ``config.json`` + safetensors weights + ``meta.json`` from a model folder."""
        from diffusers import UNet2DModel

        path = Path(path)
        meta = read_meta(path)
        if not (path / WEIGHTS_NAME).is_file():
            raise ModelError(f"not a saved model (no {WEIGHTS_NAME}): {path}")
        try:
            unet = UNet2DModel.from_pretrained(str(path), use_safetensors=True)
        except Exception as e:  # a broken config or weights file: one clear line
            raise ModelError(f"cannot load the tiny model in {path}: {e}") from None
        sched = dict(meta.get("config", {}).get("scheduler") or SCHEDULER_CONFIG)
        if unet.config.num_class_embeds != len(meta.get("class_names", [])) + 1:
            raise ModelError(f"{path}: {META_NAME} class_names do not match the network's classes")
        return cls(unet, sched, meta, path)

    @torch.no_grad()
    def _eps(self, x, t, class_index: int, guidance: float):
        """Noise prediction with classifier-free guidance: one forward pass over [cond; uncond]."""
        b = x.shape[0]
        null = len(self.class_names)
        if guidance == 1.0:  # the unconditional half would cancel out
            labels = torch.full((b,), class_index, dtype=torch.long, device=x.device)
            return self.unet(x, t, class_labels=labels).sample
        if guidance == 0.0:  # the conditional half would cancel out
            labels = torch.full((b,), null, dtype=torch.long, device=x.device)
            return self.unet(x, t, class_labels=labels).sample
        labels = torch.tensor([class_index] * b + [null] * b, device=x.device)
        eps = self.unet(torch.cat([x, x]), t, class_labels=labels).sample
        cond, uncond = eps[:b], eps[b:]
        return uncond + guidance * (cond - uncond)

    @torch.no_grad()
    def _sample(
        self, n, class_index, guidance, steps, scheduler, seed, batch_size, device, progress
    ):
        from tqdm.auto import tqdm

        from ..home import resolve_device

        device = resolve_device(device)
        self.unet.to(device)
        shape = (self.channels, self.image_size, self.image_size)
        out = np.empty((n, *shape), dtype=np.uint8)
        bar = tqdm(total=n, desc="sample", disable=not progress, leave=False)
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            sched = _scheduler(scheduler, self.scheduler_config)  # fresh: multistep state
            sched.set_timesteps(steps)
            # one generator per image, seeded by (seed, i): its initial noise, then its step noise
            gens = [torch.Generator().manual_seed(image_seed(seed, i)) for i in range(start, stop)]
            x = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)
            x = x * sched.init_noise_sigma
            stochastic = scheduler == "ddim" and self.ddim_eta > 0
            for t in sched.timesteps:
                eps = self._eps(sched.scale_model_input(x, t), t, class_index, guidance)
                if stochastic:
                    z = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)
                    x = sched.step(eps, t, x, eta=self.ddim_eta, variance_noise=z).prev_sample
                else:
                    x = sched.step(eps, t, x).prev_sample
            out[start:stop] = to_uint8(x)
            bar.update(stop - start)
        bar.close()
        return out


# ------------------------------------------------------------------------------ the base model


class _ArrayData:
    """The minimal Dataset the trainer reads (train split only)."""

    def __init__(self, train_x, train_y, class_names, key, info):
        self.train_x, self.train_y = train_x, train_y
        self.class_names, self.key, self.info = class_names, key, info
        self.synthetic_label = 0


def base_dataset(n_per_class: int, size: int = 32, seed: int = 0) -> _ArrayData:
    """Phantom images from the reserved "base" seed stream: disjoint from every demo split.

    Rendered at the phantom's render size and reduced with the data loader's own resize rule, so
    that base images are preprocessed exactly like the images the demo fine-tunes on.
    """
    from PIL import Image

    from ..data import phantom_render_size
    from ..data.imagefolder import pil_to_array
    from ..data.phantom import render_phantom

    render_size = phantom_render_size(size)
    xs, ys = [], []
    for k, cls in enumerate(BASE_CLASSES):
        raw = render_phantom(n_per_class, cls, seed=seed, split="base", size=render_size)
        xs.append(np.stack([pil_to_array(Image.fromarray(im), size, 1) for im in raw]))
        ys.append(np.full(len(raw), k, dtype=np.int64))
    key = f"phantom-base-n{n_per_class}-s{size}-seed{seed}"
    info = {"source": "phantom", "split": "base", "n_per_class": n_per_class, "size": size,
            "render_size": render_size, "seed": seed}  # fmt: skip
    return _ArrayData(np.concatenate(xs), np.concatenate(ys), list(BASE_CLASSES), key, info)


def export_base(
    cfg: FinetuneConfig,
    home,
    n_per_class: int = 4000,
    size: int = 32,
    out_dir: Path = BASE_DIR,
    resume: bool = False,
    progress: bool = True,
    time_limit_s: float | None = None,
    command: str | None = None,
) -> ModelInfo:
    """Train the tiny base model from scratch on the phantom "base" set and write it to ``out_dir``.

    Training (and its checkpoints) lives in ``home.models/.tmp-base-<hash>``; stop it with a time
    limit and ``resume=True`` goes on from the last checkpoint. The finished EMA weights, config,
    meta.json and samples.png replace the files in ``out_dir`` (TRAINING.md is left alone).
    """
    if not cfg.from_scratch:
        raise ConfigError("--export-base trains the base model itself: add --from-scratch")
    if cfg.backend != "tiny":
        raise ConfigError("--export-base is for the tiny backend")
    data = base_dataset(n_per_class, size, cfg.seed)
    resolved, _ = resolve(data, cfg)
    h = model_hash(data.key, resolved, None)
    tmp = Path(home.models) / f".tmp-base-{h}"
    if tmp.exists() and not resume:
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    stats = train(
        data, cfg, resolved, tmp, resume=resume, progress=progress, time_limit_s=time_limit_s
    )
    meta = {
        "backend": "tiny",
        "model_hash": file_hash(tmp / WEIGHTS_NAME),
        "data_key": data.key,
        "data_info": data.info,
        "config": resolved,
        "base_hash": None,
        "image_size": resolved["resolution"],
        "channels": int(data.train_x.shape[1]),
        "class_names": list(BASE_CLASSES),
        "synthetic_label": 0,
        "synthetic_class": BASE_CLASSES[0],
        "n_train": int(len(data.train_y)),
        "training": stats,
        "command": command,
        "versions": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "complete": True,
    }
    write_json_atomic(tmp / META_NAME, meta)
    model = TinyModel.load(tmp)
    g = GenerateConfig().guidance
    grid = [model.sample(8, k, guidance=g, steps=25, seed=0) for k in range(len(BASE_CLASSES))]
    save_grid(np.concatenate(grid), len(BASE_CLASSES), tmp / SAMPLES_NAME)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", WEIGHTS_NAME, "scheduler_config.json", SAMPLES_NAME, META_NAME):
        shutil.copyfile(tmp / name, out_dir / (name + ".tmp"))
        os.replace(out_dir / (name + ".tmp"), out_dir / name)
    # The checkpoint stays in tmp, so that `--resume` with a larger --max-steps can train on.
    return ModelInfo(out_dir, meta["model_hash"], meta)
