"""Confirmation runs side by side (``export --workers``) vs one after another, in one run.

A fabricated finished search (``ratio_search/evidence/testing.py``: the phantom at the quick
space's size, 100 training images per class at 32 px, 600 validation and 1,000 test images; a
"pool" of the CNV training images brightened, so the numbers say nothing about synthetic data;
trials at R = 0 and R = 0.5 (replace); the demo's classifier budget: 16 epochs, batch 32, lr 2e-3,
validation every 8th epoch) is confirmed as the demo's export does (3 seeds, up to 6 on the test
split, no MLflow), once per arm on its own copy:

* ``workers 1, torch default``: the runs one after another at torch's default thread count
  (what the export did before: each run on every core);
* ``workers 1``: one after another at the trials' thread count (1);
* ``workers N``: N processes at a time, 1 thread each (N = the job's cores by default).

Prints the seconds per arm, the speed-up over the first arm, the number of runs and whether each
arm's answer (the paired test-split interval) equals the ``workers 1`` arm's to the bit.

    .venv/bin/python benchmarks/bench_confirm_workers.py [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ratio_search.diffusion.threads import job_cores  # noqa: E402
from ratio_search.evidence.confirm import confirm  # noqa: E402
from ratio_search.evidence.runs import RunContext  # noqa: E402
from ratio_search.evidence.testing import fabricated_run  # noqa: E402
from ratio_search.home import Home  # noqa: E402

FIXED = {"epochs": 16, "batch_size": 32, "lr": 0.002, "val_every": 8, "pool_size": 100}


def one(template: Path, tmp: Path, arm: str, workers: int, threads: int) -> tuple[float, dict]:
    root = tmp / arm.replace(" ", "_").replace(",", "")
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(template, root)
    info_path = root / "runs" / "real" / "run.json"
    info = json.loads(info_path.read_text())
    # The trials' CPU share (run.json's options, as a search writes them): the runs' threads.
    info["options"] = {"resources": {"cpus_per_trial": max(1, threads)}}
    info_path.write_text(json.dumps(info))
    before = RunContext.threads
    if threads == 0:  # the export before: every run at torch's default thread count
        RunContext.threads = property(lambda self: 0)  # type: ignore[method-assign,assignment]
    try:
        t = time.perf_counter()
        out = confirm(Home(root), "real", top_k=1, n_seeds=3, max_seeds=6, confirm_r=[0.5],
                      track=False, workers=workers)  # fmt: skip
        return time.perf_counter() - t, out
    finally:
        RunContext.threads = before  # type: ignore[method-assign]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--workers", type=int, default=job_cores())
    args = ap.parse_args()
    arms = [("workers 1, torch default", 1, 0), ("workers 1", 1, 1),
            (f"workers {args.workers}", args.workers, 1)]  # fmt: skip
    times: dict[str, list[float]] = {a: [] for a, _, _ in arms}
    outs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-confirm-workers-") as d:
        tmp = Path(d)
        template = tmp / "template"
        fabricated_run(Home(template), fixed=FIXED)
        for _ in range(args.reps):
            for arm, workers, threads in arms:  # alternated, so that load changes hit every arm
                s, outs[arm] = one(template, tmp, arm, workers, threads)
                times[arm].append(s)
    ref = outs["workers 1"]["test"]
    base = statistics.median(times[arms[0][0]])
    print(f"\nconfirmation of a fabricated 2-trial search (3 seeds, up to 6 on the test split), "
          f"{job_cores()} cores, medians of {args.reps}\n")  # fmt: skip
    print("| arm | seconds | speed-up | runs | test-split interval = workers 1's |")
    print("|---|---|---|---|---|")
    for arm, _, _ in arms:
        out = outs[arm]
        runs = sum(c["val"]["val_accuracy"]["n"] for c in out["configurations"])  # every seed
        same = out["test"]["paired"] == ref["paired"]
        med = statistics.median(times[arm])
        print(f"| {arm} | {med:.1f} | {base / med:.2f}x | {runs} | {'yes' if same else 'no'} |")
    f = ref["paired"]["final"]
    print(f"\nworkers 1's interval: {f['diff']:+.4f} [{f['low']:+.4f}, {f['high']:+.4f}] over "
          f"{f['n_seeds']} seeds ({ref['paired']['reason']})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
