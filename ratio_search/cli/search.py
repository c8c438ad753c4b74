"""``ratio-search run | resume | status``: the search service."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import RatioSearchError
from ._flags import data_command, emit, home_flag, json_flag, overrides


def add_run(sub: argparse._SubParsersAction) -> None:
    p = data_command(
        sub, "run", "search R and the space's other levers (Ray Tune + Optuna, tracked in MLflow)"
    )
    p.add_argument(
        "--space",
        default="default",
        help="search space YAML: a path or a bundled name (default, reference_grid, quick)",
    )
    p.add_argument(
        "--trials", type=int, help="number of trials, at least 1 (default: the space's n_trials)"
    )
    p.add_argument(
        "--name",
        help="run name (default: search-YYYYmmdd-HHMMSS, made unique); its folder is runs/NAME",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="resume run --name NAME instead (same as: resume NAME)",
    )
    p.add_argument(
        "--gpus",
        type=int,
        help="GPUs to use (default: all CUDA devices here, checked to exist; with --address: 0 unless given)",
    )
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        help="GPUs per trial, fractions allowed (default 1 with GPUs)",
    )
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (default 1)")
    p.add_argument(
        "--concurrency",
        type=int,
        help="trials at once (default: what fits; at most 2 without GPUs)",
    )
    p.add_argument(
        "--scheduler",
        choices=["fifo", "asha"],
        default="fifo",
        help="asha stops poor trials early (by epoch); fifo runs every trial to the end",
    )
    p.add_argument(
        "--metric", help="objective (default: the space's; val_accuracy, val_f1, val_loss, ...)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    p.add_argument(
        "--address", help="join a running Ray cluster (HOST:PORT or auto) instead of starting one"
    )
    p.add_argument(
        "--model",
        default="latest",
        help="generator folder or 'latest' (newest fine-tuned on this data; fine-tuned now if none)",
    )
    p.add_argument(
        "--allow-other-data",
        action="store_true",
        help="accept a --model fine-tuned on other data than this search's (recorded in run.json)",
    )
    p.add_argument(
        "--max-failures",
        type=int,
        default=0,
        help="retries of a failed trial, e.g. on a lost node (default: 0)",
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow store (default: sqlite in HOME/mlruns, or $MLFLOW_TRACKING_URI)",
    )
    p.add_argument(
        "--no-tracking", action="store_true", help="do not write MLflow runs (trials.jsonl only)"
    )
    p.set_defaults(handler=cmd_run)


def add_resume(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("resume", help="continue an interrupted or crashed search where it stopped")
    p.add_argument("name", help="run name (see: ratio-search status)")
    home_flag(p)
    json_flag(p)
    p.set_defaults(handler=cmd_resume)


def add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status", help="trials of a search and the best so far; without NAME: all searches"
    )
    p.add_argument("name", nargs="?", help="run name (default: list every search)")
    home_flag(p)
    json_flag(p)
    p.set_defaults(handler=cmd_status)


# The sampled parameters a one-line summary names (when the search samples them).
_SHOWN = ("r", "mode", "guidance", "steps", "finetune_steps", "synthetic_classes", "filter_top",
          "arch")  # fmt: skip


def _search_human(s: dict[str, Any]) -> str:
    best = s.get("best")
    line = f"search {s['name']} {s['state']}: {s['n_trials']}/{s['n_trials_asked']} trials"
    if s.get("n_errors"):
        line += f" ({s['n_errors']} failed)"
    if best:
        params = ", ".join(f"{k}={best['params'][k]}" for k in _SHOWN if k in best["params"])
        line += f"; best {s['metric']} {best['metric']:.4f} at {params}"
    line += f"; run folder {s['run_dir']}"
    return line


def _finish(args: argparse.Namespace, s: dict[str, Any]) -> None:
    emit(args, s, _search_human(s))
    if s["state"] == "interrupted":  # Ctrl-C: the summary is out, the exit code says so
        sys.exit(130)


def cmd_run(args: argparse.Namespace) -> None:
    from ..config import load_config
    from ..home import Home
    from ..search import resume_search, run_search

    home = Home.resolve(args.home)
    if args.resume:
        if not args.name:
            raise RatioSearchError("run --resume needs --name NAME")
        _finish(args, resume_search(home, args.name, progress=not args.json))
        return
    data_over = overrides(args, ("data",))
    cfg = load_config(args.config)
    s = run_search(
        home,
        name=args.name,
        space=args.space,
        n_trials=args.trials,
        gpus=args.gpus,
        gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial,
        concurrency=args.concurrency,
        scheduler=args.scheduler,
        metric=args.metric,
        seed=args.seed,
        address=args.address,
        tracking_uri=args.tracking_uri,
        data_cfg=cfg.data,
        model=args.model,
        allow_other_data=args.allow_other_data,
        max_failures=args.max_failures,
        progress=not args.json,
        data_overrides={k.split(".", 1)[1]: v for k, v in data_over.items()},
        finetune_cfg=cfg.finetune,
        tracking=not args.no_tracking,
        argv=["ratio-search", *sys.argv[1:]],
    )
    _finish(args, s)


def cmd_resume(args: argparse.Namespace) -> None:
    from ..home import Home
    from ..search import resume_search

    _finish(args, resume_search(Home.resolve(args.home), args.name, progress=not args.json))


def cmd_status(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..home import Home
    from ..search import list_runs, run_status

    home = Home.resolve(args.home)
    console = Console()
    if args.name is None:
        rows = list_runs(home)
        if args.json:
            print(json.dumps({"runs": rows}, default=str))
            return
        if not rows:
            print(f"no searches in {home.runs}")
            return
        t = Table(title=f"searches in {home.runs}")
        for col in ("name", "state", "trials", "best", "created"):
            t.add_column(col)
        for r in rows:
            best = "" if r["best_metric"] is None else f"{r['metric']} {r['best_metric']:.4f}"
            trials = f"{r['done']}/{r['n_trials']}" if r["n_trials"] is not None else "?"
            t.add_row(r["name"], str(r["state"]), trials, best, str(r["created"] or ""))
        console.print(t)
        for r in rows:
            if r.get("error"):
                print(f"{r['name']}: {r['error']}", file=sys.stderr)
        return
    s = run_status(home, args.name)
    if args.json:
        print(json.dumps(s, default=str))
        return
    metric = s["metric"]
    t = Table(title=f"{s['name']}: {s['state']}, {s['done']}/{s['n_trials']} trials done")
    from ..search.runs import LEVERS

    levers = [k for k in LEVERS if any(k in r for r in s["trials"])]  # the sampled ones
    for col in ("trial", "state", "R", "guidance", "steps", *levers, "epoch", metric):
        t.add_column(col)
    best_id = (s["best"] or {}).get("trial_id")
    for r in s["trials"]:
        v = r.get(metric)
        style = "bold green" if r["trial_id"] == best_id else None
        t.add_row(r["trial_id"], r["state"], str(r["r"]), str(r["guidance"]), str(r["steps"]),
                  *(str(r.get(k, "")) for k in levers),
                  str(r["epoch"]), "" if v is None else f"{v:.4f}", style=style)  # fmt: skip
    console.print(t)
    if s["best"]:
        p = s["best"]["params"] or {}
        console.print(f"best: {metric} {s['best']['metric']:.4f} (trial {best_id}: "
                      f"R={p.get('r')}, guidance={p.get('guidance')}, steps={p.get('steps')})")  # fmt: skip
    if (s.get("calibration") or {}).get("line"):  # the R = 0 budget check
        console.print(f"calibration: {s['calibration']['line']}")
    if s.get("test_looks"):  # the looks at the test split export recorded
        console.print(
            f"test split looked at {s['test_looks']} time(s): {s['run_dir']}/test_looks.jsonl"
        )
    if s["state"] in ("interrupted", "crashed", "failed"):
        console.print(f"resume with: ratio-search resume {s['name']}")
