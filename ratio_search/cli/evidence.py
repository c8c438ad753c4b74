"""``ratio-search train | export | report``: one classifier, the answer's YAML, the answer's page."""

from __future__ import annotations

import argparse
from typing import Any

from ._flags import (
    config_flag,
    data_command,
    emit,
    home_flag,
    json_flag,
    overrides,
    say,
)


def add_train(sub: argparse._SubParsersAction) -> None:
    p = data_command(sub, "train", "train one classifier at one ratio R")
    config_flag(p, "train.r")
    p.add_argument("--pool", help="pool key, pool folder, or any image folder of synthetic images")
    p.add_argument("--pool-n", type=int, help="use only the pool's first N images")
    for key in (
        "mode",
        "synthetic_classes",
        "filter_top",
        "epochs",
        "batch_size",
        "lr",
        "seed",
        "device",
    ):
        config_flag(p, f"train.{key}")
    p.add_argument(
        "--out", help="folder for the resolved config and metrics (default: runs/train-...)"
    )
    p.epilog = (
        "--config YAML: sections data, train, finetune, generate (as in config.py), plus optional "
        "`pool:` (key or folder, relative to the YAML's folder; or {key|path: ..., n: N}) or "
        "`pools:` ({<class name>: {key: ..., n: N}}, one per synthetic class) and "
        "`expected:` (ignored metadata, "
        "as written by export). Command-line flags override the YAML."
    )
    p.set_defaults(handler=cmd_train)


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write the best trial of a search as best.yaml (train --config)"
    )
    p.add_argument("name", help="run name")
    p.add_argument("--out", default="best.yaml", help="output YAML (default: best.yaml)")
    p.add_argument("--trial", help="export this trial id instead of the best one")
    home_flag(p)
    json_flag(p)
    p.add_argument(
        "--no-confirm",
        action="store_true",
        help="skip the multi-seed confirmation and the test split (export the best single trial)",
    )
    p.add_argument(
        "--confirm-seeds",
        type=int,
        default=5,
        metavar="S",
        help="seeds per confirmed configuration (default 5)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=3,
        metavar="K",
        help="configurations to confirm besides R=0 (default 3)",
    )
    p.add_argument(
        "--max-seeds",
        type=int,
        metavar="M",
        help="seed budget of the test-split confirmation: seeds are added (both arms) until the "
        "paired interval decides or M seeds are spent (default 2 x --confirm-seeds)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        metavar="DELTA",
        help="δ, in metric units (default 0.01 = 1 point): the non-inferiority margin of the usable "
        "synthetic ratio, and the precision (half-width δ/2) at which the confirmation stops",
    )
    p.add_argument(
        "--confirm-r",
        type=float,
        nargs="+",
        metavar="R",
        help="the R values the usable ratio is tested at (chosen generation settings; default "
        "0.25 0.5 0.75 1 within the space's range)",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="confirmation runs trained at a time, one process each, the same numbers as one "
        "after another (default: the job's CPU cores over the trials' threads)",
    )
    p.add_argument(
        "--register",
        metavar="NAME",
        help="register the chosen classifier in MLflow's model registry as NAME (needs the "
        "confirmation and a tracked search)",
    )
    p.set_defaults(handler=cmd_export)


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write a self-contained HTML report of a search (figures, answer, pool quality)",
    )
    p.add_argument("name", help="run name")
    p.add_argument("--out", help="output folder (default: runs/NAME/report)")
    p.add_argument(
        "--best",
        help="best.yaml holding the confirmation (default: runs/NAME/best.yaml, ./best.yaml)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="usable ratio tolerance when there is no confirmation (default 0.01 = 1 point)",
    )
    p.add_argument(
        "--grid",
        type=int,
        default=16,
        metavar="N",
        help="images per best/worst grid (0: none; default 16)",
    )
    p.add_argument(
        "--classifier",
        metavar="PATH",
        help="your own real-trained SimpleCNN weights to rank generated images (default: trained once)",
    )
    home_flag(p)
    json_flag(p)
    p.set_defaults(handler=cmd_report)


