"""What a search prepares before its first trial: the data, the generator and every pool.

The data and the generator are loaded (or fine-tuned) once in the driver; the pools of the
space's grid are built before the trials (one Ray task per GPU, else serially here), so that no
two trials ever generate the same pool and a trial's images never depend on which ran first.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from ..config import DataConfig, FinetuneConfig
from ..errors import ModelError
from ..home import Home
from ..train.mixing import synthetic_needed
from .progress import say
from .space import Space

logger = logging.getLogger(__name__)


def pool_size(space: Space, data: Any) -> int:
    """Images per pool: enough for the largest R the space asks for (``fixed.pool_size`` if larger).

    Every trial uses the same n, so a trial's images never depend on which pool was cached first.
    """
    syn = int(data.synthetic_label)
    n_class = int((data.train_y == syn).sum())
    rs = (
        space.params["r"].values()
        if "r" in space.params and space.params["r"].discrete
        else [space.max_r()]
    )
    need = 0
    for mode in space.choices("mode"):
        for r in rs:
            if r > 0 and not (mode == "augment" and r >= 1):
                need = max(need, synthetic_needed(n_class, float(r), mode))
    return max(int(space.fixed.get("pool_size", 0)), need, 1)


def load_data(data_cfg: DataConfig, home: Home):
    """The search's dataset (read through the home's data cache)."""
    from ..data import load_dataset

    return load_dataset(data_cfg, home)


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
            info = finetune(data, cfg, home, progress=progress)
            path = str(info.path)
            if tracking_uri:
                _log_finetune(cfg, info, time.time() - t0, data.key, tracking_uri)
    meta = read_meta(Path(path))
    if int(meta["image_size"]) != data.image_size or int(meta["channels"]) != data.channels:
        raise ModelError(
            f"model {path} makes {meta['channels']}x{meta['image_size']}px images, the data is "
            f"{data.channels}x{data.image_size}px; fine-tune a model on this data"
        )
    return path, meta


def _pool_done(results: list[dict[str, Any]], total: int, progress: bool) -> None:
    r = results[-1]
    say(
        f"pool {len(results)}/{total} guidance={r['guidance']:g} steps={r['steps']}: "
        f"{'generated' if r['generated'] else 'cached'} ({r['seconds']:.1f} s)",
        progress,
    )


def build_pools(
    home: Home,
    space: Space,
    data: Any,
    model_path: str,
    model_meta: dict[str, Any],
    n: int,
    gpus: int,
    progress: bool,
) -> list[dict[str, Any]]:
    """Every pool of the space's grid, before the trials: one Ray task per GPU when there are GPUs
    (``@ray.remote(num_gpus=1)`` around :func:`pools.build_one`), else serially here."""
    from .. import pools
    from ..pools.postprocess import reference_for
    from .trainable import LazyModel, generate_config

    grid = space.pool_grid()
    if not grid:
        return []
    syn = int(data.synthetic_label)
    seed = int(space.fixed.get("pool_seed", 0))
    gens = [generate_config(dict(c, pool_seed=seed), n, "auto") for c in grid]
    results: list[dict[str, Any]] = []
    t0 = time.time()
    if gpus > 0:
        import ray

        task = ray.remote(num_gpus=1)(pools.build_one)
        pending = [
            task.remote(
                str(home.root),
                model_path,
                dataclasses.asdict(gen),
                n,
                reference_for(data, gen.postprocess),
                syn,
                False,
            )
            for gen in gens
        ]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            results.append(ray.get(ready[0]))
            _pool_done(results, len(grid), progress)
    else:
        model = LazyModel(model_path, model_meta)
        for gen in gens:
            ref = reference_for(data, gen.postprocess)
            results.append(pools.build_one(home, model, gen, n, ref, syn, progress=False))
            _pool_done(results, len(grid), progress)
    made = sum(1 for r in results if r["generated"])
    say(f"pools ready: {len(results)} ({made} generated) in {time.time() - t0:.1f} s", progress)
    return results


__all__ = ["build_pools", "load_data", "model_for", "pool_size"]
