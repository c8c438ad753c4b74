"""Measuring pools: all figures of one pool, and of every pool in the store (cached in manifests).

The rules (docs/evidence.md, "Pool quality"):

- **Held-out reference.** The training split is cut, per class and seeded
  (:func:`.features.reference_split`), into the part the quality feature extractor trains on and a
  held-out *reference* it never sees; val and test are never used. A pool is compared with the
  reference images of its own class. The extractor is cached under ``<home>/cache/quality`` by
  a key of its training set (:func:`quality_extractor`), so one trained on all of train (the
  judge of :mod:`.selection`, which keeps its own numbers) is never taken for it.
- **Floor.** Every figure is also computed with a second half of held-out real images in the
  pool's place (``<name>_floor``): what two real samples of that size score, through the same
  features, classifiers and code. A pool is only as bad as its distance above its floor.
- **C2ST** comes with an exact binomial test of its held-out predictions against 0.5
  (``c2st_p_value``, 95 % interval ``c2st_low``..``c2st_high``).
- **Memorisation** counts a generated image as a copy when it is nearer to a training image *or
  its mirror image* than training images are to each other (the fine-tune trains with flips).
- **The first pool_n images**: a trial with pool size ``n`` uses the first ``n`` images of a pool,
  so those are the ones measured (``pool_n``; all of the pool by default).

The figures of a pool are written into its manifest's ``quality`` block (``format``
:data:`QUALITY_FORMAT`) and, optionally, logged as a ``pool`` job in MLflow. A block of an
older format (measured against the extractor's own training images, without floors) is
re-measured, or shown as old where that cannot be done; never read as current.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import is_number, read_json
from ..errors import DataError
from .features import (
    REFERENCE_MIN,
    REFERENCE_SHARE,
    FeatureExtractor,
    load_feature_extractor,
    reference_split,
    split_key,
    train_feature_extractor,
)
from .metrics import (
    c2st_test,
    frechet_distance,
    kernel_inception_distance,
    memorisation_share,
    precision_recall,
)

if TYPE_CHECKING:
    from torch import nn

    from ..data import Dataset

#: The quality block's format: 2 = held-out reference, floors, C2ST test, flips, first pool_n.
QUALITY_FORMAT = 2

#: The figures that have a floor (``<name>_floor``), in the order they are shown.
FLOORED = (
    "fd",
    "kid",
    "precision",
    "recall",
    "c2st",
    "c2st_features",
    "memorisation",
    "label_agreement",
    "mean_confidence",
)
_C2ST_EXTRA = ("p_value", "low", "high")

#: Every number of a quality block (logged to MLflow).
QUALITY_NUMBERS = (
    *FLOORED,
    *(f"{m}_floor" for m in FLOORED),
    "kid_std",
    "kid_std_floor",
    *(
        f"{c}{f}_{x}"
        for c in ("c2st", "c2st_features")
        for f in ("", "_floor")
        for x in _C2ST_EXTRA
    ),
)

#: The fewest pool images measured: C2ST and the k-NN manifolds need 4 per side.
MIN_POOL = 4


def is_current(quality: dict[str, Any] | None, pool_n: int | None = None) -> bool:
    """Whether a stored quality block follows the current rules (and, with ``pool_n``, measured
    the first ``pool_n`` images). Old blocks are readable, never current."""
    q = quality or {}
    if q.get("format") != QUALITY_FORMAT or not is_number(q.get("fd_floor")):
        return False
    return pool_n is None or q.get("pool_n") == int(pool_n)


def floor_name(name: str) -> str:
    """The key of a figure's floor: ``fd`` -> ``fd_floor``, ``c2st_p_value`` -> ``c2st_floor_p_value``."""
    for base in ("c2st_features", "c2st"):
        if name.startswith(base + "_") and name != "c2st_features":
            return f"{base}_floor_{name[len(base) + 1 :]}"
    return f"{name}_floor"


