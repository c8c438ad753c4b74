"""The MLflow store: experiment, artifact folder, batching limits and the small helpers of
every writer (the search tracker, the callback, one-off jobs). mlflow is imported on use."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from ..errors import RatioSearchError

if TYPE_CHECKING:  # mlflow is imported where a store is written, not by the UI supervisor
    from mlflow.tracking import MlflowClient

EXPERIMENT_NAME = "ratio-search"
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "ray_trial_id"
KIND_TAG = "ratio_search.kind"  # search, trial, finetune, pool confirm (evidence/confirm.py)
# The tag MLflow 3's UI reads to choose an experiment's view: the training-runs table, not the
# GenAI overview (mlflow/server/js: ExperimentKind.CUSTOM_MODEL_DEVELOPMENT).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# MLflow limits per log_batch call.
_MAX_PARAMS, _MAX_TAGS, _MAX_METRICS = 100, 100, 1000
_MAX_PARAM_LEN = 6000


def artifact_root_for(tracking_uri: str) -> Path | None:
    """The artifact folder that goes with a local sqlite store: ``<db dir>/artifacts``.

    ``None`` for any other store (a tracking server decides where artifacts go).
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    # sqlite:////abs/path.db (four slashes) is absolute, sqlite:///rel.db relative to the cwd.
    db = Path(unquote(tracking_uri[len("sqlite:///") :].split("?", 1)[0]))
    return db.resolve().parent / "artifacts"


def now_ms() -> int:
    return int(time.time() * 1000)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def param_str(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s[:_MAX_PARAM_LEN]


def chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def get_or_create_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``; created (or restored from the bin) when needed.

    With a local sqlite store the experiment's artifacts go to ``<db dir>/artifacts``. The
    experiment carries ``mlflow.experimentKind = custom_model_development`` (set on an existing
    one too, once), so that MLflow's UI opens it on its training-runs table.
    """
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        root = artifact_root_for(tracking_uri)
        location = None
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
            location = root.as_uri()
        try:
            return client.create_experiment(
                name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except MlflowException:
            # Another process created it between our look-up and our create.
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def log_artifacts(
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


def confusion_image(cm: list[list[int]], class_names: list[str] | None = None):
    """The validation confusion matrix as a small PIL image: one cell per (true, predicted)
    pair, shaded by its count (matplotlib's "Blues"), the count written in it.

    Drawn with PIL rather than a matplotlib figure: the callback draws one per finished trial in
    the driver, where a figure (about 80 ms with its PNG) was the largest piece of MLflow's
    per-trial cost; this takes a few ms (BENCHMARKS.md, "Session 8").
    """
    from matplotlib import colormaps
    from PIL import Image, ImageDraw, ImageFont

    n = len(cm)
    names = class_names if class_names and len(class_names) == n else [str(i) for i in range(n)]
    font = ImageFont.load_default(size=13)  # a scalable font: Pillow >= 10.1 (pyproject.toml)
    cell, left = 64, 12 + max(int(font.getlength(str(c))) for c in names)
    top = 44
    img = Image.new("RGB", (left + n * cell + 12, top + n * cell + 42), "white")
    draw = ImageDraw.Draw(img)
    draw.text((img.width // 2, 12), "validation confusion matrix", fill="black", font=font,
              anchor="mm")  # fmt: skip
    draw.text((img.width // 2, 30), "rows: true, columns: predicted", fill="gray", font=font,
              anchor="mm")  # fmt: skip
    blues = colormaps["Blues"]
    peak = max((max(row) for row in cm), default=0) or 1
    for i in range(n):
        y = top + i * cell
        draw.text((left - 6, y + cell // 2), str(names[i]), fill="black", font=font, anchor="rm")
        for j in range(n):
            x = left + j * cell
            shade = tuple(int(255 * c) for c in blues(cm[i][j] / peak)[:3])
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=shade)
            ink = "white" if cm[i][j] > peak / 2 else "black"
            draw.text((x + cell // 2, y + cell // 2), str(cm[i][j]), fill=ink, font=font,
                      anchor="mm")  # fmt: skip
    for j in range(n):
        draw.text((left + j * cell + cell // 2, top + n * cell + 12), str(names[j]), fill="black",
                  font=font, anchor="mm")  # fmt: skip
    return img
