"""Generator checkpoints: the weights after ``s`` of a fine-tune's steps, each a model of its own.

``finetune.save_steps`` makes one training run save its EMA weights at those steps as well
(``generate.finetune_steps`` picks one for a trial). Each is a complete model folder with the
layout of :mod:`.base` and its own hash: the run's hash inputs + ``{"at_step": s}``. save_steps
itself is not hashed, so the run's final model is the same model (same hash, same weights) with or
without them. This module checks the steps asked for, publishes the folders a backend wrote while
training, and finds them again (:func:`checkpoints_of`, :func:`finetune_checkpoints`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .._io import read_json
from ..config import FinetuneConfig
from ..errors import ConfigError, ModelError
from ..home import Home
from .base import (
    SAMPLES_NAME,
    STEP_STATS_NAME,
    Backend,
    ModelInfo,
    Resolved,
    is_complete,
    model_hash,
    model_meta,
    read_meta,
    save_samples_grid,
    step_dir_name,
    write_meta,
)


def save_steps(cfg: FinetuneConfig, backend: Backend) -> list[int]:
    """The steps of ``cfg.save_steps`` that become checkpoints: sorted, unique, below max_steps
    (the last step is the final model itself). ConfigError for a step past the run's end, or for
    a backend that cannot save steps."""
    steps = sorted({int(s) for s in cfg.save_steps})
    if not steps:
        return []
    if not backend.saves_steps:
        raise ConfigError(
            f"finetune.save_steps: the {backend.name} backend saves only its final weights "
            "(leave save_steps empty, or use the tiny backend)"
        )
    bad = [s for s in steps if s < 1 or s > cfg.max_steps]
    if bad:
        raise ConfigError(
            f"finetune.save_steps: {', '.join(map(str, bad))} not in [1, finetune.max_steps = "
            f"{cfg.max_steps}] (raise --max-steps to save later steps)"
        )
    return [s for s in steps if s < cfg.max_steps]


def step_hash(data_key: str, resolved: Resolved, step: int) -> str:
    """The hash of the checkpoint after ``step`` steps of the run that ``resolved`` describes."""
    return model_hash(str(data_key), resolved.config, resolved.base_hash, at_step=step)


def missing_steps(home: Home, data_key: str, resolved: Resolved, steps: Iterable[int]) -> list[int]:
    """The steps whose checkpoint model is not (completely) in ``home.models``."""
    return [s for s in steps if not is_complete(home.models / step_hash(data_key, resolved, s))]


def publish_steps(
    home: Home,
    train_dir: Path,
    data: Any,
    backend: Backend,
    resolved: Resolved,
    final_hash: str,
    steps: Iterable[int],
    grid_steps: int,
) -> dict[str, str]:
    """Turn each ``train_dir/at-<s>`` the backend wrote into the model ``home.models/<hash>``.

    As a final model is published: meta.json (complete = false), the samples grid from the model
    loaded back, meta.json complete, then one rename into place. Steps already published are
    kept. Returns ``{"<s>": hash}`` for every step (the final model's meta "checkpoints").
    """
    out: dict[str, str] = {}
    for s in sorted(steps):
        h = step_hash(data.key, resolved, s)
        dest = home.models / h
        out[str(s)] = h
        if is_complete(dest):
            continue
        src = Path(train_dir) / step_dir_name(s)
        if not src.is_dir():
            raise ModelError(f"fine-tune {final_hash}: the weights of step {s} were not saved")
        stats_file = src / STEP_STATS_NAME
        stats = read_json(stats_file) if stats_file.is_file() else {"steps": s}
        extra = {"checkpoint_of": final_hash, "at_step": int(s)}
        meta = model_meta(
            data, backend=backend.name, model_hash=h, resolved=resolved, stats=stats,
            complete=False, **extra,
        )  # fmt: skip
        write_meta(src, meta)
        save_samples_grid(backend.load(src), src / SAMPLES_NAME, per_class=4, steps=grid_steps)
        stats_file.unlink(missing_ok=True)
        meta["complete"] = True
        write_meta(src, meta)
        if dest.exists():  # an incomplete leftover with the final name
            shutil.rmtree(dest)
        os.replace(src, dest)
    return out


def _model_path(model_path: str | os.PathLike, home: Home | None) -> Path:
    path = Path(model_path).expanduser()
    if not path.exists() and home is not None and (home.models / str(model_path)).exists():
        path = home.models / str(model_path)  # a bare model hash
    return path


def checkpoints_of(model_path: str | os.PathLike, home: Home | None) -> dict[int, Path]:
    """``{0: the model, s: its checkpoint after s steps, ...}`` from a final model's meta.json.

    For an explicit ``--model`` (a folder or a bare hash). The final's own step count (its
    ``max_steps``) maps to the final too. Only complete checkpoints are listed (a deleted one is
    missing, not an error); a checkpoint model has none of its own: ``{0: it}``.
    """
    path = _model_path(model_path, home)
    meta = read_meta(path)
    out: dict[int, Path] = {0: path}
    if meta.get("checkpoint_of") is not None:
        return out
    last = (meta.get("config") or {}).get("max_steps")
    if isinstance(last, int) and last > 0:
        out[last] = path
    models = home.models if home is not None else path.parent
    for s, h in sorted((meta.get("checkpoints") or {}).items(), key=lambda kv: int(kv[0])):
        folder = models / str(h)
        if is_complete(folder):
            out[int(s)] = folder
    return out


def finetune_checkpoints(
    data: Any,
    cfg: FinetuneConfig,
    home: Home,
    steps: Iterable[int],
    *,
    resume: bool = True,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
    unet_config: dict[str, Any] | None = None,
) -> dict[int, ModelInfo]:
    """The models after each of ``steps`` of ONE fine-tune, trained if missing.

    The run trains ``max(cfg.max_steps, *steps)`` steps and saves every other asked step (and
    ``cfg.max_steps``, when the run goes past it). Returns ``{s: ModelInfo}`` for every ``s`` in
    ``steps`` and ``0``: the model after ``cfg.max_steps`` steps (of that run: the learning-rate
    warm-up depends on the run's length, so it is the plain ``finetune(data, cfg)`` model only
    when no asked step is beyond cfg.max_steps). Cached models are reused: no training when all
    exist. ``unet_config``: a test-sized tiny network (as :func:`~ratio_search.diffusion.finetune`).
    """
    from . import finetune  # the registry's entry point (this module is imported by it)

    asked = sorted({int(s) for s in steps})
    if any(s < 0 for s in asked):
        raise ConfigError(f"generate.finetune_steps: must be >= 0, got {asked}")
    wanted = {s for s in asked if s > 0} | {int(cfg.max_steps)}
    top = max(wanted)
    saves = sorted((wanted | {int(s) for s in cfg.save_steps}) - {top})
    run = dataclasses.replace(cfg, max_steps=top, save_steps=saves)
    info = finetune(
        data, run, home, resume=resume, progress=progress, callback=callback,
        unet_config=unet_config,
    )  # fmt: skip
    found = {top: info}
    for s, h in (info.meta.get("checkpoints") or {}).items():
        if int(s) in wanted:
            path = home.models / str(h)
            found[int(s)] = ModelInfo(path, str(h), read_meta(path), cached=info.cached)
    lost = sorted(wanted - set(found))
    if lost:  # finetune publishes every saved step: a lost one is a bug, not a user error
        raise ModelError(f"model {info.hash}: no checkpoint for step(s) {lost}")
    out = {s: found[s] for s in asked if s > 0}
    out[0] = found[int(cfg.max_steps)]
    return out
