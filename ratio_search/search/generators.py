"""The generators of a search: the fine-tuned model, and its checkpoints when the space searches
``finetune_steps`` (each checkpoint a model of its own, :mod:`ratio_search.diffusion.checkpoints`).

:func:`models_for` finds (or fine-tunes) them once in the driver; run.json records them
(``models``: ``{finetune_steps: [path, meta]}``) and :func:`run_models` reads them back.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from ..config import FinetuneConfig
from ..errors import ModelError
from ..home import Home
from .procs import kill_point
from .progress import say
from .runinfo import RunInfo
from .space import Space

logger = logging.getLogger(__name__)


def model_steps(space: Space) -> list[int]:
    """The generator checkpoints the space's trials can ask for (``finetune_steps``), sorted."""
    return sorted({int(s) for s in space.choices("finetune_steps")})


def _log_finetune(cfg: FinetuneConfig, info: Any, seconds: float, data_key: str, uri: str) -> None:
    """The fine-tune the search started, as an MLflow job run (never blocks the search)."""
    try:
        from ..tracking import log_job

        log_job(
            "finetune",
            params=dataclasses.asdict(cfg),
            metrics={"seconds": seconds},
            tracking_uri=uri,
            tags={"model_hash": info.hash, "data_key": data_key},
        )
    except Exception as e:  # tracking never blocks the search
        logger.warning("could not log the fine-tune to MLflow: %s", e)


def model_for(
    model: str | None,
    data: Any,
    home: Home,
    finetune_cfg: FinetuneConfig | None,
    progress: bool,
    tracking_uri: str | None,
    allow_other_data: bool = False,
) -> tuple[str, dict[str, Any]]:
    """Path and meta.json of the generator: ``model`` (a folder), or the newest model fine-tuned
    on this data ("latest"/None), fine-tuning one now if there is none."""
    from ..diffusion import finetune, list_models, load_model, read_meta

    if model not in (None, "latest"):
        path = str(load_model(model, home).path)
    else:
        found = list_models(home, data.key)
        if found:
            path = str(found[-1])
        else:
            say(
                f"no fine-tuned model for data {data.key} yet: fine-tuning one (the upfront job)",
                progress,
            )
            cfg = finetune_cfg or FinetuneConfig()
            t0 = time.time()
            # resume=True: after a kill, the fine-tune goes on from its checkpoint.
            info = finetune(
                data, cfg, home, resume=True, progress=progress,
                callback=lambda step, loss: step >= 2 and kill_point("finetune"),
            )  # fmt: skip
            path = str(info.path)
            if tracking_uri:
                _log_finetune(cfg, info, time.time() - t0, data.key, tracking_uri)
    meta = read_meta(Path(path))
    # --- evidence hygiene: an explicit model must be fine-tuned on this data.
    if model not in (None, "latest"):
        from ..provenance import check_model_data

        note = check_model_data(meta, data.key, path, allow_other_data)
        if note:
            meta = {**meta, "allow_other_data": note}
    # --- end
    _check_size(path, meta, data)
    return path, meta


def models_for(
    model: str | None,
    data: Any,
    home: Home,
    finetune_cfg: FinetuneConfig | None,
    steps: list[int],
    progress: bool,
    tracking_uri: str | None,
    allow_other_data: bool = False,
) -> dict[int, tuple[str, dict[str, Any]]]:
    """``{finetune_steps: (path, meta)}`` of every generator checkpoint in ``steps``, plus 0 (the
    final model, :func:`model_for`'s).

    ``steps == [0]``: :func:`model_for` alone (unchanged). Else an explicit ``model``: its saved
    checkpoints (:func:`~ratio_search.diffusion.checkpoints_of`), a missing one a ModelError
    naming what it has; "latest": the newest model's checkpoints when it has them all, else one
    fine-tune saving them (:func:`~ratio_search.diffusion.finetune_checkpoints`, cached ones reused).
    """
    path: str | None = None
    meta: dict[str, Any] = {}
    if steps == [0] or model not in (None, "latest"):
        path, meta = model_for(
            model, data, home, finetune_cfg, progress, tracking_uri, allow_other_data
        )
        if steps == [0]:
            return {0: (path, meta)}
    from ..diffusion import checkpoints_of, finetune_checkpoints, list_models, read_meta

    found: dict[int, Any] = {}
    if path is not None:  # explicit: what it has
        found = checkpoints_of(path, home)
        lost = [s for s in steps if s not in found]
        if lost:
            have = ", ".join(str(s) for s in sorted(found))
            raise ModelError(
                f"model {path} has no checkpoint at finetune_steps {lost} (it has: {have}); "
                "fine-tune one with those save_steps, or search the steps it has"
            )
    else:
        latest = list_models(home, data.key)
        if latest:
            found = checkpoints_of(latest[-1], home)
        if any(s not in found for s in steps):
            cfg = finetune_cfg or FinetuneConfig()
            say(
                f"fine-tuning a generator for data {data.key} with checkpoints at "
                f"{', '.join(str(s) for s in steps if s)} steps (the upfront job)",
                progress,
            )
            t0 = time.time()
            infos = finetune_checkpoints(
                data, cfg, home, steps, resume=True, progress=progress,
                callback=lambda step, loss: step >= 2 and kill_point("finetune"),
            )  # fmt: skip
            if tracking_uri and not infos[0].cached:
                _log_finetune(cfg, infos[0], time.time() - t0, data.key, tracking_uri)
            found = {s: i.path for s, i in infos.items()}
    out: dict[int, tuple[str, dict[str, Any]]] = {}
    for s in sorted({0, *steps}):
        m = read_meta(Path(found[s]))
        _check_size(str(found[s]), m, data)
        out[s] = (str(found[s]), m)
    if path is not None:
        out[0] = (path, meta)  # with its provenance note
    return out


def _check_size(path: str, meta: dict[str, Any], data: Any) -> None:
    if int(meta["image_size"]) != data.image_size or int(meta["channels"]) != data.channels:
        raise ModelError(
            f"model {path} makes {meta['channels']}x{meta['image_size']}px images, the data is "
            f"{data.channels}x{data.image_size}px; fine-tune a model on this data"
        )


def run_models(info: RunInfo) -> dict[int, tuple[str, dict[str, Any]]]:
    """The run's generators, ``{finetune_steps: (path, meta)}`` (run.json; an older run.json
    without ``models``: its one model as step 0)."""
    if info.models:
        return {int(s): (str(pm[0]), dict(pm[1])) for s, pm in info.models.items()}
    if info.model_path:
        return {0: (info.model_path, info.model_meta or {})}
    return {}


__all__ = ["model_for", "model_steps", "models_for", "run_models"]
