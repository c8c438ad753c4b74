"""The command line: argument parsing and printing only. Nothing imports this package.

One module per command group builds its sub-parsers and holds their handlers: :mod:`.data`,
:mod:`.finetune` (finetune, generate, pools), :mod:`.search` (run, resume, status),
:mod:`.evidence` (train, export, report) and :mod:`.home` (clean, ui, demo). Flags that set a
config value are built from the config fields (:mod:`._flags`).

Every handler calls into the library; any :class:`RatioSearchError` becomes one line on stderr
and exit code 2, never a traceback. Progress follows one convention: tqdm bars for long loops and
messages through the progress logger (:mod:`ratio_search.search.progress`: plain lines on
stderr); with ``--json`` neither is shown and stdout holds one JSON object.
"""

from __future__ import annotations

import argparse
import signal
import sys

from ..errors import RatioSearchError
from . import data, evidence, finetune, home, search
from ._flags import Parser


def _version() -> str:
    from .. import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ratio-search",
        description="Find how much diffusion-generated synthetic data to mix into a real training set.",
    )
    parser.add_argument("--version", action="version", version=f"ratio-search {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    dsub = data.add_data(sub)
    evidence.add_train(sub)
    home.add_clean(sub)
    finetune.add_finetune(sub)
    finetune.add_generate(sub)
    finetune.add_pools(sub)
    data.add_data_info(dsub)
    search.add_run(sub)
    search.add_resume(sub)
    search.add_status(sub)
    evidence.add_export(sub)
    home.add_ui(sub)
    evidence.add_report(sub)
    home.add_demo(sub)
    return parser


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
        # We are leaving: a second signal during the interpreter's shutdown must not turn the
        # clean exit 130 (work saved, resumable) into a death by signal.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        sys.stderr.write("ratio-search: interrupted\n")
        return 130
    return 0


def _forget_unhandled_interrupt() -> None:
    """Clear CPython's "unhandled KeyboardInterrupt" flag after we handled the interrupt.

    When a KeyboardInterrupt leaves code run by a string ``exec`` (``dataclasses`` builds every
    ``__init__`` that way, so an interrupt during an import can land there), CPython sets a flag
    that stays set even after we catch the exception. Under ``python -m`` the interpreter checks
    it at exit and kills itself with SIGINT, so the process dies by signal (-2) instead of exiting
    130. Every string ``exec`` clears the flag when it starts, so one harmless ``exec`` here puts
    the exit code back to ours. The console script does not check the flag at all.
    """
    exec("pass", {})


def run() -> None:
    """The console entry point: exit with :func:`main`'s code. An interrupt that gets past
    main's own handling still exits 130, the documented code for "stopped, resumable"."""
    try:
        code = main()
    except KeyboardInterrupt:
        code = 130
    if code == 130:  # either way we handled an interrupt: the exit code must stay ours
        _forget_unhandled_interrupt()
    sys.exit(code)


__all__ = ["build_parser", "main", "run"]
