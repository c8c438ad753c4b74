"""Confidence filtering: a judge's score for every pool image, and the synthetic images of a trial.

The reference study picked "well" and "poorly" generated images by eye. Here a *judge* scores
each generated image: the probability of its intended class under the real-trained classifier
(:func:`.measure.real_classifier`, trained
on the data's real **training** split only, never on val or test, so that filtering cannot leak
the evaluation images into training). ``train.filter_top`` keeps that top fraction of a pool,
highest score first (``ratio_search.train.mixing.top_fraction``; ``ceil(f * n)`` images), so a
change of ``filter_top`` never regenerates the pool: only the index set changes.

A pool's scores are cached in its folder as ``scores-<judge key>-c<label>.npy`` (one float per
image of the whole folder; written atomically under the pool's lock, :func:`pools.store
.save_pool_file`), where the judge key is a hash of the judge's weights: another judge (another
dataset, a retrained extractor) never reads this one's scores. The judge scores on the CPU, so
that the first computation and every later one give the same numbers.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, PoolError
from .features import FeatureExtractor
from .measure import real_classifier

if TYPE_CHECKING:
    from ..config import TrialConfig
    from ..data import Dataset
    from ..diffusion import GenerativeModel
    from ..home import Home
    from ..pools import Pool

#: The judge's seed: the one extractor the quality layer and the report train (their default).
JUDGE_SEED = 0


def judge(home: Home, data: Dataset, **judge_kwargs: Any) -> FeatureExtractor:
    """The real-trained classifier that scores generated images (trained once per dataset, cached
    under ``<home>/cache/quality``); on the CPU. ``judge_kwargs`` go to its training (tests)."""
    fe = real_classifier(Path(home.cache) / "quality", data, seed=JUDGE_SEED, **judge_kwargs)
    fe.model.to("cpu")
    fe.device = "cpu"
    return fe


def judge_key(fe: FeatureExtractor) -> str:
    """``<data key>-<12 hex>``: a hash of the judge's weights (names, shapes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(fe.model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().tobytes())
    return f"{fe.info.get('data_key', 'user')}-{h.hexdigest()[:12]}"


def image_scores(fe: FeatureExtractor, images: np.ndarray, label: int) -> np.ndarray:
    """The judge's probability of class ``label`` for each uint8 image (float64, uncached)."""
    if len(images) == 0:
        return np.zeros(0, dtype=np.float64)
    n_classes = int(fe.info.get("n_classes", 0) or 0)
    if n_classes and not 0 <= int(label) < n_classes:
        raise ConfigError(f"label {label} is not a class of the judge ({n_classes} classes)")
    return np.asarray(fe.predict_proba(np.asarray(images))[:, int(label)], dtype=np.float64)


def scores_name(key: str, label: int) -> str:
    """The file name of a pool's cached scores for one judge and one class."""
    return f"scores-{key}-c{int(label)}.npy"


def _read_scores(path: Path, n: int) -> np.ndarray | None:
    try:
        scores = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if scores.dtype != np.float64 or scores.shape != (n,):
        return None  # another pool's size or a foreign file: recompute
    return scores


def _save_scores(home: Home, folder: Path, name: str, scores: np.ndarray) -> None:
    from .._io import atomic_write_bytes
    from ..pools.store import read_complete, save_pool_file

    buf = io.BytesIO()
    np.save(buf, scores, allow_pickle=False)
    if folder.parent.resolve() == Path(home.pools).resolve():
        save_pool_file(home, folder.name, name, buf.getvalue())
    elif read_complete(folder) is not None:  # a pool folder outside the store: no store lock
        try:
            atomic_write_bytes(folder / name, buf.getvalue())
        except OSError:
            pass  # a cache only: the scores are returned either way


