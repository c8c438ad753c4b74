"""Image folders: ``ROOT/{train,val,test}/{CLASS}/*`` (the OCT2017 layout) and flat folders.

Every image, real or synthetic, goes through :func:`decode_image`: the same conversion to
grayscale or RGB and the same resize to ``image_size x image_size`` (a box mean when reducing,
bilinear when enlarging), so that no preprocessing difference separates real from synthetic.

A missing or tiny ``val`` split is replaced by a stratified split carved from ``train``, grouped
by patient where file names carry one (``CNV-<patient>-<n>.jpeg``), so that no patient is on both
sides. A missing ``test`` split gives empty test arrays (``export`` then refuses to evaluate).
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import DataError
from .cache import file_fingerprint

IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".gif",
    ".webp",
    ".pgm",
    ".ppm",
)
SPLIT_NAMES = ("train", "val", "test")
#: ``CLASS-PATIENT-N.ext`` as in OCT2017 (``CNV-1016042-1.jpeg``); the class part may contain '-'.
PATIENT_RE = re.compile(r"^(?P<cls>.+)-(?P<patient>[^-]+)-(?P<n>\d+)$")
# what PIL raises for a file it cannot read (truncated, not an image, absurd size...)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


# ------------------------------------------------------------------------------ decoding


def pil_to_array(im: Image.Image, image_size: int, channels: int) -> np.ndarray:
    """Convert a PIL image to uint8 ``(channels, image_size, image_size)``: the one resize rule."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale (some OCT exports): scale to 8 bits rather than clipping
        a = np.asarray(im, dtype=np.float64)
        scale = 257.0 if im.mode != "I" or a.max(initial=0) > 255 else 1.0
        im = Image.fromarray(np.clip(np.round(a / scale), 0, 255).astype(np.uint8))
    im = im.convert("L" if channels == 1 else "RGB")
    if im.size != (image_size, image_size):
        reducing = im.size[0] >= image_size and im.size[1] >= image_size
        # BOX = exact mean of the covered pixels when reducing (a 2 x 2 mean for 64 -> 32)
        resample = Image.Resampling.BOX if reducing else Image.Resampling.BILINEAR
        im = im.resize((image_size, image_size), resample=resample)
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if channels == 1 else np.ascontiguousarray(a.transpose(2, 0, 1))


def decode_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """Read one image file into uint8 ``(channels, image_size, image_size)``.

    Raises the PIL/OS error of an unreadable file; callers turn it into a :class:`DataError`.
    """
    with Image.open(path) as im:
        im.load()
        return pil_to_array(im, image_size, channels)


def _decode_or_error(path: Path, image_size: int, channels: int) -> np.ndarray | BaseException:
    try:
        # looked up at call time (not bound at import) so that tests can replace it
        return decode_image(path, image_size, channels)
    except _DECODE_ERRORS as e:
        return e


def decode_files(
    paths: list[Path], image_size: int, channels: int, skip_bad: bool
) -> tuple[np.ndarray, list[int], list[str]]:
    """Decode ``paths`` in order; returns (array, indices kept, paths skipped).

    Large lists are decoded by a few threads (PIL releases the GIL while decoding and resizing);
    the result is the same as decoding one by one. Without ``skip_bad`` the first unreadable file
    (in list order) raises a :class:`DataError` naming it.
    """
    out = np.empty((len(paths), channels, image_size, image_size), dtype=np.uint8)
    kept: list[int] = []
    skipped: list[str] = []
    workers = min(8, os.cpu_count() or 1) if len(paths) >= 256 else 1

    def one(p: Path) -> np.ndarray | BaseException:
        return _decode_or_error(p, image_size, channels)

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        results = pool.map(one, paths) if workers > 1 else map(one, paths)
        bar = tqdm(results, total=len(paths), desc="decoding images", unit="img", leave=False,
                   disable=None if len(paths) >= 2000 else True)  # fmt: skip
        for i, (p, res) in enumerate(zip(paths, bar, strict=True)):
            if isinstance(res, BaseException):
                if not skip_bad:
                    raise DataError(f"unreadable image: {p} ({type(res).__name__}: {res})")
                skipped.append(str(p))
                continue
            out[len(kept)] = res
            kept.append(i)
    finally:
        # on an error, do not wait for the rest of a large folder to be decoded
        pool.shutdown(wait=True, cancel_futures=True)
    return out[: len(kept)], kept, skipped


