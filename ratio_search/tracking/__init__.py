"""MLflow tracking: the only package that imports mlflow.

- :mod:`.mlflow`: :class:`SearchTracker`, a search's parent run, its trials' child runs and the
  clean-up of runs a killed driver left RUNNING;
- :mod:`.callback`: :class:`MLflowTrialCallback`, the Ray Tune callback that writes them (and,
  through :mod:`ratio_search.search.trials`, trials.jsonl);
- :mod:`.jobs`: one-off runs (fine-tune, pool build, ``export --confirm``'s confirmation runs);
- :mod:`.ui`: the MLflow UI / tracking server as a supervised child process (no mlflow import);
- :mod:`.store`: the experiment, the artifact folder and the helpers every writer shares;
- :mod:`.lineage`: the datasets each run was trained on (dataset inputs) and the parent's note;
- :mod:`.models`: the confirmed classifier as an MLflow PyTorch model (``export``, ``--register``);
- :mod:`.links`: addresses in the MLflow UI (the runs table of the newest search; no mlflow import).

Names load on first use, so that ``ratio-search ui`` does not import mlflow or Ray in-process.
May import ``_io``, ``errors``, ``config``, ``search.{trials,runinfo,space,sysmetrics}`` and
``train.cnn`` (the classifier it logs); nothing else of ours.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "EXPERIMENT_NAME": "store",
    "KIND_TAG": "store",
    "PARENT_TAG": "store",
    "TRIAL_TAG": "store",
    "artifact_root_for": "store",
    "get_or_create_experiment": "store",
    "SearchTracker": "mlflow",
    "MLflowTrialCallback": "callback",
    "log_job": "jobs",
    "log_confirm_runs": "jobs",
    "port_is_free": "ui",
    "serve_ui": "ui",
    "stop_process_group": "ui",
    "ui_command": "ui",
    "wait_for_http": "ui",
    "runs_page": "links",
    "newest_search": "links",
    "log_chosen_model": "models",
}
# trials.jsonl I/O lives in search.trials; the old names here (removed at integration).
_ALIASES = {"read_trials_jsonl": "read_trials", "append_jsonl": "append_trial"}
__all__ = sorted([*_WHERE, *_ALIASES])


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    elif name in _ALIASES:
        from ..search import trials

        value = getattr(trials, _ALIASES[name])
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