def pool_scores(
    home: Home,
    pool: Pool | str | os.PathLike,
    data: Dataset,
    label: int,
    **judge_kwargs: Any,
) -> np.ndarray:
    """One float per image of ``pool``: the judge's probability of class ``label``.

    ``pool``: a :class:`~ratio_search.pools.Pool` (its first ``pool.n`` images are scored), or a
    pool key / folder (all its images). The judge is trained on ``data``'s real training split
    only (:func:`judge`). The whole folder's scores are cached beside its images and read back
    on the next call; computing them again gives the same numbers.
    """
    from ..pools import load_pool
    from ..pools.store import read_complete

    if isinstance(pool, str | os.PathLike):
        pool = load_pool(home, pool)
    full = read_complete(Path(pool.path))
    if full is None:
        raise PoolError(f"pool {pool.key} at {pool.path} is incomplete")
    fe = judge(home, data, **judge_kwargs)
    path = Path(pool.path) / scores_name(judge_key(fe), label)
    scores = _read_scores(path, full.n)
    if scores is None:
        scores = image_scores(fe, full.images, label)
        _save_scores(home, Path(pool.path), path.name, scores)
    return scores[: pool.n]


Scorer = Callable[[dict[str, Any], np.ndarray, Any, int], np.ndarray]


def train_scorer(home: Home, **judge_kwargs: Any) -> Scorer:
    """The ``scorer`` of ``ratio_search.train.command.train_from_config``: a pool's cached scores
    (:func:`pool_scores`, its first ``len(images)``), or the judge's scores of a folder of images
    from another generator (nothing to cache them in)."""

    def score(info: dict[str, Any], images: np.ndarray, data: Any, label: int) -> np.ndarray:
        if info.get("kind") == "pool":
            return pool_scores(home, info["path"], data, label, **judge_kwargs)[: len(images)]
        return image_scores(judge(home, data, **judge_kwargs), images, label)

    return score


def trial_synthetic(
    home: Home,
    models: Mapping[int, GenerativeModel],
    data: Dataset,
    trial: TrialConfig,
    n: int,
    progress: bool = False,
    **judge_kwargs: Any,
) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """The synthetic images of one trial: ``{label: images}`` for ``run_trial``, and where from.

    For each class of ``trial.train.synthetic_classes`` that needs images at its R and mode: the
    pool of ``models[trial.generate.finetune_steps]`` for that class (``n`` images, the class's
    own histogram-match reference), kept to its top ``trial.train.filter_top`` fraction by the
    judge's scores, in score order (the whole pool, in its own order, at 1.0). No pool is read
    for a class that needs none (R = 0). ``info``: ``{"pool_keys": {class name: key},
    "pool_key": the keys comma-joined in label order, "pool_n": n, "kept": {class name: images
    kept}, "judge": judge key or None}``.
    """
    from ..pools import get_pool, model_class_index, reference_for
    from ..train.mixing import synthetic_labels, synthetic_needed, top_fraction

    tcfg, gen = trial.train, trial.generate
    labels = synthetic_labels(tcfg.synthetic_classes, data.class_names, data.synthetic_label)
    filter_top = float(tcfg.filter_top)
    train_y = np.asarray(data.train_y)
    images: dict[int, np.ndarray] = {}
    keys: dict[str, str] = {}
    kept: dict[str, int] = {}
    judged: str | None = None
    for label in labels:
        if synthetic_needed(int((train_y == label).sum()), tcfg.r, tcfg.mode) == 0:
            continue
        steps = int(gen.finetune_steps)
        if steps not in models:
            have = ", ".join(str(s) for s in sorted(models)) or "none"
            raise ConfigError(
                f"finetune_steps = {steps}: no generator checkpoint at that step (have: {have})"
            )
        model = models[steps]
        pool = get_pool(
            home, model, gen, n, reference_for(data, gen.postprocess, label),
            model_class_index(model, data, label), progress,
        )  # fmt: skip
        chosen = pool.images
        if filter_top < 1.0:
            scores = pool_scores(home, pool, data, label, **judge_kwargs)
            chosen = np.asarray(pool.images)[top_fraction(scores, filter_top)]
            judged = judge_key(judge(home, data, **judge_kwargs))
        name = data.class_names[label]
        images[label], keys[name], kept[name] = chosen, pool.key, int(len(chosen))
    info = {
        "pool_keys": keys,
        "pool_key": ",".join(keys.values()),
        "pool_n": int(n) if keys else None,
        "kept": kept,
        "judge": judged,
    }
    return images, info
