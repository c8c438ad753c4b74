"""The search's progress messages: plain lines on stderr, through :mod:`logging`.

One logger (``ratio_search.progress``) with its own handler that prints the bare message to the
*current* ``sys.stderr`` (so that ``--json`` keeps stdout to one JSON object, and a test's
captured stderr sees it). It does not propagate: a root handler configured by an application does
not print every line twice.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("ratio_search.progress")


class _StderrHandler(logging.Handler):
    """Print the message alone, flushed, on whatever ``sys.stderr`` is now."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - a closed stderr must not end a search
            self.handleError(record)


if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
    logger.addHandler(_StderrHandler())
logger.setLevel(logging.INFO)
logger.propagate = False


def say(msg: str, show: bool = True) -> None:
    """One progress line (when ``show``)."""
    if show:
        logger.info(msg)


__all__ = ["logger", "say"]
