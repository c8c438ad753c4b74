"""``run.json``: the identity and state of one search, as one typed record (:class:`RunInfo`).

The driver writes it atomically at every change of state, the first time (state "starting")
before any long step, so that a search killed in its set-up can be resumed; ``phase`` says which
step it is in (data, model, tracking, pools, trials). ``status``, ``export``, ``report`` and
``resume`` read it; a file that is not an object or holds a bad value is named with its repair. A run.json written by an older version loads too: keys this version does not
know are kept (``extra``) and written back unchanged, missing ones take their defaults.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .._io import atomic_write_json, utc_now
from ..errors import SearchError

RUN_JSON = "run.json"
STATES = ("starting", "running", "finished", "interrupted", "failed")
# The set-up steps and the trials, in order (``RunInfo.phase``).
PHASES = ("data", "model", "tracking", "pools", "trials")

_T = TypeVar("_T")


def _build(cls: type[_T], doc: Any) -> _T:
    """``cls`` from a dict: known keys become fields (nested records built too), others ``extra``."""
    doc = dict(doc or {})
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name == "extra" or f.name not in doc:
            continue
        value = doc.pop(f.name)
        sub = _NESTED.get(f.name)
        kwargs[f.name] = _build(sub, value) if sub is not None and cls is RunInfo else value
    return cls(**kwargs, extra=doc)  # type: ignore[call-arg]


def _dump(obj: Any) -> dict[str, Any]:
    """A record as the dict it was read from: its fields, then its ``extra`` keys."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.name == "extra":
            continue
        v = getattr(obj, f.name)
        out[f.name] = _dump(v) if dataclasses.is_dataclass(v) else v
    out.update(obj.extra)
    return out


@dataclass
class MlflowInfo:
    """Where the search is tracked: store, experiment and the search's parent run."""

    tracking_uri: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RayInfo:
    """The search's Ray: its private temp dir (or the joined cluster) and the driver's pid."""

    temp_dir: str | None = None
    address: str | None = None
    driver_pid: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunOptions:
    """How the search runs: scheduler, cluster, failure budget and per-trial resources."""

    scheduler: str = "fifo"
    address: str | None = None
    address_timeout: float = 5.0
    max_failures: int = 0
    # gpus, gpus_per_trial, cpus_per_trial, concurrency, num_cpus (resources.resolve_resources)
    resources: dict[str, Any] = field(default_factory=dict)
    concurrency: int = 1
    model: str | None = "latest"  # the generator asked for (a folder, or "latest")
    allow_other_data: bool = False  # an explicit --model fine-tuned on other data is accepted
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunInfo:
    """One search's run.json."""

    name: str = ""
    state: str = "running"  # one of STATES
    host: str | None = None  # the machine the driver runs on (with ray.driver_pid)
    created: str | None = None
    n_trials: int = 0
    metric: str = "val_accuracy"
    mode: str = "max"
    space_path: str | None = None
    space: dict[str, Any] = field(default_factory=dict)  # the space as a dict (space.yaml's)
    data_key: str | None = None
    model_hash: str | None = None
    model_path: str | None = None  # None when no trial needs generated images
    model_meta: dict[str, Any] | None = None
    # generator checkpoint -> [path, meta] (generate.finetune_steps; "0" is model_path, the final)
    models: dict[str, Any] = field(default_factory=dict)
    pool_n: int = 0  # images per pool
    mlflow: MlflowInfo = field(default_factory=MlflowInfo)
    ray: RayInfo = field(default_factory=RayInfo)
    argv: list[str] = field(default_factory=list)
    seed: int = 0
    options: RunOptions = field(default_factory=RunOptions)
    pools_built: bool = False
    phase: str | None = None  # one of PHASES while the driver runs
    updated: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> RunInfo:
        """A RunInfo from a parsed run.json (unknown keys kept in ``extra``)."""
        if not isinstance(doc, dict):
            raise ValueError(f"it holds a JSON {type(doc).__name__}, not an object")
        for key in _NESTED:
            if doc.get(key) is not None and not isinstance(doc[key], dict):
                raise ValueError(f"{key}: must be an object, got {doc[key]!r}")
        info = _build(cls, doc)
        info._validate()
        return info

    def _validate(self) -> None:
        """ValueError naming the first field whose value no reader could use."""
        if self.state not in STATES:
            raise ValueError(f"state: {self.state!r} is not one of {', '.join(STATES)}")
        pid = self.ray.driver_pid
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0):
            raise ValueError(f"ray.driver_pid: {pid!r} is not a process id")
        if isinstance(self.n_trials, bool) or not isinstance(self.n_trials, int):
            raise ValueError(f"n_trials: {self.n_trials!r} is not a whole number")
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode: {self.mode!r} is not max or min")

    def to_dict(self) -> dict[str, Any]:
        """The run.json object (``extra`` keys included, as read)."""
        return _dump(self)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> RunInfo:
        """Read ``folder/run.json``; SearchError naming the file and the repair when it is broken."""
        p = Path(folder) / RUN_JSON
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise SearchError(
                f"{p}: cannot read the run's state ({e}); repair the file, or remove the run "
                f"with: ratio-search clean runs --name {Path(folder).name} --yes"
            ) from None

    def save(self, folder: str | os.PathLike) -> None:
        """Write ``folder/run.json`` atomically, stamping ``updated``."""
        self.updated = utc_now()
        atomic_write_json(Path(folder) / RUN_JSON, self.to_dict())


_NESTED: dict[str, type] = {"mlflow": MlflowInfo, "ray": RayInfo, "options": RunOptions}


__all__ = ["PHASES", "RUN_JSON", "STATES", "MlflowInfo", "RayInfo", "RunInfo", "RunOptions"]
