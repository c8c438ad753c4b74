"""The Optuna searcher of a search: TPE (constant liar), grid or random, stored in ``optuna.db``.

A module of its own (with top-level Ray imports) because Tune pickles the searcher into the
experiment state: the class must be importable by name when a search is restored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from ..errors import SearchError
from .space import Space, parse_space

logger = logging.getLogger(__name__)

# OptunaSearch keeps its Optuna study and its Tune-trial -> Optuna-trial map in private
# attributes; everything this module needs of them goes through _Internals. Supported: the
# range pyproject allows, ray[tune] >= 2.40 with optuna >= 3.6; tested with ray 2.60.0 and
# optuna 5.0.0 (tests/test_search.py checks that the installed Ray still has them).
_PRIVATE = ("_ot_trials", "_ot_study", "_completed_trials")


class _Internals:
    """The private state of a Ray ``OptunaSearch`` that the searcher reads: one place to fix
    when Ray renames it. Raises SearchError naming what is missing."""

    def __init__(self, search: OptunaSearch) -> None:
        missing = [a for a in _PRIVATE if not hasattr(search, a)]
        study = getattr(search, "_ot_study", None)
        if study is not None and not hasattr(study, "_storage"):
            missing.append("_ot_study._storage")
        if missing:
            import ray

            raise SearchError(
                f"ray {ray.__version__}: OptunaSearch lacks {', '.join(missing)}; this version "
                "of ratio-search is tested with ray 2.60 (pip install 'ray[tune]==2.60.0')"
            )
        self.search = search

    @property
    def trials(self) -> dict[str, Any]:
        """Tune trial id -> its ``optuna.Trial``."""
        return self.search._ot_trials

    @property
    def completed(self) -> set[str]:
        """Tune trial ids already told to Optuna."""
        return self.search._completed_trials

    @property
    def study(self) -> optuna.Study:
        return self.search._ot_study

    @property
    def storage(self) -> optuna.storages.BaseStorage:
        return self.search._ot_study._storage

    def open(self, trial_id: str) -> bool:
        """Whether Tune trial ``trial_id`` has an Optuna trial not yet told."""
        return trial_id in self.trials and trial_id not in self.completed

    def frozen(self, trial_id: str) -> optuna.trial.FrozenTrial:
        """The stored state of Tune trial ``trial_id``'s Optuna trial."""
        return self.storage.get_trial(self.trials[trial_id]._trial_id)


class RatioOptunaSearch(OptunaSearch):
    """OptunaSearch with three changes.

    - Suggested values are snapped onto the space's grid (no 0.30000000000000004 in pool keys,
      configs or MLflow params), and an augment trial's R is capped at ``r.augment_high``.
    - A trial that ASHA stopped early is told to Optuna as PRUNED (with its last reported value as
      an intermediate value), not as COMPLETE at a half-trained score that TPE would trust.
    - After a restore, Optuna trials that no Tune trial owns any more (suggested just before a
      crash, after the last experiment checkpoint) are marked FAIL, so that constant-liar TPE does
      not treat them as running forever.
    """

    def __init__(self, *args: Any, space_dict: dict[str, Any], **kwargs: Any) -> None:
        self._space_dict = space_dict
        super().__init__(*args, **kwargs)

    def suggest(self, trial_id: str):
        params = super().suggest(trial_id)
        if params is None:
            return None
        # Snapped, and r capped for an augment trial (r.augment_high): Optuna keeps the value it
        # suggested, so TPE sees augment's R above the bound as a plateau at the bound.
        return parse_space(self._space_dict).sampled_params(params)

    @property
    def internals(self) -> _Internals:
        return _Internals(self)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        ot = self.internals
        if ot.open(trial_id) and ot.frozen(trial_id).state.is_finished():
            # A trial that finished just before a crash, restored as unfinished by Tune, finishes
            # again at once: Optuna already has its value.
            ot.completed.add(trial_id)
            return
        stopped_early = (
            result is not None
            and not error
            and int(result.get("epoch", 0) or 0) < int(result.get("epochs", 0) or 0)
            and ot.open(trial_id)
        )
        if stopped_early:
            try:
                ot.study.tell(ot.trials[trial_id], state=optuna.trial.TrialState.PRUNED)
            except Exception as e:  # never end a search over bookkeeping
                logger.warning("optuna: %s", e)
            ot.completed.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self.fail_orphans()

    def fail_orphans(self) -> int:
        """Mark RUNNING Optuna trials that no live Tune trial owns as FAIL; return how many."""
        ot = self.internals
        owned = {t._trial_id for tid, t in ot.trials.items() if tid not in ot.completed}
        n = 0
        running = ot.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for t in running:
            if t._trial_id not in owned:
                ot.storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
                n += 1
        return n


def make_searcher(
    space: Space, run_dir: Path, name: str, metric: str, mode: str, seed: int
) -> RatioOptunaSearch:
    """The searcher for ``space``, its study ``name`` kept in ``run_dir/optuna.db``.

    TPE (seeded, ``n_startup_trials`` from the space, ``constant_liar`` so that parallel trials
    do not all get the same suggestion), or ``grid`` (every point once) or ``random``. The space's
    baselines are queued first (``points_to_evaluate``).
    """
    sampler_name = space.search["sampler"]
    if sampler_name == "grid":
        sampler = optuna.samplers.GridSampler(space.grid(), seed=seed)
    elif sampler_name == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=int(space.search["n_startup_trials"]), constant_liar=True
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{Path(run_dir).resolve() / 'optuna.db'}")
    return RatioOptunaSearch(
        space.distributions(),
        metric=metric,
        mode=mode,
        points_to_evaluate=space.baselines() or None,
        sampler=sampler,
        study_name=name,
        storage=storage,
        space_dict=space.to_dict(),
    )
