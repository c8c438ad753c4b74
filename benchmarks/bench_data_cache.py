"""Data cache: the second load of an image folder (memory-mapped cache) vs the first (decode).

Two folders, written once by the benchmark in the OCT2017 layout
(``train|val|test/{CNV,NORMAL}/CLASS-<patient>-<n>.ext``):

* ``oct``: ``--oct-n`` grayscale JPEGs of OCT size (512 x 496, quality 90): phantom B-scans
  enlarged, with per-file speckle, so that decoding costs what it costs on real scans;
* ``small``: ``--small-n`` 64 px phantom PNGs (decoding nearly free: listing dominates).

For each, ``load_dataset`` is timed with a cold cache (list, decode, resize to 32 px, write the
cache) and a warm one (list the files with ``os.scandir`` and their stat results, check the key,
memory-map the arrays), alternating repetitions with a fresh cache for every cold run. The warm
load is split into its listing part (``plan_image_folder``) and the rest; the listing is also timed
as it was before (``Path.iterdir`` + ``is_file`` + a second ``stat`` per file), side by side.

    nice -n 10 .venv/bin/python benchmarks/bench_data_cache.py --reps 3
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
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ratio_search.config import DataConfig  # noqa: E402
from ratio_search.data import (
    imagefolder,  # noqa: E402
    load_dataset,  # noqa: E402
)
from ratio_search.data.imagefolder import IMAGE_EXTENSIONS  # noqa: E402
from ratio_search.data.phantom import patient_file_name, render_phantom  # noqa: E402
from ratio_search.home import Home  # noqa: E402

OCT_SIZE = (512, 496)  # width x height of an OCT2017 B-scan
SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}


def write_folder(root: Path, n_total: int, oct_sized: bool) -> Path:
    """``n_total`` images over 3 splits x 2 classes; JPEGs of OCT size or 64 px PNGs."""
    rng = np.random.default_rng(0)
    for split, share in SPLITS.items():
        for cls in ("CNV", "NORMAL"):
            n = max(1, round(share * n_total / 2))
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i, img in enumerate(render_phantom(n, cls, seed=0, split=split, size=64)):
                name = patient_file_name(cls, split, i)
                if oct_sized:
                    big = np.asarray(Image.fromarray(img).resize(OCT_SIZE, Image.BILINEAR), float)
                    big = np.clip(big + rng.normal(0, 12, big.shape), 0, 255).astype(np.uint8)
                    Image.fromarray(big).save(folder / (Path(name).stem + ".jpeg"), quality=90)
                else:
                    Image.fromarray(img).save(folder / name)
    return root


def old_scan(folder: Path) -> list:
    """The listing as it was: iterdir + is_file per entry, sorted; the key then stat-ed each file."""
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    return [(p, p.stat()) for p in files]


def plan(root: Path, cfg: DataConfig, scan=None) -> float:
    """Seconds to list the folder and build the cache key's fingerprint (``scan``: the listing)."""
    saved = imagefolder.scan_images
    imagefolder.scan_images = scan or saved
    try:
        t = time.perf_counter()
        imagefolder.plan_image_folder(
            root, None, None, cfg.val_fraction, cfg.min_val_per_class, cfg.seed
        )
        return time.perf_counter() - t
    finally:
        imagefolder.scan_images = saved


def bench(root: Path, work: Path, reps: int, image_size: int) -> dict:
    cfg = DataConfig(source="imagefolder", path=str(root), image_size=image_size)
    cold, warm, plan_s, old, touch = [], [], [], [], []
    for rep in range(reps):
        home = Home(work / f"home-{root.name}-{rep}")
        t = time.perf_counter()
        first = load_dataset(cfg, home)
        cold.append(time.perf_counter() - t)
        assert first.info["cache"] == "miss"
        t = time.perf_counter()
        second = load_dataset(cfg, home)
        warm.append(time.perf_counter() - t)
        assert second.info["cache"] == "hit"
        plan_s.append(plan(root, cfg))
        old.append(plan(root, cfg, old_scan))
        t = time.perf_counter()
        total = sum(
            int(np.asarray(getattr(second, k)).sum()) for k in ("train_x", "val_x", "test_x")
        )
        touch.append(time.perf_counter() - t)
        assert total == sum(
            int(np.asarray(getattr(first, k)).sum()) for k in ("train_x", "val_x", "test_x")
        )
        shutil.rmtree(home.root)
    med = statistics.median
    return {"cold": med(cold), "warm": med(warm), "plan": med(plan_s), "old_listing": med(old),
            "touch": med(touch)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--oct-n", type=int, default=2000, help="OCT-sized JPEGs")
    ap.add_argument("--small-n", type=int, default=20000, help="64 px PNGs")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-data-cache-"))
    rows = []
    try:
        for name, n, oct_sized in (("oct", args.oct_n, True), ("small", args.small_n, False)):
            t = time.perf_counter()
            root = write_folder(work / name, n, oct_sized)
            files = sum(1 for p in root.rglob("*") if p.is_file())
            mb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6
            print(
                f"wrote {files} files ({mb:.0f} MB) in {time.perf_counter() - t:.1f} s", flush=True
            )
            if n > 0:
                rows.append((name, files, mb, bench(root, work, args.reps, args.image_size)))
                print_row(*rows[-1])  # as soon as measured: the small set takes much longer
            shutil.rmtree(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nmedian of {args.reps}; images resized to {args.image_size} px\n")
    print(HEADER)
    for row in rows:
        print_row(*row)
    return 0


HEADER = (
    "| folder | first load | second load | first / second | of which listing + key | "
    "listing as before / now | second + read every pixel |\n|---|---|---|---|---|---|---|"
)


def print_row(name: str, files: int, mb: float, r: dict) -> None:
    kind = "OCT-sized JPEGs" if name == "oct" else "64 px PNGs"
    print(f"| {files} {kind} ({mb:.0f} MB) | {r['cold']:.3f} s | {r['warm']:.3f} s | "
          f"**{r['cold'] / r['warm']:.1f}x** | {r['plan']:.3f} s | "
          f"{r['old_listing'] / r['plan']:.2f}x | {r['warm'] + r['touch']:.3f} s |", flush=True)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
