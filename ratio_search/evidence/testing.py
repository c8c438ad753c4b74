"""Test helpers: a finished search's run folder, fabricated without Ray, that the confirmation
reads as if a search had written it (:class:`.runs.RunContext`).

Used by the test suite and ``benchmarks/bench_confirm_workers.py``; production code never
imports this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..home import Home

POOL_KEY = "pk1"


def fabricated_run(
    home: Home,
    data_overrides: dict[str, Any] | None = None,
    fixed: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
    name: str = "real",
) -> tuple[Path, Any, str | None]:
    """Write run ``name`` under ``home``: phantom data (``DataConfig`` with ``data_overrides``),
    a cached "pool" of the CNV training images brightened by 20 grey levels (any complete
    images.npy + manifest.json is a pool), and two finished trials at R = 0 and R = 0.5
    (guidance 2, 2 steps; ``fixed`` sets the space's fixed values). With ``tracking_uri``, an
    MLflow parent run. Returns (run folder, dataset, parent run id or None)."""
    from ..config import Config, save_config
    from ..data import load_dataset

    cfg = Config()
    for k, v in (data_overrides or {}).items():
        setattr(cfg.data, k, v)
    data = load_dataset(cfg.data, home)
    cnv = data.train_x[data.train_y == data.synthetic_label]
    pool_dir = home.pools / POOL_KEY
    pool_dir.mkdir(parents=True, exist_ok=True)
    np.save(pool_dir / "images.npy", np.clip(cnv.astype(int) + 20, 0, 255).astype(np.uint8))
    (pool_dir / "manifest.json").write_text(json.dumps({"n": len(cnv), "key": POOL_KEY}))

    space = {
        "params": {
            "r": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.5},
            "guidance": {"type": "categorical", "choices": [2.0]},
            "steps": {"type": "categorical", "choices": [2]},
        },
        "fixed": dict(fixed or {}),
    }
    folder = home.runs / name
    folder.mkdir(parents=True)
    save_config(cfg, folder / "config.yaml")
    info: dict[str, Any] = {
        "name": name,
        "state": "finished",
        "metric": "val_accuracy",
        "mode": "max",
        "space": space,
        "data_key": data.key,
    }
    parent = None
    if tracking_uri:
        from .. import tracking

        tracker = tracking.SearchTracker(tracking_uri, run_dir=folder)
        parent = tracker.start_parent(name)
        tracker.finish_parent()
        info["mlflow"] = {"tracking_uri": tracking_uri, "parent_run_id": parent}
    (folder / "run.json").write_text(json.dumps(info))
    recs = [
        {"trial_id": "a", "state": "TERMINATED", "params": {"r": 0.0, "guidance": 2.0, "steps": 2},
         "metrics": {"val_accuracy": 0.5}},
        {"trial_id": "b", "state": "TERMINATED", "params": {"r": 0.5, "guidance": 2.0, "steps": 2},
         "metrics": {"val_accuracy": 0.6}, "pool_key": POOL_KEY},
    ]  # fmt: skip
    (folder / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return folder, data, parent
