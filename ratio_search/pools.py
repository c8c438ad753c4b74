"""Cached pools of generated images.

A pool is the synthetic class's generated images for one
``(model hash, class, guidance, steps, scheduler, image size, seed, postprocess)``:
a directory ``<home>/pools/<key>/`` holding

- ``images.npy``   uint8 ``(N, C, H, W)``, opened memory-mapped, so that many trials on one machine
  share one copy in the page cache;
- ``manifest.json`` what made it (the key fields, N, model path and hash, class, time taken,
  package versions) and a ``quality`` dict that ``quality.py`` fills in later.

Why so careful about writing it: trials run in parallel (Ray, several per GPU), and any of them may
ask for a pool that is not there yet. So a pool is built under a file lock
(``<home>/pools/<key>.lock``), written into a temp directory ``.tmp-<key>-<pid>-<rand>`` and moved
into place with one ``os.rename``. A reader therefore sees either no pool or a whole one, two
trials never generate the same pool twice, and a builder killed half-way leaves only a temp
directory that readers ignore and the next builder removes.

A pool is *complete* only if ``manifest.json`` exists and its ``n`` equals ``len(images.npy)``.

Because image ``i`` of a model's sample depends only on ``(seed, i)``, a pool of 400 images starts
with the same 200 images as a pool of 200. A request for fewer images than a pool holds is served
from it, and the caller gets exactly the first ``n``: a trial's result must not depend on which
bigger pool happened to be cached before it ran.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from filelock import FileLock

from .config import GenerateConfig
from .errors import ConfigError, PoolError
from .home import Home, dir_size, pid_alive

POOL_FORMAT = 1
SCHEDULERS = ("ddim", "dpm-solver++")
POSTPROCESS = ("none", "histogram-match")

# A temp directory whose builder is not running any more is garbage. Its pid may have been reused
# by an unrelated process, or it may belong to another node on shared storage, so age is the
# fallback criterion.
STALE_TMP_SECONDS = 6 * 3600

_IMAGES = "images.npy"
_MANIFEST = "manifest.json"


class GenerativeModel(Protocol):
    """What pools need from a diffusion model (``diffusion.load_model`` returns one)."""

    model_hash: str
    image_size: int
    channels: int
    class_names: list[str]
    path: Any

    def sample(
        self,
        n: int,
        class_index: int,
        guidance: float,
        steps: int,
        scheduler: str,
        seed: int,
        batch_size: int,
        device: str,
        progress: bool,
    ) -> np.ndarray: ...


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


def _canonical_hash(doc: Mapping[str, Any], length: int = 16) -> str:
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
    return _canonical_hash(doc)


def reference_hash(reference: np.ndarray) -> str:
    """A content hash of the real reference images (shape, dtype and bytes)."""
    ref = np.ascontiguousarray(reference)
    h = hashlib.sha256(f"{ref.shape}|{ref.dtype}|".encode())
    h.update(memoryview(ref).cast("B"))
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------- postprocess


def histogram_match(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Map each image's intensities onto the pooled intensity distribution of ``reference``.

    Why: a global intensity gap between real and synthetic images (the tiny generator's samples
    come out brighter and flatter than real scans) is the cheapest shortcut a classifier can learn,
    "looks synthetic means the synthetic class", and it says nothing about the disease. Matching
    removes that cue while keeping each image's structure: the mapping is monotone (quantile
    mapping), so pixel order within an image is preserved.

    Per image and per channel: a pixel at quantile q of its own image gets the value at quantile
    q of all reference pixels of that channel (mid-rank quantiles, linear interpolation, as in
    ``skimage.exposure.match_histograms``). uint8 in, uint8 out.
    """
    if images.ndim != 4 or reference.ndim != 4 or images.shape[1] != reference.shape[1]:
        raise PoolError(
            f"histogram-match: generated images {images.shape} and reference {reference.shape} "
            "must both be (N, C, H, W) with the same C"
        )
    if len(reference) == 0:
        raise PoolError("histogram-match: the reference (real images of the class) is empty")
    levels = np.arange(256, dtype=np.float64)
    out = np.empty_like(images, dtype=np.uint8)
    for c in range(images.shape[1]):
        ref_counts = np.bincount(np.asarray(reference[:, c]).ravel(), minlength=256)
        present = ref_counts > 0
        ref_q = (np.cumsum(ref_counts) - 0.5 * ref_counts)[present] / ref_counts.sum()
        ref_v = levels[present]
        for i in range(images.shape[0]):
            img = np.asarray(images[i, c])
            counts = np.bincount(img.ravel(), minlength=256)
            src_q = (np.cumsum(counts) - 0.5 * counts) / counts.sum()
            lut = np.interp(src_q, ref_q, ref_v)
            out[i, c] = np.clip(np.rint(lut), 0, 255).astype(np.uint8)[img]
    return out


