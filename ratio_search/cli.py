"""The command line: argument parsing and printing only. Nothing imports this module.

Every handler calls into the library; any :class:`RatioSearchError` becomes one line on stderr
and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .errors import RatioSearchError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        sys.stderr.write(f"ratio-search: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _emit(args: argparse.Namespace, obj: dict[str, Any], human: str) -> None:
    """Print one JSON object with --json, else a one-line human summary."""
    if getattr(args, "json", False):
        print(json.dumps(obj, default=str))
    else:
        print(human)


def _overrides(args: argparse.Namespace, mapping: dict[str, str]) -> dict[str, Any]:
    """Collect CLI flags into config overrides: ``{"dest": "section.key"}``."""
    return {
        key: getattr(args, dest)
        for dest, key in mapping.items()
        if getattr(args, dest, None) is not None
    }


# Flags shared by every command that reads a dataset.
DATA_FLAGS = {
    "data": "data.path",
    "source": "data.source",
    "classes": "data.classes",
    "synthetic_class": "data.synthetic_class",
    "image_size": "data.image_size",
    "max_per_class": "data.max_per_class",
    "skip_bad_images": "data.skip_bad_images",
}


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", help="image folder (train/val/test/CLASS/*) or .npz file; default: phantom"
    )
    p.add_argument(
        "--source",
        choices=["imagefolder", "npz", "phantom"],
        help="data source (default: from --data)",
    )
    p.add_argument("--classes", nargs="+", help="class folders to use, in label order")
    p.add_argument(
        "--synthetic-class", help="class that receives synthetic images (default: first)"
    )
    p.add_argument("--image-size", type=int, help="resize to S x S (default 32)")
    p.add_argument("--max-per-class", type=int, help="cap on real training images per class")
    p.add_argument(
        "--skip-bad-images", action="store_true", default=None, help="skip unreadable images"
    )


def _common(p: argparse.ArgumentParser, json_flag: bool = True) -> None:
    p.add_argument(
        "--home", help="home directory for mlruns/, runs/, models/, pools/ (default: cwd)"
    )
    p.add_argument("--config", help="YAML config (sections data, train, finetune, generate)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ratio-search",
        description="Find how much diffusion-generated synthetic data to mix into a real training set.",
    )
    parser.add_argument("--version", action="version", version="ratio-search 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    # data
    p = sub.add_parser("data", help="make or inspect datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="WHAT", parser_class=_Parser)
    q = dsub.add_parser("phantom", help="write the embedded phantom OCT data as an image folder")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--n-per-class", type=int, default=100, help="training images per class")
    q.add_argument("--n-val-per-class", type=int, default=300, help="validation images per class")
    q.add_argument("--n-test-per-class", type=int, default=500, help="test images per class")
    q.add_argument("--seed", type=int, default=0, help="seed of the phantom generator")
    q.add_argument("--size", type=int, default=64, help="rendered image size in pixels")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(handler=cmd_data_phantom)

    # train
    p = sub.add_parser("train", help="train one classifier at one ratio R")
    _common(p)
    _add_data_flags(p)
    p.add_argument("--r", type=float, help="synthetic ratio R in [0, 1]")
    p.add_argument("--pool", help="pool key, pool folder, or any image folder of synthetic images")
    p.add_argument("--pool-n", type=int, help="use only the pool's first N images")
    p.add_argument("--mode", choices=["replace", "augment"], help="mixing mode")
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--batch-size", type=int, help="batch size")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--seed", type=int, help="seed")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--out", help="folder for the resolved config and metrics (default: runs/train-...)"
    )
    p.epilog = (
        "--config YAML: sections data, train, finetune, generate (as in config.py), plus optional "
        "`pool:` (key or folder, relative to the YAML's folder; or {key|path: ..., n: N}) and "
        "`expected:` (ignored metadata, "
        "as written by export). Command-line flags override the YAML."
    )
    p.set_defaults(handler=cmd_train)

    # clean
    p = sub.add_parser("clean", help="remove run folders, pools, models or the data cache")
    p.add_argument("--home", help="home directory (default: cwd)")
    p.add_argument(
        "what",
        nargs="*",
        default=[],
        metavar="STORE",
        help="stores to clean: runs, pools, models, cache, data (none: show sizes)",
    )
    p.add_argument("--name", nargs="+", help="only these run names / pool keys / model hashes")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_clean)

    # finetune
    p = sub.add_parser("finetune", help="fine-tune the diffusion generator once (the upfront job)")
    _common(p)
    _add_data_flags(p)
    p.add_argument(
        "--backend", choices=["tiny", "stable-diffusion"], help="diffusion backend (default tiny)"
    )
    p.add_argument(
        "--base-model",
        help="stable-diffusion: local diffusers pipeline; tiny: another base model folder",
    )
    p.add_argument("--max-steps", type=int, help="optimisation steps")
    p.add_argument("--batch-size", type=int, help="batch size")
    p.add_argument("--lr", type=float, help="AdamW learning rate")
    p.add_argument(
        "--resolution",
        type=int,
        help="training resolution (default: tiny = image size, stable-diffusion = 512)",
    )
    p.add_argument("--ema-decay", type=float, help="EMA decay of the saved weights")
    p.add_argument("--seed", type=int, help="seed of the fine-tune")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted fine-tune from its last checkpoint",
    )
    p.add_argument(
        "--from-scratch",
        action="store_true",
        default=None,
        help="tiny: do not start from the bundled base model",
    )
    p.add_argument(
        "--export-base",
        action="store_true",
        help="tiny: train the bundled base model on the phantom 'base' set (with --from-scratch)",
    )
    p.add_argument(
        "--n-per-class", type=int, default=4000, help="--export-base: phantom images per class"
    )
    p.add_argument(
        "--max-minutes", type=float, help="--export-base: stop (and save) after this many minutes"
    )
    p.add_argument(
        "--out", help="--export-base: output folder (default: the package's base_model/)"
    )
    p.set_defaults(handler=cmd_finetune)

    # generate / pools
    p = sub.add_parser(
        "generate", help="build cached pools of generated images (one, or a space's grid)"
    )
    _common(p)
    _add_data_flags(p)
    p.add_argument(
        "--model",
        default="latest",
        help="model folder, model hash, or 'latest' (newest fine-tuned on this data; default)",
    )
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (>= 0)")
    p.add_argument("--steps", type=int, help="sampling steps (>= 1)")
    p.add_argument(
        "--n", type=int, help="images per pool (default: the space's pool_size, else 200)"
    )
    p.add_argument("--seed", type=int, help="seed of the pool")
    p.add_argument("--scheduler", choices=["ddim", "dpm-solver++"], help="sampler (default ddim)")
    p.add_argument(
        "--postprocess",
        choices=["none", "histogram-match"],
        help="histogram-match: match each image's intensities to the real class's",
    )
    p.add_argument("--batch-size", type=int, help="images per forward pass")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--space", help="search space YAML (path or bundled name): build its whole pool grid"
    )
    p.add_argument(
        "--from-folder",
        metavar="DIR",
        help="import a folder of images from another generator as a pool",
    )
    p.add_argument("--name", help="--from-folder: a label for the imported pool")
    p.set_defaults(handler=cmd_generate)

    p = sub.add_parser("pools", help="list the cached pools of generated images and their size")
    p.add_argument("--home", help="home directory (default: cwd)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--quality",
        action="store_true",
        help="measure each pool against the real images: FD, KID, precision/recall, C2ST, memorisation",
    )
    p.add_argument(
        "--keys", nargs="+", metavar="KEY", help="--quality: only these pools (keys or names)"
    )
    p.add_argument(
        "--feature-extractor",
        metavar="PATH",
        help="--quality: your own SimpleCNN weights (.safetensors or torch) as the feature space",
    )
    p.add_argument(
        "--force", action="store_true", help="--quality: measure again even if figures exist"
    )
    p.set_defaults(handler=cmd_pools)

    # data info: decode + cache a dataset and show its splits (shares `dsub` with `data phantom`)
    q = dsub.add_parser(
        "info", help="load a dataset (decoding and caching it once) and show its splits"
    )
    _common(q)
    _add_data_flags(q)
    q.set_defaults(handler=cmd_data_info)

    # run / resume / status: the search service
    p = sub.add_parser(
        "run", help="search R, guidance and steps (Ray Tune + Optuna, tracked in MLflow)"
    )
    _common(p)
    _add_data_flags(p)
    p.add_argument(
        "--space",
        default="default",
        help="search space YAML: a path or a bundled name (default, reference_grid, quick)",
    )
    p.add_argument("--trials", type=int, help="number of trials (default: the space's n_trials)")
    p.add_argument(
        "--name", help="run name (default: search-YYYYmmdd-HHMMSS); its folder is runs/NAME"
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
        "--tracking-uri",
        help="MLflow store (default: sqlite in HOME/mlruns, or $MLFLOW_TRACKING_URI)",
    )
    p.add_argument(
        "--no-tracking", action="store_true", help="do not write MLflow runs (trials.jsonl only)"
    )
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("resume", help="continue an interrupted or crashed search where it stopped")
    p.add_argument("name", help="run name (see: ratio-search status)")
    p.add_argument("--home", help="home directory (default: cwd)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_resume)

    p = sub.add_parser(
        "status", help="trials of a search and the best so far; without NAME: all searches"
    )
    p.add_argument("name", nargs="?", help="run name (default: list every search)")
    p.add_argument("--home", help="home directory (default: cwd)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_status)

    # export
    p = sub.add_parser(
        "export", help="write the best trial of a search as best.yaml (train --config)"
    )
    p.add_argument("name", help="run name")
    p.add_argument("--out", default="best.yaml", help="output YAML (default: best.yaml)")
    p.add_argument("--trial", help="export this trial id instead of the best one")
    p.add_argument("--home", help="home directory (default: cwd)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
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
        "--tolerance",
        type=float,
        default=0.01,
        metavar="T",
        help="usable synthetic ratio: largest R within T of the best (metric units; default 0.01 = 1 point)",
    )
    p.add_argument(
        "--confirm-r",
        type=float,
        nargs="+",
        metavar="R",
        help="also confirm these R values (chosen generation settings)",
    )
    p.set_defaults(handler=cmd_export)

    # ui
    p = sub.add_parser("ui", help="start the MLflow UI on this home's tracking store")
    p.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default: 127.0.0.1, this machine only)",
    )
    p.add_argument(
        "--server",
        action="store_true",
        help="start `mlflow server` (artifact proxy, many writers) for a team; "
        "searches then pass --tracking-uri http://HOST:PORT",
    )
    p.add_argument("--home", help="home directory (default: cwd)")
    p.set_defaults(handler=cmd_ui)

    # report
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
    p.add_argument("--home", help="home directory (default: cwd)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_report)

    # demo
    p = sub.add_parser(
        "demo", help="the whole pipeline on the embedded phantom data (what `make demo` runs)"
    )
    p.add_argument("--home", help="home directory (default: cwd)")
    p.add_argument("--name", help="search name (default: demo-<timestamp>)")
    p.add_argument("--trials", type=int, help="trials (default: the quick space's budget, 12)")
    p.add_argument("--concurrency", type=int, default=2, help="trials at a time (default 2)")
    p.add_argument(
        "--confirm-seeds", type=int, default=3, help="seeds per confirmed configuration (default 3)"
    )
    p.add_argument(
        "--top-k", type=int, default=2, help="configurations confirmed besides R=0 (default 2)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_demo)

    return parser


# ----------------------------------------------------------------------------------- handlers


def cmd_data_phantom(args: argparse.Namespace) -> None:
    from .data.phantom import write_phantom_folder

    out = write_phantom_folder(
        args.out,
        n_per_class=args.n_per_class,
        n_val_per_class=args.n_val_per_class,
        n_test_per_class=args.n_test_per_class,
        seed=args.seed,
        size=args.size,
    )
    _emit(args, {"path": str(out)}, f"phantom data written to {out}")


TRAIN_FLAGS = {
    "r": "train.r",
    "mode": "train.mode",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "seed": "train.seed",
    "device": "train.device",
}


def cmd_train(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from .data import infer_source
    from .home import Home
    from .trial import resolve_train_config, train_from_config

    overrides = _overrides(args, {**DATA_FLAGS, **TRAIN_FLAGS})
    if args.data is not None and args.source is None:
        overrides["data.source"] = infer_source(args.data)
    cfg, yaml_pool, yaml_pool_n = resolve_train_config(args.config, overrides)
    bars: list[tqdm] = []  # opened at the first epoch, so that a bad input prints only its error

    def report(epoch: int, metrics: dict[str, Any], state: dict[str, Any]) -> None:
        if not bars:
            bars.append(tqdm(total=cfg.train.epochs, desc="train", unit="epoch", disable=args.json))
        bars[0].set_postfix(
            loss=f"{metrics['train_loss']:.3f}", val_acc=f"{metrics['accuracy']:.3f}", refresh=False
        )
        bars[0].update(1)

    try:
        pool, pool_n = (
            (args.pool, args.pool_n) if args.pool else (yaml_pool, args.pool_n or yaml_pool_n)
        )
        res = train_from_config(cfg, Home.resolve(args.home), pool, args.out, report, pool_n)
    finally:
        for bar in bars:
            bar.close()
    m = res["metrics"]
    auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
    skipped = (
        f"; skipped {res['skipped_images']} unreadable image(s)" if res["skipped_images"] else ""
    )
    if res["pool"] and res["pool"]["skipped"]:
        skipped += f"; skipped {res['pool']['skipped']} unreadable pool image(s)"
    _emit(
        args,
        res,
        f"R={res['r']:g} ({res['mode']}): val accuracy {m['accuracy']:.3f}, F1 {m['f1']:.3f}, "
        f"AUC {auc} on {res['n_val']} images; trained on {res['n_real']} real + "
        f"{res['n_synthetic']} synthetic{skipped}; wrote {res['out']}",
    )


def cmd_clean(args: argparse.Namespace) -> None:
    from .clean import find_targets, human_size, remove, store_sizes
    from .home import Home

    home = Home.resolve(args.home)
    if not args.what:  # no store named: show what there is and how big it is
        sizes = store_sizes(home)
        lines = [f"{k:<7} {human_size(v):>10}  {getattr(home, k)}" for k, v in sizes.items()]
        _emit(args, {"home": str(home.root), "sizes": sizes}, "\n".join(lines))
        return
    targets = find_targets(home, args.what, args.name)
    if not targets:
        _emit(args, {"removed": [], "freed": 0}, "nothing to remove")
        return
    total = sum(t.size for t in targets)
    if not args.yes:
        for t in targets:
            print(f"  {t.kind:<7} {t.name:<40} {human_size(t.size):>10}")
        if not sys.stdin.isatty():
            raise RatioSearchError("clean needs confirmation: run it in a terminal or pass --yes")
        answer = input(f"Remove {len(targets)} entries ({human_size(total)})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return
    freed = remove(targets)
    _emit(
        args,
        {"removed": [str(t.path) for t in targets], "freed": freed},
        f"removed {len(targets)} entries, freed {human_size(freed)}",
    )


FINETUNE_FLAGS = {
    "backend": "finetune.backend",
    "base_model": "finetune.base_model",
    "max_steps": "finetune.max_steps",
    "batch_size": "finetune.batch_size",
    "lr": "finetune.lr",
    "resolution": "finetune.resolution",
    "ema_decay": "finetune.ema_decay",
    "seed": "finetune.seed",
    "device": "finetune.device",
    "from_scratch": "finetune.from_scratch",
}


def cmd_finetune(args: argparse.Namespace) -> None:
    from .config import load_config
    from .diffusion import finetune
    from .home import Home

    home = Home.resolve(args.home)
    overrides = {**_overrides(args, DATA_FLAGS), **_overrides(args, FINETUNE_FLAGS)}
    if args.data is not None and args.source is None:  # --data alone: the path says the source
        from .data import infer_source

        overrides["data.source"] = infer_source(args.data)
    cfg = load_config(args.config, overrides)
    progress = not args.json
    if args.export_base:
        from .diffusion.tiny import BASE_DIR, export_base

        limit = None if args.max_minutes is None else 60.0 * args.max_minutes
        info = export_base(
            cfg.finetune, home, n_per_class=args.n_per_class, size=cfg.data.image_size,
            out_dir=args.out or BASE_DIR, resume=args.resume, progress=progress,
            time_limit_s=limit, command="ratio-search " + " ".join(sys.argv[1:]),
        )  # fmt: skip
        cached = False
    else:
        if args.max_minutes is not None:
            raise RatioSearchError(
                "--max-minutes is only for --export-base (a fine-tune is cached by its steps)"
            )
        from .data import load_dataset

        data = load_dataset(cfg.data, home)
        info = finetune(data, cfg.finetune, home, resume=args.resume, progress=progress)
        cached = info.cached
    stats = info.meta.get("training", {})
    _emit(
        args,
        {"path": str(info.path), "hash": info.hash, "backend": info.meta.get("backend"),
         "cached": cached, "class_names": info.meta.get("class_names"), "training": stats},
        f"model {info.hash} at {info.path}"
        + (" (cached)" if cached else f" ({stats.get('steps')} steps, {stats.get('seconds')} s, loss {stats.get('final_loss')})"),
    )  # fmt: skip


GENERATE_FLAGS = {
    "guidance": "generate.guidance",
    "steps": "generate.steps",
    "seed": "generate.seed",
    "scheduler": "generate.scheduler",
    "postprocess": "generate.postprocess",
    "batch_size": "generate.batch_size",
    "device": "generate.device",
}


def cmd_generate(args: argparse.Namespace) -> None:
    from .config import load_config
    from .home import Home
    from .pools import generate, import_folder_pool

    home = Home.resolve(args.home)
    overrides = {**_overrides(args, DATA_FLAGS), **_overrides(args, GENERATE_FLAGS)}
    if args.n is not None:
        overrides["generate.n"] = args.n  # validated (>= 1) like every other value
    if args.data is not None and args.source is None:  # --data alone: the path says the source
        from .data import infer_source

        overrides["data.source"] = infer_source(args.data)
    cfg = load_config(args.config, overrides)
    if args.from_folder:
        pool = import_folder_pool(home, args.from_folder, cfg.data.image_size, cfg.data.channels,
                                  name=args.name, skip_bad=cfg.data.skip_bad_images)  # fmt: skip
        _emit(args, {"pools": [{"key": pool.key, "path": str(pool.path), "n": pool.n,
                                "generated": pool.generated}]},
              f"pool {pool.key}: {pool.n} images from {args.from_folder} at {pool.path}")  # fmt: skip
        return
    space = None
    if args.space:
        from .space import load_space

        space = load_space(args.space)

    def done(r: dict[str, Any]) -> None:
        if not args.json:
            what = "generated" if r["generated"] else "cached"
            print(f"  {r['key']}  guidance {r['guidance']:<5} steps {r['steps']:<4} {r['scheduler']:<12} "
                  f"{r['postprocess']:<15} n {r['n']:<5} {what} ({r['seconds']} s)")  # fmt: skip

    results = generate(home, cfg, args.model, space, n=args.n, progress=not args.json, on_done=done)
    if space is None and not args.json:
        done(results[0])
    built = sum(r["generated"] for r in results)
    _emit(args, {"pools": results, "generated": built, "cached": len(results) - built},
          f"{len(results)} pool(s) in {home.pools}: {built} generated, {len(results) - built} cached")  # fmt: skip


def cmd_pools(args: argparse.Namespace) -> None:
    from .clean import human_size
    from .home import Home
    from .pools import list_pools, pool_store_size

    home = Home.resolve(args.home)
    if getattr(args, "quality", False):
        return cmd_pools_quality(args, home)
    rows, total = list_pools(home), pool_store_size(home)
    if args.json:
        _emit(args, {"pools": rows, "total_bytes": total, "path": str(home.pools)}, "")
        return
    cols = ("key", "n", "model", "guidance", "steps", "scheduler", "postprocess", "created", "size")
    table = [cols]
    for r in rows:
        model = r["model_hash"] or f"folder:{r['name'] or '-'}"
        table.append((r["key"], str(r["n"]), str(model)[:12], str(r["guidance"] if r["guidance"] is not None else "-"),
                      str(r["steps"] if r["steps"] is not None else "-"), str(r["scheduler"] or "-"),
                      str(r["postprocess"] or "-"), str(r["created"] or "-"), human_size(r["size_bytes"])))  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"{len(rows)} pool(s), {human_size(total)} in {home.pools}")


def cmd_pools_quality(args: argparse.Namespace, home: Any) -> None:
    from .quality import pools_quality

    def say(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr)

    rows = pools_quality(
        home, args.keys, extractor_path=args.feature_extractor, force=args.force, progress=say
    )
    if args.json:
        _emit(args, {"pools": rows}, "")
        return
    cols = ("key", "status", "fd", "kid", "precision", "recall", "c2st", "memorised", "as-class")
    table = [cols]
    for r in rows:
        q = r["quality"] or {}

        def f(k: str, q: dict = q) -> str:
            v = q.get(k)
            return f"{v:.3f}" if isinstance(v, int | float) else "-"

        table.append((r["key"], r["status"], f("fd"), f("kid"), f("precision"), f("recall"), f("c2st"),
                      f("memorisation"), f("label_agreement")))  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for r in rows:
        if r["status"] == "skipped":
            print(f"skipped {r['key']}: {r['reason']}")
    print("c2st: 0.5 = real and generated indistinguishable; memorised: share closer to a training "
          "image than training images are to each other (about 0.05 without copying)")  # fmt: skip


def cmd_data_info(args: argparse.Namespace) -> None:
    from .config import load_config
    from .data import infer_source, load_dataset
    from .home import Home

    overrides = _overrides(args, DATA_FLAGS)
    if args.data is not None and args.source is None:
        overrides["data.source"] = infer_source(args.data)
    cfg = load_config(args.config, overrides)
    ds = load_dataset(cfg.data, Home.resolve(args.home))
    counts = ds.info["counts"]
    obj = {
        "key": ds.key,
        "path": ds.info["path"],
        "class_names": ds.class_names,
        "synthetic_class": ds.synthetic_class,
        "image_size": ds.image_size,
        "channels": ds.channels,
        "counts": counts,
        "info": ds.info,
    }
    width = max(len(c) for c in ds.class_names)
    lines = [f"{'class':<{width}}  " + "  ".join(f"{s:>6}" for s in counts)]
    for c in ds.class_names:
        mark = "  <- synthetic" if c == ds.synthetic_class else ""
        lines.append(f"{c:<{width}}  " + "  ".join(f"{counts[s][c]:>6}" for s in counts) + mark)
    val = ds.info.get("val", {})
    notes = [f"val: {val.get('how')}" + (f" ({val['why']})" if "why" in val else "")]
    if ds.info.get("test", {}).get("how") == "none":
        notes.append(ds.info["test"]["note"])
    if ds.info.get("skipped"):
        notes.append(f"skipped {ds.info['skipped']} unreadable image(s)")
    notes.append(f"cache {ds.info['cache']}: {ds.info['cache_dir']}")
    human = (
        f"{ds.info['source']} {ds.info['path']}: {ds.image_size} px, {ds.channels} channel(s), key {ds.key}\n"
        + "\n".join(lines)
        + "\n"
        + "\n".join(notes)
    )
    _emit(args, obj, human)


def _search_human(s: dict[str, Any]) -> str:
    best = s.get("best")
    line = f"search {s['name']} {s['state']}: {s['n_trials']}/{s['n_trials_asked']} trials"
    if s.get("n_errors"):
        line += f" ({s['n_errors']} failed)"
    if best:
        params = ", ".join(
            f"{k}={best['params'][k]}" for k in ("r", "guidance", "steps") if k in best["params"]
        )
        line += f"; best {s['metric']} {best['metric']:.4f} at {params}"
    line += f"; run folder {s['run_dir']}"
    return line


def cmd_run(args: argparse.Namespace) -> None:
    from .config import load_config
    from .home import Home
    from .search import resume_search, run_search

    home = Home.resolve(args.home)
    if args.resume:
        if not args.name:
            raise RatioSearchError("run --resume needs --name NAME")
        s = resume_search(home, args.name, progress=not args.json)
        _emit(args, s, _search_human(s))
        if s["state"] == "interrupted":
            sys.exit(130)
        return
    overrides = _overrides(args, DATA_FLAGS)
    if args.data is not None and args.source is None:
        from .data import infer_source

        overrides["data.source"] = infer_source(args.data)
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
        progress=not args.json,
        data_overrides={k.split(".", 1)[1]: v for k, v in overrides.items()},
        finetune_cfg=cfg.finetune,
        tracking=not args.no_tracking,
        argv=["ratio-search", *sys.argv[1:]],
    )
    _emit(args, s, _search_human(s))
    if s["state"] == "interrupted":  # Ctrl-C: the summary is out, the exit code says so
        sys.exit(130)


def cmd_resume(args: argparse.Namespace) -> None:
    from .home import Home
    from .search import resume_search

    s = resume_search(Home.resolve(args.home), args.name, progress=not args.json)
    _emit(args, s, _search_human(s))
    if s["state"] == "interrupted":
        sys.exit(130)


def cmd_status(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from .home import Home
    from .search import list_runs, run_status

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
            t.add_row(
                r["name"], str(r["state"]), f"{r['done']}/{r['n_trials']}", best, str(r["created"])
            )
        console.print(t)
        return
    s = run_status(home, args.name)
    if args.json:
        print(json.dumps(s, default=str))
        return
    metric = s["metric"]
    t = Table(title=f"{s['name']}: {s['state']}, {s['done']}/{s['n_trials']} trials done")
    for col in ("trial", "state", "R", "guidance", "steps", "epoch", metric):
        t.add_column(col)
    best_id = (s["best"] or {}).get("trial_id")
    for r in s["trials"]:
        v = r.get(metric)
        style = "bold green" if r["trial_id"] == best_id else None
        t.add_row(r["trial_id"], r["state"], str(r["r"]), str(r["guidance"]), str(r["steps"]),
                  str(r["epoch"]), "" if v is None else f"{v:.4f}", style=style)  # fmt: skip
    console.print(t)
    if s["best"]:
        p = s["best"]["params"] or {}
        console.print(f"best: {metric} {s['best']['metric']:.4f} (trial {best_id}: "
                      f"R={p.get('r')}, guidance={p.get('guidance')}, steps={p.get('steps')})")  # fmt: skip
    if s["state"] in ("interrupted", "crashed", "failed"):
        console.print(f"resume with: ratio-search resume {s['name']}")


def cmd_export(args: argparse.Namespace) -> None:
    from .export import build_export, write_export
    from .home import Home

    if getattr(args, "no_confirm", True):
        doc = build_export(Home.resolve(args.home), args.name, trial_id=args.trial)
    else:
        from .confirm import export_with_confirmation

        doc = export_with_confirmation(
            Home.resolve(args.home), args.name, trial_id=args.trial, top_k=args.top_k,
            n_seeds=args.confirm_seeds, tolerance=args.tolerance, confirm_r=args.confirm_r,
            progress=None if args.json else (lambda m: print(m, file=sys.stderr)),
        )  # fmt: skip
    path = write_export(doc, args.out)
    exp = doc["expected"]
    value = exp["value"]
    shown = "n/a" if value is None else f"{value:.4f}"
    params = exp["params"]
    gen = " ".join(f"{k}={params[k]}" for k in ("guidance", "steps") if k in params)
    _emit(
        args,
        {"path": str(path), **doc},
        f"{args.name}: trial {exp['trial_id']} (R={doc['train']['r']:g} {gen}".rstrip()
        + f") {exp['metric']}={shown}; wrote {path} (reproduce: ratio-search train --config {path})"
        + _confirm_line(exp.get("confirm")),
    )


def _confirm_line(c: dict[str, Any] | None) -> str:
    """The confirmation's answer in one line (empty without a confirmation)."""
    if not c:
        return ""
    m = c["metric"]
    ch, base = c["test"]["chosen"], c["test"]["baseline"]
    tm = "test_" + m.removeprefix("val_")
    text = f"\nconfirmed over {len(c['seeds'])} seeds: chosen {c['chosen']['label']}"
    if tm in ch:
        text += (
            f"; test {tm.removeprefix('test_')} {ch[tm]['mean']:.4f} ± {ch[tm]['half_width']:.4f}"
        )
    if tm in ch and tm in base and not c["chosen"].get("is_baseline"):
        text += f" vs {base[tm]['mean']:.4f} ± {base[tm]['half_width']:.4f} at R=0"
    u = c["usable_ratio"]
    flag = "" if u["confirmed"] else " (unconfirmed)"
    return (
        text + f"; usable synthetic ratio {u['r']:g}{flag} (within {u['tolerance']:g} of the best)"
    )


