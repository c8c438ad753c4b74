"""The pools a search needs: which classes get synthetic images, how many images a pool holds
(:func:`pool_size`), and every pool built before the trials (:func:`build_pools`).

A pool is one (guidance, steps, scheduler, postprocess, finetune_steps) combination of the
space's grid for one class; ``filter_top`` and ``synthetic_classes`` only choose among them, so
changing them never generates anything.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..home import Home
from .procs import kill_point
from .progress import say
from .space import Space


def class_labels(space: Space, data: Any, spec: str | None = None) -> list[int]:
    """The labels that receive synthetic images: of ``spec`` (a ``synthetic_classes`` value), or
    the union over every value the space allows (sorted). ConfigError naming an unknown class."""
    from ..train.mixing import synthetic_labels

    specs = [spec] if spec is not None else space.choices("synthetic_classes")
    out: set[int] = set()
    for sp in specs:
        try:
            out.update(synthetic_labels(sp, list(data.class_names), int(data.synthetic_label)))
        except ConfigError as e:
            raise ConfigError(
                f"{space.path or 'search space'}: synthetic_classes {sp!r}: {e} "
                f"(the data's classes: {', '.join(map(str, data.class_names))})"
            ) from None
    return sorted(out)


def check_classes(space: Space, data: Any) -> None:
    """Every ``synthetic_classes`` value of the space names classes the data has (before any
    trial: a typo fails the search at once, not one trial at a time)."""
    class_labels(space, data)


def pool_size(space: Space, data: Any) -> int:
    """Images per pool: enough for the largest need of any trial the space allows (``fixed.pool_size``
    if larger): over modes, R values (augment's capped), filter_top values (the kept top fraction
    must still hold the trial's images) and every listed class (their sizes differ: the max).

    Every trial uses the same n, so a trial's images never depend on which pool was cached first.
    """
    from ..train.mixing import pool_needed

    y = np.asarray(data.train_y)
    need = 0
    for label in class_labels(space, data):
        n_class = int((y == label).sum())
        for mode in space.choices("mode"):
            for r in space.r_values(mode):
                if r <= 0:
                    continue
                for top in space.choices("filter_top"):
                    need = max(need, pool_needed(n_class, float(r), mode, float(top)))
    return max(int(space.fixed.get("pool_size", 0)), need, 1)


def _pool_done(results: list[dict[str, Any]], total: int, progress: bool) -> None:
    r = results[-1]
    extra = "".join(
        f" {k}={r[k]}" for k in ("finetune_steps", "class_name") if r.get(k) not in (None, 0)
    )
    say(
        f"pool {len(results)}/{total} guidance={r['guidance']:g} steps={r['steps']}{extra}: "
        f"{'generated' if r['generated'] else 'cached'} ({r['seconds']:.1f} s)",
        progress,
    )


def _reference(data: Any, postprocess: str, label: int) -> np.ndarray | None:
    """The histogram-match reference of class ``label``: its real training images (never val or
    test), as :func:`pools.postprocess.reference_for` gives for the default class."""
    from ..pools.postprocess import reference_for

    if postprocess != "histogram-match" or label == int(data.synthetic_label):
        return reference_for(data, postprocess)
    return np.asarray(data.train_x[np.asarray(data.train_y) == label])


def pool_jobs(
    space: Space, data: Any, models: dict[int, tuple[str, dict[str, Any]]], n: int
) -> list[dict[str, Any]]:
    """One job per pool the space can ask for: its grid combination (the checkpoint included) x
    every class that receives synthetic images; each ``{model_path, model_meta, gen, label}``."""
    from .trainable import generate_config

    seed = int(space.fixed.get("pool_seed", 0))
    jobs = []
    for combo in space.pool_grid():
        path, meta = models[int(combo.get("finetune_steps", 0))]
        gen = generate_config(dict(combo, pool_seed=seed), n, "auto")
        for label in class_labels(space, data):
            jobs.append({"model_path": path, "model_meta": meta, "gen": gen, "label": label})
    return jobs


def build_pools(
    home: Home,
    space: Space,
    data: Any,
    models: dict[int, tuple[str, dict[str, Any]]] | str,
    model_meta: dict[str, Any] | None = None,
    n: int = 0,
    gpus: int = 0,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Every pool of the space (grid x classes), before the trials: one Ray task per GPU when
    there are GPUs (``@ray.remote(num_gpus=1)`` around :func:`pools.build_one`), else serially
    here. ``models``: ``{finetune_steps: (path, meta)}`` (or one model's path, then its meta)."""
    from .. import pools
    from .trainable import LazyModel

    if isinstance(models, str | os.PathLike):
        models = {0: (str(models), dict(model_meta or {}))}
    if not space.pool_grid():
        return []
    jobs = pool_jobs(space, data, models, n)
    names = list(data.class_names)
    results: list[dict[str, Any]] = []

    def done(job: dict[str, Any], r: dict[str, Any]) -> None:
        r = dict(r, finetune_steps=int(job["gen"].finetune_steps), label=int(job["label"]))
        r["class_name"] = str(names[job["label"]]) if len(jobs) > len(space.pool_grid()) else None
        results.append(r)
        _pool_done(results, len(jobs), progress)
        kill_point("pool")

    t0 = time.time()
    if gpus > 0:
        import ray

        task = ray.remote(num_gpus=1)(pools.build_one)
        pending = {
            task.remote(
                str(home.root), j["model_path"], dataclasses.asdict(j["gen"]), n,
                _reference(data, j["gen"].postprocess, j["label"]), j["label"], False,
            ): j
            for j in jobs
        }  # fmt: skip
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            done(pending.pop(ready[0]), ray.get(ready[0]))
    else:
        loaded: dict[str, LazyModel] = {}
        for j in jobs:
            model = loaded.setdefault(j["model_path"], LazyModel(j["model_path"], j["model_meta"]))
            ref = _reference(data, j["gen"].postprocess, j["label"])
            done(j, pools.build_one(home, model, j["gen"], n, ref, j["label"], progress=False))
    made = sum(1 for r in results if r["generated"])
    say(f"pools ready: {len(results)} ({made} generated) in {time.time() - t0:.1f} s", progress)
    return results


__all__ = ["build_pools", "check_classes", "class_labels", "pool_jobs", "pool_size"]
