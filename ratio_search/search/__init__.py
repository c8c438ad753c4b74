"""The search service: Ray Tune + Optuna over a search space, resumable, tracked in MLflow.

- :mod:`.space` (+ :mod:`.space_params`): a space file -> Optuna distributions, fixed values, pools;
- :mod:`.runinfo`: :class:`RunInfo`, run.json as one typed record;
- :mod:`.trials`: the one reader/writer of trials.jsonl, its record builder, the best trial;
- :mod:`.runs`: run folders, names, ``status`` (run.json and trials.jsonl only: no Ray, works
  while a search runs);
- :mod:`.options`: :class:`SearchOptions`, what ``ratio-search run`` asks for;
- :mod:`.resources` (CPUs/GPUs, Ray start or join), :mod:`.setup` (data, generator, pools),
  :mod:`.tuner` (the Tuner), :mod:`.driver` (:func:`run_search` / :func:`resume_search`);
- :mod:`.trainable` (one trial in a Ray worker), :mod:`.searcher` (Optuna inside Tune),
  :mod:`.callbacks` (driver-side Tune callbacks), :mod:`.procs` (leftover Ray processes),
  :mod:`.progress` (the progress lines).

Importing this package (or ``.space``, ``.trials``, ``.runinfo``) imports neither Ray nor the
driver; :func:`run_search` and :func:`resume_search` load them on first call.
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


def __getattr__(name: str) -> Any:
    # The typed records, loaded on first use (options imports the config and the space).
    if name == "SearchOptions":
        from .options import SearchOptions

        return SearchOptions
    if name == "RunInfo":
        from .runinfo import RunInfo

        return RunInfo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RunInfo", "SearchOptions", "list_runs", "resume_search", "run_search", "run_status"]
