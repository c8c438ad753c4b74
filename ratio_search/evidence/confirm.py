"""Multi-seed confirmation of a finished search, the usable ratio, the held-out test split.

A search ranks its trials by one run each, and its best trial was *selected* for looking good:
its value is biased upwards (the winner's curse). So before anything is reported:

1. The top ``k`` distinct configurations of the search (trials that ran their full budget only:
   a trial stopped early by ASHA is no candidate) and the R = 0 baseline are re-trained with
   ``S`` new seeds (distinct from every seed the search used), at the full budget. Each gets the
   mean and t-interval of every validation metric, and the paired difference to R = 0.
2. The configuration with the best *confirmed* validation mean is chosen (which may be R = 0:
   then synthetic data did not help, and that is the answer).
3. **The usable synthetic ratio** (:mod:`.noninferiority`): a grid of R values (``confirm_r``,
   default :data:`GRID` within the space's range) is confirmed at the chosen generation settings
   with the same ``S`` seeds; the usable ratio is the largest R whose paired difference to R = 0
   on validation (bootstrap over seeds and validation images) has its lower 95 % bound above
   ``-tolerance``. Single trials are never candidates.
4. **The test split** (:mod:`.testsplit`): the chosen configuration (or, when R = 0 won, the best
   confirmed R > 0) is paired with R = 0 on the same seeds and the same test images; seeds are
   added until the paired interval excludes 0, or its half-width is below half the tolerance, or
   ``max_seeds`` is spent, at a Bonferroni-corrected level per planned look (:mod:`.paired`).
   The usable ratio's configuration is evaluated against R = 0 on the test split once, with it.
   Every look is recorded in ``test_looks.jsonl``; the same request shows the recorded numbers.

Every confirmation run is cached (:mod:`.runs`), so an interrupted export resumes where it
stopped and a second export re-trains nothing; the candidates and their summaries are
:mod:`.candidates`; the MLflow copy goes through :func:`ratio_search.tracking.log_confirm_runs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._io import is_number, json_safe
from ..errors import SearchError
from ..home import Home
from ..search.trials import read_trials
from . import paired as _paired
from .answer import answer_text
from .candidates import (
    METRICS,
    Candidate,
    candidate_dict,
    config_params,
    config_signature,
    confirmation_seeds,
    group_of,
    label_of,
    paired,
    select_candidates,
    summarise,
)
from .noninferiority import usable_ratio_ni
from .paired import METHOD, STOPPING, look_confidence, look_schedule
from .runs import ProgressFn, RunContext, train_cached
from .testsplit import Scorer, test_phase
from .workers import RunPool, auto_workers

__all__ = [
    "GRID",
    "METRICS",
    "Candidate",
    "RunContext",
    "config_signature",
    "confirm",
    "confirmation_seeds",
    "group_of",
    "label_of",
    "paired",
    "select_candidates",
    "summarise",
]

# The R values the usable ratio is tested at by default (within the space's range of R).
GRID = (0.25, 0.5, 0.75, 1.0)


def check_test_split(ctx: Any, name: str) -> int:
    """The number of test images; a SearchError before any training when there are none."""
    n = int(ctx.n_test)
    if n <= 0:
        raise SearchError(
            f"run {name}: the test split is empty or missing; export refuses to confirm (nothing "
            "would be evaluated); add a test split (DATA/test/CLASS/...) or export --no-confirm"
        )
    return n


def _grid(ctx: Any, confirm_r: list[float] | None) -> list[float]:
    """The R values the usable ratio needs: ``confirm_r``, else :data:`GRID` in the space's range."""
    if confirm_r:
        return sorted({round(float(r), 3) for r in confirm_r if float(r) > 0})
    lo, hi = 0.0, 1.0
    space = getattr(ctx, "space", None)
    spec = getattr(space, "params", {}).get("r") if space is not None else None
    if getattr(spec, "type", None) == "categorical":
        return sorted({round(float(r), 3) for r in spec.choices if float(r) > 0})
    low, high = getattr(spec, "low", None), getattr(spec, "high", None)
    if is_number(low) and is_number(high):
        lo, hi = float(low), float(high)
    return [r for r in GRID if lo <= r <= hi]


