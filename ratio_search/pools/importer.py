"""``generate --from-folder``: a folder of images from any other generator, as a pool."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np

from ..errors import PoolError
from ..home import Home
from .store import POOL_FORMAT, Pool, build_pool, new_manifest


def _folder_files(folder: Path) -> list[Path]:
    from ..data.imagefolder import IMAGE_EXTENSIONS

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
    from ..data.imagefolder import load_image_folder

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

    def build() -> tuple[np.ndarray, dict]:
        t0 = time.perf_counter()
        skipped: list[str] = []
        images = np.asarray(load_image_folder(src, image_size, channels, skip_bad, skipped=skipped))
        if len(images) == 0:
            raise PoolError(f"no readable images in {src}")
        manifest = new_manifest(
            key, "folder", len(images),
            name=name, folder=str(src), files=len(files), skipped=skipped,
            model_path=None, model_hash=None, class_name=None, guidance=None, steps=None,
            scheduler=None, image_size=int(image_size), channels=int(channels), seed=None,
            postprocess="none", seconds=round(time.perf_counter() - t0, 3),
        )  # fmt: skip
        return images, manifest

    return build_pool(home, key, build)
