"""Deterministic procedural OCT B-scans: the embedded default dataset (a phantom, not real data).

Each image is a retinal cross-section: a tilted, curved retina with six inner layers, a bright
RPE band and a textured choroid, vessel shadows, depth attenuation, blur, speckle and noise.

* ``NORMAL`` scans vary naturally (depth, tilt, curvature, layer thickness and brightness, a foveal
  pit half of the time) and carry benign drusen-like RPE bumps with probability 0.6, so that
  "a bump" alone does not mean CNV.
* ``CNV`` scans add a Gaussian dome lifting the RPE (a pigment-epithelium detachment), usually
  a hyperreflective fibrovascular lesion under it, and often a dark fluid pocket above it.

Measured difficulty of the recipe: rendered at 64 x 64 and reduced to
32 x 32 by a 2 x 2 mean, a small CNN trained on 100 images per class is well below 100 %
accuracy, and clearly better with 2,000, so there is room for synthetic data to matter.

Image ``i`` of ``(seed, split, class)`` is drawn from its own ``SeedSequence([seed, split, class,
i])``: images never depend on how many others are rendered, and the splits (``train``, ``val``,
``test`` and the reserved ``base``, used to train the bundled diffusion base model) are disjoint
random streams.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .._io import atomic_dir, atomic_write_json
from ..errors import ConfigError, DataError

#: Class names in label order. CNV first: it is the class that receives synthetic images.
CLASSES: tuple[str, ...] = ("CNV", "NORMAL")
#: Splits and their codes in the seed. ``base`` is reserved for the diffusion base model.
SPLITS: dict[str, int] = {"train": 1, "val": 2, "test": 3, "base": 4}
_CLASS_CODES = {"CNV": 1, "NORMAL": 2}
#: Images per (phantom) patient in the written folders, so that patient-grouped splits are exercised.
IMAGES_PER_PATIENT = 4
#: Bumped whenever the recipe changes, so that cached folders and arrays are not mixed up.
RECIPE_VERSION = 2
MARKER = "phantom.json"


# ------------------------------------------------------------------------------------ helpers


def _gauss(x: np.ndarray, center: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - center) / sigma) ** 2)


def _smooth_field(rng: np.random.Generator, size: int, cells: tuple[int, int]) -> np.ndarray:
    """A smooth random field in [0, 1]: coarse uniform noise, bilinearly upsampled to size x size."""
    gh, gw = cells
    coarse = rng.random((gh, gw))
    # bilinear interpolation of the coarse grid at the pixel centres, fully vectorised
    yy = np.linspace(0, gh - 1, size)
    xx = np.linspace(0, gw - 1, size)
    y0 = np.clip(np.floor(yy).astype(int), 0, gh - 2)
    x0 = np.clip(np.floor(xx).astype(int), 0, gw - 2)
    fy = (yy - y0)[:, None]
    fx = (xx - x0)[None, :]
    a = coarse[y0][:, x0]
    b = coarse[y0][:, x0 + 1]
    c = coarse[y0 + 1][:, x0]
    d = coarse[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _blur3(img: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur with edge replication (the scanner's point-spread function)."""
    p = np.pad(img, 1, mode="edge")
    h = 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]
    return 0.25 * h[:-2] + 0.5 * h[1:-1] + 0.25 * h[2:]


# ------------------------------------------------------------------------------------ render


