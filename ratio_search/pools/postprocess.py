"""What is done to generated images before they become a pool: histogram matching to real ones.

The reference of ``histogram-match`` is always the real *training* images of the pool's class,
built by :func:`class_reference` alone: everyone who asks for a pool (``generate``, the search's
trials and pre-build, ``confirm``) must pass the same array, or the reference hash in the pool key
differs and the pool is not reused.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from ..config import GenerateConfig
from ..errors import PoolError

if TYPE_CHECKING:
    from ..data import Dataset

#: The allowed ``generate.postprocess`` values (from the config field, the one list of them).
POSTPROCESS: tuple[str, ...] = tuple(
    GenerateConfig.__dataclass_fields__["postprocess"].metadata["choices"]
)


def class_reference(data: Dataset, label: int | None = None) -> np.ndarray:
    """The ``histogram-match`` reference: the real *training* images of the pool's class.

    ``label``: the class the pool is generated for (default: the synthetic class); each class's
    pool is matched to its own class. Only the train split: matching to val or test images would
    leak them into training.
    """
    label = data.synthetic_label if label is None else int(label)
    return np.asarray(data.train_x[np.asarray(data.train_y) == label])


def reference_for(data: Dataset, postprocess: str, label: int | None = None) -> np.ndarray | None:
    """:func:`class_reference` when ``postprocess`` needs one (``histogram-match``), else None."""
    return class_reference(data, label) if postprocess == "histogram-match" else None


def reference_hash(reference: np.ndarray) -> str:
    """A content hash of the real reference images (shape, dtype and bytes)."""
    ref = np.ascontiguousarray(reference)
    h = hashlib.sha256(f"{ref.shape}|{ref.dtype}|".encode())
    h.update(memoryview(ref).cast("B"))
    return h.hexdigest()[:16]


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


def _need(reference: np.ndarray | None) -> np.ndarray:
    if reference is None:
        raise PoolError(
            "postprocess histogram-match needs the real images of the synthetic class (reference)"
        )
    return reference


def reference_key(name: str, reference: np.ndarray | None) -> str | None:
    """The reference's part of a pool key: its hash for ``histogram-match``, None for ``none``.

    PoolError when ``histogram-match`` is asked for without a reference, so that a caller can
    check before anything is generated.
    """
    return None if name == "none" else reference_hash(_need(reference))


def postprocess(images: np.ndarray, name: str, reference: np.ndarray | None) -> np.ndarray:
    """Apply the postprocess ``name`` to generated uint8 images (``none`` returns them as they are)."""
    if name == "none":
        return images
    reference = _need(reference)
    if tuple(reference.shape[1:]) != tuple(images.shape[1:]):
        raise PoolError(
            f"histogram-match: reference images are {tuple(reference.shape[1:])}, "
            f"generated ones {tuple(images.shape[1:])}"
        )
    return histogram_match(images, reference)
