"""The checks that need a GPU, in one table (``benchmarks/gpu_check.sh`` runs this on one GPU).

1. ``search``: ``--gpus 1 --gpus-per-trial 0.25``: 4 trials at once on one device; each trial's
   recorded device (trials.jsonl) must be CUDA, and the trials must overlap in time.
2. ``seeds``: the train package's vectorised seeds (``train.trial.train_seeds``), k seeds on
   the device vs on the CPU: wall time ratio and the largest metric difference ("pending" when
   the function does not exist yet).
3. ``sd``: the stable-diffusion backend on a tiny local pipeline (``diffusion/testing.py``): a
   short fine-tune (mixed precision on CUDA: the stats record it) and sampling.

``--device cpu`` runs the same Python on the CPU with small sizes (tests/test_gpu_check.py).

    .venv/bin/python benchmarks/gpu_check.py [--device cuda] [--skip search]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ratio_search.config import DataConfig, FinetuneConfig, TrainConfig  # noqa: E402
from ratio_search.home import Home  # noqa: E402

CHECKS = ("search", "seeds", "sd")


def small_data(home: Home, per_class: int = 100):
    from ratio_search.data import load_dataset

    cfg = DataConfig(phantom_n_per_class=per_class, phantom_val_per_class=per_class,
                     phantom_test_per_class=10)  # fmt: skip
    return load_dataset(cfg, home)


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) spans open at one time."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = now = 0
    for _, d in events:
        now += d
        best = max(best, now)
    return best


def search_kwargs(device: str, trials: int = 4) -> dict[str, Any]:
    """run_search's options: 4 trials at once, a quarter GPU each (no GPU: 2 at once on CPUs)."""
    space = {
        "params": {"seed": {"type": "categorical", "choices": list(range(trials))}},
        "fixed": {"r": 0.0, "epochs": 3, "batch_size": 64},
        "search": {"sampler": "grid"},
        "data": {"phantom_n_per_class": 100, "phantom_val_per_class": 100,
                 "phantom_test_per_class": 2},
    }  # fmt: skip
    gpu = device.startswith("cuda")
    return {"space": space, "n_trials": trials, "gpus": 1 if gpu else 0,
            "gpus_per_trial": 0.25 if gpu else 0.0, "concurrency": 4 if gpu else 2,
            "cpus_per_trial": 1, "tracking": False, "progress": False, "model": None}  # fmt: skip


def check_search(home: Home, device: str) -> dict[str, Any]:
    from ratio_search.search import run_search
    from ratio_search.search.space import parse_space
    from ratio_search.search.trials import read_trials

    kw = search_kwargs(device)
    kw["space"] = parse_space(kw["space"])
    t = time.perf_counter()
    out = run_search(home, name="gpu-check", **kw)
    wall = time.perf_counter() - t
    run_dir = Path(out["run_dir"])
    devices = sorted({str(r.get("device") or r.get("tags", {}).get("device"))
                      for r in read_trials(run_dir).values()})  # fmt: skip
    times: dict[str, list[float]] = {}
    for line in (run_dir / "trials.jsonl").read_text().splitlines():
        rec = json.loads(line)
        times.setdefault(str(rec.get("trial_id")), []).append(float(rec.get("time", 0.0)))
    spans = [(min(v), max(v)) for v in times.values() if len(v) > 1]
    ok = out["state"] == "finished" and all(d.startswith(device.split(":")[0]) for d in devices)
    return {"check": "search --gpus 1 --gpus-per-trial 0.25" if kw["gpus"] else "search (CPU)",
            "ok": ok, "figure": f"{out['n_trials']} trials in {wall:.1f} s on {', '.join(devices)}"
            + (f"; at most {max_overlap(spans)} at once" if spans else "")}  # fmt: skip


def check_seeds(home: Home, device: str, k: int = 4, epochs: int = 2) -> dict[str, Any]:
    try:
        from ratio_search.train.trial import train_seeds
    except ImportError:
        return {"check": f"vectorised seeds (k = {k}) {device} vs cpu", "ok": None,
                "figure": "pending (train.trial.train_seeds not there yet)"}  # fmt: skip
    data = small_data(home)
    res, secs = {}, {}
    for dev in dict.fromkeys([device, "cpu"]):
        cfg = TrainConfig(epochs=epochs, batch_size=64, device=dev)
        t = time.perf_counter()
        res[dev] = train_seeds(cfg, data, None, list(range(k)))
        secs[dev] = time.perf_counter() - t

    def acc(m: dict[str, Any]) -> float:
        return float(m.get("val_accuracy", m.get("accuracy", np.nan)))

    accs = {d: np.array([acc(s["metrics"]) for s in r["per_seed"]]) for d, r in res.items()}
    diff = float(np.abs(accs[device] - accs["cpu"]).max())
    return {"check": f"vectorised seeds (k = {k}, {epochs} epochs) {device} vs cpu", "ok": True,
            "figure": f"cpu / {device} time {secs['cpu'] / secs[device]:.2f}x; "
                      f"largest val-accuracy difference {diff:.4f}"}  # fmt: skip


def check_sd(home: Home, device: str, steps: int = 4) -> dict[str, Any]:
    from ratio_search.diffusion import finetune, load_model
    from ratio_search.diffusion.testing import build_tiny_pipeline

    data = small_data(home, per_class=20)
    base = build_tiny_pipeline(Path(home.root) / "sd-base", image_size=32)
    cfg = FinetuneConfig(backend="stable-diffusion", base_model=str(base), max_steps=steps,
                         batch_size=2, resolution=32, device=device)  # fmt: skip
    t = time.perf_counter()
    info = finetune(data, cfg, home, progress=False)
    ft_s = time.perf_counter() - t
    stats = info.meta.get("training", {})
    model = load_model(info.path, home)
    t = time.perf_counter()
    x = model.sample(4, 0, guidance=2.0, steps=4, seed=0, batch_size=4, device=device)
    sample_s = time.perf_counter() - t
    ok = x.dtype == np.uint8 and x.shape[0] == 4 and np.isfinite(stats.get("final_loss", np.nan))
    if device.startswith("cuda"):
        ok = ok and bool(stats.get("mixed_precision"))
    return {"check": f"stable-diffusion fine-tune ({steps} steps) + sampling on {device}",
            "ok": bool(ok), "figure": f"fine-tune {ft_s:.1f} s, mixed precision "
            f"{stats.get('mixed_precision')}, loss {float(stats.get('final_loss', float('nan'))):.4f}; "
            f"4 images x 4 steps {sample_s:.1f} s"}  # fmt: skip


def run(device: str, skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for name in CHECKS:
            if name in skip:
                continue
            home = Home(Path(tmp) / name)
            fn = {"search": check_search, "seeds": check_seeds, "sd": check_sd}[name]
            try:
                rows.append(fn(home, device))
            except Exception as e:  # one failed check must not hide the others
                rows.append({"check": name, "ok": False, "figure": f"{type(e).__name__}: {e}"})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    mark = {True: "ok", False: "FAILED", None: "pending"}
    lines = ["| check | result | figure |", "|---|---|---|"]
    lines += [f"| {r['check']} | {mark[r['ok']]} | {r['figure']} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--skip", nargs="*", default=[], choices=CHECKS)
    ap.add_argument("--json", help="write the rows here too")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device visible (use --device cpu for the CPU-side run)")
            return 2
    rows = run(args.device, tuple(args.skip))
    print(f"\n{time.strftime('%Y-%m-%d')}, device {args.device}\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["ok"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
