"""Addresses in the MLflow UI (no mlflow import: ``ratio-search ui`` prints them).

MLflow 3.17's UI picks an experiment's view from its "workflow type" (GenAI or machine learning,
kept in the browser, default GenAI) and, in older 3.x, from the experiment's
``mlflow.experimentKind`` tag (set by :func:`.store.get_or_create_experiment`). The address of a
search's runs page therefore names the machine-learning view itself, so that it opens on the
training-runs table (parent runs with their nested trials), not on the GenAI overview.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._io import read_json

RUNS_VIEW = "workflowType=machine_learning"


def runs_page(base_url: str, experiment_id: str) -> str:
    """The experiment's training-runs table."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{RUNS_VIEW}"


def run_page(base_url: str, experiment_id: str, run_id: str) -> str:
    """One run's page (a search's parent run lists its trials as child runs)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{RUNS_VIEW}"


def newest_search(runs_dir: Path, tracking_uri: str | None = None) -> dict[str, Any] | None:
    """``{name, experiment_id, parent_run_id}`` of the newest search tracked in ``tracking_uri``
    (any store when None) among the run folders in ``runs_dir``; None when there is none."""
    best: tuple[str, dict[str, Any]] | None = None
    if not runs_dir.is_dir():
        return None
    for path in runs_dir.glob("*/run.json"):
        try:
            doc = read_json(path)
        except (OSError, ValueError):
            continue
        ml = doc.get("mlflow") if isinstance(doc, dict) else None
        if not isinstance(ml, dict) or not ml.get("experiment_id"):
            continue
        if tracking_uri is not None and ml.get("tracking_uri") != tracking_uri:
            continue
        when = str(doc.get("created") or "")
        if best is None or when > best[0]:
            best = (when, {"name": doc.get("name") or path.parent.name, **ml})
    if best is None:
        return None
    found = best[1]
    return {k: found.get(k) for k in ("name", "experiment_id", "parent_run_id")}
