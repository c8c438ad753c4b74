"""One trial: mix synthetic images into the real training set at ratio R, train, validate.

A pure function of its inputs (config, dataset, pool images): no Ray, no MLflow. The search wraps
it in a Ray Tune trainable and the tracking callback records what ``report`` sees, so that the same
trial can also be run by hand (``ratio-search train``, :mod:`.command`) and by the export's
multi-seed confirmation.

The pool images are one array (the dataset's default synthetic class, as before several classes
existed) or a mapping ``{label: images}``, one already filtered pool per class of
``cfg.synthetic_classes`` (``ratio_search.quality.selection.trial_synthetic`` makes it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..config import TrainConfig
from ..errors import PoolError
from ..home import resolve_device
from .mixing import Mixed, mix_classes, synthetic_labels

# (torch and the training loop are imported inside run_trial: bad input then fails fast, without)
ReportFn = Callable[[int, dict[str, Any], dict[str, Any]], None]
PoolImages = np.ndarray | Mapping[int, np.ndarray] | None


def mix_trial(cfg: TrainConfig, data: Any, pool_images: PoolImages, seed: int) -> Mixed:
    """The training set of one trial at ``seed``: ``cfg.r`` / ``cfg.mode`` applied to each class of
    ``cfg.synthetic_classes``, each from its own pool (:func:`.mixing.mix_classes`).

    ``pool_images``: one array (the default synthetic class; with ``synthetic_classes`` default
    this is exactly the single-class mix of before), a mapping ``{label: images}`` (a class that
    needs no image at this R may be missing), or None (R = 0).
    """
    default = int(data.synthetic_label)
    labels = synthetic_labels(
        getattr(cfg, "synthetic_classes", "default"), data.class_names, default
    )
    if isinstance(pool_images, Mapping):
        extra = sorted(set(int(k) for k in pool_images) - set(labels))
        if extra:
            raise PoolError(
                f"pools given for class label(s) {extra}, which train.synthetic_classes = "
                f"{cfg.synthetic_classes!r} does not list"
            )
        pools = {label: pool_images.get(label) for label in labels}
    elif pool_images is not None and labels != [default]:
        raise PoolError(
            f"train.synthetic_classes = {cfg.synthetic_classes!r} needs one pool per class "
            "(a mapping label -> images); one array is the default synthetic class's pool"
        )
    else:
        pools = {label: pool_images if label == default else None for label in labels}
    return mix_classes(
        data.train_x, data.train_y, pools, cfg.r, cfg.mode, int(seed), default_label=default
    )


def run_trial(
    cfg: TrainConfig,
    data: Any,
    pool_images: PoolImages,
    report: ReportFn | None = None,
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Mix ``pool_images`` into ``data``'s synthetic class(es) at ``cfg.r`` / ``cfg.mode``, then train.

    ``pool_images``: see :func:`mix_trial` (one array, or ``{label: images}`` for several
    classes, already filtered by ``cfg.filter_top``).

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

    mixed = mix_trial(cfg, data, pool_images, cfg.seed)
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
    pool_images: PoolImages,
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
    mixed = [mix_trial(cfg, data, pool_images, s) for s in seeds]
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


# ``ratio-search train`` lives in .command; its names stay importable from here.
from .command import (  # noqa: E402
    TRAIN_YAML_EXTRA_KEYS,
    default_train_out,
    load_pool_images,
    read_train_yaml,
    resolve_train_config,
    save_outputs,
    train_from_config,
)

__all__ = [
    "TRAIN_YAML_EXTRA_KEYS",
    "default_train_out",
    "load_pool_images",
    "mix_trial",
    "read_train_yaml",
    "resolve_train_config",
    "run_trial",
    "save_outputs",
    "train_from_config",
    "train_seeds",
]
