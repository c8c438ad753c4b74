"""What a confirmation compares: trial configurations, their signature, group and label, the
candidates picked from a search's trials, their seeds and their per-seed summaries.

A configuration is a trial's flat config (``Space.trial_config``, the trials.jsonl form); its
meaning is :class:`ratio_search.config.TrialConfig`. Nothing here trains or reads a file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._io import is_number
from ..config import POOL_FIELDS, TrialConfig
from ..errors import SearchError
from ..search.space import DRAW_PARAMS, PARAMS
from ..search.trials import metric_value
from .stats import mean_ci, paired_difference

# Metric names of a trial's result as the search reports them, and their key in run_trial's output.
METRICS = {
    "val_accuracy": "accuracy",
    "val_f1": "f1",
    "val_precision": "precision",
    "val_recall": "recall",
    "val_roc_auc": "roc_auc",
    "val_loss": "val_loss",
}
# Confirmation seeds start here, far from the seeds a search uses (its fixed seed, usually 0).
SEED_BASE = 1000
# Flat-config fields that do not make a trial another configuration: the seed (confirmation
# varies it), where and with how many threads it runs, and how often it validated (val_every
# changes no weight and no final metric).
_NOT_CONFIG = ("seed", "device", "threads", "val_every")
# Flat-config fields that only matter when generated images are mixed in (R > 0): the pool, the
# draw from it, and the mode (replace and augment both train on the real set alone at R = 0).
_POOL_ONLY = (*POOL_FIELDS, "pool_size", "pool_seed", *DRAW_PARAMS, "mode")


def _num(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return tuple(_num(x) for x in v)  # hashable: signatures go into sets
    return round(float(v), 6) if isinstance(v, int | float) and not isinstance(v, bool) else v


def config_signature(config: Mapping[str, Any]) -> tuple:
    """What makes two trial configs the same configuration: their :class:`TrialConfig`, rounded,
    without the seed (nor device, threads and val_every).

    At R = 0 no generated image is used, so the pool, draw and mode settings are dropped from it.
    """
    flat = TrialConfig.from_flat(dict(config)).to_flat()
    r0 = float(flat["r"]) == 0.0
    return tuple(
        (k, None if r0 and k in _POOL_ONLY else _num(v))
        for k, v in flat.items()
        if k not in _NOT_CONFIG
    )


def config_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The searchable parameters of a config but the seed: how best.yaml and MLflow show it."""
    return {k: config[k] for k in PARAMS if k != "seed" and config.get(k) is not None}


def group_of(config: Mapping[str, Any]) -> str:
    """The generation settings of a config as a label (``"real only"`` at R = 0)."""
    if float(config.get("r", 0.0)) == 0.0:
        return "real only"
    keys = (*POOL_FIELDS, "mode")
    return ", ".join(f"{k}={config.get(k)}" for k in keys if config.get(k) is not None)


# Levers named in a label only when they differ from these (the plain replace configuration).
_LABEL_PLAIN = {"mode": "replace", "filter_top": 1.0, "synthetic_classes": "default",
                "finetune_steps": 0, "arch": "simple"}  # fmt: skip


def label_of(config: Mapping[str, Any]) -> str:
    """A short human label: ``R=0.40 guidance=2.0 steps=25``, plus every lever that is not the
    plain one (``mode=augment``, ``filter_top=0.8``, ...), so two configurations never share one."""
    r = float(config.get("r", 0.0))
    if r == 0.0:
        return "R=0 (real only)"
    parts = [f"R={r:.2f}"]
    parts += [f"{k}={config[k]}" for k in ("guidance", "steps") if config.get(k) is not None]
    parts += [
        f"{k}={config[k]}"
        for k, plain in _LABEL_PLAIN.items()
        if config.get(k) is not None and _num(config[k]) != _num(plain)
    ]
    return " ".join(parts)


@dataclass
class Candidate:
    """One configuration to confirm: its complete trial config and where it came from."""

    label: str
    config: dict[str, Any]
    role: str  # "top" (one of the search's top k), "baseline" (R = 0), "usable" / "extra" (an R)
    trial_id: str | None = None
    trial_value: float | None = None
    pool_key: str | None = None
    seeds: list[int] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)  # per seed
    weights: list[str] = field(default_factory=list)  # per seed: safetensors path
    test: list[dict[str, float]] = field(default_factory=list)
    mlflow_run_id: str | None = None


