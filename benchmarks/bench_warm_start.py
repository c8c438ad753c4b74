"""Warm start for trials: does importing torch in Ray workers ahead of time make the first trial's
actor start faster? Side by side, each arm in a fresh private Ray (its own subprocess):

* ``cold``: create an actor (as Tune does for a trial, ``num_cpus=1``) and time until a method
  that imports torch returns;
* ``warm tasks``: first run one Ray task per CPU that imports torch (what a warm-up launched
  right after ``ray.init`` would do while the pools are built), wait for them, then the actor;
  records whether the actor landed in one of the warmed worker processes (same pid);
* ``setup hook``: ``runtime_env={"worker_process_setup_hook": ...}`` importing torch in every
  worker as it starts, then the actor.

Tune's trials are actors (``reuse_actors=True`` keeps one per concurrency slot), so a warm-up
helps only if a warmed worker process is handed to the actor.

    .venv/bin/python benchmarks/bench_warm_start.py --reps 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def torch_import_hook() -> None:
    import torch  # noqa: F401


def arm(kind: str) -> dict:
    import ray

    kw = {"runtime_env": {"worker_process_setup_hook": torch_import_hook}} if kind == "hook" else {}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, **kw)

    @ray.remote(num_cpus=1)
    def warm() -> int:
        import torch  # noqa: F401

        return os.getpid()

    @ray.remote(num_cpus=1)
    class Trial:
        def ready(self) -> tuple[int, float]:
            t = time.perf_counter()
            import torch  # noqa: F401

            return os.getpid(), time.perf_counter() - t

    warm_pids: list[int] = []
    if kind == "tasks":
        warm_pids = ray.get([warm.remote() for _ in range(2)])
    t = time.perf_counter()
    pid, import_s = ray.get(Trial.remote().ready.remote())
    out = {"actor_ready_s": time.perf_counter() - t, "import_in_actor_s": import_s,
           "actor_in_warmed_worker": pid in warm_pids}  # fmt: skip
    ray.shutdown()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--arm", help=argparse.SUPPRESS)  # the subprocess side
    args = ap.parse_args(argv)
    if args.arm:
        print(json.dumps(arm(args.arm)))
        return 0
    res: dict[str, list[dict]] = {"cold": [], "tasks": [], "hook": []}
    for _ in range(args.reps):
        for kind in res:  # alternated, so that load changes hit every arm
            p = subprocess.run([sys.executable, __file__, "--arm", kind], capture_output=True,
                               text=True, check=True)  # fmt: skip
            res[kind].append(json.loads(p.stdout.strip().splitlines()[-1]))
    names = {"cold": "cold actor", "tasks": "after warm-up tasks", "hook": "setup hook"}
    print(f"\nmedian of {args.reps}\n")
    print("| arm | actor ready s | torch import inside the actor s | actor in a warmed worker |")
    print("|---|---|---|---|")
    for kind, rows in res.items():
        ready = statistics.median(r["actor_ready_s"] for r in rows)
        imp = statistics.median(r["import_in_actor_s"] for r in rows)
        reused = sum(r["actor_in_warmed_worker"] for r in rows)
        print(f"| {names[kind]} | {ready:.2f} | {imp:.2f} | "
              f"{f'{reused} / {len(rows)}' if kind == 'tasks' else '-'} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