def _augment_allows(ctx: Any, r: float) -> bool:
    """Whether an augment configuration can take ``r``: below 1, and within the space's
    ``r.augment_high`` when it has one (the search never ran augment above it)."""
    space = getattr(ctx, "space", None)
    spec = getattr(space, "params", {}).get("r") if space is not None else None
    high = getattr(spec, "augment_high", None)
    return r < 1.0 and (high is None or r <= float(high))


def confirm(
    home: Home,
    name: str,
    *,
    top_k: int = 3,
    n_seeds: int = 5,
    max_seeds: int | None = None,
    tolerance: float = 0.01,
    confirm_r: list[float] | None = None,
    confidence: float = 0.95,
    n_boot: int | None = None,
    context: Any = None,
    track: bool = True,
    progress: ProgressFn | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Confirm a finished search (see the module docstring); return the ``confirm`` block of best.yaml.

    ``context`` replaces the :class:`RunContext` (tests pass a small fake with ``full_config``,
    ``train``, ``test``, ``correct``, ``n_test`` and ``data_key``). ``max_seeds``: the seed
    budget of the test-split confirmation (default ``2 * n_seeds``). ``track``: log one
    ``confirm`` child run per configuration under the search's MLflow parent run.
    ``workers``: confirmation runs trained at a time, each in its own process with the trials'
    thread count (default: the job's cores divided by that count).
    """
    from ..search.runs import find_run, read_run_json

    if top_k < 1:
        raise SearchError(f"--top-k: {top_k} must be >= 1")
    if n_seeds < 2:
        raise SearchError(f"--confirm-seeds: {n_seeds} must be >= 2 (one seed has no interval)")
    max_seeds = 2 * n_seeds if max_seeds is None else int(max_seeds)
    n_boot = _paired.N_BOOT if n_boot is None else int(n_boot)
    if max_seeds < n_seeds:
        raise SearchError(f"--max-seeds: {max_seeds} is below --confirm-seeds {n_seeds}")
    if not (tolerance > 0 and np.isfinite(tolerance)):
        raise SearchError(f"--tolerance: {tolerance!r} must be a number > 0")
    if workers is not None and workers < 1:
        raise SearchError(f"--workers: {workers} must be >= 1")
    folder = find_run(home, name)
    info = read_run_json(folder)
    metric, mode = info.get("metric", "val_accuracy"), info.get("mode", "max")
    if metric not in METRICS:
        raise SearchError(
            f"run {name}: metric {metric!r} cannot be confirmed (known: {', '.join(METRICS)})"
        )
    trials = read_trials(folder)
    ctx = context if context is not None else RunContext(home, folder, info)
    n_test = check_test_split(ctx, name)  # before any training
    top, base = select_candidates(trials, ctx.full_config, metric, mode, top_k)
    stopped = sorted(
        str(t)
        for t, rec in trials.items()
        if _is_stopped(rec, ctx.full_config(rec.get("params") or {}))
    )

    used = set()
    for rec in trials.values():
        s = ctx.full_config(rec.get("params") or {}).get("seed")
        if isinstance(s, int | float):
            used.add(int(s))
    if isinstance(info.get("seed"), int):
        used.add(int(info["seed"]))
    seeds_all = confirmation_seeds(max_seeds, used)
    seeds = seeds_all[:n_seeds]
    cache = folder / "confirm"

    if workers is None:
        workers = auto_workers(int(getattr(ctx, "threads", 0)), n_runs=2 * n_seeds)
    # One pool of worker processes for every run below (a worker's start costs seconds).
    pool = RunPool(ctx, workers)

    def train(runs: list[tuple[Candidate, int]]) -> None:
        train_cached(ctx, runs, cache, progress, pool)

    with pool:  # stopped once the test split is done, also on an error or Ctrl-C
        everyone: list[Candidate] = [base, *top]
        train([(cand, s) for cand in everyone for s in seeds])

        # Chosen: the best confirmed mean; ties go to the baseline, then to the better-ranked trial.
        sign = 1.0 if mode == "max" else -1.0

        def mean_of(c: Candidate) -> float:
            return float(np.mean([v[metric] for v in c.val]))

        chosen = max(everyone, key=lambda c: (sign * mean_of(c), c is base))

        # The grid of R values the usable ratio needs, at the chosen generation settings.
        gen_source = chosen if chosen is not base else (top[0] if top else base)
        grid: list[Candidate] = []
        for r in _grid(ctx, confirm_r):
            cfg = dict(gen_source.config, r=float(r))
            if cfg.get("mode") == "augment" and not _augment_allows(ctx, float(r)):
                continue  # augment needs R < 1, and the space may bound it lower (r.augment_high)
            if any(config_signature(c.config) == config_signature(cfg) for c in everyone):
                continue
            grid.append(Candidate(label_of(cfg), cfg, "grid", pool_key=gen_source.pool_key))
            everyone.append(grid[-1])
        train([(cand, s) for cand in grid for s in seeds])

        # Non-inferiority on validation: paired bootstrap over seeds and validation images.
        scorer = Scorer(ctx)
        ni_val: dict[str, dict[str, Any]] = {}
        for c in everyone:
            if c is not base and float(c.config.get("r", 0.0)) > 0:
                d = scorer.paired(c, base, "val", confidence, n_boot)
                if d is not None:
                    ni_val[c.label] = d
        ni = usable_ratio_ni(
            [{"r": float(c.config["r"]), "label": c.label, **ni_val[c.label]} for c in everyone if c.label in ni_val],
            tolerance,
        )  # fmt: skip
        usable_cand = next((c for c in everyone if c.label == ni.label), None)

        # The test split: the chosen configuration (else the best confirmed R > 0) against R = 0.
        synthetic = [c for c in everyone if c is not base and float(c.config.get("r", 0.0)) > 0]
        arm = (
            chosen
            if chosen is not base
            else (max(synthetic, key=lambda c: sign * mean_of(c)) if synthetic else None)
        )
        test = test_phase(
            ctx, folder, scorer, train, arm=arm, base=base, usable=usable_cand,
            seeds_all=seeds_all, start=n_seeds, tolerance=tolerance, confidence=confidence,
            n_boot=n_boot, progress=progress,
        )  # fmt: skip
    schedule = look_schedule(n_seeds, max_seeds)
    result: dict[str, Any] = {
        "metric": metric,
        "mode": mode,
        "confidence": confidence,
        "seeds": seeds,
        "max_seeds": max_seeds,
        "top_k": top_k,
        "tolerance": tolerance,
        "stopped_trials": stopped,
        "calibration": info.get("calibration"),
        "budget": _budget(chosen.config),
        "configurations": [_with_ni(candidate_dict(c, base, metric, confidence), ni_val) for c in everyone],
        "baseline": base.label,
        "chosen": {
            "label": chosen.label,
            "params": config_params(chosen.config),
            "config": dict(chosen.config),
            "pool_key": chosen.pool_key,
            "is_baseline": chosen is base,
        },
        "method": {
            "interval": METHOD,
            "stopping": STOPPING,
            "schedule": schedule,
            "look_confidence": look_confidence(confidence, len(schedule)),
            "accuracy_only": "the bootstrap intervals are on accuracy (per-image correctness)",
        },
        "usable_ratio": {
            **ni.as_dict(), "split": "validation", "seeds": seeds, "confirmed": True,
            "mode": (usable_cand.config.get("mode") if usable_cand is not None else None),
        },  # fmt: skip
        # "chosen"/"baseline": every test metric over seeds, as before (readers of older files).
        "test": {
            **test,
            "n_test": n_test,
            "chosen": (test.get("summary") or {}).get("baseline" if chosen is base else "arm", {}),
            "baseline": (test.get("summary") or {}).get("baseline", {}),
        },
    }  # fmt: skip
    result["answer"] = answer_text(result)
    if track:
        result["mlflow"] = _track(info, folder, everyone, base, arm, result)
    return json_safe(result)


def _is_stopped(rec: Mapping[str, Any], cfg: Mapping[str, Any]) -> bool:
    from .candidates import stopped_early

    return rec.get("state") == "TERMINATED" and stopped_early(rec, cfg)


def _budget(config: Mapping[str, Any]) -> dict[str, Any]:
    """The training budget every confirmation run trained at."""
    return {k: config.get(k) for k in ("epochs", "batch_size", "lr") if k in config}


def _with_ni(d: dict[str, Any], ni_val: Mapping[str, Any]) -> dict[str, Any]:
    d["paired_val"] = ni_val.get(d["label"])
    return d


# ------------------------------------------------------------------------------ tracking


def _interval_metrics(prefix: str, intervals: Mapping[str, Mapping[str, Any]]) -> dict:
    """``{prefix+k+"_mean": .., .._ci_low, .._ci_high}`` of interval dicts."""
    out: dict[str, Any] = {}
    for k, iv in intervals.items():
        out[f"{prefix}{k}_mean"] = iv["mean"]
        out[f"{prefix}{k}_ci_low"] = iv["low"]
        out[f"{prefix}{k}_ci_high"] = iv["high"]
    return out


def _track(
    info: Mapping[str, Any],
    folder: Path,
    everyone: list[Candidate],
    base: Candidate,
    arm: Candidate | None,
    result: dict[str, Any],
) -> dict[str, Any] | None:
    """One ``confirm`` child run per configuration under the search's parent run.

    Metric names avoid the trials' ``val_*`` names (``val_accuracy_mean``, ``seed_val_accuracy``
    per seed as a history), so the parent's best-trial bookkeeping never mistakes a
    confirmation run for a trial. Returns ``{label: run_id}`` or ``{"error": ...}``; tracking
    problems never lose the confirmation itself.
    """
    ml = info.get("mlflow") or {}
    uri, parent = ml.get("tracking_uri"), ml.get("parent_run_id")
    if not uri or not parent:
        return None
    by_label = {c["label"]: c for c in result["configurations"]}
    runs = []
    for cand in everyone:
        summary = by_label[cand.label]
        flat = _interval_metrics("", summary["val"])
        flat.update(_interval_metrics("diff_", summary["diff_vs_baseline"]))
        side = "arm" if cand is arm else ("baseline" if cand is base else None)
        summary_test = (result["test"].get("summary") or {}).get(side or "", {})
        flat.update(_interval_metrics("", summary_test))
        params = {k: str(v) for k, v in config_params(cand.config).items()}
        params["seeds"] = ",".join(map(str, cand.seeds))
        runs.append(
            {
                "label": cand.label,
                "role": cand.role,
                "chosen": cand.label == result["chosen"]["label"],
                "params": params,
                "history": [{f"seed_{k}": x for k, x in v.items()} for v in cand.val],
                "metrics": {k: v for k, v in flat.items() if is_number(v)},
                "summary": json_safe(summary),
            }
        )
    try:
        from .. import tracking

        ids = tracking.log_confirm_runs(
            uri, parent, runs, experiment_id=ml.get("experiment_id"), run_dir=folder
        )
    except Exception as e:  # noqa: BLE001 - the numbers matter more than their copy in MLflow
        return {"error": f"{type(e).__name__}: {e}"}
    for cand in everyone:
        cand.mlflow_run_id = ids[cand.label]
        by_label[cand.label]["mlflow_run_id"] = ids[cand.label]
    return ids
