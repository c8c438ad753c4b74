"""The driver-side Tune callbacks: tracking (MLflow + trials.jsonl) and a one-line-per-trial
progress printer.

Module-level classes that pickle as plain data: Tune stores its callbacks in ``tuner.pkl`` and
uses those copies after a restore, when they rebuild their MLflow client and take over the same
parent run (child runs are found by their ``ray_trial_id`` tag, so none is doubled).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune import Callback

from .._io import is_number
from ..errors import SearchError
from .procs import kill_point
from .progress import say
from .runinfo import RunInfo
from .trials import TrialLog, read_trials, trial_error

_HOOKS = (
    "on_trial_start",
    "on_trial_restore",
    "on_trial_recover",
    "on_trial_result",
    "on_trial_complete",
    "on_trial_error",
)


class TrackingCallback(Callback):
    """Delegates to ``tracking.MLflowTrialCallback`` (built on first use), or, without a tracking
    URI, to :class:`JsonlCallback` (trials.jsonl only)."""

    def __init__(
        self, run_dir: str, tracking_uri: str | None = None, parent_run_id: str | None = None
    ) -> None:
        self.run_dir = str(run_dir)
        self.tracking_uri = tracking_uri
        self.parent_run_id = parent_run_id
        self._inner: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {
            "run_dir": self.run_dir,
            "tracking_uri": self.tracking_uri,
            "parent_run_id": self.parent_run_id,
            "_inner": None,
        }

    def inner(self) -> Any:
        if self._inner is None:
            if self.tracking_uri and self.parent_run_id:
                from .. import tracking as tr

                tracker = tr.SearchTracker(self.tracking_uri, tr.EXPERIMENT_NAME, self.run_dir)
                tracker.resume_parent(self.parent_run_id)
                self._inner = tr.MLflowTrialCallback(tracker)
            else:
                self._inner = JsonlCallback(self.run_dir)
        return self._inner

    def on_trial_start(self, *a: Any, **k: Any) -> None:
        self.inner().on_trial_start(*a, **k)
        kill_point("trial")  # fault injection (tests, bench_faults); a no-op otherwise

    def on_trial_restore(self, *a: Any, **k: Any) -> None:
        self.inner().on_trial_restore(*a, **k)

    def on_trial_recover(self, *a: Any, **k: Any) -> None:
        self.inner().on_trial_recover(*a, **k)

    def on_trial_result(self, *a: Any, **k: Any) -> None:
        self.inner().on_trial_result(*a, **k)

    def on_trial_complete(self, *a: Any, **k: Any) -> None:
        self.inner().on_trial_complete(*a, **k)
        kill_point("between")

    def on_trial_error(self, *a: Any, **k: Any) -> None:
        self.inner().on_trial_error(*a, **k)


class JsonlCallback(Callback):
    """trials.jsonl without MLflow (``--no-tracking``, and the benchmark's Tune-only arm)."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = str(run_dir)
        try:
            info = RunInfo.load(run_dir)
            metric, mode = info.metric, info.mode
        except SearchError:  # no run.json (a bare folder): the default objective
            metric, mode = "val_accuracy", "max"
        self.log = TrialLog(run_dir, metric, mode)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.log.event(trial, "RUNNING")

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self.log.event(trial, "RUNNING", result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.log.event(trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.log.event(trial, "ERROR", error=trial_error(trial))


class ProgressCallback(Callback):
    """One line per finished trial on stderr: its sampled params, its metric, the best so far."""

    def __init__(
        self, run_dir: str, metric: str, mode: str, n_trials: int, keys: list[str]
    ) -> None:
        self.run_dir = str(run_dir)
        self.metric, self.mode, self.n_trials, self.keys = metric, mode, n_trials, keys
        self.best: float | None = None
        self.last: dict[str, dict[str, Any]] = {}
        self.done = -1  # counted from trials.jsonl on first use (a restore continues the count)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self.last[trial.trial_id] = {k: result.get(k) for k in (self.metric, "epoch")}

    def _line(self, trial: Any, what: str) -> None:
        if self.done < 0:
            recs = read_trials(Path(self.run_dir)).values()
            # this trial's own final line may already be there (the tracking callback runs first)
            self.done = sum(
                1
                for t in recs
                if t.get("state") in ("TERMINATED", "ERROR") and t.get("trial_id") != trial.trial_id
            )
        self.done += 1
        v = self.last.get(trial.trial_id, {}).get(self.metric)
        if v is None:  # restored after its last epoch: no new result, its metric is on file
            rec = read_trials(Path(self.run_dir)).get(str(trial.trial_id), {})
            v = (rec.get("metrics") or {}).get(self.metric)
        if what == "done" and is_number(v):
            if self.best is None or (v > self.best if self.mode == "max" else v < self.best):
                self.best = v
        cfg = getattr(trial, "config", {}) or {}
        params = " ".join(f"{k}={cfg[k]}" for k in self.keys if k in cfg)
        val = f"{self.metric}={v:.4f}" if isinstance(v, float) else ""
        best = f"(best {self.best:.4f})" if self.best is not None else ""
        say(f"trial {self.done}/{self.n_trials} {what}: {params} {val} {best}".rstrip())

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, "done")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, "FAILED")


def make_callbacks(run_dir: Path, info: RunInfo, progress: bool, tracking: bool) -> list:
    """Tracking (MLflow + trials.jsonl, or trials.jsonl only) and, with ``progress``, the printer."""
    ml = info.mlflow
    cbs: list = [
        TrackingCallback(
            str(run_dir),
            ml.tracking_uri if tracking else None,
            ml.parent_run_id if tracking else None,
        )
    ]
    if progress:
        keys = list((info.space or {}).get("params", {}).keys()) or ["r"]
        cbs.append(ProgressCallback(str(run_dir), info.metric, info.mode, int(info.n_trials), keys))
    return cbs
