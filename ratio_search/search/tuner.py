"""The Ray Tune side of a search: the trainable with its resources, the Tuner (Optuna searcher,
FIFO or ASHA scheduler, checkpoints, callbacks) and the bookkeeping after a restore."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from .runinfo import RunInfo
from .space import Space
from .trainable import train_fn
from .trials import append_trial, read_trials

logger = logging.getLogger(__name__)


def make_trainable(ctx: dict[str, Any], data: Any, cpus: float, gpus: float):
    """:func:`trainable.train_fn` bound to the search's context and data, with its resources."""
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(train_fn, ctx=ctx, data=data), {"cpu": cpus, "gpu": gpus}
    )


def _max_epochs(space: Space) -> int:
    return int(max(space.choices("epochs")))


def make_tuner(run_dir: Path, info: RunInfo, space: Space, trainable, callbacks: list):
    """A new Tuner for the run: its Optuna searcher (``optuna.db``), scheduler and callbacks."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from .searcher import make_searcher

    opts = info.options
    searcher = make_searcher(space, run_dir, info.name, info.metric, info.mode, int(info.seed))
    if opts.scheduler == "asha":
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
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=int(opts.concurrency)),
            scheduler=scheduler,
            num_samples=int(info.n_trials),
            metric=info.metric,
            mode=info.mode,
            reuse_actors=True,  # a new actor per trial would re-import torch: seconds per trial
        ),
        run_config=tune.RunConfig(
            storage_path=str(run_dir),
            name="tune",
            failure_config=tune.FailureConfig(max_failures=int(opts.max_failures or 0)),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=callbacks,
            verbose=0,
        ),
    )


def restore_or_make_tuner(
    run_dir: Path, info: RunInfo, space: Space, trainable, callbacks: list, restore: bool
):
    """The restored Tuner of an interrupted run, or a new one (also when none was ever saved)."""
    from ray import tune

    tune_dir = run_dir / "tune"
    if restore and tune.Tuner.can_restore(str(tune_dir)):
        return tune.Tuner.restore(
            str(tune_dir), trainable=trainable, resume_errored=True, restart_errored=False
        )
    # A Tuner that never saved its state (stopped during the pool prebuild): start it over, and
    # its Optuna study too (else the baselines would be queued twice).
    if tune_dir.exists():
        shutil.rmtree(tune_dir)
    (run_dir / "optuna.db").unlink(missing_ok=True)
    return make_tuner(run_dir, info, space, trainable, callbacks)


def forget_lost_trials(run_dir: Path, tracker: Any) -> int:
    """Trials a killed driver had started after its last experiment snapshot are unknown to the
    restored experiment (Tune started new trials in their place). Mark their trials.jsonl entry
    LOST and delete their MLflow child run, so that no trial is counted twice. Returns how many."""
    import time

    from ray.tune import ExperimentAnalysis

    try:
        known = {t.trial_id for t in ExperimentAnalysis(str(run_dir / "tune")).trials}
    except Exception as e:  # the bookkeeping must not fail a finished search
        logger.warning("could not read the restored experiment: %s", e)
        return 0
    if not known:
        return 0
    lost = set()
    for tid, rec in read_trials(run_dir).items():
        if tid not in known and rec.get("state") != "LOST":
            lost.add(tid)
            append_trial(run_dir, dict(rec, state="LOST", time=time.time()))
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


__all__ = ["forget_lost_trials", "make_trainable", "make_tuner", "restore_or_make_tuner"]
