"""What a search prepares before its first trial: the data, the generator and every pool.

The data and the generator are loaded (or fine-tuned) once in the driver; the pools of the
space's grid are built before the trials (one Ray task per GPU, else serially here), so that no
two trials ever generate the same pool and a trial's images never depend on which ran first.

Each step records itself in run.json (``phase``) and what it made (``data_key``, ``model_path``,
``pools_built``) as soon as it is done, so that ``resume`` after a kill at any moment redoes only
what is missing: the data come from the cache, a fine-tune goes on from its checkpoint, complete
pools are kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from ..config import Config, DataConfig, FinetuneConfig
from ..errors import ModelError, RatioSearchError, SearchError
from ..home import Home
from ..train.mixing import synthetic_needed
from .procs import kill_point
from .progress import say
from .resources import EnvironmentProblem
from .runinfo import RunInfo
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
            kill_point("pool")
    else:
        model = LazyModel(model_path, model_meta)
        for gen in gens:
            ref = reference_for(data, gen.postprocess)
            results.append(pools.build_one(home, model, gen, n, ref, syn, progress=False))
            _pool_done(results, len(grid), progress)
            kill_point("pool")
    made = sum(1 for r in results if r["generated"])
    say(f"pools ready: {len(results)} ({made} generated) in {time.time() - t0:.1f} s", progress)
    return results


def enter_phase(folder: Path, info: RunInfo, phase: str) -> None:
    """Record in run.json that the driver is now in ``phase`` (see ``runinfo.PHASES``)."""
    info.phase = phase
    info.save(folder)
    kill_point(phase)


def prepare(
    home: Home, folder: Path, info: RunInfo, space: Space, cfg: Config, progress: bool
) -> Any:
    """The data and the generator of the run, each recorded in run.json once done; returns the
    data. On resume: the data must have the recorded key, a recorded model must still exist."""
    enter_phase(folder, info, "data")
    data = load_data(cfg.data, home)
    if info.data_key is None:
        info.data_key = data.key
        info.save(folder)
    elif data.key != info.data_key:
        raise SearchError(
            f"the data of run {info.name} changed (key {info.data_key} -> {data.key}); "
            "a resumed search must see the same data"
        )
    # --- the R = 0 budget, once per run, recorded in run.json
    from .calibrate import calibrate_run

    calibrate_run(folder, info, space, data, progress)
    if space.pool_grid():
        if info.model_path is None:
            enter_phase(folder, info, "model")
            path, meta = model_for(
                info.options.model, data, home, cfg.finetune, progress, info.mlflow.tracking_uri,
                allow_other_data=info.options.allow_other_data,
            )  # fmt: skip
            info.model_path, info.model_meta = path, meta
            info.model_hash, info.pool_n = meta.get("model_hash"), pool_size(space, data)
            info.save(folder)
        elif not Path(info.model_path).is_dir():
            raise ModelError(f"the generator of run {info.name} is gone: {info.model_path}")
    return data


def prepare_pools(
    home: Home, folder: Path, info: RunInfo, space: Space, data: Any, progress: bool
) -> None:
    """Every pool of the grid (complete ones are kept: a resumed build makes only the rest)."""
    if not info.model_path or info.pools_built:
        return
    enter_phase(folder, info, "pools")
    res = info.options.resources
    build_pools(
        home, space, data, info.model_path, info.model_meta or {}, info.pool_n,
        int(res.get("gpus", 0)), progress,
    )  # fmt: skip
    info.pools_built = True
    info.save(folder)


# ------------------------------------------------------------------------ MLflow


def create_store(uri: str) -> None:
    """Create a new local sqlite MLflow store whole: its tables are made in a temp file that is
    then linked into place, so that a kill during MLflow's schema migration (seconds on a busy
    machine) never leaves a half-made database (bench_faults found one). Other stores: nothing."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///") :])
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        from mlflow.tracking import MlflowClient

        MlflowClient(f"sqlite:///{tmp}").search_experiments(max_results=1)
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile: keep it
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def start_tracker(folder: Path, info: RunInfo, uri: str) -> Any:
    """The search's MLflow parent run (its id recorded in run.json)."""
    from .. import tracking as tr

    tracker = tr.SearchTracker(uri, tr.EXPERIMENT_NAME, folder, metric=info.metric, mode=info.mode)
    res = info.options.resources
    params = {
        "n_trials": info.n_trials,
        "metric": info.metric,
        "mode": info.mode,
        "scheduler": info.options.scheduler,
        "seed": info.seed,
        "data_key": info.data_key,
        "model_hash": info.model_hash,
        "concurrency": res["concurrency"],
        "gpus": res["gpus"],
        "gpus_per_trial": res["gpus_per_trial"],
    }
    # A driver killed between creating the parent and recording its id left one: take it over.
    flt = f"tags.`ratio_search.run_dir` = '{folder}' and tags.`ratio_search.kind` = 'search'"
    found = tracker.client.search_runs([tracker.experiment_id], flt)
    if found:
        parent = tracker.resume_parent(found[0].info.run_id)
        for dup in found[1:]:
            tracker.client.delete_run(dup.info.run_id)
    else:
        parent = tracker.start_parent(
            info.name, params, [folder / "space.yaml", folder / "config.yaml"]
        )
    info.mlflow.experiment_id, info.mlflow.parent_run_id = tracker.experiment_id, parent
    info.save(folder)
    return tracker


def resume_tracker(folder: Path, info: RunInfo, progress: bool) -> Any:
    """The run's MLflow tracker, its parent run taken over and stale child runs closed."""
    ml = info.mlflow
    from .. import tracking as tr

    tracker = tr.SearchTracker(
        ml.tracking_uri, tr.EXPERIMENT_NAME, folder, metric=info.metric, mode=info.mode
    )
    tracker.resume_parent(ml.parent_run_id)
    closed = tracker.close_stale_runs(ml.parent_run_id)
    if closed:
        say(f"closed {closed} MLflow runs the interrupted driver left RUNNING", progress)
    return tracker


def open_tracker(folder: Path, info: RunInfo, progress: bool) -> Any:
    """The run's MLflow tracker (None with --no-tracking): a new parent run, or the recorded one
    taken over; EnvironmentProblem in one line when the store cannot be reached."""
    uri = info.mlflow.tracking_uri
    if not uri:
        return None
    enter_phase(folder, info, "tracking")
    try:
        if info.mlflow.parent_run_id:
            return resume_tracker(folder, info, progress)
        return start_tracker(folder, info, uri)
    except RatioSearchError:
        raise
    except Exception as e:  # MlflowException, a database or HTTP error...
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise EnvironmentProblem(
            f"cannot use the MLflow store {uri}: {why}; the run is kept: fix that, then resume it"
        ) from None


__all__ = [
    "build_pools",
    "create_store",
    "open_tracker",
    "resume_tracker",
    "start_tracker",
    "enter_phase",
    "load_data",
    "model_for",
    "pool_size",
    "prepare",
    "prepare_pools",
]
