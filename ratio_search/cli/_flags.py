"""Building blocks of the parser: flags made from the config fields, and the one output helper.

A flag that sets a config value is built from that field's metadata in :mod:`ratio_search.config`
(its help text, its choices, its type), so the help is written once. Each parser remembers which
``dest`` sets which ``section.key`` (``config_keys``); :func:`overrides` turns the parsed
arguments back into ``load_config`` overrides.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from ..config import SECTIONS


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit 2, like every other bad input."""

    def error(self, message: str) -> None:
        sys.stderr.write(f"ratio-search: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _field(key: str) -> dataclasses.Field:
    section, name = key.split(".", 1)
    return {f.name: f for f in dataclasses.fields(SECTIONS[section])}[name]


def _range(lo: Any, hi: Any) -> str:
    """The allowed values, as the help line shows them: `` (>= 1)``, `` (in [0.0, 1.0])``."""
    if lo is not None and hi is not None:
        return f" (in [{lo}, {hi}])"
    return "" if lo is None else f" (>= {lo})"


def config_flag(
    p: argparse.ArgumentParser,
    key: str,
    flag: str | None = None,
    *,
    with_default: bool = False,
) -> None:
    """Add the flag that sets config value ``key`` ("section.name"), described by its field.

    ``flag`` defaults to ``--name`` with dashes. Without ``with_default`` the flag's value is
    None when not given, so that the YAML (or the dataclass default) decides.
    """
    f = _field(key)
    meta, typ = f.metadata, str(f.type)
    flag = flag or "--" + f.name.replace("_", "-")
    kw: dict[str, Any] = {"help": meta["help"] + _range(meta.get("lo"), meta.get("hi"))}
    if typ.startswith("bool"):
        kw.update(action="store_true", default=None)
    else:
        if typ.startswith("list"):
            kw["nargs"] = "+"
            if typ.startswith("list[int]"):
                kw["type"] = int
        elif typ.startswith("int"):
            kw["type"] = int
        elif typ.startswith("float"):
            kw["type"] = float
        if meta.get("choices"):
            kw["choices"] = list(meta["choices"])
        if with_default:
            kw["default"] = f.default
    action = p.add_argument(flag, **kw)
    keys = dict(p.get_default("config_keys") or {})
    keys[action.dest] = key
    p.set_defaults(config_keys=keys)


def overrides(args: argparse.Namespace, sections: tuple[str, ...]) -> dict[str, Any]:
    """The given config flags of ``sections`` as ``{"section.key": value}`` overrides.

    ``--data`` alone (no ``--source``) also sets the source its path implies.
    """
    keys = getattr(args, "config_keys", None) or {}
    out = {
        key: getattr(args, dest)
        for dest, key in keys.items()
        if key.split(".", 1)[0] in sections and getattr(args, dest, None) is not None
    }
    if "data" in sections and getattr(args, "data", None) is not None and args.source is None:
        from ..data import infer_source

        out["data.source"] = infer_source(args.data)
    return out


DATA_KEYS = (
    "data.path",
    "data.source",
    "data.classes",
    "data.synthetic_class",
    "data.image_size",
    "data.max_per_class",
    "data.skip_bad_images",
)


def data_flags(p: argparse.ArgumentParser) -> None:
    """The flags of every command that reads a dataset (``--data`` sets ``data.path``)."""
    for key in DATA_KEYS:
        config_flag(p, key, "--data" if key == "data.path" else None)


def home_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", help="home directory (default: cwd)")


def json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")


def common(p: argparse.ArgumentParser) -> None:
    """--home, --config and --json of the commands that read a config."""
    p.add_argument(
        "--home", help="home directory for mlruns/, runs/, models/, pools/ (default: cwd)"
    )
    p.add_argument("--config", help="YAML config (sections data, train, finetune, generate)")
    json_flag(p)


def data_command(sub: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    """A sub-command that reads a config and a dataset: --home, --config, --json, data flags."""
    p = sub.add_parser(name, help=help)
    common(p)
    data_flags(p)
    return p


def emit(args: argparse.Namespace, obj: dict[str, Any], human: str) -> None:
    """Print one JSON object with --json, else the human summary."""
    if getattr(args, "json", False):
        print(json.dumps(obj, default=str))
    else:
        print(human)


def say(msg: str) -> None:
    """A progress message of the library, shown as a plain line on stderr (the one progress
    logger, :mod:`ratio_search.search.progress`)."""
    from ..search.progress import logger

    logger.info(msg)


def table(*columns: str, title: str | None = None) -> Table:
    """A plain rich table: no borders, two spaces between left-aligned columns."""
    t = Table(title=title, box=None, pad_edge=False, show_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c, no_wrap=True)
    return t


def print_table(t: Table) -> None:
    """Print a table; without a terminal at its natural width and with no trailing blanks.

    rich wraps to 80 columns without a terminal; a piped table should keep one line per row.
    """
    console = Console()
    if console.is_terminal:
        console.print(t)
        return
    width = Measurement.get(console, console.options.update_width(10_000), t).maximum
    console = Console(width=max(80, width), color_system=None)
    with console.capture() as cap:
        console.print(t)
    print("\n".join(line.rstrip() for line in cap.get().splitlines()))
