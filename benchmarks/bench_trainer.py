"""Trainer throughput vs a bare PyTorch loop on the same tensors and model (goal: ratio >= 0.9).

Both sides train the study's SimpleCNN (16/32/64, FC 128) from the same seed on the same uint8
tensors, already on the device, with the same normalisation, batch size and Adam settings, and
validate once per epoch. They are run alternately (A, B, A, B, ...) in one process so that both see
the same machine load; the medians and their ratio are printed as one markdown table row.

- ``trainer``: :func:`ratio_search.train.loop.train_classifier` with a ``report`` callback, as in a
  search trial (so it pays for the scikit-learn metrics and the per-epoch resumable state copy).
- ``bare``: the shortest loop that does the same job: randperm batches, forward, backward, step;
  per epoch a no-grad forward pass over the validation set and its accuracy.
- ``bare-train-only`` (also printed): the same loop without any validation, a lower bound.

Both validate in batches of ``train.loop.EVAL_BATCH_SIZE`` images. A second table compares that
evaluation batch with others on ``--eval-n`` validation images (alternating reps, the largest
logit difference to the 1,024-image batch alongside). A third (``layout``) times the trainer with
SimpleCNN's forward of now (channels-last convolutions, each block pooling before its ReLU)
against the v0.1 forward (the modules in order on NCHW tensors), on this run's training set and
on a demo trial's (200 training and 600 validation images, batch 32).

Throughput is training images per second (images x epochs / wall time).

    .venv/bin/python benchmarks/bench_trainer.py [--n 2000] [--size 32] [--epochs 2] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from ratio_search.config import TrainConfig
from ratio_search.home import resolve_device
from ratio_search.train import loop as train_loop
from ratio_search.train.cnn import SimpleCNN, normalize
from ratio_search.train.loop import EVAL_BATCH_SIZE, train_classifier


def make_data(n: int, n_val: int, size: int, seed: int = 0):
    """Two classes of noisy images, one with a brighter centre (content does not matter here)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 200, (n + n_val, 1, size, size)).astype(np.uint8)
    y = (np.arange(n + n_val) % 2).astype(np.int64)
    x[y == 1, :, size // 4 : -size // 4, size // 4 : -size // 4] += 40
    return x[:n], y[:n], x[n:], y[n:]


def bare_loop(x, y, vx, vy, cfg: TrainConfig, device: torch.device, validate: bool = True) -> None:
    """The reference: a plain PyTorch loop over device-resident uint8 tensors."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = SimpleCNN(x.shape[1], 2, x.shape[2])
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    vxt, vyt = torch.from_numpy(vx).to(device), torch.from_numpy(vy).to(device)
    for _ in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen).to(device)
        for i in range(0, len(xt), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = F.cross_entropy(model(normalize(xt[idx])), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if validate:
            model.eval()
            with torch.no_grad():
                pred = torch.cat(
                    [
                        model(normalize(vxt[i : i + EVAL_BATCH_SIZE])).argmax(1)
                        for i in range(0, len(vxt), EVAL_BATCH_SIZE)
                    ]
                )
            float((pred == vyt).float().mean())  # forces the work to finish, like .item()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer_run(x, y, vx, vy, cfg: TrainConfig, device: torch.device) -> None:
    train_classifier(x, y, vx, vy, cfg, n_classes=2, device=device, report=lambda e, m, s: None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def eval_batches(n_val: int, size: int, reps: int, device: torch.device) -> None:
    """Seconds to evaluate ``n_val`` images at several evaluation batch sizes, side by side."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SimpleCNN(1, 2, size).to(device)
    x = torch.from_numpy(make_data(8, n_val, size)[2]).to(device)
    sizes = (1024, 256, 128, 64)
    times: dict[int, list[float]] = {b: [] for b in sizes}
    logits: dict[int, torch.Tensor] = {}
    for rep in range(reps + 1):  # the first round warms up
        for b in sizes:
            train_loop.EVAL_BATCH_SIZE = b
            t0 = time.perf_counter()
            logits[b] = train_loop._logits(model, x, device)
            if rep:
                times[b].append(time.perf_counter() - t0)
    train_loop.EVAL_BATCH_SIZE = EVAL_BATCH_SIZE
    print(f"\n| eval batch ({n_val} val images {size} px) | median ms | speed vs 1024 | "
          "max abs logit diff vs 1024 |")  # fmt: skip
    print("|---|---|---|---|")
    ref = statistics.median(times[1024])
    for b in sizes:
        med = statistics.median(times[b])
        diff = float((logits[b] - logits[1024]).abs().max())
        mark = " (the trainer's)" if b == EVAL_BATCH_SIZE else ""
        print(f"| {b}{mark} | {1000 * med:.1f} | {ref / med:.2f}x | {diff:.1e} |")


def _v01_forward(self: SimpleCNN, x: torch.Tensor) -> torch.Tensor:
    """SimpleCNN's forward before the channels-last change: its modules in order (NCHW, ReLU
    then pool)."""
    return self.classifier(self.features(x))


def layout(sets: dict[str, tuple], reps: int, device: torch.device) -> None:
    """The trainer with SimpleCNN's forward of now (channels-last, pool before ReLU) against the
    v0.1 forward, alternating in this process; the largest weight difference after training."""
    now = SimpleCNN.forward
    print("\n| layout: training set | v0.1 forward s | now s | speed-up | max weight diff |")
    print("|---|---|---|---|---|")
    for label, (x, y, vx, vy, cfg) in sets.items():
        times: dict[str, list[float]] = {"v0.1": [], "now": []}
        weights: dict[str, list[torch.Tensor]] = {}
        for rep in range(reps + 1):  # the first round warms up
            for name, fwd in (("v0.1", _v01_forward), ("now", now)):
                SimpleCNN.forward = fwd
                t0 = time.perf_counter()
                res = train_classifier(x, y, vx, vy, cfg, n_classes=2, device=device)
                if rep:
                    times[name].append(time.perf_counter() - t0)
                weights[name] = list(res.model.state_dict().values())
        SimpleCNN.forward = now
        a, b = statistics.median(times["v0.1"]), statistics.median(times["now"])
        diff = max(float((p - q).abs().max()) for p, q in zip(*weights.values(), strict=True))
        print(f"| {label} | {a:.2f} | {b:.2f} | **{a / b:.2f}x** | {diff:.1e} |", flush=True)


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="training images")
    ap.add_argument("--n-val", type=int, default=400, help="validation images")
    ap.add_argument("--size", type=int, default=32, help="image size in pixels")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5, help="alternating repetitions of each side")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--eval-n", type=int, default=600, help="validation images, eval-batch table")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (shared machines: 1)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(resolve_device(args.device))
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=1e-3, seed=0)
    x, y, vx, vy = make_data(args.n, args.n_val, args.size)
    sides = {
        "trainer": lambda: timed(trainer_run, x, y, vx, vy, cfg, device),
        "bare": lambda: timed(bare_loop, x, y, vx, vy, cfg, device, True),
        "bare-train-only": lambda: timed(bare_loop, x, y, vx, vy, cfg, device, False),
    }
    for fn in sides.values():  # warm-up (allocator, kernels, first-call imports), not timed
        fn()
    times: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(args.reps):
        for name, fn in sides.items():
            times[name].append(fn())

    images = args.n * args.epochs
    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: images / v for k, v in med.items()}
    ratio = ips["trainer"] / ips["bare"]
    ratio_train_only = ips["trainer"] / ips["bare-train-only"]
    print(
        "| benchmark | device | setup | trainer img/s | bare loop img/s | ratio | "
        "bare train-only img/s | ratio vs train-only |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| trainer vs bare loop | {device} ({args.threads} thread(s)) | SimpleCNN 16/32/64, "
        f"{args.n} train + {args.n_val} val imgs {args.size} px, {args.epochs} epochs, batch "
        f"{args.batch_size}, median of {args.reps} alternating reps | {ips['trainer']:.0f} | "
        f"{ips['bare']:.0f} | **{ratio:.3f}** | {ips['bare-train-only']:.0f} | "
        f"{ratio_train_only:.3f} |"
    )
    spread = {k: f"{min(v):.2f}-{max(v):.2f}s" for k, v in times.items()}
    print(f"(raw times per side: {spread})")
    eval_batches(args.eval_n, args.size, args.reps, device)
    demo = make_data(200, 600, args.size)
    demo_cfg = TrainConfig(epochs=args.epochs, batch_size=32, lr=1e-3, seed=0)
    layout(
        {
            f"{args.n} + {args.n_val} images, batch {args.batch_size}": (x, y, vx, vy, cfg),
            "200 + 600 images, batch 32 (a demo trial)": (*demo, demo_cfg),
        },
        args.reps,
        device,
    )


if __name__ == "__main__":
    main()
