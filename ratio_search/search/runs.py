"""The run folder of a search and what can be read from it without Ray: run.json, trials.jsonl.

``home.runs / NAME /`` holds ``run.json`` (the run's identity and state, written atomically by the
driver), ``config.yaml`` and ``space.yaml`` (what it searched), ``optuna.db`` (the Optuna study),
``tune/`` (the Ray Tune experiment) and ``trials.jsonl`` (one line per trial event; the last line
per trial wins). ``ratio-search status`` reads only run.json and trials.jsonl, so it works while
a search runs, after it crashed, and on a machine without Ray.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from ..errors import SearchError
from ..home import Home, pid_alive

RUN_JSON = "run.json"
TRIALS_JSONL = "trials.jsonl"
STATES = ("running", "finished", "interrupted", "failed")
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


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _finite(obj: Any) -> Any:
    """NaN / inf (e.g. in a model's training stats) become None: run.json stays strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_run_json(folder: Path, info: dict[str, Any]) -> None:
    """Write run.json atomically (temp file + rename), stamping ``updated``."""
    info["updated"] = now_iso()
    tmp = folder / f".{RUN_JSON}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(_finite(info), indent=2, default=str, allow_nan=False) + "\n")
    os.replace(tmp, folder / RUN_JSON)


def read_run_json(folder: Path) -> dict[str, Any]:
    p = folder / RUN_JSON
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SearchError(f"{p}: cannot read the run's state ({e})") from None


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


def read_trials(folder: Path) -> dict[str, dict[str, Any]]:
    """The last record per trial id of ``trials.jsonl`` (a torn last line is skipped)."""
    out: dict[str, dict[str, Any]] = {}
    p = folder / TRIALS_JSONL
    if not p.is_file():
        return out
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("trial_id") is not None:
            out[str(rec["trial_id"])] = rec
    return out


def append_trial_line(folder: Path, record: dict[str, Any]) -> None:
    """Append one record to trials.jsonl with a single write (a reader never sees half a line)."""
    data = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(folder / TRIALS_JSONL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _value(rec: dict[str, Any], metric: str) -> float | None:
    v = (rec.get("metrics") or {}).get(metric)
    if isinstance(v, int | float) and math.isfinite(v):
        return float(v)
    return None


def best_trial(trials: dict[str, dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The finished (TERMINATED) trial whose last ``metric`` is best, or None."""
    done = [
        t
        for t in trials.values()
        if t.get("state") == "TERMINATED" and _value(t, metric) is not None
    ]
    if not done:
        return None
    key = (lambda t: _value(t, metric)) if mode == "max" else (lambda t: -_value(t, metric))  # type: ignore[operator]
    return max(done, key=key)


def run_status(home: Home, name: str) -> dict[str, Any]:
    """Everything ``ratio-search status NAME`` shows: the run's state, counts, trials and best."""
    folder = find_run(home, name)
    info = read_run_json(folder)
    trials = read_trials(folder)
    metric, mode = info.get("metric", "val_accuracy"), info.get("mode", "max")
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
                metric: _value(rec, metric),
                "pool_key": rec.get("pool_key"),
                "mlflow_run_id": rec.get("mlflow_run_id"),
                "error": (rec.get("error") or "").strip().splitlines()[-1:] or None,
            }
        )
    best = best_trial(trials, metric, mode)
    state = info.get("state")
    pid = (info.get("ray") or {}).get("driver_pid")
    if state == "running" and pid and not pid_alive(int(pid)):
        state = "crashed"  # run.json says running but its driver is gone: resume it
    return {
        "name": info.get("name", name),
        "run_dir": str(folder),
        "state": state,
        "created": info.get("created"),
        "updated": info.get("updated"),
        "n_trials": info.get("n_trials"),
        "done": counts.get("TERMINATED", 0) + counts.get("ERROR", 0),
        "counts": counts,
        "metric": metric,
        "mode": mode,
        "best": None
        if best is None
        else {
            "trial_id": best["trial_id"],
            "params": best.get("params"),
            "metric": _value(best, metric),
        },
        "trials": rows,
        "mlflow_parent_run_id": (info.get("mlflow") or {}).get("parent_run_id"),
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
