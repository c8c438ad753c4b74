"""Mixing synthetic images into the real training set at a ratio R: one pure function.

R is the reference study's quantity: the fraction of the synthetic class's training images that
are synthetic.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DataError, PoolError

MODES = ("replace", "augment")


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

    Raises :class:`ConfigError` for R outside [0, 1] (or R=1 with ``augment``) and an unknown
    mode, :class:`PoolError` for a missing, too small or mismatched pool.
    """
    r = float(r)
    _check(r, mode)
    train_y = np.asarray(train_y)
    if train_x.shape[0] != train_y.shape[0]:
        raise DataError(
            f"train_x has {train_x.shape[0]} images but train_y has {train_y.shape[0]} labels"
        )
    cls_idx = np.flatnonzero(train_y == synthetic_label)
    c = len(cls_idx)
    if c == 0:
        raise DataError(
            f"the training set has no images of the synthetic class (label {synthetic_label})"
        )
    s = synthetic_needed(c, r, mode)

    if s > 0:
        if pool is None or len(pool) == 0:
            raise PoolError(
                f"R={r:g} needs {s} synthetic images but no pool (or an empty one) was given"
            )
        if len(pool) < s:
            raise PoolError(
                f"pool has {len(pool)} images, R={r:g} needs {s} ({mode} of {c} real images)"
            )
        if pool.dtype != np.uint8 or pool.shape[1:] != train_x.shape[1:]:
            raise PoolError(
                f"pool images are {pool.dtype} {tuple(pool.shape[1:])}, the training images are "
                f"{train_x.dtype} {tuple(train_x.shape[1:])}; generate the pool at the data's size and channels"
            )

    # two independent streams of one seed: which real images go, which pool images come
    real_rng, pool_rng = (np.random.default_rng(s_) for s_ in np.random.SeedSequence(seed).spawn(2))
    n_drop = s if mode == "replace" else 0
    # a permutation, then a prefix: the images dropped at a smaller R are also dropped at a larger R
    drop = np.sort(cls_idx[real_rng.permutation(c)[:n_drop]])
    keep = np.ones(len(train_y), dtype=bool)
    keep[drop] = False
    real_x, real_y = train_x[keep], train_y[keep].astype(np.int64)

    if s > 0:
        assert pool is not None
        pick = pool_rng.permutation(len(pool))[:s]
        syn_x = np.asarray(pool[pick], dtype=np.uint8)
    else:
        syn_x = np.zeros((0,) + tuple(train_x.shape[1:]), dtype=np.uint8)
    x = np.concatenate([np.asarray(real_x, dtype=np.uint8), syn_x], axis=0)
    y = np.concatenate([real_y, np.full(s, synthetic_label, dtype=np.int64)])
    is_synthetic = np.zeros(len(y), dtype=bool)
    is_synthetic[len(real_y) :] = True
    return Mixed(x=x, y=y, is_synthetic=is_synthetic, n_real=int(len(real_y)), n_synthetic=int(s))
