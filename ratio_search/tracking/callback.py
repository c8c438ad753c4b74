"""The Ray Tune callback (driver side) that writes each trial to a nested MLflow run and, through
:class:`ratio_search.search.trials.TrialLog`, to trials.jsonl."""

from __future__ import annotations

import json
import warnings
from typing import Any

from ray.tune import Callback

from ..search.sysmetrics import RESULT_KEY as SYSTEM_KEY
from ..search.trials import RESULT_TAGS, TrialLog, result_epoch, result_metrics, trial_error
from .mlflow import SearchTracker


def system_metrics(result: dict) -> dict[str, float]:
    """The trial's sampled system metrics (``result["system"]``) under MLflow's ``system/`` names."""
    sampled = result.get(SYSTEM_KEY)
    if not isinstance(sampled, dict):
        return {}
    return {f"system/{k}": v for k, v in sampled.items() if isinstance(v, int | float)}


class MLflowTrialCallback(Callback):
    """A Ray Tune callback (driver side) writing each trial to a nested MLflow run and trials.jsonl.

    Params: the trial's complete config (r, guidance, steps, mode, filter_top, finetune_steps,
    synthetic_classes, arch, seed, ...: its Tune config plus the space's fixed values and
    defaults, from run.json). Metrics: every numeric value of a result, at
    ``step = result["epoch"]``. Tags: ``ray_trial_id``, ``pool_key`` (comma-joined, one pool per
    class), ``pool_keys`` (json {class: key}), ``model_hash``, ``node_id``; each pool is a
    dataset input of the run. A ``confusion_matrix`` (JSON string) in a result becomes the
    artifacts ``confusion_matrix.json`` and ``.png``. Finished trials end FINISHED, errors FAILED.

    Tracking failures are logged as warnings and do not stop the search (``strict=True``, for
    tests, re-raises them); the trials.jsonl line is written either way.
    """

    def __init__(self, tracker: SearchTracker, *, strict: bool = False) -> None:
        self.tracker = tracker
        self.strict = strict
        self.errors = 0
        self._runs: dict[str, str] = {}  # trial_id -> child run id
        self._checked: set[str] = set()  # trials whose first epoch since (re)start was checked
        self._cm: dict[str, tuple[Any, Any]] = {}  # trial_id -> last (confusion matrix, classes)
        self._inputs: set[tuple[str, str]] = set()  # (run id, "data" or pool key) logged
        # After a restore it holds each trial's best epoch and last metrics from the old driver.
        self.log = TrialLog(tracker.run_dir, tracker.metric, tracker.mode)

    # -- Tune hooks

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = str(trial.trial_id)
        self._checked.discard(tid)
        self._guard(lambda: self._ensure_run(trial))
        self._event(trial, "RUNNING")

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._checked.discard(str(trial.trial_id))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Tune retries a failed trial from its last checkpoint: the same run carries on.
        self._checked.discard(str(trial.trial_id))
        # a lost node: each retry is counted on the trial's one run
        err = trial_error(trial)
        self._guard(lambda: self._record_attempt(trial, err))
        self._event(trial, "RUNNING", error=err)

    def _record_attempt(self, trial: Any, err: str | None) -> None:
        """Tags ``attempts`` (2 on the first retry) and ``attempt_<n>_error`` (why it failed)."""
        run_id = self._ensure_run(trial)
        n = int(self.tracker.client.get_run(run_id).data.tags.get("attempts", "1")) + 1
        why = (err or "unknown").strip().splitlines()
        self.tracker.set_tags(
            run_id, {"attempts": n, f"attempt_{n - 1}_error": why[-1][:500] if why else "?"}
        )

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        epoch, metrics = result_epoch(result), result_metrics(result)
        self._guard(lambda: self._log_result(trial, epoch, metrics, result))
        self._event(trial, "RUNNING", result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._guard(lambda: self._end(trial, "FINISHED"))
        self._event(trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        err = trial_error(trial)

        def end() -> None:
            run_id = self._ensure_run(trial)
            if err:
                self.tracker.set_tags(run_id, {"error": err[:5000]})
                self.tracker.client.log_text(run_id, err, "error.txt")
            self._end(trial, "FAILED")

        self._guard(end)
        self._event(trial, "ERROR", error=err)

    # -- internals

    def _guard(self, fn) -> None:
        try:
            fn()
        except Exception as e:  # tracking must not end a search of many hours
            if self.strict:
                raise
            self.errors += 1
            warnings.warn(f"MLflow tracking failed: {type(e).__name__}: {e}", stacklevel=2)

    def _ensure_run(self, trial: Any) -> str:
        tid = str(trial.trial_id)
        if tid not in self._runs:
            config = self.tracker.full_config(getattr(trial, "config", {}) or {})
            self._runs[tid] = self.tracker.start_child(tid, config)
        self._log_inputs(trial, self._runs[tid])
        return self._runs[tid]

    def _log_inputs(self, trial: Any, run_id: str, pool_key: str | None = None) -> None:
        """The trial's datasets on its run, once each: the real data, and its pool at R > 0."""
        what = pool_key or "data"
        if (run_id, what) in self._inputs:
            return
        self._inputs.add((run_id, what))
        config = self.tracker.full_config(getattr(trial, "config", {}) or {})
        if pool_key and not float(config.get("r") or 0.0) > 0.0:
            return
        self.tracker.log_inputs(run_id, pool_key, config)

    def _log_result(self, trial: Any, epoch: int, metrics: dict, result: dict) -> None:
        tid = str(trial.trial_id)
        run_id = self._ensure_run(trial)
        if tid not in self._checked:
            # First epoch since this trial (re)started: if it restarts at or before an epoch that
            # is already logged, start the run over from that epoch (no doubled history).
            self._checked.add(tid)
            last = self.tracker.client.get_run(run_id).data.tags.get("last_epoch")
            if last is not None and epoch <= int(last):
                run_id = self.tracker.replace_child(run_id, keep_below_step=epoch)
                self._runs[tid] = run_id
                self._log_inputs(trial, run_id)
        for key in str(result.get("pool_key") or "").split(","):  # one pool per class
            if key:
                self._log_inputs(trial, run_id, key)
        tags = {k: result.get(k) for k in RESULT_TAGS}
        tags["last_epoch"] = epoch
        self.tracker.log_epoch(run_id, epoch, {**metrics, **system_metrics(result)}, tags)
        if result.get("confusion_matrix"):
            # Kept until the trial ends: drawing a PNG every epoch would slow the driver down.
            self._cm[tid] = (result["confusion_matrix"], result.get("class_names"))

    def _end(self, trial: Any, status: str) -> None:
        run_id = self._ensure_run(trial)
        cm, names = self._cm.pop(str(trial.trial_id), (None, None))
        if cm:
            cm = json.loads(cm) if isinstance(cm, str) else cm
            names = json.loads(names) if isinstance(names, str) else names
            self.tracker.log_confusion_matrix(run_id, cm, names)
        self.tracker.end_child(run_id, status)
        self.tracker.update_best()

    def _event(self, trial: Any, state: str, result: dict | None = None, **extra: Any) -> None:
        """Append one line to trials.jsonl (the previous line's metrics carried forward)."""
        if self.tracker.run_dir is None:
            return
        run_id = self._runs.get(str(trial.trial_id))
        try:
            self.log.event(trial, state, result, mlflow_run_id=run_id, **extra)
        except OSError as e:
            if self.strict:
                raise
            warnings.warn(f"could not append to {self.tracker.trials_jsonl}: {e}", stacklevel=2)
