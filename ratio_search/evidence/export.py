"""Export the best trial of a search as ``best.yaml``: a ``ratio-search train --config`` file.

:func:`build_export` reads the run folder (``run.json``, ``config.yaml``, ``trials.jsonl``; or
the search's MLflow child runs when trials.jsonl is missing) and returns the document;
:func:`write_export` writes it. The document holds:

- ``data`` and ``train``: the sections ``train --config`` reads. ``data`` is the search's resolved
  data config, ``train`` the trial's :class:`~ratio_search.config.TrainConfig` (r, mode, seed,
  epochs, batch size, lr, the CNN's widths and fc; epochs = the epoch the trial's reported metric
  comes from, in case a scheduler stopped it early);
- ``pool``: ``{key, n}``: the pool of generated images the trial mixed in and how many of its
  first images the trial drew from (a cached pool can grow later); None at R = 0. A trial with
  several synthetic classes (the record's ``pool_keys``) gets ``pools: {<class name>: {key, n}}``
  instead, one pool per class; ``train.filter_top`` is applied again from each pool's scores;
- ``expected``: metadata that ``train`` ignores: the trial's validation metrics, its full config,
  pool key, model hash and path, data key, MLflow ids, package versions. Later stages (the
  multi-seed confirmation, the test split) add their blocks inside ``expected`` too, because
  ``train --config`` accepts no other top-level keys.

Running ``ratio-search train --config best.yaml`` on the same device repeats the trial and gives
the same validation metric (same data, pool, seed, config: the trainer is deterministic).
:func:`export_with_confirmation` adds the multi-seed confirmation (:mod:`.confirm`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from .._io import atomic_write_text, is_number, json_safe, package_versions, utc_now
from ..config import TrialConfig, config_from_dict, config_to_dict
from ..errors import ConfigError, SearchError
from ..home import Home
from ..search.runs import find_run, read_run_json
from ..search.trials import best_trial, read_trials
from .candidates import config_signature
from .confirm import confirm
from .runs import RunContext, load_run_space, trial_threads


def read_trial_records(folder: Path, info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The last record per trial: from ``trials.jsonl``, else from the run's MLflow child runs."""
    records = read_trials(folder)
    if records:
        return records
    ml = info.get("mlflow") or {}
    if ml.get("tracking_uri") and ml.get("parent_run_id"):
        return _records_from_mlflow(folder, ml["tracking_uri"], ml["parent_run_id"])
    return {}


def _records_from_mlflow(folder: Path, uri: str, parent: str) -> dict[str, dict[str, Any]]:
    """trials.jsonl-like records rebuilt from the child runs of ``parent``."""
    from ..tracking import SearchTracker

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
            "pool_keys": tags.get("pool_keys"),
            "model_hash": tags.get("model_hash"),
            "device": tags.get("device"),
            "mlflow_run_id": run.info.run_id,
            "node_id": tags.get("node_id"),
            "reused_from": tags.get("reused_from"),
        }
    return out


def _full_config(folder: Path, info: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The trial's complete config (the space's fixed values and defaults added to its params)."""
    space = load_run_space(folder, info)
    return space.trial_config(dict(params)) if space is not None else dict(params)


def _data_section(folder: Path) -> dict[str, Any]:
    """The search's resolved data config (``config.yaml``), validated."""
    path = folder / "config.yaml"
    if not path.is_file():
        raise SearchError(f"{path}: missing; the run's data config is unknown")
    doc = yaml.safe_load(path.read_text()) or {}
    cfg = config_from_dict({"data": doc.get("data") or {}})
    return config_to_dict(cfg.data)


