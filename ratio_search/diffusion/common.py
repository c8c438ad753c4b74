"""What every diffusion backend shares: the model folder, its content hash, meta.json, checkpoints,
the :class:`GenerativeModel` interface, :func:`finetune` (dispatch + caching) and :func:`load_model`.

A saved model is one flat folder ``home.models/<hash>/``::

    config.json                          # the network's diffusers config (save_pretrained)
    diffusion_pytorch_model.safetensors  # its (EMA) weights
    meta.json                            # data key, resolved config, classes, backend, stats, versions
    samples.png                          # a grid of a few samples per class

``meta.json`` is written last and the folder is renamed into place atomically, so a folder with a
``meta.json`` whose ``"complete"`` is true is always a whole model. Training happens in
``home.models/.tmp-<hash>/``, which also holds ``checkpoint.pt`` so that ``resume=True`` continues.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import FinetuneConfig, GenerateConfig
from ..errors import ConfigError, ModelError
from ..home import Home

META_NAME = "meta.json"
CHECKPOINT_NAME = "checkpoint.pt"
SAMPLES_NAME = "samples.png"
SCHEDULERS = ("ddim", "dpm-solver++")

# Finetune config fields that never change the weights (where they go, how often we checkpoint).
_NOT_HASHED = ("device", "checkpoint_every")


@dataclass
class ModelInfo:
    """A fine-tuned model on disk: its folder, content hash and meta.json contents."""

    path: Path
    hash: str
    meta: dict[str, Any]
    cached: bool = False  # True when an existing model was returned without training


class GenerativeModel(ABC):
    """A loaded generator. Backends set these attributes in ``__init__`` and implement ``_sample``."""

    path: Path
    model_hash: str
    image_size: int
    channels: int
    class_names: list[str]
    meta: dict[str, Any]

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
    ) -> np.ndarray: ...


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
    if not np.isfinite(guidance) or guidance < 0:
        raise ConfigError(f"generate.guidance: must be >= 0, got {guidance!r}")
    if int(steps) < 1:
        raise ConfigError(f"generate.steps: must be >= 1, got {steps!r}")
    if scheduler not in SCHEDULERS:
        raise ConfigError(
            f"generate.scheduler: {scheduler!r} is not one of: {', '.join(SCHEDULERS)}"
        )
    if int(batch_size) < 1:
        raise ConfigError(f"generate.batch_size: must be >= 1, got {batch_size!r}")


def image_seed(seed: int, i: int) -> int:
    """The seed of image ``i``'s initial noise: a function of (seed, i) only."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(i)]).generate_state(1)[0])


def per_image_noise(seed: int, start: int, stop: int, shape: tuple[int, ...]):
    """Initial noise for images ``start..stop-1``, each drawn from its own generator (torch, CPU)."""
    import torch

    out = torch.empty((stop - start, *shape))
    for j, i in enumerate(range(start, stop)):
        g = torch.Generator().manual_seed(image_seed(seed, i))
        out[j] = torch.randn(shape, generator=g)
    return out


def to_uint8(x) -> np.ndarray:
    """Model space [-1, 1] float tensor -> uint8 numpy (same shape)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(dtype=__import__("torch").uint8).cpu().numpy()


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


def hashed_config(cfg: FinetuneConfig) -> dict[str, Any]:
    """The finetune config fields that determine the weights (device etc. left out)."""
    d = dataclasses.asdict(cfg)
    for k in _NOT_HASHED:
        d.pop(k, None)
    return d


def model_hash(data_key: str, resolved: dict[str, Any], base_hash: str | None) -> str:
    """Content hash of a fine-tuned model: (data key, resolved config, base model hash)."""
    return _sha({"data": data_key, "config": resolved, "base": base_hash})[:16]


def package_versions() -> dict[str, str]:
    """Versions that matter for reproducing a model."""
    out = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "numpy", "transformers", "safetensors"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # not installed: record that, never fail
            out[name] = "n/a"
    try:
        from .. import __version__

        out["ratio_search"] = __version__
    except Exception:
        pass
    return out


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
    return meta


def is_complete(path: Path) -> bool:
    """True for a folder holding a finished model (meta.json with complete = true)."""
    try:
        return bool(read_meta(path).get("complete"))
    except ModelError:
        return False


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------- checkpoints


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    """Write a resumable checkpoint (tensors, numbers, strings only: loadable with weights_only)."""
    import torch

    path = folder / CHECKPOINT_NAME
    tmp = folder / (CHECKPOINT_NAME + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact
    return path


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The checkpoint in ``folder`` or None; never unpickles arbitrary objects."""
    import torch

    path = folder / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"unreadable checkpoint {path}: {e}") from None


# ------------------------------------------------------------------------------------ the grid


def save_grid(images: np.ndarray, rows: int, path: Path, labels: list[str] | None = None) -> Path:
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


# ------------------------------------------------------------------------------- finetune + load


def _class_names(data) -> list[str]:
    return [str(c) for c in data.class_names]


