"""Mixing synthetic images into the real training set at a ratio R: one pure function.

R is the reference study's quantity: the fraction of the synthetic class's training images that
are synthetic. With several synthetic classes (``train.synthetic_classes``: ``all`` or a list), R
applies to each of them (:func:`mix_classes`), each drawing from its own pool and seeded streams.

* ``replace`` (the study's): the synthetic class keeps its real size ``c``; ``round(R * c)`` of it
  is synthetic and the rest is a seeded subset of its real images. R=0 is all real, R=1 all
  synthetic.
* ``augment``: every real image is kept and ``s`` synthetic images are added on top, with
  ``R = s / (s + c)``, i.e. ``s = round(R * c / (1 - R))``. R=1 would need infinitely many.

Only the training set is ever mixed: validation and test images never depend on R. Rounding is
half up (``floor(x + 0.5)``), not Python's round-half-to-even, so that R=0.5 of 5 images is 3.

The choice is seeded and nested: for one seed and one pool, the real images kept at a larger R
are a subset of those kept at a smaller R, and the synthetic images used at a smaller R are a
subset of those used at a larger R. Runs at neighbouring R then differ only by the swap itself
(common random numbers), which makes their difference less noisy.

Confidence filtering (``train.filter_top``) is index arithmetic here (:func:`top_fraction`,
:func:`kept_count`, :func:`pool_needed`); the scores come from ``ratio_search.quality.selection``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DataError, PoolError

# (defined beside the pools, which are per class and must not import train/; the same function)
from ..pools.classes import synthetic_labels

MODES = ("replace", "augment")
__all__ = [
    "MODES",
    "Mixed",
    "kept_count",
    "mix",
    "mix_classes",
    "pool_needed",
    "synthetic_labels",
    "synthetic_needed",
    "top_fraction",
]


@dataclass
class Mixed:
    """A mixed training set. ``is_synthetic[i]`` marks the generated images."""

    x: np.ndarray  # uint8 (N, C, H, W)
    y: np.ndarray  # int64 (N,)
    is_synthetic: np.ndarray  # bool (N,)
    n_real: int
    n_synthetic: int


def _round_half_up(v: float) -> int:
    # 1e-9 guards against float error such as 0.1 * 30 = 3.0000000000000004 or 2.4999999999
    return int(math.floor(v + 0.5 + 1e-9))


def _check(r: float, mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"mixing mode {mode!r} is not one of: {', '.join(MODES)}")
    if not (0.0 <= r <= 1.0) or math.isnan(r):
        raise ConfigError(f"R={r} is outside [0, 1]")
    if mode == "augment" and r >= 1.0:
        raise ConfigError(
            "R=1 in augment mode would need infinitely many synthetic images "
            "(augment keeps every real image, R = synthetic / (synthetic + real)); "
            "use mode replace for an all-synthetic class"
        )


def synthetic_needed(n_class: int, r: float, mode: str) -> int:
    """How many synthetic images a class of ``n_class`` real training images needs at R.

    ``replace``: ``round(R * n_class)``; ``augment``: ``round(R * n_class / (1 - R))``.
    """
    _check(r, mode)
    if mode == "replace":
        return _round_half_up(r * n_class)
    return _round_half_up(r * n_class / (1.0 - r))


def kept_count(n: int, filter_top: float) -> int:
    """How many of a pool's ``n`` images the top ``filter_top`` fraction keeps: ``ceil(f * n)``.

    Ceil, not round: the kept share is never below the asked-for fraction and a non-empty pool
    never keeps nothing (0.8 of 10 keeps 8, of 11 keeps 9; 0.01 of 5 keeps 1). 1.0 keeps all.
    """
    n, f = int(n), float(filter_top)
    if not 0.0 < f <= 1.0 or math.isnan(f):
        raise ConfigError(f"train.filter_top: {filter_top} is outside (0, 1]")
    if f >= 1.0 or n == 0:
        return n
    # 1e-9: float error such as 0.7 * 10 = 7.000000000000001 must not keep an 8th image
    return min(n, max(1, math.ceil(f * n - 1e-9)))


def pool_needed(n_class: int, r: float, mode: str, filter_top: float = 1.0) -> int:
    """Images a pool must hold so that its top ``filter_top`` fraction still has
    :func:`synthetic_needed` ``(n_class, r, mode)`` images: the smallest such size."""
    need = synthetic_needed(n_class, r, mode)
    kept_count(need, filter_top)  # validates filter_top
    if need == 0 or float(filter_top) >= 1.0:
        return need
    # ceil(f * m) >= need  <=>  f * m > need - 1: start just below the bound, then step with
    # kept_count itself, so that the two can never disagree about a float edge
    m = max(need, int(math.floor((need - 1) / float(filter_top))) - 1)
    while kept_count(m, filter_top) < need:
        m += 1
    return m


def top_fraction(scores: np.ndarray, filter_top: float) -> np.ndarray:
    """Indices of the images the top ``filter_top`` fraction keeps (:func:`kept_count` of them).

    Highest score first, ties in index order (a stable sort); a NaN score counts as the lowest.
    ``filter_top = 1.0`` returns every index in the pool's own order (no reordering), so that an
    unfiltered trial draws exactly as before.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    k = kept_count(len(scores), filter_top)
    if float(filter_top) >= 1.0:
        return np.arange(len(scores))
    key = np.where(np.isnan(scores), np.inf, -scores)
    return np.argsort(key, kind="stable")[:k]


