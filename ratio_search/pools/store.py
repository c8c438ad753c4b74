"""The pool store: one folder per pool under ``<home>/pools``, built under a lock, published whole.

A pool is the synthetic class's generated images for one
``(model hash, class, guidance, steps, scheduler, image size, seed, postprocess)``:
a directory ``<home>/pools/<key>/`` holding

- ``images.npy``   uint8 ``(N, C, H, W)``, opened memory-mapped, so that many trials on one machine
  share one copy in the page cache;
- ``manifest.json`` what made it (the key fields, N, model path and hash, class, time taken,
  package versions) and a ``quality`` dict that :mod:`ratio_search.quality` fills in later.

Why so careful about writing it: trials run in parallel (Ray, several per GPU), and any of them may
ask for a pool that is not there yet. So a pool is built under a file lock
(``<home>/pools/<key>.lock``), written into a temp directory ``.tmp-<key>-<pid>-<rand>`` and moved
into place with one ``os.rename``. A reader therefore sees either no pool or a whole one, two
trials never generate the same pool twice, and a builder killed half-way leaves only a temp
directory that readers ignore and the next builder removes: a temp directory is stale when its
key's lock can be taken (its builder is gone), never by its age.

A pool is *complete* only if ``manifest.json`` exists and its ``n`` equals ``len(images.npy)``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from .._io import atomic_write_bytes, atomic_write_json, package_versions, read_json, utc_now
from ..errors import PoolError
from ..home import Home, dir_size

POOL_FORMAT = 1

_IMAGES = "images.npy"
_MANIFEST = "manifest.json"


@dataclass
class Pool:
    """A complete pool: ``images`` is memory-mapped, read-only and holds exactly the asked-for n."""

    key: str
    path: Path
    images: np.ndarray
    manifest: dict[str, Any]
    generated: bool = field(default=False)  # True if this call generated it (a cache miss)

    @property
    def n(self) -> int:
        return int(self.images.shape[0])


# ------------------------------------------------------------------------------------ the key


def canonical_hash(doc: Mapping[str, Any], length: int = 16) -> str:
    """A short sha256 of the canonical JSON of ``doc`` (sorted keys, no spaces)."""
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def pool_key(
    model_hash: str,
    guidance: float,
    steps: int,
    scheduler: str,
    image_size: int,
    seed: int,
    postprocess: str,
    *,
    class_index: int = 0,
    reference_hash: str | None = None,
) -> str:
    """The pool's name: a short sha256 of a canonical JSON of everything that changes its bytes.

    ``class_index`` is the class generated. ``reference_hash`` identifies the real images that
    ``histogram-match`` matched to (ignored for ``postprocess="none"``). Batch size and device are
    deliberately not part of the key: image i depends only on (seed, i).
    """
    doc = {
        "format": POOL_FORMAT,
        "model_hash": str(model_hash),
        "class_index": int(class_index),
        # Rounded so that 2, 2.0 and 2.0000000001 (a quantised search value) name the same pool.
        "guidance": round(float(guidance), 6),
        "steps": int(steps),
        "scheduler": str(scheduler),
        "image_size": int(image_size),
        "seed": int(seed),
        "postprocess": str(postprocess),
    }
    if postprocess != "none":
        doc["reference_hash"] = reference_hash
    return canonical_hash(doc)


# --------------------------------------------------------------------------- reading a pool


def read_complete(path: Path, n: int | None = None) -> Pool | None:
    """The pool at ``path`` if it is complete (and holds at least ``n`` images), else None."""
    try:
        manifest = read_json(path / _MANIFEST)
        images = np.load(path / _IMAGES, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("n") != int(images.shape[0]):
        return None  # a torn or foreign directory: not a pool
    if images.dtype != np.uint8 or images.ndim != 4:
        return None
    if n is not None:
        if images.shape[0] < n:
            return None
        images = images[:n]
    return Pool(
        key=str(manifest.get("key", path.name)), path=path, images=images, manifest=manifest
    )


def _lock(home: Home, key: str) -> FileLock:
    home.pools.mkdir(parents=True, exist_ok=True)
    return FileLock(str(home.pools / f"{key}.lock"))


def load_pool(home: Home, key_or_path: str | os.PathLike, n: int | None = None) -> Pool:
    """A complete pool by key, by folder path, or by the ``name`` an imported pool was given.

    ``n``: return exactly the first n images (PoolError if the pool holds fewer).
    Raises PoolError if there is no complete pool there.
    """
    text = str(key_or_path)
    candidates = [Path(text).expanduser()] if os.sep in text or Path(text).is_dir() else []
    candidates.append(home.pools / text)
    path = next((p for p in candidates if p.is_dir()), None)
    if path is None:
        named = [p for p in list_pools(home) if p.get("name") == text]
        if len(named) == 1:
            path = Path(named[0]["path"])
    if path is None:
        raise PoolError(
            f"pool not found: {text} (looked in {home.pools}; see `ratio-search pools`)"
        )
    pool = read_complete(path)
    if pool is None and (home.pools / f"{path.name}.lock").exists():
        # Someone may be swapping a bigger pool in right now; wait for them, then look again.
        with _lock(home, path.name):
            pool = read_complete(path)
    if pool is None:
        raise PoolError(
            f"pool at {path} is incomplete (no manifest.json or it disagrees with images.npy)"
        )
    if n is not None:
        if pool.n < n:
            raise PoolError(f"pool {pool.key} holds {pool.n} images, fewer than the {n} asked for")
        pool.images = pool.images[:n]
    return pool


def list_pools(home: Home) -> list[dict[str, Any]]:
    """Every complete pool in the store, oldest first, with its size on disk in bytes."""
    if not home.pools.is_dir():
        return []
    rows = []
    for p in home.pools.iterdir():
        if not p.is_dir() or p.name.startswith("."):
            continue  # temp and old directories are not pools
        pool = read_complete(p)
        if pool is None:
            continue
        m = pool.manifest
        row = {"key": pool.key, "n": pool.n, "source": m.get("source", "generated")}
        for name in ("name", "model_hash", "model_path", "class_name", "guidance", "steps",
                     "scheduler", "postprocess", "seed", "image_size"):  # fmt: skip
            row[name] = m.get(name)
        # Pools written before the one time-stamp format recorded "created_at" instead.
        row["created"] = m.get("created", m.get("created_at"))
        row["size_bytes"] = dir_size(p)
        row["path"] = str(p)
        rows.append(row)
    rows.sort(key=lambda r: (str(r["created"]), r["key"]))
    return rows


def pool_store_size(home: Home) -> int:
    """Bytes under ``<home>/pools`` (pools, plus any temp directories being written)."""
    return dir_size(home.pools) if home.pools.is_dir() else 0


# --------------------------------------------------------------------------- writing a pool


@contextlib.contextmanager
def try_lock(path: str | os.PathLike) -> Iterator[bool]:
    """Hold the file lock at ``path`` for the block if nobody else does: yields True, or False
    (held by a live builder: leave its files alone). The one staleness rule of the home's
    builders (pools, models, cache): a builder holds its lock for its whole life, and a lock
    that can be taken has no builder left, however old or young its files are."""
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def lock_is_held(path: str | os.PathLike) -> bool:
    """Whether some process holds the file lock at ``path`` now (no lock file: nobody does)."""
    if not Path(path).exists():
        return False
    with try_lock(path) as free:
        return not free


def _clean_stale(pools_dir: Path, key: str | None = None) -> list[Path]:
    """Remove temp/old directories whose builder is gone; returns what was removed.

    Called while holding ``key``'s lock: no other builder of ``key`` runs, so its temp
    directories are abandoned. Another key's are removed only if its lock can be taken (its
    builder is gone), never by age: a build of many hours is never deleted under its builder.
    """
    removed: list[Path] = []
    if not pools_dir.is_dir():
        return removed
    for p in sorted(pools_dir.iterdir()):
        if not p.is_dir() or not p.name.startswith((".tmp-", ".old-")):
            continue
        parts = p.name.split("-")  # [".tmp", key, pid, rand]
        if len(parts) < 2 or not parts[1]:
            continue
        p_key = parts[1]
        if p_key == key:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
            continue
        with try_lock(pools_dir / f"{p_key}.lock") as free:
            if free:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def _aside(home: Home, kind: str, key: str) -> Path:
    """``.tmp-<key>-<pid>-<rand>``: the pid tells a later builder whether this one still runs."""
    return home.pools / f".{kind}-{key}-{os.getpid()}-{secrets.token_hex(4)}"


def _save_images(path: Path, images: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, images, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _install(home: Home, key: str, images: np.ndarray, manifest: dict[str, Any], tmp: Path) -> Pool:
    """Write images + manifest into ``tmp`` and rename it to ``pools/<key>`` (lock held)."""
    final = home.pools / key
    try:
        _save_images(tmp / _IMAGES, images)
        atomic_write_json(tmp / _MANIFEST, manifest)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise PoolError(
                f"no space left on device while writing pool {key} in {home.pools} (nothing was kept)"
            ) from None
        raise PoolError(f"could not write pool {key} in {home.pools}: {e}") from None
    old = None
    if final.exists():
        # An older, smaller (or torn) pool: move it aside first, so that the new one goes in with
        # one atomic rename; readers that still map the old images keep them until they let go.
        old = _aside(home, "old", key)
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    pool = read_complete(final)
    if pool is None:  # pragma: no cover - only if the filesystem lies
        raise PoolError(f"pool {key} at {final} is unreadable right after writing it")
    return pool


def new_manifest(key: str, source: str, n: int, **fields: Any) -> dict[str, Any]:
    """A manifest's common part (format, key, source, n, time stamp, versions, empty quality)."""
    return {
        "format": POOL_FORMAT,
        "key": key,
        "source": source,
        "n": int(n),
        **fields,
        "created": utc_now(),
        "versions": package_versions(),
        "quality": {},
    }


