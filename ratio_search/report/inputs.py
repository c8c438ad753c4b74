"""What the report reads from a run folder: finished trials, the confirmation, the Optuna study,
and the pools' stored quality figures."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .._io import is_number
from ..errors import RatioSearchError
from ..evidence.confirm import group_of
from ..home import Home
from .text import fmt, setting


def find_confirmation(
    home: Home, folder: Path, name: str, best_path: str | Path | None = None
) -> tuple[dict[str, Any] | None, Path | None]:
    """The ``expected.confirm`` block of this run's best.yaml, and the file it came from.

    Looks at ``best_path`` if given, else ``<run dir>/best.yaml``, ``<home>/best.yaml`` and
    ``./best.yaml`` (``export``'s default), taking the first that belongs to run ``name``.
    """
    if best_path is not None:
        candidates = [Path(best_path)]
        if not candidates[0].is_file():
            raise RatioSearchError(f"--best: {best_path} not found")
    else:
        candidates = [folder / "best.yaml", home.root / "best.yaml", Path.cwd() / "best.yaml"]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            continue
        exp = doc.get("expected") or {}
        if best_path is None and exp.get("run") not in (None, name):
            continue  # another search's export
        if isinstance(exp.get("confirm"), dict):
            return exp["confirm"], path
    return None, None


def trial_rows(
    trials: Mapping[str, Mapping[str, Any]], metric: str, ctx: Any
) -> list[dict[str, Any]]:
    """One row per finished trial with a finite ``metric``, in the order the trials finished."""
    rows = []
    for tid, rec in trials.items():
        v = (rec.get("metrics") or {}).get(metric)
        if rec.get("state") != "TERMINATED" or not is_number(v):
            continue
        cfg = ctx.full_config(rec.get("params") or {})
        rows.append(
            {
                "trial_id": str(tid),
                "r": float(cfg.get("r", 0.0)),
                "guidance": cfg.get("guidance"),
                "steps": cfg.get("steps"),
                "value": float(v),
                "time": rec.get("time") or 0,
                "pool_key": rec.get("pool_key"),
                "group": group_of(cfg),
                "config": cfg,
                # an equivalent configuration's measurement reported again (search/trainable.py)
                "reused": bool(rec.get("reused_from"))
                or (rec.get("metrics") or {}).get("reused") == 1,
            }
        )
    rows.sort(key=lambda r: (r["time"], r["trial_id"]))
    return rows


def r0_trial_mean(rows: list[dict[str, Any]]) -> float | None:
    """The mean of the search's R = 0 trials, each measurement once: a reused trial reports
    another trial's value again (an equivalent configuration), not a new measurement."""
    values = [r["value"] for r in rows if r["r"] == 0.0 and not r.get("reused")]
    return float(sum(values) / len(values)) if values else None


def load_study(folder: Path, name: str):
    """The search's Optuna study from ``optuna.db``, or None without one."""
    db = folder / "optuna.db"
    if not db.is_file():
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{db.resolve()}"
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # another study name: take the only one there is
        names = optuna.get_all_study_names(storage)
        return optuna.load_study(study_name=names[0], storage=storage) if len(names) == 1 else None


#: The quality figures of the report's pool table, each shown as ``value / floor``.
POOL_FIGURES = ("fd", "kid", "precision", "recall", "c2st", "memorisation", "label_agreement")


def with_floor(q: Mapping[str, Any], name: str) -> Any:
    """A quality cell: ``value / floor`` (4 decimals), the value alone where a stored block of an
    older format has no floor, None where the figure is missing."""
    from ..quality import floor_name

    v, f = q.get(name), q.get(floor_name(name))
    if not is_number(v):
        return None
    return f"{fmt(v)} / {fmt(f)}" if is_number(f) else v


def measured_on(q: Mapping[str, Any], pool_n: int | None = None) -> str | None:
    """What a pool's figures were measured on, in words (None: never measured); with the
    trials' ``pool_n``, says so when the figures are of another number of first images."""
    from ..quality import is_current

    if not q:
        return None
    if not is_current(dict(q)):
        return "old: vs the extractor's own training images, no floor"
    words = f"first {q.get('n_pool')} vs {q.get('n_real')} held-out"
    if pool_n and q.get("pool_n") != int(pool_n):
        words += f" (the trials used the first {int(pool_n)}: --pool-n {int(pool_n)})"
    return words


def pool_table(
    home: Home, rows: list[dict[str, Any]], mode: str, pool_n: int | None = None
) -> list[list[Any]]:
    """Per pool used by a trial with R > 0: its settings, trials, best value, quality figures
    (each beside its real-vs-real floor), C2ST's p-value and what the figures were measured on
    (``pool_n``: the images per pool the trials used, from run.json)."""
    from ..pools import load_pool

    sign = 1.0 if mode == "max" else -1.0
    by_pool: dict[str, list[float]] = {}
    for r in rows:
        if r["pool_key"] and r["r"] > 0:
            by_pool.setdefault(r["pool_key"], []).append(r["value"])
    out = []
    for key, values in sorted(by_pool.items()):
        try:
            m = load_pool(home, key).manifest
        except RatioSearchError:
            m = {}
        q = m.get("quality") or {}
        out.append([
            key, setting(m.get("guidance")), m.get("steps"), m.get("n"), len(values), max(values, key=lambda v: sign * v),
            *(with_floor(q, k) for k in POOL_FIGURES), q.get("c2st_p_value"), measured_on(q, pool_n),
        ])  # fmt: skip
    return out
