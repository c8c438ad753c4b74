"""The ``stable-diffusion`` backend: the reference study's text-to-image fine-tune, done locally.

The study fine-tuned a distilled Stable Diffusion (nota-ai BK-SDM) on CNV scans with the prompt
"OCT scan showing CNV": the UNet is trained, the VAE and the CLIP text encoder stay frozen, DDPM
noise + MSE loss on the VAE latents, AdamW lr 1e-4, batch 8, 512 x 512.
This backend does the same on a diffusers pipeline folder that is already on disk. Nothing is ever
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

Training (mixed precision on a GPU, checkpoints, resume) is :mod:`.sd_train`; pipeline folders,
settings, prompts and image conversions :mod:`.sd_pipeline`. The result is a complete pipeline
saved with ``save_pretrained`` (safetensors), loadable with :meth:`SDModel.load` (this module).
A tiny random pipeline for tests is :func:`ratio_search.diffusion.testing.build_tiny_pipeline`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import FinetuneConfig
from ..errors import ConfigError, ModelError
from ..home import resolve_device
from .base import (
    META_NAME,
    Backend,
    GenerativeModel,
    Resolved,
    file_hash,
    image_seed,
    make_sampler,
    read_meta,
)
from .sd_pipeline import (
    NO_SAFETY_CHECKER,
    SD_CONFIG_FILE,
    SD_DEFAULTS,
    base_hash,
    check_pipeline_folder,
    class_prompt,
    first_line,
    images_to_pipeline_input,  # noqa: F401  (the backend's public API)
    pipeline_output_to_images,
    resolve_config,
    resolve_sd_settings,
)
from .sd_train import finetune_sd

__all__ = [
    "BACKEND",
    "SD_CONFIG_FILE",
    "SD_DEFAULTS",
    "SDModel",
    "check_pipeline_folder",
    "class_prompt",
    "finetune_sd",
    "images_to_pipeline_input",
    "pipeline_output_to_images",
    "resolve",
    "resolve_config",
    "resolve_sd_settings",
]


def resolve(data, cfg: FinetuneConfig, unet_config: dict[str, Any] | None = None) -> Resolved:
    """The SD fields that determine the weights (no tiny-only field), the base pipeline's hash and
    the dataset's image size (samples are brought back to it)."""
    base = base_hash(cfg)
    if unet_config is not None:
        raise ConfigError("unet_config is a tiny-backend option")
    return Resolved(resolve_config(cfg), base, int(data.train_x.shape[-1]))


def _train(data, cfg, resolved, out_dir, *, resume, progress, callback=None) -> dict[str, Any]:
    # The resolved config is resolve_config(cfg): finetune_sd resolves the same values itself.
    return finetune_sd(data, cfg, out_dir, resume=resume, progress=progress)


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
        path = Path(path)
        # Without meta.json: identify the model by the UNet weights, the only part fine-tuned.
        super().__init__(
            path,
            meta,
            model_hash=meta.get("model_hash") or _unet_hash(path),
            image_size=meta.get("image_size", sd_config["image_size"]),
            channels=meta.get("channels", sd_config["channels"]),
            class_names=meta.get("class_names", sd_config["class_names"]),
        )
        self.prompt_template = str(sd_config["prompt_template"])
        self.resolution = int(sd_config["resolution"])
        self._pipes: dict[str, Any] = {}  # device -> loaded pipeline

    @classmethod
    def load(cls, path: str | os.PathLike) -> SDModel:
        """Open a folder written by :func:`finetune_sd` (plus the ``meta.json`` of ``finetune``).

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
                    **NO_SAFETY_CHECKER,
                    **{_dtype_argument(): dtype},
                )
            except Exception as e:  # broken config / weights: one clear line, not a traceback
                raise ModelError(
                    f"model {self.path}: cannot load the pipeline ({first_line(e)})"
                ) from None
            pipe.set_progress_bar_config(disable=True)
            self._pipes[device] = pipe.to(device)
        return self._pipes[device]

    @torch.no_grad()
    def _sample(
        self, n, class_index, guidance, steps, scheduler, seed, batch_size, device, progress
    ) -> np.ndarray:
        """See :meth:`GenerativeModel.sample` (arguments already checked there).

        Classifier-free guidance is the pipeline's own batched cond/uncond pass. Image ``i``
        starts from latents drawn by a CPU generator seeded with ``image_seed(seed, i)``, so it
        depends only on ``(seed, i)``.
        """
        out = np.empty((n, self.channels, self.image_size, self.image_size), dtype=np.uint8)
        if n == 0:
            return out
        device = resolve_device(device)
        pipe = self._pipeline(device)
        pipe.scheduler = make_sampler(scheduler, pipe.scheduler.config)
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


BACKEND = Backend(
    name="stable-diffusion", resolve=resolve, train=_train, load=SDModel.load, grid_steps=10
)