def _class_streams(seed: int, label: int, default_label: int) -> list[np.random.Generator]:
    """The two seeded streams of one class: which real images go, which pool images come.

    The dataset's default synthetic class uses ``SeedSequence(seed).spawn(2)``, the streams
    :func:`mix` always used, so that a default trial is bit-identical to before. Every other
    class ``L`` uses the children of ``SeedSequence(seed, spawn_key=(2, L))``: keyed by its own
    label, so adding or removing a class never changes another class's draw.
    """
    if int(label) == int(default_label):
        ss = np.random.SeedSequence(seed)
    else:
        ss = np.random.SeedSequence(seed, spawn_key=(2, int(label)))
    return [np.random.default_rng(s) for s in ss.spawn(2)]


def mix_classes(
    train_x: np.ndarray,
    train_y: np.ndarray,
    pools: Mapping[int, np.ndarray | None],
    r: float,
    mode: str = "replace",
    seed: int = 0,
    default_label: int = 0,
) -> Mixed:
    """Mix each ``pools[label]`` into class ``label`` at the same R and mode.

    R applies per class: class ``label`` with ``c`` real training images gets
    ``synthetic_needed(c, r, mode)`` synthetic images (in ``replace`` as many of its real images
    go). Each class draws from its own streams (:func:`_class_streams`). Classes not in ``pools``
    are untouched. The result lists the kept real images in their original order, then the
    synthetic ones class by class in label order. A pool may be None where its class needs
    none (R = 0). ``default_label``: the dataset's synthetic class (see :func:`_class_streams`).

    Errors as :func:`mix`.
    """
    r = float(r)
    _check(r, mode)
    train_y = np.asarray(train_y)
    if train_x.shape[0] != train_y.shape[0]:
        raise DataError(
            f"train_x has {train_x.shape[0]} images but train_y has {train_y.shape[0]} labels"
        )
    several = len(pools) > 1
    keep = np.ones(len(train_y), dtype=bool)
    syn_x: list[np.ndarray] = []
    syn_y: list[np.ndarray] = []
    for label in sorted(int(k) for k in pools):
        pool = pools[label]
        where = f" (class label {label})" if several else ""
        cls_idx = np.flatnonzero(train_y == label)
        c = len(cls_idx)
        if c == 0:
            raise DataError(
                f"the training set has no images of the synthetic class (label {label})"
            )
        s = synthetic_needed(c, r, mode)
        if s > 0:
            _check_pool(pool, s, r, mode, c, train_x, where)
        real_rng, pool_rng = _class_streams(seed, label, default_label)
        n_drop = s if mode == "replace" else 0
        # a permutation, then a prefix: the images dropped at a smaller R are also dropped at a larger R
        drop = np.sort(cls_idx[real_rng.permutation(c)[:n_drop]])
        keep[drop] = False
        if s > 0:
            assert pool is not None
            pick = pool_rng.permutation(len(pool))[:s]
            syn_x.append(np.asarray(pool[pick], dtype=np.uint8))
            syn_y.append(np.full(s, label, dtype=np.int64))
    real_x, real_y = train_x[keep], train_y[keep].astype(np.int64)
    n_syn = int(sum(len(a) for a in syn_y))
    empty = np.zeros((0,) + tuple(train_x.shape[1:]), dtype=np.uint8)
    x = np.concatenate([np.asarray(real_x, dtype=np.uint8), *(syn_x or [empty])], axis=0)
    y = np.concatenate([real_y, *(syn_y or [np.zeros(0, dtype=np.int64)])])
    is_synthetic = np.zeros(len(y), dtype=bool)
    is_synthetic[len(real_y) :] = True
    return Mixed(x=x, y=y, is_synthetic=is_synthetic, n_real=int(len(real_y)), n_synthetic=n_syn)


def _check_pool(
    pool: np.ndarray | None, s: int, r: float, mode: str, c: int, train_x: np.ndarray, where: str
) -> None:
    if pool is None or len(pool) == 0:
        raise PoolError(
            f"R={r:g} needs {s} synthetic images but no pool (or an empty one) was given{where}"
        )
    if len(pool) < s:
        raise PoolError(
            f"pool has {len(pool)} images, R={r:g} needs {s} ({mode} of {c} real images){where}"
        )
    if pool.dtype != np.uint8 or pool.shape[1:] != train_x.shape[1:]:
        raise PoolError(
            f"pool images are {pool.dtype} {tuple(pool.shape[1:])}, the training images are "
            f"{train_x.dtype} {tuple(train_x.shape[1:])}; generate the pool at the data's size and channels"
        )


def mix(
    train_x: np.ndarray,
    train_y: np.ndarray,
    pool: np.ndarray | None,
    r: float,
    mode: str = "replace",
    synthetic_label: int = 0,
    seed: int = 0,
) -> Mixed:
    """Mix ``pool`` (uint8 ``(M, C, H, W)``, images of class ``synthetic_label``) into the training set.

    Other classes are untouched; their images keep their order. The result lists the kept real
    images in their original order, then the synthetic ones. Same inputs, same output.
    (:func:`mix_classes` with the one class; several classes go through it directly.)

    Raises :class:`ConfigError` for R outside [0, 1] (or R=1 with ``augment``) and an unknown
    mode, :class:`PoolError` for a missing, too small or mismatched pool.
    """
    return mix_classes(
        train_x, train_y, {int(synthetic_label): pool}, r, mode, seed, default_label=synthetic_label
    )
