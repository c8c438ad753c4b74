"""A fair baseline: before the trials, check that the classifier's budget does not handicap R = 0.

The rule (docs/evidence.md, "Calibration and seeds per trial"): the space's R = 0 configuration
is trained at ``m = max(3, k)`` seeds (``seed .. seed + m - 1``, k = ``search.seeds_per_trial``)
for ``2E`` epochs, ``E`` the space's ``epochs``; since a run of ``2E`` epochs passes through the
exact state of a run of ``E`` (same seed, same batches, no schedule), its epoch-``E`` and
epoch-``2E`` values are a paired comparison of the two budgets on the same seeds. The gain is
the mean over seeds of (metric at 2E - metric at E), in the metric's better direction.

- gain <= ``search.tolerance``: the budget is kept.
- gain > tolerance and ``search.calibrate: auto`` (default): the search uses ``2E`` and checks
  ``2E`` against ``4E`` the same way (continuing the same runs), up to ``MAX_DOUBLINGS``.
- gain > tolerance and ``search.calibrate: pin``: a :class:`ConfigError` naming the gain.
- ``search.calibrate: off``, or ``epochs`` sampled by the space: no calibration.

The record (``run.json``'s ``calibration``) also holds the seed-to-seed sd of R = 0 at the chosen
budget and the seeds per trial it implies (``k_suggested``: the smallest k with sd / sqrt(k) at
most the tolerance).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..config import TrialConfig
from ..errors import ConfigError
from .progress import say
from .space import Space

MAX_DOUBLINGS = 2
MIN_SEEDS = 3
# (train config, seeds, epoch) -> the metric of each seed after that many epochs; calls come
# with increasing epochs and may continue the same runs.
MeasureFn = Callable[[Any, Sequence[int], int], list[float]]


def _history_key(metric: str) -> str:
    """The trainer's name of a search metric (``val_accuracy`` -> ``accuracy``)."""
    return "val_loss" if metric == "val_loss" else metric.removeprefix("val_")


class _R0Runs:
    """The calibration's R = 0 runs, trained together and continued from epoch to epoch."""

    def __init__(self, data: Any, metric: str) -> None:
        self.data, self.key = data, _history_key(metric)
        self.state: dict[str, Any] | None = None
        # validated epoch -> the metric per seed (every epoch asked for is validated: it is the
        # last of its call, train.loop.validates)
        self.history: dict[int, list[float]] = {}

    def __call__(self, cfg: Any, seeds: Sequence[int], epochs: int) -> list[float]:
        from ..train.trial import train_seeds

        if epochs not in self.history:

            def keep(epoch: int, metrics: dict[str, Any], state: dict[str, Any]) -> None:
                per_seed = metrics.get("per_seed") or [metrics]
                self.history[int(epoch)] = [float(m[self.key]) for m in per_seed]
                self.state = state

            run = dataclasses.replace(cfg, epochs=int(epochs), r=0.0)
            train_seeds(run, self.data, None, list(seeds), report=keep, state=self.state)
        return list(self.history[epochs])


def _paired(a: list[float], b: list[float], sign: float) -> dict[str, Any]:
    d = sign * (np.asarray(b) - np.asarray(a))
    n = len(d)
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    from scipy import stats

    half = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)) if n > 1 else float("nan")
    return {
        "mean_from": float(np.mean(a)),
        "mean_to": float(np.mean(b)),
        "gain": float(d.mean()),
        "gain_sd": sd,
        "gain_ci95": [float(d.mean() - half), float(d.mean() + half)],
    }


