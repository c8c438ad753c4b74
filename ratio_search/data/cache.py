"""On-disk cache of decoded datasets: memory-mapped uint8 ``.npy`` arrays under ``home.cache``.

A dataset is decoded and resized once. Its arrays are stored in ``cache/data-<key>/`` where the
key hashes everything the arrays depend on (source, file list with sizes and modification times,
image size, channels, classes, caps and split settings). The folder is written under a temporary
name and renamed into place while holding a file lock, so that concurrent trials neither see a
half-written cache nor decode the same data twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from .._io import atomic_dir, atomic_write_json, read_json

#: Bumped when the decoding or the cache layout changes, so that old caches are not reused.
CACHE_VERSION = 1
ARRAYS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")


def hash_key(obj: Any, length: int = 16) -> str:
    """A stable hex digest of a JSON-serialisable object (keys sorted)."""
    blob = json.dumps({"cache_version": CACHE_VERSION, "key": obj}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def file_fingerprint(
    paths: list[Path], root: Path, stats: Mapping[Path, os.stat_result] | None = None
) -> list[list]:
    """``[relative path, size, mtime_ns]`` for each file: changes whenever a file does.

    ``stats``: stat results the caller already has (a directory listing's), used instead of
    stat-ing those files again.
    """
    stats = stats or {}
    prefix = str(root).rstrip(os.sep) + os.sep
    out = []
    for p in paths:
        st = stats.get(p) or p.stat()
        s = str(p)
        # a plain prefix cut when p is below root as spelled (the listing's paths are)
        rel = s[len(prefix) :].replace(os.sep, "/") if s.startswith(prefix) else None
        out.append([rel or p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    return out


def cache_dir(cache_root: str | os.PathLike, key: str) -> Path:
    """The folder of the cached arrays of dataset ``key``: ``<cache_root>/data-<key>``."""
    return Path(cache_root) / f"data-{key}"


def _load(folder: Path) -> tuple[dict[str, np.ndarray], dict]:
    arrays = {}
    for name in ARRAYS:
        path = folder / f"{name}.npy"
        # an empty array (e.g. a missing test split) cannot be memory-mapped; it costs nothing to read
        arr = np.load(path, mmap_mode="r")
        arrays[name] = arr if arr.size else np.load(path)
    return arrays, read_json(folder / "meta.json")


def load_cached(
    cache_root: str | os.PathLike, key: str
) -> tuple[dict[str, np.ndarray], dict] | None:
    """The cached ``(arrays, meta)`` of dataset ``key``, memory-mapped; None if it is not cached.

    ``meta`` holds ``class_names`` and the ``info`` recorded when it was decoded.
    """
    folder = cache_dir(cache_root, key)
    # meta.json is written last: its presence marks a complete cache
    return _load(folder) if (folder / "meta.json").is_file() else None


def _save(folder: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write the arrays to a temporary folder next to ``folder`` and rename it into place."""
    with atomic_dir(folder) as tmp:
        for name in ARRAYS:
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arrays[name]))
        # meta.json last: its presence marks a complete cache (belt and braces with the rename)
        atomic_write_json(tmp / "meta.json", meta)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700


def cached_arrays(
    cache_root: Path, key: str, build: Callable[[], tuple[dict[str, np.ndarray], dict]]
) -> tuple[dict[str, np.ndarray], dict, bool]:
    """The arrays for ``key``, built by ``build()`` (arrays, meta) only if not cached yet.

    Returns ``(arrays, meta, hit)``; arrays come back memory-mapped read-only.
    """
    hit = load_cached(cache_root, key)
    if hit is not None:
        return *hit, True
    folder = cache_dir(cache_root, key)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        hit = load_cached(cache_root, key)  # another process built it while we waited
        if hit is not None:
            return *hit, True
        if folder.exists():  # a folder without meta.json cannot come from us; start afresh
            shutil.rmtree(folder)
        arrays, meta = build()
        _save(folder, arrays, meta)
    arrays, meta = _load(folder)
    return arrays, meta, False
