"""Multi-seed confirmation of a finished search, the held-out test split, the usable ratio.

A search ranks its trials by one run each, and its best trial was *selected* for looking good:
its value is biased upwards (the winner's curse). So before anything is reported:

1. The top ``k`` distinct configurations of the search and the R = 0 baseline are re-trained with
   ``S`` new seeds (distinct from every seed the search used). Each configuration gets the mean
   and 95 % t-interval of every validation metric, and the paired difference to R = 0 with its
   interval (paired by seed: the same seed gives both arms the same initial weights and batch
   order, so their difference is far less noisy than either).
2. The configuration with the best *confirmed* mean is chosen (which may be R = 0 itself: then
   synthetic data did not help, and that is the answer).
3. Only then is the test split touched, once: the S models of the chosen configuration and of
   the baseline are evaluated on it (mean ± CI, and the paired difference).
4. The usable synthetic ratio (:func:`.stats.usable_ratio`) is computed from the search's
   trials plus every confirmation run. While the R it names rests on a single trial,
   that R is confirmed too (at most ``usable_rounds`` times), so the headline number is backed by
   ``S`` seeds; extra R values can be asked for with ``confirm_r``.

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
from ..search.trials import best_trial, metric_value, read_trials
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
from .runs import ProgressFn, RunContext, load_state, train_cached
from .stats import usable_ratio

__all__ = [
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


def confirm(
    home: Home,
    name: str,
    *,
    top_k: int = 3,
    n_seeds: int = 5,
    tolerance: float = 0.01,
    confirm_r: list[float] | None = None,
    usable_rounds: int = 2,
    confidence: float = 0.95,
    context: Any = None,
    track: bool = True,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Confirm a finished search (see the module docstring); return the ``confirm`` block of best.yaml.

    ``context`` replaces the :class:`RunContext` (tests pass a small fake with ``full_config``,
    ``train``, ``test``, ``n_test`` and ``data_key``). ``track``: log one ``confirm`` child run
    per configuration under the search's MLflow parent run, when run.json names one.

    The returned dict (YAML-safe) holds ``metric``, ``mode``, ``seeds``, ``configurations`` (per
    configuration: params, per-seed metrics, mean/CI per metric, paired difference to R = 0),
    ``chosen``, ``test`` (chosen and baseline on the test split, and their paired difference)
    and ``usable_ratio``.
    """
    from ..search.runs import find_run, read_run_json

    if top_k < 1:
        raise SearchError(f"--top-k: {top_k} must be >= 1")
    if n_seeds < 2:
        raise SearchError(f"--confirm-seeds: {n_seeds} must be >= 2 (one seed has no interval)")
    folder = find_run(home, name)
    info = read_run_json(folder)
    metric, mode = info.get("metric", "val_accuracy"), info.get("mode", "max")
    if metric not in METRICS:
        raise SearchError(
            f"run {name}: metric {metric!r} cannot be confirmed (known: {', '.join(METRICS)})"
        )
    trials = read_trials(folder)
    ctx = context if context is not None else RunContext(home, folder, info)
    top, base = select_candidates(trials, ctx.full_config, metric, mode, top_k)

    used = set()
    for rec in trials.values():
        s = ctx.full_config(rec.get("params") or {}).get("seed")
        if isinstance(s, int | float):
            used.add(int(s))
    if isinstance(info.get("seed"), int):
        used.add(int(info["seed"]))
    seeds = confirmation_seeds(n_seeds, used)
    cache = folder / "confirm"

    def run(cand: Candidate) -> None:
        for s in seeds:
            train_cached(ctx, cand, s, cache, progress)

    everyone: list[Candidate] = []
    for cand in [base, *top]:
        run(cand)
        everyone.append(cand)

    # Chosen: the best confirmed mean; ties go to the baseline, then to the better-ranked trial.
    sign = 1.0 if mode == "max" else -1.0

    def mean_of(c: Candidate) -> float:
        return float(np.mean([v[metric] for v in c.val]))

    chosen = max(everyone, key=lambda c: (sign * mean_of(c), c is base))

    # Extra R values asked for, at the chosen configuration's generation settings.
    gen_source = chosen if chosen is not base else (top[0] if top else base)
    for r in confirm_r or []:
        cfg = dict(gen_source.config, r=float(r))
        if any(config_signature(c.config) == config_signature(cfg) for c in everyone):
            continue
        cand = Candidate(label_of(cfg), cfg, "extra", pool_key=gen_source.pool_key)
        run(cand)
        everyone.append(cand)

    # The usable ratio: trials + confirmations; confirm the answer while it rests on one trial.
    def table() -> list[dict[str, Any]]:
        rows = []
        for rec in trials.values():
            value = metric_value(rec, metric)
            if rec.get("state") != "TERMINATED" or value is None:
                continue
            cfg = ctx.full_config(rec.get("params") or {})
            rows.append(
                {"r": cfg.get("r", 0.0), "value": value, "confirmed": False, "group": group_of(cfg)}
            )
        for c in everyone:
            for v in c.val:
                rows.append(
                    {
                        "r": c.config.get("r", 0.0),
                        "value": v[metric],
                        "confirmed": True,
                        "group": group_of(c.config),
                    }
                )
        return rows

    usable = usable_ratio(table(), tolerance, mode, confidence=confidence)
    for _ in range(max(0, usable_rounds)):
        if usable.confirmed:
            break
        cfg, pool_key = _trial_config_at(trials, ctx, usable, metric, mode)
        cand = Candidate(label_of(cfg), cfg, "usable", pool_key=pool_key)
        if any(config_signature(c.config) == config_signature(cfg) for c in everyone):
            break  # already confirmed in another group; nothing new to learn
        run(cand)
        everyone.append(cand)
        usable = usable_ratio(table(), tolerance, mode, confidence=confidence)

    # The test split, once, for the chosen configuration and the baseline.
    if progress:
        progress(f"test split: {chosen.label} and {base.label}")
    for cand in {id(chosen): chosen, id(base): base}.values():
        cand.test = [ctx.test(cand.config, load_state(w)) for w in cand.weights]

    result: dict[str, Any] = {
        "metric": metric,
        "mode": mode,
        "confidence": confidence,
        "seeds": seeds,
        "top_k": top_k,
        "configurations": [candidate_dict(c, base, metric, confidence) for c in everyone],
        "baseline": base.label,
        "chosen": {
            "label": chosen.label,
            "params": config_params(chosen.config),
            "config": dict(chosen.config),
            "pool_key": chosen.pool_key,
            "is_baseline": chosen is base,
        },
        "test": {
            "n_test": int(ctx.n_test),
            "chosen": summarise(chosen.test, confidence),
            "baseline": summarise(base.test, confidence),
            "diff": paired(chosen, base, "test", confidence) if chosen is not base else {},
            "per_seed": {"chosen": chosen.test, "baseline": base.test},
        },
        "usable_ratio": usable.as_dict(),
    }
    if track:
        result["mlflow"] = _track(info, folder, everyone, base, chosen, result)
    return json_safe(result)


