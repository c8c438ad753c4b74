"""Run every benchmark in turn (what `make bench` does) and print their markdown results.

Each benchmark measures its ratio side by side in one process; this script only runs them one
after another, so that no two compete for the CPU. BENCHMARKS.md records the latest figures and
the command that made each one.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (script, arguments): modest sizes, so the whole set finishes in minutes on a laptop CPU.
BENCHMARKS: list[tuple[str, list[str]]] = [
    ("bench_trainer.py", ["--reps", "5"]),
    ("bench_val_every.py", ["--reps", "3"]),
    ("bench_confirm_workers.py", ["--reps", "2"]),
    ("bench_data_cache.py", ["--reps", "2", "--small-n", "0"]),
    ("bench_pool_cache.py", ["--n", "50", "--steps", "10", "--reps", "3"]),
    ("bench_orchestration.py", []),
    ("bench_tracking.py", ["--trials", "30"]),
]


def main() -> int:
    failed = []
    for script, args in BENCHMARKS:
        path = HERE / script
        if not path.exists():
            print(f"## {script}: missing, skipped\n")
            continue
        print(f"## {script} {' '.join(args)}", flush=True)
        t = time.perf_counter()
        rc = subprocess.call([sys.executable, str(path), *args])
        print(f"({time.perf_counter() - t:.0f} s, exit {rc})\n", flush=True)
        if rc != 0:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
