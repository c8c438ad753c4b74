"""The interval arithmetic of the evidence layer: means with t-intervals, paired differences, and
the usable-synthetic-ratio rule.

Pure numpy/scipy, no torch, no I/O, so that every number the export and the report print can be
checked by hand. The reference study reported single runs; everything here exists so that a claim
like "R = 0.5 beats R = 0" comes with the interval that says whether it is more than noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats as _st

from ..errors import ConfigError


@dataclass(frozen=True)
class Interval:
    """A sample mean with its two-sided ``confidence`` t-interval.

    ``low``/``high``/``half_width`` are NaN when ``n < 2`` (one run says nothing about its spread);
    ``sd`` is the sample standard deviation (``ddof=1``, NaN for ``n < 2``).
    """

    mean: float
    low: float
    high: float
    half_width: float
    sd: float
    n: int
    confidence: float = 0.95

    def as_dict(self) -> dict[str, Any]:
        """Plain floats (YAML/JSON safe); NaN stays NaN."""
        return asdict(self)

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:.4f} (n={self.n})"
        return f"{self.mean:.4f} ± {self.half_width:.4f}"


def _clean(values: Iterable[float], name: str) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    if arr.ndim != 1 or len(arr) == 0:
        raise ConfigError(f"{name}: need at least one value, got {len(arr)}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name}: values must be finite, got {arr.tolist()}")
    return arr


def mean_ci(values: Iterable[float], confidence: float = 0.95, name: str = "values") -> Interval:
    """Mean of ``values`` and its Student-t interval: ``mean ± t_{(1+c)/2, n-1} · sd / sqrt(n)``.

    The t quantile (not 1.96) because confirmation uses a handful of seeds, where the normal
    approximation is visibly too narrow (n = 5: t = 2.776).
    """
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence: {confidence!r} is outside (0, 1)")
    arr = _clean(values, name)
    n = len(arr)
    mean = float(arr.mean())
    if n < 2:
        nan = float("nan")
        return Interval(mean, nan, nan, nan, nan, n, confidence)
    sd = float(arr.std(ddof=1))
    t = float(_st.t.ppf(0.5 + confidence / 2.0, df=n - 1))
    half = t * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, half, sd, n, confidence)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of ``a[i] - b[i]`` with its t-interval (the paired t-test's interval).

    ``a`` and ``b`` must be paired element by element (the same confirmation seed, hence the same
    initial weights and batch order for both arms), which removes the seed-to-seed variance that
    both arms share. The difference is significant at level ``1 - confidence`` exactly when the
    interval excludes 0.
    """
    a_arr, b_arr = _clean(a, "a"), _clean(b, "b")
    if len(a_arr) != len(b_arr):
        raise ConfigError(
            f"paired difference: the two arms have {len(a_arr)} and {len(b_arr)} values; "
            "they must be paired by seed"
        )
    return mean_ci(a_arr - b_arr, confidence, name="a - b")


# --------------------------------------------------------------------------- usable ratio


@dataclass
class RatioPoint:
    """The value the usable-ratio rule assigns to one R (after grouping)."""

    r: float
    value: float  # mean of the chosen group at this R
    n: int  # runs behind ``value``
    confirmed: bool  # True when ``value`` comes from confirmation runs
    group: str | None = None  # the configuration (guidance/steps...) that gave ``value``
    interval: Interval | None = None


@dataclass
class UsableRatio:
    """The answer of :func:`usable_ratio`; ``r`` is the usable synthetic ratio."""

    r: float
    value: float  # the value at ``r``
    confirmed: bool  # the value at ``r`` comes from confirmation runs
    best_r: float
    best_value: float
    best_confirmed: bool
    threshold: float  # best_value - tolerance (mode max) or best_value + tolerance (mode min)
    tolerance: float
    mode: str
    points: list[RatioPoint] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for p, pd in zip(self.points, d["points"], strict=True):
            pd["interval"] = p.interval.as_dict() if p.interval is not None else None
        return d


