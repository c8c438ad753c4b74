"""Samplers side by side: DPM-Solver++ at 10 and 25 steps vs DDIM at 25 and 50, and the
straightforward per-image loop (one image at a time, conditional and unconditional passes as two
forwards) vs the batched sampler (a batch of images, both passes in one forward over 2B).

Every arm samples the same ``--n`` CNV images (image i starts from the same noise in every arm,
so arms are paired image by image) from one tiny model (default: the bundled base model, with the
deterministic DDIM eta = 0 that fine-tuned models use). Measured in one run:

* images/s of each arm (batched, ``--batch-size``), and of the per-image loop on ``--loop-n``
  images (DDIM, the first arm's steps), with the largest pixel difference between the two;
* the quality figures of ``benchmarks/measure_generator.py``: the share called CNV by a judge
  trained on real phantom images only, the pooled pixel mean and sd vs held-out real CNV images,
  and the Fréchet distance (judge's penultimate features) to held-out real CNV images; the FD of
  a second real set gives the floor;
* paired bootstrap intervals (over images) of DPM++-10 minus DDIM-25 for the called share and FD;
* ``torch.no_grad`` (the sampler's decorator) vs ``torch.inference_mode`` around sampling.

    nice -n 10 .venv/bin/python benchmarks/bench_sampler.py --n 200 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from measure_generator import JUDGE_SEED, intensity, phantom, train_judge  # noqa: E402

from ratio_search.diffusion.base import image_seed, make_sampler  # noqa: E402
from ratio_search.diffusion.tiny import BASE_DIR, TinyModel  # noqa: E402
from ratio_search.quality.features import FeatureExtractor  # noqa: E402
from ratio_search.quality.metrics import frechet_distance  # noqa: E402
from ratio_search.train.loop import predict_proba  # noqa: E402

ARMS = (("ddim", 25), ("ddim", 50), ("dpm-solver++", 10), ("dpm-solver++", 25))


@torch.no_grad()
def per_image_loop(model: TinyModel, n: int, guidance: float, steps: int, seed: int) -> np.ndarray:
    """The straightforward sampler: one image at a time, two forward passes per step (DDIM)."""
    shape = (model.channels, model.image_size, model.image_size)
    null = len(model.class_names)
    cond_label, null_label = torch.tensor([0]), torch.tensor([null])
    out = []
    for i in range(n):
        sched = make_sampler("ddim", model.scheduler_config)
        sched.set_timesteps(steps)
        g = torch.Generator().manual_seed(image_seed(seed, i))
        x = torch.randn(shape, generator=g)[None] * sched.init_noise_sigma
        for t in sched.timesteps:
            cond = model.unet(x, t, class_labels=cond_label).sample
            uncond = model.unet(x, t, class_labels=null_label).sample
            x = sched.step(uncond + guidance * (cond - uncond), t, x).prev_sample
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy())
    return np.concatenate(out)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def quality(x, judge, feats, real, real_feats) -> dict:
    st = intensity(x)
    fx = feats.features(x)
    return {
        "called_cnv": round(float((predict_proba(judge, x).argmax(1) == 0).mean()), 4),
        "mean_rel_err": round(abs(st["mean"] - real["mean"]) / real["mean"], 4),
        "sd_rel_err": round(abs(st["sd"] - real["sd"]) / real["sd"], 4),
        "fd": round(frechet_distance(real_feats, fx), 3),
        "_called": predict_proba(judge, x).argmax(1) == 0,
        "_feats": fx,
    }


def paired_bootstrap(a: dict, b: dict, real_feats, reps: int, seed: int = 0) -> dict:
    """95 % intervals of (a - b) for the called share and FD, resampling image indices jointly."""
    rng = np.random.default_rng(seed)
    n = len(a["_called"])
    d_called, d_fd = [], []
    for _ in range(reps):
        idx = rng.integers(0, n, n)
        d_called.append(a["_called"][idx].mean() - b["_called"][idx].mean())
        d_fd.append(
            frechet_distance(real_feats, a["_feats"][idx])
            - frechet_distance(real_feats, b["_feats"][idx])
        )
    q = lambda v: [round(float(x), 4) for x in np.percentile(v, [2.5, 97.5])]  # noqa: E731
    return {
        "called_diff": round(float(a["_called"].mean() - b["_called"].mean()), 4),
        "called_diff_ci95": q(d_called),
        "fd_diff": round(a["fd"] - b["fd"], 3),
        "fd_diff_ci95": q(d_fd),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(BASE_DIR), help="a tiny model folder (default: base)")
    ap.add_argument("--n", type=int, default=200, help="CNV images per arm")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--loop-n", type=int, default=16, help="images for the per-image loop")
    ap.add_argument("--judge-n", type=int, default=1000, help="real images per class, judge")
    ap.add_argument("--bootstrap", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--pair-only", action="store_true",
        help="only DPM++-10 vs DDIM-25 (their figures and bootstrap), no DDIM-50, DPM++-25, loop",
    )  # fmt: skip
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = TinyModel.load(args.model)
    model.ddim_eta = 0.0  # what fine-tuned tiny models sample with (tiny_unet.DDIM_ETA)
    size = model.image_size
    judge, judge_val, _ = train_judge(size, args.judge_n, JUDGE_SEED)
    feats = FeatureExtractor(judge, {"image_shape": [1, size, size], "fc": 128})
    real_x = phantom(args.n, "CNV", "test", JUDGE_SEED, size)  # held out: not the judge's split
    real_x2 = phantom(args.n, "CNV", "val", JUDGE_SEED + 1, size)  # a second real set: the floor
    real, real_feats = intensity(real_x), feats.features(real_x)
    floor = quality(real_x2, judge, feats, real, real_feats)
    print(f"judge val accuracy {judge_val['accuracy']:.3f}; real CNV called {floor['called_cnv']}, "
          f"FD real-vs-real {floor['fd']}")  # fmt: skip

    def sample(sched: str, steps: int, n: int = args.n):
        return model.sample(n, 0, args.guidance, steps, sched, seed=0, batch_size=args.batch_size)

    arms = (("ddim", 25), ("dpm-solver++", 10)) if args.pair_only else ARMS
    rows, images = [], {}
    for sched, steps in arms:
        x, secs = timed(lambda s=sched, k=steps: sample(s, k))
        images[(sched, steps)] = x
        q = quality(x, judge, feats, real, real_feats)
        rows.append({"scheduler": sched, "steps": steps, "images_per_s": round(args.n / secs, 2),
                     **q})  # fmt: skip
        print(f"{sched:>12} {steps:>3} steps: {args.n / secs:6.2f} img/s  called {q['called_cnv']}"
              f"  mean {q['mean_rel_err']:.3f} sd {q['sd_rel_err']:.3f} off  FD {q['fd']}")  # fmt: skip
    ref = images.get(("ddim", 50))
    for r in rows:
        r["mae_to_ddim50"] = None if ref is None else round(
            float(np.abs(images[(r["scheduler"], r["steps"])] - ref.astype(np.float64)).mean()), 3
        )  # fmt: skip
    by = {(r["scheduler"], r["steps"]): r for r in rows}
    boot = {
        f"{s}-{k} minus ddim-25": paired_bootstrap(by[(s, k)], by[("ddim", 25)], real_feats, args.bootstrap)
        for s, k in (("dpm-solver++", 10), ("dpm-solver++", 25), ("ddim", 50)) if (s, k) in by
    }  # fmt: skip
    if args.pair_only:
        for r in rows:
            r.pop("_called"), r.pop("_feats")
        floor.pop("_called"), floor.pop("_feats")
        for r in rows:
            print(f"| {r['scheduler']} | {r['steps']} | {r['images_per_s']} | {r['called_cnv']} | "
                  f"{100 * r['mean_rel_err']:.1f} % | {100 * r['sd_rel_err']:.1f} % | {r['fd']} |")  # fmt: skip
        for name, b in boot.items():
            print(f"{name}: called {b['called_diff']:+} {b['called_diff_ci95']}, "
                  f"FD {b['fd_diff']:+} {b['fd_diff_ci95']}")  # fmt: skip
        result = {"model": args.model, "n": args.n, "guidance": args.guidance,
                  "threads": args.threads, "batch_size": args.batch_size,
                  "judge_val_accuracy": round(judge_val["accuracy"], 4), "real_floor": floor,
                  "rows": rows, "bootstrap": boot}  # fmt: skip
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2))
        return

    first = ARMS[0]
    loop_x, loop_s = timed(lambda: per_image_loop(model, args.loop_n, args.guidance, first[1], 0))
    batched_rate = by[first]["images_per_s"]
    loop = {
        "images": args.loop_n,
        "images_per_s": round(args.loop_n / loop_s, 3),
        "batched_over_loop": round(batched_rate / (args.loop_n / loop_s), 2),
        "dpm10_batched_over_loop": round(
            by[("dpm-solver++", 10)]["images_per_s"] / (args.loop_n / loop_s), 2
        ),
        "max_pixel_diff_vs_batched": int(
            np.abs(loop_x.astype(int) - images[first][: args.loop_n].astype(int)).max()
        ),
    }
    # no_grad (as the sampler runs) vs inference_mode, alternated, on one batch
    k = min(args.n, args.batch_size)
    t_ng, t_im = [], []
    for _ in range(2):
        t_ng.append(timed(lambda: sample(*first, n=k))[1])
        with torch.inference_mode():
            t_im.append(timed(lambda: sample(*first, n=k))[1])
    inference = {"images": k, "no_grad_s": round(min(t_ng), 3), "inference_mode_s": round(min(t_im), 3),
                 "no_grad_over_inference_mode": round(min(t_ng) / min(t_im), 3)}  # fmt: skip

    for r in rows:
        r.pop("_called"), r.pop("_feats")
    floor.pop("_called"), floor.pop("_feats")
    print("\n| sampler | steps | images/s | called CNV | mean off | sd off | FD to real | "
          "mean abs pixel diff to DDIM-50 |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for r in rows:
        print(f"| {r['scheduler']} | {r['steps']} | {r['images_per_s']} | {r['called_cnv']} | "
              f"{100 * r['mean_rel_err']:.1f} % | {100 * r['sd_rel_err']:.1f} % | {r['fd']} | "
              f"{r['mae_to_ddim50']} |")  # fmt: skip
    print(f"| real (second held-out set) | | | {floor['called_cnv']} | "
          f"{100 * floor['mean_rel_err']:.1f} % | {100 * floor['sd_rel_err']:.1f} % | {floor['fd']} | |")  # fmt: skip
    for name, b in boot.items():
        print(f"{name}: called {b['called_diff']:+} {b['called_diff_ci95']}, "
              f"FD {b['fd_diff']:+} {b['fd_diff_ci95']}")  # fmt: skip
    print(f"per-image loop (DDIM {first[1]}, two forwards per step): {loop['images_per_s']} img/s; "
          f"batched DDIM-{first[1]} is {loop['batched_over_loop']}x, batched DPM++-10 "
          f"{loop['dpm10_batched_over_loop']}x; largest pixel difference {loop['max_pixel_diff_vs_batched']}")  # fmt: skip
    print(f"no_grad / inference_mode time ({k} images): {inference['no_grad_over_inference_mode']}")
    result = {"model": args.model, "n": args.n, "guidance": args.guidance, "threads": args.threads,
              "batch_size": args.batch_size, "judge_val_accuracy": round(judge_val["accuracy"], 4),
              "real_floor": floor, "rows": rows, "bootstrap": boot, "loop": loop,
              "inference_mode": inference}  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
