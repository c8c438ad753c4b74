"""The tiny fine-tune on the CPU: steps/s of the real training loop (``tiny_train.train``) under
each variant, side by side in one run, at equal loss.

The demo's fine-tune (phantom, 100 training images per class at 32 px, from the bundled base,
batch 32, seed 0) for ``--steps`` steps per arm, arms alternated over ``--reps`` rounds:

* ``1 thread``: as ``benchmarks/measure_generator.py`` (and the issue's 0.38 s/step) measured it;
* ``job cores``: ``finetune.threads = 0``, the cores this job may use (``diffusion.threads``);
* ``channels-last``: job cores, the UNet's weights in channels-last memory format;
* ``torch.compile`` (``--compile``): job cores, the UNet's forward compiled (inductor); its first
  step includes the compilation, reported separately with the steps it takes to pay back.

Every arm draws the same batches, noise and timesteps (one seeded generator), so the losses must
agree up to floating-point summation order: the largest per-step difference from the first arm is
printed. Steady-state step time = median over steps after the first 3.

    nice -n 10 .venv/bin/python benchmarks/bench_finetune.py --steps 40 --reps 2 [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ratio_search.config import DataConfig, FinetuneConfig  # noqa: E402
from ratio_search.data import load_dataset  # noqa: E402
from ratio_search.diffusion import tiny_train  # noqa: E402
from ratio_search.diffusion.threads import job_cores, torch_threads  # noqa: E402
from ratio_search.diffusion.tiny import resolve  # noqa: E402
from ratio_search.home import Home  # noqa: E402


def build_variant(kind: str):
    """``tiny_train.build_unet`` with the arm's change applied (weights keep their names)."""
    original = tiny_train.build_unet

    def build(cfg, seed):
        unet = original(cfg, seed)
        if kind == "channels-last":
            unet = unet.to(memory_format=torch.channels_last)
        elif kind == "compile":
            unet.forward = torch.compile(unet.forward)
        return unet

    return build


def run_arm(data, kind: str, threads: int, steps: int, work: Path) -> dict:
    cfg = FinetuneConfig(max_steps=steps, checkpoint_every=10**6, device="cpu", threads=threads)
    resolved = resolve(data, cfg).config
    times, losses = [], []

    def cb(step: int, loss: float) -> None:
        times.append(time.perf_counter())
        losses.append(loss)

    saved = tiny_train.build_unet
    tiny_train.build_unet = build_variant(kind)
    out = Path(tempfile.mkdtemp(dir=work))
    try:
        with torch_threads(threads):
            t0 = time.perf_counter()
            tiny_train.train(data, cfg, resolved, out, progress=False, callback=cb)
    finally:
        tiny_train.build_unet = saved
    step_s = [b - a for a, b in zip(times, times[1:], strict=False)]
    return {"first_step_s": times[0] - t0, "step_s": statistics.median(step_s[3:]),
            "losses": losses}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="add the torch.compile arm")
    ap.add_argument("--full-steps", type=int, default=400, help="the demo's fine-tune length")
    args = ap.parse_args(argv)

    cores = job_cores()
    arms = [("1 thread", "eager", 1), ("job cores", "eager", 0),
            ("channels-last", "channels-last", 0)]  # fmt: skip
    if args.compile:
        arms.append(("torch.compile", "compile", 0))
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        work = Path(tmp)
        data = load_dataset(DataConfig(), Home(work / "home"))
        res: dict[str, list[dict]] = {name: [] for name, _, _ in arms}
        for _ in range(args.reps):
            for name, kind, threads in arms:
                res[name].append(run_arm(data, kind, threads, args.steps, work))
                print(f"{name}: {res[name][-1]['step_s']:.3f} s/step", flush=True)

    ref_name = arms[0][0]
    ref = res[ref_name][0]["losses"]
    base = statistics.median(r["step_s"] for r in res[ref_name])
    print(f"\n{args.steps} steps per arm, median of {args.reps}; job cores = {cores}\n")
    print("| arm | threads | s/step (steady) | steps/s | vs 1 thread | first step s | "
          "mean loss | largest loss difference | demo fine-tune (est.) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, kind, threads in arms:
        s = statistics.median(r["step_s"] for r in res[name])
        first = statistics.median(r["first_step_s"] for r in res[name])
        losses = res[name][0]["losses"]
        diff = max(abs(a - b) for a, b in zip(losses, ref, strict=True))
        est = first + s * (args.full_steps - 1)
        extra = ""
        if kind == "compile":
            eager = statistics.median(r["step_s"] for r in res["job cores"])
            gain = eager - s
            pay = (first - eager) / gain if gain > 0 else float("inf")
            extra = f" (compiling pays back after {pay:.0f} steps)"
        print(f"| {name}{extra} | {threads or cores} | {s:.3f} | {1 / s:.2f} | "
              f"**{base / s:.2f}x** | {first:.2f} | {sum(losses) / len(losses):.5f} | "
              f"{diff:.1e} | {est:.0f} s |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
