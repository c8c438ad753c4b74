"""The interval arithmetic of the evidence layer over seeds: means with t-intervals and paired
differences (per metric, for the tables). The intervals that decide (over seeds *and* images)
are :mod:`.paired`; the usable ratio is :mod:`.noninferiority`.

Pure numpy/scipy, no torch, no I/O, so that every number the export and the report print can be
checked by hand. The reference study reported single runs; everything here exists so that a claim
like "R = 0.5 beats R = 0" comes with the interval that says whether it is more than noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
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
