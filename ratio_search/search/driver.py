"""The search driver: data, model and pools first, then a Ray Tune ``Tuner`` with Optuna's TPE.

One process (the driver) owns the run folder: it writes run.json (:class:`RunInfo`), the Optuna
study (``optuna.db``), the Tune experiment (``tune/``) and, through the tracking callback, MLflow
and ``trials.jsonl``. Trials run in Ray workers and only report metrics and checkpoints back.

The driver holds the run's lock (``runs.RunLock``) from before its first write to after its
last clean-up step, so there is one driver per run. run.json is written (state "starting") before
any long step and records each set-up phase as it ends (``setup.prepare``), so a search killed at
any moment (Ctrl-C, SIGTERM, SIGKILL, a lost machine) can be resumed. Resuming (``resume_search``)
waits for an old driver still shutting down, kills the run's leftover Ray processes by PID, redoes
the set-up steps that are missing, restores the Tune experiment (trials, checkpoints, the
searcher's state and with it the Optuna study), closes stale MLflow runs, rebuilds any trial record
that was lost, and goes on until it has exactly the number of trials it was asked for.

Clean-up runs every step whatever failed before it (run.json, MLflow parent, Ray, leftover
processes, the lock), and the first error is the one reported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from .._io import atomic_write_text, utc_now
from ..config import Config, FinetuneConfig, save_config
from ..errors import RatioSearchError, SearchError
from ..home import Home
from . import runs
from .options import SearchOptions
from .procs import Signals, find_ray_processes, is_driver, kill_ray_processes, our_error
from .progress import say
from .resources import (  # noqa: F401 - check_address, cuda_device_count: importers' names
    EnvironmentProblem,
    RayStart,
    check_address,
    check_tracking_uri,
    cluster_shortfall,
    cuda_device_count,
    init_ray,
    quiet_tune_env,
    resolve_resources,
)
from .runfiles import read_run_config, read_run_space
from .runinfo import MlflowInfo, RayInfo, RunInfo, RunOptions
from .runs import resume_command, summary
from .setup import (
    build_pools,
    create_store,
    enter_phase,
    open_tracker,
    pool_size,
    prepare,
    prepare_pools,
    run_models,
)
from .space import Space, load_space
from .trials import TrialLogError, read_trials
from .tuner import make_trainable, reconcile_trials, restore_or_make_tuner

logger = logging.getLogger(__name__)

# How long ``resume`` waits for an old driver that has stopped and is cleaning up.
SHUTDOWN_WAIT_S = 60.0


def _close(
    home: Home,
    info: RunInfo,
    run_dir: Path,
    tracker: Any,
    status: str,
    lock: runs.RunLock,
    ray_start: RayStart,
) -> list[str]:
    """Record the outcome in run.json and MLflow, stop Ray and what it left behind, release the
    lock: every step runs whatever failed before it. Returns what failed, in order."""
    ray_start.settle()  # a Ray still starting would outlive the shutdown below
    ray = sys.modules.get("ray")  # not imported: the search stopped before Ray started

    def save_state() -> None:
        info.state = status
        info.save(run_dir)

    def finish_parent() -> None:
        if tracker is not None:
            tracker.finish_parent(
                {"finished": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
            )

    def stop_ray() -> None:
        try:
            if ray is not None and ray.is_initialized():
                ray.shutdown()
        finally:
            ray_start.release()

    def leftovers() -> None:
        temp_dir = str(info.ray.temp_dir)
        if not info.options.address and info.ray.temp_dir:
            if find_ray_processes(temp_dir):
                kill_ray_processes(temp_dir)
            if status == "finished":
                shutil.rmtree(temp_dir, ignore_errors=True)

    steps = (
        ("record the run's state in run.json", save_state),
        ("close the MLflow parent run", finish_parent),
        ("shut Ray down", stop_ray),
        ("stop the run's leftover Ray processes", leftovers),
        ("release the run's lock", lock.release),
    )
    failed = []
    for what, step in steps:
        try:
            step()
        except Exception as e:  # noqa: BLE001 - the next steps must run all the same
            failed.append(f"could not {what}: {type(e).__name__}: {e}")
            logger.warning(failed[-1])
    if status != "finished":
        say(f"search {status}; resume it with: {resume_command(home, info.name)}")
    return failed


def _fit(
    home: Home,
    run_dir: Path,
    info: RunInfo,
    space: Space,
    data: Any,
    tracker: Any,
    progress: bool,
    restore: bool,
    sig: Signals,
    ray_start: RayStart,
) -> str:
    """Wait for Ray (started or joined in the background by ``_drive``), build the pools on
    GPUs, run (or restore) the Tuner until done or interrupted; returns the outcome ("finished"
    or "interrupted")."""
    opts, res = info.options, info.options.resources
    ray_start.wait()
    if opts.address:
        import ray

        # Ray waits, silently, for resources a cluster lacks; say so. A warning, not an
        # error: an autoscaling cluster adds the nodes a pending request asks for.
        short = cluster_shortfall(res, [n["Resources"] for n in ray.nodes() if n["Alive"]])
        if short:
            say(f"warning: {short}; the search waits until the cluster has them")
    prepare_pools(home, run_dir, info, space, data, progress)  # GPUs: one Ray task per GPU
    info.state = "running"
    enter_phase(run_dir, info, "trials")
    ctx = {
        "home": str(home.root),
        "space": space.to_dict(),
        "pool_n": info.pool_n,
        "model_path": info.model_path,
        "model_meta": info.model_meta,
        "models": run_models(info),  # {finetune_steps: (path, meta)}
        "run_dir": str(run_dir),  # equivalent configurations measured once (trainable)
    }
    trainable = make_trainable(ctx, data, res["cpus_per_trial"], res["gpus_per_trial"])
    from .callbacks import make_callbacks

    callbacks = make_callbacks(run_dir, info, progress, tracker is not None)
    tuner = restore_or_make_tuner(run_dir, info, space, trainable, callbacks, restore)
    sig.trials()
    try:
        # Tune prints an experiment box on stdout whatever its verbosity; stdout is for our one
        # JSON object (--json), so everything Ray prints goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            tuner.fit()
    except Exception as e:
        ours = our_error(e)
        if ours is not None:
            raise ours from None
        raise
    finally:
        sig.setup()
    lost, rebuilt = reconcile_trials(run_dir, tracker, info.metric, info.mode)
    if rebuilt:
        say(f"rebuilt {rebuilt} trial records from the Tune experiment", progress)
    trials = read_trials(run_dir)
    done = sum(1 for t in trials.values() if t.get("state") in ("TERMINATED", "ERROR"))
    return "finished" if done >= int(info.n_trials) else "interrupted"


def _drive(
    home: Home,
    folder: Path,
    info: RunInfo,
    space: Space,
    cfg: Config,
    lock: runs.RunLock,
    progress: bool,
    restore: bool,
) -> dict[str, Any]:
    """Set-up, trials and clean-up of a run whose lock is held and whose run.json is written."""
    sig = Signals()
    tracker, status, error = None, "failed", None
    opts, res = info.options, info.options.resources
    quiet_tune_env()  # before Ray starts: its processes inherit the environment
    # Tune logs where its results are and how to open TensorBoard at INFO: not our interface.
    for logger_name in ("ray.tune", "ray.train"):
        logging.getLogger(logger_name).setLevel(logging.WARNING)
    ray_start = RayStart(
        str(info.ray.temp_dir), opts.address, res["num_cpus"], res["gpus"], opts.address_timeout
    )
    try:
        # Ray starts once the space's classes are checked (a typo fails at once, without it),
        # while the calibration, the generator and the pools are made
        data = prepare(home, folder, info, space, cfg, progress, on_checked=ray_start.start)
        tracker = open_tracker(folder, info, progress)
        if not info.options.resources.get("gpus"):
            prepare_pools(home, folder, info, space, data, progress)  # serially, before trials
        status = _fit(home, folder, info, space, data, tracker, progress, restore, sig, ray_start)
    except KeyboardInterrupt as e:
        status, error = "interrupted", e
    except (TrialLogError, EnvironmentProblem) as e:
        status, error = "interrupted", e
    except BaseException as e:
        status, error = "failed", e
    finally:
        sig.quiet()
        failed = _close(home, info, folder, tracker, status, lock, ray_start)
        sig.restore()
    if error is not None:
        raise error
    if failed:
        raise SearchError(f"run {info.name}: {failed[0]}")
    return summary(home, folder, info)


# ------------------------------------------------------------------------------ public API


def _refuse_existing(home: Home, name: str) -> None:
    folder = home.runs / name
    if (folder / runs.RUN_JSON).is_file():
        if RunInfo.load(folder).state == "finished":
            raise SearchError(f"run {name} exists and is finished; choose another --name")
        raise SearchError(
            f"run {name} exists and is unfinished; resume it with: {resume_command(home, name)}"
        )


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
    metric, mode, n_trials = opts.resolve(sp)
    # Inside a Ray Job (`ray job submit`) Ray sets RAY_ADDRESS: join that cluster, as ray.init()
    # does (a private Ray with num_cpus would fail there: ray.init refuses both at once).
    address = opts.address or os.environ.get("RAY_ADDRESS") or None
    resources = resolve_resources(
        opts.gpus, opts.gpus_per_trial, opts.cpus_per_trial, opts.concurrency, address
    )
    if address:
        check_address(address, opts.address_timeout)
    uri = opts.tracking_uri or home.tracking_uri()
    if opts.tracking:
        check_tracking_uri(uri)
    dcfg = opts.data_config(sp)
    if opts.name:
        runs.check_name(opts.name)
    name, folder = runs.new_run_folder(home, opts.name)
    lock = runs.RunLock(folder).acquire()  # refuses, naming the holder, if a driver has it
    try:
        _refuse_existing(home, name)
        if opts.tracking:
            create_store(uri)  # whole, before any step that may be killed
        save_config(
            Config(data=dcfg, finetune=opts.finetune_cfg or FinetuneConfig()),
            folder / "config.yaml",
        )
        atomic_write_text(folder / "space.yaml", yaml.safe_dump(sp.to_dict(), sort_keys=False))
        info = RunInfo(
            name=name,
            state="starting",
            host=runs.hostname(),
            created=utc_now(),
            n_trials=n_trials,
            metric=metric,
            mode=mode,
            space_path=sp.path,
            space=sp.to_dict(),
            mlflow=MlflowInfo(tracking_uri=uri if opts.tracking else None),
            ray=RayInfo(
                temp_dir=runs.ray_temp_dir(folder), address=address, driver_pid=os.getpid()
            ),
            argv=list(opts.argv if opts.argv is not None else sys.argv),
            seed=opts.seed,
            options=RunOptions(
                scheduler=opts.scheduler,
                address=address,
                address_timeout=opts.address_timeout,
                max_failures=opts.max_failures,
                resources=resources,
                concurrency=resources["concurrency"],
                model=opts.model,
                allow_other_data=opts.allow_other_data,
            ),
        )
        info.save(folder)
    except BaseException:
        lock.release()
        raise
    say(
        f"search {name}: {n_trials} trials, {resources['concurrency']} at a time, "
        f"run folder {folder}",
        opts.progress,
    )
    cfg = Config(data=dcfg, finetune=opts.finetune_cfg or FinetuneConfig())
    return _drive(home, folder, info, sp, cfg, lock, opts.progress, restore=False)


def _take_over(home: Home, folder: Path, name: str, progress: bool) -> runs.RunLock:
    """The run's lock for a resume: refused (naming the holder) while a driver runs it; an old
    driver that has stopped and is cleaning up is waited for (up to SHUTDOWN_WAIT_S)."""
    had_lock = (folder / runs.LOCK_FILE).is_file()
    lock = runs.RunLock(folder)
    try:
        lock.acquire()
    except SearchError:
        if RunInfo.load(folder).state in ("starting", "running"):
            raise
        say(f"waiting for the old driver of {name} to finish shutting down", progress)
        lock.acquire(wait=SHUTDOWN_WAIT_S)
    info = RunInfo.load(folder)
    pid = info.ray.driver_pid
    if (
        not had_lock  # a run of an older version: only its pid tells
        and info.state == "running"
        and pid
        and int(pid) != os.getpid()
        and (not info.host or info.host == runs.hostname())
        and runs.pid_alive(int(pid))
        and is_driver(int(pid))
    ):
        lock.release()
        raise SearchError(f"run {name} is still running (driver pid {pid}); stop it first")
    return lock


def resume_search(home: Home, name: str, progress: bool = True) -> dict[str, Any]:
    """Continue an interrupted or crashed search where it stopped (see the module docstring)."""
    folder = runs.find_run(home, name)
    RunInfo.load(folder)  # a broken run.json: one line naming it, before anything else
    lock = _take_over(home, folder, name, progress)
    try:
        info = RunInfo.load(folder)  # as the last driver left it
        if info.state == "finished":
            # A driver killed in its clean-up, after it recorded "finished", can leave its
            # private Ray running (benchmarks/bench_faults.py found it): stop it, by PID.
            if not info.ray.address and info.ray.temp_dir:
                killed = kill_ray_processes(str(info.ray.temp_dir))
                if killed:
                    say(f"stopped {len(killed)} leftover Ray processes of {name}: {killed}",
                        progress)  # fmt: skip
            lock.release()
            say(f"run {name} is finished ({info.n_trials} trials): nothing left to do", progress)
            return summary(home, folder, info)
        space, cfg = read_run_space(folder), read_run_config(folder)  # one-line errors
        if info.mlflow.tracking_uri:
            check_tracking_uri(info.mlflow.tracking_uri)
        temp_dir = info.ray.temp_dir or runs.ray_temp_dir(folder)
        if not info.ray.address:
            killed = kill_ray_processes(temp_dir)
            if killed:
                say(f"stopped {len(killed)} leftover Ray processes of {name}: {killed}", progress)
        info.state, info.host = "starting", runs.hostname()
        info.ray.temp_dir, info.ray.driver_pid = temp_dir, os.getpid()
        info.save(folder)
    except BaseException:
        lock.release()
        raise
    say(f"resuming search {name} ({info.n_trials} trials)", progress)
    return _drive(home, folder, info, space, cfg, lock, progress, restore=True)


__all__ = [
    "EnvironmentProblem",
    "RatioSearchError",
    "SearchOptions",
    "build_pools",
    "check_address",
    "check_tracking_uri",
    "cluster_shortfall",
    "init_ray",
    "pool_size",
    "resolve_resources",
    "resume_search",
    "run_search",
]
