"""The search service: Ray Tune + Optuna over a search space, resumable, tracked in MLflow.

- :func:`run_search` / :func:`resume_search` (``search.driver``, imports Ray),
- :func:`run_status` / :func:`list_runs` (``search.runs``, reads run.json and trials.jsonl
  only: no Ray, works while a search runs).
"""

from __future__ import annotations

from typing import Any

from .runs import list_runs, run_status


def run_search(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See :func:`ratio_search.search.driver.run_search`."""
    from .driver import run_search as _run

    return _run(*args, **kwargs)


def resume_search(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See :func:`ratio_search.search.driver.resume_search`."""
    from .driver import resume_search as _resume

    return _resume(*args, **kwargs)


__all__ = ["list_runs", "resume_search", "run_search", "run_status"]