def select_candidates(
    trials: Mapping[str, Mapping[str, Any]],
    full_config: Callable[[Mapping[str, Any]], dict[str, Any]],
    metric: str,
    mode: str,
    top_k: int,
) -> tuple[list[Candidate], Candidate]:
    """The ``top_k`` best distinct configurations with R > 0 of the finished trials, and R = 0.

    ``trials`` are trials.jsonl records (the last per trial id); ``full_config(params)`` turns a
    trial's params into its complete config. Configurations are compared by
    :func:`config_signature`; a configuration tried twice counts once, with its best trial. The
    baseline is the best trial's config with R = 0 (so it differs from the best in R alone), made
    complete by ``full_config`` as the search made its R = 0 trials (one canonical config, so
    that it is trained once per seed and matches the search's own R = 0 trial); it is always
    confirmed, and never takes one of the ``top_k`` places.
    """
    sign = 1.0 if mode == "max" else -1.0
    done = []
    for tid, rec in trials.items():
        value = metric_value(rec, metric)
        if rec.get("state") == "TERMINATED" and value is not None:
            cfg = full_config(rec.get("params") or {})
            if stopped_early(rec, cfg):
                continue  # a half-trained value: never a candidate (confirmation trains in full)
            done.append((sign * value, str(tid), rec, value, cfg))
    if not done:
        raise SearchError(
            f"no trial finished its full budget with a finite {metric}: nothing to confirm "
            "(trials stopped early by the scheduler are not candidates)"
        )
    done.sort(key=lambda t: (-t[0], t[1]))  # a ranking: ties by trial id
    base_cfg = full_config({**(done[0][2].get("params") or {}), "r": 0.0})
    base = Candidate(label_of(base_cfg), base_cfg, "baseline")
    base_sig = config_signature(base_cfg)
    seen: set[tuple] = {base_sig}
    top: list[Candidate] = []
    for _, tid, rec, value, cfg in done:
        sig = config_signature(cfg)
        if sig == base_sig and base.trial_id is None:  # the search's own R = 0 trial
            base.trial_id, base.trial_value = tid, value
        if sig in seen:
            continue
        seen.add(sig)
        if len(top) < top_k:
            top.append(
                Candidate(label_of(cfg), cfg, "top", tid, value, rec.get("pool_key") or None)
            )
    return top, base


def stopped_early(rec: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    """True when a scheduler (ASHA) stopped the trial before its planned epochs."""
    epoch, planned = rec.get("epoch"), config.get("epochs")
    return is_number(epoch) and is_number(planned) and 0 < int(epoch) < int(planned)


def confirmation_seeds(n: int, used: set[int]) -> list[int]:
    """``n`` seeds from :data:`SEED_BASE` on, skipping every seed in ``used`` (the search's)."""
    seeds, s = [], SEED_BASE
    while len(seeds) < n:
        if s not in used:
            seeds.append(s)
        s += 1
    return seeds


def summarise(
    per_seed: list[dict[str, float]], confidence: float = 0.95
) -> dict[str, dict[str, Any]]:
    """``{metric: interval dict}`` over seeds, for every metric all seeds have."""
    if not per_seed:
        return {}
    keys = [k for k in per_seed[0] if all(is_number(m.get(k)) for m in per_seed)]
    return {k: mean_ci([m[k] for m in per_seed], confidence).as_dict() for k in keys}


def paired(
    a: Candidate, b: Candidate, attr: str = "val", confidence: float = 0.95
) -> dict[str, dict[str, Any]]:
    """Paired (by seed) differences ``a - b`` of every metric both have, with intervals."""
    by_seed_b = dict(zip(b.seeds, getattr(b, attr), strict=True))
    pairs = [
        (m, by_seed_b[s]) for s, m in zip(a.seeds, getattr(a, attr), strict=True) if s in by_seed_b
    ]
    if not pairs:
        return {}
    keys = [
        k for k in pairs[0][0] if all(is_number(x.get(k)) and is_number(y.get(k)) for x, y in pairs)
    ]
    return {
        k: paired_difference(
            [x[k] for x, _ in pairs], [y[k] for _, y in pairs], confidence
        ).as_dict()
        for k in keys
    }


def candidate_dict(c: Candidate, base: Candidate, metric: str, confidence: float) -> dict[str, Any]:
    """One configuration's block of the confirmation result (best.yaml ``configurations``)."""
    d = {
        "label": c.label,
        "role": c.role,
        "params": config_params(c.config),
        "group": group_of(c.config),
        "trial_id": c.trial_id,
        "trial_value": c.trial_value,
        "pool_key": c.pool_key,
        "seeds": list(c.seeds),
        "per_seed": [dict(v) for v in c.val],
        "val": summarise(c.val, confidence),
        "diff_vs_baseline": {} if c is base else paired(c, base, "val", confidence),
        "mlflow_run_id": c.mlflow_run_id,
    }
    if c.val and metric in d["val"]:
        d["mean"] = d["val"][metric]["mean"]
    return d
