"""The ``tiny`` backend: a class-conditional ``diffusers.UNet2DModel`` small enough for a CPU.

Training (:mod:`.tiny_train`) is plain DDPM (v-prediction, MSE) with null-class dropout so that
classifier-free guidance works at sampling time; the saved weights are an exponential moving
average. By default training starts from the base model that ships in ``ratio_search/base_model/``
(trained by ``ratio-search finetune --from-scratch --export-base`` on phantom images from the
reserved "base" seed stream, :func:`export_base`); class embeddings are carried over by class
name, unknown names start fresh. The network and noise schedule are in :mod:`.tiny_unet`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .._io import atomic_write_with
from ..config import FinetuneConfig
from ..errors import ConfigError, ModelError
from ..home import resolve_device
from .base import (
    META_NAME,
    SAMPLES_NAME,
    Backend,
    GenerativeModel,
    ModelInfo,
    Resolved,
    file_hash,
    image_seed,
    make_sampler,
    model_hash,
    model_meta,
    read_meta,
    save_samples_grid,
    write_meta,
)
from .threads import torch_threads
from .tiny_train import CHECKPOINT_NAME, base_dir, base_is_unconditional, train
from .tiny_unet import (
    BASE_CLASSES,
    BASE_DIR,
    DDIM_ETA,
    SCHEDULER_CONFIG,
    TEST_UNET,
    WEIGHTS_NAME,
    tiny_unet_config,
)

__all__ = [
    "BACKEND",
    "BASE_DIR",
    "CHECKPOINT_NAME",
    "TEST_UNET",
    "WEIGHTS_NAME",
    "TinyModel",
    "base_dataset",
    "export_base",
    "resolve",
    "train",
]

# The FinetuneConfig fields that determine a tiny model's weights, as they enter its hash. A fixed
# list: a field added to FinetuneConfig later must not change the hash of every existing model.
# (base_model is identified by its weights' hash, prompt is stable-diffusion only, device and
# checkpoint_every never change the weights.)
# The class embeddings' learning rate over finetune.lr when the base is unconditional.
CLASS_EMBEDDING_LR_SCALE = 50.0

HASHED_FIELDS = (
    "backend", "from_scratch", "max_steps", "batch_size", "lr", "ema_decay", "null_class_prob",
    "seed",
)  # fmt: skip


def resolve(data, cfg: FinetuneConfig, unet_overrides: dict[str, Any] | None = None) -> Resolved:
    """The resolved config (what determines the weights), the base model's hash (None when
    training from scratch) and the generated image size. ModelError when the base is missing."""
    size = int(data.train_x.shape[-1])
    channels = int(data.train_x.shape[1])
    resolution = int(cfg.resolution or size)
    if resolution % 4:
        raise ConfigError(
            f"finetune.resolution: the tiny UNet needs a multiple of 4, got {resolution}"
        )
    config: dict[str, Any] = {name: getattr(cfg, name) for name in HASHED_FIELDS}
    config["resolution"] = resolution
    config["unet"] = tiny_unet_config(len(data.class_names), resolution, channels, unet_overrides)
    config["scheduler"] = dict(SCHEDULER_CONFIG)
    config["hflip"] = True  # B-scans of left and right eyes are mirror images of each other
    config["ddim_eta"] = DDIM_ETA  # sampling behaviour is part of the model (and its pools)
    if cfg.unconditional:  # only when set: the hash of every labelled model stays what it was
        config["unconditional"] = True
    if cfg.from_scratch:
        return Resolved(config, None, resolution)
    weights = base_dir(cfg) / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelError(
            f"tiny base model not found: {weights}; train it with "
            "`ratio-search finetune --from-scratch --export-base` or use --from-scratch"
        )
    if base_is_unconditional(base_dir(cfg)):
        # A task-naive base never trained its class embeddings: every class starts at the null
        # embedding and must move away from it within one short fine-tune (at the base lr, 400
        # steps left the classes indistinguishable: 0.485 of CNV samples called CNV).
        config["class_embedding_lr_scale"] = CLASS_EMBEDDING_LR_SCALE
    return Resolved(config, file_hash(weights), resolution)


class TinyModel(GenerativeModel):
    """A saved tiny-backend model, ready to sample."""

    def __init__(self, unet, scheduler_config: dict[str, Any], meta: dict[str, Any], path: Path):
        path = Path(path)
        super().__init__(
            path,
            meta,
            model_hash=meta.get("model_hash") or file_hash(path / WEIGHTS_NAME),
            image_size=meta.get("image_size") or unet.config.sample_size,
            channels=unet.config.in_channels,
            class_names=meta["class_names"],
        )
        self.unet = unet.eval()
        self.scheduler_config = scheduler_config
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
    ) -> np.ndarray:
        device = resolve_device(device)
        self.unet.to(device)
        shape = (self.channels, self.image_size, self.image_size)
        out = np.empty((n, *shape), dtype=np.uint8)
        bar = tqdm(total=n, desc="sample", disable=not progress, leave=False)
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            sched = make_sampler(scheduler, self.scheduler_config)
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
            # model space [-1, 1] -> uint8
            out[start:stop] = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
            bar.update(stop - start)
        bar.close()
        return out


BACKEND = Backend(
    name="tiny",
    resolve=resolve,
    train=train,
    load=TinyModel.load,
    grid_steps=25,
    scratch_files=(CHECKPOINT_NAME,),
    saves_steps=True,
)


# ------------------------------------------------------------------------------ the base model


def base_dataset(n_per_class: int, size: int = 32, seed: int = 0):
    """Phantom images from the reserved "base" seed stream: disjoint from every demo split.

    Rendered at the phantom's render size and reduced with the data loader's own resize rule, so
    that base images are preprocessed exactly like the images the demo fine-tunes on. A
    :class:`~ratio_search.data.Dataset` with empty val and test splits (training reads neither).
    """
    from PIL import Image

    from ..data import Dataset, phantom_render_size
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
    none_x, none_y = np.empty((0, 1, size, size), dtype=np.uint8), np.empty(0, dtype=np.int64)
    return Dataset(
        np.concatenate(xs), np.concatenate(ys), none_x, none_y, none_x, none_y,
        list(BASE_CLASSES), 0, key, info,
    )  # fmt: skip


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
    if cfg.save_steps:
        raise ConfigError("--export-base saves only the finished base model: drop --save-steps")
    data = base_dataset(n_per_class, size, cfg.seed)
    resolved = resolve(data, cfg)
    tmp = Path(home.models) / f".tmp-base-{model_hash(data.key, resolved.config, None)}"
    if tmp.exists() and not resume:
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    with torch_threads(cfg.threads):
        stats = train(
            data, cfg, resolved.config, tmp, resume=resume, progress=progress,
            time_limit_s=time_limit_s,
        )  # fmt: skip
    meta = model_meta(
        data, backend="tiny", model_hash=file_hash(tmp / WEIGHTS_NAME), resolved=resolved,
        stats=stats, command=command, complete=True,
    )  # fmt: skip
    write_meta(tmp, meta)
    save_samples_grid(TinyModel.load(tmp), tmp / SAMPLES_NAME, per_class=8, steps=25)
    out_dir = Path(out_dir)
    for name in ("config.json", WEIGHTS_NAME, "scheduler_config.json", SAMPLES_NAME, META_NAME):
        atomic_write_with(out_dir / name, lambda dst, src=tmp / name: shutil.copyfile(src, dst))
    # The checkpoint stays in tmp, so that `--resume` with a larger --max-steps can train on.
    return ModelInfo(out_dir, meta["model_hash"], meta)