def usable_ratio(
    table: Iterable[Mapping[str, Any]],
    tolerance: float = 0.01,
    mode: str = "max",
    r_decimals: int = 3,
    confidence: float = 0.95,
) -> UsableRatio:
    """The largest R whose metric stays within ``tolerance`` of the best R (the study's headline).

    ``table`` holds one row per run: ``{"r": float, "value": float, "confirmed": bool,
    "group": str | None}``. ``confirmed`` marks multi-seed confirmation runs; other rows are the
    search's single trials. ``group`` names the generation configuration (e.g. ``"g=2,s=25"``) so
    that runs of one configuration at one R are averaged together.

    The rule, step by step:

    1. R is rounded to ``r_decimals`` so that float noise does not split an R in two.
    2. At each R, if any confirmed row exists, only confirmed rows count there (trials were
       selected for looking good, so mixing them in would bias the mean upwards); otherwise the
       trial rows count and the point is flagged ``confirmed=False``.
    3. At each R, rows are averaged per ``group``; the R's value is the best group's mean (the
       question is how much synthetic data can be used when it is generated the best known way).
    4. ``best`` = the best value over all R (max for ``mode="max"``, min for ``"min"``; ties go to
       the smaller R).
    5. The usable ratio is the largest R whose value is ``>= best - tolerance`` (``mode="max"``) or
       ``<= best + tolerance`` (``mode="min"``). It is at least ``best_r``.

    ``tolerance`` is in the metric's units: one accuracy point is ``0.01``.
    """
    if mode not in ("max", "min"):
        raise ConfigError(f"mode: {mode!r} is not one of: max, min")
    if not (tolerance >= 0.0 and math.isfinite(tolerance)):
        raise ConfigError(f"tolerance: {tolerance!r} must be a finite number >= 0")
    rows = list(table)
    if not rows:
        raise ConfigError("usable ratio: the table of runs is empty")

    # r -> confirmed? -> group -> values
    by_r: dict[float, dict[bool, dict[str | None, list[float]]]] = {}
    for i, row in enumerate(rows):
        try:
            r = round(float(row["r"]), r_decimals)
            v = float(row["value"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"usable ratio: row {i} needs numeric 'r' and 'value', got {row!r}"
            ) from None
        if not math.isfinite(v) or not math.isfinite(r):
            continue  # a failed run (NaN metric) says nothing about its R
        conf = bool(row.get("confirmed", False))
        group = row.get("group")
        by_r.setdefault(r, {}).setdefault(conf, {}).setdefault(group, []).append(v)
    if not by_r:
        raise ConfigError("usable ratio: no run has a finite value")

    sign = 1.0 if mode == "max" else -1.0
    points: list[RatioPoint] = []
    for r in sorted(by_r):
        confirmed = True in by_r[r]
        groups = by_r[r][confirmed]
        best_group, best_vals = max(
            groups.items(), key=lambda kv: (sign * float(np.mean(kv[1])), str(kv[0]))
        )
        points.append(
            RatioPoint(
                r=r,
                value=float(np.mean(best_vals)),
                n=len(best_vals),
                confirmed=confirmed,
                group=best_group,
                interval=mean_ci(best_vals, confidence),
            )
        )

    # max() keeps the first maximal element; points are sorted by R, so ties go to the smaller R.
    best = max(points, key=lambda p: sign * p.value)
    threshold = best.value - sign * tolerance
    # A tiny slack so that a value exactly at the threshold counts despite float rounding.
    eps = 1e-12 * max(1.0, abs(threshold))
    within = [p for p in points if sign * (p.value - threshold) >= -eps]
    usable = max(within, key=lambda p: p.r)
    return UsableRatio(
        r=usable.r,
        value=usable.value,
        confirmed=usable.confirmed,
        best_r=best.r,
        best_value=best.value,
        best_confirmed=best.confirmed,
        threshold=threshold,
        tolerance=float(tolerance),
        mode=mode,
        points=points,
    )