def build_export(home: Home, name: str, trial_id: str | None = None) -> dict[str, Any]:
    """The ``best.yaml`` document of run ``name``: its best finished trial (or ``trial_id``).

    Raises :class:`SearchError` for an unknown run, a run with no finished trial, or an unknown
    or unfinished ``trial_id``.
    """
    folder = find_run(home, name)
    info = read_run_json(folder)
    if not isinstance(info, dict):
        raise SearchError(f"{folder / 'run.json'}: expected a JSON object")
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
        rec = best_trial(records, metric, mode)
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

    # The trial's TrainConfig (the CNN's widths/fc included); flat keys that are not part of a
    # trial config (none today) are metadata and stay in expected.params only.
    flat_keys = TrialConfig().to_flat()
    trial = TrialConfig.from_flat({k: v for k, v in full.items() if k in flat_keys})
    train: dict[str, Any] = config_to_dict(trial.train)
    planned_epochs = int(train["epochs"])
    if 0 < epoch < planned_epochs:
        # A scheduler (ASHA) stopped the trial: its metric is the one after `epoch` epochs.
        train["epochs"] = epoch
    train["device"] = "auto"
    # The trial trained with torch threads = its CPU share; the same count repeats it bit for bit.
    train["threads"] = trial_threads(info)
    config_from_dict({"train": train})  # fail here, not in `train`, if a value is invalid

    pool_key = rec.get("pool_key") or None
    pool_keys = trial_pool_keys(rec)
    if float(train["r"]) == 0.0:
        pool_key = pool_keys = None  # R = 0 mixes nothing in, whatever pool a trial had at hand
    ml = info.get("mlflow") or {}
    validation = {
        k: (float(v) if is_number(v) else None)
        for k, v in metrics.items()
        if k.startswith("val_") or k == metric
    }
    notes = []
    if train["epochs"] != planned_epochs:
        notes.append(f"stopped early by the scheduler after {epoch} of {planned_epochs} epochs")
    expected: dict[str, Any] = {
        "run": info.get("name", name),
        "trial_id": rec.get("trial_id"),
        "metric": metric,
        "mode": mode,
        "value": validation.get(metric),
        "epoch": epoch,
        "validation": validation,
        "train_loss": float(metrics["train_loss"])
        if is_number(metrics.get("train_loss"))
        else None,
        "n_synthetic": metrics.get("n_synthetic"),
        "params": full,
        "pool_key": pool_key,
        **({"pool_keys": pool_keys} if pool_keys else {}),
        "pool_n": info.get("pool_n") if pool_key or pool_keys else None,
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
        "exported": utc_now(),
        "notes": notes,
    }
    pool_n = info.get("pool_n")
    has_n = isinstance(pool_n, int) and not isinstance(pool_n, bool) and pool_n > 0
    # The trial mixed from each pool's first pool_n images; a cached pool may since have grown.
    if pool_keys and (len(pool_keys) > 1 or str(train.get("synthetic_classes")) != "default"):
        # one pool per synthetic class (train --config applies train.filter_top to each again)
        pools = {c: ({"key": k, "n": pool_n} if has_n else k) for c, k in pool_keys.items()}
        return {"data": _data_section(folder), "train": train, "pools": pools, "expected": expected}
    if pool_keys:  # the default class alone: its one key
        pool_key = next(iter(pool_keys.values()))
    pool: Any = {"key": pool_key, "n": pool_n} if pool_key and has_n else pool_key
    return {
        "data": _data_section(folder),
        "train": train,
        "pool": pool,
        "expected": expected,
    }


def trial_pool_keys(rec: dict[str, Any]) -> dict[str, str] | None:
    """``{class name: pool key}`` of a trial record: its ``pool_keys`` (a JSON object, as the
    search's trainable reports it, top level or among the metrics), or None when it has none."""
    value = rec.get("pool_keys")
    if value is None:
        value = (rec.get("metrics") or {}).get("pool_keys")
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else None
        except ValueError:
            return None
    if not isinstance(value, dict) or not value:
        return None
    return {str(k): str(v) for k, v in value.items() if v} or None


HEADER = (
    "# The best trial of a ratio-search search. Reproduce it with:\n"
    "#   ratio-search train --config {path}\n"
    "# `data`, `train` and `pool` (or `pools`) are read by `train`; `expected` is metadata it ignores.\n"
)


