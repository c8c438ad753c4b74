"""Diffusion generators: fine-tune once (:func:`finetune`), load (:func:`load_model`), sample.

Backends, looked up by name in :data:`BACKENDS` (each module is imported on first use, so that
importing this package does not import torch):

- ``tiny``: a class-conditional ``UNet2DModel`` for CPUs, starting from the bundled base model
  (:mod:`.tiny`);
- ``stable-diffusion``: a local diffusers text-to-image pipeline (:mod:`.sd`).

Each backend module describes itself with a :class:`~.base.Backend` named ``BACKEND``; the code
here never branches on a backend's name. Training happens in ``home.models/.tmp-<hash>/`` (which
also holds the backend's checkpoint, so that ``resume=True`` continues); the finished folder is
renamed to ``home.models/<hash>/`` (see :mod:`.base` for its layout). ``finetune.save_steps``
also publishes the run's weights at those steps as models of their own (:mod:`.checkpoints`:
:func:`finetune_checkpoints`, :func:`checkpoints_of`); they never count as "latest".
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import FinetuneConfig
from ..errors import ConfigError, ModelError
from ..home import Home
from .base import (
    META_NAME,
    SAMPLES_NAME,
    SCHEDULERS,
    Backend,
    GenerativeModel,
    ModelInfo,
    check_sample_args,
    check_scheduler,
    is_complete,
    model_hash,
    model_meta,
    read_meta,
    save_samples_grid,
    write_meta,
)
from .checkpoints import (
    checkpoints_of,
    finetune_checkpoints,
    missing_steps,
    publish_steps,
    save_steps,
)
from .threads import torch_threads

__all__ = [
    "BACKENDS",
    "SCHEDULERS",
    "Backend",
    "GenerativeModel",
    "ModelInfo",
    "check_sample_args",
    "check_scheduler",
    "checkpoints_of",
    "finetune",
    "finetune_checkpoints",
    "get_backend",
    "list_models",
    "load_model",
    "read_meta",
]

logger = logging.getLogger(__name__)

# backend name (``finetune.backend``, meta.json's "backend") -> the module whose BACKEND it is
BACKENDS: dict[str, str] = {
    "tiny": f"{__name__}.tiny",
    "stable-diffusion": f"{__name__}.sd",
}


def get_backend(name: str) -> Backend:
    """The backend called ``name``; ConfigError listing the known ones otherwise."""
    if name not in BACKENDS:
        raise ConfigError(f"finetune.backend: {name!r} is not one of: {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name]).BACKEND


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

    ``cfg.save_steps``: the run's weights after each of those steps are published as models of
    their own (:mod:`.checkpoints`), listed in the final meta.json's ``"checkpoints"``.

    ``callback(step, loss)`` is called after every optimisation step of the tiny backend (tests
    use it to interrupt); ``unet_config`` overrides the tiny backend's network (tests use a
    few-thousand-parameter UNet).
    """
    from filelock import FileLock

    backend = get_backend(cfg.backend)
    saves = save_steps(cfg, backend)  # ConfigError before anything is trained
    resolved = backend.resolve(data, cfg, unet_config)
    h = model_hash(str(data.key), resolved.config, resolved.base_hash)
    final = home.models / h
    if is_complete(final) and not missing_steps(home, data.key, resolved, saves):
        logger.info("model %s: cached at %s", h, final)
        return ModelInfo(final, h, read_meta(final), cached=True)

    home.models.mkdir(parents=True, exist_ok=True)
    grid_steps = 2 if unet_config is not None else backend.grid_steps  # test-sized: 2
    # One process per model: a second finetune of the same model waits, then gets the cache hit.
    with FileLock(str(home.models / f".{h}.lock")):
        todo = missing_steps(home, data.key, resolved, saves)
        if is_complete(final) and not todo:
            return ModelInfo(final, h, read_meta(final), cached=True)
        # A fixed name (not a fresh temp folder): resume=True must find the checkpoint again.
        tmp = home.models / f".tmp-{h}"
        if tmp.exists() and not resume:
            shutil.rmtree(tmp)  # a stale attempt; resume=True would continue it instead
        tmp.mkdir(parents=True, exist_ok=True)
        # Only the steps not yet published are saved (a resume finds the others published).
        run_cfg = dataclasses.replace(cfg, save_steps=todo)
        if is_complete(final):
            # The final model is cached, some of its checkpoints are not: the same run again
            # (deterministic: same seed, same data, same randomness; bit-identical on a CPU), as
            # far as the last missing step. The cached final model is kept as it is.
            logger.info("model %s: cached; training again to save step(s) %s", h, todo)
            with torch_threads(getattr(cfg, "threads", 0)):
                backend.train(
                    data, run_cfg, resolved.config, tmp, resume=resume, progress=progress,
                    callback=callback, stop_at=max(todo),
                )  # fmt: skip
                done = publish_steps(home, tmp, data, backend, resolved, h, saves, grid_steps)
            meta = read_meta(final)
            meta["checkpoints"] = {**(meta.get("checkpoints") or {}), **done}
            write_meta(final, meta)
            shutil.rmtree(tmp, ignore_errors=True)
            return ModelInfo(final, h, meta)

        logger.info("model %s: fine-tuning (%s backend) in %s", h, backend.name, tmp)
        t0 = time.time()
        with torch_threads(getattr(cfg, "threads", 0)):
            stats = backend.train(
                data, run_cfg, resolved.config, tmp, resume=resume, progress=progress,
                callback=callback,
            )  # fmt: skip
            stats = dict(stats or {})
            stats.setdefault("seconds", round(time.time() - t0, 2))
            # the checkpoints first: complete models of their own, whatever happens next
            done = publish_steps(home, tmp, data, backend, resolved, h, saves, grid_steps)
            meta = model_meta(
                data, backend=backend.name, model_hash=h, resolved=resolved, stats=stats,
                complete=False, checkpoints=done,
            )  # fmt: skip
            write_meta(tmp, meta)
            # the samples grid, drawn with the model as loaded back from disk (checks the save)
            if not (tmp / SAMPLES_NAME).exists():
                model = backend.load(tmp)
                save_samples_grid(model, tmp / SAMPLES_NAME, per_class=4, steps=grid_steps)
        for name in backend.scratch_files:  # the finished model needs only its weights
            (tmp / name).unlink(missing_ok=True)
        for left in tmp.glob("at-*"):  # a step's half-written save, from an interrupted run
            shutil.rmtree(left, ignore_errors=True)
        meta["complete"] = True
        write_meta(tmp, meta)
        if final.exists():  # an incomplete leftover with the final name
            shutil.rmtree(final)
        os.replace(tmp, final)
    logger.info("model %s: saved at %s", h, final)
    return ModelInfo(final, h, meta)


def _load(path: Path, meta: dict[str, Any]) -> GenerativeModel:
    name = meta.get("backend")
    if name not in BACKENDS:
        raise ModelError(f"{path}: unknown backend {name!r} in {META_NAME}")
    return get_backend(name).load(path)


def list_models(home: Home, data_key: str | None = None) -> list[Path]:
    """Complete model folders in ``home.models``, oldest first (optionally for one data key).

    A fine-tune's checkpoints (``finetune.save_steps``) are not listed: "latest" is always a
    run's final model (:func:`checkpoints_of` finds its checkpoints).
    """
    if not home.models.is_dir():
        return []
    found = []
    for p in home.models.iterdir():
        if p.name.startswith(".") or not p.is_dir() or not is_complete(p):
            continue
        meta = read_meta(p)
        if meta.get("checkpoint_of") is not None:
            continue
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
    return _load(Path(path), meta)
