"""Measuring pools: all figures of one pool, and of every pool in the store (cached in manifests).

The figures of a pool are written into its manifest's ``quality`` block and, optionally, logged
as a ``pool`` job in MLflow. Each dataset's feature extractor is trained once and cached under
``<home>/cache/quality``, so that every pool of a dataset is measured in the same feature space.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import is_number, read_json
from ..errors import DataError
from .features import FeatureExtractor, load_feature_extractor, train_feature_extractor
from .metrics import (
    c2st,
    frechet_distance,
    kernel_inception_distance,
    memorisation_share,
    precision_recall,
)

if TYPE_CHECKING:
    from torch import nn

    from ..data import Dataset
    from ..home import Home

QUALITY_NUMBERS = (
    "fd",
    "kid",
    "kid_std",
    "precision",
    "recall",
    "c2st",
    "c2st_features",
    "memorisation",
    "label_agreement",
    "mean_confidence",
)


def pool_quality(
    pool_images: np.ndarray,
    real_train_images: np.ndarray,
    feature_extractor: FeatureExtractor,
    *,
    synthetic_label: int | None = None,
    seed: int = 0,
    k: int = 3,
    kid_subsets: int = 20,
    memorisation_quantile: float = 0.05,
    c2st_epochs: int = 15,
    c2st_min_steps: int = 100,
    max_images: int = 2000,
) -> dict[str, Any]:
    """All quality figures of one pool against the real training images of its class.

    ``real_train_images`` should be the real training images of the class the pool was generated
    for (uint8, same shape). Both sets are capped at ``max_images`` (random, seeded) so that the
    quadratic distance matrices stay small. With ``synthetic_label`` given, also the share of pool
    images the real-trained extractor labels as that class and its mean confidence.
    """
    pool_images, real = np.asarray(pool_images), np.asarray(real_train_images)
    if pool_images.shape[1:] != real.shape[1:]:
        raise DataError(
            f"pool images {pool_images.shape[1:]} and real images {real.shape[1:]} differ in shape"
        )
    rng = np.random.default_rng(seed)
    if len(pool_images) > max_images:
        pool_images = pool_images[np.sort(rng.choice(len(pool_images), max_images, replace=False))]
    if len(real) > max_images:
        real = real[np.sort(rng.choice(len(real), max_images, replace=False))]
    fr = feature_extractor.features(real)
    fp = feature_extractor.features(pool_images)
    kid_mean, kid_std = kernel_inception_distance(fr, fp, n_subsets=kid_subsets, seed=seed)
    precision, recall = precision_recall(fr, fp, k=k)
    mem, mem_threshold = memorisation_share(real, pool_images, memorisation_quantile)
    out: dict[str, Any] = {
        "fd": frechet_distance(fr, fp),
        "kid": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
        "c2st": c2st(real, pool_images, seed=seed, epochs=c2st_epochs, min_steps=c2st_min_steps),
        "c2st_features": c2st(fr, fp, seed=seed),
        "memorisation": mem,
        "memorisation_expected": float(memorisation_quantile),
        "memorisation_threshold": mem_threshold,
        "n_pool": int(len(pool_images)),
        "n_real": int(len(real)),
        "k": int(k),
        "feature_extractor": dict(feature_extractor.info),
    }
    if synthetic_label is not None:
        proba = feature_extractor.predict_proba(pool_images)[:, synthetic_label]
        out["label_agreement"] = float(np.mean(proba >= 0.5))
        out["mean_confidence"] = float(np.mean(proba))
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


def dataset_of_pool(home: Home, manifest: dict[str, Any]) -> Dataset:
    """The real training set a pool's model was fine-tuned on, from the model's meta.json and the
    data cache (``<home>/cache/data-<key>``). DataError when either is gone."""
    from ..data import cached_dataset

    model_path = manifest.get("model_path")
    if not model_path:
        raise DataError(
            f"pool {manifest.get('key')}: no model recorded (an imported folder?), so its real "
            "dataset is unknown"
        )
    meta_path = Path(model_path) / "meta.json"
    try:
        meta = read_json(meta_path)
    except (OSError, ValueError):
        raise DataError(
            f"pool {manifest.get('key')}: the model's {meta_path} cannot be read"
        ) from None
    key = meta.get("data_key")
    data = cached_dataset(home, str(key), int(meta.get("synthetic_label", 0))) if key else None
    if data is None:
        raise DataError(
            f"pool {manifest.get('key')}: the dataset {key} of its model is not in {home.cache} "
            "(load it once, e.g. with `ratio-search finetune`, to cache it)"
        )
    if meta.get("class_names"):  # the model's own names win, as when it was trained
        data.class_names = list(meta["class_names"])
    return data


Progress = Callable[[str], Any]


def _select(rows: list[dict[str, Any]], keys: Sequence[str] | None) -> list[dict[str, Any]]:
    """The rows of ``keys`` (pool keys or names); DataError naming any that is not there."""
    if not keys:
        return rows
    wanted = set(keys)
    missing = wanted - {r["key"] for r in rows} - {r.get("name") for r in rows}
    if missing:
        raise DataError(
            f"pool(s) not found: {', '.join(sorted(missing))} (see `ratio-search pools`)"
        )
    return [r for r in rows if r["key"] in wanted or r.get("name") in wanted]


def pools_quality(
    home: Home,
    keys: Sequence[str] | None = None,
    *,
    extractor_path: str | Path | None = None,
    force: bool = False,
    seed: int = 0,
    track: bool = True,
    progress: Progress | None = None,
    extractor_kwargs: dict[str, Any] | None = None,
    quality_kwargs: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Compute (or read) the quality figures of every pool (or of ``keys``) in the store.

    Figures already in a pool's manifest are reused unless ``force``. New figures are written into
    the manifest's ``quality`` block (atomically, :func:`ratio_search.pools.update_manifest`) and,
    with ``track``, logged as a ``pool`` job in MLflow (``home.tracking_uri()``). Returns one row
    per pool: ``{"key", "status": computed|cached|skipped, "reason", "quality"}``.
    """
    from .. import pools

    rows = _select(pools.list_pools(home), keys)
    extractors: dict[str, FeatureExtractor] = {}
    out = []
    for row in rows:
        pool = pools.load_pool(home, row["path"])
        have = pool.manifest.get("quality") or {}
        if have.get("fd") is not None and not force:
            out.append({"key": pool.key, "status": "cached", "reason": None, "quality": have})
            continue
        try:
            data = dataset_of_pool(home, pool.manifest)
        except DataError as e:
            out.append({"key": pool.key, "status": "skipped", "reason": str(e), "quality": have})
            continue
        if progress:
            progress(f"pool {pool.key}: measuring quality")
        if data.key not in extractors:
            extractors[data.key] = real_classifier(
                Path(home.cache) / "quality",
                data,
                seed=seed,
                path=extractor_path,
                **(extractor_kwargs or {}),
            )
        # the pool's own class (pools are per class), matched by name; else the synthetic class
        name = pool.manifest.get("class_name")
        label = data.class_names.index(name) if name in data.class_names else data.synthetic_label
        q = pool_quality(
            pool.images,
            pools.class_reference(data, label),  # the real training images of the pool's class
            extractors[data.key],
            synthetic_label=label,
            seed=seed,
            **(quality_kwargs or {}),
        )
        pools.update_manifest(home, pool.key, {"quality": q})
        if track:
            q["mlflow_run_id"] = _log_quality(home, pool.key, pool.manifest, q)
        out.append({"key": pool.key, "status": "computed", "reason": None, "quality": q})
    return out


_LOGGED_PARAMS = ("key", "model_hash", "guidance", "steps", "scheduler", "postprocess", "seed", "n")


def _log_quality(home: Home, key: str, manifest: dict[str, Any], q: dict[str, Any]) -> str | None:
    """Log a pool's figures as a ``pool`` job in MLflow; None (and a warning) if that fails."""
    try:
        from .. import tracking

        params = {k: manifest.get(k) for k in _LOGGED_PARAMS}
        params["feature_extractor"] = q["feature_extractor"].get("source")
        metrics = {k: q[k] for k in QUALITY_NUMBERS if is_number(q.get(k))}
        return tracking.log_job(
            "pool",
            params,
            metrics,
            tracking_uri=home.tracking_uri(),
            run_name=f"pool-quality {key}",
            tags={"pool_key": key, "ratio_search.job": "pool_quality"},
        )
    except Exception as e:  # noqa: BLE001 - the figures are in the manifest either way
        warnings.warn(f"pool {key}: quality not logged to MLflow ({e})", stacklevel=2)
        return None