def _side(
    fe: FeatureExtractor, ref_x: np.ndarray, ref_f: np.ndarray, x: np.ndarray, seed: int,
    k: int, kid_subsets: int, c2st_kw: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """The reference-vs-``x`` figures that need no training images (pool, or a real half)."""
    fx = fe.features(x)
    kid, kid_std = kernel_inception_distance(ref_f, fx, n_subsets=kid_subsets, seed=seed)
    precision, recall = precision_recall(ref_f, fx, k=k)
    out: dict[str, Any] = {"fd": frechet_distance(ref_f, fx), "kid": kid, "kid_std": kid_std,
                           "precision": precision, "recall": recall}  # fmt: skip
    for name, t in (("c2st", c2st_test(ref_x, x, seed=seed, **c2st_kw)),
                    ("c2st_features", c2st_test(ref_f, fx, seed=seed))):  # fmt: skip
        out[name] = t["accuracy"]
        out.update({f"{name}_{x_}": t[x_] for x_ in _C2ST_EXTRA})
        out[f"{name}_n"] = t["n"]
    return out


def pool_quality(
    pool_images: np.ndarray,
    class_train_images: np.ndarray,
    reference_idx: np.ndarray,
    feature_extractor: FeatureExtractor,
    *,
    synthetic_label: int | None = None,
    pool_n: int | None = None,
    seed: int = 0,
    k: int = 3,
    kid_subsets: int = 20,
    memorisation_quantile: float = 0.05,
    c2st_epochs: int = 15,
    c2st_min_steps: int = 100,
    max_images: int = 2000,
    reference_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """All quality figures of one pool, each beside its real-vs-real floor.

    ``class_train_images``: the real training images of the pool's class (the generator's
    training images: memorisation is checked against all of them and their mirror images).
    ``reference_idx``: which of them are held out from ``feature_extractor``'s training
    (:func:`.features.reference_split`); at least 8. They are shuffled (seeded) into halves A and
    B: the pool is compared with A, and the floor is B compared with A, B cut to the pool's size
    where it is larger (``n_real`` = len(A), ``n_floor`` = len(B) used). The memorisation floor is
    B against the class's other training images.

    Only the first ``pool_n`` images of the pool are measured (all by default; what a trial with
    pool size ``pool_n`` uses), and of them at most the first ``max_images``, as A and B are
    (``n_pool`` is the number measured). With ``synthetic_label``, also the share of images the
    extractor calls that class and its mean probability, with the same on B as floor.
    """
    pool, train = np.asarray(pool_images), np.asarray(class_train_images)
    if pool.shape[1:] != train.shape[1:]:
        raise DataError(
            f"pool images {pool.shape[1:]} and real images {train.shape[1:]} differ in shape"
        )
    ref_idx = np.unique(np.asarray(reference_idx, dtype=np.int64))
    if len(ref_idx) and (ref_idx[0] < 0 or ref_idx[-1] >= len(train)):
        raise DataError(f"reference indices outside the {len(train)} training images of the class")
    if len(ref_idx) < 2 * MIN_POOL:
        raise DataError(
            f"only {len(ref_idx)} held-out real image(s) of the pool's class: the comparison and "
            f"its floor need at least {2 * MIN_POOL} (two halves of {MIN_POOL})"
        )
    n_total = len(pool)
    used = n_total if pool_n is None else int(pool_n)
    if used > n_total:
        raise DataError(f"pool_n = {used}, but the pool holds {n_total} images")
    pool = pool[: min(used, max_images)]
    if len(pool) < MIN_POOL:
        raise DataError(f"{len(pool)} pool image(s): need at least {MIN_POOL} to measure")
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(ref_idx)
    half = math.ceil(len(shuffled) / 2)
    a_idx, b_idx = shuffled[:half][:max_images], shuffled[half:]
    b_idx = b_idx[: min(len(b_idx), len(pool), max_images)]
    ref_x = train[np.sort(a_idx)]
    ref_f = feature_extractor.features(ref_x)
    real_b = train[np.sort(b_idx)]
    kw = {"epochs": c2st_epochs, "min_steps": c2st_min_steps}
    got = _side(feature_extractor, ref_x, ref_f, pool, seed, k, kid_subsets, kw)
    floor = _side(feature_extractor, ref_x, ref_f, real_b, seed, k, kid_subsets, kw)
    got["memorisation"], threshold = memorisation_share(train, pool, memorisation_quantile)
    rest = np.ones(len(train), dtype=bool)
    rest[b_idx] = False
    floor["memorisation"], _ = memorisation_share(train[rest], real_b, memorisation_quantile)
    if synthetic_label is not None:
        for side, x in ((got, pool), (floor, real_b)):
            proba = feature_extractor.predict_proba(x)[:, synthetic_label]
            side["label_agreement"] = float(np.mean(proba >= 0.5))
            side["mean_confidence"] = float(np.mean(proba))
    out: dict[str, Any] = {"format": QUALITY_FORMAT}
    for name, v in got.items():
        out[name], out[floor_name(name)] = v, floor[name]
    out.update({
        "memorisation_expected": float(memorisation_quantile),
        "memorisation_threshold": threshold,
        "memorisation_flips": True,
        "pool_n": int(used),
        "pool_total": int(n_total),
        "n_pool": int(len(pool)),
        "n_real": int(len(a_idx)),
        "n_floor": int(len(b_idx)),
        "n_train": int(len(train)),
        "k": int(k),
        "reference": {**(reference_info or {}), "n_class": int(len(ref_idx))},
        "feature_extractor": dict(feature_extractor.info),
    })  # fmt: skip
    return out


def rank_by_confidence(
    images: np.ndarray, classifier: FeatureExtractor | nn.Module, label: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``images`` from most to least confidently of class ``label``, and the scores.

    ``classifier`` is a real-trained model (a :class:`FeatureExtractor` or any SimpleCNN); the
    report shows the two ends of this ranking as the best- and worst-generated images.
    """
    if isinstance(classifier, FeatureExtractor):
        proba = classifier.predict_proba(images)
    else:
        from ..train.loop import predict_proba

        proba = predict_proba(classifier, images)
    score = proba[:, label]
    order = np.argsort(-score, kind="stable")
    return order, score


def real_classifier(
    cache_dir: str | Path,
    data: Dataset,
    *,
    seed: int = 0,
    path: str | Path | None = None,
    **train_kwargs: Any,
) -> FeatureExtractor:
    """The feature extractor / real-trained classifier of a dataset, trained once and cached.

    ``path``: the user's own checkpoint (:func:`load_feature_extractor`) instead. Otherwise a
    SimpleCNN is trained on ``data``'s real training images (:func:`train_feature_extractor`,
    ``train_kwargs`` passed on) and kept as ``<cache_dir>/extractor-<data key>-s<seed>.safetensors``,
    so that every pool of a dataset is measured in the same feature space.
    """
    shape = tuple(int(s) for s in data.train_x.shape[1:])
    if path is not None:
        return load_feature_extractor(path, shape)
    cached = Path(cache_dir) / f"extractor-{data.key}-s{seed}.safetensors"
    info_path = Path(str(cached) + ".json")
    if cached.is_file() and info_path.is_file():
        fe = load_feature_extractor(cached, shape)
        fe.info = read_json(info_path)
        return fe
    fe = train_feature_extractor(
        data.train_x, data.train_y, len(data.class_names), seed=seed, **train_kwargs
    )
    fe.info["data_key"] = str(data.key)
    fe.save(cached)
    return fe


@dataclass
class Reference:
    """A dataset's quality split: the extractor fitted on the ``fit`` indices (into
    ``data.train_x``) and the held-out ``ref`` indices; ``info`` is recorded in every block."""

    extractor: FeatureExtractor
    fit: np.ndarray
    ref: np.ndarray
    info: dict[str, Any]


def quality_extractor(
    cache_dir: str | Path,
    data: Dataset,
    *,
    seed: int = 0,
    path: str | Path | None = None,
    share: float = REFERENCE_SHARE,
    min_per_class: int = REFERENCE_MIN,
    **train_kwargs: Any,
) -> Reference:
    """The quality feature extractor of a dataset, trained on the training split *minus* the
    held-out reference (:func:`.features.reference_split`, seeded by ``seed``), cached.

    Kept as ``<cache_dir>/extractor-<data key>-s<seed>-fit<split key>.safetensors``, where the
    split key names the images it trained on (:func:`.features.split_key`): another split, or the
    judge's extractor trained on all of train (``extractor-<data key>-s<seed>``), is never
    reused for it. ``path``: the user's own checkpoint instead (what it trained on is then unknown,
    which ``info["extractor_saw_reference"]`` says).
    """
    fit, ref = reference_split(data.train_y, share=share, min_per_class=min_per_class, seed=seed)
    key = split_key(fit, len(data.train_y))
    info: dict[str, Any] = {
        "source": "held-out part of the training split (never val or test)",
        "seed": int(seed), "share": float(share), "min_per_class": int(min_per_class),
        "n_fit": int(len(fit)), "n_reference": int(len(ref)), "split_key": key,
        "extractor_saw_reference": False if path is None else "unknown (your own extractor)",
    }  # fmt: skip
    shape = tuple(int(s) for s in data.train_x.shape[1:])
    if path is not None:
        return Reference(load_feature_extractor(path, shape), fit, ref, info)
    cached = Path(cache_dir) / f"extractor-{data.key}-s{seed}-fit{key}.safetensors"
    info_path = Path(str(cached) + ".json")
    if cached.is_file() and info_path.is_file():
        fe = load_feature_extractor(cached, shape)
        fe.info = read_json(info_path)
        return Reference(fe, fit, ref, info)
    fe = train_feature_extractor(
        np.asarray(data.train_x)[fit], np.asarray(data.train_y)[fit], len(data.class_names),
        seed=seed, **train_kwargs,
    )  # fmt: skip
    fe.info.update(source="trained on the training split minus the held-out reference",
                   data_key=str(data.key), split_key=key)  # fmt: skip
    fe.save(cached)
    return Reference(fe, fit, ref, info)
