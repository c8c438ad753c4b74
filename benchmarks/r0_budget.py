"""Where R = 0 converges on the phantom: validation accuracy by epoch, per (batch size, lr).

For each setting, ``--seeds`` seeds of the R = 0 trial (no synthetic data, the bundled spaces'
phantom: 100 real images per class at 32 px, 300 validation images per class) are trained
together (``train_seeds``) up to the largest epoch asked for; the accuracy after each listed epoch
is read from the same runs (a run of 2E epochs passes through the run of E). Prints, per setting
and epoch: mean ± sd over seeds, the seed-to-seed sd, and the paired gain of doubling the budget
(mean and 95 % t-interval over seeds) — the rule of ``search/calibrate.py``.

    .venv/bin/python benchmarks/r0_budget.py [--seeds 6] [--threads 1]
        [--settings 32:0.002:32 32:0.001:64 128:0.001:128]   # batch:lr:max_epochs
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from scipy import stats

from ratio_search.config import DataConfig, TrainConfig
from ratio_search.data import load_dataset
from ratio_search.home import Home
from ratio_search.train.trial import train_seeds

CHECK = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--home", default=None, help="ratio-search home (default: a temp folder)")
    ap.add_argument(
        "--settings", nargs="+", default=["32:0.002:32", "32:0.001:64", "128:0.001:128"]
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import tempfile

    home = Home.resolve(args.home or tempfile.mkdtemp(prefix="rs-r0-"))
    data = load_dataset(DataConfig(), home)
    seeds = list(range(args.seeds))
    print(f"phantom: {len(data.train_y)} train, {len(data.val_y)} val images; seeds {seeds}")
    print("| batch | lr | epochs | val accuracy (mean ± sd) | gain of 2x epochs [95 % CI] |")
    print("|---|---|---|---|---|")
    for spec in args.settings:
        bs, lr, emax = spec.split(":")
        cfg = TrainConfig(batch_size=int(bs), lr=float(lr), epochs=int(emax), threads=args.threads)
        t0 = time.time()
        out = train_seeds(cfg, data, None, seeds)
        acc = np.array([[h["accuracy"] for h in r["history"]] for r in out["per_seed"]])  # (s, e)
        for e in [c for c in CHECK if c <= int(emax)]:
            a = acc[:, e - 1]
            gain = ""
            if 2 * e <= int(emax):
                d = acc[:, 2 * e - 1] - a
                half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
                gain = f"{d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]"
            print(f"| {bs} | {lr} | {e} | {a.mean():.3f} ± {a.std(ddof=1):.3f} | {gain} |")
        print(f"<!-- {spec}: {time.time() - t0:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
