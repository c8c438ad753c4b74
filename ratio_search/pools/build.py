"""Building pools: one for a model and a generation setting, or every pool a search space needs.

Because image ``i`` of a model's sample depends only on ``(seed, i)``, a pool of 400 images starts
with the same 200 images as a pool of 200. A request for fewer images than a pool holds is served
from it, and the caller gets exactly the first ``n``: a trial's result must not depend on which
bigger pool happened to be cached before it ran.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import GenerateConfig
from ..diffusion.base import check_scheduler
from ..errors import ConfigError, PoolError
from ..home import Home, resolve_device
from .postprocess import POSTPROCESS, class_reference, postprocess, reference_key
from .store import Pool, build_pool, new_manifest, pool_key

if TYPE_CHECKING:
    from ..data import Dataset
    from ..diffusion import GenerativeModel

OnDone = Callable[[dict[str, Any]], Any]


def _check_gen(gen: GenerateConfig, n: int) -> None:
    """ConfigError naming the first bad setting, before any model is loaded or called."""
    check_scheduler(gen.scheduler)
    if gen.postprocess not in POSTPROCESS:
        raise ConfigError(
            f"generate.postprocess: {gen.postprocess!r} is not one of: {', '.join(POSTPROCESS)}"
        )
    if not float(gen.guidance) >= 0:
        raise ConfigError(f"generate.guidance: {gen.guidance!r} must be >= 0")
    if int(gen.steps) < 1:
        raise ConfigError(f"generate.steps: {gen.steps!r} must be >= 1")
    if int(n) < 1:
        raise ConfigError(f"generate.n: {n!r} must be >= 1")


def get_pool(
    home: Home,
    model: GenerativeModel,
    gen: GenerateConfig,
    n: int | None = None,
    reference: np.ndarray | None = None,
    synthetic_class_index: int = 0,
    progress: bool = True,
) -> Pool:
    """The pool for ``model`` and ``gen``, with exactly ``n`` images; generated only if missing.

    - ``n``: images wanted (default ``gen.n``). A cached pool with at least n images is a hit
      (no model call); a smaller one is regenerated at size n, and starts with the same bytes.
    - ``reference``: uint8 ``(M, C, H, W)`` real training images of the synthetic class
      (:func:`~ratio_search.pools.class_reference`); required for
      ``gen.postprocess == "histogram-match"`` (and part of the key then).
    - ``synthetic_class_index``: the class generated, an index into ``model.class_names``.

    Safe to call from many processes at once: one builds, the others wait and reuse its result.
    """
    n = int(gen.n if n is None else n)
    _check_gen(gen, n)
    class_names = list(getattr(model, "class_names", []) or [])
    if class_names and not 0 <= synthetic_class_index < len(class_names):
        raise PoolError(
            f"class index {synthetic_class_index} is not a class of model {model.path} "
            f"(classes: {', '.join(class_names)})"
        )
    ref_hash = reference_key(gen.postprocess, reference)
    key = pool_key(
        model.model_hash, gen.guidance, gen.steps, gen.scheduler, model.image_size, gen.seed,
        gen.postprocess, class_index=synthetic_class_index, reference_hash=ref_hash,
    )  # fmt: skip

    def build() -> tuple[np.ndarray, dict[str, Any]]:
        t0 = time.perf_counter()
        images = model.sample(
            n=n,
            class_index=synthetic_class_index,
            guidance=float(gen.guidance),
            steps=int(gen.steps),
            scheduler=gen.scheduler,
            seed=int(gen.seed),
            batch_size=int(gen.batch_size),
            device=resolve_device(gen.device),
            progress=progress,
        )
        images = np.asarray(images)
        want = (n, int(model.channels), int(model.image_size), int(model.image_size))
        if images.dtype != np.uint8 or images.shape != want:
            raise PoolError(
                f"model {model.path} returned {images.dtype} {images.shape}, expected uint8 {want}"
            )
        sample_seconds = time.perf_counter() - t0
        images = postprocess(images, gen.postprocess, reference)
        seconds = time.perf_counter() - t0
        manifest = new_manifest(
            key, "generated", n,
            model_path=str(model.path), model_hash=model.model_hash,
            class_index=int(synthetic_class_index),
            class_name=class_names[synthetic_class_index] if class_names else None,
            guidance=float(gen.guidance), steps=int(gen.steps), scheduler=gen.scheduler,
            image_size=int(model.image_size), channels=int(model.channels), seed=int(gen.seed),
            postprocess=gen.postprocess,
            reference=None if ref_hash is None else {"hash": ref_hash, "n": int(len(reference))},
            batch_size=int(gen.batch_size), device=gen.device, seconds=round(seconds, 3),
            sample_seconds=round(sample_seconds, 3), seconds_per_image=round(seconds / n, 5),
        )  # fmt: skip
        return images, manifest

    return build_pool(home, key, build, n)


# ------------------------------------------------------------ prebuilding a search space's grid


def _gen_from(base: GenerateConfig, combo: Mapping[str, Any]) -> GenerateConfig:
    allowed = {f.name for f in dataclasses.fields(GenerateConfig)}
    unknown = set(combo) - allowed
    if unknown:
        raise ConfigError(
            f"pool grid: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}"
        )
    return dataclasses.replace(base, **dict(combo))


def build_one(
    home: Home | str | os.PathLike,
    model: GenerativeModel | str | os.PathLike,
    gen: GenerateConfig | Mapping[str, Any],
    n: int | None = None,
    reference: np.ndarray | None = None,
    synthetic_class_index: int = 0,
    progress: bool = False,
    data_key: str | None = None,
) -> dict[str, Any]:
    """Build (or find) one pool; made to be the body of a Ray task.

    Takes and returns plain, picklable values: ``home`` and ``model`` may be paths (the model is
    then loaded in the worker, on its GPU), ``gen`` a dict of GenerateConfig fields. Returns
    ``{"key", "path", "n", "generated", "seconds", "guidance", "steps", "scheduler",
    "postprocess"}``, not the images.
    """
    if not isinstance(home, Home):
        home = Home.resolve(home)
    if isinstance(model, str | os.PathLike):
        from ..diffusion import load_model

        model = load_model(model, home, data_key=data_key)
    if not isinstance(gen, GenerateConfig):
        gen = _gen_from(GenerateConfig(), gen)
    t0 = time.perf_counter()
    pool = get_pool(home, model, gen, n, reference, synthetic_class_index, progress)
    return {
        "key": pool.key,
        "path": str(pool.path),
        "n": pool.n,
        "generated": pool.generated,
        "seconds": round(time.perf_counter() - t0, 3),
        "guidance": float(gen.guidance),
        "steps": int(gen.steps),
        "scheduler": gen.scheduler,
        "postprocess": gen.postprocess,
    }


def pool_grid(space: Any) -> list[dict[str, Any]]:
    """The discrete generation settings a search space can ask for, as a list of dicts.

    ``space`` is anything with a ``pool_grid()`` method (a ``SearchSpace``) or already an
    iterable of dicts with keys among guidance, steps, scheduler, postprocess (and seed).
    Duplicates are dropped; order is kept.
    """
    combos = space.pool_grid() if hasattr(space, "pool_grid") else space
    if not isinstance(combos, Iterable):
        raise ConfigError(
            f"pool grid: expected a search space or a list of dicts, got {type(space).__name__}"
        )
    out, seen = [], set()
    for c in combos:
        if not isinstance(c, Mapping):
            raise ConfigError(f"pool grid: expected a dict per combination, got {c!r}")
        sig = json.dumps(dict(c), sort_keys=True, default=str)
        if sig not in seen:
            seen.add(sig)
            out.append(dict(c))
    return out


def build_space_pools(
    home: Home,
    model: GenerativeModel,
    space: Any,
    n: int | None = None,
    reference: np.ndarray | None = None,
    synthetic_class_index: int = 0,
    base: GenerateConfig | None = None,
    progress: bool = True,
    on_done: OnDone | None = None,
) -> list[dict[str, Any]]:
    """Build every missing pool of a search space's (guidance, steps, scheduler, postprocess) grid.

    Serial, in this process. ``base`` supplies the fields a combination does not set (seed, batch
    size, device, and scheduler/postprocess when the space fixes them). ``on_done(result)`` is
    called after each pool. Returns one :func:`build_one` result per combination.
    """
    base = base or GenerateConfig()
    results = []
    for combo in pool_grid(space):
        gen = _gen_from(base, combo)
        result = build_one(home, model, gen, n, reference, synthetic_class_index, progress)
        results.append(result)
        if on_done is not None:
            on_done(result)
    return results


# ------------------------------------------------------------------- from a dataset and a model


def model_class_index(model: GenerativeModel, data: Dataset) -> int:
    """The index, in ``model.class_names``, of the dataset's synthetic class (matched by name)."""
    name = data.class_names[data.synthetic_label]
    names = list(model.class_names)
    if name not in names:
        raise PoolError(
            f"model {model.path} was not trained on class {name!r} (its classes: {', '.join(names)})"
        )
    return names.index(name)


