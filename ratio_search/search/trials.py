"""``trials.jsonl``: the one reader and writer of a search's trial log, and "the best trial".

One JSON line per trial event (start, each epoch's result, end, error), appended by the driver's
Tune callback with a single ``O_APPEND`` write so that a reader never sees half a line; the last
line per ``trial_id`` wins. ``ratio-search status``, ``export``, ``report`` and ``confirm`` read it
without Ray or MLflow. A record::

    {"trial_id", "state" (RUNNING | TERMINATED | ERROR | LOST), "params" (the Tune config),
     "metrics" (the last result's numbers), "best" ({"value", "epoch"} of the objective or None),
     "epoch", "pool_key", "model_hash", "mlflow_run_id", "node_id", "time", ["error"],
     ["hostname", "node_ip", "device", "reused_from"]}

A trial that reports an equivalent trial's measured result (search/trainable.py) has
``metrics["reused"] == 1`` and ``reused_from`` (that trial's id) on every record from its first
result on, its final one included. Older files lack them on the final record: readers treat a
missing key as "not known", never as an error.

A write that fails is retried once and then raises :class:`TrialLogError` (the search stops and
can be resumed; it never goes on with a record missing); a torn last line is repaired before the
next append (:func:`repair_trials`); on resume the driver rebuilds any record the file lacks from
the Tune experiment (``tuner.reconcile_trials``). Nothing here imports Ray or MLflow.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._io import is_number, json_safe
from ..errors import SearchError

TRIALS_JSONL = "trials.jsonl"

# Keys of a Tune result that are bookkeeping, not metrics of the trial.
RESULT_SKIP = frozenset(
    {
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
        "epoch",  # the step, not a metric
    }
)
# String-valued result keys kept beside the metrics (and as tags of the MLflow child run).
# (reused_from: the trial whose measured result an equivalent trial reports, search/trainable.py)
# (pool_key: the trial's pools' keys, comma-joined in label order; pool_keys: json {class: key})
RESULT_TAGS = (
    "pool_key", "pool_keys", "model_hash", "node_id", "hostname", "node_ip", "device",
    "reused_from",
)  # fmt: skip
# How much of a trial's traceback is kept.
_ERROR_CHARS = 20000


def _path(where: str | os.PathLike) -> Path:
    """``where/trials.jsonl`` for a run folder; ``where`` itself when it names a ``.jsonl`` file."""
    p = Path(where)
    return p if p.suffix == ".jsonl" else p / TRIALS_JSONL


def read_trials(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The last record per ``trial_id`` of ``folder/trials.jsonl`` (insertion order = first seen).

    ``folder`` may also be the path of the ``.jsonl`` file. A torn last line (a driver killed
    mid-write) and blank lines are skipped.
    """
    out: dict[str, dict[str, Any]] = {}
    p = _path(folder)
    if not p.is_file():
        return out
    for line in p.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("trial_id") is not None:
            out[str(rec["trial_id"])] = rec
    return out


class TrialLogError(SearchError):
    """trials.jsonl cannot be written: the search stops (resumable) instead of losing records."""