# --------------------------------------------------------------------------- reading a pool


def _read_complete(path: Path, n: int | None = None) -> Pool | None:
    """The pool at ``path`` if it is complete (and holds at least ``n`` images), else None."""
    manifest_path = path / _MANIFEST
    images_path = path / _IMAGES
    try:
        manifest = json.loads(manifest_path.read_text())
        images = np.load(images_path, mmap_mode="r")
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
    pool = _read_complete(path)
    if pool is None and (home.pools / f"{path.name}.lock").exists():
        # Someone may be swapping a bigger pool in right now; wait for them, then look again.
        with _lock(home, path.name):
            pool = _read_complete(path)
    if pool is None:
        raise PoolError(
            f"pool at {path} is incomplete (no manifest.json or it disagrees with images.npy)"
        )
    if n is not None:
        if pool.n < n:
            raise PoolError(f"pool {pool.key} holds {pool.n} images, fewer than the {n} asked for")
        pool.images = pool.images[:n]
    return pool


# --------------------------------------------------------------------------- writing a pool


def _clean_stale(pools_dir: Path, key: str | None = None) -> list[Path]:
    """Remove temp/old directories left by dead builders; returns what was removed.

    Called while holding ``key``'s lock: a temp directory of the same key whose pid is dead is
    certainly abandoned. Others' temp directories are removed only once they are old (their pid may
    be another node's on shared storage).
    """
    removed = []
    if not pools_dir.is_dir():
        return removed
    now = time.time()
    for p in pools_dir.iterdir():
        if not p.is_dir() or not p.name.startswith((".tmp-", ".old-")):
            continue
        parts = p.name.split("-")  # [".tmp", key, pid, rand]
        try:
            p_key, pid = parts[1], int(parts[2])
            age = now - p.stat().st_mtime
        except (IndexError, ValueError, OSError):
            continue
        dead = p_key == key and not pid_alive(pid)
        if dead or age > STALE_TMP_SECONDS:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("ratio-search", "numpy", "torch", "diffusers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _fsync_write(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _install(home: Home, key: str, images: np.ndarray, manifest: dict[str, Any], tmp: Path) -> Pool:
    """Write images + manifest into ``tmp`` and rename it to ``pools/<key>`` (lock held)."""
    final = home.pools / key
    try:
        _fsync_write(tmp / _IMAGES, lambda f: np.save(f, images, allow_pickle=False))
        blob = json.dumps(manifest, indent=2, default=str).encode()
        _fsync_write(tmp / _MANIFEST, lambda f: f.write(blob))
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
        old = home.pools / f".old-{key}-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    pool = _read_complete(final)
    if pool is None:  # pragma: no cover - only if the filesystem lies
        raise PoolError(f"pool {key} at {final} is unreadable right after writing it")
    return pool


def _new_tmp(home: Home, key: str) -> Path:
    tmp = home.pools / f".tmp-{key}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    return tmp


def _check_gen(gen: GenerateConfig, n: int) -> None:
    if gen.scheduler not in SCHEDULERS:
        raise ConfigError(
            f"generate.scheduler: {gen.scheduler!r} is not one of: {', '.join(SCHEDULERS)}"
        )
    if gen.postprocess not in POSTPROCESS:
        raise ConfigError(
            f"generate.postprocess: {gen.postprocess!r} is not one of: {', '.join(POSTPROCESS)}"
        )
    if not float(gen.guidance) >= 0:
        raise ConfigError(f"generate.guidance: {gen.guidance!r} must be >= 0")
    if int(gen.steps) < 1:
        raise ConfigError(f"generate.steps: {gen.steps!r} must be >= 1")
    if int(n) < 1:
        raise ConfigError(f"generate.n: {n!r} must be >= 1")


def _device(device: str) -> str:
    if device != "auto":
        return device
    from .home import resolve_device  # imports torch: only when needed

    return resolve_device(device)


def get_pool(
    home: Home,
    model: GenerativeModel,
    gen: GenerateConfig,
    n: int | None = None,
    reference: np.ndarray | None = None,
    synthetic_class_index: int = 0,
    progress: bool = True,
) -> Pool:
    """The pool for ``model`` and ``gen``, with exactly ``n`` images; generated only if missing.

    - ``n``: images wanted (default ``gen.n``). A cached pool with at least n images is a hit
      (no model call); a smaller one is regenerated at size n, and starts with the same bytes.
    - ``reference``: uint8 ``(M, C, H, W)`` real training images of the synthetic class; required
      for ``gen.postprocess == "histogram-match"`` (and part of the key then).
    - ``synthetic_class_index``: the class generated, an index into ``model.class_names``.

    Safe to call from many processes at once: one builds, the others wait and reuse its result.
    """
    n = int(gen.n if n is None else n)
    _check_gen(gen, n)
    class_names = list(getattr(model, "class_names", []) or [])
    if class_names and not 0 <= synthetic_class_index < len(class_names):
        raise PoolError(
            f"class index {synthetic_class_index} is not a class of model {model.path} "
            f"(classes: {', '.join(class_names)})"
        )
    ref_hash = None
    if gen.postprocess == "histogram-match":
        if reference is None:
            raise PoolError(
                "postprocess histogram-match needs the real images of the synthetic class (reference)"
            )
        ref_hash = reference_hash(reference)
    key = pool_key(
        model.model_hash,
        gen.guidance,
        gen.steps,
        gen.scheduler,
        model.image_size,
        gen.seed,
        gen.postprocess,
        class_index=synthetic_class_index,
        reference_hash=ref_hash,
    )
    final = home.pools / key
    pool = _read_complete(final, n)  # the fast path of every warm trial: no lock, no model
    if pool is not None:
        return pool

    with _lock(home, key):
        # Another process may have finished this pool while we waited for the lock.
        pool = _read_complete(final, n)
        if pool is not None:
            return pool
        _clean_stale(home.pools, key)
        tmp = _new_tmp(home, key)
        try:
            t0 = time.perf_counter()
            images = model.sample(
                n=n,
                class_index=synthetic_class_index,
                guidance=float(gen.guidance),
                steps=int(gen.steps),
                scheduler=gen.scheduler,
                seed=int(gen.seed),
                batch_size=int(gen.batch_size),
                device=_device(gen.device),
                progress=progress,
            )
            images = np.asarray(images)
            want = (n, int(model.channels), int(model.image_size), int(model.image_size))
            if images.dtype != np.uint8 or images.shape != want:
                raise PoolError(
                    f"model {model.path} returned {images.dtype} {images.shape}, expected uint8 {want}"
                )
            sample_seconds = time.perf_counter() - t0
            if gen.postprocess == "histogram-match":
                if tuple(reference.shape[1:]) != want[1:]:
                    raise PoolError(
                        f"histogram-match: reference images are {tuple(reference.shape[1:])}, "
                        f"generated ones {want[1:]}"
                    )
                images = histogram_match(images, reference)
            seconds = time.perf_counter() - t0
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        manifest = {
            "format": POOL_FORMAT,
            "key": key,
            "source": "generated",
            "n": n,
            "model_path": str(model.path),
            "model_hash": model.model_hash,
            "class_index": int(synthetic_class_index),
            "class_name": class_names[synthetic_class_index] if class_names else None,
            "guidance": float(gen.guidance),
            "steps": int(gen.steps),
            "scheduler": gen.scheduler,
            "image_size": int(model.image_size),
            "channels": int(model.channels),
            "seed": int(gen.seed),
            "postprocess": gen.postprocess,
            "reference": None if ref_hash is None else {"hash": ref_hash, "n": int(len(reference))},
            "batch_size": int(gen.batch_size),
            "device": gen.device,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 3),
            "sample_seconds": round(sample_seconds, 3),
            "seconds_per_image": round(seconds / n, 5),
            "versions": _versions(),
            "quality": {},
        }
        pool = _install(home, key, images, manifest, tmp)
    pool.generated = True
    return pool


