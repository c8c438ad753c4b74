"""Validating every N-th epoch (``train.val_every``) vs every epoch, side by side in one run.

The demo's trial training (the quick space: R = 0, 16 epochs, batch 32, lr 2e-3, SimpleCNN
16/32/64 + FC 128, the phantom's 100 training images per class and 600 validation images at
32 px), at ``val_every`` 1 (every epoch, the default), 4 and 8; the arms alternate, one thread.
Prints the median seconds per training, the speed-up over ``val_every = 1`` and the largest
difference of the final validation metrics from it (the weights do not depend on validation, so
it must be 0).

    .venv/bin/python benchmarks/bench_val_every.py [--reps 3] [--every 1 4 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ratio_search.config import DataConfig, TrainConfig  # noqa: E402
from ratio_search.data import load_dataset  # noqa: E402
from ratio_search.home import Home  # noqa: E402
from ratio_search.train.trial import run_trial  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--every", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--epochs", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)  # a search trial's share at two trials on two cores
    with tempfile.TemporaryDirectory(prefix="bench-val-every-") as tmp:
        data = load_dataset(DataConfig(), Home(Path(tmp)))

        def cfg(n: int) -> TrainConfig:
            return TrainConfig(epochs=args.epochs, batch_size=32, lr=2e-3, seed=0, val_every=n)

        run_trial(cfg(1), data, None)  # warm-up: lazy imports, first-call kernels
        times: dict[int, list[float]] = {n: [] for n in args.every}
        finals: dict[int, dict] = {}
        for _ in range(args.reps):
            for n in args.every:
                t = time.perf_counter()
                out = run_trial(cfg(n), data, None)
                times[n].append(time.perf_counter() - t)
                finals[n] = out["metrics"]
    base = statistics.median(times[args.every[0]])
    ref = finals[args.every[0]]
    print(
        f"R = 0, {args.epochs} epochs, {len(data.train_y)} training / {len(data.val_y)} "
        f"validation images at {data.image_size} px, one thread, medians of {args.reps}\n"
    )
    print(
        "| val_every | validations | s per training | speed vs val_every 1 | final metrics diff |"
    )
    print("|---|---|---|---|---|")
    for n in args.every:
        med = statistics.median(times[n])
        diff = max(abs(float(finals[n][k]) - float(ref[k])) for k in ("val_loss", "accuracy"))
        n_val = len({*range(n, args.epochs + 1, n), args.epochs})
        print(f"| {n} | {n_val} | {med:.2f} | {base / med:.2f}x | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
