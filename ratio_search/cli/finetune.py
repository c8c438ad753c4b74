"""``ratio-search finetune | generate | pools``: the generator and its cached pools of images."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import RatioSearchError
from ._flags import (
    config_flag,
    data_command,
    emit,
    home_flag,
    json_flag,
    overrides,
    print_table,
    say,
    table,
)


def add_finetune(sub: argparse._SubParsersAction) -> None:
    p = data_command(sub, "finetune", "fine-tune the diffusion generator once (the upfront job)")
    for key in ("backend", "base_model", "max_steps", "batch_size", "lr", "resolution",
                "ema_decay", "seed", "device", "threads"):  # fmt: skip
        config_flag(p, f"finetune.{key}")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted fine-tune from its last checkpoint",
    )
    config_flag(p, "finetune.from_scratch")
    config_flag(p, "finetune.unconditional")
    config_flag(p, "finetune.save_steps")  # e.g. --save-steps 100 200: generate.finetune_steps
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


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = data_command(
        sub, "generate", "build cached pools of generated images (one, or a space's grid)"
    )
    p.add_argument(
        "--model",
        default="latest",
        help="model folder, model hash, or 'latest' (newest fine-tuned on this data; default)",
    )
    config_flag(p, "generate.guidance")
    config_flag(p, "generate.steps")
    # Not a config flag: without it a space's grid takes the space's pool_size.
    p.add_argument(
        "--n", type=int, help="images per pool (default: the space's pool_size, else 200)"
    )
    for key in ("seed", "scheduler", "postprocess", "batch_size", "device", "threads"):
        config_flag(p, f"generate.{key}")
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


def add_pools(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pools", help="list the cached pools of generated images and their size")
    home_flag(p)
    json_flag(p)
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
    p.add_argument(
        "--pool-n",
        type=int,
        metavar="N",
        help="--quality: measure the first N images of each pool (what a trial with pool size N "
        "uses; default: all)",
    )
    p.set_defaults(handler=cmd_pools)


def cmd_finetune(args: argparse.Namespace) -> None:
    from ..config import load_config
    from ..diffusion import finetune
    from ..home import Home

    home = Home.resolve(args.home)
    cfg = load_config(args.config, overrides(args, ("data", "finetune")))
    progress = not args.json
    if args.export_base:
        from ..diffusion.tiny import BASE_DIR, export_base

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
        from ..data import load_dataset

        data = load_dataset(cfg.data, home)
        info = finetune(data, cfg.finetune, home, resume=args.resume, progress=progress)
        cached = info.cached
    stats = info.meta.get("training", {})
    _emit_model(args, info, cached, stats)


def _emit_model(args: argparse.Namespace, info: Any, cached: bool, stats: dict[str, Any]) -> None:
    emit(
        args,
        {"path": str(info.path), "hash": info.hash, "backend": info.meta.get("backend"),
         "cached": cached, "class_names": info.meta.get("class_names"), "training": stats},
        f"model {info.hash} at {info.path}"
        + (" (cached)" if cached else f" ({stats.get('steps')} steps, {stats.get('seconds')} s, loss {stats.get('final_loss')})"),
    )  # fmt: skip


def _pool_line(r: dict[str, Any]) -> str:
    """One built (or found) pool, as the grid goes."""
    what = "generated" if r["generated"] else "cached"
    return (f"  {r['key']}  guidance {r['guidance']:<5} steps {r['steps']:<4} {r['scheduler']:<12} "
            f"{r['postprocess']:<15} n {r['n']:<5} {what} ({r['seconds']} s)")  # fmt: skip


def cmd_generate(args: argparse.Namespace) -> None:
    from ..config import load_config
    from ..home import Home
    from ..pools import generate, import_folder_pool

    home = Home.resolve(args.home)
    over = overrides(args, ("data", "generate"))
    if args.n is not None:
        over["generate.n"] = args.n  # validated (>= 1) like every other value
    cfg = load_config(args.config, over)
    if args.from_folder:
        pool = import_folder_pool(home, args.from_folder, cfg.data.image_size, cfg.data.channels,
                                  name=args.name, skip_bad=cfg.data.skip_bad_images)  # fmt: skip
        emit(args, {"pools": [{"key": pool.key, "path": str(pool.path), "n": pool.n,
                               "generated": pool.generated}]},
             f"pool {pool.key}: {pool.n} images from {args.from_folder} at {pool.path}")  # fmt: skip
        return
    space = None
    if args.space:
        from ..search.space import load_space

        space = load_space(args.space)

    model, data = _model_and_data(home, args, cfg, space)
    if space is not None:
        model, data = _space_models(home, args, cfg, space, model, data)

    def done(r: dict[str, Any]) -> None:
        if not args.json:
            print(_pool_line(r))

    from ..diffusion.threads import torch_threads  # generate.threads (0: the job's cores)

    with torch_threads(cfg.generate.threads):
        results = generate(
            home, cfg, model, space, n=args.n, progress=not args.json, on_done=done, data=data
        )
    if space is None and not args.json:
        done(results[0])
    built = sum(r["generated"] for r in results)
    emit(args, {"pools": results, "generated": built, "cached": len(results) - built},
         f"{len(results)} pool(s) in {home.pools}: {built} generated, {len(results) - built} cached")  # fmt: skip


def _model_and_data(home: Any, args: argparse.Namespace, cfg: Any, space: Any) -> tuple[str, Any]:
    """``generate`` names no data (no data flag, no data in --config or the space) and the
    model is ``latest``: the newest fine-tuned model of the home and the data it was fine-tuned
    on (its meta.json's ``data_key``, from the cache), said on stderr. Else ``(args.model, None)``:
    the data of the flags, and the newest model fine-tuned on it."""
    from ..config import DataConfig
    from ..diffusion import list_models, read_meta

    named = any(getattr(args, d, None) is not None for d, k in args.config_keys.items()
                if k.startswith("data."))  # fmt: skip
    space_data = bool(getattr(space, "data", None)) if space is not None else False
    if args.model != "latest" or named or space_data or cfg.data != DataConfig():
        return args.model, None
    models = list_models(home)
    if not models:
        return args.model, None  # load_model says: no fine-tuned model, run finetune first
    from ..data import cached_dataset
    from ..errors import DataError

    path = models[-1]
    meta = read_meta(path)
    where = (meta.get("data_info") or {}).get("path", "?")
    data = cached_dataset(home, str(meta["data_key"]), int(meta.get("synthetic_label", 0)))
    if data is None:
        raise DataError(
            f"the newest model {path.name} was fine-tuned on {where} (data key "
            f"{meta['data_key']}), which is no longer in {home.cache}: pass --data {where} "
            "(with the options of that finetune) or --model"
        )
    if not args.json:
        say(f"generate: no --data given: using the newest model {path.name} and its data {where} "
            f"(key {meta['data_key']})")  # fmt: skip
    return str(path), data


def _space_models(
    home: Any, args: argparse.Namespace, cfg: Any, space: Any, model: str, data: Any
) -> tuple[Any, Any]:
    """The generators a space's pools need: ``{finetune_steps: model path}`` when the space
    searches (or fixes) generator checkpoints, else ``model`` unchanged.

    An explicit ``--model``: its saved checkpoints (``checkpoints_of``; a missing one is named by
    the pool builder). ``latest``: the newest model's checkpoints when it has them all, else one
    fine-tune (``finetune`` section of --config) saving them, cached ones reused
    (``finetune_checkpoints``): ``generate --space`` prebuilds everything the search reads.
    """
    # The pool grid's finetune_steps (space.choices("finetune_steps") where R can be > 0): the
    # steps pools.generate builds, and none at all when every trial has R = 0.
    combos = space.pool_grid() if hasattr(space, "pool_grid") else []
    steps = sorted({int(c.get("finetune_steps", cfg.generate.finetune_steps)) for c in combos})
    if steps in ([], [0]):
        return model, data
    from ..diffusion import checkpoints_of, finetune_checkpoints, list_models

    if data is None:
        from ..data import load_dataset

        data_cfg = space.data_config(cfg.data) if hasattr(space, "data_config") else cfg.data
        data = load_dataset(data_cfg, home)
    if args.model != "latest":
        found = checkpoints_of(model, home)
        return {s: str(p) for s, p in found.items() if s in {0, *steps}}, data
    newest = list_models(home, data.key)
    found = checkpoints_of(newest[-1], home) if newest else {}
    if any(s not in found for s in steps):
        if not args.json:
            say(f"generate: fine-tuning a generator for data {data.key} with checkpoints at "
                f"{', '.join(str(s) for s in steps if s)} steps (cached ones are reused)")  # fmt: skip
        infos = finetune_checkpoints(data, cfg.finetune, home, steps, progress=not args.json)
        found = {s: info.path for s, info in infos.items()}
    return {s: str(found[s]) for s in {0, *steps}}, data


def _dash(v: Any) -> str:
    return "-" if v is None or v == "" else str(v)


def cmd_pools(args: argparse.Namespace) -> None:
    from ..clean import human_size
    from ..home import Home
    from ..pools import list_pools, pool_store_size

    home = Home.resolve(args.home)
    if getattr(args, "quality", False):
        return cmd_pools_quality(args, home)
    rows, total = list_pools(home), pool_store_size(home)
    if args.json:
        emit(args, {"pools": rows, "total_bytes": total, "path": str(home.pools)}, "")
        return
    t = table("key", "n", "model", "guidance", "steps", "scheduler", "postprocess", "created",
              "size")  # fmt: skip
    for r in rows:
        model = r["model_hash"] or f"folder:{r['name'] or '-'}"
        t.add_row(r["key"], str(r["n"]), str(model)[:12], _dash(r["guidance"]), _dash(r["steps"]),
                  _dash(r["scheduler"]), _dash(r["postprocess"]), _dash(r["created"]),
                  human_size(r["size_bytes"]))  # fmt: skip
    print_table(t)
    print(f"{len(rows)} pool(s), {human_size(total)} in {home.pools}")


def _with_floor(q: dict[str, Any], name: str) -> str:
    """``value/floor`` of one figure (3 decimals), a dash for what is not there."""
    from ..quality import floor_name

    def f(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, int | float) and not isinstance(v, bool) else "-"

    return f"{f(q.get(name))}/{f(q.get(floor_name(name)))}"


def cmd_pools_quality(args: argparse.Namespace, home: Any) -> None:
    from ..errors import ConfigError
    from ..quality import pools_quality

    pool_n = getattr(args, "pool_n", None)
    if pool_n is not None and pool_n < 1:
        raise ConfigError(f"--pool-n: {pool_n} must be >= 1")
    rows = pools_quality(
        home, args.keys, pool_n=pool_n, extractor_path=args.feature_extractor, force=args.force,
        progress=None if args.json else say,
    )  # fmt: skip
    if args.json:
        emit(args, {"pools": rows}, "")
        return
    names = ("fd", "kid", "precision", "recall", "c2st", "memorisation", "label_agreement")
    t = table("key", "status", "images", "fd", "kid", "precision", "recall", "c2st", "c2st p",
              "memorised", "as-class")  # fmt: skip
    for r in rows:
        q = r["quality"] or {}
        p = q.get("c2st_p_value")
        status = r["status"] if r.get("current", True) or not q else f"{r['status']} (old)"
        t.add_row(r["key"], status, _dash(q.get("n_pool")),
                  *(_with_floor(q, k) for k in names[:5]),
                  f"{p:.2g}" if isinstance(p, int | float) else "-",
                  *(_with_floor(q, k) for k in names[5:]))  # fmt: skip
    print_table(t)
    for r in rows:
        if r["status"] == "skipped":
            print(f"skipped {r['key']}: {r['reason']}")
    print("each figure as pool/floor: the floor is the same figure for two halves of held-out real "
          "images of the pool's class (real vs real, same features and sizes where possible); "
          "the pool is compared with real training images the feature extractor never saw. "
          "c2st: 0.5 = indistinguishable, p = exact binomial test against 0.5; memorised: share "
          "closer to a training image or its mirror image than training images are to each "
          "other (about 0.05 without copying); old = figures of an older measurement (no floor, "
          "the extractor's own training images): run with the dataset cached to re-measure")  # fmt: skip
