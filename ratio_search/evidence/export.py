"""Export the best trial of a search as ``best.yaml``: a ``ratio-search train --config`` file.

:func:`build_export` reads the run folder (``run.json``, ``config.yaml``, ``trials.jsonl``; or
the search's MLflow child runs when trials.jsonl is missing) and returns the document;
:func:`write_export` writes it. The document holds:

- ``data`` and ``train``: the sections ``train --config`` reads. ``data`` is the search's resolved
  data config, ``train`` the trial's r, mode, seed, epochs, batch size, lr (epochs = the epoch the
  trial's reported metric comes from, in case a scheduler stopped it early);
- ``pool``: ``{key, n}``: the pool of generated images the trial mixed in and how many of its
  first images the trial drew from (a cached pool can grow later); None at R = 0;
- ``expected``: metadata that ``train`` ignores: the trial's validation metrics, its full config,
  pool key, model hash and path, data key, MLflow ids, package versions. Later stages (the
  multi-seed confirmation, the test split) add their blocks inside ``expected`` too, because
  ``train --config`` accepts no other top-level keys.

Running ``ratio-search train --config best.yaml`` on the same device repeats the trial and gives
the same validation metric (same data, pool, seed, config: the trainer is deterministic).
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from .config import TrainConfig, config_from_dict
from .errors import ConfigError, SearchError
from .home import Home

# Packages whose versions go into best.yaml (what decides whether a re-run gives the same numbers).
PACKAGES = (
    "ratio-search",
    "torch",
    "numpy",
    "scikit-learn",
    "diffusers",
    "ray",
    "optuna",
    "mlflow",
    "pillow",
)
# The TrainConfig keys a trial config carries; the rest of a trial config is metadata.
TRAIN_KEYS = ("r", "mode", "arch", "epochs", "batch_size", "lr", "seed")
# Trial-config keys that change the classifier but that `train --config` cannot express.
UNREPRODUCIBLE_KEYS = ("widths", "fc")


def package_versions() -> dict[str, str | None]:
    """Installed versions of :data:`PACKAGES` (None when missing) and Python's."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SearchError(f"{path}: cannot read the run's state ({e})") from None
    if not isinstance(doc, dict):
        raise SearchError(f"{path}: expected a JSON object")
    return doc


def _run_folder(home: Home, name: str) -> Path:
    folder = home.runs / str(name)
    if "/" in str(name) or str(name) in ("", ".", "..") or not (folder / "run.json").is_file():
        known = (
            sorted(p.name for p in home.runs.iterdir() if (p / "run.json").is_file())
            if home.runs.is_dir()
            else []
        )
        listed = ", ".join(known[-10:]) if known else "none"
        raise SearchError(f"unknown run {name!r} in {home.runs} (runs there: {listed})")
    return folder


