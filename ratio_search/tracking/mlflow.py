"""The MLflow side of one search (:class:`SearchTracker`): its experiment, parent run and the
trials' child runs, and the clean-up of runs a killed driver left RUNNING.

One parent run per search, one nested child run per trial, written from ONE process: the Ray Tune
driver, through :class:`~ratio_search.tracking.callback.MLflowTrialCallback`. Remote workers never
touch the store, so a sqlite file inside the home (``sqlite:///<home>/mlruns/mlflow.db``,
artifacts under ``<home>/mlruns/artifacts``) is enough for a multi-node search.

Everything goes through :class:`mlflow.tracking.MlflowClient` with explicit run ids; nothing here
uses MLflow's process-global "active run", so two trackers in one process never interfere.

Restores: a Tune restore builds a new callback that knows nothing of the runs the old driver made.
The child run of a trial is therefore always looked up by its ``ray_trial_id`` tag under the
parent run. A trial that re-runs after a restore reuses its run when it continues after the
epochs already logged, and replaces it (history before the restart epoch copied over, the old run
deleted) when it restarts from an earlier epoch, so that a trial never has two runs and its metric
history never has two values for one epoch. :meth:`SearchTracker.close_stale_runs` closes runs that
a killed driver left RUNNING as KILLED.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .._io import is_number, read_json
from ..errors import SearchError
from ..search.runinfo import RUN_JSON
from . import lineage
from .store import (
    _MAX_METRICS,
    _MAX_PARAMS,
    _MAX_TAGS,
    EXPERIMENT_NAME,
    KIND_TAG,
    PARENT_TAG,
    TRIAL_TAG,
    artifact_root_for,
    chunks,
    confusion_image,
    flatten,
    get_or_create_experiment,
    log_artifacts,
    now_ms,
    param_str,
)

logger = logging.getLogger(__name__)


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
        run_json = self._run_json = self._read_run_json()
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
        self._real: dict[str, Any] | None | bool = False  # False: not read yet

    @property
    def real_data(self) -> dict[str, Any] | None:
        """The search's real dataset (:func:`.lineage.real_dataset`), read once."""
        if self._real is False:
            self._real = lineage.real_dataset(self.run_dir, self._run_json)
        return self._real  # type: ignore[return-value]

    def log_inputs(
        self, run_id: str, pool_key: str | None = None, config: Mapping[str, Any] | None = None
    ) -> None:
        """Log the real dataset on a run, or (``pool_key``) the pool a trial mixed in."""
        if pool_key:
            desc = lineage.pool_dataset(
                self.run_dir, pool_key, config or {}, self._run_json.get("model_hash")
            )
            lineage.log_inputs(self.client, run_id, lineage.dataset_input(desc, "synthetic"))
        elif self.real_data is not None:
            lineage.log_inputs(
                self.client, run_id, lineage.dataset_input(self.real_data, "training")
            )

    def _read_run_json(self) -> dict[str, Any]:
        if self.run_dir is None or not (self.run_dir / RUN_JSON).is_file():
            return {}
        try:  # the raw object: a key run.json lacks (e.g. no space) stays missing
            doc = read_json(self.run_dir / RUN_JSON)
        except (OSError, ValueError):  # unreadable: the defaults
            return {}
        return doc if isinstance(doc, dict) else {}

    def full_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's complete config: its Tune config plus the space's fixed values and defaults
        (what the trainable runs), when run.json holds the space; else the config as given."""
        if isinstance(self._space_doc, dict) and self._space is None:
            from ..search.space import parse_space

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
        note = lineage.search_note({**self._run_json, "name": name}, self.real_data)
        all_tags[lineage.NOTE_TAG] = note
        all_tags.update(tags or {})
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        self.parent_run_id = run.info.run_id
        self._log_params(self.parent_run_id, flatten(params or {}))
        self.log_inputs(self.parent_run_id)
        log_artifacts(self.client, self.parent_run_id, artifacts)
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
        params = flatten(config)
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
        for chunk in chunks(kept, _MAX_METRICS):
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
        ts = now_ms()
        ms = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items() if is_number(v)]
        ts_ = [RunTag(k, str(v)) for k, v in (tags or {}).items() if v is not None and v != ""]
        if len(ms) <= _MAX_METRICS and len(ts_) <= _MAX_TAGS:
            self.client.log_batch(run_id, metrics=ms, tags=ts_)
            return
        for chunk in chunks(ms, _MAX_METRICS):
            self.client.log_batch(run_id, metrics=chunk)
        self.set_tags(run_id, tags or {})

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set string tags on a run (values stringified, None skipped)."""
        ts = [RunTag(k, str(v)) for k, v in tags.items() if v is not None and v != ""]
        for chunk in chunks(ts, _MAX_TAGS):
            self.client.log_batch(run_id, tags=chunk)

    def log_confusion_matrix(
        self, run_id: str, cm: list[list[int]], class_names: list[str] | None = None
    ) -> None:
        """The validation confusion matrix as ``confusion_matrix.json`` and ``.png`` artifacts."""
        doc = {"confusion_matrix": cm, "rows": "true label", "columns": "predicted label"}
        if class_names:
            doc["class_names"] = list(class_names)
        self.client.log_dict(run_id, doc, "confusion_matrix.json")
        self.client.log_image(run_id, confusion_image(cm, class_names), "confusion_matrix.png")

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
        # One query for both (this runs after every trial), split by status here (a status
        # filter takes no list: only run_id does).
        ended = self.children(extra_filter=f"{trial} and attributes.status != 'RUNNING'")
        finished = [r for r in ended if r.info.status == "FINISHED"]
        failed = [r for r in ended if r.info.status == "FAILED"]
        n_done = len(finished)
        scored = [r for r in finished if is_number(r.data.metrics.get(self.metric))]
        ts = now_ms()
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
        ps = [Param(k, param_str(v)) for k, v in params.items()]
        for chunk in chunks(ps, _MAX_PARAMS):
            self.client.log_batch(run_id, params=chunk)
