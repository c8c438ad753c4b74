"""Labelled images as uint8 arrays: decoded and resized once, cached on disk, memory-mapped.

:func:`load_dataset` reads one of three sources (``DataConfig.source``):

* ``imagefolder``: ``ROOT/{train,val,test}/{CLASS}/*`` (the OCT2017 layout, any class names);
* ``npz``: a MedMNIST-style ``.npz`` (``train_images``, ``train_labels``, ``val_*``, ``test_*``);
* ``phantom`` (the default): procedural OCT B-scans, written once as an image folder under
  ``home.data`` and then read through the image-folder path, so the demo exercises the real one.

Arrays are uint8 ``(N, C, H, W)``, labels int64 ``(N,)``. They come back as read-only memory maps
of the cache; index or ``np.array(...)`` them to get a writable copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from filelock import FileLock

from .._io import read_json
from ..config import DataConfig
from ..errors import DataError
from ..home import Home
from . import imagefolder as _imagefolder
from . import npz as _npz
from . import phantom as _phantom
from .cache import cache_dir, cached_arrays, file_fingerprint, hash_key, load_cached
from .imagefolder import IMAGE_EXTENSIONS, decode_image, load_image_folder
from .validate import drop_damaged

__all__ = [
    "Dataset",
    "cached_dataset",
    "load_dataset",
    "load_image_folder",
    "decode_image",
    "infer_source",
    "phantom_folder",
    "IMAGE_EXTENSIONS",
]


@dataclass
class Dataset:
    """A labelled dataset split into train / val / test (see ``docs/architecture.md``)."""

    train_x: np.ndarray  # uint8 (N, C, H, W)
    train_y: np.ndarray  # int64 (N,)
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray  # may be empty (no test split): export then refuses to evaluate
    test_y: np.ndarray
    class_names: list[str]
    synthetic_label: int  # index into class_names: the class that receives synthetic images
    key: str  # hash of the source, file list (with sizes and times), image size and settings
    info: dict = field(default_factory=dict)  # source, path, skipped images, split notes, counts

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def synthetic_class(self) -> str:
        return self.class_names[self.synthetic_label]


def infer_source(path: str | None) -> str:
    """The source a ``--data PATH`` implies: ``npz`` for a ``.npz`` file, else ``imagefolder``;
    ``phantom`` without a path."""
    if path is None:
        return "phantom"
    return "npz" if str(path).lower().endswith(".npz") else "imagefolder"


def phantom_render_size(image_size: int) -> int:
    """Phantoms are rendered at twice the training size (at least 64) and reduced by a box mean."""
    return max(64, 2 * image_size)


def phantom_folder(cfg: DataConfig, home: Home) -> Path:
    """Write the phantom image folder for ``cfg`` on first use (under a lock); return its path.

    Default place: ``home.data / "phantom-n{n}-v{val}-t{test}-s{seed}-px{size}-r{recipe}"``; ``cfg.path``
    overrides it. An existing folder is reused only if its ``phantom.json`` marker matches.
    """
    size = phantom_render_size(cfg.image_size)
    n, nv, nt = cfg.phantom_n_per_class, cfg.phantom_val_per_class, cfg.phantom_test_per_class
    if cfg.path:
        folder = Path(cfg.path).expanduser().resolve()
    else:
        # the recipe version is in the name: a folder from an older recipe is left alone, not reused
        name = f"phantom-n{n}-v{nv}-t{nt}-s{cfg.seed}-px{size}-r{_phantom.RECIPE_VERSION}"
        folder = home.data / name
    want = _phantom.phantom_params(n, nv, nt, cfg.seed, size)
    marker = folder / _phantom.MARKER
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if marker.is_file():
            try:
                have = read_json(marker)
            except (OSError, ValueError) as e:
                raise DataError(
                    f"{marker}: unreadable ({type(e).__name__}); delete {folder} and it is "
                    "written again"
                ) from None
            if have != want:
                raise DataError(
                    f"{folder} holds phantom data made with other settings ({have}); "
                    f"remove it or choose another --data folder"
                )
            return folder
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise DataError(
                f"{folder} exists and is not a phantom folder; pass --source imagefolder to read it"
            )
        return _phantom.write_phantom_folder(folder, n, nv, nt, cfg.seed, size)


def _synthetic_label(cfg: DataConfig, class_names: list[str]) -> int:
    synthetic = cfg.synthetic_class if cfg.synthetic_class is not None else class_names[0]
    if synthetic not in class_names:
        raise DataError(
            f"synthetic class {synthetic!r} is not one of the classes: {', '.join(class_names)}"
        )
    return class_names.index(synthetic)


def _dataset(
    arrays: dict, class_names: list[str], synthetic_label: int, key: str, info: dict
) -> Dataset:
    return Dataset(
        train_x=arrays["train_x"],
        train_y=arrays["train_y"],
        val_x=arrays["val_x"],
        val_y=arrays["val_y"],
        test_x=arrays["test_x"],
        test_y=arrays["test_y"],
        class_names=list(class_names),
        synthetic_label=int(synthetic_label),
        key=key,
        info=info,
    )


def cached_dataset(home: Home, key: str, synthetic_label: int = 0) -> Dataset | None:
    """The dataset ``key`` as cached by an earlier :func:`load_dataset`, or None if it is not.

    For readers that know a dataset only by its key (a model's ``meta.json`` records it), without
    the :class:`DataConfig` that made it: the arrays, class names and decode-time info as cached.
    """
    drop_damaged(cache_dir(home.cache, key))  # a damaged cache is no hit
    hit = load_cached(home.cache, key)
    if hit is None:
        return None
    arrays, meta = hit
    info = {**meta.get("info", {}), "key": key, "cache": "hit"}
    info["cache_dir"] = str(cache_dir(home.cache, key))
    return _dataset(arrays, meta["class_names"], synthetic_label, key, info)


def load_dataset(cfg: DataConfig, home: Home) -> Dataset:
    """Load the dataset that ``cfg`` describes, decoding it only if it is not cached yet.

    The cache lives in ``home.cache / f"data-{key}"``; ``Dataset.key`` is that key. The second
    load of unchanged data memory-maps the cached arrays and decodes nothing.
    """
    source = cfg.source
    if source == "npz":
        if not cfg.path:
            raise DataError("source npz needs a path to a .npz file (--data FILE.npz)")
        path = Path(cfg.path).expanduser().resolve()
        if not path.is_file():
            raise DataError(f"npz file not found: {path}")
        key_obj = {
            "source": "npz",
            "file": file_fingerprint([path], path.parent),
            "image_size": cfg.image_size,
            "channels": cfg.channels,
            "classes": cfg.classes,
            "max_per_class": cfg.max_per_class,
            "val_fraction": cfg.val_fraction,
            "min_val_per_class": cfg.min_val_per_class,
            "seed": cfg.seed,
        }
        key = hash_key(key_obj)
        where = path

        def build() -> tuple[dict, dict]:
            arrays, names, info = _npz.load_npz(
                path, cfg.image_size, cfg.channels, cfg.classes, cfg.max_per_class,
                cfg.val_fraction, cfg.min_val_per_class, cfg.seed,
            )  # fmt: skip
            return arrays, {"class_names": names, "info": info}

    elif source in ("imagefolder", "phantom"):
        if source == "phantom":
            root = phantom_folder(cfg, home)
        else:
            if not cfg.path:
                raise DataError(
                    "source imagefolder needs a path (--data ROOT with ROOT/train/CLASS/*)"
                )
            root = Path(cfg.path)
        where = Path(root).expanduser().resolve()
        plan = _imagefolder.plan_image_folder(
            root, cfg.classes, cfg.max_per_class, cfg.val_fraction, cfg.min_val_per_class, cfg.seed
        )
        _synthetic_label(cfg, plan.class_names)  # fail before decoding anything
        if source == "phantom":
            plan.info["source"] = "phantom"
        key = hash_key(
            {
                "source": "imagefolder",  # the phantom is read as an image folder: same key rules
                "files": plan.fingerprint,
                "image_size": cfg.image_size,
                "channels": cfg.channels,
                "classes": plan.class_names,
                "skip_bad_images": cfg.skip_bad_images,
            }
        )

        def build() -> tuple[dict, dict]:
            arrays, info = _imagefolder.decode_plan(
                plan, cfg.image_size, cfg.channels, cfg.skip_bad_images
            )
            return arrays, {"class_names": plan.class_names, "info": info}

    else:
        raise DataError(f"unknown data source {source!r}; use phantom, imagefolder or npz")

    # a truncated .npy or a bad meta.json is removed here and rebuilt by cached_arrays
    damaged = drop_damaged(cache_dir(home.cache, key))
    arrays, meta, hit = cached_arrays(home.cache, key, build)
    info = dict(meta["info"])
    if damaged:
        info["cache_rebuilt"] = damaged
    # the key ignores the location (the same files may have moved) and phantom vs image folder
    info.update({"source": source, "path": str(where)})
    info.update(
        {
            "key": key,
            "cache": "hit" if hit else "miss",
            "cache_dir": str(cache_dir(home.cache, key)),
        }
    )
    info.update({"image_size": cfg.image_size, "channels": cfg.channels})
    names = meta["class_names"]
    return _dataset(arrays, names, _synthetic_label(cfg, names), key, info)
