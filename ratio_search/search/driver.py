"""The search driver: data, model and pools first, then a Ray Tune ``Tuner`` with Optuna's TPE.

One process (the driver) owns the run folder: it writes run.json (:class:`RunInfo`), the Optuna
study (``optuna.db``), the Tune experiment (``tune/``) and, through the tracking callback, MLflow
and ``trials.jsonl``. Trials run in Ray workers and only report metrics and checkpoints back.

Resuming (``resume_search``) restores the Tune experiment (trials, checkpoints, the searcher's
state and with it the Optuna study) after Ctrl-C, a crash or a SIGKILL: leftover Ray processes of
the run are killed by PID first, stale MLflow runs are closed, and the search goes on until it has
exactly the number of trials it was asked for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from .._io import atomic_write_text, utc_now
from ..config import Config, FinetuneConfig, config_from_dict, save_config
from ..errors import ConfigError, ModelError, RatioSearchError, SearchError
from ..home import Home
from . import runs
from .options import SearchOptions
from .procs import find_ray_processes, is_driver, kill_ray_processes
from .progress import say
from .resources import (  # noqa: F401 - check_address, cuda_device_count: importers' names
    check_address,
    cluster_shortfall,
    cuda_device_count,
    init_ray,
    quiet_tune_env,
    resolve_resources,
)
from .runinfo import MlflowInfo, RayInfo, RunInfo, RunOptions
from .setup import build_pools, load_data, model_for, pool_size
from .space import METRICS, Space, load_space, parse_space
from .trials import read_trials
from .tuner import forget_lost_trials, make_trainable, restore_or_make_tuner

logger = logging.getLogger(__name__)

# The parameters shown for the best trial of a finished search.
_SUMMARY_KEYS = (
    "r", "guidance", "steps", "scheduler", "postprocess", "mode", "lr", "batch_size", "epochs",
    "seed",
)  # fmt: skip


def resume_command(home: Home, name: str) -> str:
    """The exact command that resumes this run."""
    here = Path(os.getcwd()).resolve()
    env_home = os.environ.get("RATIO_SEARCH_HOME")
    if home.root == here or (env_home and Path(env_home).resolve() == home.root):
        return f"ratio-search resume {name}"
    return f"ratio-search resume {name} --home {home.root}"


def _summary(home: Home, run_dir: Path, info: RunInfo) -> dict[str, Any]:
    st = runs.run_status(home, info.name)
    best = st["best"]
    if best is not None:
        best = {
            "trial_id": best["trial_id"],
            "params": {k: best["params"][k] for k in _SUMMARY_KEYS if k in (best["params"] or {})},
            "metric": best["metric"],
        }
    out = {
        "name": info.name,
        "run_dir": str(run_dir),
        "state": info.state,
        "metric": info.metric,
        "mode": info.mode,
        "best": best,
        "n_trials": st["done"],
        "n_trials_asked": info.n_trials,
        "n_errors": st["counts"].get("ERROR", 0),
        "mlflow_parent_run_id": info.mlflow.parent_run_id,
        "tracking_uri": info.mlflow.tracking_uri,
    }
    if info.state == "interrupted":
        out["resume_command"] = resume_command(home, info.name)
    return out


def _close(home: Home, info: RunInfo, run_dir: Path, tracker: Any, status: str) -> None:
    """Record the outcome in run.json and MLflow, stop Ray and what it left behind."""
    import ray

    info.state = status
    info.save(run_dir)
    if tracker is not None:
        try:
            tracker.finish_parent(
                {"finished": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
            )
        except Exception as e:
            logger.warning("could not close the MLflow parent run: %s", e)
    if ray.is_initialized():
        ray.shutdown()
    temp_dir = str(info.ray.temp_dir)
    if not info.options.address:
        if find_ray_processes(temp_dir):
            kill_ray_processes(temp_dir)
        if status == "finished":
            shutil.rmtree(temp_dir, ignore_errors=True)
    if status == "interrupted":
        say(f"search interrupted; resume it with: {resume_command(home, info.name)}")


def _fit(
    home: Home,
    run_dir: Path,
    info: RunInfo,
    space: Space,
    data: Any,
    tracker: Any,
    progress: bool,
    restore: bool,
) -> dict[str, Any]:
    """Start (or restore) Ray and the Tuner, run until done or interrupted, record the outcome."""
    import ray

    quiet_tune_env()
    # Tune logs where its results are and how to open TensorBoard at INFO: not our interface.
    for logger_name in ("ray.tune", "ray.train"):
        logging.getLogger(logger_name).setLevel(logging.WARNING)
    opts, res = info.options, info.options.resources
    status = "failed"
    old_term = signal.getsignal(signal.SIGTERM)
    try:
        init_ray(
            str(info.ray.temp_dir), opts.address, res["num_cpus"], res["gpus"], opts.address_timeout
        )
        if opts.address:
            # Ray waits, silently, for resources a cluster lacks; say so. A warning, not an
            # error: an autoscaling cluster adds the nodes a pending request asks for.
            short = cluster_shortfall(res, [n["Resources"] for n in ray.nodes() if n["Alive"]])
            if short:
                say(f"warning: {short}; the search waits until the cluster has them")
        if info.model_path and not info.pools_built:
            build_pools(
                home, space, data, info.model_path, info.model_meta or {}, info.pool_n,
                res["gpus"], progress,
            )  # fmt: skip
            info.pools_built = True
            info.save(run_dir)
        ctx = {
            "home": str(home.root),
            "space": space.to_dict(),
            "pool_n": info.pool_n,
            "model_path": info.model_path,
            "model_meta": info.model_meta,
        }
        trainable = make_trainable(ctx, data, res["cpus_per_trial"], res["gpus_per_trial"])
        from .callbacks import make_callbacks

        callbacks = make_callbacks(run_dir, info, progress, tracker is not None)
        tuner = restore_or_make_tuner(run_dir, info, space, trainable, callbacks, restore)
        # SIGTERM (kill PID) stops like Ctrl-C: Tune saves its state and returns.
        if hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGUSR1))
        # Tune prints an experiment box on stdout whatever its verbosity; stdout is for our one
        # JSON object (--json), so everything Ray prints goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            tuner.fit()
        if restore:
            forget_lost_trials(run_dir, tracker)
        trials = read_trials(run_dir)
        done = sum(1 for t in trials.values() if t.get("state") in ("TERMINATED", "ERROR"))
        status = "finished" if done >= int(info.n_trials) else "interrupted"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        signal.signal(signal.SIGTERM, old_term)
        _close(home, info, run_dir, tracker, status)
    return _summary(home, run_dir, info)


# ------------------------------------------------------------------------------ public API


def _check(sp: Space, opts: SearchOptions) -> tuple[str, str, int]:
    """The search's metric, mode and number of trials (ConfigError naming the flag)."""
    if opts.metric is not None and opts.metric not in METRICS:
        raise ConfigError(
            f"--metric: unknown metric {opts.metric!r}; allowed: {', '.join(METRICS)}"
        )
    metric = opts.metric or sp.metric
    mode = sp.mode if metric == sp.metric else METRICS[metric]
    n_trials = int(opts.n_trials or sp.default_trials())
    if n_trials < 1:
        raise ConfigError(f"--trials: must be >= 1, got {n_trials}")
    return metric, mode, n_trials


