"""System metrics' cost per trial: the plain trial loop with the sampler on vs off.

The same trials (R = 0, phantom data, trial i uses seed i, one torch thread) run through
``trial_body`` with ``RATIO_SEARCH_SYSTEM_METRICS`` on and off, the two arms interleaved trial by
trial (on, off, then off, on, ...: each arm first half the time) so that a change of machine load
hits both. Prints the median time
per trial of each arm, their ratio (on / off; 1.00 = no cost) and the cost of one
``Sampler.sample()`` call measured on its own.

    .venv/bin/python benchmarks/bench_sysmetrics.py [--trials 6] [--epochs 3] [--per-class 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_orchestration import make_space  # noqa: E402

from ratio_search.home import Home  # noqa: E402
from ratio_search.search.space import parse_space  # noqa: E402
from ratio_search.search.sysmetrics import ENV_OFF, Sampler  # noqa: E402
from ratio_search.search.trainable import trial_body  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=6, help="trials per arm")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--image-size", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from ratio_search.data import load_dataset

    with tempfile.TemporaryDirectory() as tmp:
        home = Home(Path(tmp))
        space = parse_space(make_space(args.trials, args.epochs, args.image_size, args.per_class))
        data = load_dataset(space.data_config(), home)
        ctx = {"home": str(home.root), "space": space.to_dict(), "pool_n": 0,
               "model_path": None, "model_meta": None}  # fmt: skip
        times: dict[str, list[float]] = {"on": [], "off": []}
        sampled: list[dict] = []
        for seed in range(args.trials):
            for arm in ("on", "off") if seed % 2 == 0 else ("off", "on"):
                os.environ[ENV_OFF] = "1" if arm == "on" else "0"
                t0 = time.perf_counter()
                trial_body(dict(space.fixed, seed=seed), ctx, data,
                           report=lambda m, s: sampled.append(m.get("system") or {}))  # fmt: skip
                times[arm].append(time.perf_counter() - t0)
        os.environ.pop(ENV_OFF, None)
    s = Sampler("cpu")
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        s.sample()
    per_call = (time.perf_counter() - t0) / n
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    print(f"trials per arm {args.trials}, epochs {args.epochs}, {args.per_class} images per class")
    print(f"per trial, sampler on : {on:.3f} s (median)")
    print(f"per trial, sampler off: {off:.3f} s (median)")
    print(f"ratio on / off: {on / off:.3f}")
    print(f"one Sampler.sample(): {per_call * 1e3:.3f} ms; metrics per epoch: {len(sampled[0])}")


if __name__ == "__main__":
    main()
