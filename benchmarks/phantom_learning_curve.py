"""Learning curve on the phantom OCT data: is the embedded default hard enough for the demo?

Trains the reference study's SimpleCNN (conv 16/32/64, FC 128, FC 2; Adam 1e-3, batch 64,
``max(10 epochs, 300 steps)``) on N real phantom images per class at 32 px, for several N and
seeds, and evaluates on held-out phantom test images. Synthetic data can only matter if a small
real set (100 per class) is clearly worse than a large one (2,000 per class).

The data goes through the real path: ``load_dataset`` with ``source: phantom`` writes the phantom
image folder (64 px renders) once, decodes it (2 x 2 box mean to 32 px) and caches it. For each
seed, N images per class are a seeded subset of the largest training set; the test set is the
same for every run.

    nice -n 10 .venv/bin/python benchmarks/phantom_learning_curve.py            # 100 vs 2000, 3 seeds
    .venv/bin/python benchmarks/phantom_learning_curve.py --sizes 50 100 200 500 2000 --seeds 3
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ratio_search.config import DataConfig, TrainConfig  # noqa: E402
from ratio_search.data import load_dataset  # noqa: E402
from ratio_search.home import Home  # noqa: E402
from ratio_search.train.loop import evaluate, train_classifier  # noqa: E402


def subset(y: np.ndarray, n_per_class: int, seed: int) -> np.ndarray:
    """Indices of a seeded choice of ``n_per_class`` images of every class (sorted)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC0DE]))
    idx = [
        rng.choice(np.flatnonzero(y == k), size=n_per_class, replace=False) for k in np.unique(y)
    ]
    return np.sort(np.concatenate(idx))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=[100, 2000], help="real images per class"
    )
    ap.add_argument("--seeds", type=int, default=3, help="seeds per size")
    ap.add_argument("--test-per-class", type=int, default=1000)
    ap.add_argument(
        "--val-per-class", type=int, default=100, help="per-epoch validation (not reported)"
    )
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--min-epochs", type=int, default=10)
    ap.add_argument("--min-steps", type=int, default=300)
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the phantom data")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (the machine is shared)"
    )
    ap.add_argument(
        "--home", help="ratio-search home for the phantom folder and cache (default: a temp dir)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    home = Home.resolve(args.home or tempfile.mkdtemp(prefix="phantom-curve-"))
    cfg = DataConfig(
        source="phantom",
        image_size=args.image_size,
        phantom_n_per_class=max(args.sizes),
        phantom_val_per_class=args.val_per_class,
        phantom_test_per_class=args.test_per_class,
        min_val_per_class=1,
        seed=args.data_seed,
    )
    t0 = time.perf_counter()
    ds = load_dataset(cfg, home)
    print(
        f"data: {ds.info['counts']} in {time.perf_counter() - t0:.1f} s ({home})", file=sys.stderr
    )
    train_x, train_y = np.asarray(ds.train_x), np.asarray(ds.train_y)
    val_x, val_y = np.asarray(ds.val_x), np.asarray(ds.val_y)
    test_x, test_y = np.asarray(ds.test_x), np.asarray(ds.test_y)

    rows = []
    for n in args.sizes:
        accs, secs = [], []
        steps_per_epoch = math.ceil(2 * n / args.batch_size)
        epochs = max(args.min_epochs, math.ceil(args.min_steps / steps_per_epoch))
        for seed in range(args.seeds):
            idx = subset(train_y, n, seed)
            tcfg = TrainConfig(
                epochs=epochs, batch_size=args.batch_size, lr=1e-3, seed=seed, device="cpu"
            )
            t = time.perf_counter()
            res = train_classifier(
                train_x[idx], train_y[idx], val_x, val_y, tcfg, n_classes=len(ds.class_names),
                positive_label=ds.synthetic_label,
            )  # fmt: skip
            secs.append(time.perf_counter() - t)
            acc = float(
                evaluate(res.model, test_x, test_y, positive_label=ds.synthetic_label)["accuracy"]
            )
            accs.append(acc)
            print(
                f"n={n} seed={seed} epochs={epochs} test acc={acc:.4f} ({secs[-1]:.1f} s)",
                file=sys.stderr,
            )
        rows.append(
            (
                n,
                epochs,
                epochs * steps_per_epoch,
                np.mean(accs),
                np.std(accs, ddof=1) if len(accs) > 1 else 0.0,
                np.mean(secs),
            )
        )

    print(
        f"\nSimpleCNN 16/32/64, Adam 1e-3, batch {args.batch_size}, {args.image_size} px, "
        f"{args.seeds} seeds, {args.test_per_class} test images per class (mean ± sd over seeds)\n"
    )
    print(
        f"| real images per class | epochs | steps | {args.image_size}x{args.image_size} test accuracy | time per run |"
    )
    print("|---|---|---|---|---|")
    for n, ep, st, m, sd, s in rows:
        print(f"| {n} | {ep} | {st} | {m:.3f} ± {sd:.3f} | {s:.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
