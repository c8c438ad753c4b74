"""``ratio-search data phantom|info``: write the phantom data, or load a dataset and show it."""

from __future__ import annotations

import argparse

from ._flags import (
    Parser,
    config_flag,
    data_command,
    emit,
    json_flag,
    overrides,
    table,
)


def add_data(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The ``data`` group; returns its sub-parsers (``info`` is added later, keeping help order)."""
    p = sub.add_parser("data", help="make or inspect datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="WHAT", parser_class=Parser)
    q = dsub.add_parser("phantom", help="write the embedded phantom OCT data as an image folder")
    q.add_argument("--out", required=True, help="output folder")
    config_flag(q, "data.phantom_n_per_class", "--n-per-class", with_default=True)
    config_flag(q, "data.phantom_val_per_class", "--n-val-per-class", with_default=True)
    config_flag(q, "data.phantom_test_per_class", "--n-test-per-class", with_default=True)
    q.add_argument("--seed", type=int, default=0, help="seed of the phantom generator")
    q.add_argument("--size", type=int, default=64, help="rendered image size in pixels")
    json_flag(q)
    q.set_defaults(handler=cmd_data_phantom)
    return dsub


def add_data_info(dsub: argparse._SubParsersAction) -> None:
    q = data_command(
        dsub, "info", "load a dataset (decoding and caching it once) and show its splits"
    )
    q.set_defaults(handler=cmd_data_info)


def cmd_data_phantom(args: argparse.Namespace) -> None:
    from ..data.phantom import write_phantom_folder

    out = write_phantom_folder(
        args.out,
        n_per_class=args.n_per_class,
        n_val_per_class=args.n_val_per_class,
        n_test_per_class=args.n_test_per_class,
        seed=args.seed,
        size=args.size,
    )
    emit(args, {"path": str(out)}, f"phantom data written to {out}")


def cmd_data_info(args: argparse.Namespace) -> None:
    from ..config import load_config
    from ..data import load_dataset
    from ..home import Home
    from ._flags import print_table

    cfg = load_config(args.config, overrides(args, ("data",)))
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
    if args.json:
        emit(args, obj, "")
        return
    print(
        f"{ds.info['source']} {ds.info['path']}: {ds.image_size} px, {ds.channels} channel(s), key {ds.key}"
    )
    t = table("class", *counts, "")
    for col in t.columns[1:-1]:  # the split counts
        col.justify = "right"
    for c in ds.class_names:
        mark = "<- synthetic" if c == ds.synthetic_class else ""
        t.add_row(c, *(str(counts[s][c]) for s in counts), mark)
    print_table(t)
    val = ds.info.get("val", {})
    notes = [f"val: {val.get('how')}" + (f" ({val['why']})" if "why" in val else "")]
    if ds.info.get("test", {}).get("how") == "none":
        notes.append(ds.info["test"]["note"])
    if ds.info.get("skipped"):
        notes.append(f"skipped {ds.info['skipped']} unreadable image(s)")
    notes.append(f"cache {ds.info['cache']}: {ds.info['cache_dir']}")
    print("\n".join(notes))
