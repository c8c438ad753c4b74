"""The evidence behind a search's answer: multi-seed confirmation, intervals, ``best.yaml``.

- :mod:`.stats`: means with t-intervals, paired differences, the usable-ratio rule (pure numbers);
- :mod:`.candidates`: which configurations a confirmation compares, and their summaries;
- :mod:`.runs`: the confirmation's training runs (a search's trials re-run outside Ray), cached;
- :mod:`.confirm`: :func:`confirm`, the confirmation of a finished search;
- :mod:`.export`: :func:`build_export` / :func:`write_export` (``best.yaml``), with confirmation.

May import everything below it (config, data, pools, train, search, tracking); nothing imports it
but the report and the command line. Names are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Interval": "stats",
    "mean_ci": "stats",
    "paired_difference": "stats",
    "usable_ratio": "stats",
    "UsableRatio": "stats",
    "METRICS": "candidates",
    "Candidate": "candidates",
    "config_signature": "candidates",
    "group_of": "candidates",
    "label_of": "candidates",
    "RunContext": "runs",
    "confirm": "confirm",
    "build_export": "export",
    "write_export": "export",
    "export_with_confirmation": "export",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
