"""What every diffusion backend shares: the generator interface, the model folder and its hash.

A saved model is one flat folder ``home.models/<hash>/``::

    config.json                          # the network's diffusers config (save_pretrained)
    diffusion_pytorch_model.safetensors  # its (EMA) weights (SD: a pipeline's subfolders)
    meta.json                            # data key, resolved config, classes, backend, stats
    samples.png                          # a grid of a few samples per class

``meta.json`` is written last and the folder is renamed into place, so a folder with a
``meta.json`` whose ``"complete"`` is true is always a whole model.

A generator checkpoint (``finetune.save_steps``: the weights after ``s`` of a run's steps) is a
model folder of the same layout with its own hash (:func:`model_hash` with ``at_step``); its
meta.json adds ``"checkpoint_of"`` (the run's final hash) and ``"at_step"``, and the final
model's meta.json lists them as ``"checkpoints": {"<s>": "<hash>"}``. While training, a backend
writes each one to ``<training folder>/``:func:`step_dir_name` (weights, configs, and
:data:`STEP_STATS_NAME`), and the registry publishes it.

This module imports no backend: a backend module imports it and describes itself with a
:class:`Backend` (its hooks), which the registry in ``ratio_search.diffusion`` looks up by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_json, is_number, package_versions, utc_now
from ..config import FinetuneConfig, GenerateConfig
from ..errors import ConfigError, ModelError

META_NAME = "meta.json"
SAMPLES_NAME = "samples.png"
# The training stats of a saved step, beside its weights until the step is published.
STEP_STATS_NAME = "step_stats.json"
# The samplers a model can be asked for: the allowed values of ``generate.scheduler``.
SCHEDULERS: tuple[str, ...] = next(
    tuple(f.metadata["choices"])
    for f in dataclasses.fields(GenerateConfig)
    if f.name == "scheduler"
)


@dataclass
class ModelInfo:
    """A fine-tuned model on disk: its folder, content hash and meta.json contents."""

    path: Path
    hash: str
    meta: dict[str, Any]
    cached: bool = False  # True when an existing model was returned without training


class GenerativeModel(ABC):
    """A loaded generator of class-conditional images: what pools and trials sample from.

    Subclasses implement :meth:`_sample`; :meth:`sample` checks the arguments once for all of
    them. The attributes come from the model's ``meta.json`` unless a backend passes its own
    (a folder without one identifies the model by its weights).
    """

    path: Path
    meta: dict[str, Any]
    model_hash: str
    image_size: int
    channels: int
    class_names: list[str]

    def __init__(
        self,
        path: str | os.PathLike,
        meta: dict[str, Any],
        *,
        model_hash: str | None = None,
        image_size: int | None = None,
        channels: int | None = None,
        class_names: list[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.meta = meta
        self.model_hash = str(model_hash if model_hash is not None else meta["model_hash"])
        self.image_size = int(image_size if image_size is not None else meta["image_size"])
        self.channels = int(channels if channels is not None else meta["channels"])
        names = class_names if class_names is not None else meta.get("class_names") or []
        self.class_names = [str(c) for c in names]

    def sample(
        self,
        n: int,
        class_index: int,
        guidance: float,
        steps: int,
        scheduler: str = "ddim",
        seed: int = 0,
        batch_size: int = 64,
        device: str = "cpu",
        progress: bool = False,
    ) -> np.ndarray:
        """Generate ``n`` images of class ``class_index`` as uint8 ``(n, C, H, W)``.

        Image ``i`` depends only on ``(seed, i)`` (and the model and sampling settings): a larger
        pool starts with the same images as a smaller one, and ``batch_size`` only changes speed.
        A bad argument raises :class:`ConfigError` naming it.
        """
        check_sample_args(n, class_index, guidance, steps, scheduler, batch_size, self.class_names)
        return self._sample(
            int(n), int(class_index), float(guidance), int(steps), scheduler, int(seed),
            int(batch_size), device, progress,
        )  # fmt: skip

    @abstractmethod
    def _sample(
        self,
        n: int,
        class_index: int,
        guidance: float,
        steps: int,
        scheduler: str,
        seed: int,
        batch_size: int,
        device: str,
        progress: bool,
    ) -> np.ndarray:
        """:meth:`sample` with its arguments checked and converted."""


def check_sample_args(
    n: int,
    class_index: int,
    guidance: float,
    steps: int,
    scheduler: str,
    batch_size: int,
    class_names: list[str],
) -> None:
    """Raise ConfigError naming the first bad sampling argument."""
    if int(n) < 0:
        raise ConfigError(f"generate.n: must be >= 0, got {n!r}")
    if not 0 <= int(class_index) < len(class_names):
        raise ConfigError(
            f"class index {class_index!r} is outside [0, {len(class_names) - 1}] ({', '.join(class_names)})"
        )
    if not is_number(guidance) or guidance < 0:
        raise ConfigError(f"generate.guidance: must be >= 0, got {guidance!r}")
    if int(steps) < 1:
        raise ConfigError(f"generate.steps: must be >= 1, got {steps!r}")
    check_scheduler(scheduler)
    if int(batch_size) < 1:
        raise ConfigError(f"generate.batch_size: must be >= 1, got {batch_size!r}")


def check_scheduler(scheduler: str) -> None:
    """Raise ConfigError unless ``scheduler`` is one of :data:`SCHEDULERS`."""
    if scheduler not in SCHEDULERS:
        raise ConfigError(
            f"generate.scheduler: {scheduler!r} is not one of: {', '.join(SCHEDULERS)}"
        )


def make_sampler(scheduler: str, config: dict[str, Any]):
    """A fresh diffusers sampler ``scheduler`` (one of :data:`SCHEDULERS`) on a noise schedule.

    Fresh for every batch: DPM-Solver keeps multistep state between steps.
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    check_scheduler(scheduler)
    if scheduler == "ddim":
        return DDIMScheduler.from_config(config)
    return DPMSolverMultistepScheduler.from_config(
        config, algorithm_type="dpmsolver++", solver_order=2
    )


