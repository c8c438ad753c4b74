"""Selective clean-up of what ratio-search keeps under its home: run folders, pools, models, cache.

Names: a run by its exact name; a pool key, a model hash, a cache key or a data folder by its
exact name or a unique prefix (an ambiguous prefix is an error, an empty name too). A run whose
search is still running (its driver lock held, or run.json says running/starting with a live
driver) is refused. Leftover ``.tmp-*`` / ``.old-*`` folders of interrupted builders (pools,
models, cache) are shown and removed only with ``stale=True``, and only when their builder is
gone (its lock can be taken), never by their age.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from ._io import read_json
from .errors import RatioSearchError
from .home import Home, dir_size, pid_alive

KINDS = ("runs", "pools", "models", "cache", "data")
# Shown by `clean` without arguments but not removed entry by entry: the MLflow store is one db.
SHOWN = (*KINDS, "mlruns")
# The stores whose builders leave temp folders behind when they are killed.
BUILT = ("pools", "models", "cache")
DRIVER_LOCK = "driver.lock"  # runs/NAME/driver.lock: held by a search's driver for its whole life
LIVE_STATES = ("running", "starting")


@dataclass
class Target:
    """One thing that `clean` would remove."""

    kind: str
    name: str
    path: Path
    size: int
    lock: Path | None = None  # a stale temp folder: removed only while this lock is free


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def store_sizes(home: Home) -> dict[str, int]:
    """Size in bytes of each store under the home (missing stores count 0)."""
    return {k: dir_size(getattr(home, k)) if getattr(home, k).exists() else 0 for k in SHOWN}


def _entries(root: Path) -> list[Path]:
    # lock files, temp folders and the MLflow db are not entries of their own
    if not root.is_dir():
        return []
    return [e for e in sorted(root.iterdir()) if not e.name.startswith(".") and e.suffix != ".lock"]


def _match(kind: str, entries: list[Path], name: str) -> list[Path]:
    """The entries ``name`` means: a run exactly; anything else exactly, else by unique prefix."""
    exact = [e for e in entries if e.name == name]
    if exact or kind == "runs":
        return exact
    hits = [e for e in entries if e.name.startswith(name)]
    if len(hits) > 1:
        shown = ", ".join(e.name for e in hits[:5]) + (", ..." if len(hits) > 5 else "")
        raise RatioSearchError(
            f"{name!r} is ambiguous in {kind}: {len(hits)} entries start with it ({shown}); "
            "give more of it"
        )
    return hits


def running_search(folder: Path) -> str | None:
    """Why the run in ``folder`` is still running (its driver, host, pid), or None if it is not."""
    from .pools.store import lock_is_held

    if lock_is_held(folder / DRIVER_LOCK):
        return f"its driver holds {folder / DRIVER_LOCK}"
    try:
        info = read_json(folder / "run.json")
    except (OSError, ValueError):
        return None  # no run.json, or a broken one, and no lock held: no driver left
    if not isinstance(info, dict) or info.get("state") not in LIVE_STATES:
        return None
    ray = info.get("ray") if isinstance(info.get("ray"), dict) else {}
    pid, host = ray.get("driver_pid"), info.get("host")
    if host and host != socket.gethostname():
        return f"run.json says {info['state']} on host {host} (pid {pid}); check there"
    with contextlib.suppress(TypeError, ValueError):
        if pid and pid_alive(int(pid)):
            from .search.procs import is_driver

            if is_driver(int(pid)):
                return f"run.json says {info['state']} and its driver (pid {pid}) is alive"
    return None


def _refuse_running(targets: list[Target]) -> None:
    for t in targets:
        if t.kind == "runs":
            why = running_search(t.path)
            if why:
                raise RatioSearchError(
                    f"run {t.name} is still running ({why}); stop it (Ctrl-C or kill its "
                    "driver) before cleaning it"
                )


def stale_targets(home: Home, kinds: list[str]) -> list[Target]:
    """Temp folders of interrupted builders in ``kinds`` (pools, models, cache) whose lock is free.

    A pool's ``.tmp-<key>-<pid>-<rand>`` belongs to ``pools/<key>.lock``; a model's
    ``.tmp-<hash>`` (its fine-tune checkpoint: ``finetune --resume`` would go on from it) to
    ``models/.<hash>.lock``; a cache's ``.tmp-data-<key>.<rand>`` to ``cache/data-<key>.lock``.
    """
    from .pools.store import lock_is_held

    out: list[Target] = []
    for kind in kinds:
        root: Path = getattr(home, kind)
        if kind not in BUILT or not root.is_dir():
            continue
        for p in sorted(root.iterdir()):
            if not p.is_dir() or not p.name.startswith((".tmp-", ".old-")):
                continue
            rest = p.name[5:]
            if kind == "pools":
                lock = root / f"{rest.split('-')[0]}.lock"
            elif kind == "models":
                lock = root / f".{rest}.lock"
            else:
                lock = root / f"{rest.rsplit('.', 1)[0]}.lock"
            if not lock_is_held(lock):
                out.append(Target(kind, p.name, p, dir_size(p), lock))
    return out


def find_targets(
    home: Home, kinds: list[str], names: list[str] | None = None, stale: bool = False
) -> list[Target]:
    """What `clean` would remove: every entry of the given stores, or only those named; with
    ``stale`` only the abandoned temp folders of those stores (of pools, models, cache if none).

    Raises RatioSearchError for an unknown store, an empty, unknown or ambiguous name, or a run
    that is still running.
    """
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise RatioSearchError(f"unknown store {bad[0]!r}; allowed: {', '.join(KINDS)}")
    if names is not None and any(not n.strip() for n in names):
        raise RatioSearchError("--name needs a non-empty name (a run name, pool key or model hash)")
    if stale:
        if names:
            raise RatioSearchError("--stale removes builders' leftovers; it takes no --name")
        return stale_targets(home, kinds or list(BUILT))
    targets: list[Target] = []
    if names:
        for name in names:
            found = [
                Target(kind, e.name, e, dir_size(e))
                for kind in kinds
                for e in _match(kind, _entries(getattr(home, kind)), name)
            ]
            if not found:
                raise RatioSearchError(
                    f"nothing named {name!r} in {', '.join(kinds)} under {home.root} "
                    "(run names must match exactly)"
                )
            targets += [t for t in found if t.path not in {u.path for u in targets}]
    else:
        for kind in kinds:
            targets += [Target(kind, e.name, e, dir_size(e)) for e in _entries(getattr(home, kind))]
    _refuse_running(targets)
    return targets


def remove(targets: list[Target]) -> int:
    """Remove the targets; return the bytes freed. A stale temp folder is removed while holding
    its builder's lock (skipped if a builder took it meanwhile)."""
    from .pools.store import try_lock

    freed = 0
    for t in targets:
        with contextlib.ExitStack() as stack:
            if t.lock is not None and not stack.enter_context(try_lock(t.lock)):
                continue
            if t.path.is_dir():
                shutil.rmtree(t.path)
            else:
                t.path.unlink(missing_ok=True)
            freed += t.size
    return freed
