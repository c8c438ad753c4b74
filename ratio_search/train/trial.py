"""One trial: mix synthetic images into the real training set at ratio R, train, validate.

A pure function of its inputs (config, dataset, pool images): no Ray, no MLflow. The search wraps
it in a Ray Tune trainable and the tracking callback records what ``report`` sees, so that the same
trial can also be run by hand (``ratio-search train``) and by the export's multi-seed confirmation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_dir, atomic_write_json, json_safe
from ..config import SECTIONS, Config, TrainConfig, config_from_dict, read_yaml, save_config
from ..data import load_dataset, load_image_folder
from ..errors import ConfigError, DataError, PoolError
from ..home import Home, resolve_device
from .mixing import mix

# (torch and the training loop are imported inside run_trial: bad input then fails fast, without)
ReportFn = Callable[[int, dict[str, Any], dict[str, Any]], None]


def run_trial(
    cfg: TrainConfig,
    data: Any,
    pool_images: np.ndarray | None,
    report: ReportFn | None = None,
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Mix ``pool_images`` into ``data``'s synthetic class at ``cfg.r`` / ``cfg.mode``, then train.

    ``data`` is a :class:`ratio_search.data.Dataset`; validation always uses its ``val`` split,
    which never depends on R. ``report`` and ``state`` are passed to
    :func:`ratio_search.train.loop.train_classifier` (per-epoch metrics; resume after an epoch).
    The CNN's size comes from ``cfg.widths`` / ``cfg.fc`` (tests shrink it there).
    ``cfg.n_seeds`` > 1 trains seeds ``cfg.seed .. cfg.seed + n_seeds - 1`` together
    (:func:`train_seeds`); the metrics are then their mean (:func:`.multi.aggregate`).

    Returns ``{"metrics", "history", "n_real", "n_synthetic", "n_train", "device"}``: the final
    validation metrics, one metrics dict per epoch, and the training-set composition
    (+ ``"seeds"`` and ``"per_seed"`` when ``n_seeds`` > 1).
    """
    if int(getattr(cfg, "n_seeds", 1)) > 1:
        seeds = [int(cfg.seed) + i for i in range(int(cfg.n_seeds))]
        return train_seeds(cfg, data, pool_images, seeds, report=report, state=state)
    from .loop import train_classifier

    mixed = mix(
        data.train_x,
        data.train_y,
        pool_images,
        cfg.r,
        cfg.mode,
        data.synthetic_label,
        cfg.seed,
    )
    device = resolve_device(cfg.device)
    with _threads(cfg):
        result = train_classifier(
            mixed.x,
            mixed.y,
            data.val_x,
            data.val_y,
            cfg,
            n_classes=len(data.class_names),
            device=device,
            report=report,
            state=state,
            positive_label=data.synthetic_label,
        )
    return {
        "metrics": result.metrics,
        "history": result.history,
        **_composition(mixed),
        "device": str(device),
    }


def train_seeds(
    cfg: TrainConfig,
    data: Any,
    pool_images: np.ndarray | None,
    seeds: list[int],
    report: ReportFn | None = None,
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`run_trial` of ``cfg`` at each of ``seeds``, trained together as one vectorised model.

    Seed ``s`` is mixed, initialised and shuffled exactly as ``run_trial`` with ``cfg.seed = s``
    alone (:mod:`.multi`); its numbers equal that run's up to float summation order. One seed
    runs ``run_trial``'s own loop (bit-exact). ``report(epoch, metrics, state)`` gets the
    seeds' aggregate (:func:`.multi.aggregate`, with ``per_seed``). Returns ``run_trial``'s
    dict with aggregated ``metrics`` / ``history`` plus ``seeds`` and ``per_seed``
    (``[{"seed", "metrics", "history", "model"}]``), which a confirmation can use directly.
    """
    from .multi import aggregate, train_seeds_tensors

    seeds = [int(s) for s in seeds]
    mixed = [
        mix(data.train_x, data.train_y, pool_images, cfg.r, cfg.mode, data.synthetic_label, s)
        for s in seeds
    ]
    device = resolve_device(cfg.device)

    def on_epoch(epoch: int, per_seed: list[dict[str, Any]], st: dict[str, Any]) -> None:
        report(epoch, aggregate(per_seed, seeds), st)  # type: ignore[misc]

    with _threads(cfg):
        results = train_seeds_tensors(
            [m.x for m in mixed],
            [m.y for m in mixed],
            data.val_x,
            data.val_y,
            cfg,
            seeds,
            n_classes=len(data.class_names),
            device=device,
            report=on_epoch if report is not None else None,
            state=state,
            positive_label=data.synthetic_label,
        )
    n_epochs = len(results[0].history)
    history = [aggregate([r.history[e] for r in results], seeds) for e in range(n_epochs)]
    return {
        "metrics": aggregate([r.metrics for r in results], seeds),
        "history": history,
        **_composition(mixed[0]),  # the same counts at every seed (R and the class sizes fix them)
        "device": str(device),
        "seeds": seeds,
        "per_seed": [
            {"seed": s, "metrics": r.metrics, "history": r.history, "model": r.model}
            for s, r in zip(seeds, results, strict=True)
        ],
    }


class _threads:
    """``cfg.threads`` torch CPU threads inside the block (0: unchanged), restored after."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.n = int(cfg.threads)

    def __enter__(self) -> None:
        import torch

        self.before = torch.get_num_threads()
        if self.n > 0:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc: Any) -> None:
        import torch

        torch.set_num_threads(self.before)


