"""The search driver: data, model and pools first, then a Ray Tune ``Tuner`` with Optuna's TPE.

One process (the driver) owns the run folder: it writes run.json, the Optuna study
(``optuna.db``), the Tune experiment (``tune/``) and, through the tracking callback, MLflow and
``trials.jsonl``. Trials run in Ray workers and only report metrics and checkpoints back.

Resuming (``resume_search``) restores the Tune experiment (trials, checkpoints, the searcher's
state and with it the Optuna study) after Ctrl-C, a crash or a SIGKILL: leftover Ray processes of
the run are killed by PID first, stale MLflow runs are closed, and the search goes on until it has
exactly the number of trials it was asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, DataConfig, FinetuneConfig, config_from_dict, save_config
from ..errors import ConfigError, ModelError, RatioSearchError, SearchError
from ..home import Home
from ..mixing import synthetic_needed
from ..space import METRICS, Space, load_space, parse_space
from . import runs
from .procs import find_ray_processes, kill_ray_processes
from .trainable import train_fn

logger = logging.getLogger(__name__)

SCHEDULERS = ("fifo", "asha")

# With CheckpointConfig(num_to_keep=1) Tune snapshots the experiment after every trial checkpoint,
# so that a crash never leaves the experiment state pointing at a deleted checkpoint. That is what
# we want; Tune's warning about frequent snapshots would only be noise on every small search.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# Tune's new console output prints an experiment box and result paths even at verbose=0; our
# progress lines (callbacks.ProgressCallback) replace it, and the legacy reporter honours verbose=0.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


# ----------------------------------------------------------------------------- small helpers


def _say(progress: bool, msg: str) -> None:
    """Progress goes to stderr, so that ``--json`` keeps stdout to one JSON object."""
    if progress:
        print(msg, file=sys.stderr, flush=True)


def cuda_device_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # a broken CUDA install counts as none
        return 0


def resolve_resources(
    gpus: int | None,
    gpus_per_trial: float | None,
    cpus_per_trial: float | None,
    concurrency: int | None,
    address: str | None,
) -> dict[str, Any]:
    """Check the asked-for GPUs exist (locally) and fill in the defaults.

    Without ``address``: ``gpus`` must not exceed ``torch.cuda.device_count()`` (ConfigError).
    Defaults: all local GPUs; ``gpus_per_trial`` 1 with GPUs else 0; ``cpus_per_trial`` 1;
    ``concurrency`` = how many trials fit at once (at most 2 on a machine without GPUs).
    """
    ncpu = os.cpu_count() or 1
    if gpus is not None and gpus < 0:
        raise ConfigError(f"--gpus: must be >= 0, got {gpus}")
    if address is None:
        have = cuda_device_count()
        if gpus is not None and gpus > have:
            raise ConfigError(f"--gpus {gpus} asked for, this machine has {have} CUDA devices")
        if gpus is None:
            gpus = have
    gpus = int(gpus or 0)
    if gpus_per_trial is None:
        gpus_per_trial = 1.0 if gpus > 0 else 0.0
    if gpus_per_trial < 0 or (gpus_per_trial > 0 and gpus == 0 and address is None):
        raise ConfigError(f"--gpus-per-trial {gpus_per_trial:g} needs --gpus > 0 (have {gpus})")
    if gpus_per_trial > max(gpus, 1) and address is None:
        raise ConfigError(f"--gpus-per-trial {gpus_per_trial:g} is more than --gpus {gpus}")
    if cpus_per_trial is None:
        cpus_per_trial = 1.0
    if cpus_per_trial <= 0:
        raise ConfigError(f"--cpus-per-trial: must be > 0, got {cpus_per_trial:g}")
    if concurrency is None:
        fits = [max(1, int(ncpu // cpus_per_trial))]
        if gpus_per_trial > 0 and gpus > 0:
            fits.append(max(1, int(gpus / gpus_per_trial + 1e-9)))
        else:
            fits.append(2)
        concurrency = min(fits)
    if concurrency < 1:
        raise ConfigError(f"--concurrency: must be >= 1, got {concurrency}")
    return {
        "gpus": gpus,
        "gpus_per_trial": float(gpus_per_trial),
        "cpus_per_trial": float(cpus_per_trial),
        "concurrency": int(concurrency),
        "num_cpus": ncpu,
    }


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when a ``host:port`` Ray address does not answer."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SearchError(f"--address {address!r}: expected HOST:PORT (or ray://HOST:PORT, auto)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise SearchError(f"cannot reach the Ray cluster at {address}: {e}") from None


def init_ray(
    temp_dir: str, address: str | None, num_cpus: int, num_gpus: int, timeout: float = 5.0
) -> None:
    """Start a private local Ray (own temp dir, no dashboard) or join ``address``."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    if address:
        check_address(address, timeout)
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except Exception as e:  # a wrong port that accepts TCP, a version mismatch...
            raise SearchError(f"cannot join the Ray cluster at {address}: {e}") from None
        return
    ray.init(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        _temp_dir=temp_dir,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )


