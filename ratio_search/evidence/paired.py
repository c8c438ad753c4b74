"""Paired differences that cover the test images too, and a stopping rule that stays valid.

Two arms (a configuration and R = 0) trained on the **same seeds** are scored on the **same
images**: ``a[s, i]`` and ``b[s, i]`` are 1 when the model of seed ``s`` classifies image ``i``
correctly. The difference of their accuracies is ``mean(a - b)``. Both the seeds and the images
are samples, so the interval resamples both:

- :func:`paired_bootstrap`: a two-way (seeds x images) paired bootstrap. Each replicate draws
  ``S`` seeds with replacement and, independently, a weight per image (Poisson(1), the Poisson
  form of drawing ``N`` images with replacement), and takes the weighted mean of ``a - b`` over
  the drawn rows and columns (both arms keep the same drawn seeds and images: the pairing
  survives). The interval is the percentile interval of the replicates, widened about the
  estimate by ``sqrt(S / (S - 1))`` (a bootstrap of a mean over ``S`` values has ``(S - 1)/S``
  of its variance). Resampling both factors at once counts the seed x image interaction twice,
  so the interval errs wide (Owen 2007, "the pigeonhole bootstrap"), never narrow.
- :func:`sequential_paired`: adds seeds until the interval excludes 0, or its half-width falls
  below half the tolerance, or the seed budget is spent. Looks happen at a fixed schedule of
  seed counts (:func:`look_schedule`, at most :data:`MAX_LOOKS`), and every look uses the
  Bonferroni-corrected level ``1 - alpha / L`` for ``L`` planned looks, so the chance that *any*
  look's interval misses the true difference is at most ``alpha``: stopping at whichever look
  comes first does not inflate the error rate, and the final interval keeps its coverage.

Vectorised numpy (one matrix product per block of replicates); no torch, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError

# Bootstrap replicates per interval; replicates per block at least _BLOCK, else as many as
# keep a block's image weights within _CELLS numbers (memory).
N_BOOT = 4000
_BLOCK = 500
_CELLS = 4_000_000
# Planned looks at most (a Bonferroni level of 0.05 / 4 = 0.0125 each).
MAX_LOOKS = 4
METHOD = "paired bootstrap over seeds and images (two-way, percentile, 4000 replicates)"
STOPPING = "fixed looks, Bonferroni-corrected level per look"

# Why a sequential confirmation stopped.
EXCLUDES_ZERO = "the interval excludes 0"
PRECISE = "the half-width fell below half the tolerance"
BUDGET = "the seed budget (--max-seeds) was spent"


@dataclass(frozen=True)
class PairedDiff:
    """Both arms' means, their paired difference ``a - b`` and its interval."""

    mean_a: float
    mean_b: float
    diff: float
    low: float
    high: float
    half_width: float  # max distance from diff to an end (the interval may be asymmetric)
    n_seeds: int
    n_images: int
    confidence: float
    method: str = METHOD

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0


