"""MLflow runs of jobs other than a search's trials: a fine-tune or pool build (:func:`log_job`)
and the confirmation runs of ``export --confirm`` (:func:`log_confirm_runs`; the evidence package
hands plain records over, so that MLflow is imported by the tracking package alone)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from .._io import is_number
from ..errors import RatioSearchError
from .mlflow import SearchTracker
from .store import (
    _MAX_METRICS,
    _MAX_PARAMS,
    EXPERIMENT_NAME,
    KIND_TAG,
    PARENT_TAG,
    artifact_root_for,
    chunks,
    flatten,
    get_or_create_experiment,
    log_artifacts,
    now_ms,
    param_str,
)


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
        ps = [Param(k, param_str(v)) for k, v in flatten(params or {}).items()]
        for chunk in chunks(ps, _MAX_PARAMS):
            client.log_batch(run_id, params=chunk)
        ts = now_ms()
        ms: list[Metric] = []
        for k, v in (metrics or {}).items():
            if isinstance(v, list | tuple):
                ms += [Metric(k, float(x), ts, i) for i, x in enumerate(v) if is_number(x)]
            elif is_number(v):
                ms.append(Metric(k, float(v), ts, 0))
        for chunk in chunks(ms, _MAX_METRICS):
            client.log_batch(run_id, metrics=chunk)
        log_artifacts(client, run_id, artifacts)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status=status)
    return run_id


def log_confirm_runs(
    tracking_uri: str,
    parent_run_id: str,
    runs: list[Mapping[str, Any]],
    *,
    experiment_id: str | None = None,
    run_dir: str | os.PathLike | None = None,
) -> dict[str, str]:
    """One finished ``confirm`` child run per record of ``runs`` under ``parent_run_id``.

    A record holds ``label``, ``role``, ``chosen`` (bool), ``params`` (name -> str), ``history``
    (one metrics dict per step: the per-seed values), ``metrics`` (logged at step 0) and
    ``summary`` (logged as the artifact ``confirm.json``). Returns ``{label: run_id}``; store
    errors propagate to the caller.
    """
    tracker = SearchTracker(tracking_uri, run_dir=run_dir)
    client = tracker.client
    exp_id = experiment_id or client.get_run(parent_run_id).info.experiment_id
    ids: dict[str, str] = {}
    for rec in runs:
        tags = {
            PARENT_TAG: parent_run_id,
            KIND_TAG: "confirm",
            "ratio_search.role": rec["role"],
            "ratio_search.chosen": str(bool(rec["chosen"])).lower(),
        }
        run = client.create_run(exp_id, tags=tags, run_name=f"confirm {rec['label']}")
        run_id = run.info.run_id
        for k, v in rec["params"].items():
            client.log_param(run_id, k, v)
        for step, metrics in enumerate(rec["history"]):
            tracker.log_epoch(run_id, step, metrics)
        tracker.log_epoch(run_id, 0, rec["metrics"])
        client.log_dict(run_id, rec["summary"], "confirm.json")
        tracker.end_child(run_id, "FINISHED")
        ids[rec["label"]] = run_id
    return ids
