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

import numpy as np

from ..config import Config, DataConfig, FinetuneConfig
from ..errors import ConfigError, ModelError, RatioSearchError, SearchError
from ..home import Home
from .procs import kill_point
from .progress import say
from .resources import EnvironmentProblem
from .runinfo import RunInfo
from .space import Space

logger = logging.getLogger(__name__)


def class_labels(space: Space, data: Any, spec: str | None = None) -> list[int]:
    """The labels that receive synthetic images: of ``spec`` (a ``synthetic_classes`` value), or
    the union over every value the space allows (sorted). ConfigError naming an unknown class."""
    from ..train.mixing import synthetic_labels

    specs = [spec] if spec is not None else space.choices("synthetic_classes")
    out: set[int] = set()
    for sp in specs:
        try:
            out.update(synthetic_labels(sp, list(data.class_names), int(data.synthetic_label)))
        except ConfigError as e:
            raise ConfigError(
                f"{space.path or 'search space'}: synthetic_classes {sp!r}: {e} "
                f"(the data's classes: {', '.join(map(str, data.class_names))})"
            ) from None
    return sorted(out)


def check_classes(space: Space, data: Any) -> None:
    """Every ``synthetic_classes`` value of the space names classes the data has (before any
    trial: a typo fails the search at once, not one trial at a time)."""
    class_labels(space, data)


def pool_size(space: Space, data: Any) -> int:
    """Images per pool: enough for the largest need of any trial the space allows (``fixed.pool_size``
    if larger): over modes, R values (augment's capped), filter_top values (the kept top fraction
    must still hold the trial's images) and every listed class (their sizes differ: the max).

    Every trial uses the same n, so a trial's images never depend on which pool was cached first.
    """
    from ..train.mixing import pool_needed

    y = np.asarray(data.train_y)
    need = 0
    for label in class_labels(space, data):
        n_class = int((y == label).sum())
        for mode in space.choices("mode"):
            for r in space.r_values(mode):
                if r <= 0:
                    continue
                for top in space.choices("filter_top"):
                    need = max(need, pool_needed(n_class, float(r), mode, float(top)))
    return max(int(space.fixed.get("pool_size", 0)), need, 1)


def model_steps(space: Space) -> list[int]:
    """The generator checkpoints the space's trials can ask for (``finetune_steps``), sorted."""
    return sorted({int(s) for s in space.choices("finetune_steps")})


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


def _pool_done(results: list[dict[str, Any]], total: int, progress: bool) -> None:
    r = results[-1]
    extra = "".join(
        f" {k}={r[k]}" for k in ("finetune_steps", "class_name") if r.get(k) not in (None, 0)
    )
    say(
        f"pool {len(results)}/{total} guidance={r['guidance']:g} steps={r['steps']}{extra}: "
        f"{'generated' if r['generated'] else 'cached'} ({r['seconds']:.1f} s)",
        progress,
    )


def _reference(data: Any, postprocess: str, label: int) -> np.ndarray | None:
    """The histogram-match reference of class ``label``: its real training images (never val or
    test), as :func:`pools.postprocess.reference_for` gives for the default class."""
    from ..pools.postprocess import reference_for

    if postprocess != "histogram-match" or label == int(data.synthetic_label):
        return reference_for(data, postprocess)
    return np.asarray(data.train_x[np.asarray(data.train_y) == label])


def pool_jobs(
    space: Space, data: Any, models: dict[int, tuple[str, dict[str, Any]]], n: int
) -> list[dict[str, Any]]:
    """One job per pool the space can ask for: its grid combination (the checkpoint included) x
    every class that receives synthetic images; each ``{model_path, model_meta, gen, label}``."""
    from .trainable import generate_config

    seed = int(space.fixed.get("pool_seed", 0))
    jobs = []
    for combo in space.pool_grid():
        path, meta = models[int(combo.get("finetune_steps", 0))]
        gen = generate_config(dict(combo, pool_seed=seed), n, "auto")
        for label in class_labels(space, data):
            jobs.append({"model_path": path, "model_meta": meta, "gen": gen, "label": label})
    return jobs


def build_pools(
    home: Home,
    space: Space,
    data: Any,
    models: dict[int, tuple[str, dict[str, Any]]] | str,
    model_meta: dict[str, Any] | None = None,
    n: int = 0,
    gpus: int = 0,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Every pool of the space (grid x classes), before the trials: one Ray task per GPU when
    there are GPUs (``@ray.remote(num_gpus=1)`` around :func:`pools.build_one`), else serially
    here. ``models``: ``{finetune_steps: (path, meta)}`` (or one model's path, then its meta)."""
    from .. import pools
    from .trainable import LazyModel

    if isinstance(models, str | os.PathLike):
        models = {0: (str(models), dict(model_meta or {}))}
    if not space.pool_grid():
        return []
    jobs = pool_jobs(space, data, models, n)
    names = list(data.class_names)
    results: list[dict[str, Any]] = []

    def done(job: dict[str, Any], r: dict[str, Any]) -> None:
        r = dict(r, finetune_steps=int(job["gen"].finetune_steps), label=int(job["label"]))
        r["class_name"] = str(names[job["label"]]) if len(jobs) > len(space.pool_grid()) else None
        results.append(r)
        _pool_done(results, len(jobs), progress)
        kill_point("pool")

    t0 = time.time()
    if gpus > 0:
        import ray

        task = ray.remote(num_gpus=1)(pools.build_one)
        pending = {
            task.remote(
                str(home.root), j["model_path"], dataclasses.asdict(j["gen"]), n,
                _reference(data, j["gen"].postprocess, j["label"]), j["label"], False,
            ): j
            for j in jobs
        }  # fmt: skip
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            done(pending.pop(ready[0]), ray.get(ready[0]))
    else:
        loaded: dict[str, LazyModel] = {}
        for j in jobs:
            model = loaded.setdefault(j["model_path"], LazyModel(j["model_path"], j["model_meta"]))
            ref = _reference(data, j["gen"].postprocess, j["label"])
            done(j, pools.build_one(home, model, j["gen"], n, ref, j["label"], progress=False))
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

    check_classes(space, data)  # before the calibration: a typo fails at once
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