def _arms(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_arr.ndim != 2 or a_arr.shape != b_arr.shape:
        raise ConfigError(
            f"paired bootstrap: both arms must be (seeds, images) arrays of one shape, got "
            f"{a_arr.shape} and {b_arr.shape}"
        )
    s, n = a_arr.shape
    if s < 2 or n < 1:
        raise ConfigError(f"paired bootstrap: need >= 2 seeds and >= 1 image, got {s} x {n}")
    if not (np.isfinite(a_arr).all() and np.isfinite(b_arr).all()):
        raise ConfigError("paired bootstrap: per-image scores must be finite")
    return a_arr, b_arr


def bootstrap_replicates(d: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` replicates of the mean of ``d`` over resampled seeds and images, jointly.

    Seeds: multinomial counts ``c`` (``S`` draws with replacement). Images: independent
    Poisson(1) weights ``w`` (the Poisson bootstrap, asymptotically the multinomial one), so
    that only the images where some seed's arms differ need weights drawn: the rest add to the
    total weight alone, drawn at once as a Poisson count. A replicate is
    ``c @ d @ w / (S * sum(w))``: one matrix product per block of replicates.
    """
    s, n = d.shape
    nz = np.flatnonzero(np.any(d != 0.0, axis=0))
    dz = d[:, nz]
    out = np.empty(n_boot)
    block = max(_BLOCK, _CELLS // max(1, len(nz)))
    for start in range(0, n_boot, block):
        m = min(block, n_boot - start)
        c = rng.multinomial(s, np.full(s, 1.0 / s), size=m).astype(np.float64)  # (m, S)
        w = rng.poisson(1.0, size=(m, len(nz))).astype(np.float64)  # (m, images that differ)
        total = w.sum(axis=1) + rng.poisson(float(n - len(nz)), size=m)
        out[start : start + m] = np.einsum("ms,ms->m", c, w @ dz.T) / (s * np.maximum(total, 1.0))
    return out


def paired_bootstrap(
    a: Any, b: Any, confidence: float = 0.95, n_boot: int = N_BOOT, seed: int = 0
) -> PairedDiff:
    """The paired difference ``mean(a) - mean(b)`` of two ``(seeds, images)`` arrays, with its
    two-way bootstrap interval at ``confidence`` (see the module docstring)."""
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence: {confidence!r} is outside (0, 1)")
    a_arr, b_arr = _arms(a, b)
    d = a_arr - b_arr
    s, n = d.shape
    est = float(d.mean())
    reps = bootstrap_replicates(d, n_boot, np.random.default_rng(seed))
    alpha = 1.0 - confidence
    q_lo, q_hi = np.quantile(reps, [alpha / 2.0, 1.0 - alpha / 2.0])
    widen = math.sqrt(s / (s - 1.0))
    low, high = est + widen * (q_lo - est), est + widen * (q_hi - est)
    return PairedDiff(
        mean_a=float(a_arr.mean()),
        mean_b=float(b_arr.mean()),
        diff=est,
        low=float(low),
        high=float(high),
        half_width=float(max(est - low, high - est)),
        n_seeds=s,
        n_images=n,
        confidence=confidence,
    )


def look_schedule(start: int, max_seeds: int, max_looks: int = MAX_LOOKS) -> list[int]:
    """The seed counts at which a sequential confirmation looks: ``start`` ... ``max_seeds``,
    evenly spaced, at most ``max_looks`` of them, fixed before the first look."""
    if start < 2:
        raise ConfigError(f"seeds: {start} must be >= 2 (one seed has no interval)")
    if max_seeds < start:
        raise ConfigError(f"--max-seeds: {max_seeds} is below the {start} confirmation seeds")
    if max_seeds == start or max_looks < 2:
        return [max_seeds]
    step = max(1, math.ceil((max_seeds - start) / (max_looks - 1)))
    looks = list(range(start, max_seeds, step))[: max_looks - 1]
    return [*looks, max_seeds]


def look_confidence(confidence: float, n_looks: int) -> float:
    """The Bonferroni-corrected confidence of each of ``n_looks`` planned looks."""
    return 1.0 - (1.0 - confidence) / max(1, n_looks)


@dataclass
class Sequential:
    """The outcome of :func:`sequential_paired`: the last look's interval and why it stopped."""

    final: PairedDiff
    reason: str
    schedule: list[int]
    look_level: float  # the corrected confidence every look used
    confidence: float  # the family-wise confidence it guarantees
    looks: list[dict[str, Any]] = field(default_factory=list)
    stopping: str = STOPPING

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["final"] = self.final.as_dict()
        return d


def stop_reason(diff: PairedDiff, tolerance: float) -> str | None:
    """Why a look ends the confirmation (None: look again)."""
    if diff.excludes_zero:
        return EXCLUDES_ZERO
    if diff.half_width < tolerance / 2.0:
        return PRECISE
    return None


def sequential_paired(
    draw: Callable[[int], tuple[np.ndarray, np.ndarray]],
    start: int,
    max_seeds: int,
    tolerance: float,
    confidence: float = 0.95,
    n_boot: int = N_BOOT,
    seed: int = 0,
    max_looks: int = MAX_LOOKS,
) -> Sequential:
    """Look at ``draw(n)`` (both arms' ``(n, images)`` arrays for the first ``n`` seeds) at the
    planned seed counts until :func:`stop_reason` says stop or ``max_seeds`` is reached."""
    if not (tolerance > 0.0 and math.isfinite(tolerance)):
        raise ConfigError(f"tolerance: {tolerance!r} must be a finite number > 0")
    schedule = look_schedule(start, max_seeds, max_looks)
    level = look_confidence(confidence, len(schedule))
    looks: list[dict[str, Any]] = []
    for n in schedule:
        a, b = draw(n)
        diff = paired_bootstrap(a, b, level, n_boot, seed)
        reason = stop_reason(diff, tolerance)
        looks.append({"n_seeds": n, "diff": diff.diff, "low": diff.low, "high": diff.high})
        if reason is not None or n == schedule[-1]:
            return Sequential(diff, reason or BUDGET, schedule, level, confidence, looks)
    raise AssertionError("unreachable: the schedule ends at max_seeds")
