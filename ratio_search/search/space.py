"""Search spaces: a YAML file -> Optuna distributions, fixed values and the pools a search needs.

A space file (read with ``yaml.safe_load``) has up to five top-level keys::

    description: "what this space is for"           # optional, free text
    params:                                          # what the search samples
      r: {type: float, low: 0.0, high: 1.0, step: 0.05, augment_high: 0.5}
      mode: {type: categorical, choices: [replace, augment]}
      guidance: {type: float, low: 1.0, high: 12.5, step: 0.5}   # quantised so pools are reused
      steps: {type: categorical, choices: [10, 25, 50]}          # or {type: int, low, high, step, log}
      postprocess: {type: categorical, choices: [none, histogram-match]}
      finetune_steps: {type: categorical, choices: [200, 0]}     # generator checkpoints
      synthetic_classes: {type: categorical, choices: [default, all, [CNV, DME]]}
      filter_top: {type: categorical, choices: [1.0, 0.8, 0.5]}
    fixed: {epochs: 30, batch_size: 64, scheduler: ddim, seed: 0, arch: simple}
    search: {n_startup_trials: 4, metric: val_accuracy, mode: max, baselines: true, objective: single}
    data: {image_size: 32}                           # optional DataConfig overrides

``params`` entries have a ``type``:

- ``float``: ``low``, ``high`` and either ``step`` (a grid; ``high - low`` a multiple of it) or
  ``log: true``; with neither it is continuous.
- ``int``: ``low``, ``high``, optional ``step`` (default 1) or ``log: true``.
- ``categorical``: ``choices``, a non-empty list.

Parameter names (in ``params`` or ``fixed``): ``r``, ``guidance``, ``steps``, ``scheduler``,
``postprocess``, ``mode`` (replace / augment), ``lr``, ``batch_size``, ``epochs``, ``seed``,
``arch`` (the classifier: simple / resnet), ``finetune_steps`` (the generator checkpoint after
that many fine-tune steps, 0 = the final weights; each is a model of its own, with its own pools),
``synthetic_classes`` (which classes receive synthetic images, R applying to each: ``default``
= the dataset's synthetic class, ``all``, or a list of class names, written ``[CNV, DME]`` or
``"CNV,DME"``; one pool per class) and ``filter_top`` (keep that top fraction of each pool by a
judge's confidence, 1.0 = no filter; every value reuses the same pool). ``fixed`` also takes
``pool_size`` (images per pool; the search raises it to what the space needs), ``pool_seed``
and the CNN's size, ``widths`` (list of conv channels) and ``fc`` (hidden units), which tests use
to make trials tiny. Anything neither sampled nor fixed takes the defaults of
:mod:`ratio_search.config`.

Augment and R: ``augment`` adds R / (1 - R) times the class, so it needs R < 1. ``r`` may carry
``augment_high`` (a number in [r's lowest value, 1), on r's grid): an augment trial whose sampled
R is above it gets the largest allowed R at or below it (:meth:`Param.cap`); replace trials keep
the whole range. A space whose augment trials could get R >= 1 (augment possible, r reaching 1,
no ``augment_high``; or a fixed R of 1) is refused when it is read. The cap works with every
sampler: TPE and random see a plateau above the bound (Optuna keeps the value it suggested; Tune's
config, trials.jsonl and MLflow show the R used), the grid's points above it run at the bound
(measured once, as equivalent configurations are), and the baselines are within it.

``search`` keys: ``metric`` (``val_accuracy`` [default], ``val_f1``, ``val_precision``,
``val_recall``, ``val_roc_auc``, ``val_loss``), ``mode`` (``max``/``min``, default from the
metric), ``n_startup_trials`` (random trials before TPE models, default 4), ``baselines``
(queue R=0 and the reference study's R=0.5 at guidance 12.5 first, default true), ``sampler``
(``tpe`` [default], ``random``, or ``grid``: every combination once, all params discrete),
``n_trials`` (the default budget of ``ratio-search run``), ``grace_period`` (ASHA's minimum epochs,
default 1), ``objective`` (``single``, the only one so far), ``seeds_per_trial`` (k: a trial
trains k seeds of its configuration together and reports their mean; default 1), ``tolerance``
(the smallest difference of the metric that matters, in its units; default 0.01 = one accuracy
point) and ``calibrate`` (the R = 0 training-budget check before the trials,
:mod:`.calibrate`: ``auto`` raises ``epochs`` when more training gains more than the tolerance,
``pin`` refuses instead, ``off`` skips it).

At R = 0 no generated image is used, so the pool parameters (guidance, steps, scheduler,
postprocess, finetune_steps), the draw (filter_top, synthetic_classes) and the mode cannot change
a trial: :meth:`Space.trial_config` sets them to one canonical value there (the draw and mode:
their config default when allowed), so that equivalent trials have one config (and the
trainable measures it once).

Rules, each a :class:`ConfigError` naming the key: no unknown keys; ``low < high`` and non-empty
``choices``; R within [0, 1]; values valid for their config field (e.g. ``scheduler`` in ddim,
dpm-solver++, ``filter_top`` in [0.01, 1], ``finetune_steps`` >= 0); ``guidance``, ``steps`` and
``filter_top`` discrete (a ``step`` or ``categorical``) and ``scheduler``, ``postprocess``,
``mode``, ``arch``, ``finetune_steps``, ``synthetic_classes`` categorical, because each
combination of pool parameters is one cached pool of generated images and a continuous value
would never hit the cache. The class names of ``synthetic_classes`` are checked against the data
when the search starts (:func:`.pooling.check_classes`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DataConfig, read_yaml
from ..errors import ConfigError
from .space_params import FIXED_ONLY, PARAMS, Param, _check_fixed, _default, _parse_param
from .space_search import (  # noqa: F401 - METRICS, check_metric: importers' names
    CALIBRATE,
    METRICS,
    SAMPLERS,
    SEARCH_DEFAULTS,
    _parse_search,
    check_metric,
)

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "search_spaces"

# the parameters that pick a pool of generated images (finetune_steps: the generator checkpoint)
POOL_PARAMS = ("guidance", "steps", "scheduler", "postprocess", "finetune_steps")
# parameters that change which synthetic images a trial draws, not the pools: no effect at R = 0
DRAW_PARAMS = ("filter_top", "synthetic_classes")
TOP_KEYS = ("description", "params", "fixed", "search", "data")
# The reference study's operating point (the published diffusion-augmentation study this
# tool reproduces): R = 0.5 at guidance 12.5, 50 sampling steps.
STUDY_R, STUDY_GUIDANCE, STUDY_STEPS = 0.5, 12.5, 50


@dataclass
class Space:
    """A validated search space; see the module docstring for the file format."""

    params: dict[str, Param]
    fixed: dict[str, Any]
    search: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    path: str | None = None

    # ------------------------------------------------------------------ what the search asks for
    @property
    def metric(self) -> str:
        return self.search["metric"]

    @property
    def mode(self) -> str:
        return self.search["mode"]

    def distributions(self) -> dict[str, Any]:
        """``{name: optuna distribution}`` of the sampled parameters."""
        return {name: p.distribution() for name, p in self.params.items()}

    def choices(self, name: str) -> list[Any]:
        """Every value ``name`` can take in this space: sampled, fixed, or the config default."""
        if name in self.params:
            return self.params[name].values()
        if name in self.fixed:
            return [self.fixed[name]]
        return [_default(name)]

    def value(self, name: str, params: dict[str, Any] | None = None) -> Any:
        """The value of ``name`` in a trial with sampled ``params`` (snapped onto the grid)."""
        if params is not None and name in params and name in self.params:
            return self.params[name].snap(params[name])
        if name in self.fixed:
            return self.fixed[name]
        if name in self.params:  # not sampled yet: its first / lowest value
            return (
                self.params[name].values()[0]
                if self.params[name].discrete
                else self.params[name].low
            )
        return _default(name)

    def max_r(self) -> float:
        """The largest R this space can ask for (0 means no pool of generated images is needed)."""
        if "r" in self.params:
            p = self.params["r"]
            return float(max(p.choices) if p.type == "categorical" else p.high)
        return float(self.fixed.get("r", _default("r")))

    def r_values(self, mode: str) -> list[float]:
        """The R values a trial of ``mode`` can get (augment: capped at ``r.augment_high``);
        a continuous r gives its largest value only."""
        p = self.params.get("r")
        if p is None:
            return [float(self.value("r"))]
        rs = p.values() if p.discrete else [self.max_r()]
        if mode == "augment":
            rs = [p.cap(r) for r in rs]
        return sorted({float(r) for r in rs})

    def pool_grid(self) -> list[dict[str, Any]]:
        """Every ``{guidance, steps, scheduler, postprocess, finetune_steps}`` combination a
        trial can ask for (one pool per synthetic class each).

        Empty when R can only be 0 (no trial reads a pool).
        """
        if self.max_r() <= 0:
            return []
        lists = [self.choices(name) for name in POOL_PARAMS]
        return [dict(zip(POOL_PARAMS, combo, strict=True)) for combo in itertools.product(*lists)]

    def trial_config(self, params: dict[str, Any]) -> dict[str, Any]:
        """Fixed values, overridden by ``params`` (sampled ones snapped), + config defaults: the
        complete config of one trial (what the trainable receives)."""
        cfg = dict(self.fixed)
        # values given for non-sampled keys (e.g. a re-run at another seed) override the fixed ones
        cfg.update({k: v for k, v in params.items() if k in PARAMS or k in FIXED_ONLY})
        for name, p in self.params.items():
            if name in params:
                cfg[name] = p.snap(params[name])
        for name in ("r", *POOL_PARAMS, *DRAW_PARAMS, "mode", "arch", *_TRAIN_KEYS):
            cfg.setdefault(name, self.value(name, params))
        if cfg["mode"] == "augment" and "r" in self.params:
            cfg["r"] = self.params["r"].cap(cfg["r"])  # augment never gets R >= 1
        if float(cfg["r"]) == 0.0:
            # No generated image is used: one canonical pool, and the draw (which classes, how
            # filtered) and the mode (replace and augment both train on the real set) change
            # nothing either, so equivalent trials have one config.
            cfg.update({name: self.value(name) for name in POOL_PARAMS})
            cfg.update({name: self._canonical(name) for name in (*DRAW_PARAMS, "mode")})
        return cfg

    def _canonical(self, name: str) -> Any:
        """The config default when this space allows it, else the first allowed value."""
        default = _default(name)
        return default if default in self.choices(name) else self.value(name)

    def sampled_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Sampled ``params`` as the trial runs them: snapped, and r capped for augment (so that
        Tune's config, trials.jsonl and the MLflow params show the R that was used)."""
        out = {k: self.params[k].snap(v) if k in self.params else v for k, v in params.items()}
        if "r" in out and "r" in self.params and self.value("mode", out) == "augment":
            out["r"] = self.params["r"].cap(out["r"])
        return out

    @property
    def seeds_per_trial(self) -> int:
        """k: seeds trained (together) per trial; the trial reports their mean."""
        return int(self.search["seeds_per_trial"])

    @property
    def tolerance(self) -> float:
        """The smallest difference of the metric that matters (``search.tolerance``)."""
        return float(self.search["tolerance"])

    def baselines(self) -> list[dict[str, Any]]:
        """Points queued before the sampler starts (Optuna ``points_to_evaluate``).

        R = 0 (no synthetic data) and the reference study's R = 0.5 at guidance 12.5 (or the
        allowed values nearest to those). Other sampled parameters take the value nearest to their
        config default (steps: nearest to 50, the study's). Empty when ``search.baselines`` is
        false, R is not sampled, or the sampler is ``grid`` (the grid holds every point anyway).
        """
        if (
            not self.search["baselines"]
            or "r" not in self.params
            or self.search["sampler"] == "grid"
        ):
            return []
        base: dict[str, Any] = {}
        for name, p in self.params.items():
            target = {"guidance": STUDY_GUIDANCE, "steps": STUDY_STEPS}.get(name, _default(name))
            base[name] = p.snap(target)
        points = []
        for r in (0.0, STUDY_R):
            pt = dict(base, r=self.params["r"].snap(r))
            if pt not in points:
                points.append(pt)
        return points

    def grid(self) -> dict[str, list[Any]]:
        """``{name: values}`` for the grid sampler (every sampled parameter must be discrete)."""
        for name, p in self.params.items():
            if not p.discrete:
                raise ConfigError(
                    f"params.{name}: the grid sampler needs a step or categorical choices"
                )
        return {name: p.values() for name, p in self.params.items()}

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())

    def default_trials(self) -> int:
        """``search.n_trials``, else the grid size for a grid space, else 20."""
        if self.search.get("n_trials"):
            return int(self.search["n_trials"])
        if self.search["sampler"] == "grid":
            return self.grid_size()
        return 20

    def to_dict(self) -> dict[str, Any]:
        """The space as a plain dict (same format as the file)."""
        d: dict[str, Any] = {
            "params": {n: p.to_dict() for n, p in self.params.items()},
            "fixed": dict(self.fixed),
            "search": dict(self.search),
        }
        if self.data:
            d["data"] = dict(self.data)
        if self.description:
            d["description"] = self.description
        return d

    def data_config(self, base: DataConfig | None = None) -> DataConfig:
        """``base`` (default: defaults) with this space's ``data:`` overrides applied."""
        from ..config import Config, _apply

        cfg = Config()
        if base is not None:
            cfg.data = dataclasses.replace(base)
        if self.data:
            _apply(cfg, {"data": dict(self.data)}, self.path or "space")
        return cfg.data


