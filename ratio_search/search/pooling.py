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
    extra = f" finetune_steps={r['finetune_steps']}" if r.get("finetune_steps") else ""
    extra += f" class={r['class_name']}" if r.get("class_name") else ""
    say(
        f"pool {len(results)}/{total} guidance={r['guidance']:g} steps={r['steps']}{extra}: "
        f"{'generated' if r['generated'] else 'cached'} ({r['seconds']:.1f} s)",
        progress,
    )


def pool_jobs(
    space: Space, data: Any, models: dict[int, tuple[str, dict[str, Any]]], n: int
) -> list[dict[str, Any]]:
    """One job per pool the space can ask for: its grid combination (the checkpoint included) x
    every class that receives synthetic images, as :func:`pools.build.build_space_pools` builds
    them (the model's index of the class, matched by name; that class's histogram-match
    reference); each ``{model_path, gen, index, reference, class_name}``."""
    from ..pools.build import model_class_index
    from ..pools.postprocess import reference_for
    from .trainable import LazyModel

    base = _base_gen(space, n)
    jobs = []
    for combo in space.pool_grid():
        path, meta = models[int(combo.get("finetune_steps", 0))]
        gen = dataclasses.replace(base, **combo)
        for label in class_labels(space, data):
            jobs.append({
                "model_path": path, "gen": gen,
                "index": model_class_index(LazyModel(path, meta), data, label),
                "reference": reference_for(data, gen.postprocess, label),
                "class_name": str(data.class_names[label]),
            })  # fmt: skip
    return jobs


def _base_gen(space: Space, n: int):
    """The GenerateConfig a combination of the grid completes: ``pool_seed``, ``n`` images."""
    from .trainable import generate_config

    return generate_config({"pool_seed": int(space.fixed.get("pool_seed", 0))}, n, "auto")


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
    here (:func:`pools.build.build_space_pools`). ``models``: ``{finetune_steps: (path, meta)}``
    (or one model's path, then its meta)."""
    from .. import pools
    from ..pools.build import build_space_pools
    from .trainable import LazyModel

    if isinstance(models, str | os.PathLike):
        models = {0: (str(models), dict(model_meta or {}))}
    if not space.pool_grid():
        return []
    total = len(space.pool_grid()) * len(class_labels(space, data))
    results: list[dict[str, Any]] = []

    def done(r: dict[str, Any]) -> None:
        results.append(r)
        _pool_done(results, total, progress)
        kill_point("pool")

    t0 = time.time()
    if gpus > 0:
        import ray

        task = ray.remote(num_gpus=1)(pools.build_one)
        pending = {
            task.remote(
                str(home.root), j["model_path"], dataclasses.asdict(j["gen"]), n,
                j["reference"], j["index"], False,
            ): j
            for j in pool_jobs(space, data, models, n)
        }  # fmt: skip
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            j = pending.pop(ready[0])
            done(dict(ray.get(ready[0]), class_index=j["index"], class_name=j["class_name"],
                      finetune_steps=int(j["gen"].finetune_steps)))  # fmt: skip
    else:
        lazy = {s: LazyModel(p, m) for s, (p, m) in models.items()}
        build_space_pools(
            home, lazy, space, n, data, base=_base_gen(space, n), progress=False, on_done=done
        )
    made = sum(1 for r in results if r["generated"])
    say(f"pools ready: {len(results)} ({made} generated) in {time.time() - t0:.1f} s", progress)
    return results


__all__ = ["build_pools", "check_classes", "class_labels", "pool_jobs", "pool_size"]