def scan_images(folder: Path) -> list[tuple[Path, os.stat_result]]:
    """Image files directly in ``folder`` with their stat results, sorted by name (hidden files
    ignored): one ``os.scandir`` pass and one ``stat`` per image, which the cache key reuses."""
    found = []
    with os.scandir(folder) as entries:
        for e in entries:
            name = e.name
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            if e.is_file():  # follows symbolic links, as Path.is_file does
                found.append((name, e.path, e.stat()))
    found.sort()
    return [(Path(path), st) for _, path, st in found]


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (hidden files ignored)."""
    return [p for p, _ in scan_images(folder)]


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_image_folder(
    folder: str | Path,
    image_size: int,
    channels: int = 1,
    skip_bad: bool = False,
    n: int | None = None,
    skipped: list[str] | None = None,
) -> np.ndarray:
    """Load a flat folder of images (e.g. synthetic images from any generator) as uint8 ``(N, C, S, S)``.

    ``folder`` holds the images directly, or exactly one subfolder that does (a one-class image
    folder). Files are read in sorted name order, through the same decoding and resize as the real
    data. ``n``: take the first ``n`` images (an error if there are fewer). With ``skip_bad``,
    unreadable files are skipped and their paths appended to ``skipped`` (if given).
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    files = list_images(folder)
    if not files:
        subs = _subfolders(folder)
        if len(subs) == 1:
            folder, files = subs[0], list_images(subs[0])
        elif len(subs) > 1:
            names = ", ".join(p.name for p in subs)
            raise DataError(
                f"{folder} has no images but several subfolders ({names}); point at one of them"
            )
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    if n is not None:
        if len(files) < n:
            raise DataError(f"{folder} has {len(files)} images, {n} asked for")
        files = files[:n]
    arr, _, bad = decode_files(files, image_size, channels, skip_bad)
    if skipped is not None:
        skipped.extend(bad)
    if len(arr) == 0:
        raise DataError(f"no readable images in {folder} ({len(bad)} skipped)")
    return arr


# --------------------------------------------------------------------------- splitting


def patient_of(path: Path) -> str | None:
    """The patient id of a ``CLASS-PATIENT-N.ext`` file name, else None."""
    m = PATIENT_RE.match(path.stem)
    return m.group("patient") if m else None


def carve_val(
    train: dict[int, list[Path]], fraction: float, seed: int, class_names: list[str]
) -> tuple[dict[int, list[Path]], dict[int, list[Path]], dict]:
    """Split ``train`` (label -> files) into train and val, stratified by class, grouped by patient.

    Files named ``CLASS-PATIENT-N`` are grouped by PATIENT across all classes (a patient is on one
    side only); any other file is its own group. Groups are visited in a seeded random order and go
    to val while every class they contain is still below its target ``round(fraction * n)``.
    """
    groups: dict[str, list[tuple[int, Path]]] = {}
    for label, files in train.items():
        for p in files:
            pid = patient_of(p)
            gid = f"p:{pid}" if pid is not None else f"f:{label}:{p.name}"
            groups.setdefault(gid, []).append((label, p))
    n_patients = sum(1 for g in groups if g.startswith("p:"))
    order = sorted(groups)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5A1]))
    order = [order[i] for i in rng.permutation(len(order))]
    target = {c: max(1, int(np.floor(fraction * len(f) + 0.5))) for c, f in train.items()}
    n_val = {c: 0 for c in train}
    to_val: set[str] = set()
    for gid in order:
        labels = {c for c, _ in groups[gid]}
        if all(n_val[c] < target[c] for c in labels):
            to_val.add(gid)
            for c, _ in groups[gid]:
                n_val[c] += 1
    new_train: dict[int, list[Path]] = {c: [] for c in train}
    new_val: dict[int, list[Path]] = {c: [] for c in train}
    for gid, members in groups.items():
        side = new_val if gid in to_val else new_train
        for c, p in members:
            side[c].append(p)
    for c in train:
        new_train[c].sort()
        new_val[c].sort()
        if not new_train[c] or not new_val[c]:
            raise DataError(
                f"class {class_names[c]!r}: cannot carve a validation split from {len(train[c])} training "
                f"images in {len({g for g, m in groups.items() if any(cc == c for cc, _ in m)})} patient group(s); "
                f"add a val/{class_names[c]} folder or more images"
            )
    note = {
        "how": "carved from train",
        "val_fraction": fraction,
        "grouped_by_patient": n_patients > 0,
        "patients": n_patients,
        "val_patients": sum(1 for g in to_val if g.startswith("p:")),
    }
    return new_train, new_val, note


def cap_per_class(files: list[Path], cap: int | None, seed: int, label: int) -> list[Path]:
    """At most ``cap`` files: a seeded choice from the sorted list, kept in sorted order."""
    if cap is None or len(files) <= cap:
        return files
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xCA9, label]))
    idx = np.sort(rng.choice(len(files), size=cap, replace=False))
    return [files[i] for i in idx]


# ------------------------------------------------------------------------------ planning


@dataclass
class FolderPlan:
    """Which files go into which split with which label: everything the cache key depends on."""

    root: Path
    class_names: list[str]
    files: dict[str, list[tuple[Path, int]]]  # split -> [(path, label)]
    fingerprint: dict  # split -> [[label, relative path, size, mtime_ns], ...]
    info: dict = field(default_factory=dict)


