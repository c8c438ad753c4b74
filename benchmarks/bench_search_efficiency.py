"""Search efficiency on the phantom data: how many trials does TPE (and random search) need to come
within 1 point of the best R that the reference grid (R = 0, 0.1, ..., 1.0) finds?

Setup (all measured in one run):

* the demo's phantom data (100 real training images per class, 32 px, 300 val images per class);
* one generator and one pool (guidance 2, 25 DDIM steps, 200 images): fine-tuned here from the
  bundled base model when it exists, else from scratch (``--finetune-steps``), or ``--model``;
* the objective of a trial is its validation accuracy after training the SimpleCNN with the
  default search space's settings (30 epochs, batch 128, Adam 1e-3, ``replace`` mixing).

**Affordability choice (documented, and the reason this runs on a laptop CPU):** the objective at
every R of the search space's 0.05 grid (21 values) is computed ONCE per seed by really training
(:func:`ratio_search.train.trial.run_trial`) and cached in a table (``<home>/bench/``). The grid, TPE and
random search then *query* that table: a trial of any searcher at R with seed s gets exactly the
number a real trial at (R, s) gets, because a trial is deterministic given (R, seed, data, pool).
So the three searchers are compared on identical numbers, and the comparison costs 21 x seeds
trainings instead of (11 + 2 x max_trials) x seeds.

Per search seed s (the trial seed of the table *and* the sampler's seed):

* target = (best value of the 11 grid points) - tolerance (1 point);
* grid: trials in the study's order (R ascending) until the first point reaches the target, and
  its full cost, 11 trials (a grid only knows its best after running every point);
* TPE as the tool runs it: the space's baselines (R = 0 and R = 0.5) first, then
  ``TPESampler(seed=s, n_startup_trials=4, constant_liar=True)`` over R in [0, 1] step 0.05;
* TPE without the baselines, and random search (``RandomSampler(seed=s)``) without them.

The figure reported is the median over seeds of the trials needed (a searcher that does not reach
the target within ``--max-trials`` counts as max_trials + 1, marked ">").

Usage::

    python benchmarks/bench_search_efficiency.py [--home DIR] [--seeds 5] [--max-trials 40]
        [--model PATH] [--finetune-steps 300] [--threads 1] [--out results.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ratio_search import pools  # noqa: E402
from ratio_search.config import DataConfig, FinetuneConfig, GenerateConfig, TrainConfig  # noqa: E402
from ratio_search.data import load_dataset  # noqa: E402
from ratio_search.diffusion import finetune, load_model  # noqa: E402
from ratio_search.home import Home  # noqa: E402
from ratio_search.train.trial import run_trial  # noqa: E402

GRID = [round(0.1 * i, 2) for i in range(11)]  # the reference study's sweep
SPACE = [round(0.05 * i, 2) for i in range(21)]  # the default search space's R grid
BASELINES = [0.0, 0.5]  # queued first by the tool (R = 0 and the study's R = 0.5)


def get_model(home: Home, data, args) -> tuple[object, dict]:
    """The generator: ``--model``, else fine-tuned here (cached in ``home.models`` by its hash)."""
    if args.model:
        model = load_model(args.model, home)
        return model, {"model": str(args.model), "fine_tuned_here": False}
    from ratio_search.diffusion.tiny import BASE_DIR

    from_scratch = not (BASE_DIR / "meta.json").is_file()
    ft = FinetuneConfig(from_scratch=from_scratch, max_steps=args.finetune_steps, device="cpu")
    t0 = time.time()
    info = finetune(data, ft, home, progress=False)
    model = load_model(info.path, home)
    stats = info.meta.get("training", {})
    return model, {
        "model": str(info.path),
        "model_hash": info.hash,
        "fine_tuned_here": True,
        "from_scratch": from_scratch,
        "finetune_steps": stats.get("steps"),
        "finetune_seconds": round(time.time() - t0, 1),
    }


def objective_table(home: Home, data, pool, args) -> dict[int, dict[float, float]]:
    """Validation accuracy at every R of :data:`SPACE` per seed, trained once, cached on disk."""
    key_doc = {
        "data": data.key,
        "pool": pool.key,
        "n": pool.n,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "space": SPACE,
    }
    key = hashlib.sha1(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:12]
    path = home.root / "bench" / f"search_efficiency_table-{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = (
        json.loads(path.read_text())
        if path.is_file()
        else {"key": key_doc, "table": {}, "seconds": {}}
    )
    total = len(args.seed_list) * len(SPACE)
    done = sum(len(v) for v in doc["table"].values())
    for seed in args.seed_list:
        row = doc["table"].setdefault(str(seed), {})
        for r in SPACE:
            if f"{r:.2f}" in row:
                continue
            cfg = TrainConfig(r=r, mode="replace", epochs=args.epochs, batch_size=args.batch_size,
                              lr=args.lr, seed=seed, device="cpu")  # fmt: skip
            t0 = time.time()
            out = run_trial(cfg, data, pool.images)
            row[f"{r:.2f}"] = float(out["metrics"]["accuracy"])
            doc["seconds"][f"{seed}:{r:.2f}"] = round(time.time() - t0, 2)
            done += 1
            print(f"  table {done}/{total}: seed {seed} R={r:.2f} val_accuracy "
                  f"{row[f'{r:.2f}']:.4f} ({time.time() - t0:.1f} s)", flush=True)  # fmt: skip
            path.write_text(json.dumps(doc, indent=1))  # after every trial: resumable
    return {int(s): {float(r): v for r, v in row.items()} for s, row in doc["table"].items()
            if int(s) in args.seed_list}  # fmt: skip


def trials_to_target(values: list[float], target: float) -> int | None:
    """1-based index of the first value >= target, or None."""
    for i, v in enumerate(values):
        if v >= target - 1e-12:
            return i + 1
    return None


def run_sampler(
    table: dict[float, float], sampler, baselines: list[float], max_trials: int
) -> list[float]:
    """Ask/tell ``max_trials`` trials of R (0.05 grid) against the table; return the values."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for r in baselines:
        study.enqueue_trial({"r": r})
    dist = optuna.distributions.FloatDistribution(0.0, 1.0, step=0.05)
    values = []
    for _ in range(max_trials):
        trial = study.ask({"r": dist})
        v = table[round(float(trial.params["r"]), 2)]
        study.tell(trial, v)
        values.append(v)
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--home", help="home for data, model, pool and the cached table (default: temp)"
    )
    ap.add_argument("--seeds", type=int, default=5, help="search seeds (default 5)")
    ap.add_argument("--max-trials", type=int, default=40)
    ap.add_argument("--tolerance", type=float, default=0.01, help="within this of the grid's best")
    ap.add_argument("--model", help="a fine-tuned model folder to use instead of fine-tuning here")
    ap.add_argument("--finetune-steps", type=int, default=300)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--pool-n", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n-startup-trials", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    args.seed_list = list(range(args.seeds))
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    t_start = time.time()
    home = Home(Path(args.home or tempfile.mkdtemp(prefix="bench-search-eff-")).resolve())
    data = load_dataset(DataConfig(), home)
    model, model_info = get_model(home, data, args)
    print(f"generator: {model_info}", flush=True)
    gen = GenerateConfig(
        guidance=args.guidance, steps=args.steps, n=args.pool_n, seed=0, device="cpu"
    )
    t0 = time.time()
    pool = pools.get_pool(home, model, gen, args.pool_n, reference=pools.class_reference(data),
                          synthetic_class_index=pools.model_class_index(model, data), progress=False)  # fmt: skip
    print(f"pool {pool.key}: {pool.n} images, guidance {args.guidance}, {args.steps} steps "
          f"({'generated' if pool.generated else 'cached'}, {time.time() - t0:.1f} s)", flush=True)  # fmt: skip

    tables = objective_table(home, data, pool, args)
    arms = {
        "grid (study order)": None,
        "TPE (tool: baselines first)": lambda s: (
            optuna.samplers.TPESampler(
                seed=s, n_startup_trials=args.n_startup_trials, constant_liar=True
            ),
            BASELINES,
        ),
        "TPE (no baselines)": lambda s: (
            optuna.samplers.TPESampler(
                seed=s, n_startup_trials=args.n_startup_trials, constant_liar=True
            ),
            [],
        ),
        "random (no baselines)": lambda s: (optuna.samplers.RandomSampler(seed=s), []),
    }
    per_seed = []
    for s in args.seed_list:
        table = tables[s]
        grid_vals = [table[r] for r in GRID]
        grid_best = max(grid_vals)
        target = grid_best - args.tolerance
        row = {
            "seed": s,
            "grid_best": grid_best,
            "grid_best_r": GRID[int(np.argmax(grid_vals))],
            "space_best": max(table.values()),
            "space_best_r": max(table, key=table.get),
            "n_r_within": sum(v >= target - 1e-12 for v in table.values()),
        }
        for name, make in arms.items():
            if make is None:
                row[name] = trials_to_target(grid_vals, target)
                continue
            sampler, baselines = make(s)
            values = run_sampler(table, sampler, baselines, args.max_trials)
            row[name] = trials_to_target(values, target)
        per_seed.append(row)

    def show(v):
        return f">{args.max_trials}" if v is None else str(v)

    print()
    print(f"table: {len(SPACE)} R values x {len(args.seed_list)} seeds, trained with run_trial "
          f"(epochs {args.epochs}, batch {args.batch_size}); target = grid best - {args.tolerance}")  # fmt: skip
    header = ["seed", "grid best (R)", "R within target", *arms]
    print(" | ".join(header))
    for row in per_seed:
        print(" | ".join([str(row["seed"]), f"{row['grid_best']:.4f} ({row['grid_best_r']:.1f})",
                          f"{row['n_r_within']}/{len(SPACE)}", *(show(row[a]) for a in arms)]))  # fmt: skip
    medians = {}
    for a in arms:
        vals = [row[a] if row[a] is not None else args.max_trials + 1 for row in per_seed]
        medians[a] = statistics.median(vals)
    print("median trials to within the tolerance of the grid's best: "
          + "; ".join(f"{a}: {medians[a]:g}" for a in arms)
          + f"; the grid's own cost: {len(GRID)} trials")  # fmt: skip
    print(f"wall time {time.time() - t_start:.0f} s")
    result = {
        "setup": {
            "data": "phantom, DataConfig() defaults",
            "data_key": data.key,
            **model_info,
            "pool_key": pool.key,
            "guidance": args.guidance,
            "steps": args.steps,
            "pool_n": pool.n,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "tolerance": args.tolerance,
            "max_trials": args.max_trials,
            "n_startup_trials": args.n_startup_trials,
            "seeds": args.seed_list,
        },
        "tables": {str(s): {f"{r:.2f}": v for r, v in t.items()} for s, t in tables.items()},
        "per_seed": per_seed,
        "median_trials": medians,
        "grid_cost": len(GRID),
        "wall_seconds": round(time.time() - t_start, 1),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
