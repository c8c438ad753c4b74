"""Pool cache: what a trial pays to get its pool when it is cached (warm) vs when it must generate it.

Both sides call :func:`ratio_search.pools.get_pool` exactly as a trial does, on the same model and
settings, then copy the images into memory (what mixing does with them):

- ``cold``: the pool is missing (a fresh pool store each repetition): the model samples ``n``
  images, the pool is written to a temp directory and renamed into place under the file lock;
- ``warm``: the same call again: key, manifest read, memory-map, copy. No model call.

The generator is the real ``tiny`` backend with its default network (UNet2DModel, about 1.1 M
parameters), trained for a single step from scratch: sampling time depends on the network and the
number of steps, not on how well it was trained. Pass ``--model PATH`` to time a fine-tuned model.
Cold and warm are run alternately in one process (same machine load); medians and their ratio are
printed as markdown. With ``--epochs > 0`` it also times one whole trial (pool + mixing at R = 0.5 +
training the SimpleCNN on the phantom data) with a warm vs a cold pool.

    .venv/bin/python benchmarks/bench_pool_cache.py [--n 50] [--steps 10] [--reps 3] [--epochs 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ratio_search.config import DataConfig, FinetuneConfig, GenerateConfig, TrainConfig
from ratio_search.data import load_dataset
from ratio_search.diffusion import finetune, load_model
from ratio_search.home import Home, resolve_device
from ratio_search.pools import class_reference, get_pool, model_class_index


def timed_get(home: Home, model, gen: GenerateConfig, n: int, ref, index: int):
    t0 = time.perf_counter()
    pool = get_pool(home, model, gen, n, ref, index, progress=False)
    images = np.array(pool.images)  # into memory, as mixing will
    return time.perf_counter() - t0, pool, images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--n", type=int, default=50, help="images per pool (the trial at R=0.5 needs 50)"
    )
    ap.add_argument("--steps", type=int, default=10, help="sampling steps")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--postprocess", default="none", choices=["none", "histogram-match"])
    ap.add_argument("--size", type=int, default=32, help="image size")
    ap.add_argument("--reps", type=int, default=3, help="cold/warm repetitions")
    ap.add_argument("--epochs", type=int, default=3, help="trial epochs (0: skip the trial timing)")
    ap.add_argument("--model", help="a saved model folder (default: build an untrained tiny one)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        home = Home.resolve(Path(tmp) / "home")
        data_cfg = DataConfig(
            image_size=args.size,
            phantom_n_per_class=100,
            phantom_val_per_class=100,
            phantom_test_per_class=2,
        )
        data = load_dataset(data_cfg, home)
        if args.model:
            model = load_model(args.model, home)
            model_note = f"model {args.model}"
        else:
            ft = FinetuneConfig(from_scratch=True, max_steps=1, batch_size=8, device="cpu")
            info = finetune(data, ft, home, progress=False)
            model = load_model(info.path, home)
            model_note = "tiny backend, default UNet (untrained: 1 step)"
        n_params = (
            sum(p.numel() for p in model.unet.parameters()) if hasattr(model, "unet") else None
        )
        index = model_class_index(model, data)
        ref = class_reference(data)
        gen = GenerateConfig(
            guidance=args.guidance,
            steps=args.steps,
            postprocess=args.postprocess,
            device=device,
            batch_size=64,
        )

        cold, warm = [], []
        for rep in range(args.reps):
            rep_home = Home.resolve(Path(tmp) / f"rep{rep}")  # a fresh, empty pool store
            t_cold, pool, img_cold = timed_get(rep_home, model, gen, args.n, ref, index)
            assert pool.generated
            t_warm, pool2, img_warm = timed_get(rep_home, model, gen, args.n, ref, index)
            assert not pool2.generated and np.array_equal(img_cold, img_warm)
            cold.append(t_cold)
            warm.append(t_warm)
            print(f"rep {rep}: cold {t_cold:.3f} s, warm {t_warm * 1e3:.3f} ms")

        c, w = statistics.median(cold), statistics.median(warm)
        print()
        print(
            f"device: {device}; {model_note}" + (f", {n_params:,} parameters" if n_params else "")
        )
        print(f"pool: n={args.n}, {args.size}px, {args.steps} DDIM steps, guidance {args.guidance}, "
              f"postprocess {args.postprocess}; {args.reps} reps, medians")  # fmt: skip
        print()
        print("| what | cold (generate) | warm (cached) | cold / warm |")
        print("|---|---|---|---|")
        print(f"| get_pool + copy to memory | {c:.3f} s | {w * 1e3:.3f} ms | {c / w:,.0f}x |")

        if args.epochs > 0:
            from ratio_search.train.trial import run_trial

            # R = 0.5 replaces half of the 100 real synthetic-class images: needs n >= 50.
            r = min(0.5, args.n / 100)
            cfg = dataclasses.replace(
                TrainConfig(), r=r, epochs=args.epochs, batch_size=64, device=device
            )
            trial_cold, trial_warm = [], []
            for rep in range(args.reps):
                for kind in ("cold", "warm"):
                    rep_home = Home.resolve(Path(tmp) / f"trial{rep}")
                    t0 = time.perf_counter()
                    pool = get_pool(rep_home, model, gen, args.n, ref, index, progress=False)
                    assert pool.generated == (kind == "cold")
                    run_trial(cfg, data, pool.images)
                    (trial_cold if kind == "cold" else trial_warm).append(time.perf_counter() - t0)
            tc, tw = statistics.median(trial_cold), statistics.median(trial_warm)
            print(f"| whole trial (pool + mix R={r:g} + {args.epochs} epochs, 200 real) "
                  f"| {tc:.3f} s | {tw:.3f} s | {tc / tw:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