def finetune(
    data,
    cfg: FinetuneConfig,
    home: Home,
    resume: bool = False,
    progress: bool = True,
    *,
    callback: Callable[[int, float], None] | None = None,
    unet_config: dict[str, Any] | None = None,
) -> ModelInfo:
    """Fine-tune (or fetch from the cache) one generator for ``data`` under ``cfg``.

    The model folder is ``home.models/<hash>`` with hash = (data.key, resolved config, base model
    hash). An existing complete folder is returned without training. Only ``data.train_x`` /
    ``data.train_y`` are ever read: the generator never sees a val or test image.

    ``callback(step, loss)`` is called after every optimisation step (tests use it to interrupt);
    ``unet_config`` overrides the tiny backend's network (tests use a few-thousand-parameter UNet).
    """
    from filelock import FileLock

    if cfg.backend == "tiny":
        from . import tiny

        resolved, base_hash = tiny.resolve(data, cfg, unet_config)
    elif cfg.backend == "stable-diffusion":
        resolved = hashed_config(cfg)
        base_hash = _sd_base_hash(cfg)
        if unet_config is not None:
            raise ConfigError("unet_config is a tiny-backend option")
    else:
        raise ConfigError(
            f"finetune.backend: {cfg.backend!r} is not one of: tiny, stable-diffusion"
        )

    h = model_hash(str(data.key), resolved, base_hash)
    final = home.models / h
    if is_complete(final):
        return ModelInfo(final, h, read_meta(final), cached=True)

    home.models.mkdir(parents=True, exist_ok=True)
    # One process per model: a second finetune of the same model waits, then gets the cache hit.
    with FileLock(str(home.models / f".{h}.lock")):
        if is_complete(final):
            return ModelInfo(final, h, read_meta(final), cached=True)
        tmp = home.models / f".tmp-{h}"
        if tmp.exists() and not resume:
            shutil.rmtree(tmp)  # a stale attempt; resume=True would continue it instead
        tmp.mkdir(parents=True, exist_ok=True)

        t0 = time.time()
        if cfg.backend == "tiny":
            stats = tiny.train(
                data, cfg, resolved, tmp, resume=resume, progress=progress, callback=callback
            )
        else:
            from . import sd

            stats = sd.finetune_sd(data, cfg, tmp, resume=resume, progress=progress)
        stats = dict(stats or {})
        stats.setdefault("seconds", round(time.time() - t0, 2))

        names = _class_names(data)
        meta = {
            "backend": cfg.backend,
            "model_hash": h,
            "data_key": str(data.key),
            "data_info": _jsonable(getattr(data, "info", {})),
            "config": resolved,
            "base_hash": base_hash,
            "image_size": int(data.train_x.shape[-1]),
            "channels": int(data.train_x.shape[1]),
            "class_names": names,
            "synthetic_label": int(getattr(data, "synthetic_label", 0)),
            "synthetic_class": names[int(getattr(data, "synthetic_label", 0))],
            "n_train": int(len(data.train_y)),
            "training": stats,
            "versions": package_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "complete": False,
        }
        write_json_atomic(tmp / META_NAME, meta)
        if cfg.backend == "tiny":
            resolution = int(resolved.get("resolution") or meta["image_size"])
            meta["image_size"] = resolution
            write_json_atomic(tmp / META_NAME, meta)
        # the samples grid, drawn with the model as loaded back from disk (checks the save too)
        if not (tmp / SAMPLES_NAME).exists():
            model = _load_backend(tmp, meta)
            steps = 25 if cfg.backend == "tiny" else 10
            if unet_config is not None:
                steps = 2  # test-sized networks: the grid only has to exist
            per_class = 4
            imgs = [
                model.sample(per_class, k, guidance=GenerateConfig().guidance, steps=steps, seed=0)
                for k in range(len(names))
            ]
            save_grid(np.concatenate(imgs), len(names), tmp / SAMPLES_NAME)
        ckpt = tmp / CHECKPOINT_NAME
        if ckpt.exists():
            ckpt.unlink()  # the finished model needs only its (EMA) weights
        meta["complete"] = True
        write_json_atomic(tmp / META_NAME, meta)
        if final.exists():  # an incomplete leftover with the final name
            shutil.rmtree(final)
        os.replace(tmp, final)
    return ModelInfo(final, h, meta)


def _sd_base_hash(cfg: FinetuneConfig) -> str | None:
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


def _jsonable(obj: Any) -> Any:
    try:
        return json.loads(json.dumps(obj, default=str))
    except (TypeError, ValueError):
        return str(obj)


def _load_backend(path: Path, meta: dict[str, Any]) -> GenerativeModel:
    backend = meta.get("backend")
    if backend == "tiny":
        from .tiny import TinyModel

        return TinyModel.load(path)
    if backend == "stable-diffusion":
        from .sd import SDModel

        return SDModel.load(path)
    raise ModelError(f"{path}: unknown backend {backend!r} in {META_NAME}")


def list_models(home: Home, data_key: str | None = None) -> list[Path]:
    """Complete model folders in ``home.models``, oldest first (optionally for one data key)."""
    if not home.models.is_dir():
        return []
    found = []
    for p in home.models.iterdir():
        if p.name.startswith(".") or not p.is_dir() or not is_complete(p):
            continue
        meta = read_meta(p)
        if data_key is not None and meta.get("data_key") != data_key:
            continue
        found.append((meta.get("created", ""), (p / META_NAME).stat().st_mtime, p))
    return [p for *_, p in sorted(found)]


def load_model(
    path_or_latest: str | os.PathLike, home: Home | None = None, data_key: str | None = None
) -> GenerativeModel:
    """Load a saved model folder, or ``"latest"``: the newest complete model in ``home.models``.

    A missing path, or a folder that is not a saved model, raises ModelError naming it.
    """
    if str(path_or_latest) == "latest":
        if home is None:
            raise ModelError("load_model('latest') needs a home directory")
        models = list_models(home, data_key)
        if not models:
            which = f" for data {data_key}" if data_key else ""
            raise ModelError(
                f"no fine-tuned model{which} in {home.models}; run `ratio-search finetune` first"
            )
        path = models[-1]
    else:
        path = Path(path_or_latest).expanduser()
        if not path.exists() and home is not None and (home.models / str(path_or_latest)).exists():
            path = home.models / str(path_or_latest)  # a bare model hash
    meta = read_meta(path)
    if not meta.get("complete", True):
        raise ModelError(f"not a complete saved model (training did not finish): {path}")
    return _load_backend(Path(path), meta)