def _render_one(rng: np.random.Generator, cnv: bool, size: int, clean: bool = False) -> np.ndarray:
    """One B-scan as float in [0, 1], shape (size, size). Rows are depth, columns are lateral."""
    y = ((np.arange(size) + 0.5) / size)[:, None]  # (H, 1) depth in [0, 1]
    x = (np.arange(size) + 0.5) / size  # (W,) lateral position in [0, 1]
    xc = x - 0.5

    # --- geometry: the retina's inner surface before the foveal pit
    top0 = rng.uniform(0.18, 0.42)
    tilt = rng.uniform(-0.25, 0.25)
    curv = rng.uniform(-0.4, 0.4)
    ripple = rng.uniform(0.0, 0.008) * np.sin(
        2 * np.pi * rng.uniform(1, 3) * x + rng.uniform(0, 2 * np.pi)
    )
    surface = top0 + tilt * xc + curv * xc**2 + ripple  # (W,)

    # --- six inner layers: NFL, GCL+IPL, INL, OPL, ONL, IS/OS; then the RPE band
    thick = rng.uniform(0.02, 0.09, size=6)
    rpe_thick = rng.uniform(0.02, 0.035)
    # keep the RPE inside the picture (else a CNV dome could fall off the bottom: label noise)
    room = 0.80 - top0 - rpe_thick
    if thick.sum() > room:
        thick *= room / thick.sum()
    bright = np.array(
        [
            rng.uniform(0.55, 0.85),  # NFL: bright
            rng.uniform(0.35, 0.55),  # GCL+IPL
            rng.uniform(0.15, 0.30),  # INL: dark
            rng.uniform(0.35, 0.55),  # OPL
            rng.uniform(0.10, 0.25),  # ONL: dark
            rng.uniform(0.50, 0.75),  # IS/OS: bright
        ]
    )
    # the RPE is the brightest band of a B-scan (with the IS/OS line above it)
    rpe_bright = bright.max() + rng.uniform(0.1, 0.25)

    # per-column thickness of each layer; a foveal pit thins the inner layers half of the time
    layer_t = np.repeat(thick[:, None], size, axis=1)  # (6, W)
    if rng.random() < 0.5:
        pit = rng.uniform(0.5, 0.9) * _gauss(x, rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.12))
        layer_t[:3] *= 1.0 - pit  # NFL, GCL+IPL, INL
        layer_t[3] *= 1.0 - 0.5 * pit  # OPL, partly
    rpe_line = surface + thick.sum()  # top of the RPE, unaffected by the pit
    bruch = rpe_line + rpe_thick  # Bruch's membrane: stays put under any elevation

    # --- RPE elevations: benign drusen (both classes) and the CNV dome
    drusen = np.zeros(size)
    if rng.random() < 0.6:
        for _ in range(rng.integers(1, 4)):
            drusen += rng.uniform(0.008, 0.03) * _gauss(
                x, rng.uniform(0.1, 0.9), rng.uniform(0.02, 0.06)
            )
    dome = np.zeros(size)
    if cnv:
        dome_x, dome_w = rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.13)
        dome = rng.uniform(0.06, 0.18) * _gauss(x, dome_x, dome_w)
    elev = drusen + dome

    # layer boundaries from the RPE upwards; an elevation pushes the outer retina up fully and
    # the inner surface partly (30 %), compressing the layers in between
    bounds = np.empty((7, size))  # bounds[k] = top of layer k; bounds[6] = top of the RPE
    bounds[6] = rpe_line
    for k in range(5, -1, -1):
        bounds[k] = bounds[k + 1] - layer_t[k]
    frac = 0.3 + 0.7 * np.arange(7) / 6.0
    bounds = bounds - frac[:, None] * elev[None, :]
    rpe_bottom = bounds[6] + rpe_thick

    # --- intensities: vitreous, layers, RPE, sub-RPE space, choroid
    region = (y >= bounds[:, None, :]).sum(axis=0)  # (H, W): 0 vitreous, 1..6 layers, 7 RPE+below
    img = np.full((size, size), rng.uniform(0.0, 0.05))
    for k in range(6):
        img = np.where(region == k + 1, bright[k], img)
    in_rpe = (region == 7) & (y < rpe_bottom[None, :])
    img = np.where(in_rpe, rpe_bright, img)

    below = y >= np.maximum(rpe_bottom, bruch)[None, :]  # choroid and deeper
    depth_below = y - bruch[None, :]
    texture = 0.6 + 0.8 * _smooth_field(rng, size, (6, 10))
    choroid = (
        rng.uniform(0.3, 0.55)
        * texture
        * np.exp(-np.clip(depth_below, 0, None) / rng.uniform(0.08, 0.2))
    )
    img = np.where(below, choroid, img)

    # sub-RPE space under an elevation (between the lifted RPE and Bruch's membrane)
    sub = (y >= rpe_bottom[None, :]) & (y < bruch[None, :])
    drusen_fill = rng.uniform(0.3, 0.5)
    img = np.where(sub, drusen_fill, img)
    if cnv:
        # fibrovascular lesion: hyperreflective under the dome (else a dark, serous detachment)
        dome_share = dome / np.maximum(elev, 1e-6)  # where the dome (not a druse) does the lifting
        if rng.random() < 0.9:
            # strength 0.5-1.0 above the drusen material: brighter than the choroid around it
            fill = drusen_fill + rng.uniform(0.5, 1.0) * dome_share
        else:
            fill = drusen_fill + (0.08 - drusen_fill) * dome_share
        img = np.where(sub, fill[None, :], img)
        # subretinal fluid: a dark pocket just above the lifted RPE
        if rng.random() < 0.6:
            pocket_w = dome_w * rng.uniform(0.6, 1.2)
            pocket_h = rng.uniform(0.03, 0.08)
            pocket_y = bounds[6] - 0.6 * pocket_h  # (W,)
            mask = np.exp(
                -0.5 * (((x - dome_x) / pocket_w) ** 2)[None, :]
                - 0.5 * ((y - pocket_y[None, :]) / (0.5 * pocket_h)) ** 2
            )
            mask = mask * (y < bounds[6][None, :])
            img = img * (1.0 - rng.uniform(0.5, 0.9) * mask)

    # --- vessel shadows (0-3) below the inner retina, and depth attenuation
    nfl_bottom = bounds[1]
    for _ in range(rng.integers(0, 4)):
        shadow = rng.uniform(0.3, 0.7) * _gauss(x, rng.uniform(0.05, 0.95), rng.uniform(0.01, 0.03))
        img = img * (1.0 - shadow[None, :] * (y > nfl_bottom[None, :]))
    depth_in = np.clip(y - bounds[0][None, :], 0, None)
    img = img * np.exp(-rng.uniform(0.3, 1.0) * depth_in)

    # --- acquisition: blur, multiplicative speckle, additive noise, contrast and brightness
    if clean:  # the anatomy alone, for inspection
        return np.clip(img, 0.0, 1.0)
    img = _blur3(img)
    img = img * rng.gamma(6.0, 1.0 / 6.0, size=img.shape)
    img = img + rng.normal(0.0, 0.04, size=img.shape)
    img = img * rng.uniform(0.7, 1.3) + rng.uniform(-0.1, 0.1)
    return np.clip(img, 0.0, 1.0)