def read_trial_records(folder: Path, info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The last record per trial: from ``trials.jsonl``, else from the run's MLflow child runs."""
    from .tracking import read_trials_jsonl

    records = read_trials_jsonl(folder / "trials.jsonl")
    if records:
        return records
    ml = info.get("mlflow") or {}
    if ml.get("tracking_uri") and ml.get("parent_run_id"):
        return _records_from_mlflow(folder, ml["tracking_uri"], ml["parent_run_id"])
    return {}


def _records_from_mlflow(folder: Path, uri: str, parent: str) -> dict[str, dict[str, Any]]:
    """trials.jsonl-like records rebuilt from the child runs of ``parent``."""
    from .tracking import SearchTracker

    def value(s: str) -> Any:  # params were logged JSON-encoded unless they were strings
        try:
            return json.loads(s)
        except json.JSONDecodeError:
            return s

    tracker = SearchTracker(uri, run_dir=None)
    try:
        tracker.resume_parent(parent, mark_running=False)
        runs = tracker.children(parent, extra_filter="tags.`ratio_search.kind` = 'trial'")
    except Exception as e:  # noqa: BLE001 - any store problem is one clear line
        raise SearchError(f"cannot read the trials of {folder.name} from MLflow ({e})") from None
    states = {"FINISHED": "TERMINATED", "FAILED": "ERROR", "RUNNING": "RUNNING", "KILLED": "KILLED"}
    out: dict[str, dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        tags = run.data.tags
        tid = tags.get("ray_trial_id", run.info.run_id)
        out[tid] = {
            "trial_id": tid,
            "state": states.get(run.info.status, run.info.status),
            "params": {k: value(v) for k, v in run.data.params.items()},
            "metrics": dict(run.data.metrics),
            "epoch": int(tags.get("last_epoch", 0) or 0),
            "pool_key": tags.get("pool_key"),
            "model_hash": tags.get("model_hash"),
            "device": tags.get("device"),
            "mlflow_run_id": run.info.run_id,
            "node_id": tags.get("node_id"),
        }
    return out


def best_record(
    records: dict[str, dict[str, Any]], metric: str, mode: str
) -> dict[str, Any] | None:
    """The finished trial whose last ``metric`` is best; ties go to the earliest trial."""
    sign = 1.0 if mode == "max" else -1.0
    best, best_v = None, -math.inf
    for rec in records.values():  # in first-seen order, so ">" keeps the earliest of a tie
        v = (rec.get("metrics") or {}).get(metric)
        if rec.get("state") == "TERMINATED" and _finite(v) and sign * v > best_v:
            best, best_v = rec, sign * v
    return best


def _full_config(folder: Path, info: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The trial's complete config (the space's fixed values and defaults added to its params)."""
    space_doc = info.get("space")
    if not isinstance(space_doc, dict) and (folder / "space.yaml").is_file():
        space_doc = yaml.safe_load((folder / "space.yaml").read_text())
    if not isinstance(space_doc, dict):
        return dict(params)
    from .space import parse_space

    space = parse_space(space_doc, origin=f"{folder / 'run.json'} space")
    return space.trial_config(dict(params))


def _data_section(folder: Path) -> dict[str, Any]:
    """The search's resolved data config (``config.yaml``), validated."""
    path = folder / "config.yaml"
    if not path.is_file():
        raise SearchError(f"{path}: missing; the run's data config is unknown")
    doc = yaml.safe_load(path.read_text()) or {}
    cfg = config_from_dict({"data": doc.get("data") or {}})
    from .config import config_to_dict

    return config_to_dict(cfg.data)


def build_export(home: Home, name: str, trial_id: str | None = None) -> dict[str, Any]:
    """The ``best.yaml`` document of run ``name``: its best finished trial (or ``trial_id``).

    Raises :class:`SearchError` for an unknown run, a run with no finished trial, or an unknown
    or unfinished ``trial_id``.
    """
    folder = _run_folder(home, name)
    info = _read_json(folder / "run.json")
    metric = str(info.get("metric") or "val_accuracy")
    mode = str(info.get("mode") or "max")
    records = read_trial_records(folder, info)
    if trial_id is not None:
        rec = records.get(str(trial_id))
        if rec is None:
            raise SearchError(f"run {name} has no trial {trial_id!r}")
        if rec.get("state") != "TERMINATED":
            raise SearchError(f"trial {trial_id} of run {name} is {rec.get('state')}, not finished")
    else:
        rec = best_record(records, metric, mode)
        if rec is None:
            counts: dict[str, int] = {}
            for r in records.values():
                counts[str(r.get("state"))] = counts.get(str(r.get("state")), 0) + 1
            seen = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "none"
            raise SearchError(
                f"run {name} has no finished trial with a {metric} yet (trials: {seen}); "
                f"see: ratio-search status {name}"
            )

    params = dict(rec.get("params") or {})
    full = _full_config(folder, info, params)
    metrics = dict(rec.get("metrics") or {})
    epoch = int(rec.get("epoch") or metrics.get("epoch") or 0)

    train: dict[str, Any] = dict(vars(TrainConfig()))
    train.update({k: full[k] for k in TRAIN_KEYS if k in full})
    planned_epochs = int(train["epochs"])
    if 0 < epoch < planned_epochs:
        # A scheduler (ASHA) stopped the trial: its metric is the one after `epoch` epochs.
        train["epochs"] = epoch
    train["device"] = "auto"
    # The trial trained with torch threads = its CPU share; the same count repeats it bit for bit.
    resources = (info.get("options") or {}).get("resources") or {}
    train["threads"] = max(1, int(float(resources.get("cpus_per_trial") or 1)))
    config_from_dict({"train": train})  # fail here, not in `train`, if a value is invalid

    pool_key = rec.get("pool_key") or None
    if float(train["r"]) == 0.0:
        pool_key = None  # R = 0 mixes nothing in, whatever pool a trial had at hand
    ml = info.get("mlflow") or {}
    validation = {
        k: (float(v) if _finite(v) else None)
        for k, v in metrics.items()
        if k.startswith("val_") or k == metric
    }
    notes = []
    if train["epochs"] != planned_epochs:
        notes.append(f"stopped early by the scheduler after {epoch} of {planned_epochs} epochs")
    odd = [k for k in UNREPRODUCIBLE_KEYS if k in full]
    if odd:
        notes.append(
            f"the trial's classifier was changed by {', '.join(odd)}, which train --config "
            "cannot set: its numbers will differ"
        )
    expected: dict[str, Any] = {
        "run": info.get("name", name),
        "trial_id": rec.get("trial_id"),
        "metric": metric,
        "mode": mode,
        "value": validation.get(metric),
        "epoch": epoch,
        "validation": validation,
        "train_loss": float(metrics["train_loss"]) if _finite(metrics.get("train_loss")) else None,
        "n_synthetic": metrics.get("n_synthetic"),
        "params": full,
        "pool_key": pool_key,
        "pool_n": info.get("pool_n") if pool_key else None,
        "model_hash": rec.get("model_hash") or info.get("model_hash"),
        "model_path": info.get("model_path"),
        "data_key": info.get("data_key"),
        "device": rec.get("device"),
        "node_id": rec.get("node_id"),
        "mlflow": {
            "tracking_uri": ml.get("tracking_uri"),
            "experiment_id": ml.get("experiment_id"),
            "parent_run_id": ml.get("parent_run_id"),
            "child_run_id": rec.get("mlflow_run_id"),
        },
        "versions": package_versions(),
        "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "notes": notes,
    }
    pool: Any = pool_key
    pool_n = info.get("pool_n")
    if pool_key and isinstance(pool_n, int) and not isinstance(pool_n, bool) and pool_n > 0:
        # The trial mixed from the pool's first pool_n images; a cached pool may since have grown.
        pool = {"key": pool_key, "n": pool_n}
    return {
        "data": _data_section(folder),
        "train": train,
        "pool": pool,
        "expected": expected,
    }


HEADER = (
    "# The best trial of a ratio-search search. Reproduce it with:\n"
    "#   ratio-search train --config {path}\n"
    "# `data`, `train` and `pool` are read by `train`; `expected` is metadata it ignores.\n"
)


def _yaml_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _yaml_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_yaml_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_export(doc: dict[str, Any], out: str | os.PathLike, as_json: bool = False) -> Path:
    """Write ``doc`` to ``out`` as YAML (or JSON), atomically (temp file + rename)."""
    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"--out: {path} is a folder; give a file name such as best.yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = _yaml_safe(doc)
    if as_json:
        text = json.dumps(doc, indent=2, default=str) + "\n"
    else:
        text = HEADER.format(path=path) + yaml.safe_dump(doc, sort_keys=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
