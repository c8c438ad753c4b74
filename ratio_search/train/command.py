"""``ratio-search train``: a ``--config`` YAML (e.g. ``best.yaml``) and its pool(s) -> one trial.

The YAML holds the config sections plus where the synthetic images come from: ``pool:`` (the
default synthetic class, one pool) or ``pools:`` (one pool per class of
``train.synthetic_classes``: ``{<class name>: {key: .., n: ..}}``), as ``export`` writes them.
``train.filter_top`` < 1 is re-applied here from each pool's judge scores: train/ does not import
the quality layer (data flows one way), so the caller passes a ``scorer`` (the CLI's comes from
``ratio_search.quality.selection.train_scorer``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_dir, atomic_write_json, json_safe
from ..config import SECTIONS, Config, config_from_dict, read_yaml, save_config
from ..data import load_dataset, load_image_folder
from ..errors import ConfigError, DataError, PoolError
from ..home import Home
from .mixing import top_fraction

ReportFn = Callable[[int, dict[str, Any], dict[str, Any]], None]
# scorer(pool_info, images, data, label) -> one float per image: the judge's P(label)
Scorer = Callable[[dict[str, Any], np.ndarray, Any, int], np.ndarray]

# Keys a `train --config` YAML may hold besides the config sections: `pool` / `pools` (where the
# synthetic images come from) and `expected` (metadata such as the metrics `export` measured;
# ignored here).
TRAIN_YAML_EXTRA_KEYS = ("pool", "pools", "expected")


def _positive_n(path: Any, where: str, n: Any) -> int | None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"{path}: {where}.n must be a positive integer, got {n!r}")
    return n


def _one_pool(path: Any, where: str, value: Any) -> tuple[str | None, int | None]:
    """A ``pool:`` value: a key / folder, or ``{key|path: .., n: N}``; relative folders are
    taken beside the YAML when they exist there."""
    n = None
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"key", "path", "n"})
        if unknown:
            raise ConfigError(f"{path}: unknown key {where}.{unknown[0]}; allowed: key, path, n")
        n = _positive_n(path, where, value.get("n"))
        value = value.get("path") or value.get("key")  # the path wins
    if value is None:
        return None, n
    if not isinstance(value, str | int):
        raise ConfigError(f"{path}: {where} must be a key or a folder, got {value!r}")
    value = str(value)
    beside = Path(path).parent / value
    if not Path(value).is_absolute() and beside.exists():
        value = str(beside)
    return value, n


def read_train_yaml(
    path: str | os.PathLike,
) -> tuple[dict[str, Any], str | dict[str, str] | None, int | dict[str, int | None] | None]:
    """Read a ``train --config`` YAML: config sections, plus optional ``pool``/``pools``, ``expected``.

    Accepted top-level keys: the sections of :class:`ratio_search.config.Config` (``data``,
    ``train``, ``finetune``, ``generate``), ``pool`` or ``pools``, and ``expected`` (metadata,
    ignored). Anything else is a ConfigError naming the key. ``pool`` is a pool key, a pool
    folder or an image folder (a relative path is taken relative to the YAML's folder when it
    exists there), or a mapping ``{key: ..., n: N}`` / ``{path: ..., n: N}``: ``n`` = use the
    pool's first N images, as the search's trial did (a cached pool may since have grown; a
    plain ``pool: KEY`` takes ``n`` from ``expected.pool_n``, where ``export`` records it).
    ``pools`` maps class names to such values, one pool per synthetic class.

    Returns ``(sections, pool, pool_n)``; with ``pools``, ``pool`` is ``{class name: key or
    folder}`` and ``pool_n`` ``{class name: n or None}``.
    """
    doc = read_yaml(path)
    if doc is None:
        return {}, None, None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of sections ({', '.join(SECTIONS)})")
    allowed = (*SECTIONS, *TRAIN_YAML_EXTRA_KEYS)
    for key in doc:
        if key not in allowed:
            raise ConfigError(f"{path}: unknown key {key!r}; allowed: {', '.join(allowed)}")
    sections = {k: v for k, v in doc.items() if k in SECTIONS}
    if doc.get("pools") is not None:
        if doc.get("pool") is not None:
            raise ConfigError(
                f"{path}: give either pool (one class) or pools (per class), not both"
            )
        if not isinstance(doc["pools"], dict) or not doc["pools"]:
            raise ConfigError(f"{path}: pools must map class names to pools, got {doc['pools']!r}")
        specs: dict[str, str] = {}
        ns: dict[str, int | None] = {}
        for name, value in doc["pools"].items():
            spec, n = _one_pool(path, f"pools.{name}", value)
            if spec is None:
                raise ConfigError(f"{path}: pools.{name} names no pool (key or path)")
            specs[str(name)], ns[str(name)] = spec, n
        return sections, specs, ns
    pool, pool_n = _one_pool(path, "pool", doc.get("pool"))
    if pool_n is None and isinstance(doc.get("expected"), dict) and "pool_n" in doc["expected"]:
        if not isinstance(doc.get("pool"), dict):
            # export writes `pool: KEY` and records the trial's pool size as expected.pool_n
            pool_n = doc["expected"]["pool_n"]
            if not isinstance(pool_n, int) or isinstance(pool_n, bool) or pool_n < 1:
                pool_n = None  # metadata only (e.g. null at R = 0): never an error
    return sections, pool, pool_n


def resolve_train_config(
    config_path: str | os.PathLike | None, overrides: dict[str, Any]
) -> tuple[Config, str | dict[str, str] | None, int | dict[str, int | None] | None]:
    """Defaults, then the ``--config`` YAML (see :func:`read_train_yaml`), then ``overrides``.

    ``overrides`` are ``{"section.key": value}`` from the command line (None values are skipped).
    Returns the validated config and the pool (and its ``n``) named in the YAML, or None
    (per class with ``pools:``, see :func:`read_train_yaml`).
    """
    sections, pool, pool_n = read_train_yaml(config_path) if config_path else ({}, None, None)
    merged: dict[str, dict[str, Any]] = {}
    for section, values in sections.items():
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{config_path}: section {section!r} must be a mapping")
        merged[section] = dict(values)
    try:  # the YAML alone first, so that its errors name the file
        config_from_dict(merged)
    except ConfigError as e:
        raise ConfigError(f"{config_path}: {str(e).removeprefix('config: ')}") from None
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, name = key.partition(".")
        merged.setdefault(section, {})[name] = value
    return config_from_dict(merged), pool, pool_n


def load_pool_images(
    spec: str | os.PathLike,
    home: Home,
    image_size: int,
    channels: int,
    skip_bad: bool = False,
    n: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The synthetic images named by ``spec``, as uint8 ``(N, C, S, S)``, and where they came from.

    ``spec`` is, in this order: a folder holding ``images.npy`` (a pool; opened memory-mapped), a
    folder of image files from any generator (decoded and resized exactly like the real data), or
    the key of a pool under ``home.pools``. ``n``: only the first ``n`` images (a PoolError if
    there are fewer). Returns ``(images, info)`` with ``info`` = ``{"path", "key", "kind",
    "skipped", "n"}``.
    """
    path = Path(spec).expanduser()
    if not path.exists() and (home.pools / str(spec)).is_dir():
        path = home.pools / str(spec)
    if not path.exists():
        raise PoolError(f"pool not found: {spec} (not a folder, nor a pool key under {home.pools})")
    if not path.is_dir():
        raise PoolError(f"pool must be a folder of images or a pool folder, got a file: {path}")
    info: dict[str, Any] = {"path": str(path.resolve()), "key": path.name, "skipped": 0}
    npy = path / "images.npy"
    if npy.is_file():
        try:
            images = np.load(npy, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise PoolError(f"unreadable pool array: {npy} ({e})") from None
        manifest = path / "manifest.json"
        if manifest.is_file():
            try:
                info["key"] = str(json.loads(manifest.read_text()).get("key", path.name))
            except (OSError, ValueError, AttributeError):
                pass  # the key is informational; the images are what matters
        info["kind"] = "pool"
        want = (channels, image_size, image_size)
        if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise PoolError(
                f"{npy}: expected uint8 images of shape (N, {channels}, {image_size}, "
                f"{image_size}) to match the data, got {images.dtype} {images.shape}"
            )
    else:
        skipped: list[str] = []
        try:
            images = load_image_folder(path, image_size, channels, skip_bad, skipped=skipped)
        except DataError as e:  # same message, reported as a pool problem
            raise PoolError(f"pool: {e}") from None
        info.update(kind="image-folder", skipped=len(skipped))
    if n is not None:
        if len(images) < n:
            raise PoolError(f"pool {path} holds {len(images)} images, fewer than the {n} asked for")
        images = images[:n]
    info["n"] = int(len(images))
    return images, info


def save_outputs(out: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Create the folder ``out`` with whatever ``write(folder)`` puts in it, all or nothing.

    ``write`` fills a temp folder beside ``out`` that is renamed into place at the end, so an
    interrupted or failed write never leaves a half-written output folder. ``out`` must not exist
    (an existing empty folder is accepted).
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output folder already exists and is not empty: {out}")
    # (renaming a folder onto an existing empty one replaces it, so `replace` is not needed)
    with atomic_dir(out) as tmp:
        write(tmp)
    return out


def default_train_out(home: Home) -> Path:
    """``runs/train-<UTC timestamp>`` under the home (``-2``, ``-3``... if taken).

    A folder name, not a time stamp inside a file: compact, sortable, and free of ``:``.
    """
    base = home.runs / f"train-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    out, i = base, 1
    while out.exists():
        i += 1
        out = base.with_name(f"{base.name}-{i}")
    return out


def _pool_specs(
    pool: str | os.PathLike | Mapping[str, Any] | None,
    pool_n: int | Mapping[str, int | None] | None,
    data: Any,
    labels: list[int],
) -> dict[int, tuple[str, int | None]]:
    """``{label: (pool spec, n)}`` from the YAML's ``pool`` / ``pools`` (or ``--pool``)."""
    names = list(data.class_names)
    if pool is None:
        return {}
    if not isinstance(pool, Mapping):
        if labels != [int(data.synthetic_label)]:
            listed = ", ".join(names[i] for i in labels)
            raise ConfigError(
                f"train.synthetic_classes lists {listed}: one pool per class is needed "
                "(`pools: {<class>: {key: .., n: ..}}` in the YAML), not one --pool"
            )
        if isinstance(pool_n, Mapping):
            raise ConfigError("one pool with a per-class n: give pool n as one number")
        return {labels[0]: (str(pool), pool_n)}
    out: dict[int, tuple[str, int | None]] = {}
    for name, spec in pool.items():
        if name not in names:
            raise ConfigError(
                f"pools: {name!r} is not a class of the data (classes: {', '.join(names)})"
            )
        label = names.index(name)
        if label not in labels:
            raise ConfigError(
                f"pools: class {name!r} is not in train.synthetic_classes "
                f"({', '.join(names[i] for i in labels)})"
            )
        n = pool_n.get(name) if isinstance(pool_n, Mapping) else pool_n
        out[label] = (str(spec), n)
    return out


def train_from_config(
    cfg: Config,
    home: Home,
    pool: str | os.PathLike | Mapping[str, Any] | None = None,
    out: str | os.PathLike | None = None,
    report: ReportFn | None = None,
    pool_n: int | Mapping[str, int | None] | None = None,
    scorer: Scorer | None = None,
) -> dict[str, Any]:
    """What ``ratio-search train`` does: load data and pool(s), run one trial, write its outputs.

    ``pool``: one pool (key, pool folder or image folder) for the default synthetic class, or
    ``{class name: pool}`` for ``train.synthetic_classes`` with several classes. ``pool_n``: use
    only each pool's first ``pool_n`` images (one number, or ``{class name: n}``).
    ``scorer(pool_info, images, data, label)``: the judge's scores of a pool's images, needed when
    ``train.filter_top`` < 1 (the top fraction is kept in score order, as the search's trial did).

    Writes ``config.yaml`` (the resolved config) and ``metrics.json`` (final and per-epoch
    validation metrics, training-set composition, data and pool provenance) into ``out`` (default
    :func:`default_train_out`), only once the trial has succeeded. Returns the summary that
    ``metrics.json`` holds, plus ``out``.
    """
    from .mixing import synthetic_labels
    from .trial import run_trial

    r = cfg.train.r
    filter_top = float(cfg.train.filter_top)
    if r > 0 and pool is None:
        raise ConfigError(
            f"train.r = {r} needs synthetic images: pass --pool (a pool key, a pool folder or "
            f"a folder of generated images), or use --r 0"
        )
    if isinstance(pool_n, int) and pool_n < 1:
        raise ConfigError(f"pool n (--pool-n) must be a positive integer, got {pool_n}")
    if r > 0 and filter_top < 1.0 and scorer is None:
        raise ConfigError(
            f"train.filter_top = {filter_top:g} needs the judge's scores of the pool: "
            "pass scorer= (ratio_search.quality.selection.train_scorer)"
        )
    out = Path(out) if out is not None else default_train_out(home)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # fail before training
        raise ConfigError(f"output folder already exists and is not empty: {out}")
    data = load_dataset(cfg.data, home)
    labels = synthetic_labels(cfg.train.synthetic_classes, data.class_names, data.synthetic_label)
    specs = _pool_specs(pool, pool_n, data, labels)
    images_of: dict[int, np.ndarray] = {}
    infos: dict[str, dict[str, Any]] = {}
    for label, (spec, n) in specs.items():
        images, info = load_pool_images(
            spec, home, data.image_size, data.channels, cfg.data.skip_bad_images, n
        )
        if r > 0 and filter_top < 1.0:
            assert scorer is not None
            scores = np.asarray(scorer(info, images, data, label), dtype=np.float64)
            if scores.shape != (len(images),):
                raise PoolError(
                    f"pool {info['key']}: {scores.shape} scores for {len(images)} images"
                )
            images = np.asarray(images)[top_fraction(scores, filter_top)]
            info["kept"] = int(len(images))
        images_of[label], infos[data.class_names[label]] = images, info
    one = pool is not None and not isinstance(pool, Mapping)
    pool_images: Any = images_of.get(labels[0]) if one else (images_of or None)
    result = run_trial(cfg.train, data, pool_images, report=report)
    # NaN / inf (an undefined ROC AUC) become null: metrics.json stays strict JSON.
    summary = json_safe(
        {
            "metrics": result["metrics"],
            "r": r,
            "mode": cfg.train.mode,
            "n_real": result["n_real"],
            "n_synthetic": result["n_synthetic"],
            "n_train": result["n_train"],
            "n_val": int(len(data.val_y)),
            "device": result["device"],
            "class_names": data.class_names,
            "synthetic_class": data.class_names[data.synthetic_label],
            "synthetic_classes": [data.class_names[i] for i in labels],
            "filter_top": filter_top,
            "data_key": data.key,
            "skipped_images": int(data.info.get("skipped", 0)),
            "pool": next(iter(infos.values())) if one else None,
            **({"pools": infos} if not one and infos else {}),
            "history": result["history"],
            **({"seeds": result["seeds"]} if "seeds" in result else {}),
        }
    )

    def write(folder: Path) -> None:
        save_config(cfg, folder / "config.yaml")
        atomic_write_json(folder / "metrics.json", summary)

    save_outputs(out, write)
    return {**summary, "out": str(out)}
