"""What a search and its trials were trained on, as MLflow dataset inputs and a run note.

Every trial's run gets the real dataset as an input (name = data key, source = the data path or
``phantom``, profile = the split sizes) and, at R > 0, the pool it mixed in (name = pool key,
context ``synthetic``, profile = the generator's hash, guidance, steps, scheduler and filter), so
that the Dataset column of MLflow's runs table and each run's page say what the trial saw. Only
metadata is stored, never the images. The search's parent run carries a short description of the
space and the data as its note (``mlflow.note.content``, the run page's Description).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .._io import read_json

NOTE_TAG = "mlflow.note.content"
CONTEXT_TAG = "mlflow.data.context"  # the Dataset column's "context" badge
SPLITS = ("train", "val", "test")
POOL_PROFILE = (
    "guidance", "steps", "scheduler", "postprocess", "finetune_steps", "pool_size", "pool_seed",
)  # fmt: skip


def home_of(run_dir: Path) -> Path | None:
    """The home a run folder lives in (``<home>/runs/<name>``), or None elsewhere."""
    return run_dir.parent.parent if run_dir.parent.name == "runs" else None


def real_dataset(run_dir: Path | None, run_json: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{name, source, profile}`` of a search's real dataset, from its run folder; None if the
    run has no data key. Split sizes come from the home's data cache (no image is read)."""
    key = run_json.get("data_key")
    if not key or run_dir is None:
        return None
    data: dict[str, Any] = {}
    cfg = run_dir / "config.yaml"
    if cfg.is_file():
        try:
            data = (yaml.safe_load(cfg.read_text()) or {}).get("data") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            data = {}
    kind = str(data.get("source") or "")
    source = "phantom" if kind == "phantom" else str(data.get("path") or kind or "unknown")
    profile: dict[str, Any] = {"source": kind or "unknown"}
    home = home_of(run_dir)
    meta_path = home / "cache" / f"data-{key}" / "meta.json" if home is not None else None
    if meta_path is not None and meta_path.is_file():
        try:
            meta = read_json(meta_path)
        except (OSError, ValueError):
            meta = {}
        counts = (meta.get("info") or {}).get("counts") or {}
        for split in SPLITS:
            if isinstance(counts.get(split), Mapping):
                profile[f"n_{split}"] = int(sum(counts[split].values()))
        if meta.get("class_names"):
            profile["classes"] = list(meta["class_names"])
    for k in ("image_size", "channels", "synthetic_class"):
        if data.get(k) is not None:
            profile[k] = data[k]
    return {"name": str(key), "source": source, "profile": profile}


def pool_dataset(
    run_dir: Path | None, pool_key: str, config: Mapping[str, Any], model_hash: str | None
) -> dict[str, Any]:
    """``{name, source, profile}`` of the pool a trial mixed in (its generation settings)."""
    home = home_of(run_dir) if run_dir is not None else None
    source = str(home / "pools" / pool_key) if home is not None else pool_key
    profile: dict[str, Any] = {"model_hash": model_hash or ""}
    profile.update({k: config[k] for k in POOL_PROFILE if config.get(k) is not None})
    if "postprocess" in profile:
        profile["filter"] = profile.pop("postprocess")
    return {"name": str(pool_key), "source": source, "profile": profile}


def dataset_input(desc: Mapping[str, Any], context: str):
    """The MLflow ``DatasetInput`` of a description (a local source; profile as JSON)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    ds = Dataset(
        name=desc["name"],
        digest=str(desc["name"])[:36],
        source_type="local",
        source=json.dumps({"uri": desc["source"]}),
        schema=None,
        profile=json.dumps(desc["profile"], default=str),
    )
    return DatasetInput(dataset=ds, tags=[InputTag(CONTEXT_TAG, context)])


def log_inputs(client: Any, run_id: str, *inputs: Any) -> None:
    """Log dataset inputs on a run (``mlflow.log_input`` for an explicit run id)."""
    items = [i for i in inputs if i is not None]
    if items:
        client.log_inputs(run_id, datasets=items)


def search_note(run_json: Mapping[str, Any], data: Mapping[str, Any] | None) -> str:
    """The parent run's Markdown description: the space searched and the data."""
    lines = [f"**ratio-search search `{run_json.get('name', '')}`**", ""]
    n, metric, mode = run_json.get("n_trials"), run_json.get("metric"), run_json.get("mode")
    if n:
        lines.append(f"- {n} trials, objective {metric} ({mode})")
    space = run_json.get("space") or {}
    params = space.get("params") if isinstance(space, Mapping) else None
    if isinstance(params, Mapping) and params:
        lines.append("- space: " + "; ".join(f"{k} {_short(v)}" for k, v in params.items()))
    if data:
        sizes = ", ".join(
            f"{data['profile'][f'n_{s}']} {s}" for s in SPLITS if f"n_{s}" in data["profile"]
        )
        lines.append(
            f"- data `{data['name']}` from {data['source']}" + (f" ({sizes})" if sizes else "")
        )
    if run_json.get("model_hash"):
        lines.append(f"- generator `{run_json['model_hash']}`")
    return "\n".join(lines)


def _short(spec: Any) -> str:
    """A parameter's range in a few characters: ``0..1 step 0.05``, ``{10, 25, 50}``."""
    if isinstance(spec, Mapping) and "choices" in spec:
        text = "{" + ", ".join(str(c) for c in spec["choices"]) + "}"
    elif isinstance(spec, Mapping) and "low" in spec:
        step = f" step {spec['step']}" if spec.get("step") else ""
        text = f"{spec['low']}..{spec['high']}{step}"
    else:
        text = json.dumps(spec, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


ANSWER_HEAD = "**Answer**"


def with_answer(note: str, answer: str) -> str:
    """``note`` with its answer section replaced by (or extended with) ``answer``."""
    head = note.split(ANSWER_HEAD, 1)[0].rstrip()
    return f"{head}\n\n{ANSWER_HEAD}\n\n{answer}".lstrip()