def generate(
    home: Home,
    cfg: Any,
    model: str | os.PathLike | GenerativeModel = "latest",
    space: Any = None,
    n: int | None = None,
    progress: bool = True,
    on_done: OnDone | None = None,
    data: Dataset | None = None,
) -> list[dict[str, Any]]:
    """What ``ratio-search generate`` does: the pool of ``cfg.generate``, or a space's whole grid.

    ``cfg`` is a :class:`~ratio_search.config.Config`. The dataset (``cfg.data``, with the space's
    ``data:`` overrides) picks the model when ``model == "latest"`` (the newest fine-tuned on it),
    the class to generate and the histogram-match reference. ``n``: images per pool (default: the
    space's ``pool_size``, else ``cfg.generate.n``); the space's ``pool_seed`` likewise.
    Returns one :func:`build_one` result per pool. ``data``: the dataset, instead of loading
    ``cfg.data`` (``generate`` without ``--data``: the newest model's own data).
    """
    from ..data import load_dataset

    gen = dataclasses.replace(cfg.generate)
    data_cfg = cfg.data
    if space is not None:
        data_cfg = space.data_config(cfg.data) if hasattr(space, "data_config") else data_cfg
        fixed = getattr(space, "fixed", {}) or {}
        if n is None and fixed.get("pool_size") is not None:
            n = int(fixed["pool_size"])
        if fixed.get("pool_seed") is not None:
            gen.seed = int(fixed["pool_seed"])
    n = int(gen.n if n is None else n)
    data = data if data is not None else load_dataset(data_cfg, home)
    if not isinstance(model, str | os.PathLike):
        loaded = model
    else:
        from ..diffusion import load_model

        loaded = load_model(model, home, data_key=data.key if str(model) == "latest" else None)
    index = model_class_index(loaded, data)
    reference = class_reference(data)
    if space is None:
        return [build_one(home, loaded, gen, n, reference, index, progress)]
    return build_space_pools(home, loaded, space, n, reference, index, gen, progress, on_done)
