"""The evidence behind a search's answer: multi-seed confirmation, intervals, ``best.yaml``.

- :mod:`.stats`: means with t-intervals and paired differences over seeds (pure numbers);
- :mod:`.paired`: the paired bootstrap over seeds and images, the sequential stopping rule;
- :mod:`.noninferiority`: the usable synthetic ratio as a non-inferiority test against R = 0;
- ``search.looks``: every look at the test split (``test_looks.jsonl``, a run-folder record);
- :mod:`.testsplit`: the test split's sequential confirmation; :mod:`.answer`: the answer's words;
- :mod:`.candidates`: which configurations a confirmation compares, and their summaries;
- :mod:`.runs`: the confirmation's training runs (a search's trials re-run outside Ray), cached;
- :mod:`.confirm`: :func:`confirm`, the confirmation of a finished search;
- :mod:`.export`: :func:`build_export` / :func:`write_export` (``best.yaml``), with confirmation.

May import everything below it (config, data, pools, train, search, tracking); nothing imports it
but the report and the command line. (No torch at import: the runs import it when they train.)
"""

from __future__ import annotations

from .candidates import METRICS, Candidate, config_signature, group_of, label_of
from .confirm import confirm
from .export import build_export, export_with_confirmation, write_export
from .noninferiority import NonInferiority, usable_ratio_ni
from .paired import PairedDiff, paired_bootstrap, sequential_paired
from .runs import RunContext
from .stats import Interval, mean_ci, paired_difference

__all__ = [
    "METRICS",
    "Candidate",
    "Interval",
    "RunContext",
    "NonInferiority",
    "PairedDiff",
    "build_export",
    "config_signature",
    "confirm",
    "export_with_confirmation",
    "group_of",
    "label_of",
    "mean_ci",
    "paired_difference",
    "paired_bootstrap",
    "sequential_paired",
    "usable_ratio_ni",
    "write_export",
]