def calibrate(
    space: Space,
    data: Any,
    *,
    measure: MeasureFn | None = None,
    progress: bool = False,
) -> tuple[Space, dict[str, Any]]:
    """Check the R = 0 budget (module docstring); returns the space to search and the record.

    ``measure`` replaces the training (tests); by default the R = 0 runs train on ``data``.
    """
    search = space.search
    policy = search.get("calibrate", "auto")
    tol, k = float(search.get("tolerance", 0.01)), int(search.get("seeds_per_trial", 1))
    metric, sign = space.metric, (1.0 if space.mode == "max" else -1.0)
    rec: dict[str, Any] = {"policy": policy, "metric": metric, "tolerance": tol}
    if policy == "off" or "epochs" in space.params:
        why = "search.calibrate: off" if policy == "off" else "epochs is searched"
        rec.update(decision="skipped", reason=why, line=f"budget not calibrated ({why})")
        return space, rec

    t0 = time.time()
    cfg = TrialConfig.from_flat(space.trial_config({"r": 0.0})).train
    seeds = [int(cfg.seed) + i for i in range(max(MIN_SEEDS, k))]
    measure = measure or _R0Runs(data, metric)
    e0 = epochs = int(cfg.epochs)
    say(f"calibrating the R = 0 budget: {e0} vs {2 * e0} epochs, {len(seeds)} seeds", progress)
    now = measure(cfg, seeds, epochs)
    steps: list[dict[str, Any]] = []
    decision = "kept"
    for _ in range(MAX_DOUBLINGS):
        nxt = measure(cfg, seeds, 2 * epochs)
        step = {"from": epochs, "to": 2 * epochs, **_paired(now, nxt, sign)}
        steps.append(step)
        if step["gain"] <= tol:
            break
        if policy == "pin":
            raise ConfigError(
                f"search.calibrate: pin, but R = 0 gains {step['gain']:+.3f} {metric} at "
                f"{2 * epochs} epochs over the space's {epochs} (mean over seeds {seeds}, "
                f"tolerance {tol:g}): raise fixed.epochs to {2 * epochs} or set "
                "search.calibrate: auto"
            )
        epochs, now, decision = 2 * epochs, nxt, "raised"
    else:
        decision = "raised, still gaining at the cap"
    sd = float(np.std(now, ddof=1)) if len(now) > 1 else 0.0
    k_suggested = max(1, math.ceil((sd / tol) ** 2)) if tol > 0 else None
    last = steps[-1]
    gain_txt = f"{last['gain']:+.3f} [{last['gain_ci95'][0]:+.3f}, {last['gain_ci95'][1]:+.3f}]"
    if decision == "kept":
        line = f"budget {e0} epochs kept: R = 0 gains {gain_txt} {metric} at {2 * e0}"
    else:
        line = f"budget raised {e0} -> {epochs} epochs: R = 0 gained more than {tol:g} {metric}"
        line += f" (last step {last['from']} -> {last['to']}: {gain_txt})"
    line += f"; {len(seeds)} seeds, R = 0 sd {sd:.3f}, k = {k} seeds per trial"
    rec.update(
        decision=decision,
        epochs_space=e0,
        epochs=epochs,
        seeds=seeds,
        steps=steps,
        r0_mean=float(np.mean(now)),
        r0_sd=sd,
        seeds_per_trial=k,
        se_per_trial=sd / math.sqrt(k),
        k_suggested=k_suggested,
        seconds=round(time.time() - t0, 2),
        line=line,
    )
    say(f"calibration: {line}", progress)
    if epochs != e0:
        space = dataclasses.replace(space, fixed={**space.fixed, "epochs": epochs})
    return space, rec


def calibrate_run(folder: Any, info: Any, space: Space, data: Any, progress: bool) -> None:
    """The driver's set-up step: :func:`calibrate` once per run, recorded in run.json.

    ``info`` (the :class:`RunInfo`) gets ``calibration`` (in ``extra``: the record, with its
    one-line ``line`` for ``status``, ``export`` and the report); ``space.fixed["epochs"]`` (and
    ``info.space``, and ``space.yaml`` when the run folder has one) take the calibrated budget. A
    resumed run with a record applies the recorded budget without training again.
    """
    from pathlib import Path

    import yaml

    from .._io import atomic_write_text

    rec = info.extra.get("calibration")
    if rec is None:
        _, rec = calibrate(space, data, progress=progress)
        info.extra["calibration"] = rec
    if rec.get("epochs") and rec["epochs"] != space.value("epochs"):
        space.fixed["epochs"] = int(rec["epochs"])
        info.space = space.to_dict()
        path = Path(folder) / "space.yaml"
        if path.is_file():
            atomic_write_text(path, yaml.safe_dump(space.to_dict(), sort_keys=False))
    info.save(folder)


__all__ = ["MAX_DOUBLINGS", "MIN_SEEDS", "MeasureFn", "calibrate", "calibrate_run"]