def write_export(doc: dict[str, Any], out: str | os.PathLike, as_json: bool = False) -> Path:
    """Write ``doc`` to ``out`` as YAML (or JSON), atomically (temp file + rename)."""
    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"--out: {path} is a folder; give a file name such as best.yaml")
    # Plain values only (numpy scalars, tuples, paths and NaN have no YAML form of their own).
    doc = json.loads(json.dumps(json_safe(doc), default=str))
    if as_json:
        text = json.dumps(doc, indent=2) + "\n"
    else:
        text = HEADER.format(path=path) + yaml.safe_dump(doc, sort_keys=False)
    return atomic_write_text(path, text)


# ------------------------------------------------------------------------------ with confirmation


def read_trial_params(home: Home, name: str) -> dict[str, dict[str, Any]]:
    """``{trial_id: params}`` of run ``name`` (from trials.jsonl)."""
    return {
        tid: dict(rec.get("params") or {}) for tid, rec in read_trials(find_run(home, name)).items()
    }


def export_with_confirmation(
    home: Home,
    name: str,
    trial_id: str | None = None,
    register: str | None = None,
    **confirm_kwargs: Any,
) -> dict[str, Any]:
    """``export.build_export`` plus the confirmation, as ``expected.confirm`` in best.yaml.

    ``register``: also register the chosen classifier in MLflow's model registry under this name.

    Without an explicit ``trial_id``, the exported trial is the *chosen* configuration's trial
    (the best confirmed mean), which is not always the search's best single trial: a lucky trial
    that fails its confirmation is not exported. When the chosen configuration has no trial of
    its own (R = 0 that the search never ran), the best trial stays exported, with a note.
    """
    doc = build_export(home, name, trial_id=trial_id)
    result = confirm(home, name, **confirm_kwargs)
    chosen = next(c for c in result["configurations"] if c["label"] == result["chosen"]["label"])
    exported = doc["expected"].get("trial_id")
    notes = doc["expected"].setdefault("notes", [])
    ctx = confirm_kwargs.get("context")
    if ctx is None:
        folder = find_run(home, name)
        ctx = RunContext(home, folder, read_run_json(folder))
    trials = read_trial_params(home, name)
    exported_cfg = ctx.full_config(trials.get(str(exported), {}))
    same = config_signature(exported_cfg) == config_signature(result["chosen"]["config"])
    if trial_id is None and chosen.get("trial_id") and not same:
        doc = build_export(home, name, trial_id=chosen["trial_id"])
        notes = doc["expected"].setdefault("notes", [])
        notes.append(
            f"exported trial {chosen['trial_id']} ({chosen['label']}), the best after confirmation, "
            f"instead of the best single trial {exported}"
        )
    elif trial_id is None and not chosen.get("trial_id") and not same:
        notes.append(
            f"the confirmation chose {chosen['label']}, which the search never ran as a trial; "
            f"the exported trial is the best single trial {exported}"
        )
    # best.yaml carries the budget the confirmation trained at (never a scheduler's stopped epoch).
    planned = doc["expected"]["params"].get("epochs")
    if isinstance(planned, int) and doc["train"]["epochs"] != planned:
        doc["expected"].setdefault("notes", []).append(
            f"epochs {doc['train']['epochs']} (where the scheduler stopped the trial) replaced by "
            f"the full budget {planned} that the confirmation trained at"
        )
        doc["train"]["epochs"] = planned
    doc["expected"]["confirm"] = result
    # >>> the chosen classifier as an MLflow model (tracking/models.py)
    if isinstance(result.get("mlflow"), dict) and result["chosen"]["label"] in result["mlflow"]:
        from ..tracking.models import log_chosen_model
        from .runs import run_files

        pick = result["chosen"]
        _, weights = run_files(find_run(home, name) / "confirm", pick["label"], pick["config"],
                               result["seeds"][0], ctx)  # fmt: skip
        result["model"] = log_chosen_model(ctx, result, weights, register_as=register)
    # <<< end of the MLflow model block
    return doc