def update_manifest(home: Home, key: str, updates: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``updates`` into a pool's manifest (e.g. ``{"quality": {...}}``), atomically.

    The new manifest is written next to the old one and ``os.replace``d over it under the pool's
    lock, so readers see the old or the new manifest, never half of one.
    """
    path = home.pools / key
    with _lock(home, key):
        pool = _read_complete(path)
        if pool is None:
            raise PoolError(f"pool not found or incomplete: {path}")
        manifest = {**pool.manifest, **updates}
        manifest["n"] = pool.manifest["n"]  # the invariant readers check must survive
        tmp = path / f".{_MANIFEST}.{os.getpid()}.tmp"
        blob = json.dumps(manifest, indent=2, default=str).encode()
        try:
            _fsync_write(tmp, lambda f: f.write(blob))
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise PoolError(f"could not update the manifest of pool {key}: {e}") from None
        os.replace(tmp, path / _MANIFEST)
    return manifest


# ---------------------------------------------------------------------- pools from elsewhere


def _folder_files(folder: Path) -> list[Path]:
    from .data.imagefolder import IMAGE_EXTENSIONS

    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def import_folder_pool(
    home: Home,
    folder: str | os.PathLike,
    image_size: int,
    channels: int,
    name: str | None = None,
    skip_bad: bool = False,
) -> Pool:
    """A folder of images from any other generator, as a pool (decoded and resized like real data).

    The key is a hash of the files' names and bytes plus the target size and channels, so the same
    folder is imported once and a changed folder becomes a new pool. ``name`` is a label that
    ``load_pool`` also accepts.
    """
    from .data.imagefolder import load_image_folder

    src = Path(folder).expanduser().resolve()
    if not src.is_dir():
        raise PoolError(f"image folder not found: {src}")
    files = _folder_files(src)
    if not files:
        raise PoolError(f"no images in {src}")
    h = hashlib.sha256(f"folder|{POOL_FORMAT}|{int(image_size)}|{int(channels)}|".encode())
    for p in files:
        h.update(str(p.relative_to(src)).encode() + b"\0")
        h.update(p.read_bytes())
    key = "f" + h.hexdigest()[:15]
    final = home.pools / key
    pool = _read_complete(final)
    if pool is not None:
        return pool
    with _lock(home, key):
        pool = _read_complete(final)
        if pool is not None:
            return pool
        _clean_stale(home.pools, key)
        tmp = _new_tmp(home, key)
        try:
            t0 = time.perf_counter()
            skipped: list[str] = []
            images = np.asarray(
                load_image_folder(src, image_size, channels, skip_bad, skipped=skipped)
            )
            seconds = time.perf_counter() - t0
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if len(images) == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise PoolError(f"no readable images in {src}")
        manifest = {
            "format": POOL_FORMAT,
            "key": key,
            "source": "folder",
            "name": name,
            "folder": str(src),
            "files": len(files),
            "skipped": skipped,
            "n": int(len(images)),
            "model_path": None,
            "model_hash": None,
            "class_name": None,
            "guidance": None,
            "steps": None,
            "scheduler": None,
            "image_size": int(image_size),
            "channels": int(channels),
            "seed": None,
            "postprocess": "none",
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 3),
            "versions": _versions(),
            "quality": {},
        }
        pool = _install(home, key, images, manifest, tmp)
    pool.generated = True
    return pool


# ------------------------------------------------------------------------- listing the store


def list_pools(home: Home) -> list[dict[str, Any]]:
    """Every complete pool in the store, oldest first, with its size on disk in bytes."""
    if not home.pools.is_dir():
        return []
    rows = []
    for p in home.pools.iterdir():
        if not p.is_dir() or p.name.startswith("."):
            continue  # temp and old directories are not pools
        pool = _read_complete(p)
        if pool is None:
            continue
        m = pool.manifest
        rows.append(
            {
                "key": pool.key,
                "n": pool.n,
                "source": m.get("source", "generated"),
                "name": m.get("name"),
                "model_hash": m.get("model_hash"),
                "model_path": m.get("model_path"),
                "class_name": m.get("class_name"),
                "guidance": m.get("guidance"),
                "steps": m.get("steps"),
                "scheduler": m.get("scheduler"),
                "postprocess": m.get("postprocess"),
                "seed": m.get("seed"),
                "image_size": m.get("image_size"),
                "created": m.get("created_at"),
                "size_bytes": dir_size(p),
                "path": str(p),
            }
        )
    rows.sort(key=lambda r: (str(r["created"]), r["key"]))
    return rows


def pool_store_size(home: Home) -> int:
    """Bytes under ``<home>/pools`` (pools, plus any temp directories being written)."""
    return dir_size(home.pools) if home.pools.is_dir() else 0


# ------------------------------------------------------------ prebuilding a search space's grid


def _gen_from(base: GenerateConfig, combo: Mapping[str, Any]) -> GenerateConfig:
    allowed = {f.name for f in dataclasses.fields(GenerateConfig)}
    unknown = set(combo) - allowed
    if unknown:
        raise ConfigError(
            f"pool grid: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}"
        )
    return dataclasses.replace(base, **dict(combo))


def build_one(
    home: Home | str | os.PathLike,
    model: GenerativeModel | str | os.PathLike,
    gen: GenerateConfig | Mapping[str, Any],
    n: int | None = None,
    reference: np.ndarray | None = None,
    synthetic_class_index: int = 0,
    progress: bool = False,
    data_key: str | None = None,
) -> dict[str, Any]:
    """Build (or find) one pool; made to be the body of a Ray task.

    Takes and returns plain, picklable values: ``home`` and ``model`` may be paths (the model is
    then loaded in the worker, on its GPU), ``gen`` a dict of GenerateConfig fields. Returns
    ``{"key", "path", "n", "generated", "seconds", "guidance", "steps", "scheduler",
    "postprocess"}``, not the images.
    """
    if not isinstance(home, Home):
        home = Home.resolve(home)
    if isinstance(model, str | os.PathLike):
        from .diffusion import load_model

        model = load_model(model, home, data_key=data_key)
    if not isinstance(gen, GenerateConfig):
        gen = _gen_from(GenerateConfig(), gen)
    t0 = time.perf_counter()
    pool = get_pool(home, model, gen, n, reference, synthetic_class_index, progress)
    return {
        "key": pool.key,
        "path": str(pool.path),
        "n": pool.n,
        "generated": pool.generated,
        "seconds": round(time.perf_counter() - t0, 3),
        "guidance": float(gen.guidance),
        "steps": int(gen.steps),
        "scheduler": gen.scheduler,
        "postprocess": gen.postprocess,
    }


def pool_grid(space: Any) -> list[dict[str, Any]]:
    """The discrete generation settings a search space can ask for, as a list of dicts.

    ``space`` is anything with a ``pool_grid()`` method (``space.SearchSpace``) or already an
    iterable of dicts with keys among guidance, steps, scheduler, postprocess (and seed).
    Duplicates are dropped; order is kept.
    """
    combos = space.pool_grid() if hasattr(space, "pool_grid") else space
    if not isinstance(combos, Iterable):
        raise ConfigError(
            f"pool grid: expected a search space or a list of dicts, got {type(space).__name__}"
        )
    out, seen = [], set()
    for c in combos:
        if not isinstance(c, Mapping):
            raise ConfigError(f"pool grid: expected a dict per combination, got {c!r}")
        sig = json.dumps(dict(c), sort_keys=True, default=str)
        if sig not in seen:
            seen.add(sig)
            out.append(dict(c))
    return out


def build_space_pools(
    home: Home,
    model: GenerativeModel,
    space: Any,
    n: int | None = None,
    reference: np.ndarray | None = None,
    synthetic_class_index: int = 0,
    base: GenerateConfig | None = None,
    progress: bool = True,
    on_done=None,
) -> list[dict[str, Any]]:
    """Build every missing pool of a search space's (guidance, steps, scheduler, postprocess) grid.

    Serial, in this process. ``base`` supplies the fields a combination does not set (seed, batch
    size, device, and scheduler/postprocess when the space fixes them). ``on_done(result)`` is
    called after each pool. Returns one :func:`build_one` result per combination.
    """
    base = base or GenerateConfig()
    results = []
    for combo in pool_grid(space):
        gen = _gen_from(base, combo)
        result = build_one(home, model, gen, n, reference, synthetic_class_index, progress)
        results.append(result)
        if on_done is not None:
            on_done(result)
    return results


# ------------------------------------------------------------------- from a dataset and a model


def class_reference(data: Any) -> np.ndarray:
    """The ``histogram-match`` reference: the real *training* images of the synthetic class.

    Everyone who asks for a pool (``generate``, trials) must pass this same array, or the reference
    hash in the key differs and the pool is not reused. Only the train split: matching to val or
    test images would leak them into training.
    """
    return np.asarray(data.train_x[np.asarray(data.train_y) == data.synthetic_label])


def model_class_index(model: GenerativeModel, data: Any) -> int:
    """The index, in ``model.class_names``, of the dataset's synthetic class (matched by name)."""
    name = data.class_names[data.synthetic_label]
    names = list(model.class_names)
    if name not in names:
        raise PoolError(
            f"model {model.path} was not trained on class {name!r} (its classes: {', '.join(names)})"
        )
    return names.index(name)


def generate(
    home: Home,
    cfg: Any,
    model: str | os.PathLike | GenerativeModel = "latest",
    space: Any = None,
    n: int | None = None,
    progress: bool = True,
    on_done=None,
) -> list[dict[str, Any]]:
    """What ``ratio-search generate`` does: the pool of ``cfg.generate``, or a space's whole grid.

    ``cfg`` is a :class:`~ratio_search.config.Config`. The dataset (``cfg.data``, with the space's
    ``data:`` overrides) picks the model when ``model == "latest"`` (the newest fine-tuned on it),
    the class to generate and the histogram-match reference. ``n``: images per pool (default: the
    space's ``pool_size``, else ``cfg.generate.n``); the space's ``pool_seed`` likewise.
    Returns one :func:`build_one` result per pool.
    """
    from .data import load_dataset

    gen = dataclasses.replace(cfg.generate)
    data_cfg = cfg.data
    if space is not None:
        data_cfg = space.data_config(cfg.data) if hasattr(space, "data_config") else data_cfg
        fixed = getattr(space, "fixed", {}) or {}
        if n is None and fixed.get("pool_size") is not None:
            n = int(fixed["pool_size"])
        if fixed.get("pool_seed") is not None:
            gen.seed = int(fixed["pool_seed"])
    n = int(gen.n if n is None else n)
    data = load_dataset(data_cfg, home)
    if not isinstance(model, str | os.PathLike):
        loaded = model
    else:
        from .diffusion import load_model

        loaded = load_model(model, home, data_key=data.key if str(model) == "latest" else None)
    index = model_class_index(loaded, data)
    reference = class_reference(data)
    if space is None:
        return [build_one(home, loaded, gen, n, reference, index, progress)]
    return build_space_pools(home, loaded, space, n, reference, index, gen, progress, on_done)
