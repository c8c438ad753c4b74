"""MedMNIST-style ``.npz`` files: ``train_images``, ``train_labels``, ``val_*``, ``test_*``.

Read with numpy only. Images may be ``(N, H, W)`` (grayscale) or ``(N, H, W, 3)`` (RGB); labels
``(N,)`` or ``(N, 1)``. Class names are the label values as strings (``"0"``, ``"1"``, ...) unless
the file has a ``class_names`` array; ``classes`` selects and orders labels by those names
(e.g. ``["0", "3"]`` for CNV vs NORMAL in OCTMNIST). Every image goes through the same PIL
conversion and resize as image-folder data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .imagefolder import cap_per_class, carve_val, pil_to_array


def _to_uint8(images: np.ndarray, key: str, path: Path) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.floating) and images.size and images.max() <= 1.0:
        return np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
    if np.issubdtype(images.dtype, np.number):
        return np.clip(np.round(images), 0, 255).astype(np.uint8)
    raise DataError(f"{path}: {key} has dtype {images.dtype}, expected uint8 images")


def _resize_all(images: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    out = np.empty((len(images), channels, image_size, image_size), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = pil_to_array(Image.fromarray(img), image_size, channels)
    return out


def read_npz_split(z, path: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(images (N,H,W[,3]) uint8, labels (N,) int64) of one split, or None if the file has neither key."""
    ik, lk = f"{split}_images", f"{split}_labels"
    if ik not in z.files and lk not in z.files:
        return None
    for k in (ik, lk):
        if k not in z.files:
            raise DataError(f"{path}: missing key {k!r} (has {', '.join(z.files)})")
    images, labels = z[ik], z[lk]
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise DataError(
            f"{path}: {ik} has shape {images.shape}, expected (N, H, W) or (N, H, W, 3)"
        )
    labels = np.asarray(labels).reshape(len(labels), -1)
    if labels.shape[1] != 1:
        raise DataError(f"{path}: {lk} has shape {z[lk].shape}; multi-label data is not supported")
    labels = labels[:, 0].astype(np.int64)
    if len(labels) != len(images):
        raise DataError(f"{path}: {ik} has {len(images)} images but {lk} has {len(labels)} labels")
    return _to_uint8(images, ik, path), labels


def load_npz(
    path: str | Path,
    image_size: int,
    channels: int,
    classes: list[str] | None,
    max_per_class: int | None,
    val_fraction: float,
    min_val_per_class: int,
    seed: int,
) -> tuple[dict[str, np.ndarray], list[str], dict]:
    """Read, select classes, carve val if needed, cap and resize; returns (arrays, class_names, info)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DataError(f"npz file not found: {path}")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"unreadable npz file: {path} ({e})") from None
    with z:
        train = read_npz_split(z, path, "train")
        if train is None:
            raise DataError(f"{path}: missing key 'train_images' (has {', '.join(z.files)})")
        splits = {
            "train": train,
            "val": read_npz_split(z, path, "val"),
            "test": read_npz_split(z, path, "test"),
        }
        present = np.unique(train[1])
        if "class_names" in z.files:
            all_names = [str(s) for s in z["class_names"]]
        else:
            all_names = [str(i) for i in range(int(present.max()) + 1)]

    info: dict = {"source": "npz", "path": str(path)}
    if classes is None:
        chosen = [int(i) for i in present]
    else:
        chosen = []
        for c in classes:
            if c not in all_names:
                raise DataError(f"unknown class {c!r}: {path} has classes {', '.join(all_names)}")
            chosen.append(all_names.index(c))
    class_names = [all_names[i] for i in chosen]
    if len(class_names) < 2:
        raise DataError(
            f"need at least 2 classes to train a classifier, {path} gives {class_names}"
        )
    info["classes"] = class_names

    def select(split: str) -> tuple[np.ndarray, np.ndarray] | None:
        s = splits[split]
        if s is None:
            return None
        images, labels = s
        keep = np.isin(labels, chosen)
        remap = {old: new for new, old in enumerate(chosen)}
        return images[keep], np.array([remap[int(v)] for v in labels[keep]], dtype=np.int64)

    tr = select("train")
    va = select("val")
    te = select("test")
    assert tr is not None
    for k, c in enumerate(class_names):
        if not (tr[1] == k).any():
            raise DataError(f"{path}: no training images of class {c!r}")

    # val: the file's own, unless missing or tiny; then carved from train (no patients in an npz:
    # every image is its own group). Reuse the image-folder splitter on index "paths".
    fewest = min((int((va[1] == k).sum()) for k in range(len(class_names))), default=0) if va else 0
    tr_idx = {
        k: [Path(str(i)) for i in np.flatnonzero(tr[1] == k)] for k in range(len(class_names))
    }
    if va is None or fewest < min_val_per_class:
        why = "no val_images" if va is None else f"val has only {fewest} image(s) in a class"
        new_tr, new_va, note = carve_val(tr_idx, val_fraction, seed, class_names)
        note["why"] = f"{why} (< min_val_per_class={min_val_per_class})"
        info["val"] = note
        vi = np.array(sorted(int(p.name) for f in new_va.values() for p in f), dtype=np.int64)
        va = (tr[0][vi], tr[1][vi])
        tr_idx = new_tr
    else:
        info["val"] = {"how": "val_images"}
    if max_per_class is not None:
        tr_idx = {k: cap_per_class(f, max_per_class, seed, k) for k, f in tr_idx.items()}
        info["max_per_class"] = max_per_class
    ti = np.array(sorted(int(p.name) for f in tr_idx.values() for p in f), dtype=np.int64)
    tr = (tr[0][ti], tr[1][ti])
    if te is None:
        te = (np.zeros((0,) + tr[0].shape[1:], np.uint8), np.zeros(0, np.int64))
        info["test"] = {"how": "none", "note": f"{path} has no test_images: test arrays are empty"}
    else:
        info["test"] = {"how": "test_images"}

    arrays = {}
    counts = {}
    for split, (x, y) in (("train", tr), ("val", va), ("test", te)):
        arrays[f"{split}_x"] = _resize_all(x, image_size, channels)
        arrays[f"{split}_y"] = y
        counts[split] = {c: int((y == k).sum()) for k, c in enumerate(class_names)}
    info["counts"] = counts
    info["skipped"] = 0
    return arrays, class_names, info
