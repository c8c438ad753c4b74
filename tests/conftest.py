"""Shared fixtures: tiny image folders and a home directory, built in ``tmp_path``.

* ``tiny_image_folder``: ``ROOT/{train,val,test}/{CNV,NORMAL}/CLASS-<patient>-<n>.png``, 16 x 16
  grayscale, 8 train / 2 val / 2 test images per class (two images per patient). Its val split
  is tiny: load it with ``DataConfig(min_val_per_class=0)`` to keep it, or leave the default (20)
  to have val carved from train.
* ``make_image_folder``: the factory behind it, for other sizes, classes, modes or counts.
* ``tiny_home``: a :class:`Home` in ``tmp_path``.
* ``tiny_dataset``: the phantom data at 16 px, 12 / 6 / 6 images per class, cached in ``tiny_home``.
* ``one_thread``: torch on one CPU thread for the test (the machine's cores are shared).
* ``run_cli``: ``run_cli([...]) -> (rc, stdout, stderr)``, the command line in-process.
* ``fake_generator``: :class:`FakeGenerator`, a deterministic stand-in for a fine-tuned model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

# The longest test files (each one worker's under `make test`'s `-n 2 --dist loadfile`), longest
# first (measured: about 320, 200, 130, 60 and 50 s on the 2-core machine). They are collected
# first, so that no long file starts last while the other worker has nothing left to do.
SLOW_FILES = (
    "test_resume.py",
    "test_cluster.py",
    "test_search_ray.py",
    "test_ui_browser.py",
    "test_export.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow files first (a stable sort: every file keeps its tests' order)."""
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))


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


@pytest.fixture
def tiny_dataset(tiny_home):
    """The phantom data at 16 px (12 train, 6 val, 6 test images per class), decoded once."""
    from ratio_search.config import DataConfig
    from ratio_search.data import load_dataset

    cfg = DataConfig(image_size=16, phantom_n_per_class=12, phantom_val_per_class=6,
                     phantom_test_per_class=6, min_val_per_class=2)  # fmt: skip
    return load_dataset(cfg, tiny_home)


@pytest.fixture
def one_thread():
    """torch on one CPU thread: the machine's cores are shared and the tiny models need no more."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def run_cli(capsys) -> Callable[[list[str]], tuple[int, str, str]]:
    """``run_cli(["train", ...]) -> (exit code, stdout, stderr)`` through ``cli.main``, in-process.

    An argparse error (SystemExit) gives its exit code like the real command would. SIGINT and
    SIGTERM handlers are put back afterwards: an interrupted ``main`` ignores both (it is leaving),
    which in-process would leave the whole pytest run deaf to Ctrl-C.
    """
    import signal

    from ratio_search.cli import main

    def run(argv: list[str]) -> tuple[int, str, str]:
        capsys.readouterr()  # drop what earlier steps of the test printed
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 2
        finally:
            for s, h in handlers.items():
                if h is not None:  # None: set outside Python, cannot be put back
                    signal.signal(s, h)
        out, err = capsys.readouterr()
        return rc, out, err

    return run


class FakeGenerator:
    """Same interface as a fine-tuned generator; image ``i`` depends only on (seed, i, settings)."""

    def __init__(self, image_size: int = 8, channels: int = 1, model_hash: str = "fake0001"):
        self.model_hash = model_hash
        self.image_size = image_size
        self.channels = channels
        self.class_names = ["CNV", "NORMAL"]
        self.path = "/models/fake"
        self.calls: list[int] = []  # images asked for per call, so tests can count model calls

    def sample(self, n: int, class_index: int, guidance: float, steps: int, scheduler: str,
               seed: int, batch_size: int, device: Any, progress: bool = False) -> np.ndarray:  # fmt: skip
        self.calls.append(n)
        s = (self.channels, self.image_size, self.image_size)
        out = np.empty((n, *s), dtype=np.uint8)
        for i in range(n):
            rng = np.random.default_rng([seed, i, int(guidance * 1000), steps, class_index])
            # bright and flat, like the tiny generator's samples of the phantom data
            out[i] = np.clip(rng.normal(150, 12, size=s), 0, 255).astype(np.uint8)
        return out


@pytest.fixture
def fake_generator() -> FakeGenerator:
    """A fresh :class:`FakeGenerator` (8 px, grayscale, two classes)."""
    return FakeGenerator()
