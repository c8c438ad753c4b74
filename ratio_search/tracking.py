"""MLflow tracking: the only module that imports mlflow.

One parent run per search, one nested child run per trial, written from ONE process: the Ray Tune
driver, through :class:`MLflowTrialCallback`. Remote workers never touch the store, so a sqlite
file inside the home (``sqlite:///<home>/mlruns/mlflow.db``, artifacts under
``<home>/mlruns/artifacts``) is enough for a multi-node search.

Everything goes through :class:`mlflow.tracking.MlflowClient` with explicit run ids; nothing here
uses MLflow's process-global "active run", so two trackers in one process never interfere.

Restores: a Tune restore builds a new callback that knows nothing of the runs the old driver made.
The child run of a trial is therefore always looked up by its ``ray_trial_id`` tag under the
parent run. A trial that re-runs after a restore reuses its run when it continues after the
epochs already logged, and replaces it (history before the restart epoch copied over, the old run
deleted) when it restarts from an earlier epoch, so that a trial never has two runs and its metric
history never has two values for one epoch. :meth:`SearchTracker.close_stale_runs` closes runs that
a killed driver left RUNNING as KILLED.

The callback also appends one JSON line per trial event to ``<run_dir>/trials.jsonl`` (the last
line per ``trial_id`` wins), which ``ratio-search status`` and ``export`` read without Ray or MLflow.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from .errors import RatioSearchError, SearchError

logger = logging.getLogger(__name__)

EXPERIMENT_NAME = "ratio-search"
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "ray_trial_id"
KIND_TAG = "ratio_search.kind"  # search, trial, finetune, pool (confirm: confirm.py)

# Keys of a Tune result that are bookkeeping, not metrics of the trial.
_RESULT_SKIP = {
    "done",
    "trial_id",
    "date",
    "timestamp",
    "time_since_restore",
    "iterations_since_restore",
    "timesteps_since_restore",
    "timesteps_total",
    "episodes_total",
    "pid",
    "hostname",
    "node_ip",
    "config",
    "experiment_tag",
    "should_checkpoint",
    "checkpoint_dir_name",
    "experiment_id",
}
# String-valued result keys recorded as tags of the child run.
_RESULT_TAGS = ("pool_key", "model_hash", "node_id", "hostname", "node_ip", "device")
# MLflow limits per log_batch call.
_MAX_PARAMS, _MAX_TAGS, _MAX_METRICS = 100, 100, 1000
_MAX_PARAM_LEN = 6000


# ------------------------------------------------------------------------------------ helpers


def artifact_root_for(tracking_uri: str) -> Path | None:
    """The artifact folder that goes with a local sqlite store: ``<db dir>/artifacts``.

    ``None`` for any other store (a tracking server decides where artifacts go).
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    # sqlite:////abs/path.db (four slashes) is absolute, sqlite:///rel.db relative to the cwd.
    db = Path(unquote(tracking_uri[len("sqlite:///") :].split("?", 1)[0]))
    return db.resolve().parent / "artifacts"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _param_str(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s[:_MAX_PARAM_LEN]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _json_safe(v: Any) -> Any:
    """NaN/inf become None so that every trials.jsonl line is strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Mapping):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    return str(v)


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one JSON line with a single ``O_APPEND`` write, so a reader never sees half a line."""
    data = (json.dumps(_json_safe(record), sort_keys=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_trials_jsonl(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The last record per ``trial_id`` of a ``trials.jsonl`` (insertion order = first seen).

    A torn last line (a driver killed mid-write) is skipped.
    """
    out: dict[str, dict[str, Any]] = {}
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        tid = rec.get("trial_id")
        if tid is not None:
            out[str(tid)] = rec
    return out


def _confusion_figure(cm: list[list[int]], class_names: list[str] | None = None):
    """A confusion-matrix figure built on the Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(cm)
    names = class_names if class_names and len(class_names) == n else [str(i) for i in range(n)]
    fig = Figure(figsize=(1.2 + 0.8 * n, 1.0 + 0.8 * n), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(cm, cmap="Blues")
    top = max((max(row) for row in cm), default=0)
    for i in range(n):
        for j in range(n):
            color = "white" if cm[i][j] > top / 2 else "black"
            ax.text(j, i, str(cm[i][j]), ha="center", va="center", color=color)
    ax.set_xticks(range(n), names)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("validation confusion matrix")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ the tracker


class SearchTracker:
    """The MLflow side of one search: its experiment, its parent run and the trials' child runs.

    ``metric`` / ``mode`` (the search objective, for the parent's best-so-far metrics) default to
    the values in ``<run_dir>/run.json`` and then to ``val_accuracy`` / ``max``.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str = EXPERIMENT_NAME,
        run_dir: str | os.PathLike | None = None,
        *,
        metric: str | None = None,
        mode: str | None = None,
    ) -> None:
        self.tracking_uri = str(tracking_uri)
        self.experiment_name = experiment_name
        self.run_dir = Path(run_dir) if run_dir is not None else None
        run_json = self._read_run_json()
        self.metric = metric or run_json.get("metric") or "val_accuracy"
        self.mode = mode or run_json.get("mode") or "max"
        if self.mode not in ("max", "min"):
            raise SearchError(f"mode: {self.mode!r} is not one of: max, min")
        self._space_doc = run_json.get("space")
        self._space: Any = None
        root = artifact_root_for(self.tracking_uri)
        if root is not None:
            # sqlite cannot create the folder of its database file.
            root.parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self.parent_run_id: str | None = None
        self._experiment_id: str | None = None

    def _read_run_json(self) -> dict[str, Any]:
        if self.run_dir is None or not (self.run_dir / "run.json").is_file():
            return {}
        try:
            return json.loads((self.run_dir / "run.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def full_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's complete config: its Tune config plus the space's fixed values and defaults
        (what the trainable runs), when run.json holds the space; else the config as given."""
        if isinstance(self._space_doc, dict) and self._space is None:
            from .space import parse_space

            try:
                self._space = parse_space(self._space_doc, origin="run.json space")
            except Exception as e:  # noqa: BLE001 - the params are logged either way
                logger.warning("run.json space unreadable (%s); logging trial configs as given", e)
                self._space_doc = None
        if self._space is None:
            return dict(config)
        return self._space.trial_config(dict(config))

    @property
    def trials_jsonl(self) -> Path | None:
        """``<run_dir>/trials.jsonl`` (None without a run folder)."""
        return self.run_dir / "trials.jsonl" if self.run_dir is not None else None

    # -- experiment and parent run

    @property
    def experiment_id(self) -> str:
        """The experiment's id; created on first use (artifacts next to a local sqlite store)."""
        if self._experiment_id is None:
            self._experiment_id = get_or_create_experiment(
                self.client, self.experiment_name, self.tracking_uri
            )
            if self.tracking_uri.startswith(("http://", "https://")):
                loc = self.client.get_experiment(self._experiment_id).artifact_location or ""
                if loc.startswith(("file:", "/")):
                    # Made by local runs before the store was served: MLflow clients write such
                    # artifacts straight to that path, i.e. onto this machine's own disk.
                    warnings.warn(
                        f"experiment {self.experiment_name!r} keeps artifacts at {loc}, a local "
                        "path: artifacts logged from other machines stay on their own disks "
                        "(serve a fresh home, or one whose experiment the server created)",
                        stacklevel=2,
                    )
        return self._experiment_id

    def start_parent(
        self,
        name: str,
        params: Mapping[str, Any] | None = None,
        artifacts: Iterable[str | os.PathLike] | Mapping[str, str | os.PathLike] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Create the search's parent run (params flattened, files logged as artifacts)."""
        all_tags = {"ratio_search.kind": "search", "ratio_search.name": name}
        if self.run_dir is not None:
            all_tags["ratio_search.run_dir"] = str(self.run_dir)
        all_tags.update(tags or {})
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        self.parent_run_id = run.info.run_id
        self._log_params(self.parent_run_id, _flatten(params or {}))
        _log_artifacts(self.client, self.parent_run_id, artifacts)
        return self.parent_run_id

    def resume_parent(self, run_id: str, mark_running: bool = True) -> str:
        """Take over an existing parent run (after a restore); it is marked RUNNING again
        (``mark_running=False``: only attach to it, to read its children)."""
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            raise SearchError(
                f"MLflow parent run {run_id} not found in {self.tracking_uri}"
            ) from None
        self._experiment_id = run.info.experiment_id
        self.parent_run_id = run_id
        if mark_running and run.info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        return run_id

    def finish_parent(self, status: str = "FINISHED") -> None:
        """End the parent run with ``status`` (its best-so-far metrics are updated per trial)."""
        if self.parent_run_id is None:
            return
        RunStatus.from_string(status)  # raises on a typo
        self.client.set_terminated(self.parent_run_id, status=status)

    # -- child runs

    def children(self, parent_run_id: str | None = None, extra_filter: str = "") -> list:
        """All active child runs of the parent (optionally narrowed by an MLflow filter)."""
        parent = parent_run_id or self.parent_run_id
        if parent is None:
            return []
        flt = f"tags.`{PARENT_TAG}` = '{parent}'"
        if extra_filter:
            flt += f" and {extra_filter}"
        runs: list = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=flt,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1000,
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def find_child(self, trial_id: str) -> Any | None:
        """The child run tagged with ``trial_id`` (duplicates, if any ever appear, are deleted)."""
        runs = self.children(extra_filter=f"tags.`{TRIAL_TAG}` = '{trial_id}'")
        if not runs:
            return None
        runs.sort(key=lambda r: r.info.start_time or 0, reverse=True)
        for dup in runs[1:]:
            self.client.delete_run(dup.info.run_id)
        return runs[0]

    def start_child(
        self, trial_id: str, config: Mapping[str, Any], run_name: str | None = None
    ) -> str:
        """The run of a trial: the existing one (marked RUNNING again) or a new nested run."""
        if self.parent_run_id is None:
            raise SearchError("tracking: start_parent() or resume_parent() must come first")
        params = _flatten(config)
        run = self.find_child(trial_id)
        if run is not None:
            run_id = run.info.run_id
            if run.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            # MLflow params are write-once: log only the ones the run lacks.
            missing = {k: v for k, v in params.items() if k not in run.data.params}
            self._log_params(run_id, missing)
            return run_id
        tags = {
            PARENT_TAG: self.parent_run_id,
            TRIAL_TAG: trial_id,
            KIND_TAG: "trial",
        }
        run = self.client.create_run(
            self.experiment_id, tags=tags, run_name=run_name or f"trial-{trial_id}"
        )
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def replace_child(self, run_id: str, keep_below_step: int) -> str:
        """A fresh copy of a child run holding only its history before ``keep_below_step``.

        Used when a trial restarts from an earlier epoch than it had logged; the old run is
        deleted, so the trial still has exactly one run.
        """
        old = self.client.get_run(run_id)
        tags = {k: v for k, v in old.data.tags.items() if k != "mlflow.runName"}
        tags["last_epoch"] = str(keep_below_step - 1)
        new = self.client.create_run(old.info.experiment_id, tags=tags, run_name=old.info.run_name)
        new_id = new.info.run_id
        self._log_params(new_id, dict(old.data.params))
        kept: list[Metric] = []
        for key in old.data.metrics:
            for m in self.client.get_metric_history(run_id, key):
                if m.step < keep_below_step:
                    kept.append(Metric(m.key, m.value, m.timestamp, m.step))
        for chunk in _chunks(kept, _MAX_METRICS):
            self.client.log_batch(new_id, metrics=chunk)
        self.client.delete_run(run_id)
        return new_id

    def log_epoch(
        self,
        run_id: str,
        step: int,
        metrics: Mapping[str, float],
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        """Log one epoch's numeric metrics at ``step`` (and ``tags``) in one store write."""
        ts = _now_ms()
        ms = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items() if _is_number(v)]
        ts_ = [RunTag(k, str(v)) for k, v in (tags or {}).items() if v is not None and v != ""]
        if len(ms) <= _MAX_METRICS and len(ts_) <= _MAX_TAGS:
            self.client.log_batch(run_id, metrics=ms, tags=ts_)
            return
        for chunk in _chunks(ms, _MAX_METRICS):
            self.client.log_batch(run_id, metrics=chunk)
        self.set_tags(run_id, tags or {})

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set string tags on a run (values stringified, None skipped)."""
        ts = [RunTag(k, str(v)) for k, v in tags.items() if v is not None and v != ""]
        for chunk in _chunks(ts, _MAX_TAGS):
            self.client.log_batch(run_id, tags=chunk)

    def log_confusion_matrix(
        self, run_id: str, cm: list[list[int]], class_names: list[str] | None = None
    ) -> None:
        """The validation confusion matrix as ``confusion_matrix.json`` and ``.png`` artifacts."""
        doc = {"confusion_matrix": cm, "rows": "true label", "columns": "predicted label"}
        if class_names:
            doc["class_names"] = list(class_names)
        self.client.log_dict(run_id, doc, "confusion_matrix.json")
        self.client.log_figure(run_id, _confusion_figure(cm, class_names), "confusion_matrix.png")

    def end_child(self, run_id: str, status: str) -> None:
        """End a child run as FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status=status)

    def close_stale_runs(self, parent_run_id: str | None = None) -> int:
        """Close every child run still RUNNING (left by a killed driver) as KILLED; return how many.

        Any kind of child counts (a trial's or a confirmation's): no writer of them is alive.
        """
        stale = self.children(parent_run_id, extra_filter="attributes.status = 'RUNNING'")
        for run in stale:
            self.client.set_terminated(run.info.run_id, status="KILLED")
        return len(stale)

    def update_best(self) -> dict[str, Any] | None:
        """Log the best finished trial so far on the parent (``best_<metric>`` and its other val_*).

        Recomputed from the finished child runs, so it holds across restores. Returns
        ``{"run_id", "trial_id", "value"}`` of the best trial, or None when none has finished.
        """
        if self.parent_run_id is None:
            return None
        # Only the trials' runs: other children of the parent (confirmation runs) do not count.
        trial = f"tags.`{KIND_TAG}` = 'trial'"
        finished = self.children(extra_filter=f"{trial} and attributes.status = 'FINISHED'")
        failed = self.children(extra_filter=f"{trial} and attributes.status = 'FAILED'")
        n_done = len(finished)
        scored = [
            r
            for r in finished
            if self.metric in r.data.metrics and math.isfinite(r.data.metrics[self.metric])
        ]
        ts = _now_ms()
        metrics = [
            Metric("trials_finished", float(n_done), ts, n_done),
            Metric("trials_failed", float(len(failed)), ts, n_done),
        ]
        best = None
        if scored:
            sign = 1.0 if self.mode == "max" else -1.0
            # Ties: the earliest trial wins, so the answer does not depend on query order.
            best = max(
                scored, key=lambda r: (sign * r.data.metrics[self.metric], -r.info.start_time)
            )
            for k, v in best.data.metrics.items():
                if k.startswith("val_") or k == self.metric:
                    metrics.append(Metric(f"best_{k}", float(v), ts, n_done))
        self.client.log_batch(self.parent_run_id, metrics=metrics)
        if best is None:
            return None
        info = {
            "run_id": best.info.run_id,
            "trial_id": best.data.tags.get(TRIAL_TAG),
            "value": best.data.metrics[self.metric],
        }
        self.set_tags(
            self.parent_run_id,
            {"best_trial_id": info["trial_id"], "best_run_id": info["run_id"]},
        )
        return info

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        ps = [Param(k, _param_str(v)) for k, v in params.items()]
        for chunk in _chunks(ps, _MAX_PARAMS):
            self.client.log_batch(run_id, params=chunk)


def get_or_create_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``; created (or restored from the bin) when needed.

    With a local sqlite store the experiment's artifacts go to ``<db dir>/artifacts``.
    """
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    root = artifact_root_for(tracking_uri)
    location = None
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
        location = root.as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        # Another process created it between our look-up and our create.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _log_artifacts(
    client: MlflowClient,
    run_id: str,
    artifacts: Iterable[str | os.PathLike] | Mapping[str, str | os.PathLike] | None,
) -> None:
    """Log files or folders: a list of paths, or ``{artifact_dir: path}``."""
    if not artifacts:
        return
    items = artifacts.items() if isinstance(artifacts, Mapping) else [(None, a) for a in artifacts]
    for artifact_path, local in items:
        p = Path(local)
        if p.is_dir():
            client.log_artifacts(run_id, str(p), artifact_path or p.name)
        elif p.is_file():
            client.log_artifact(run_id, str(p), artifact_path)
        else:
            raise RatioSearchError(f"artifact to log not found: {p}")


# --------------------------------------------------------------------------- the Tune callback


class MLflowTrialCallback(Callback):
    """A Ray Tune callback (driver side) writing each trial to a nested MLflow run and trials.jsonl.

    Params: the trial's complete config (r, guidance, steps, mode, seed, ...: its Tune config plus
    the space's fixed values and defaults, from run.json). Metrics: every numeric value
    of a result, at ``step = result["epoch"]``. Tags: ``ray_trial_id``, ``pool_key``,
    ``model_hash``, ``node_id``. A ``confusion_matrix`` (JSON string) in a result becomes the
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
        self._best: dict[str, dict[str, Any]] = {}  # trial_id -> {"value", "epoch"}
        self._last: dict[str, dict[str, Any]] = {}
        self._cm: dict[str, tuple[Any, Any]] = {}  # trial_id -> last (confusion matrix, classes)
        if tracker.trials_jsonl is not None:
            # After a restore: keep each trial's best epoch and last metrics from the old driver.
            self._last = read_trials_jsonl(tracker.trials_jsonl)
            for tid, rec in self._last.items():
                if rec.get("best"):
                    self._best[tid] = dict(rec["best"])

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
        self._event(trial, "RUNNING", error=_trial_error(trial))

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        tid = str(trial.trial_id)
        epoch = int(result.get("epoch", result.get("training_iteration", 0)) or 0)
        metrics = {
            k: v
            for k, v in result.items()
            if _is_number(v) and k not in _RESULT_SKIP and k != "epoch"
        }
        value = metrics.get(self.tracker.metric)
        if value is not None and math.isfinite(value):
            best = self._best.get(tid)
            better = best is None or (
                value > best["value"] if self.tracker.mode == "max" else value < best["value"]
            )
            if better:
                self._best[tid] = {"value": float(value), "epoch": epoch}
        self._guard(lambda: self._log_result(trial, epoch, metrics, result))
        extra = {k: result.get(k) for k in _RESULT_TAGS if result.get(k) is not None}
        self._event(trial, "RUNNING", metrics=metrics, epoch=epoch, **extra)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._guard(lambda: self._end(trial, "FINISHED"))
        self._event(trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        err = _trial_error(trial)

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
        return self._runs[tid]

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
        tags = {k: result.get(k) for k in _RESULT_TAGS}
        tags["last_epoch"] = epoch
        self.tracker.log_epoch(run_id, epoch, metrics, tags)
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

    def _event(self, trial: Any, state: str, **fields: Any) -> None:
        """Append one line to trials.jsonl (the previous line's metrics carried forward)."""
        path = self.tracker.trials_jsonl
        if path is None:
            return
        tid = str(trial.trial_id)
        prev = self._last.get(tid, {})
        rec: dict[str, Any] = {
            "trial_id": tid,
            "state": state,
            "params": dict(getattr(trial, "config", {}) or {}),
            "metrics": fields.pop("metrics", prev.get("metrics", {})),
            "best": self._best.get(tid),
            "epoch": fields.pop("epoch", prev.get("epoch", 0)),
            "pool_key": fields.pop("pool_key", prev.get("pool_key")),
            "model_hash": fields.pop("model_hash", prev.get("model_hash")),
            "mlflow_run_id": self._runs.get(tid, prev.get("mlflow_run_id")),
            "node_id": fields.pop("node_id", prev.get("node_id")),
            "time": time.time(),
        }
        rec.update({k: v for k, v in fields.items() if v is not None})
        self._last[tid] = _json_safe(rec)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            append_jsonl(path, rec)
        except OSError as e:
            if self.strict:
                raise
            warnings.warn(f"could not append to {path}: {e}", stacklevel=2)


def _trial_error(trial: Any) -> str | None:
    """The error text of a failed Tune trial, when it can be found."""
    for attr in ("error_msg", "error_message"):
        msg = getattr(trial, attr, None)
        if isinstance(msg, str) and msg:
            return msg
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        try:
            return Path(path).read_text()[-20000:]
        except OSError:
            return None
    return None


# ------------------------------------------------------------------------------- other jobs


def log_job(
    kind: str,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float | list[float]] | None = None,
    artifacts: Iterable[str | os.PathLike] | Mapping[str, str | os.PathLike] | None = None,
    *,
    tracking_uri: str,
    experiment_name: str = EXPERIMENT_NAME,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    status: str = "FINISHED",
) -> str:
    """Record a finished ``finetune`` or ``pool`` job as one (non-nested) MLflow run; return its id.

    ``params`` are flattened (``{"cfg": {"lr": 1}}`` -> ``cfg.lr``). A metric given as a list is
    logged as a history (step = index); ``artifacts`` are files or folders (a list, or
    ``{artifact_dir: path}``).
    """
    if kind not in ("finetune", "pool"):
        raise RatioSearchError(f"log_job: kind {kind!r} is not one of: finetune, pool")
    root = artifact_root_for(tracking_uri)
    if root is not None:
        root.parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=tracking_uri)
    exp_id = get_or_create_experiment(client, experiment_name, tracking_uri)
    all_tags = {"ratio_search.kind": kind}
    all_tags.update({k: str(v) for k, v in (tags or {}).items() if v is not None})
    run = client.create_run(exp_id, tags=all_tags, run_name=run_name or kind)
    run_id = run.info.run_id
    try:
        ps = [Param(k, _param_str(v)) for k, v in _flatten(params or {}).items()]
        for chunk in _chunks(ps, _MAX_PARAMS):
            client.log_batch(run_id, params=chunk)
        ts = _now_ms()
        ms: list[Metric] = []
        for k, v in (metrics or {}).items():
            if isinstance(v, list | tuple):
                ms += [Metric(k, float(x), ts, i) for i, x in enumerate(v) if _is_number(x)]
            elif _is_number(v):
                ms.append(Metric(k, float(v), ts, 0))
        for chunk in _chunks(ms, _MAX_METRICS):
            client.log_batch(run_id, metrics=chunk)
        _log_artifacts(client, run_id, artifacts)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status=status)
    return run_id


# ------------------------------------------------------------------------------------ the UI


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def ui_command(
    tracking_uri: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    server: bool = False,
    workers: int = 1,
) -> list[str]:
    """The ``mlflow ui`` (or, with ``server``, ``mlflow server``) command line for a store.

    ``mlflow ui`` reads the store; artifacts are read from each experiment's own location (the
    home's ``mlruns/artifacts``). ``mlflow server`` also proxies artifact uploads of remote
    clients into that folder (``--serve-artifacts``), for a team's tracking server.
    """
    cmd = [sys.executable, "-m", "mlflow", "server" if server else "ui"]
    cmd += ["--backend-store-uri", tracking_uri, "--host", host, "--port", str(port)]
    cmd += ["--workers", str(workers)]
    root = artifact_root_for(tracking_uri)
    if server:
        cmd += ["--serve-artifacts"]
        if root is not None:
            cmd += ["--artifacts-destination", root.as_uri()]
    elif root is not None:
        cmd += ["--default-artifact-root", root.as_uri()]
    return cmd


def wait_for_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> bool:
    """Poll ``url`` until it answers 200 (True), ``proc`` exits or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def stop_process_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a child started with ``start_new_session=True`` and the workers it forked."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)  # the group id is the child's own pid (new session)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def serve_ui(
    tracking_uri: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    server: bool = False,
    log_path: str | os.PathLike | None = None,
    on_ready=None,
    startup_timeout: float = 90.0,
) -> int:
    """Run the MLflow UI / tracking server on ``tracking_uri`` until Ctrl-C or SIGTERM.

    ``on_ready(url)`` is called once the server answers. Returns the server's exit code (0 after
    a Ctrl-C). Raises :class:`RatioSearchError` when the port is taken or the server does not start.
    """
    if not port_is_free(host, port):
        raise RatioSearchError(f"port {port} on {host} is already in use; pass another --port")
    root = artifact_root_for(tracking_uri)
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    cmd = ui_command(tracking_uri, host=host, port=port, server=server)
    log_file = Path(log_path) if log_path else None
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    # Its own session: Ctrl-C reaches only us, and we stop the server and its workers together.
    env = dict(os.environ)
    # MLflow's job runner (GenAI judges, trace roll-ups) starts about ten worker processes that
    # viewing runs never uses; off unless the user asked for it.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    proc = subprocess.Popen(
        cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    url_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{url_host}:{port}"

    def on_term(signum, frame):  # SIGTERM (kill PID) stops the server like Ctrl-C does
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        if not wait_for_http(f"{url}/health", timeout=startup_timeout, proc=proc):
            stop_process_group(proc)
            where = f"; see {log_file}" if log_file else ""
            raise RatioSearchError(
                f"the MLflow {'server' if server else 'UI'} did not start{where}"
            )
        if on_ready is not None:
            on_ready(url)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_process_group(proc)
        signal.signal(signal.SIGTERM, old)
        if log_file:
            out.close()
