"""k seeds of one trial trained together (one vectorised model) vs the same seeds one after another.

Both sides train the study's SimpleCNN (16/32/64, FC 128) on the same uint8 tensors (a trial's
size: ``--n`` training and ``--n-val`` validation images at 32 px, batch 32) for ``--epochs``
epochs, validating after each: ``together`` is ``train.multi.train_seeds_tensors`` (k > 1),
``alone`` is ``train.loop.train_classifier`` once per seed. They run alternately in one process
(same machine load); the table gives the medians and their ratio, and the largest difference
between a seed trained together and the same seed alone (final validation loss, accuracy, and
any weight) — the float-summation-order difference the docs state.

    .venv/bin/python benchmarks/bench_seeds.py [--ks 1 4 8] [--epochs 2] [--reps 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from ratio_search.config import TrainConfig
from ratio_search.train.loop import train_classifier
from ratio_search.train.multi import train_seeds_tensors

try:
    from bench_trainer import make_data
except ImportError:  # run from the repository root
    from benchmarks.bench_trainer import make_data


def alone(x, y, vx, vy, cfg, seeds):
    return [
        train_classifier(x, y, vx, vy, dataclasses.replace(cfg, seed=s), n_classes=2) for s in seeds
    ]


def together(x, y, vx, vy, cfg, seeds):
    """(k = 1 is handed to train_classifier itself: the single-seed path stays the reference.)"""
    return train_seeds_tensors([x] * len(seeds), [y] * len(seeds), vx, vy, cfg, seeds, n_classes=2)


def max_diff(a, b) -> dict[str, float]:
    w = max(
        (p - q).abs().max().item()
        for ra, rb in zip(a, b, strict=True)
        for p, q in zip(ra.model.state_dict().values(), rb.model.state_dict().values(), strict=True)
    )
    loss = max(
        abs(ra.metrics["val_loss"] - rb.metrics["val_loss"]) for ra, rb in zip(a, b, strict=True)
    )
    acc = max(
        abs(ra.metrics["accuracy"] - rb.metrics["accuracy"]) for ra, rb in zip(a, b, strict=True)
    )
    return {"weights": w, "val_loss": loss, "accuracy": acc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--n-val", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, y, vx, vy = make_data(args.n, args.n_val, 32)
    cfg = TrainConfig(epochs=args.epochs, batch_size=32, lr=1e-3)
    print(f"{args.n} train / {args.n_val} val images, 32 px, batch 32, {args.epochs} epochs, "
          f"{args.threads} thread(s), {args.reps} alternating repetitions (medians)")  # fmt: skip
    print(
        "| k | together (s) | one after another (s) | speed-up | max diff: weights / val loss / accuracy |"
    )
    print("|---|---|---|---|---|")
    for k in args.ks:
        seeds = list(range(k))
        ta, tb, diff = [], [], None
        for _ in range(args.reps):
            t0 = time.perf_counter()
            rt = together(x, y, vx, vy, cfg, seeds)
            ta.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rs = alone(x, y, vx, vy, cfg, seeds)
            tb.append(time.perf_counter() - t0)
            diff = max_diff(rt, rs)
        a, b = statistics.median(ta), statistics.median(tb)
        print(f"| {k} | {a:.2f} | {b:.2f} | {b / a:.2f}x | {diff['weights']:.1e} / "
              f"{diff['val_loss']:.1e} / {diff['accuracy']:.4f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