def _trial_config_at(
    trials: Mapping[str, Mapping[str, Any]], ctx: Any, usable: Any, metric: str, mode: str
) -> tuple[dict[str, Any], str | None]:
    """The config (and pool) of the best trial at the usable ratio's R within its group."""
    group = next(p.group for p in usable.points if p.r == usable.r)

    def at_usable_r(rec: Mapping[str, Any]) -> bool:
        cfg = ctx.full_config(rec.get("params") or {})
        return round(float(cfg.get("r", 0.0)), 3) == usable.r and group_of(cfg) == group

    best = best_trial({t: rec for t, rec in trials.items() if at_usable_r(rec)}, metric, mode)
    if best is None:  # cannot happen: an unconfirmed point comes from a trial
        raise SearchError(f"no trial at R={usable.r} to confirm")
    return ctx.full_config(best.get("params") or {}), best.get("pool_key") or None


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
    chosen: Candidate,
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
        side = "chosen" if cand is chosen else ("baseline" if cand is base else None)
        if side is not None:
            flat.update(_interval_metrics("", result["test"][side]))
        params = {k: str(v) for k, v in config_params(cand.config).items()}
        params["seeds"] = ",".join(map(str, cand.seeds))
        runs.append(
            {
                "label": cand.label,
                "role": cand.role,
                "chosen": cand is chosen,
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