def cluster_shortfall(res: dict[str, Any], nodes: list[dict[str, Any]]) -> str | None:
    """What a joined cluster lacks for this search, or None: more ``--gpus`` than it has, or one
    trial (``--cpus-per-trial`` + ``--gpus-per-trial``) bigger than every node. ``nodes``: the
    ``Resources`` dicts of its live nodes (``ray.nodes()``)."""
    total = sum(float(n.get("GPU", 0)) for n in nodes)
    if res["gpus"] > total + 1e-9:
        return f"--gpus {res['gpus']} asked for, the Ray cluster has {total:g} GPUs"
    cpu, gpu = res["cpus_per_trial"], res["gpus_per_trial"]
    if not any(float(n.get("CPU", 0)) >= cpu and float(n.get("GPU", 0)) >= gpu for n in nodes):
        sizes = ", ".join(f"{n.get('CPU', 0):g} CPU + {n.get('GPU', 0):g} GPU" for n in nodes)
        return f"one trial needs {cpu:g} CPU + {gpu:g} GPU and no node has that ({sizes})"
    return None


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


# ------------------------------------------------------------------------ data, model, pools


def _load_data(data_cfg: DataConfig, home: Home):
    from ..data import load_dataset

    return load_dataset(data_cfg, home)


def _model_for(
    model: str | None,
    data: Any,
    home: Home,
    finetune_cfg: FinetuneConfig | None,
    progress: bool,
    tracking_uri: str | None,
) -> tuple[str, dict[str, Any]]:
    """Path and meta.json of the generator: ``model`` (a folder), or the newest model fine-tuned
    on this data ("latest"/None), fine-tuning one now if there is none."""
    from ..diffusion import finetune, load_model
    from ..diffusion.common import list_models, read_meta

    if model not in (None, "latest"):
        m = load_model(model, home)
        path = str(m.path)
    else:
        found = list_models(home, data.key)
        if found:
            path = str(found[-1])
        else:
            _say(
                progress,
                f"no fine-tuned model for data {data.key} yet: fine-tuning one (the upfront job)",
            )
            cfg = finetune_cfg or FinetuneConfig()
            t0 = time.time()
            info = finetune(data, cfg, home, progress=progress)
            path = str(info.path)
            if tracking_uri:
                try:
                    from ..tracking import log_job

                    log_job(
                        "finetune",
                        params=dataclasses.asdict(cfg),
                        metrics={"seconds": time.time() - t0},
                        tracking_uri=tracking_uri,
                        tags={"model_hash": info.hash, "data_key": data.key},
                    )
                except Exception as e:  # tracking never blocks the search
                    logger.warning("could not log the fine-tune to MLflow: %s", e)
    meta = read_meta(Path(path))
    if int(meta["image_size"]) != data.image_size or int(meta["channels"]) != data.channels:
        raise ModelError(
            f"model {path} makes {meta['channels']}x{meta['image_size']}px images, the data is "
            f"{data.channels}x{data.image_size}px; fine-tune a model on this data"
        )
    return path, meta


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
    from .trainable import LazyModel, generate_config

    grid = space.pool_grid()
    if not grid:
        return []
    syn = int(data.synthetic_label)
    seed = int(space.fixed.get("pool_seed", 0))
    needs_ref = any(c["postprocess"] == "histogram-match" for c in grid)
    reference = data.train_x[data.train_y == syn] if needs_ref else None
    results: list[dict[str, Any]] = []
    t0 = time.time()
    if gpus > 0:
        import ray

        task = ray.remote(num_gpus=1)(pools.build_one)
        refs = []
        for c in grid:
            gen = dataclasses.asdict(generate_config(dict(c, pool_seed=seed), n, "auto"))
            ref = reference if c["postprocess"] == "histogram-match" else None
            refs.append(task.remote(str(home.root), model_path, gen, n, ref, syn, False))
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            r = ray.get(ready[0])
            results.append(r)
            _say(
                progress,
                f"pool {len(results)}/{len(grid)} guidance={r['guidance']:g} steps={r['steps']}: "
                f"{'generated' if r['generated'] else 'cached'} ({r['seconds']:.1f} s)",
            )
    else:
        model = LazyModel(model_path, model_meta)
        for c in grid:
            gen = generate_config(dict(c, pool_seed=seed), n, "auto")
            ref = reference if c["postprocess"] == "histogram-match" else None
            r = pools.build_one(home, model, gen, n, ref, syn, progress=False)
            results.append(r)
            _say(
                progress,
                f"pool {len(results)}/{len(grid)} guidance={r['guidance']:g} steps={r['steps']}: "
                f"{'generated' if r['generated'] else 'cached'} ({r['seconds']:.1f} s)",
            )
    made = sum(1 for r in results if r["generated"])
    _say(progress, f"pools ready: {len(results)} ({made} generated) in {time.time() - t0:.1f} s")
    return results


