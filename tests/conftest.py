"""Shared fixtures: tiny image folders and a home directory, built in ``tmp_path``.

* ``tiny_image_folder``: ``ROOT/{train,val,test}/{CNV,NORMAL}/CLASS-<patient>-<n>.png``, 16 x 16
  grayscale, 8 train / 2 val / 2 test images per class (two images per patient). Its val split
  is tiny: load it with ``DataConfig(min_val_per_class=0)`` to keep it, or leave the default (20)
  to have val carved from train.
* ``make_image_folder``: the factory behind it, for other sizes, classes, modes or counts.
* ``tiny_home``: a :class:`Home` in ``tmp_path``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("CNV", "NORMAL"),
    n_train: int = 8,
    n_val: int = 2,
    n_test: int = 2,
    size: int | tuple[int, int] = 16,
    mode: str = "L",
    per_patient: int = 2,
    ext: str = ".png",
    seed: int = 0,
) -> Path:
    """Write random images in the OCT2017 layout; class ``k`` is brighter by ``40 * k``.

    File names are ``CLASS-<patient>-<n>``; patients differ between splits and classes.
    ``size`` is an int (square) or ``(width, height)``; ``mode`` is a PIL mode ("L", "RGB").
    """
    rng = np.random.default_rng(seed)
    w, h = (size, size) if isinstance(size, int) else size
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for s, (split, n) in enumerate(counts.items()):
        for k, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (h, w) if mode == "L" else (h, w, 3)
                arr = np.clip(rng.integers(0, 150, size=shape) + 40 * k, 0, 255).astype(np.uint8)
                patient = 1000 * (s + 1) + 100 * k + i // per_patient
                Image.fromarray(arr).convert(mode).save(
                    folder / f"{cls}-{patient}-{i % per_patient + 1}{ext}"
                )
    return root


@pytest.fixture
def make_image_folder(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_image_folder(name="imgs", **write_image_folder kwargs) -> root``."""

    def make(name: str = "imgs", **kw) -> Path:
        return write_image_folder(tmp_path / name, **kw)

    return make


@pytest.fixture
def tiny_image_folder(make_image_folder) -> Path:
    """``ROOT/{train,val,test}/{CNV,NORMAL}``: 8 / 2 / 2 grayscale 16 x 16 images per class."""
    return make_image_folder("tiny_images")


@pytest.fixture
def tiny_home(tmp_path: Path):
    """A ratio-search home directory inside ``tmp_path``."""
    from ratio_search.home import Home

    return Home(tmp_path / "home")
