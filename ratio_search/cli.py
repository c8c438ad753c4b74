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
    return {key: getattr(args, dest) for dest, key in mapping.items() if getattr(args, dest, None) is not None}


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
    p.add_argument("--data", help="image folder (train/val/test/CLASS/*) or .npz file; default: phantom")
    p.add_argument("--source", choices=["imagefolder", "npz", "phantom"], help="data source (default: from --data)")
    p.add_argument("--classes", nargs="+", help="class folders to use, in label order")
    p.add_argument("--synthetic-class", help="class that receives synthetic images (default: first)")
    p.add_argument("--image-size", type=int, help="resize to S x S (default 32)")
    p.add_argument("--max-per-class", type=int, help="cap on real training images per class")
    p.add_argument("--skip-bad-images", action="store_true", default=None, help="skip unreadable images")


def _common(p: argparse.ArgumentParser, json_flag: bool = True) -> None:
    p.add_argument("--home", help="home directory for mlruns/, runs/, models/, pools/ (default: cwd)")
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
    p.add_argument("--mode", choices=["replace", "augment"], help="mixing mode")
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--batch-size", type=int, help="batch size")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--seed", type=int, help="seed")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", help="folder for the resolved config and metrics (default: runs/train-...)")
    p.set_defaults(handler=cmd_train)

    # clean
    p = sub.add_parser("clean", help="remove run folders, pools, models or the data cache")
    p.add_argument("--home", help="home directory (default: cwd)")
    p.add_argument("what", nargs="*", default=[], metavar="STORE",
                   help="stores to clean: runs, pools, models, cache (none: show sizes)")
    p.add_argument("--name", nargs="+", help="only these run names / pool keys / model hashes")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_clean)

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


def cmd_train(args: argparse.Namespace) -> None:
    raise RatioSearchError("train: not wired yet")


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
