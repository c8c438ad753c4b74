"""How good is the tiny generator on the phantom? Fine-tune it on the demo's training split, sample
the synthetic class at several guidance scales, and compare with real images.

Measured, side by side in one run:

* fine-tune time (from the bundled base model, or ``--from-scratch``);
* the share of generated CNV images that a classifier trained on real phantom images (SimpleCNN,
  2,000 per class from a seed the demo never uses) calls CNV (goal >= 0.9);
* the generated images' pooled pixel mean and standard deviation vs the real CNV images' of the
  demo's test split (goal: within 10 %), and the per-pixel variance across images (diversity);
* sampling time per image.

Usage::

    python benchmarks/measure_generator.py [--guidance 1 2 3 4] [--n 200] [--steps 25]
        [--from-scratch] [--base-model DIR] [--max-steps N] [--home DIR] [--out results.json]

Single-threaded by default (``--threads``), as the numbers in base_model/TRAINING.md were taken.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ratio_search.config import DataConfig, FinetuneConfig, TrainConfig  # noqa: E402
from ratio_search.data import load_dataset, phantom_render_size  # noqa: E402
from ratio_search.data.imagefolder import pil_to_array  # noqa: E402
from ratio_search.data.phantom import render_phantom  # noqa: E402
from ratio_search.diffusion import finetune, load_model  # noqa: E402
from ratio_search.home import Home  # noqa: E402
from ratio_search.train.loop import evaluate, predict_proba, train_classifier  # noqa: E402

JUDGE_SEED = 7  # a phantom seed stream that neither the demo (seed 0) nor the base model uses


def phantom(n: int, cls: str, split: str, seed: int, size: int) -> np.ndarray:
    """Phantom images preprocessed exactly as the data loader does (render, then box-reduce)."""
    raw = render_phantom(n, cls, seed=seed, split=split, size=phantom_render_size(size))
    return np.stack([pil_to_array(Image.fromarray(im), size, 1) for im in raw])


def intensity(x: np.ndarray) -> dict[str, float]:
    """Pooled pixel mean and sd in [0, 1], and the mean per-pixel variance across images."""
    f = x.astype(np.float64) / 255.0
    return {
        "mean": round(float(f.mean()), 4),
        "sd": round(float(f.std()), 4),
        "pixel_var_across_images": round(float(f.var(axis=0).mean()), 4),
    }


def train_judge(size: int, n_per_class: int, seed: int) -> tuple[torch.nn.Module, dict, np.ndarray]:
    """A SimpleCNN trained on real phantom images only; returns it, its val metrics, real CNV."""
    xs, ys, vx, vy = [], [], [], []
    for k, cls in enumerate(("CNV", "NORMAL")):
        xs.append(phantom(n_per_class, cls, "train", seed, size))
        ys.append(np.full(n_per_class, k, dtype=np.int64))
        vx.append(phantom(300, cls, "val", seed, size))
        vy.append(np.full(300, k, dtype=np.int64))
    cfg = TrainConfig(epochs=10, batch_size=64, lr=1e-3, seed=0, device="cpu")
    res = train_classifier(
        np.concatenate(xs),
        np.concatenate(ys),
        np.concatenate(vx),
        np.concatenate(vy),
        cfg,
        n_classes=2,
    )
    return res.model, res.metrics, xs[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0])
    ap.add_argument("--n", type=int, default=200, help="generated CNV images per guidance")
    ap.add_argument("--steps", type=int, default=25, help="sampling steps")
    ap.add_argument("--scheduler", default="ddim")
    ap.add_argument(
        "--samplers", nargs="+", metavar="SCHEDULER:STEPS",
        help="compare these samplers (e.g. ddim:25 dpm-solver++:10); default: --scheduler:--steps",
    )  # fmt: skip
    ap.add_argument(
        "--eta", type=float, nargs="+", help="DDIM eta values to compare (default: the model's)"
    )
    ap.add_argument("--from-scratch", action="store_true", help="fine-tune without the base model")
    ap.add_argument("--base-model", help="another tiny base model folder")
    ap.add_argument("--max-steps", type=int, help="fine-tune steps (default: FinetuneConfig's)")
    ap.add_argument(
        "--only-steps", type=int, nargs="+",
        help="measure only these fine-tune steps (of --save-steps and the final)",
    )  # fmt: skip
    ap.add_argument("--lr", type=float, help="fine-tune learning rate (default: FinetuneConfig's)")
    ap.add_argument("--batch-size", type=int, help="fine-tune batch (default: FinetuneConfig's)")
    ap.add_argument(
        "--ema-decay", type=float, help="fine-tune EMA decay (default: FinetuneConfig's)"
    )
    ap.add_argument("--judge-n", type=int, default=2000, help="real images per class for the judge")
    ap.add_argument("--home", help="home for the data and model (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--save-steps", type=int, nargs="*", default=[],
        help="fine-tune checkpoints, each measured like the final model",
    )  # fmt: skip
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    home = Home(Path(args.home or tempfile.mkdtemp(prefix="measure-gen-")))
    data_cfg = DataConfig()  # the demo's default phantom data: 100 training images per class, 32 px
    data = load_dataset(data_cfg, home)
    size = data.image_size

    # threads: the fine-tune's own count (0 would take every core the job has, which on a shared
    # machine oversubscribes); save_steps: also keep the generator at these steps (a model each).
    ft = FinetuneConfig(
        from_scratch=args.from_scratch, base_model=args.base_model, device="cpu",
        threads=args.threads, save_steps=list(args.save_steps),
    )  # fmt: skip
    if args.max_steps:
        ft.max_steps = args.max_steps
    if args.lr:
        ft.lr = args.lr
    if args.batch_size:
        ft.batch_size = args.batch_size
    if args.ema_decay is not None:
        ft.ema_decay = args.ema_decay
    t0 = time.time()
    info = finetune(data, ft, home, progress=False)
    ft_wall = time.time() - t0
    stats = info.meta["training"]
    print(f"fine-tune: {stats['steps']} steps, {stats['seconds']:.1f} s (wall {ft_wall:.1f} s, "
          f"cached={info.cached}), loss {stats['first_loss']} -> {stats['final_loss']}")  # fmt: skip

    t0 = time.time()
    judge, judge_val, _ = train_judge(size, args.judge_n, JUDGE_SEED)
    test = evaluate(judge, data.test_x, data.test_y)
    print(f"judge: trained on {args.judge_n}/class in {time.time() - t0:.1f} s; "
          f"accuracy on the demo's real test split {test['accuracy']:.3f}")  # fmt: skip
    # the reference: the demo's real CNV test images (never seen by the judge or the generator)
    real_cnv = np.asarray(data.test_x[np.asarray(data.test_y) == 0])
    real = intensity(real_cnv)
    real_called = float((predict_proba(judge, real_cnv).argmax(1) == 0).mean())
    print(f"real CNV (demo test split, {len(real_cnv)}): mean {real['mean']:.3f} sd {real['sd']:.3f} "
          f"pixel-var {real['pixel_var_across_images']:.4f}; called CNV {real_called:.3f}")  # fmt: skip

    samplers = [(sch, int(st)) for sch, st in (x.rsplit(":", 1) for x in args.samplers)] \
        if args.samplers else [(args.scheduler, args.steps)]  # fmt: skip
    from ratio_search.diffusion.checkpoints import checkpoints_of

    # checkpoints_of maps 0 (and the final's own step count) to the final model: measured once
    models = {s: p for s, p in checkpoints_of(info.path, home).items() if s > 0}
    models[stats["steps"]] = Path(info.path)
    if args.only_steps:
        models = {s: p for s, p in models.items() if s in set(args.only_steps)}
    rows = []
    for at_step in sorted(models):
        model = load_model(models[at_step], home)
        etas = args.eta or [model.ddim_eta]
        for scheduler, steps in samplers:
            for g, eta in [(g, eta) for eta in etas for g in args.guidance]:
                model.ddim_eta = eta
                t0 = time.time()
                x = model.sample(args.n, 0, guidance=g, steps=steps, scheduler=scheduler, seed=0)
                secs = time.time() - t0
                called = float((predict_proba(judge, x).argmax(1) == 0).mean())
                st = intensity(x)
                row = {
                    "finetune_step": at_step,
                    "scheduler": scheduler,
                    "steps": steps,
                    "guidance": g,
                    "ddim_eta": eta,
                    "called_cnv": round(called, 4),
                    **st,
                    "mean_rel_err": round(abs(st["mean"] - real["mean"]) / real["mean"], 4),
                    "sd_rel_err": round(abs(st["sd"] - real["sd"]) / real["sd"], 4),
                    "seconds_per_image": round(secs / args.n, 4),
                }
                rows.append(row)
                print(f"step {at_step:>4} {scheduler}-{steps} guidance {g:>4} eta {eta:g}: "
                      f"called CNV {called:.3f}  mean {st['mean']:.3f} "
                      f"({100 * row['mean_rel_err']:.1f} % off)  sd {st['sd']:.3f} "
                      f"({100 * row['sd_rel_err']:.1f} % off)  pixel-var "
                      f"{st['pixel_var_across_images']:.4f}  {row['seconds_per_image']:.3f} s/image",
                      flush=True)  # fmt: skip
    result = {
        "model_path": str(info.path),
        "model_hash": info.hash,
        "from_scratch": args.from_scratch,
        "base_hash": info.meta.get("base_hash"),
        "finetune": {
            k: stats.get(k)
            for k in (
                "steps",
                "seconds",
                "seconds_per_step",
                "first_loss",
                "final_loss",
                "batch_size",
            )
        }
        | {"lr": ft.lr, "ema_decay": ft.ema_decay},  # fmt: skip
        "judge": {
            "n_per_class": args.judge_n,
            "val_accuracy": round(judge_val["accuracy"], 4),
            "test_accuracy": round(test["accuracy"], 4),
            "real_cnv_called_cnv": round(real_called, 4),
        },  # fmt: skip
        "real_cnv": real,
        "sampling": {
            "n": args.n,
            "samplers": [f"{sch}:{st}" for sch, st in samplers],
            "threads": args.threads,
        },
        "rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