def _refuse_existing(home: Home, name: str) -> None:
    folder = home.runs / name
    if (folder / runs.RUN_JSON).is_file():
        if RunInfo.load(folder).state == "finished":
            raise SearchError(f"run {name} exists and is finished; choose another --name")
        raise SearchError(
            f"run {name} exists and is unfinished; resume it with: {resume_command(home, name)}"
        )


def _data_config(sp: Space, opts: SearchOptions):
    """Defaults/--config, then the space's data: block, then the command line."""
    dcfg = sp.data_config(opts.data_cfg)
    if opts.data_overrides:
        from ..config import _apply

        cfg = Config(data=dcfg)
        _apply(cfg, {"data": dict(opts.data_overrides)}, "command line")
        dcfg = cfg.data
    return dcfg


def _start_tracker(folder: Path, info: RunInfo, uri: str) -> Any:
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
    parent = tracker.start_parent(
        info.name, params, [folder / "space.yaml", folder / "config.yaml"]
    )
    info.mlflow.experiment_id, info.mlflow.parent_run_id = tracker.experiment_id, parent
    info.save(folder)
    return tracker


def run_search(home: Home, options: SearchOptions | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run a search; returns ``{name, run_dir, state, best {params, metric}, n_trials,
    mlflow_parent_run_id, ...}``.

    ``options``: a :class:`SearchOptions`; or its fields as keyword arguments
    (``run_search(home, name="s", space="default", n_trials=8)``).
    """
    opts = options or SearchOptions.from_kwargs(kwargs)
    if options is not None and kwargs:
        raise TypeError("run_search: give a SearchOptions or keyword options, not both")
    sp = opts.space if isinstance(opts.space, Space) else load_space(opts.space)
    metric, mode, n_trials = _check(sp, opts)
    # Inside a Ray Job (`ray job submit`) Ray sets RAY_ADDRESS: join that cluster, as ray.init()
    # does (a private Ray with num_cpus would fail there: ray.init refuses both at once).
    address = opts.address or os.environ.get("RAY_ADDRESS") or None
    resources = resolve_resources(
        opts.gpus, opts.gpus_per_trial, opts.cpus_per_trial, opts.concurrency, address
    )
    if address:
        check_address(address, opts.address_timeout)
    name = runs.check_name(opts.name or runs.default_name())
    _refuse_existing(home, name)

    dcfg = _data_config(sp, opts)
    data = load_data(dcfg, home)
    uri = opts.tracking_uri or home.tracking_uri()
    model_path, model_meta = None, None
    if sp.pool_grid():
        model_path, model_meta = model_for(
            opts.model, data, home, opts.finetune_cfg, opts.progress, uri if opts.tracking else None
        )

    folder = home.runs / name
    folder.mkdir(parents=True, exist_ok=True)
    save_config(
        Config(data=dcfg, finetune=opts.finetune_cfg or FinetuneConfig()), folder / "config.yaml"
    )
    atomic_write_text(folder / "space.yaml", yaml.safe_dump(sp.to_dict(), sort_keys=False))
    info = RunInfo(
        name=name,
        state="running",
        created=utc_now(),
        n_trials=n_trials,
        metric=metric,
        mode=mode,
        space_path=sp.path,
        space=sp.to_dict(),
        data_key=data.key,
        model_hash=(model_meta or {}).get("model_hash"),
        model_path=model_path,
        model_meta=model_meta,
        pool_n=pool_size(sp, data) if model_path else 0,
        mlflow=MlflowInfo(tracking_uri=uri if opts.tracking else None),
        ray=RayInfo(temp_dir=runs.ray_temp_dir(folder), address=address, driver_pid=os.getpid()),
        argv=list(opts.argv if opts.argv is not None else sys.argv),
        seed=opts.seed,
        options=RunOptions(
            scheduler=opts.scheduler,
            address=address,
            address_timeout=opts.address_timeout,
            max_failures=opts.max_failures,
            resources=resources,
            concurrency=resources["concurrency"],
        ),
    )
    info.save(folder)
    tracker = _start_tracker(folder, info, uri) if opts.tracking else None
    say(
        f"search {name}: {n_trials} trials, {resources['concurrency']} at a time, "
        f"run folder {folder}",
        opts.progress,
    )
    return _fit(home, folder, info, sp, data, tracker, opts.progress, restore=False)


def _resume_tracker(folder: Path, info: RunInfo, progress: bool) -> Any:
    """The run's MLflow tracker, its parent run taken over and stale child runs closed."""
    ml = info.mlflow
    if not (ml.tracking_uri and ml.parent_run_id):
        return None
    from .. import tracking as tr

    tracker = tr.SearchTracker(
        ml.tracking_uri, tr.EXPERIMENT_NAME, folder, metric=info.metric, mode=info.mode
    )
    tracker.resume_parent(ml.parent_run_id)
    closed = tracker.close_stale_runs(ml.parent_run_id)
    if closed:
        say(f"closed {closed} MLflow runs the interrupted driver left RUNNING", progress)
    return tracker


def resume_search(home: Home, name: str, progress: bool = True) -> dict[str, Any]:
    """Continue an interrupted or crashed search where it stopped (see the module docstring)."""
    folder = runs.find_run(home, name)
    info = RunInfo.load(folder)
    if info.state == "finished":
        raise SearchError(
            f"run {name} is finished ({info.n_trials} trials); see: ratio-search status {name}"
        )
    pid = info.ray.driver_pid
    if (
        info.state == "running"
        and pid
        and int(pid) != os.getpid()
        and runs.pid_alive(int(pid))
        and is_driver(int(pid))
    ):
        raise SearchError(f"run {name} is still running (driver pid {pid}); stop it first")
    temp_dir = info.ray.temp_dir or runs.ray_temp_dir(folder)
    if not info.ray.address:
        killed = kill_ray_processes(temp_dir)
        if killed:
            say(f"stopped {len(killed)} leftover Ray processes of {name}: {killed}", progress)

    space = parse_space(
        yaml.safe_load((folder / "space.yaml").read_text()), origin=str(folder / "space.yaml")
    )
    cfg = config_from_dict(yaml.safe_load((folder / "config.yaml").read_text()))
    data = load_data(cfg.data, home)
    if data.key != info.data_key:
        raise SearchError(
            f"the data of run {name} changed (key {info.data_key} -> {data.key}); "
            "a resumed search must see the same data"
        )
    if info.model_path and not Path(info.model_path).is_dir():
        raise ModelError(f"the generator of run {name} is gone: {info.model_path}")

    info.state = "running"
    info.ray.temp_dir, info.ray.driver_pid = temp_dir, os.getpid()
    info.save(folder)
    tracker = _resume_tracker(folder, info, progress)
    say(f"resuming search {name} ({info.n_trials} trials)", progress)
    return _fit(home, folder, info, space, data, tracker, progress, restore=True)


__all__ = [
    "RatioSearchError",
    "SearchOptions",
    "build_pools",
    "check_address",
    "cluster_shortfall",
    "init_ray",
    "pool_size",
    "resolve_resources",
    "resume_search",
    "run_search",
]
