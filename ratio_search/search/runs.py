"""The run folder of a search and what can be read from it without Ray: run.json, trials.jsonl.

``home.runs / NAME /`` holds ``run.json`` (the run's identity and state, written atomically by the
driver), ``config.yaml`` and ``space.yaml`` (what it searched), ``optuna.db`` (the Optuna study),
``tune/`` (the Ray Tune experiment) and ``trials.jsonl`` (one line per trial event; the last line
per trial wins). ``ratio-search status`` reads only run.json and trials.jsonl, so it works while
a search runs, after it crashed, and on a machine without Ray.

One driver per run: the driver holds ``driver.lock`` (a :mod:`filelock` lock, released by the
kernel when its process dies, however it dies) for its whole life, clean-up included, and writes
who holds it (host, pid, since) to ``driver.json``. ``run`` and ``resume`` of a locked run refuse
with one line naming the holder; ``status`` asks the lock whether a "running" search is alive.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .._io import atomic_write_json, utc_now
from ..errors import SearchError
from ..home import Home, pid_alive
from .runinfo import RUN_JSON, STATES, RunInfo  # noqa: F401

# trials.jsonl names that importers know from here (best_trial, read_trials: removed at integration)
from .trials import TRIALS_JSONL, best_trial, metric_value, read_trials  # noqa: F401

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


LOCK_FILE = "driver.lock"
HOLDER_FILE = "driver.json"


def default_name() -> str:
    """``search-YYYYmmdd-HHMMSS`` (UTC)."""
    return time.strftime("search-%Y%m%d-%H%M%S", time.gmtime())


def new_run_folder(home: Home, name: str | None) -> tuple[str, Path]:
    """The name and folder of a new run. A default name is made unique by creating its folder
    exclusively (``-2``, ``-3``, ... when two searches start in the same second); a given name's
    folder may exist (the lock and run.json decide whether it may be used)."""
    home.runs.mkdir(parents=True, exist_ok=True)
    if name:
        folder = home.runs / check_name(name)
        folder.mkdir(exist_ok=True)
        return name, folder
    base = default_name()
    for i in range(1, 1000):
        cand = base if i == 1 else f"{base}-{i}"
        try:
            (home.runs / cand).mkdir()
        except FileExistsError:
            continue
        return cand, home.runs / cand
    raise SearchError(f"no free run name like {base} in {home.runs}; give --name")


def hostname() -> str:
    return socket.gethostname()


class RunLock:
    """The lock of one run folder, held by its driver from the first second to the last."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._lock = FileLock(str(self.folder / LOCK_FILE), thread_local=False)

    def acquire(self, wait: float = 2.0) -> RunLock:
        """Take the lock within ``wait`` s; SearchError naming the holder otherwise."""
        try:
            self._lock.acquire(timeout=wait)
        except Timeout:
            raise SearchError(f"run {self.folder.name} {held_by(self.folder)}") from None
        me = {"host": hostname(), "pid": os.getpid(), "since": utc_now()}
        atomic_write_json(self.folder / HOLDER_FILE, me)
        return self

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def release(self) -> None:
        if self._lock.is_locked:
            (self.folder / HOLDER_FILE).unlink(missing_ok=True)
            self._lock.release(force=True)


