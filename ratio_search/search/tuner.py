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
            # the trainer's epoch, not Tune's report count: with train.val_every > 1 a trial
            # reports every N-th epoch, and a reused measurement reports once, at the budget
            time_attr="epoch",
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


def _experiment_trials(run_dir: Path) -> list:
    """The trials of the run's Tune experiment as saved ([] when it cannot be read)."""
    from ray.tune import ExperimentAnalysis

    try:
        return list(ExperimentAnalysis(str(run_dir / "tune")).trials)
    except Exception as e:  # the bookkeeping must not fail a finished search
        logger.warning("could not read the Tune experiment: %s", e)
        return []


def _rebuild_child(tracker: Any, trial: Any, state: str, rec: dict) -> str | None:
    """The MLflow child of a finished trial, made or ended to match Tune's state; its run id."""
    status = "FINISHED" if state == "TERMINATED" else "FAILED"
    run = tracker.find_child(str(trial.trial_id))
    if run is None:
        run_id = tracker.start_child(str(trial.trial_id), tracker.full_config(trial.config or {}))
        tracker.log_epoch(run_id, int(rec.get("epoch") or 0), rec.get("metrics") or {})
    else:
        run_id = run.info.run_id
        if run.info.status == status:
            return run_id
    tracker.end_child(run_id, status)
    return run_id


def reconcile_trials(
    run_dir: Path, tracker: Any, metric: str = "val_accuracy", mode: str = "max"
) -> tuple[int, int]:
    """Make trials.jsonl (and MLflow) agree with the Tune experiment after a restore.

    - Trials a killed driver had started after its last experiment snapshot are unknown to the
      restored experiment (Tune started new trials in their place): their trials.jsonl entry is
      marked LOST and their MLflow child deleted, so that no trial is counted twice.
    - A trial the experiment has finished (TERMINATED/ERROR) whose final record is missing (the
      driver died between the two writes, or the write failed) gets it rebuilt from the trial's
      last result, and its MLflow child is ended (or made) to match.

    Returns ``(lost, rebuilt)``.
    """
    import time

    from .trials import TrialLog, trial_error

    trials = _experiment_trials(run_dir)
    if not trials:
        return 0, 0
    known = {str(t.trial_id): t for t in trials}
    lost, rebuilt = set(), 0
    for tid, rec in read_trials(run_dir).items():
        if tid not in known and rec.get("state") != "LOST":
            lost.add(tid)
            append_trial(run_dir, dict(rec, state="LOST", time=time.time()))
    log = TrialLog(run_dir, metric, mode)
    for tid, t in known.items():
        state = getattr(t, "status", None)
        if state not in ("TERMINATED", "ERROR") or log.last.get(tid, {}).get("state") == state:
            continue
        rec = log.record(t, state, getattr(t, "last_result", None) or None)
        run_id = None
        if tracker is not None:
            try:
                run_id = _rebuild_child(tracker, t, state, rec)
            except Exception as e:
                logger.warning("could not rebuild the MLflow run of trial %s: %s", tid, e)
        err = trial_error(t) if state == "ERROR" else None
        log.event(t, state, getattr(t, "last_result", None) or None, mlflow_run_id=run_id,
                  error=err, rebuilt=True)  # fmt: skip
        rebuilt += 1
    if tracker is not None:
        try:
            for run in tracker.children():
                tid = run.data.tags.get("ray_trial_id")
                if tid is not None and tid not in known:
                    lost.add(tid)
                    tracker.client.delete_run(run.info.run_id)
        except Exception as e:
            logger.warning("could not remove the MLflow runs of lost trials: %s", e)
    return len(lost), rebuilt


__all__ = ["make_trainable", "make_tuner", "reconcile_trials", "restore_or_make_tuner"]