def cmd_ui(args: argparse.Namespace) -> None:
    from .home import Home
    from .tracking import serve_ui

    home = Home.resolve(args.home)
    uri = home.tracking_uri()
    if not uri.startswith("sqlite:"):
        raise RatioSearchError(
            f"MLFLOW_TRACKING_URI is {uri}: open that server's own UI, or unset it to use {home.mlruns}"
        )
    home.mlruns.mkdir(parents=True, exist_ok=True)

    def ready(url: str) -> None:
        if args.host in ("0.0.0.0", "::"):  # reachable from other machines by this one's name
            import socket

            url = f"http://{socket.getfqdn()}:{args.port}"
        if args.server:
            print(f"MLflow tracking server at {url} (store {uri})", flush=True)
            print(f"searches log to it with: ratio-search run --tracking-uri {url} ...", flush=True)
        else:
            print(f"MLflow UI at {url} (store {uri}); Ctrl-C stops it", flush=True)

    serve_ui(
        uri,
        host=args.host,
        port=args.port,
        server=args.server,
        log_path=home.mlruns / "ui.log",
        on_ready=ready,
    )


def cmd_report(args: argparse.Namespace) -> None:
    from .home import Home
    from .report import build_report

    result = build_report(
        Home.resolve(args.home), args.name, args.out, best_path=args.best, tolerance=args.tolerance,
        grid_n=args.grid, classifier_path=args.classifier,
    )  # fmt: skip
    _emit(args, result, f"{result['summary']}\nreport: {result['html']}")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo, where_to_look
    from .home import Home

    out = run_demo(
        Home.resolve(args.home),
        name=args.name,
        trials=args.trials,
        concurrency=args.concurrency,
        confirm_seeds=args.confirm_seeds,
        top_k=args.top_k,
        progress=not args.json,
    )
    _emit(args, out, where_to_look(out))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        handler(args)
    except RatioSearchError as e:
        sys.stderr.write(f"ratio-search: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("ratio-search: interrupted\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
