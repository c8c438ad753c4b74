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
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

#: Bumped when the decoding or the cache layout changes, so that old caches are not reused.
CACHE_VERSION = 1
ARRAYS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")


def hash_key(obj: Any, length: int = 16) -> str:
    """A stable hex digest of a JSON-serialisable object (keys sorted)."""
    blob = json.dumps({"cache_version": CACHE_VERSION, "key": obj}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def file_fingerprint(paths: list[Path], root: Path) -> list[list]:
    """``[relative path, size, mtime_ns]`` for each file: changes whenever a file does."""
    out = []
    for p in paths:
        st = p.stat()
        out.append([p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    return out


def _load(folder: Path) -> tuple[dict[str, np.ndarray], dict]:
    arrays = {}
    for name in ARRAYS:
        path = folder / f"{name}.npy"
        # an empty array (e.g. a missing test split) cannot be memory-mapped; it costs nothing to read
        arr = np.load(path, mmap_mode="r")
        arrays[name] = arr if arr.size else np.load(path)
    meta = json.loads((folder / "meta.json").read_text())
    return arrays, meta


def _save(folder: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write the arrays to a temporary folder next to ``folder`` and rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        for name in ARRAYS:
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arrays[name]))
        # meta.json last: its presence marks a complete cache (belt and braces with the rename)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        os.chmod(tmp, 0o755)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cached_arrays(
    cache_root: Path, key: str, build: Callable[[], tuple[dict[str, np.ndarray], dict]]
) -> tuple[dict[str, np.ndarray], dict, bool]:
    """The arrays for ``key``, built by ``build()`` (arrays, meta) only if not cached yet.

    Returns ``(arrays, meta, hit)``; arrays come back memory-mapped read-only.
    """
    folder = Path(cache_root) / f"data-{key}"
    if (folder / "meta.json").is_file():
        arrays, meta = _load(folder)
        return arrays, meta, True
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "meta.json").is_file():  # another process built it while we waited
            arrays, meta = _load(folder)
            return arrays, meta, True
        if folder.exists():  # a folder without meta.json cannot come from us; start afresh
            shutil.rmtree(folder)
        arrays, meta = build()
        _save(folder, arrays, meta)
    arrays, meta = _load(folder)
    return arrays, meta, False
