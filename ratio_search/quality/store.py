"""The quality of every pool in the store: measured once per pool, cached in its manifest.

The rules of each figure are those of :mod:`.measure` (held-out reference, floors, C2ST test,
flipped neighbours, the first ``pool_n`` images). Each dataset's quality extractor is trained
once and cached under ``<home>/cache/quality`` (:func:`.measure.quality_extractor`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import is_number, read_json
from ..errors import DataError
from .measure import QUALITY_NUMBERS, Reference, is_current, pool_quality, quality_extractor

if TYPE_CHECKING:
    from ..data import Dataset
    from ..home import Home


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


def _skipped(
    out: list[dict[str, Any]], key: str, have: dict[str, Any], used: int, reason: str
) -> None:
    """A skipped pool's row; stored figures of an older measurement are kept and named as old."""
    current = is_current(have, used)
    if have and not current:
        reason += " (the stored figures are of an older measurement: shown as old)"
    out.append({"key": key, "status": "skipped", "reason": reason, "quality": have,
                "current": current})  # fmt: skip


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
    pool_n: int | None = None,
    extractor_path: str | Path | None = None,
    force: bool = False,
    seed: int = 0,
    track: bool = True,
    progress: Progress | None = None,
    extractor_kwargs: dict[str, Any] | None = None,
    quality_kwargs: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Compute (or read) the quality figures of every pool (or of ``keys``) in the store.

    ``pool_n``: measure the first ``pool_n`` images of each pool (those a trial with that pool
    size uses); all of each pool by default. A stored block is reused when it is current
    (:func:`is_current`: this format, the same first ``pool_n``) unless ``force``; an older block
    is measured again, or kept and shown as old (``current`` False) when its dataset is gone.
    New figures are written into the manifest's ``quality`` block (atomically,
    :func:`ratio_search.pools.update_manifest`) and, with ``track``, logged as a ``pool`` job in
    MLflow (``home.tracking_uri()``). ``extractor_kwargs`` go to :func:`quality_extractor` (the
    split's ``share``/``min_per_class`` and the extractor's training). Returns one row per pool:
    ``{"key", "status": computed|cached|skipped, "reason", "quality", "current"}``.
    """
    from .. import pools

    rows = _select(pools.list_pools(home), keys)
    refs: dict[str, Reference] = {}
    out = []
    for row in rows:
        pool = pools.load_pool(home, row["path"])
        have = pool.manifest.get("quality") or {}
        used = pool.n if pool_n is None else int(pool_n)

        if is_current(have, used) and not force:
            out.append({"key": pool.key, "status": "cached", "reason": None, "quality": have,
                        "current": True})  # fmt: skip
            continue
        if used > pool.n:
            _skipped(
                out, pool.key, have, used, f"pool_n = {used}, but the pool holds {pool.n} images"
            )
            continue
        try:
            data = dataset_of_pool(home, pool.manifest)
        except DataError as e:
            _skipped(out, pool.key, have, used, str(e))
            continue
        if progress:
            progress(f"pool {pool.key}: measuring quality on its first {used} images")
        if data.key not in refs:
            refs[data.key] = quality_extractor(
                Path(home.cache) / "quality", data, seed=seed, path=extractor_path,
                **(extractor_kwargs or {}),
            )  # fmt: skip
        ref = refs[data.key]
        # the pool's own class (pools are per class), matched by name; else the synthetic class
        name = pool.manifest.get("class_name")
        label = data.class_names.index(name) if name in data.class_names else data.synthetic_label
        in_class = np.flatnonzero(np.asarray(data.train_y) == label)
        try:
            q = pool_quality(
                pool.images, np.asarray(data.train_x)[in_class],
                np.flatnonzero(np.isin(in_class, ref.ref)), ref.extractor,
                synthetic_label=label, pool_n=used, seed=seed, reference_info=ref.info,
                **(quality_kwargs or {}),
            )  # fmt: skip
        except DataError as e:
            _skipped(out, pool.key, have, used, str(e))
            continue
        pools.update_manifest(home, pool.key, {"quality": q})
        if track:
            q["mlflow_run_id"] = _log_quality(home, pool.key, pool.manifest, q)
        out.append({"key": pool.key, "status": "computed", "reason": None, "quality": q,
                    "current": True})  # fmt: skip
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
