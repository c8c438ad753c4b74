"""The run folder of a search and what can be read from it without Ray: run.json, trials.jsonl.

``home.runs / NAME /`` holds ``run.json`` (the run's identity and state, written atomically by the
driver), ``config.yaml`` and ``space.yaml`` (what it searched), ``optuna.db`` (the Optuna study),
``tune/`` (the Ray Tune experiment) and ``trials.jsonl`` (one line per trial event; the last line
per trial wins). ``ratio-search status`` reads only run.json and trials.jsonl, so it works while
a search runs, after it crashed, and on a machine without Ray.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any

from ..errors import SearchError
from ..home import Home, pid_alive
from .runinfo import RUN_JSON, STATES, RunInfo  # noqa: F401

# trials.jsonl names that importers know from here (best_trial, read_trials: removed at integration)
from .trials import TRIALS_JSONL, best_trial, metric_value, read_trials  # noqa: F401

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def default_name() -> str:
    """``search-YYYYmmdd-HHMMSS`` (UTC)."""
    return time.strftime("search-%Y%m%d-%H%M%S", time.gmtime())


def check_name(name: str) -> str:
    """A run name is one path component of letters, digits, ``.``, ``_``, ``-``."""
    if not _NAME_RE.match(name or ""):
        raise SearchError(
            f"invalid run name {name!r}: use letters, digits, '.', '_' and '-' (at most 100)"
        )
    return name


def run_dir(home: Home, name: str) -> Path:
    return home.runs / check_name(name)


def ray_temp_dir(run_folder: Path) -> str:
    """A short, per-run Ray temp dir: Ray's unix sockets live under it and their paths must stay
    below 107 characters, which a run folder deep in a home directory may not."""
    digest = hashlib.sha1(str(Path(run_folder).resolve()).encode()).hexdigest()[:10]
    return f"/tmp/rs-{digest}"


def write_run_json(folder: Path, info: RunInfo | dict[str, Any]) -> None:
    """Write run.json atomically, stamping ``updated`` (a dict is read as a :class:`RunInfo`)."""
    if isinstance(info, RunInfo):
        info.save(folder)
        return
    rec = RunInfo.from_dict(info)
    rec.save(folder)
    info["updated"] = rec.updated


def read_run_json(folder: Path) -> dict[str, Any]:
    """run.json as a plain dict (see :meth:`RunInfo.load` for the typed record)."""
    return RunInfo.load(folder).to_dict()


def known_runs(home: Home) -> list[str]:
    if not home.runs.is_dir():
        return []
    return sorted(p.name for p in home.runs.iterdir() if (p / RUN_JSON).is_file())


def find_run(home: Home, name: str) -> Path:
    """The folder of an existing run; SearchError naming the known runs otherwise."""
    folder = home.runs / name
    if not _NAME_RE.match(name or "") or not (folder / RUN_JSON).is_file():
        runs = known_runs(home)
        listed = ", ".join(runs[-10:]) if runs else "none"
        raise SearchError(f"unknown run {name!r} in {home.runs} (runs there: {listed})")
    return folder


def run_status(home: Home, name: str) -> dict[str, Any]:
    """Everything ``ratio-search status NAME`` shows: the run's state, counts, trials and best."""
    folder = find_run(home, name)
    info = RunInfo.load(folder)
    trials = read_trials(folder)
    metric, mode = info.metric, info.mode
    counts = {s: 0 for s in ("RUNNING", "TERMINATED", "ERROR")}
    rows = []
    for tid, rec in trials.items():
        state = str(rec.get("state"))
        counts[state] = counts.get(state, 0) + 1
        if state == "LOST":  # started just before a crash, unknown to the restored experiment
            continue
        params = rec.get("params") or {}
        rows.append(
            {
                "trial_id": tid,
                "state": state,
                "r": params.get("r"),
                "guidance": params.get("guidance"),
                "steps": params.get("steps"),
                "epoch": rec.get("epoch"),
                metric: metric_value(rec, metric),
                "pool_key": rec.get("pool_key"),
                "mlflow_run_id": rec.get("mlflow_run_id"),
                "error": (rec.get("error") or "").strip().splitlines()[-1:] or None,
            }
        )
    best = best_trial(trials, metric, mode)
    state = info.state
    pid = info.ray.driver_pid
    if state == "running" and pid and not pid_alive(int(pid)):
        state = "crashed"  # run.json says running but its driver is gone: resume it
    return {
        "name": info.name or name,
        "run_dir": str(folder),
        "state": state,
        "created": info.created,
        "updated": info.updated,
        "n_trials": info.n_trials,
        "done": counts.get("TERMINATED", 0) + counts.get("ERROR", 0),
        "counts": counts,
        "metric": metric,
        "mode": mode,
        "best": None
        if best is None
        else {
            "trial_id": best["trial_id"],
            "params": best.get("params"),
            "metric": metric_value(best, metric),
        },
        "trials": rows,
        "mlflow_parent_run_id": info.mlflow.parent_run_id,
    }


def list_runs(home: Home) -> list[dict[str, Any]]:
    """One summary per search in ``home.runs``, oldest first."""
    out = []
    for name in known_runs(home):
        try:
            s = run_status(home, name)
        except SearchError:
            continue
        out.append(
            {
                "name": s["name"],
                "state": s["state"],
                "done": s["done"],
                "n_trials": s["n_trials"],
                "best_metric": None if s["best"] is None else s["best"]["metric"],
                "metric": s["metric"],
                "created": s["created"],
            }
        )
    return sorted(out, key=lambda r: str(r["created"]))
