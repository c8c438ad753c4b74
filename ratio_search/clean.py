"""Selective clean-up of what ratio-search keeps under its home: run folders, pools, models, cache."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import RatioSearchError
from .home import Home, dir_size

KINDS = ("runs", "pools", "models", "cache", "data")
# Shown by `clean` without arguments but not removed entry by entry: the MLflow store is one db.
SHOWN = (*KINDS, "mlruns")


@dataclass
class Target:
    """One thing that `clean` would remove."""

    kind: str
    name: str
    path: Path
    size: int


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def store_sizes(home: Home) -> dict[str, int]:
    """Size in bytes of each store under the home (missing stores count 0)."""
    return {k: dir_size(getattr(home, k)) if getattr(home, k).exists() else 0 for k in SHOWN}


def find_targets(home: Home, kinds: list[str], names: list[str] | None = None) -> list[Target]:
    """What `clean` would remove: every entry of the given stores, or only those named.

    Names match a run name, a pool key or a model hash (a unique prefix is enough).
    """
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise RatioSearchError(f"unknown store {bad[0]!r}; allowed: {', '.join(KINDS)}")
    targets: list[Target] = []
    for kind in kinds:
        root: Path = getattr(home, kind)
        if not root.exists():
            continue
        for entry in sorted(root.iterdir()):
            # lock files and the MLflow db are not entries of their own
            if entry.name.startswith(".") or entry.suffix == ".lock":
                continue
            if names and not any(entry.name.startswith(n) for n in names):
                continue
            targets.append(Target(kind, entry.name, entry, dir_size(entry)))
    if names:
        found = {t.name for t in targets}
        missing = [n for n in names if not any(f.startswith(n) for f in found)]
        if missing:
            raise RatioSearchError(
                f"nothing named {missing[0]!r} in {', '.join(kinds)} under {home.root}"
            )
    return targets


def remove(targets: list[Target]) -> int:
    """Remove the targets; return the bytes freed."""
    freed = 0
    for t in targets:
        if t.path.is_dir():
            shutil.rmtree(t.path)
        else:
            t.path.unlink(missing_ok=True)
        freed += t.size
    return freed
