"""Orchestration overhead: the same trials in a plain Python loop vs through the search service.

Three arms, run one after another in one invocation (same machine, same load), each running the
same N trials (R = 0, so that no generator is involved and the difference is orchestration only;
trial i uses seed i), one trial at a time, one CPU thread per trial:

- ``loop``: ``trial_body`` called N times in this process (no Ray, no MLflow): the floor;
- ``tune``: ``run_search(..., tracking=False)``: Ray start, Optuna (grid over the seeds), Tune
  trials with a checkpoint per epoch, trials.jsonl;
- ``tune+mlflow``: the same with the MLflow callback (parent run, child run per trial, per-epoch
  metrics, confusion-matrix artifacts);
- the warm start's before / after: ``tune+mlflow`` with the R = 0 calibration on (the set-up
  work a search does before its trials), Ray started in the background as soon as the set-up
  begins (``search.resources.RayStart``, the driver since session 7) vs after the set-up (the
  driver before). The calibration then raises the trials' budget (3 epochs are not converged),
  so these two compare with each other, not with the loop.

For each arm it prints the end-to-end wall time (Ray start-up included), the first trial's time
(it also starts the worker process and its imports), the time per trial after the first (the
period between trial ends, from trials.jsonl), its overhead over the loop's, and the ratio
loop / arm (1.0 = no overhead).

    .venv/bin/python benchmarks/bench_orchestration.py [--trials 6] [--epochs 3] [--per-class 100]
        [--val-every 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from ratio_search.home import Home
from ratio_search.search import driver, run_search
from ratio_search.search.resources import RayStart
from ratio_search.search.space import parse_space
from ratio_search.search.trainable import trial_body


def make_space(
    trials: int,
    epochs: int,
    image_size: int,
    per_class: int,
    calibrate: str = "off",
    val_every: int = 1,
) -> dict:
    # calibrate off: the R = 0 calibration would raise the trials' budget above the loop's
    # (3 epochs are not converged), and this compares the same trials
    return {
        "params": {"seed": {"type": "categorical", "choices": list(range(trials))}},
        "fixed": {
            "r": 0.0,
            "epochs": epochs,
            "batch_size": 32,
            "lr": 0.002,
            "val_every": val_every,
        },
        "search": {"sampler": "grid", "calibrate": calibrate},
        "data": {
            "image_size": image_size,
            "phantom_n_per_class": per_class,
            "phantom_val_per_class": per_class,
            "phantom_test_per_class": 2,
        },
    }


def loop_arm(home: Home, space_doc: dict) -> dict:
    from ratio_search.data import load_dataset

    t0 = time.perf_counter()
    space = parse_space(space_doc)
    data = load_dataset(space.data_config(), home)
    ctx = {
        "home": str(home.root),
        "space": space.to_dict(),
        "pool_n": 0,
        "model_path": None,
        "model_meta": None,
    }
    ends = []
    for seed in space.params["seed"].values():
        trial_body(dict(space.fixed, seed=seed), ctx, data, report=lambda m, s: None)
        ends.append(time.perf_counter())
    return {"wall": ends[-1] - t0, "per_trial": (ends[-1] - ends[0]) / (len(ends) - 1)}


class LateRayStart(RayStart):
    """Ray started only when the trials need it (the driver before session 7)."""

    def start(self) -> RayStart:
        return self  # the set-up's early start is ignored

    def wait(self) -> None:
        RayStart.start(self)
        super().wait()


def tune_arm(home: Home, space_doc: dict, name: str, tracking: bool, late: bool = False) -> dict:
    driver.RayStart = LateRayStart if late else RayStart
    t0 = time.perf_counter()
    try:
        out = run_search(
            home, name=name, space=parse_space(space_doc), concurrency=1, cpus_per_trial=1,
            tracking=tracking, progress=False, model=None,
        )  # fmt: skip
    finally:
        driver.RayStart = RayStart
    wall = time.perf_counter() - t0
    assert out["state"] == "finished" and out["n_trials"] == len(
        space_doc["params"]["seed"]["choices"]
    ), out
    # the driver's own event times: the period between trial ends after the first one (the first
    # trial also pays for starting the worker process and its imports: counted in "start-up")
    recs = [
        json.loads(ln) for ln in (Path(out["run_dir"]) / "trials.jsonl").read_text().splitlines()
    ]
    ends = sorted(r["time"] for r in recs if r["state"] == "TERMINATED")
    first_start = min(r["time"] for r in recs)
    return {
        "wall": wall,
        "per_trial": (ends[-1] - ends[0]) / (len(ends) - 1),
        "first_trial": ends[0] - first_start,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument(
        "--per-class", type=int, default=100, help="real training (and val) images per class"
    )
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument(
        "--val-every", type=int, default=1, help="train.val_every (the quick space's: 8)"
    )
    ap.add_argument("--no-mlflow", action="store_true", help="skip the tune+mlflow arm")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the loop arm gets what a Tune trial with cpus_per_trial=1 gets

    space_doc = make_space(
        args.trials, args.epochs, args.image_size, args.per_class, val_every=args.val_every
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-orch-") as tmp:
        home = Home.resolve(tmp)
        loop_arm(home, space_doc)  # warm-up: phantom rendering, data cache, imports
        results["loop"] = loop_arm(home, space_doc)
        results["tune"] = tune_arm(home, space_doc, "bench-tune", tracking=False)
        if not args.no_mlflow:
            results["tune+mlflow"] = tune_arm(home, space_doc, "bench-mlflow", tracking=True)
            calibrated = make_space(
                args.trials, args.epochs, args.image_size, args.per_class, calibrate="auto",
                val_every=args.val_every,
            )  # fmt: skip
            results["calibrated, Ray started in the background"] = tune_arm(
                home, calibrated, "bench-early", tracking=True
            )
            results["calibrated, Ray started after the set-up"] = tune_arm(
                home, calibrated, "bench-late", tracking=True, late=True
            )

    n = args.trials
    base = results["loop"]["per_trial"]
    print(
        f"{n} trials x {args.epochs} epochs, {args.per_class} real images/class at {args.image_size} px, "
        f"one at a time, 1 CPU thread per trial\n"
    )
    print(
        "| arm | wall s (all trials, incl. start-up) | first trial s | s per trial after the first | overhead per trial s | loop / arm |"
    )
    print("|---|---|---|---|---|---|")
    for arm, r in results.items():
        first = f"{r['first_trial']:.2f}" if "first_trial" in r else ""
        print(
            f"| {arm} | {r['wall']:.1f} | {first} | {r['per_trial']:.2f} | {r['per_trial'] - base:+.2f} "
            f"| {base / r['per_trial']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