def read_holder(folder: Path) -> dict[str, Any]:
    """What ``driver.json`` says about the lock's holder ({} when unreadable)."""
    try:
        doc = json.loads((Path(folder) / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def held_by(folder: Path) -> str:
    """``is in use by the driver on HOST (pid PID, since T); ...`` for a refusal."""
    h = read_holder(folder)
    who = f"on {h.get('host', '?')} (pid {h.get('pid', '?')}, since {h.get('since', '?')})"
    return f"is in use by the driver {who}; wait for it to end or stop it first"


def lock_holder(folder: Path) -> dict[str, Any] | None:
    """The live driver holding ``folder``'s lock (``driver.json``'s {host, pid, since}), or None
    when nobody holds it. Never waits; a folder without a lock file (an older run) has none."""
    path = Path(folder) / LOCK_FILE
    if not path.is_file():
        return None
    probe = FileLock(str(path))
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return read_holder(folder)
    except OSError:  # a read-only home: cannot tell
        return None
    probe.release(force=True)
    return None


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


def resume_command(home: Home, name: str) -> str:
    """The exact command that resumes this run."""
    here = Path(os.getcwd()).resolve()
    env_home = os.environ.get("RATIO_SEARCH_HOME")
    if home.root == here or (env_home and Path(env_home).resolve() == home.root):
        return f"ratio-search resume {name}"
    return f"ratio-search resume {name} --home {home.root}"


def _test_looks(folder: Path) -> int:
    """How many times export looked at the test split (``test_looks.jsonl``)."""
    from .looks import look_count

    return look_count(folder)


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
                # the other sampled levers, when the space samples them
                **{k: params[k] for k in LEVERS if k in params},
                "epoch": rec.get("epoch"),
                metric: metric_value(rec, metric),
                "pool_key": rec.get("pool_key"),
                "mlflow_run_id": rec.get("mlflow_run_id"),
                # the trial that measured this result (an equivalent configuration, not retrained)
                "reused_from": rec.get("reused_from"),
                "error": (rec.get("error") or "").strip().splitlines()[-1:] or None,
            }
        )
    best = best_trial(trials, metric, mode)
    state = info.state
    if state in ("starting", "running") and not driver_alive(folder, info):
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
        "test_looks": _test_looks(folder),  # looks at the test split (search/looks.py)
        "calibration": info.extra.get("calibration"),  # the R = 0 budget (calibrate.py)
    }


def driver_alive(folder: Path, info: RunInfo) -> bool:
    """Whether the run's driver still runs: its lock is held (on any host sharing the folder);
    for a run without a lock file (an older version), its pid on this host."""
    if (Path(folder) / LOCK_FILE).is_file():
        return lock_holder(folder) is not None
    host, pid = info.host, info.ray.driver_pid
    if host and host != hostname():
        return True  # another machine's process: cannot tell from here
    return bool(pid) and pid_alive(int(pid))


# Sampled parameters beside R, guidance and steps that a status row shows when sampled.
LEVERS = ("mode", "filter_top", "finetune_steps", "synthetic_classes", "arch")
# The parameters shown for the best trial of a finished search.
_SUMMARY_KEYS = (
    "r", "guidance", "steps", "scheduler", "postprocess", "mode", "lr", "batch_size", "epochs",
    "seed", "filter_top", "finetune_steps", "synthetic_classes", "arch",
)  # fmt: skip


def summary(home: Home, run_dir: Path, info: RunInfo) -> dict[str, Any]:
    """What `run` and `resume` return: the run's outcome, its best trial and how to resume it."""
    st = run_status(home, info.name)
    best = st["best"]
    if best is not None:
        best = {
            "trial_id": best["trial_id"],
            "params": {k: best["params"][k] for k in _SUMMARY_KEYS if k in (best["params"] or {})},
            "metric": best["metric"],
        }
    out = {
        "name": info.name,
        "run_dir": str(run_dir),
        "state": info.state,
        "metric": info.metric,
        "mode": info.mode,
        "best": best,
        "n_trials": st["done"],
        "n_trials_asked": info.n_trials,
        "n_errors": st["counts"].get("ERROR", 0),
        "mlflow_parent_run_id": info.mlflow.parent_run_id,
        "tracking_uri": info.mlflow.tracking_uri,
    }
    if info.state != "finished":
        out["resume_command"] = resume_command(home, info.name)
    return out


def list_runs(home: Home) -> list[dict[str, Any]]:
    """One summary per search in ``home.runs``, oldest first; a run whose run.json is broken is
    listed with state "broken" and the error (the others are listed all the same)."""
    out = []
    for name in known_runs(home):
        try:
            s = run_status(home, name)
        except SearchError as e:
            out.append(
                {"name": name, "state": "broken", "done": 0, "n_trials": None,
                 "best_metric": None, "metric": None, "created": None, "error": str(e)}
            )  # fmt: skip
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
    return sorted(out, key=lambda r: str(r["created"] or ""))
