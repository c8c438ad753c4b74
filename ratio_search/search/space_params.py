"""The parameters of a search space: which config field each name validates against, the
:class:`Param` of one sampled parameter (its values, snapping, Optuna distribution) and the checks
of ``params:`` and ``fixed:`` entries (each a :class:`ConfigError` naming the key).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..config import GenerateConfig, TrainConfig, _check_value
from ..errors import ConfigError

# name -> (config section, field) that validates its values
PARAMS: dict[str, tuple[str, str]] = {
    "r": ("train", "r"),
    "guidance": ("generate", "guidance"),
    "steps": ("generate", "steps"),
    "scheduler": ("generate", "scheduler"),
    "postprocess": ("generate", "postprocess"),
    "mode": ("train", "mode"),
    "lr": ("train", "lr"),
    "batch_size": ("train", "batch_size"),
    "epochs": ("train", "epochs"),
    "seed": ("train", "seed"),
    "arch": ("train", "arch"),
    "filter_top": ("train", "filter_top"),
    "finetune_steps": ("generate", "finetune_steps"),
    "synthetic_classes": ("train", "synthetic_classes"),
}
# Named values, or values each of which is a model / a set of pools: categorical only.
CATEGORICAL_ONLY = (
    "scheduler", "postprocess", "mode", "arch", "finetune_steps", "synthetic_classes",
)  # fmt: skip
# Discrete (a step or categorical) so that each value hits a cached pool or a measured config.
DISCRETE_ONLY = ("guidance", "filter_top")
# only in `fixed:`
FIXED_ONLY: dict[str, tuple[str, str] | None] = {
    "pool_size": ("generate", "n"),
    "pool_seed": ("generate", "seed"),
    "widths": None,
    "fc": None,
    "val_every": ("train", "val_every"),
}

_SECTION_CLS = {"train": TrainConfig, "generate": GenerateConfig}


def _field(section: str, name: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(_SECTION_CLS[section])}[name]


def _default(name: str) -> Any:
    """The config default of a parameter (e.g. guidance 2.0, scheduler ddim)."""
    section, fname = PARAMS.get(name) or FIXED_ONLY[name]  # type: ignore[misc]
    return getattr(_SECTION_CLS[section](), fname)


@dataclass
class Param:
    """One sampled parameter."""

    name: str
    type: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: list[Any] | None = None
    # r only: the largest R an augment trial gets (augment needs R < 1; see :meth:`cap`)
    augment_high: float | None = None

    @property
    def discrete(self) -> bool:
        return self.type in ("categorical", "int") or self.step is not None

    def values(self) -> list[Any]:
        """Every value this parameter can take (discrete parameters only)."""
        if self.type == "categorical":
            return list(self.choices or [])
        if self.type == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            raise ConfigError(f"params.{self.name}: a continuous float has no finite value list")
        n = int(round((self.high - self.low) / self.step))
        return [_round(self.low + i * self.step, self.step) for i in range(n + 1)]

    def snap(self, value: Any) -> Any:
        """The allowed value nearest to ``value`` (removes float noise such as 0.30000000000000004)."""
        if self.type == "categorical":
            if value in self.choices:
                return value
            nums = [c for c in self.choices if isinstance(c, int | float)]
            if isinstance(value, int | float) and nums:
                return min(nums, key=lambda c: abs(c - value))
            return self.choices[0]
        v = min(max(float(value), float(self.low)), float(self.high))
        if self.type == "int":
            step = int(self.step or 1)
            return int(self.low + round((v - self.low) / step) * step)
        if self.step is not None:
            return _round(self.low + round((v - self.low) / self.step) * self.step, self.step)
        return v

    def cap(self, value: Any) -> Any:
        """``value`` limited to ``augment_high`` (r of an augment trial): the largest allowed
        value <= the bound when ``value`` is above it, else ``value`` unchanged."""
        if self.augment_high is None or float(value) <= self.augment_high:
            return value
        if self.type == "categorical":
            return max(c for c in self.choices or [] if float(c) <= self.augment_high)
        return self.snap(self.augment_high)  # on the grid: validated when the space is read

    def distribution(self):
        """This parameter as an Optuna distribution."""
        import optuna.distributions as od

        if self.type == "categorical":
            return od.CategoricalDistribution(list(self.choices))
        if self.type == "int":
            return od.IntDistribution(
                int(self.low),
                int(self.high),
                log=self.log,
                step=1 if self.log else int(self.step or 1),
            )
        return od.FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type}
        if self.type == "categorical":
            d["choices"] = list(self.choices or [])
        else:
            d.update(low=self.low, high=self.high)
            if self.step is not None:
                d["step"] = self.step
            if self.log:
                d["log"] = True
        if self.augment_high is not None:
            d["augment_high"] = self.augment_high
        return d


def _round(x: float, step: float) -> float:
    """Round ``x`` to the decimals of ``step`` (0.05 -> 2 decimals, 2.5 -> 1, 1 -> 0)."""
    decimals = max(0, -math.floor(math.log10(abs(step)))) + 2 if step else 10
    return float(round(x, decimals))


def _parse_param(name: str, spec: Any, origin: str) -> Param:
    key = f"{origin}: params.{name}"
    if name not in PARAMS:
        raise ConfigError(f"{key}: unknown parameter; allowed: {', '.join(PARAMS)}")
    if not isinstance(spec, dict):
        raise ConfigError(f"{key}: expected a mapping like {{type: float, low: 0, high: 1}}")
    typ = spec.get("type")
    allowed = {
        "float": {"type", "low", "high", "step", "log"},
        "int": {"type", "low", "high", "step", "log"},
        "categorical": {"type", "choices"},
    }
    if name == "r" and typ in ("float", "categorical"):
        allowed[typ] = allowed[typ] | {"augment_high"}
    if typ not in allowed:
        raise ConfigError(f"{key}.type: {typ!r} is not one of: float, int, categorical")
    for k in spec:
        if k not in allowed[typ]:
            raise ConfigError(
                f"{key}: unknown key {k!r} for type {typ}; allowed: {', '.join(sorted(allowed[typ]))}"
            )
    section, fname = PARAMS[name]
    f = _field(section, fname)

    if typ == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{key}.choices: must be a non-empty list (empty range)")
        checked = []
        for c in choices:
            checked.append(_check_in(name, f, c, f"{key}.choices"))
        if len({repr(c) for c in checked}) != len(checked):
            raise ConfigError(f"{key}.choices: duplicate values in {choices}")
        p = Param(name, "categorical", choices=checked)
        return _with_augment_high(p, spec, key)

    if name in CATEGORICAL_ONLY:
        what = "takes named values" if name in ("scheduler", "postprocess", "mode", "arch") else (
            "picks a model or a set of pools per value"
        )  # fmt: skip
        raise ConfigError(f"{key}.type: {name} {what}; use type: categorical")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{key}: type {typ} needs low and high")
    low = _check_in(name, f, spec["low"], f"{key}.low")
    high = _check_in(name, f, spec["high"], f"{key}.high")
    if not isinstance(low, int | float) or not isinstance(high, int | float):
        raise ConfigError(f"{key}: low and high must be numbers")
    if low >= high:
        raise ConfigError(f"{key}: empty range (low {low} >= high {high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{key}.log: expected true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, int | float) or step <= 0:
            raise ConfigError(f"{key}.step: must be a positive number, got {step!r}")
        if log:
            raise ConfigError(f"{key}: use either step or log, not both")
        n = (high - low) / step
        if abs(n - round(n)) > 1e-6:
            raise ConfigError(
                f"{key}.step: high - low ({high - low:g}) is not a multiple of step {step}"
            )
    if log and low <= 0:
        raise ConfigError(f"{key}.low: a log range needs low > 0, got {low}")
    if typ == "int":
        for k, v in (("low", low), ("high", high), ("step", step)):
            if v is not None and (isinstance(v, float) and not float(v).is_integer()):
                raise ConfigError(f"{key}.{k}: type int needs whole numbers, got {v!r}")
        if name in ("r", "lr", "filter_top"):
            raise ConfigError(f"{key}.type: {name} is a float; use type: float or categorical")
        return Param(name, "int", int(low), int(high), int(step) if step else None, log)
    if name in ("steps", "batch_size", "epochs", "seed"):
        raise ConfigError(f"{key}.type: {name} is a whole number; use type: int or categorical")
    p = Param(name, "float", float(low), float(high), float(step) if step else None, log)
    if name in DISCRETE_ONLY and not p.discrete:
        why = "pools of generated images are reused" if name == "guidance" else (
            "equivalent trials are measured once (every value reuses the same pool)"
        )  # fmt: skip
        raise ConfigError(
            f"{key}: {name} must be discrete (give a step, or use categorical) so that {why}"
        )
    return _with_augment_high(p, spec, key)


def _with_augment_high(p: Param, spec: dict[str, Any], key: str) -> Param:
    """``p`` with r's ``augment_high`` checked: a number in [lowest R, 1), on r's grid."""
    if "augment_high" not in spec:
        return p
    ah = spec["augment_high"]
    if isinstance(ah, bool) or not isinstance(ah, int | float) or not math.isfinite(ah):
        raise ConfigError(f"{key}.augment_high: expected a number below 1, got {ah!r}")
    ah = float(ah)
    lowest = float(min(p.choices)) if p.type == "categorical" else float(p.low)  # type: ignore[type-var]
    if not lowest <= ah < 1.0:
        raise ConfigError(
            f"{key}.augment_high: {ah:g} is outside [{lowest:g}, 1): augment adds R / (1 - R) "
            "times the class, so its R must stay below 1 (and it must allow r's lowest value)"
        )
    if p.type == "float" and p.step is not None:
        n = (ah - float(p.low)) / p.step  # type: ignore[arg-type]
        if abs(n - round(n)) > 1e-6:
            raise ConfigError(
                f"{key}.augment_high: {ah:g} is not on r's grid (low {p.low:g}, step {p.step:g})"
            )
        ah = _round(ah, p.step)
    p.augment_high = ah
    return p


def _check_in(name: str, f: dataclasses.Field, value: Any, key: str) -> Any:
    """Validate one value of parameter ``name`` against its config field; name the key on error."""
    try:
        value = _check_value(PARAMS[name][0], f, value)
    except ConfigError as e:
        # "train.r: 1.5 is outside [0.0, 1.0]" -> "space.yaml: params.r.high: 1.5 is outside ..."
        msg = str(e).split(": ", 1)[-1]
        raise ConfigError(f"{key}: {msg}") from None
    return _normalise(name, value, key)


def _normalise(name: str, value: Any, key: str) -> Any:
    """``synthetic_classes`` in one spelling: ``default``, ``all`` or ``A,B`` (names stripped,
    no repeats). The class names are checked against the data when the search starts."""
    if name != "synthetic_classes":
        return value
    names = [v.strip() for v in str(value).split(",")]
    if any(not v for v in names):
        raise ConfigError(f"{key}: {value!r} has an empty class name")
    if len(names) > 1 and {"default", "all"} & set(names):
        raise ConfigError(f"{key}: {value!r}: default and all stand alone, not in a list")
    if len(set(names)) != len(names):
        raise ConfigError(f"{key}: {value!r} names a class twice")
    return ",".join(names)


def _check_fixed(name: str, value: Any, origin: str) -> Any:
    key = f"{origin}: fixed.{name}"
    if name in PARAMS:
        section, fname = PARAMS[name]
    elif name in FIXED_ONLY:
        target = FIXED_ONLY[name]
        if target is None:  # CNN size
            if name == "widths":
                if (
                    not isinstance(value, list)
                    or not value
                    or not all(
                        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
                    )
                ):
                    raise ConfigError(
                        f"{key}: expected a non-empty list of positive integers, got {value!r}"
                    )
                return list(value)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key}: expected a positive integer, got {value!r}")
            return value
        section, fname = target
    else:
        allowed = ", ".join([*PARAMS, *FIXED_ONLY])
        raise ConfigError(f"{key}: unknown parameter; allowed: {allowed}")
    try:
        value = _check_value(section, _field(section, fname), value)
    except ConfigError as e:
        raise ConfigError(f"{key}: {str(e).split(': ', 1)[-1]}") from None
    return _normalise(name, value, key)