def image_seed(seed: int, i: int) -> int:
    """The seed of image ``i``'s initial noise: a function of (seed, i) only."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(i)]).generate_state(1)[0])


# ------------------------------------------------------------------------------ hashing and meta


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (first 16 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def model_hash(
    data_key: str, resolved: dict[str, Any], base_hash: str | None, at_step: int | None = None
) -> str:
    """Content hash of a fine-tuned model: (data key, resolved config, base model hash).

    ``at_step``: the hash of the run's checkpoint after that many steps (a model of its own);
    None (the final weights) hashes exactly what it always did.
    """
    inputs: dict[str, Any] = {"data": data_key, "config": resolved, "base": base_hash}
    if at_step is not None:
        inputs["at_step"] = int(at_step)
    return _sha(inputs)[:16]


def step_dir_name(step: int) -> str:
    """The subfolder of a training folder that holds the weights saved after ``step`` steps."""
    return f"at-{int(step)}"


@dataclass(frozen=True)
class Resolved:
    """What a backend decided for one fine-tune, before training."""

    config: dict[str, Any]  # the fields that determine the weights: hashed, and meta.json's config
    base_hash: str | None  # the base model's hash (None: trained from scratch)
    image_size: int  # the size of the images the model generates


@dataclass(frozen=True)
class Backend:
    """A diffusion backend's hooks, as the registry in ``ratio_search.diffusion`` calls them."""

    name: str
    # (data, cfg, unet_config) -> Resolved; unet_config is a test-sized tiny network or None
    resolve: Callable[[Any, FinetuneConfig, dict[str, Any] | None], Resolved]
    # (data, cfg, resolved config, out_dir, *, resume, progress, callback) -> training stats
    train: Callable[..., dict[str, Any]]
    load: Callable[[Path], GenerativeModel]
    grid_steps: int  # sampling steps of the samples.png grid
    scratch_files: tuple[str, ...] = ()  # removed from the folder once the model is complete
    # True: train() takes ``stop_at`` and writes cfg.save_steps to step_dir_name(s) subfolders
    saves_steps: bool = False


