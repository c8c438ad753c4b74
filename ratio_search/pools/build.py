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
from .postprocess import POSTPROCESS, postprocess, reference_for, reference_key
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


def space_labels(space: Any, data: Dataset) -> list[int]:
    """Every label a trial of ``space`` can mix synthetic images into: the union over the values
    ``synthetic_classes`` can take (sampled or fixed; the config default otherwise)."""
    from .classes import synthetic_labels

    try:
        choices = space.choices("synthetic_classes") if hasattr(space, "choices") else []
    except KeyError:  # a space reader that does not know the parameter: the default class
        choices = []
    labels: set[int] = set()
    for spec in choices or ["default"]:
        labels.update(synthetic_labels(spec, data.class_names, data.synthetic_label))
    return sorted(labels)


def _models_by_steps(models: Any) -> dict[int, Any]:
    """``{finetune_steps: model}``; one model (not a mapping) is the final one, ``{0: model}``."""
    if isinstance(models, Mapping):
        return {int(k): v for k, v in models.items()}
    return {0: models}


def _model_at(models: Mapping[int, Any], steps: int) -> Any:
    if int(steps) not in models:
        have = ", ".join(str(s) for s in sorted(models)) or "none"
        raise ConfigError(
            f"generate.finetune_steps = {steps}: no generator checkpoint at that step (have: "
            f"{have}; 0 = the final weights); fine-tune with finetune.save_steps including it"
        )
    return models[int(steps)]


def build_space_pools(
    home: Home,
    models: Mapping[int, GenerativeModel] | GenerativeModel,
    space: Any,
    n: int | None = None,
    data: Dataset | None = None,
    base: GenerateConfig | None = None,
    progress: bool = True,
    on_done: OnDone | None = None,
) -> list[dict[str, Any]]:
    """Build every missing pool a search space can ask for: its pool grid x its synthetic classes.

    ``models``: ``{finetune_steps: model}`` (0 = the fine-tune's final weights; one model alone
    means ``{0: model}``). ``space``: anything with ``pool_grid()`` (a ``SearchSpace``; its
    combinations may set ``finetune_steps``) or a list of dicts; the classes are the union of
    the labels of ``space.choices("synthetic_classes")`` (:func:`space_labels`). Each class's
    pool is generated for that class (matched by name to the model's classes) with its own
    histogram-match reference (the real training images of that class). ``data=None``: the
    model's class 0 alone, without a reference (``postprocess: none`` only).

    Serial, in this process. ``base`` supplies the fields a combination does not set (seed, batch
    size, device, finetune_steps, and scheduler/postprocess when the space fixes them).
    ``on_done(result)`` is called after each pool. Returns one :func:`build_one` result per
    (combination, class), with ``class_index``, ``class_name`` and ``finetune_steps`` added.
    """
    labels = space_labels(space, data) if data is not None else None
    return build_grid(home, models, pool_grid(space), labels, n, data, base, progress, on_done)


def build_grid(
    home: Home,
    models: Mapping[int, GenerativeModel] | GenerativeModel,
    combos: Iterable[Mapping[str, Any]],
    labels: Iterable[int] | None,
    n: int | None,
    data: Dataset | None,
    base: GenerateConfig | None = None,
    progress: bool = True,
    on_done: OnDone | None = None,
) -> list[dict[str, Any]]:
    """:func:`build_space_pools` for explicit ``combos`` and ``labels`` (None: class 0, no data)."""
    base = base or GenerateConfig()
    by_steps = _models_by_steps(models)
    gens = [_gen_from(base, combo) for combo in combos]  # every unknown key before any build
    for gen in gens:
        _model_at(by_steps, gen.finetune_steps)  # every missing checkpoint before any build
    results = []
    for gen in gens:
        model = by_steps[int(gen.finetune_steps)]
        for label in [None] if labels is None else list(labels):
            if label is None or data is None:
                index, reference, name = 0, None, None
            else:
                index = model_class_index(model, data, label)
                reference = reference_for(data, gen.postprocess, label)
                name = data.class_names[label]
            result = build_one(home, model, gen, n, reference, index, progress)
            result.update(class_index=index, finetune_steps=int(gen.finetune_steps))
            if name is not None:
                result["class_name"] = name
            results.append(result)
            if on_done is not None:
                on_done(result)
    return results


# ------------------------------------------------------------------- from a dataset and a model


def model_class_index(model: GenerativeModel, data: Dataset, label: int | None = None) -> int:
    """The index, in ``model.class_names``, of the dataset's class ``label`` (default: the
    synthetic class), matched by name."""
    name = data.class_names[data.synthetic_label if label is None else int(label)]
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
    the classes to generate (``cfg.train.synthetic_classes``, or every class the space's
    ``synthetic_classes`` can list) and each class's histogram-match reference. ``model`` may
    also be ``{finetune_steps: model}``; else the checkpoints the grid asks for
    (``finetune_steps``) are looked up beside the one model. ``n``: images per pool (default: the
    space's ``pool_size``, else ``cfg.generate.n``); the space's ``pool_seed`` likewise.
    Returns one :func:`build_one` result per pool (per class). ``data``: the dataset, instead of loading
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
    if space is not None:
        combos, labels = pool_grid(space), space_labels(space, data)
    else:
        from .classes import synthetic_labels

        combos = [{}]
        labels = synthetic_labels(
            cfg.train.synthetic_classes, data.class_names, data.synthetic_label
        )
    steps = {int(c.get("finetune_steps", gen.finetune_steps)) for c in combos}
    models = _generators(home, model, data, steps)
    return build_grid(home, models, combos, labels, n, data, gen, progress, on_done)


def _generators(
    home: Home, model: Any, data: Dataset, steps: set[int]
) -> dict[int, GenerativeModel]:
    """``{finetune_steps: model}`` for :func:`generate`: ``model`` may already be such a mapping
    (of models or paths); one model (or path, or ``latest``) is the final one, and the
    checkpoints the grid asks for are found beside it (its meta.json, ``checkpoints_of``)."""
    from ..diffusion import load_model

    def load(m: Any, latest_ok: bool = False) -> GenerativeModel:
        if not isinstance(m, str | os.PathLike):
            return m
        return load_model(m, home, data_key=data.key if latest_ok and str(m) == "latest" else None)

    if isinstance(model, Mapping):
        return {int(k): load(v) for k, v in model.items()}
    final = load(model, latest_ok=True)
    models = {0: final}
    wanted = steps - {0}
    if wanted:
        try:
            from ..diffusion import checkpoints_of
        except ImportError:  # no checkpoint support: build_grid names the missing steps
            return models
        for s, path in checkpoints_of(final.path, home).items():
            if int(s) in wanted:
                models[int(s)] = load(path)
    return models
