"""Cheap checks of a cached dataset folder, so that a damaged cache is rebuilt, never trusted.

A cache folder (``cache/data-<key>/``) counts as a hit only if its ``meta.json`` is a JSON object
with ``class_names`` (a list) and ``info`` (an object), and every ``.npy`` is whole: its header
parses and the file is exactly as long as the header's shape and dtype say (a truncated copy is
shorter), the images are uint8 ``(N, C, H, W)`` with one label per image, and the splits agree on
``(C, H, W)``. Reading six headers costs microseconds; no array is read.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
from filelock import FileLock

from .._io import read_json

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of a ``.npy`` file; ValueError if its header is bad or it is cut short."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f".npy format {version} (ours are 1.0)")
        read = np.lib.format.read_array_header_1_0
        if version == (2, 0):
            read = np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read(f)
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError("holds Python objects")
    want = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = os.path.getsize(path)
    if have != want:
        raise ValueError(f"{have} bytes, its header says {want} (truncated?)")
    return tuple(int(s) for s in shape), dtype


def cache_problem(folder: str | os.PathLike) -> str | None:
    """What is wrong with the cache folder (one phrase naming the file), or None if it is whole."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    try:
        meta = read_json(meta_path)
    except (OSError, ValueError) as e:
        return f"{meta_path}: unreadable ({type(e).__name__})"
    if not isinstance(meta, dict):
        return f"{meta_path}: not a JSON object"
    if not isinstance(meta.get("class_names"), list) or not isinstance(meta.get("info"), dict):
        return f"{meta_path}: no class_names list or info object"
    image_shape = None
    for split in SPLITS:
        shapes = {}
        for part in ("x", "y"):
            path = folder / f"{split}_{part}.npy"
            try:
                shapes[part] = npy_shape(path)
            except (OSError, ValueError, SyntaxError) as e:
                return f"{path}: {e}"
        (xs, xt), (ys, _yt) = shapes["x"], shapes["y"]
        if xt != np.uint8 or len(xs) != 4 or len(ys) != 1 or xs[0] != ys[0]:
            return f"{folder / f'{split}_x.npy'}: shape {xs} {xt} does not fit labels {ys}"
        if xs[0] and image_shape is not None and xs[1:] != image_shape:
            return (
                f"{folder / f'{split}_x.npy'}: images {xs[1:]}, the train split's are {image_shape}"
            )
        if xs[0] and image_shape is None:
            image_shape = xs[1:]
    return None


def drop_damaged(folder: str | os.PathLike) -> str | None:
    """Remove the cache folder if it is damaged (under its build lock); return what was wrong.

    A folder without ``meta.json`` is left to the cache (it is no hit and gets rebuilt there).
    The caller then rebuilds through the normal path; a whole folder is never touched.
    """
    folder = Path(folder)
    if not (folder / "meta.json").is_file():
        return None
    problem = cache_problem(folder)
    if problem is None:
        return None
    with FileLock(str(folder) + ".lock"):
        problem = cache_problem(folder) if (folder / "meta.json").is_file() else None
        if problem is not None:
            logger.warning("damaged data cache, rebuilding it: %s", problem)
            shutil.rmtree(folder, ignore_errors=True)
    return problem