_TRAIN_KEYS = ("seed", "epochs", "batch_size", "lr")

# ----------------------------------------------------------------------------------- parsing


def bundled_spaces() -> list[str]:
    """Names of the spaces shipped with the package."""
    return sorted(p.name for p in BUNDLED_DIR.glob("*.yaml"))


def resolve_space_path(path_or_name: str | os.PathLike) -> Path:
    """A file path, or the name of a bundled space (``default``, ``quick.yaml``...)."""
    p = Path(path_or_name).expanduser()
    if p.is_file():
        return p
    name = str(path_or_name)
    for cand in (name, f"{name}.yaml"):
        q = BUNDLED_DIR / cand
        if "/" not in name and q.is_file():
            return q
    raise ConfigError(
        f"search space not found: {path_or_name} (not a file, nor a bundled space: "
        f"{', '.join(bundled_spaces())})"
    )


def load_space(path_or_name: str | os.PathLike) -> Space:
    """Read and validate a search space file (or a bundled space by name)."""
    path = resolve_space_path(path_or_name)
    doc = read_yaml(path)
    return parse_space(doc, origin=str(path))


def parse_space(doc: Any, origin: str = "space") -> Space:
    """Validate a space given as a dict (the parsed YAML)."""
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(
            f"{origin}: a search space must be a mapping with keys {', '.join(TOP_KEYS)}"
        )
    for key in doc:
        if key not in TOP_KEYS:
            raise ConfigError(f"{origin}: unknown key {key!r}; allowed: {', '.join(TOP_KEYS)}")

    raw_params = doc.get("params") or {}
    if not isinstance(raw_params, dict):
        raise ConfigError(f"{origin}: params must be a mapping of name -> {{type: ...}}")
    params = {name: _parse_param(name, spec, origin) for name, spec in raw_params.items()}

    raw_fixed = doc.get("fixed") or {}
    if not isinstance(raw_fixed, dict):
        raise ConfigError(f"{origin}: fixed must be a mapping of name -> value")
    fixed: dict[str, Any] = {}
    for name, value in raw_fixed.items():
        if name in params:
            raise ConfigError(f"{origin}: fixed.{name}: {name} is also in params; keep one")
        fixed[name] = _check_fixed(name, value, origin)

    search = _parse_search(doc.get("search") or {}, origin)

    data = doc.get("data") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: data must be a mapping of DataConfig keys")
    space = Space(
        params=params,
        fixed=fixed,
        search=search,
        data=dict(data),
        description=str(doc.get("description") or ""),
        path=origin if origin != "space" else None,
    )
    space.data_config()  # validates the data: block (names the key)
    _check_augment(space, origin)
    if search["sampler"] == "grid":
        space.grid()  # every param discrete
        if not params:
            raise ConfigError(f"{origin}: search.sampler: grid needs at least one entry in params")
    return space


def _check_augment(space: Space, origin: str) -> None:
    """Augment adds R / (1 - R) times the class: a space whose augment trials could get R >= 1
    is refused here, when it is read, rather than failing those trials one by one."""
    if "augment" not in space.choices("mode"):
        return
    p = space.params.get("r")
    if p is None:
        r = float(space.value("r"))
        if r >= 1.0:
            raise ConfigError(
                f"{origin}: fixed.r: {r:g} with mode augment (augment adds R / (1 - R) times the "
                "class); use R < 1 there, or mode replace"
            )
        return
    top = max(space.r_values("augment"))
    if top >= 1.0:
        raise ConfigError(
            f"{origin}: params.r: mode augment cannot take R = {top:g} (augment adds R / (1 - R) "
            "times the class); add augment_high below 1 to params.r (e.g. augment_high: 0.75: "
            "an augment trial gets at most that R), or keep r's high below 1"
        )


__all__ = [
    "METRICS",
    "PARAMS",
    "POOL_PARAMS",
    "Param",
    "Space",
    "bundled_spaces",
    "check_metric",
    "load_space",
    "parse_space",
    "resolve_space_path",
]