Build = Callable[[], tuple[np.ndarray, dict[str, Any]]]


def build_pool(home: Home, key: str, build: Build, n: int | None = None) -> Pool:
    """The pool ``key`` (its first ``n`` images), built by ``build()`` only if it is missing.

    ``build`` returns ``(images, manifest)``; it runs under the key's file lock, so that of many
    processes asking at once one builds and the others wait and reuse its result. A failed build
    leaves nothing behind; the pool appears with one rename. ``generated`` says whether this call
    built it.
    """
    final = home.pools / key
    pool = read_complete(final, n)  # the fast path of every warm trial: no lock, no model
    if pool is not None:
        return pool
    with _lock(home, key):
        # Another process may have finished this pool while we waited for the lock.
        pool = read_complete(final, n)
        if pool is not None:
            return pool
        _clean_stale(home.pools, key)
        tmp = _aside(home, "tmp", key)
        tmp.mkdir(parents=True)
        try:
            images, manifest = build()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        pool = _install(home, key, images, manifest, tmp)
    pool.generated = True
    return pool


def update_manifest(home: Home, key: str, updates: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``updates`` into a pool's manifest (e.g. ``{"quality": {...}}``), atomically.

    The new manifest is written next to the old one and renamed over it under the pool's lock,
    so readers see the old or the new manifest, never half of one.
    """
    path = home.pools / key
    with _lock(home, key):
        pool = read_complete(path)
        if pool is None:
            raise PoolError(f"pool not found or incomplete: {path}")
        manifest = {**pool.manifest, **updates}
        manifest["n"] = pool.manifest["n"]  # the invariant readers check must survive
        try:
            atomic_write_json(path / _MANIFEST, manifest)
        except OSError as e:
            raise PoolError(f"could not update the manifest of pool {key}: {e}") from None
    return manifest


def save_pool_file(home: Home, key: str, name: str, data: bytes) -> bool:
    """Write ``data`` as ``pools/<key>/<name>``, atomically, beside a complete pool: a cache of
    something computed from its images (e.g. a judge's scores, ``quality.selection``).

    Under the pool's lock, taken only if free: a held lock means the pool may be being replaced
    by a bigger one, and the file would land in the folder that goes. Returns whether it was
    written (False: lock busy, pool gone or the write failed; the caller keeps its result).
    """
    if name in (_IMAGES, _MANIFEST) or os.sep in name or name.startswith("."):
        raise PoolError(f"not a pool side file name: {name!r}")
    path = home.pools / key
    home.pools.mkdir(parents=True, exist_ok=True)
    with try_lock(home.pools / f"{key}.lock") as free:
        if not free or read_complete(path) is None:
            return False
        try:
            atomic_write_bytes(path / name, data)
        except OSError:
            return False
    return True