def _composition(mixed: Any) -> dict[str, int]:
    """Training-set composition, counted from the per-image flags (whatever mix() reports)."""
    n_train = int(len(mixed.y))
    n_synthetic = int(np.asarray(mixed.is_synthetic).sum())
    return {"n_real": n_train - n_synthetic, "n_synthetic": n_synthetic, "n_train": n_train}


# ------------------------------------------------------------------ `ratio-search train` helpers

# Keys a `train --config` YAML may hold besides the config sections: `pool` (where the synthetic
# images come from) and `expected` (metadata such as the metrics `export` measured; ignored here).
TRAIN_YAML_EXTRA_KEYS = ("pool", "expected")


def read_train_yaml(path: str | os.PathLike) -> tuple[dict[str, Any], str | None, int | None]:
    """Read a ``train --config`` YAML: config sections, plus optional ``pool`` and ``expected``.

    Accepted top-level keys: the sections of :class:`ratio_search.config.Config` (``data``,
    ``train``, ``finetune``, ``generate``), ``pool`` and ``expected`` (metadata, ignored).
    Anything else is a ConfigError naming the key. ``pool`` is a pool key, a pool folder or an
    image folder (a relative path is taken relative to the YAML's folder when it exists there),
    or a mapping ``{key: ..., n: N}`` / ``{path: ..., n: N}``: ``n`` = use the pool's first N
    images, as the search's trial did (a cached pool may since have grown; a plain ``pool: KEY``
    takes ``n`` from ``expected.pool_n``, where ``export`` records it). Returns
    ``(sections, pool, pool_n)``.
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
    pool, pool_n = doc.get("pool"), None
    if isinstance(pool, dict):
        unknown = sorted(set(pool) - {"key", "path", "n"})
        if unknown:
            raise ConfigError(f"{path}: unknown key pool.{unknown[0]}; allowed: key, path, n")
        pool_n = pool.get("n")
        if pool_n is not None and (
            isinstance(pool_n, bool) or not isinstance(pool_n, int) or pool_n < 1
        ):
            raise ConfigError(f"{path}: pool.n must be a positive integer, got {pool_n!r}")
        pool = pool.get("path") or pool.get("key")  # the path wins
    elif isinstance(doc.get("expected"), dict) and "pool_n" in doc["expected"]:
        # export writes `pool: KEY` and records the trial's pool size as expected.pool_n
        pool_n = doc["expected"]["pool_n"]
        if not isinstance(pool_n, int) or isinstance(pool_n, bool) or pool_n < 1:
            pool_n = None  # metadata only (e.g. null at R = 0): never an error
    if pool is not None:
        if not isinstance(pool, str | int):
            raise ConfigError(f"{path}: pool must be a key or a folder, got {pool!r}")
        pool = str(pool)
        beside = Path(path).parent / pool
        if not Path(pool).is_absolute() and beside.exists():
            pool = str(beside)
    sections = {k: v for k, v in doc.items() if k in SECTIONS}
    return sections, pool, pool_n


def resolve_train_config(
    config_path: str | os.PathLike | None, overrides: dict[str, Any]
) -> tuple[Config, str | None, int | None]:
    """Defaults, then the ``--config`` YAML (see :func:`read_train_yaml`), then ``overrides``.

    ``overrides`` are ``{"section.key": value}`` from the command line (None values are skipped).
    Returns the validated config and the pool (and its ``n``) named in the YAML, or None.
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


def train_from_config(
    cfg: Config,
    home: Home,
    pool: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    report: ReportFn | None = None,
    pool_n: int | None = None,
) -> dict[str, Any]:
    """What ``ratio-search train`` does: load data and pool, run one trial, write its outputs.

    Writes ``config.yaml`` (the resolved config) and ``metrics.json`` (final and per-epoch
    validation metrics, training-set composition, data and pool provenance) into ``out`` (default
    :func:`default_train_out`), only once the trial has succeeded. ``pool_n``: use only the pool's
    first ``pool_n`` images. Returns the summary that
    ``metrics.json`` holds, plus ``out``.
    """
    r = cfg.train.r
    if r > 0 and pool is None:
        raise ConfigError(
            f"train.r = {r} needs synthetic images: pass --pool (a pool key, a pool folder or "
            f"a folder of generated images), or use --r 0"
        )
    if pool_n is not None and pool_n < 1:
        raise ConfigError(f"pool n (--pool-n) must be a positive integer, got {pool_n}")
    out = Path(out) if out is not None else default_train_out(home)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # fail before training
        raise ConfigError(f"output folder already exists and is not empty: {out}")
    data = load_dataset(cfg.data, home)
    pool_images, pool_info = None, None
    if pool is not None:
        pool_images, pool_info = load_pool_images(
            pool, home, data.image_size, data.channels, cfg.data.skip_bad_images, pool_n
        )
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
            "data_key": data.key,
            "skipped_images": int(data.info.get("skipped", 0)),
            "pool": pool_info,
            "history": result["history"],
            **({"seeds": result["seeds"]} if "seeds" in result else {}),
        }
    )

    def write(folder: Path) -> None:
        save_config(cfg, folder / "config.yaml")
        atomic_write_json(folder / "metrics.json", summary)

    save_outputs(out, write)
    return {**summary, "out": str(out)}
