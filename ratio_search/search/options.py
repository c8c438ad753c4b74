"""What ``ratio-search run`` asks of a search, as one typed record (:class:`SearchOptions`)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from ..config import Config, DataConfig, FinetuneConfig
from ..errors import ConfigError
from .space import METRICS, Space

# Ray Tune trial schedulers (not the diffusion sampler's schedulers): run every trial to the end,
# or stop the weak ones early (ASHA).
TUNE_SCHEDULERS = ("fifo", "asha")


@dataclass
class SearchOptions:
    """The options of one search; every field has the default of ``ratio-search run``."""

    name: str | None = None  # default: search-YYYYmmdd-HHMMSS
    space: str | os.PathLike | Space = "default"  # a path, a bundled name or a Space
    n_trials: int | None = None  # default: the space's search.n_trials, grid size, or 20
    gpus: int | None = None  # default: every local GPU
    gpus_per_trial: float | None = None
    cpus_per_trial: float | None = None
    concurrency: int | None = None  # default: as many trials as fit at once
    scheduler: str = "fifo"  # one of TUNE_SCHEDULERS
    metric: str | None = None  # default: the space's
    seed: int = 0
    address: str | None = None  # a Ray cluster to join (default: a private local Ray)
    tracking_uri: str | None = None  # default: the home's MLflow store
    # The base data config (defaults, or --config); then the space's data: block, then
    # data_overrides (the command line).
    data_cfg: DataConfig | None = None
    model: str | None = "latest"  # a model folder, or the newest one fine-tuned on this data
    allow_other_data: bool = False  # accept an explicit --model fine-tuned on other data
    progress: bool = True
    data_overrides: dict[str, Any] | None = None
    finetune_cfg: FinetuneConfig | None = None
    tracking: bool = True  # MLflow on (default) or off (trials.jsonl only)
    max_failures: int = 0
    address_timeout: float = 5.0
    argv: list[str] | None = None  # recorded in run.json (default: sys.argv)

    def __post_init__(self) -> None:
        if self.scheduler not in TUNE_SCHEDULERS:
            raise ConfigError(
                f"--scheduler: {self.scheduler!r} is not one of: {', '.join(TUNE_SCHEDULERS)}"
            )

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> SearchOptions:
        """The options from ``run_search``'s keyword arguments (unknown names: TypeError)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"run_search: unknown option(s): {', '.join(unknown)}")
        return cls(**kwargs)

    def resolve(self, sp: Space) -> tuple[str, str, int]:
        """The search's metric, mode and number of trials on ``sp`` (ConfigError naming the
        flag)."""
        if not sp.params:
            raise ConfigError(
                f"{sp.path or 'the search space'}: no parameters to search (the file is empty or "
                "has no params:); see search_spaces/quick.yaml for one that works"
            )
        if self.metric is not None and self.metric not in METRICS:
            raise ConfigError(
                f"--metric: unknown metric {self.metric!r}; allowed: {', '.join(METRICS)}"
            )
        metric = self.metric or sp.metric
        mode = sp.mode if metric == sp.metric else METRICS[metric]
        n_trials = int(self.n_trials if self.n_trials is not None else sp.default_trials())
        if n_trials < 1:
            raise ConfigError(f"--trials: must be >= 1, got {n_trials}")
        return metric, mode, n_trials

    def data_config(self, sp: Space) -> DataConfig:
        """Defaults/--config, then the space's data: block, then the command line."""
        dcfg = sp.data_config(self.data_cfg)
        if self.data_overrides:
            from ..config import _apply

            cfg = Config(data=dcfg)
            _apply(cfg, {"data": dict(self.data_overrides)}, "command line")
            dcfg = cfg.data
        return dcfg


__all__ = ["TUNE_SCHEDULERS", "SearchOptions"]
