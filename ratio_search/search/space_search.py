"""The ``search:`` block of a space file: the objective, the sampler and the trial budget
(its keys are described in :mod:`.space`), each value checked with a ConfigError naming the key."""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError

# metric -> the direction that is better
METRICS = {
    "val_accuracy": "max",
    "val_f1": "max",
    "val_precision": "max",
    "val_recall": "max",
    "val_roc_auc": "max",
    "val_loss": "min",
}
SAMPLERS = ("tpe", "random", "grid")
SEARCH_DEFAULTS: dict[str, Any] = {
    "metric": "val_accuracy",
    "mode": None,  # from the metric
    "n_startup_trials": 4,
    "baselines": True,
    "sampler": "tpe",
    "n_trials": None,
    "grace_period": 1,
    "objective": "single",
    "seeds_per_trial": 1,
    "tolerance": 0.01,
    "calibrate": "auto",
}
CALIBRATE = ("auto", "pin", "off")


def _parse_search(raw: Any, origin: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: search must be a mapping")
    out = dict(SEARCH_DEFAULTS)
    for k, v in raw.items():
        key = f"{origin}: search.{k}"
        if k not in SEARCH_DEFAULTS:
            raise ConfigError(
                f"{origin}: unknown key search.{k}; allowed: {', '.join(SEARCH_DEFAULTS)}"
            )
        if k == "metric" and v not in METRICS:
            raise ConfigError(f"{key}: unknown metric {v!r}; allowed: {', '.join(METRICS)}")
        if k == "mode" and v not in ("max", "min"):
            raise ConfigError(f"{key}: {v!r} is not one of: max, min")
        if k == "sampler" and v not in SAMPLERS:
            raise ConfigError(f"{key}: {v!r} is not one of: {', '.join(SAMPLERS)}")
        if k == "objective" and v != "single":
            raise ConfigError(f"{key}: {v!r} is not supported; allowed: single")
        if k == "calibrate" and v not in CALIBRATE:
            raise ConfigError(f"{key}: {v!r} is not one of: {', '.join(CALIBRATE)}")
        if k == "tolerance" and (
            isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf
        ):
            raise ConfigError(f"{key}: expected a number >= 0, got {v!r}")
        if k == "baselines" and not isinstance(v, bool):
            raise ConfigError(f"{key}: expected true or false, got {v!r}")
        if k in ("n_startup_trials", "n_trials", "grace_period", "seeds_per_trial") and (
            v is not None or k == "seeds_per_trial"
        ):
            if (
                isinstance(v, bool)
                or not isinstance(v, int)
                or v < (0 if k == "n_startup_trials" else 1)
            ):
                raise ConfigError(
                    f"{key}: expected a {'non-negative' if k == 'n_startup_trials' else 'positive'} integer, got {v!r}"
                )
        out[k] = v
    if out["mode"] is None:
        out["mode"] = METRICS[out["metric"]]
    return out


def check_metric(metric: str) -> str:
    """Validate a metric name given on the command line."""
    if metric not in METRICS:
        raise ConfigError(f"--metric: unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
    return metric


__all__ = ["CALIBRATE", "METRICS", "SAMPLERS", "SEARCH_DEFAULTS", "check_metric"]