def _check(cls: str, split: str, seed: int, size: int) -> None:
    if cls not in _CLASS_CODES:
        raise ConfigError(f"phantom class {cls!r} is not one of: {', '.join(CLASSES)}")
    if split not in SPLITS:
        raise ConfigError(f"phantom split {split!r} is not one of: {', '.join(SPLITS)}")
    if seed < 0:
        raise ConfigError(f"phantom seed must be >= 0, got {seed}")
    if size < 8:
        raise ConfigError(f"phantom size must be >= 8 pixels, got {size}")


def render_phantom(
    n: int, cls: str, seed: int = 0, split: str = "train", size: int = 64, start: int = 0
) -> np.ndarray:
    """Render ``n`` phantom B-scans of class ``cls`` ("CNV" or "NORMAL") as uint8 ``(n, size, size)``.

    Image ``start + i`` depends only on ``(seed, split, cls, start + i)``: rendering more images
    extends a set without changing it, and every split is its own random stream. ``size`` is the
    render size (64 by default; the data loader reduces it to the training size by a box mean).
    """
    _check(cls, split, seed, size)
    out = np.empty((n, size, size), dtype=np.uint8)
    cnv = cls == "CNV"
    for i in range(n):
        ss = np.random.SeedSequence([seed, SPLITS[split], _CLASS_CODES[cls], start + i])
        img = _render_one(np.random.default_rng(ss), cnv, size)
        out[i] = np.round(img * 255.0).astype(np.uint8)
    return out


def patient_file_name(cls: str, split: str, index: int) -> str:
    """``CLASS-<patient>-<n>.png``: four images per phantom patient, patients disjoint across
    splits and classes (as in OCT2017's ``CNV-<patient>-<n>.jpeg``)."""
    k, n = divmod(index, IMAGES_PER_PATIENT)
    if k >= 100_000:
        raise ConfigError(
            f"phantom: at most {100_000 * IMAGES_PER_PATIENT} images per split and class"
        )
    patient = 1_000_000 * SPLITS[split] + 100_000 * _CLASS_CODES[cls] + k
    return f"{cls}-{patient}-{n + 1}.png"


def phantom_params(
    n_per_class: int, n_val_per_class: int, n_test_per_class: int, seed: int, size: int
) -> dict:
    """What a written phantom folder records in its ``phantom.json`` marker."""
    return {
        "recipe_version": RECIPE_VERSION,
        "classes": list(CLASSES),
        "n_per_class": int(n_per_class),
        "n_val_per_class": int(n_val_per_class),
        "n_test_per_class": int(n_test_per_class),
        "seed": int(seed),
        "size": int(size),
    }


def write_phantom_folder(
    out: str | os.PathLike,
    n_per_class: int = 100,
    n_val_per_class: int = 300,
    n_test_per_class: int = 500,
    seed: int = 0,
    size: int = 64,
) -> Path:
    """Write the phantom as an image folder ``out/{train,val,test}/{CNV,NORMAL}/CLASS-<patient>-<n>.png``.

    The folder is built under a temporary name next to ``out`` and renamed into place, so that
    nobody ever sees half a dataset. ``out`` must not exist, or be an empty folder. A
    ``phantom.json`` marker records the parameters. Returns the path written.
    """
    out = Path(out).expanduser().resolve()
    for name, v in (
        ("n_per_class", n_per_class),
        ("n_val_per_class", n_val_per_class),
        ("n_test_per_class", n_test_per_class),
    ):
        if v < 1:
            raise ConfigError(f"phantom: {name} must be >= 1, got {v}")
    for cls in CLASSES:
        _check(cls, "train", seed, size)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(
            f"{out} already exists and is not empty; remove it or choose another output folder"
        )
    with atomic_dir(out) as tmp:  # renaming into place also replaces an empty folder
        counts = {"train": n_per_class, "val": n_val_per_class, "test": n_test_per_class}
        for split, n in counts.items():
            for cls in CLASSES:
                folder = tmp / split / cls
                folder.mkdir(parents=True)
                images = render_phantom(n, cls, seed=seed, split=split, size=size)
                for i, img in enumerate(images):
                    Image.fromarray(img).save(folder / patient_file_name(cls, split, i))
        params = phantom_params(n_per_class, n_val_per_class, n_test_per_class, seed, size)
        atomic_write_json(tmp / MARKER, params)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
    return out