def cmd_train(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from ..home import Home
    from ..train.trial import resolve_train_config, train_from_config

    cfg, yaml_pool, yaml_pool_n = resolve_train_config(
        args.config, overrides(args, ("data", "train"))
    )
    bars: list[tqdm] = []  # opened at the first epoch, so that a bad input prints only its error

    def report(epoch: int, metrics: dict[str, Any], state: dict[str, Any]) -> None:
        if not bars:
            bars.append(tqdm(total=cfg.train.epochs, desc="train", unit="epoch", disable=args.json))
        bars[0].set_postfix(
            loss=f"{metrics['train_loss']:.3f}", val_acc=f"{metrics['accuracy']:.3f}", refresh=False
        )
        bars[0].update(epoch - bars[0].n)  # reports come after validated epochs only (val_every)

    try:
        pool, pool_n = (
            (args.pool, args.pool_n) if args.pool else (yaml_pool, args.pool_n or yaml_pool_n)
        )
        home = Home.resolve(args.home)
        scorer = None
        if cfg.train.filter_top < 1.0:  # the judge's scores of each pool (quality/selection.py)
            from ..quality.selection import train_scorer

            scorer = train_scorer(home)
        res = train_from_config(cfg, home, pool, args.out, report, pool_n, scorer)
    finally:
        for bar in bars:
            bar.close()
    m = res["metrics"]
    auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
    skipped = (
        f"; skipped {res['skipped_images']} unreadable image(s)" if res["skipped_images"] else ""
    )
    for info in [res["pool"]] if res["pool"] else list((res.get("pools") or {}).values()):
        if info["skipped"]:
            skipped += f"; skipped {info['skipped']} unreadable image(s) of pool {info['key']}"
    emit(
        args,
        res,
        f"R={res['r']:g} ({res['mode']}): val accuracy {m['accuracy']:.3f}, F1 {m['f1']:.3f}, "
        f"AUC {auc} on {res['n_val']} images; trained on {res['n_real']} real + "
        f"{res['n_synthetic']} synthetic{skipped}; wrote {res['out']}",
    )


def cmd_export(args: argparse.Namespace) -> None:
    from ..evidence.export import build_export, write_export
    from ..home import Home

    if getattr(args, "no_confirm", True):
        if getattr(args, "register", None):
            from ..errors import RatioSearchError

            raise RatioSearchError("--register needs the confirmation: drop --no-confirm")
        doc = build_export(Home.resolve(args.home), args.name, trial_id=args.trial)
    else:
        from ..evidence.export import export_with_confirmation

        doc = export_with_confirmation(
            Home.resolve(args.home), args.name, trial_id=args.trial, top_k=args.top_k,
            n_seeds=args.confirm_seeds, max_seeds=args.max_seeds, tolerance=args.tolerance,
            confirm_r=args.confirm_r, progress=None if args.json else say, workers=args.workers,
            register=args.register,
        )  # fmt: skip
    path = write_export(doc, args.out)
    exp = doc["expected"]
    value = exp["value"]
    shown = "n/a" if value is None else f"{value:.4f}"
    params = exp["params"]
    gen = " ".join(f"{k}={params[k]}" for k in ("guidance", "steps") if k in params)
    emit(
        args,
        {"path": str(path), **doc},
        f"{args.name}: trial {exp['trial_id']} (R={doc['train']['r']:g} {gen}".rstrip()
        + f") {exp['metric']}={shown}; wrote {path} (reproduce: ratio-search train --config {path})"
        + _confirm_line(exp.get("confirm")),
    )


def _confirm_line(c: dict[str, Any] | None) -> str:
    """The confirmation's answer and its test figures (empty without a confirmation)."""
    if not c:
        return ""
    from ..evidence.answer import confirm_lines

    return "\n" + "\n".join(confirm_lines(c))


def cmd_report(args: argparse.Namespace) -> None:
    from ..home import Home
    from ..report import build_report

    result = build_report(
        Home.resolve(args.home), args.name, args.out, best_path=args.best, tolerance=args.tolerance,
        grid_n=args.grid, classifier_path=args.classifier,
    )  # fmt: skip
    emit(args, result, f"{result['summary']}\nreport: {result['html']}")