def repair_trials(folder: str | os.PathLike) -> int:
    """End trials.jsonl on a whole line: a torn last line (a driver killed mid-write) is cut off,
    a complete record that only lacks its newline gets one. Returns the bytes cut off."""
    p = _path(folder)
    if not p.is_file():
        return 0
    with open(p, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return 0
        cut = data.rfind(b"\n") + 1
        try:
            json.loads(data[cut:])
        except ValueError:
            f.truncate(cut)
            return len(data) - cut
        f.write(b"\n")
    return 0


def append_trial(folder: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one record (strict JSON: NaN/inf as null) with one ``O_APPEND`` write (OSError
    when it fails). ``folder``: the run folder (or the ``.jsonl`` file's path)."""
    path = _path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(json_safe(record), default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)


def append_or_raise(folder: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """:func:`append_trial`, retried once (after repairing a torn line); TrialLogError naming the
    file when the second try fails too."""
    try:
        append_trial(folder, record)
        return
    except OSError:
        time.sleep(0.2)
    try:
        repair_trials(folder)
        append_trial(folder, record)
    except OSError as e:
        raise TrialLogError(
            f"cannot write {_path(folder)} ({e}); the search stops here so that no trial record "
            "is lost: fix the disk, then resume the run"
        ) from None


def metric_value(rec: Mapping[str, Any], metric: str) -> float | None:
    """The record's last ``metric`` as a float, None when missing or not finite."""
    v = (rec.get("metrics") or {}).get(metric)
    return float(v) if is_number(v) else None


def best_trial(
    trials: Mapping[str, Mapping[str, Any]], metric: str, mode: str
) -> dict[str, Any] | None:
    """The finished (TERMINATED) trial whose last ``metric`` is best, or None.

    Trials without a finite value do not count; ties go to the earliest trial (first in
    ``trials``, i.e. first seen in trials.jsonl), so the answer does not depend on sorting.
    """
    sign = 1.0 if mode == "max" else -1.0
    best, best_v = None, None
    for t in trials.values():
        v = metric_value(t, metric)
        if t.get("state") != "TERMINATED" or v is None:
            continue
        if best_v is None or sign * v > sign * best_v:
            best, best_v = t, v
    return dict(best) if best is not None else None


def result_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of a Tune result: its numeric values that are not Tune's bookkeeping."""
    return {
        k: v
        for k, v in result.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k not in RESULT_SKIP
    }


def result_epoch(result: Mapping[str, Any]) -> int:
    """The epoch a result reports (Tune's ``training_iteration`` when the trainable gave none)."""
    return int(result.get("epoch", result.get("training_iteration", 0)) or 0)


def trial_error(trial: Any) -> str | None:
    """The error text of a failed Tune trial (its message, else the tail of its error file)."""
    for attr in ("error_msg", "error_message"):
        msg = getattr(trial, attr, None)
        if isinstance(msg, str) and msg:
            return msg
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        try:
            return Path(path).read_text()[-_ERROR_CHARS:]
        except OSError:
            return None
    return None


class TrialLog:
    """The driver's view of trials.jsonl: builds every record (the one builder) and appends it.

    Each trial's previous record is kept, so that an event without a result (start, end, error)
    carries its last metrics forward, and the best epoch of the objective ``metric`` is tracked
    per trial (``{"value", "epoch"}``). Built from the file, so a restored driver continues.
    """

    def __init__(
        self, folder: str | os.PathLike | None, metric: str = "val_accuracy", mode: str = "max"
    ) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.metric, self.mode = metric, mode
        if self.folder is not None:
            repair_trials(self.folder)
        self.last: dict[str, dict[str, Any]] = read_trials(self.folder) if self.folder else {}
        self.best: dict[str, dict[str, Any]] = {
            tid: dict(rec["best"]) for tid, rec in self.last.items() if rec.get("best")
        }

    def observe(self, trial_id: str, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Note a result's objective value: the trial's best epoch so far."""
        value = metrics.get(self.metric)
        if not is_number(value):
            return
        best = self.best.get(trial_id)
        if best is None or (value > best["value"] if self.mode == "max" else value < best["value"]):
            self.best[trial_id] = {"value": float(value), "epoch": int(epoch)}

    def record(
        self,
        trial: Any,
        state: str,
        result: Mapping[str, Any] | None = None,
        *,
        mlflow_run_id: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """The record of one event of ``trial`` (a Tune trial: ``trial_id`` and ``config``)."""
        tid = str(trial.trial_id)
        prev = self.last.get(tid, {})
        fields: dict[str, Any] = {}
        if result is not None:
            fields["metrics"] = result_metrics(result)
            fields["epoch"] = result_epoch(result)
            fields.update({k: result[k] for k in RESULT_TAGS if result.get(k) is not None})
            self.observe(tid, fields["epoch"], fields["metrics"])
        # The string fields of a result describe the trial, not the event: an event without a
        # result (its end, an error) carries the last ones forward, so that the final record
        # still says where it ran and, for a reused result, which trial measured it.
        tags = {k: fields.pop(k, prev.get(k)) for k in RESULT_TAGS}
        rec: dict[str, Any] = {
            "trial_id": tid,
            "state": state,
            "params": dict(getattr(trial, "config", {}) or {}),
            "metrics": fields.pop("metrics", prev.get("metrics", {})),
            "best": self.best.get(tid),
            "epoch": fields.pop("epoch", prev.get("epoch", 0)),
            "pool_key": tags.pop("pool_key"),
            "pool_keys": tags.pop("pool_keys"),
            "model_hash": tags.pop("model_hash"),
            "mlflow_run_id": mlflow_run_id or prev.get("mlflow_run_id"),
            "node_id": tags.pop("node_id"),
            "time": time.time(),
        }
        rec.update({k: v for k, v in {**tags, **fields, **extra}.items() if v is not None})
        return json_safe(rec)

    def event(self, trial: Any, state: str, result: Mapping[str, Any] | None = None, **kw: Any):
        """Build the record of an event, append it to trials.jsonl and remember it
        (:class:`TrialLogError` when the file cannot be written)."""
        rec = self.record(trial, state, result, **kw)
        if self.folder is not None:
            append_or_raise(self.folder, rec)
        self.last[rec["trial_id"]] = rec
        return rec


__all__ = [
    "RESULT_SKIP",
    "RESULT_TAGS",
    "TRIALS_JSONL",
    "TrialLog",
    "TrialLogError",
    "append_or_raise",
    "append_trial",
    "best_trial",
    "metric_value",
    "read_trials",
    "repair_trials",
    "result_epoch",
    "result_metrics",
    "trial_error",
]