# ------------------------------------------------------------------------------- the Tuner


def _trainable(ctx: dict[str, Any], data: Any, cpus: float, gpus: float):
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(train_fn, ctx=ctx, data=data), {"cpu": cpus, "gpu": gpus}
    )


def _max_epochs(space: Space) -> int:
    return int(max(space.choices("epochs")))


def _make_tuner(run_dir: Path, info: dict[str, Any], space: Space, trainable, callbacks: list):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from .searcher import make_searcher

    opts = info["options"]
    searcher = make_searcher(
        space, run_dir, info["name"], info["metric"], info["mode"], int(info["seed"])
    )
    if opts["scheduler"] == "asha":
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=_max_epochs(space),
            grace_period=min(int(space.search["grace_period"]), _max_epochs(space)),
            reduction_factor=3,
        )
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        param_space=dict(space.fixed),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=int(opts["concurrency"])),
            scheduler=scheduler,
            num_samples=int(info["n_trials"]),
            metric=info["metric"],
            mode=info["mode"],
            reuse_actors=True,  # a new actor per trial would re-import torch: seconds per trial
        ),
        run_config=tune.RunConfig(
            storage_path=str(run_dir),
            name="tune",
            failure_config=tune.FailureConfig(max_failures=int(opts.get("max_failures", 0))),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=callbacks,
            verbose=0,
        ),
    )


def resume_command(home: Home, name: str) -> str:
    """The exact command that resumes this run."""
    here = Path(os.getcwd()).resolve()
    env_home = os.environ.get("RATIO_SEARCH_HOME")
    if home.root == here or (env_home and Path(env_home).resolve() == home.root):
        return f"ratio-search resume {name}"
    return f"ratio-search resume {name} --home {home.root}"


