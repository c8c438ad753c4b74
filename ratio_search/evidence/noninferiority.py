"""The usable synthetic ratio as a non-inferiority test against R = 0.

**Rule.** A candidate R (> 0) is *non-inferior* when the lower end of the 95 % interval of its
paired difference to R = 0 (same seeds, same images; :func:`.paired.paired_bootstrap`) lies above
``-delta``. The usable synthetic ratio is the **largest non-inferior R** (0 when none is: real
images only). Only confirmation runs are candidates: an R backed by fewer than
:data:`MIN_SEEDS` paired seeds (a single search trial, say) is listed as not a candidate and
never named. The answer also says

- ``failed_below``: the candidate R values below the answer that failed (a dip: the answer holds
  at its R, but not at every smaller one);
- ``r_all_below``: the largest R such that it and every candidate below it pass (the
  fixed-sequence reading, which keeps the family-wise error at 5 % without a correction).

Each R is tested at 95 % on its own (no multiplicity correction across R); ``r_all_below`` is the
reading to quote when that matters. Pure arithmetic on the intervals; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError

MIN_SEEDS = 2
RULE = (
    "the largest R whose paired difference to R = 0 (same seeds, same images) has its lower "
    "95 % bound above -delta; confirmation runs only"
)


@dataclass
class NIPoint:
    """One R of the non-inferiority table."""

    r: float
    diff: float
    low: float
    high: float
    n_seeds: int
    label: str | None = None
    candidate: bool = True  # confirmation runs with >= MIN_SEEDS paired seeds
    passes: bool = False


@dataclass
class NonInferiority:
    """The usable synthetic ratio by :func:`usable_ratio_ni`."""

    r: float
    delta: float
    rule: str
    r_all_below: float
    failed_below: list[float]
    label: str | None = None  # the configuration at ``r``
    points: list[NIPoint] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def usable_ratio_ni(
    points: Iterable[Mapping[str, Any]], delta: float = 0.01, r_decimals: int = 3
) -> NonInferiority:
    """The largest non-inferior R among ``points`` (see the module docstring).

    ``points``: one mapping per R > 0 with ``r``, ``diff``, ``low``, ``high`` (the paired
    difference to R = 0 and its 95 % interval), ``n_seeds`` and optionally ``label``. Several
    points at one R (other generation settings) are allowed: the R passes when any of them does.
    """
    if not (delta >= 0.0 and math.isfinite(delta)):
        raise ConfigError(f"delta: {delta!r} must be a finite number >= 0")
    table: list[NIPoint] = []
    for i, p in enumerate(points):
        try:
            r = round(float(p["r"]), r_decimals)
            diff, low, high = float(p["diff"]), float(p["low"]), float(p["high"])
            n = int(p["n_seeds"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"non-inferiority: point {i} needs r, diff, low, high, n_seeds; got {p!r}"
            ) from None
        if r <= 0.0:
            continue  # R = 0 is the reference itself
        cand = n >= MIN_SEEDS and math.isfinite(low)
        passes = cand and low > -delta
        table.append(NIPoint(r, diff, low, high, n, p.get("label"), cand, passes))
    table.sort(key=lambda q: (q.r, not q.passes))
    candidates = [q for q in table if q.candidate]
    passing = [q for q in candidates if q.passes]
    best = max(passing, key=lambda q: (q.r, q.low)) if passing else None
    r = best.r if best else 0.0
    passing_r = {q.r for q in passing}
    failed_below = sorted({q.r for q in candidates if q.r < r and q.r not in passing_r})
    r_all_below = 0.0
    for rr in sorted({q.r for q in candidates}):
        if rr not in passing_r:
            break
        r_all_below = rr
    return NonInferiority(
        r=r,
        delta=float(delta),
        rule=RULE,
        r_all_below=r_all_below,
        failed_below=failed_below,
        label=best.label if best else None,
        points=table,
    )