def model_meta(
    data, *, backend: str, model_hash: str, resolved: Resolved, stats: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """The meta.json of a model trained on ``data`` (``extra``: e.g. ``complete``, ``command``)."""
    names = [str(c) for c in data.class_names]
    label = int(getattr(data, "synthetic_label", 0))
    try:  # what JSON can hold of the data's description (paths as strings)
        info = json.loads(json.dumps(getattr(data, "info", {}), default=str))
    except (TypeError, ValueError):
        info = str(getattr(data, "info", {}))
    return {
        "backend": backend,
        "model_hash": model_hash,
        "data_key": str(data.key),
        "data_info": info,
        "config": resolved.config,
        "base_hash": resolved.base_hash,
        "image_size": int(resolved.image_size),
        "channels": int(data.train_x.shape[1]),
        "class_names": names,
        "synthetic_label": label,
        "synthetic_class": names[label],
        "n_train": int(len(data.train_y)),
        "training": stats,
        "versions": package_versions(),
        "created": utc_now(),
        **extra,
    }


def write_meta(folder: Path, meta: dict[str, Any]) -> Path:
    """Write ``folder/meta.json`` atomically."""
    return atomic_write_json(Path(folder) / META_NAME, meta, indent=2, sort_keys=True)


#: Keys every complete model's meta.json holds (written by :func:`model_meta`).
META_REQUIRED = ("model_hash", "data_key", "image_size", "channels", "class_names")


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """meta.json of a saved model folder, or ModelError naming the path."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model not found: {p}")
    if not p.is_dir():
        raise ModelError(f"not a saved model (not a folder): {p}")
    mp = p / META_NAME
    if not mp.is_file():
        raise ModelError(f"not a saved model (no {META_NAME}): {p}")
    try:
        meta = json.loads(mp.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"not a saved model (unreadable {META_NAME}: {e}): {p}") from None
    if not isinstance(meta, dict) or "backend" not in meta:
        raise ModelError(f"not a saved model ({META_NAME} has no 'backend'): {p}")
    # a complete model's meta.json must hold what loading and sampling read
    lost = [k for k in META_REQUIRED if k not in meta] if meta.get("complete", True) else []
    if lost:
        raise ModelError(
            f"{mp}: no {', '.join(lost)}; delete {p} and fine-tune again (`ratio-search finetune`)"
        )
    return meta


def is_complete(path: Path) -> bool:
    """True for a folder holding a finished model (meta.json with complete = true)."""
    try:
        return bool(read_meta(path).get("complete"))
    except ModelError:
        return False


# ------------------------------------------------------------------------------------ the grid


def save_grid(images: np.ndarray, rows: int, path: Path) -> Path:
    """Save uint8 (N, C, H, W) images as a PNG grid with ``rows`` rows (one per class)."""
    from PIL import Image

    n, c, h, w = images.shape
    cols = max(1, -(-n // rows))
    pad = 2
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for k in range(n):
        r, col = divmod(k, cols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = images[k].transpose(1, 2, 0)
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    img.save(path)
    return path


def save_samples_grid(model: GenerativeModel, path: Path, per_class: int, steps: int) -> Path:
    """``per_class`` samples of every class (seed 0, default guidance), one row per class.

    An unconditional model (no labels seen) has no class to show: two rows of its unconditional
    samples (guidance 0) instead.
    """
    guidance = GenerateConfig().guidance
    if model.meta.get("config", {}).get("unconditional"):
        both = model.sample(2 * per_class, 0, guidance=0.0, steps=steps, seed=0)
        return save_grid(both, 2, path)
    rows = [
        model.sample(per_class, k, guidance=guidance, steps=steps, seed=0)
        for k in range(len(model.class_names))
    ]
    return save_grid(np.concatenate(rows), len(model.class_names), path)
