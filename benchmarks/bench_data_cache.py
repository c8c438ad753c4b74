"""Data cache: the second load of an image folder (memory-mapped cache) vs the first (decode).

Writes a phantom image folder (64 px PNGs) once, then times ``load_dataset`` with a cold cache
(decode + resize + write the cache) and with a warm one (memory-map the cached ``.npy`` files and
list the folder's files to check the key), alternating repetitions with a fresh cache directory
for every cold run. Also times touching every cached pixel once (``np.asarray(...).sum()``), so
that the warm figure is not just the cost of opening memory maps.

    nice -n 10 .venv/bin/python benchmarks/bench_data_cache.py --n-per-class 1000
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ratio_search.config import DataConfig  # noqa: E402
from ratio_search.data import load_dataset  # noqa: E402
from ratio_search.data.phantom import write_phantom_folder  # noqa: E402
from ratio_search.home import Home  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n-per-class", type=int, default=1000, help="training images per class")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-data-cache-"))
    try:
        n = args.n_per_class
        folder = write_phantom_folder(
            work / "phantom", n, max(1, n // 10), max(1, n // 10), seed=0, size=64
        )
        n_files = len(list(folder.rglob("*.png")))
        cfg = DataConfig(
            source="imagefolder", path=str(folder), image_size=args.image_size, min_val_per_class=1
        )
        cold, warm, touch = [], [], []
        for rep in range(args.reps):
            home = Home(work / f"home{rep}")
            t = time.perf_counter()
            first = load_dataset(cfg, home)
            cold.append(time.perf_counter() - t)
            assert first.info["cache"] == "miss"
            t = time.perf_counter()
            second = load_dataset(cfg, home)
            warm.append(time.perf_counter() - t)
            assert second.info["cache"] == "hit"
            t = time.perf_counter()
            total = sum(
                int(np.asarray(getattr(second, k)).sum()) for k in ("train_x", "val_x", "test_x")
            )
            touch.append(time.perf_counter() - t)
            assert total == sum(
                int(np.asarray(getattr(first, k)).sum()) for k in ("train_x", "val_x", "test_x")
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    c, w, r = statistics.median(cold), statistics.median(warm), statistics.median(touch)
    print(
        f"\nimage folder of {n_files} PNGs (64 px -> {args.image_size} px), median of {args.reps}\n"
    )
    print("| load | time | |")
    print("|---|---|---|")
    print(f"| first (decode + cache) | {c:.3f} s | |")
    print(f"| second (cached, memory-mapped) | {w:.3f} s | {c / w:.0f}x faster |")
    print(f"| second + reading every pixel once | {w + r:.3f} s | {c / (w + r):.0f}x faster |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
