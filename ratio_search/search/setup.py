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
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Config, DataConfig
from ..errors import ModelError, RatioSearchError, SearchError
from ..home import Home
from .generators import model_for, model_steps, models_for, run_models
from .pooling import build_pools, check_classes, class_labels, pool_jobs, pool_size
from .procs import kill_point
from .progress import say
from .resources import EnvironmentProblem
from .runinfo import RunInfo
from .space import Space

logger = logging.getLogger(__name__)


def load_data(data_cfg: DataConfig, home: Home):
    """The search's dataset (read through the home's data cache)."""
    from ..data import load_dataset

    return load_dataset(data_cfg, home)


def enter_phase(folder: Path, info: RunInfo, phase: str) -> None:
    """Record in run.json that the driver is now in ``phase`` (see ``runinfo.PHASES``)."""
    info.phase = phase
    info.save(folder)
    kill_point(phase)


def prepare(
    home: Home,
    folder: Path,
    info: RunInfo,
    space: Space,
    cfg: Config,
    progress: bool,
    on_checked: Callable[[], Any] | None = None,
) -> Any:
    """The data and the generator of the run, each recorded in run.json once done; returns the
    data. On resume: the data must have the recorded key, a recorded model must still exist.
    ``on_checked`` is called once the data and the space's classes have passed their checks,
    before the long steps (the driver starts Ray there)."""
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

    check_classes(space, data)  # before the calibration: a typo fails at once
    if on_checked is not None:
        on_checked()
    calibrate_run(folder, info, space, data, progress)
    if space.pool_grid():
        if info.model_path is None:
            enter_phase(folder, info, "model")
            models = models_for(
                info.options.model, data, home, cfg.finetune, model_steps(space), progress,
                info.mlflow.tracking_uri, allow_other_data=info.options.allow_other_data,
            )  # fmt: skip
            path, meta = models[0]
            info.model_path, info.model_meta = path, meta
            info.models = {str(s): [p, m] for s, (p, m) in models.items()}
            info.model_hash, info.pool_n = meta.get("model_hash"), pool_size(space, data)
            info.save(folder)
        else:
            for p, _ in run_models(info).values():
                if not Path(p).is_dir():
                    raise ModelError(f"the generator of run {info.name} is gone: {p}")
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
        home, space, data, run_models(info), None, info.pool_n, int(res.get("gpus", 0)), progress
    )
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
    "check_classes",
    "class_labels",
    "models_for",
    "model_steps",
    "pool_jobs",
    "run_models",
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