def _summary(home: Home, run_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    st = runs.run_status(home, info["name"])
    best = st["best"]
    if best is not None:
        keys = (
            "r",
            "guidance",
            "steps",
            "scheduler",
            "postprocess",
            "mode",
            "lr",
            "batch_size",
            "epochs",
            "seed",
        )
        best = {
            "trial_id": best["trial_id"],
            "params": {k: best["params"][k] for k in keys if k in (best["params"] or {})},
            "metric": best["metric"],
        }
    out = {
        "name": info["name"],
        "run_dir": str(run_dir),
        "state": info["state"],
        "metric": info["metric"],
        "mode": info["mode"],
        "best": best,
        "n_trials": st["done"],
        "n_trials_asked": info["n_trials"],
        "n_errors": st["counts"].get("ERROR", 0),
        "mlflow_parent_run_id": (info.get("mlflow") or {}).get("parent_run_id"),
        "tracking_uri": (info.get("mlflow") or {}).get("tracking_uri"),
    }
    if info["state"] == "interrupted":
        out["resume_command"] = resume_command(home, info["name"])
    return out


def _forget_lost_trials(run_dir: Path, tracker: Any) -> int:
    """Trials a killed driver had started after its last experiment snapshot are unknown to the
    restored experiment (Tune started new trials in their place). Mark their trials.jsonl entry
    LOST and delete their MLflow child run, so that no trial is counted twice. Returns how many."""
    from ray.tune import ExperimentAnalysis

    try:
        known = {t.trial_id for t in ExperimentAnalysis(str(run_dir / "tune")).trials}
    except Exception as e:  # the bookkeeping must not fail a finished search
        logger.warning("could not read the restored experiment: %s", e)
        return 0
    if not known:
        return 0
    lost = set()
    for tid, rec in runs.read_trials(run_dir).items():
        if tid not in known and rec.get("state") != "LOST":
            lost.add(tid)
            runs.append_trial_line(run_dir, dict(rec, state="LOST", time=time.time()))
    if tracker is not None:
        try:
            for run in tracker.children():
                tid = run.data.tags.get("ray_trial_id")
                if tid is not None and tid not in known:
                    lost.add(tid)
                    tracker.client.delete_run(run.info.run_id)
        except Exception as e:
            logger.warning("could not remove the MLflow runs of lost trials: %s", e)
    return len(lost)


def _fit(
    home: Home,
    run_dir: Path,
    info: dict[str, Any],
    space: Space,
    data: Any,
    tracker: Any,
    progress: bool,
    restore: bool,
) -> dict[str, Any]:
    """Start (or restore) Ray and the Tuner, run until done or interrupted, record the outcome."""
    import ray
    from ray import tune

    # Tune logs where its results are and how to open TensorBoard at INFO: not our interface.
    for logger_name in ("ray.tune", "ray.train"):
        logging.getLogger(logger_name).setLevel(logging.WARNING)
    opts = info["options"]
    res = opts["resources"]
    temp_dir = info["ray"]["temp_dir"]
    status = "failed"
    old_term = signal.getsignal(signal.SIGTERM)
    try:
        init_ray(
            temp_dir,
            opts.get("address"),
            res["num_cpus"],
            res["gpus"],
            opts.get("address_timeout", 5.0),
        )
        if opts.get("address"):
            # Ray waits, silently, for resources a cluster lacks; say so. A warning, not an
            # error: an autoscaling cluster adds the nodes a pending request asks for.
            short = cluster_shortfall(res, [n["Resources"] for n in ray.nodes() if n["Alive"]])
            if short:
                _say(True, f"warning: {short}; the search waits until the cluster has them")
        if info.get("model_path") and not info.get("pools_built"):
            build_pools(
                home,
                space,
                data,
                info["model_path"],
                info["model_meta"],
                info["pool_n"],
                res["gpus"],
                progress,
            )
            info["pools_built"] = True
            runs.write_run_json(run_dir, info)
        ctx = {
            "home": str(home.root),
            "space": space.to_dict(),
            "pool_n": info["pool_n"],
            "model_path": info.get("model_path"),
            "model_meta": info.get("model_meta"),
        }
        trainable = _trainable(ctx, data, res["cpus_per_trial"], res["gpus_per_trial"])
        from .callbacks import make_callbacks

        callbacks = make_callbacks(run_dir, info, progress, tracker is not None)
        tune_dir = run_dir / "tune"
        if restore and tune.Tuner.can_restore(str(tune_dir)):
            tuner = tune.Tuner.restore(
                str(tune_dir), trainable=trainable, resume_errored=True, restart_errored=False
            )
        else:
            # A Tuner that never saved its state (stopped during the pool prebuild): start it
            # over, and its Optuna study too (else the baselines would be queued twice).
            if tune_dir.exists():
                shutil.rmtree(tune_dir)
            (run_dir / "optuna.db").unlink(missing_ok=True)
            tuner = _make_tuner(run_dir, info, space, trainable, callbacks)
        # SIGTERM (kill PID) stops like Ctrl-C: Tune saves its state and returns.
        if hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGUSR1))
        # Tune prints an experiment box on stdout whatever its verbosity; stdout is for our one
        # JSON object (--json), so everything Ray prints goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            tuner.fit()
        if restore:
            _forget_lost_trials(run_dir, tracker)
        trials = runs.read_trials(run_dir)
        done = sum(1 for t in trials.values() if t.get("state") in ("TERMINATED", "ERROR"))
        status = "finished" if done >= int(info["n_trials"]) else "interrupted"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        signal.signal(signal.SIGTERM, old_term)
        info["state"] = status
        runs.write_run_json(run_dir, info)
        if tracker is not None:
            try:
                tracker.finish_parent(
                    {"finished": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
                )
            except Exception as e:
                logger.warning("could not close the MLflow parent run: %s", e)
        if ray.is_initialized():
            ray.shutdown()
        if not opts.get("address"):
            left = find_ray_processes(temp_dir)
            if left:
                kill_ray_processes(temp_dir)
            if status == "finished":
                shutil.rmtree(temp_dir, ignore_errors=True)
        if status == "interrupted":
            _say(True, f"search interrupted; resume it with: {resume_command(home, info['name'])}")
    return _summary(home, run_dir, info)


# ------------------------------------------------------------------------------ public API


def run_search(
    home: Home,
    name: str | None = None,
    space: str | os.PathLike | Space = "default",
    n_trials: int | None = None,
    gpus: int | None = None,
    gpus_per_trial: float | None = None,
    cpus_per_trial: float | None = None,
    concurrency: int | None = None,
    scheduler: str = "fifo",
    metric: str | None = None,
    seed: int = 0,
    address: str | None = None,
    tracking_uri: str | None = None,
    data_cfg: DataConfig | None = None,
    model: str | None = "latest",
    progress: bool = True,
    *,
    data_overrides: dict[str, Any] | None = None,
    finetune_cfg: FinetuneConfig | None = None,
    tracking: bool = True,
    max_failures: int = 0,
    address_timeout: float = 5.0,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Run a search; returns ``{name, run_dir, state, best {params, metric}, n_trials,
    mlflow_parent_run_id, ...}``.

    ``space``: a path, a bundled name or a :class:`Space`. ``data_cfg``: the base data config
    (defaults, or ``--config``), then the space's ``data:`` block, then ``data_overrides`` (the
    command line). ``model``: a model folder, or "latest" / None for the newest model fine-tuned
    on this data (fine-tuned now if there is none). ``tracking``: MLflow on (default) or off.
    """
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"--scheduler: {scheduler!r} is not one of: {', '.join(SCHEDULERS)}")
    sp = space if isinstance(space, Space) else load_space(space)
    if metric is not None and metric not in METRICS:
        raise ConfigError(f"--metric: unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
    metric = metric or sp.metric
    mode = sp.mode if metric == sp.metric else METRICS[metric]
    n_trials = int(n_trials or sp.default_trials())
    if n_trials < 1:
        raise ConfigError(f"--trials: must be >= 1, got {n_trials}")
    # Inside a Ray Job (`ray job submit`) Ray sets RAY_ADDRESS: join that cluster, as ray.init()
    # does (a private Ray with num_cpus would fail there: ray.init refuses both at once).
    address = address or os.environ.get("RAY_ADDRESS") or None
    resources = resolve_resources(gpus, gpus_per_trial, cpus_per_trial, concurrency, address)
    if address:
        check_address(address, address_timeout)
    name = runs.check_name(name or runs.default_name())
    folder = home.runs / name
    if (folder / runs.RUN_JSON).is_file():
        state = runs.read_run_json(folder).get("state")
        if state == "finished":
            raise SearchError(f"run {name} exists and is finished; choose another --name")
        raise SearchError(
            f"run {name} exists and is unfinished; resume it with: {resume_command(home, name)}"
        )

    # data: defaults/--config, then the space's data: block, then the command line
    dcfg = sp.data_config(data_cfg)
    if data_overrides:
        cfg = Config(data=dcfg)
        from ..config import _apply

        _apply(cfg, {"data": dict(data_overrides)}, "command line")
        dcfg = cfg.data
    data = _load_data(dcfg, home)
    uri = tracking_uri or home.tracking_uri()
    model_path, model_meta = None, None
    if sp.pool_grid():
        model_path, model_meta = _model_for(
            model, data, home, finetune_cfg, progress, uri if tracking else None
        )

    folder.mkdir(parents=True, exist_ok=True)
    save_config(
        Config(data=dcfg, finetune=finetune_cfg or FinetuneConfig()), folder / "config.yaml"
    )
    (folder / "space.yaml").write_text(yaml.safe_dump(sp.to_dict(), sort_keys=False))
    info: dict[str, Any] = {
        "name": name,
        "state": "running",
        "created": runs.now_iso(),
        "n_trials": n_trials,
        "metric": metric,
        "mode": mode,
        "space_path": sp.path,
        "space": sp.to_dict(),
        "data_key": data.key,
        "model_hash": (model_meta or {}).get("model_hash"),
        "model_path": model_path,
        "model_meta": model_meta,
        "pool_n": pool_size(sp, data) if model_path else 0,
        "mlflow": {
            "tracking_uri": uri if tracking else None,
            "experiment_id": None,
            "parent_run_id": None,
        },
        "ray": {
            "temp_dir": runs.ray_temp_dir(folder),
            "address": address,
            "driver_pid": os.getpid(),
        },
        "argv": argv if argv is not None else sys.argv,
        "seed": seed,
        "options": {
            "scheduler": scheduler,
            "address": address,
            "address_timeout": address_timeout,
            "max_failures": max_failures,
            "resources": resources,
            "concurrency": resources["concurrency"],
        },
    }
    runs.write_run_json(folder, info)
    tracker = None
    if tracking:
        from .. import tracking as tr

        tracker = tr.SearchTracker(uri, tr.EXPERIMENT_NAME, folder, metric=metric, mode=mode)
        params = {
            "n_trials": n_trials,
            "metric": metric,
            "mode": mode,
            "scheduler": scheduler,
            "seed": seed,
            "data_key": data.key,
            "model_hash": info["model_hash"],
            "concurrency": resources["concurrency"],
            "gpus": resources["gpus"],
            "gpus_per_trial": resources["gpus_per_trial"],
        }
        parent = tracker.start_parent(name, params, [folder / "space.yaml", folder / "config.yaml"])
        info["mlflow"].update(experiment_id=tracker.experiment_id, parent_run_id=parent)
        runs.write_run_json(folder, info)
    _say(
        progress,
        f"search {name}: {n_trials} trials, {resources['concurrency']} at a time, run folder {folder}",
    )
    return _fit(home, folder, info, sp, data, tracker, progress, restore=False)


def resume_search(home: Home, name: str, progress: bool = True) -> dict[str, Any]:
    """Continue an interrupted or crashed search where it stopped (see the module docstring)."""
    folder = runs.find_run(home, name)
    info = runs.read_run_json(folder)
    state = info.get("state")
    if state == "finished":
        raise SearchError(
            f"run {name} is finished ({info.get('n_trials')} trials); see: ratio-search status {name}"
        )
    pid = (info.get("ray") or {}).get("driver_pid")
    if (
        state == "running"
        and pid
        and int(pid) != os.getpid()
        and runs.pid_alive(int(pid))
        and _is_driver(int(pid))
    ):
        raise SearchError(f"run {name} is still running (driver pid {pid}); stop it first")
    temp_dir = (info.get("ray") or {}).get("temp_dir") or runs.ray_temp_dir(folder)
    if not (info.get("ray") or {}).get("address"):
        killed = kill_ray_processes(temp_dir)
        if killed:
            _say(progress, f"stopped {len(killed)} leftover Ray processes of {name}: {killed}")

    space = parse_space(
        yaml.safe_load((folder / "space.yaml").read_text()), origin=str(folder / "space.yaml")
    )
    cfg = config_from_dict(yaml.safe_load((folder / "config.yaml").read_text()))
    data = _load_data(cfg.data, home)
    if data.key != info.get("data_key"):
        raise SearchError(
            f"the data of run {name} changed (key {info.get('data_key')} -> {data.key}); "
            "a resumed search must see the same data"
        )
    if info.get("model_path") and not Path(info["model_path"]).is_dir():
        raise ModelError(f"the generator of run {name} is gone: {info['model_path']}")

    info["state"] = "running"
    info["ray"] = dict(info.get("ray") or {}, temp_dir=temp_dir, driver_pid=os.getpid())
    runs.write_run_json(folder, info)
    tracker = None
    ml = info.get("mlflow") or {}
    if ml.get("tracking_uri") and ml.get("parent_run_id"):
        from .. import tracking as tr

        tracker = tr.SearchTracker(
            ml["tracking_uri"], tr.EXPERIMENT_NAME, folder, metric=info["metric"], mode=info["mode"]
        )
        tracker.resume_parent(ml["parent_run_id"])
        closed = tracker.close_stale_runs(ml["parent_run_id"])
        if closed:
            _say(progress, f"closed {closed} MLflow runs the interrupted driver left RUNNING")
    _say(progress, f"resuming search {name} ({info['n_trials']} trials)")
    return _fit(home, folder, info, space, data, tracker, progress, restore=True)


def _is_driver(pid: int) -> bool:
    """Whether ``pid`` looks like a ratio-search / python driver (not a recycled pid)."""
    try:
        cmd = (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return False
    return "python" in cmd or "ratio-search" in cmd or "ratio_search" in cmd


__all__ = ["RatioSearchError", "resume_search", "run_search"]