def plan_image_folder(
    root: str | Path,
    classes: list[str] | None,
    max_per_class: int | None,
    val_fraction: float,
    min_val_per_class: int,
    seed: int,
) -> FolderPlan:
    """List ``ROOT/{train,val,test}/{CLASS}``, pick classes, carve val if needed, cap train."""
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise DataError(f"data path not found: {root}")
    if not root.is_dir():
        raise DataError(f"not an image folder (expected ROOT/train/CLASS/*): {root}")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"no train folder in {root} (expected {root}/train/CLASS/*)")
    found = [p.name for p in _subfolders(train_dir)]
    if classes is None:
        if not found:
            raise DataError(f"no class folders in {train_dir}")
        class_names = found
    else:
        class_names = list(classes)
        if len(set(class_names)) != len(class_names):
            raise DataError(f"classes listed twice: {class_names}")
        unknown = [c for c in class_names if c not in found]
        if unknown:
            raise DataError(
                f"unknown class {', '.join(map(repr, unknown))}: {train_dir} has {', '.join(found) or 'no class folders'}"
            )
    if len(class_names) < 2:
        raise DataError(
            f"need at least 2 classes to train a classifier, {train_dir} gives {class_names}"
        )

    stats: dict[Path, os.stat_result] = {}  # from the listing: each file is stat-ed once

    def class_files(split: str, required: bool) -> dict[int, list[Path]] | None:
        out = {}
        for label, cls in enumerate(class_names):
            d = root / split / cls
            if not d.is_dir():
                if required:
                    raise DataError(f"class folder missing: {d}")
                return None
            scanned = scan_images(d)
            stats.update(scanned)
            files = [p for p, _ in scanned]
            if not files and required:
                raise DataError(f"class folder has no images: {d}")
            out[label] = files
        return out

    info: dict = {"source": "imagefolder", "path": str(root), "classes": class_names}
    train = class_files("train", required=True)
    assert train is not None
    val = class_files("val", required=False) if (root / "val").is_dir() else None
    fewest = min((len(f) for f in val.values()), default=0) if val is not None else 0
    if val is None or fewest < min_val_per_class:
        why = (
            "no val folder"
            if not (root / "val").is_dir()
            else (
                "a val class folder is missing"
                if val is None
                else f"val has only {fewest} image(s) in a class"
            )
        )
        train, val, note = carve_val(train, val_fraction, seed, class_names)
        note["why"] = f"{why} (< min_val_per_class={min_val_per_class})"
        info["val"] = note
    else:
        info["val"] = {"how": "val folder"}
    if (root / "test").is_dir():
        test = class_files("test", required=True)
        info["test"] = {"how": "test folder"}
    else:
        test = {label: [] for label in range(len(class_names))}
        info["test"] = {"how": "none", "note": f"no test folder in {root}: test arrays are empty"}

    if max_per_class is not None:
        train = {c: cap_per_class(f, max_per_class, seed, c) for c, f in train.items()}
        info["max_per_class"] = max_per_class

    # a patient in train and in val or test would leak; the official OCT2017 split has none in
    # test (a carved val has none by construction): count them so that a user can see it
    def patients(split: dict[int, list[Path]]) -> set[str]:
        return {pid for f in split.values() for p in f if (pid := patient_of(p)) is not None}

    train_patients = patients(train)
    info["val_patients_in_train"] = len(train_patients & patients(val))
    info["test_patients_in_train"] = len(train_patients & patients(test))

    files = {
        "train": [(p, c) for c, f in train.items() for p in f],
        "val": [(p, c) for c, f in val.items() for p in f],
        "test": [(p, c) for c, f in test.items() for p in f],
    }
    # the key lists each split's files with their labels, sizes and times: it captures the class
    # selection, the carved val split and the cap without listing the settings that made them
    fingerprint = {
        split: [
            [label, *fp]
            for (_, label), fp in zip(
                lst, file_fingerprint([p for p, _ in lst], root, stats), strict=True
            )
        ]
        for split, lst in files.items()
    }
    return FolderPlan(root, class_names, files, fingerprint, info)


def decode_plan(
    plan: FolderPlan, image_size: int, channels: int, skip_bad: bool
) -> tuple[dict[str, np.ndarray], dict]:
    """Decode every file of a plan into the six arrays; returns (arrays, info with counts)."""
    arrays: dict[str, np.ndarray] = {}
    info = dict(plan.info)
    skipped: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    for split in SPLIT_NAMES:
        lst = plan.files[split]
        x, kept, bad = decode_files([p for p, _ in lst], image_size, channels, skip_bad)
        y = np.array([lst[i][1] for i in kept], dtype=np.int64)
        arrays[f"{split}_x"], arrays[f"{split}_y"] = x, y
        skipped.extend(bad)
        counts[split] = {c: int((y == k).sum()) for k, c in enumerate(plan.class_names)}
    for c in plan.class_names:
        if counts["train"][c] == 0:
            raise DataError(
                f"no readable training images of class {c!r} in {plan.root / 'train' / c}"
            )
    info["counts"] = counts
    info["skipped"] = len(skipped)
    info["skipped_files"] = skipped[:50]
    return arrays, info
