"""The MLflow callback's cost per trial in the driver, hook by hook (no Ray, no training).

Fake trials go through :class:`ratio_search.tracking.callback.MLflowTrialCallback` against a
fresh sqlite store, as Tune would call it for a demo-sized trial: ``on_trial_start``, two
``on_trial_result`` (validation every 8th of 16 epochs, with the confusion matrix), and
``on_trial_complete`` (the confusion-matrix artifacts, the run's end, the parent's best so far).
Prints the median milliseconds per hook and per tracker call after the first ``--skip`` trials
(which pay imports), and the total per trial.

    .venv/bin/python benchmarks/bench_tracking.py [--trials 30]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ratio_search.tracking.callback import MLflowTrialCallback  # noqa: E402
from ratio_search.tracking.mlflow import SearchTracker  # noqa: E402

CALLS = ("start_child", "log_inputs", "log_epoch", "log_confusion_matrix", "end_child",
         "update_best")  # fmt: skip


class FakeTrial:
    def __init__(self, i: int) -> None:
        self.trial_id = f"t{i:05d}"
        self.config = {"r": 0.5, "guidance": 2.0, "steps": 3, "mode": "augment"}
        self.status, self.error_msg = "RUNNING", None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--skip", type=int, default=5)
    args = ap.parse_args()
    calls: dict[str, list[float]] = collections.defaultdict(list)
    for name in CALLS:  # time the tracker's calls in place
        f = getattr(SearchTracker, name)

        def timed(*a, _f=f, _name=name, **k):
            t = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                calls[_name].append(time.perf_counter() - t)

        setattr(SearchTracker, name, timed)
    hooks: dict[str, list[float]] = collections.defaultdict(list)
    cm = json.dumps([[250, 50], [30, 270]])
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as d:
        (Path(d) / "run").mkdir()
        tracker = SearchTracker(f"sqlite:///{d}/mlflow.db", run_dir=Path(d) / "run",
                                metric="val_accuracy", mode="max")  # fmt: skip
        tracker.start_parent("bench", params={"space": "fake"})
        cb = MLflowTrialCallback(tracker, strict=True)

        def hook(name: str, fn, *fn_args) -> None:
            t = time.perf_counter()
            fn(0, [], *fn_args)
            hooks[name].append(time.perf_counter() - t)

        for i in range(args.trials):
            trial = FakeTrial(i)
            hook("on_trial_start", cb.on_trial_start, trial)
            for epoch in (8, 16):
                res = {"epoch": epoch, "val_accuracy": 0.8, "val_loss": 0.4, "val_f1": 0.8,
                       "train_loss": 0.3, "pool_key": "pk1", "confusion_matrix": cm,
                       "class_names": json.dumps(["CNV", "NORMAL"])}  # fmt: skip
                hook("on_trial_result (each)", cb.on_trial_result, trial, res)
            hook("on_trial_complete", cb.on_trial_complete, trial)

    def ms(v: list[float], per: int = 1) -> float:
        return statistics.median(v[args.skip * per :]) * 1000

    total = ms(hooks["on_trial_start"]) + 2 * ms(hooks["on_trial_result (each)"], 2)
    total += ms(hooks["on_trial_complete"])
    print(f"\n{args.trials} fake trials, medians after the first {args.skip}\n")
    print("| hook or tracker call | ms |\n|---|---|")
    for name, v in hooks.items():
        print(f"| {name} | {ms(v, 2 if 'each' in name else 1):.1f} |")
    for name in CALLS:
        per = 2 if name == "log_epoch" else 1
        print(f"| - {name} | {ms(calls[name], per):.1f} |")
    print(f"| **per trial** | **{total:.1f}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
