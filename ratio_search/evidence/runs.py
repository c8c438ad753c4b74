"""The confirmation's training runs: one search's trials re-run outside Ray, and their cache.

:class:`RunContext` re-runs a trial of a finished search with another seed through
:func:`ratio_search.train.trial.run_trial`, the function the search's trainable calls, so a
confirmation run is the same computation as a trial. Every run is cached under
``<run dir>/confirm/`` (its validation metrics as JSON, its weights as safetensors, keyed by a hash
of the trial config, seed and data key), so an interrupted export resumes where it stopped and a
second export re-trains nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_json, atomic_write_with, is_number
from ..config import TrialConfig
from ..errors import RatioSearchError, SearchError
from ..home import Home
from .candidates import METRICS, Candidate
from .workers import RunPool

ProgressFn = Callable[[str], None]


def load_run_space(folder: Path, info: Mapping[str, Any]):
    """The search space of a run: run.json's ``space``, else its ``space.yaml``; None if neither."""
    from ..search.space import load_space, parse_space

    if isinstance(info.get("space"), dict):
        return parse_space(info["space"], origin=f"{folder}/run.json space")
    if (Path(folder) / "space.yaml").is_file():
        return load_space(Path(folder) / "space.yaml")
    return None


def trial_threads(info: Mapping[str, Any]) -> int:
    """The torch threads a run's trials trained with: their CPU share (run.json's
    ``options.resources.cpus_per_trial``, else 1); the same count repeats a trial bit for bit."""
    resources = (info.get("options") or {}).get("resources") or {}
    return max(1, int(float(resources.get("cpus_per_trial") or 1)))


class RunContext:
    """Re-runs trials of one search outside Ray: its dataset, its pools, its trial configs.

    Loaded lazily from the run folder: the resolved ``config.yaml`` (dataset), ``run.json`` (the
    space, data key, model path). Pools are read by the trial's ``pool_key`` when still cached,
    else generated again (same key, same images) with the run's diffusion model.
    """

    def __init__(self, home: Home, run_folder: Path, info: Mapping[str, Any]) -> None:
        self.home = home
        self.run_folder = Path(run_folder)
        self.info = dict(info)
        self._data = None
        self._space = None
        self._model = None
        self._pools: dict[str, np.ndarray] = {}

    # -- the search's definitions
    @property
    def space(self):
        """The search space of the run (run.json's ``space``, else its ``space.yaml``)."""
        if self._space is None:
            from ..search.space import load_space

            self._space = load_run_space(self.run_folder, self.info)
            if self._space is None:  # neither: load_space names the missing file
                self._space = load_space(self.run_folder / "space.yaml")
        return self._space

    def full_config(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The complete trial config of sampled ``params`` (fixed values and defaults added)."""
        return self.space.trial_config(dict(params))

    @property
    def data(self):
        """The run's dataset; a SearchError when its data key changed since the search."""
        if self._data is None:
            from ..config import load_config
            from ..data import load_dataset

            cfg_path = self.run_folder / "config.yaml"
            cfg = load_config(cfg_path if cfg_path.is_file() else None)
            data_cfg = self.space.data_config(cfg.data) if not cfg_path.is_file() else cfg.data
            self._data = load_dataset(data_cfg, self.home)
            want = self.info.get("data_key")
            if want and self._data.key != want:
                raise SearchError(
                    f"the dataset of run {self.run_folder.name} has changed since the search "
                    f"(data key {self._data.key}, the search used {want}); confirmation would "
                    "compare runs on different data"
                )
        return self._data

    # -- one run
    def pool_images(
        self, config: Mapping[str, Any], pool_key: str | None
    ) -> np.ndarray | dict[int, np.ndarray] | None:
        """The generated images a trial with ``config`` mixes in (None at R = 0; ``{label:
        images}`` with several synthetic classes, the confidence filter or a checkpoint)."""
        if float(config.get("r", 0.0)) == 0.0:
            return None
        if (  # several classes, the confidence filter or a checkpoint: the trainable's path
            str(config.get("synthetic_classes", "default")) != "default"
            or float(config.get("filter_top", 1.0)) < 1.0
            or int(config.get("finetune_steps", 0) or 0) != 0
        ):
            return self._trial_synthetic(TrialConfig.from_flat(dict(config)))
        n = self.pool_n(config)
        from .. import pools

        if pool_key:
            cache_key = f"{pool_key}:{n}"
            if cache_key not in self._pools:
                try:
                    self._pools[cache_key] = pools.load_pool(self.home, pool_key, n=n).images
                except RatioSearchError:
                    pass
            if cache_key in self._pools:
                return self._pools[cache_key]
        return self._generate(config)

    def pool_n(self, config: Mapping[str, Any]) -> int | None:
        """Images per pool as the search's trials used them: run.json's ``pool_n`` (the first n
        images of a pool), else the space's ``pool_size``."""
        n = self.info.get("pool_n") or config.get("pool_size")
        return int(n) if n else None

    def _trial_synthetic(self, trial: TrialConfig) -> dict[int, np.ndarray]:
        """Per class, filtered, of a generator checkpoint: as the search's trainable gets them
        (``quality.selection.trial_synthetic``; pools and judge scores are cache hits)."""
        from ..quality.selection import trial_synthetic

        sig = json.dumps(trial.to_flat(), sort_keys=True, default=str)
        if sig not in self._pools:
            steps = int(trial.generate.finetune_steps)
            n = self.pool_n(trial.to_flat()) or trial.generate.n
            images, _ = trial_synthetic(
                self.home, {steps: self._model_at(steps)}, self.data, trial, n
            )
            self._pools[sig] = images  # type: ignore[assignment]
        return self._pools[sig]  # type: ignore[return-value]

    def _model_at(self, steps: int) -> Any:
        """The run's generator (``steps`` 0) or its checkpoint after ``steps`` fine-tune steps."""
        from ..diffusion import load_model

        path = self.info.get("model_path")
        if not path:
            raise SearchError(
                f"run.json of {self.run_folder.name} names no model_path to regenerate a pool"
            )
        if steps == 0:
            if self._model is None:
                self._model = load_model(path, self.home)
            return self._model
        from ..diffusion import checkpoints_of

        found = checkpoints_of(path, self.home)
        if steps not in found:
            raise SearchError(f"the generator {path} has no checkpoint at step {steps}")
        return load_model(found[steps], self.home)

    def _generate(self, config: Mapping[str, Any]) -> np.ndarray:
        from .. import pools
        from ..diffusion import load_model

        if self._model is None:
            path = self.info.get("model_path")
            if not path:
                raise SearchError(
                    f"run.json of {self.run_folder.name} names no model_path to regenerate a pool"
                )
            self._model = load_model(path, self.home)
        gen = TrialConfig.from_flat(dict(config)).generate
        n = self.pool_n(config) or gen.n
        # As the search's trainable asks for it, so that the key (and the images) are the same.
        reference = (
            pools.class_reference(self.data) if gen.postprocess == "histogram-match" else None
        )
        pool = pools.get_pool(
            self.home,
            self._model,
            gen,
            n,
            reference=reference,
            synthetic_class_index=int(self.data.synthetic_label),
            progress=False,
        )
        return pool.images

    def train(
        self, config: Mapping[str, Any], seed: int, pool_key: str | None
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """Train one trial of ``config`` with ``seed``: (validation metrics, model state dict)."""
        return self.train_with(config, seed, self.pool_images(config, pool_key))

    def train_with(
        self, config: Mapping[str, Any], seed: int, images: Any
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """:meth:`train` with the generated images already resolved (:meth:`pool_images`); what a
        worker process runs (:mod:`.workers`)."""
        from ..train.trial import run_trial

        cfg = TrialConfig.from_flat(dict(config)).train
        cfg.seed = int(seed)
        cfg.threads = self.threads  # as the trials: best.yaml's count repeats the run exactly
        last: dict[str, Any] = {}

        def keep_state(epoch: int, metrics: dict[str, Any], state: dict[str, Any]) -> None:
            last["state"] = state["model"]  # the weights after the last epoch

        out = run_trial(cfg, self.data, images, report=keep_state)
        return _val_metrics(out["metrics"]), last["state"]

    def test(self, config: Mapping[str, Any], state: Mapping[str, Any]) -> dict[str, float]:
        """Metrics on the test split of a model trained with ``config`` (its state dict)."""
        from ..train.cnn import build_model
        from ..train.loop import evaluate

        data = self.data
        c, h, w = data.train_x.shape[1:]
        cfg = TrialConfig.from_flat(dict(config)).train
        model = build_model(cfg, c, len(data.class_names), (h, w))
        model.load_state_dict(dict(state))
        m = evaluate(model, data.test_x, data.test_y, positive_label=data.synthetic_label)
        return _test_metrics(m)

    def correct(
        self, config: Mapping[str, Any], state: Mapping[str, Any], split: str
    ) -> np.ndarray:
        """Per image of ``split`` ("val" or "test"): 1 where the model classifies it correctly.

        The paired bootstrap (:mod:`.paired`) resamples these, so that intervals cover the images
        as well as the seeds.
        """
        from ..train.cnn import build_model
        from ..train.loop import predict_proba

        data = self.data
        x, y = (data.val_x, data.val_y) if split == "val" else (data.test_x, data.test_y)
        c, h, w = data.train_x.shape[1:]
        cfg = TrialConfig.from_flat(dict(config)).train
        model = build_model(cfg, c, len(data.class_names), (h, w))
        model.load_state_dict(dict(state))
        pred = predict_proba(model, x).argmax(axis=1)
        return (pred == np.asarray(y)).astype(np.uint8)

    @property
    def threads(self) -> int:
        """The torch threads of every confirmation run: the trials' (:func:`trial_threads`)."""
        return trial_threads(self.info)

    @property
    def n_test(self) -> int:
        """Images in the test split."""
        return int(len(self.data.test_y))

    @property
    def data_key(self) -> str:
        """The data key of the run (what the cache of its runs is keyed by)."""
        return str(self.info.get("data_key") or self.data.key)


def _val_metrics(m: Mapping[str, Any]) -> dict[str, float]:
    """run_trial's metrics under the search's names (``val_accuracy``...), numbers only."""
    return {name: float(m[key]) for name, key in METRICS.items() if is_number(m.get(key))}


def _test_metrics(m: Mapping[str, Any]) -> dict[str, float]:
    out = {
        f"test_{k}": float(m[k])
        for k in ("accuracy", "f1", "precision", "recall", "roc_auc")
        if is_number(m.get(k))
    }
    if is_number(m.get("val_loss")):
        out["test_loss"] = float(m["val_loss"])  # evaluate() names the loss on any split val_loss
    return out


# --------------------------------------------------------------------------- the cache


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")


# Bumped when the trainer's arithmetic changes (2: SimpleCNN runs channels-last and pools before
# its ReLU), so that an older export's cached runs are trained again rather than mixed in.
_NUMERICS = 2


def _run_key(config: Mapping[str, Any], seed: int, data_key: str, threads: int) -> str:
    # Runs train at the trials' thread count (exports before used torch's default), and the
    # count changes the bits: "threads" keeps an older export's runs from being read as these.
    doc = {
        "config": {k: config[k] for k in sorted(config)}, "seed": int(seed), "data": data_key,
        "threads": threads, "numerics": _NUMERICS,
    }  # fmt: skip
    return hashlib.sha1(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_files(
    folder: Path, label: str, config: Mapping[str, Any], seed: int, ctx: Any
) -> tuple[Path, Path]:
    """The cache files of one confirmation run under ``folder``: its metrics (JSON, written
    last) and its weights (safetensors)."""
    sub = Path(folder) / _slug(label)
    key = _run_key(config, seed, ctx.data_key, int(getattr(ctx, "threads", 0)))
    return sub / f"seed-{seed}-{key}.json", sub / f"seed-{seed}-{key}.safetensors"


def train_cached(
    ctx: Any,
    runs: Sequence[tuple[Candidate, int]],
    folder: Path,
    progress: ProgressFn | None,
    pool: RunPool | None = None,
) -> None:
    """Train (or read from the cache) confirmation runs ``(candidate, seed)``; append each to its
    candidate, in the order given.

    Runs not cached are trained by ``pool`` (:class:`.workers.RunPool`: several at a time, one
    process each, the same numbers as one after another) when it has more than one worker for
    them and ``ctx`` is a :class:`RunContext`, else one by one here with ``ctx.train``; each is
    cached as soon as it finishes.
    """
    from safetensors.torch import save_file

    files = [run_files(folder, cand.label, cand.config, seed, ctx) for cand, seed in runs]
    vals: dict[int, dict[str, float]] = {}  # index in runs -> validation metrics
    todo: list[int] = []
    for i, ((cand, seed), (meta_path, weights)) in enumerate(zip(runs, files, strict=True)):
        if meta_path.is_file() and weights.is_file():
            vals[i] = json.loads(meta_path.read_text())["val"]
            if progress:
                progress(f"confirm {cand.label} seed {seed}: cached")
        else:
            todo.append(i)
    n = pool.at_once(len(todo)) if pool is not None and isinstance(ctx, RunContext) else 1
    at_once = f" ({n} at a time)" if n > 1 else ""

    def started(k: int) -> None:
        if progress:
            cand, seed = runs[todo[k]]
            progress(f"confirm {cand.label} seed {seed}: training{at_once}")

    if pool is not None and n > 1:  # only a RunContext can be re-created in a worker
        jobs = [(dict(c.config), s, ctx.pool_images(c.config, c.pool_key))
                for c, s in (runs[i] for i in todo)]  # fmt: skip
        results = pool.train(jobs, started)
    else:
        results = _one_by_one(ctx, [runs[i] for i in todo], started)
    for i, (val, state) in zip(todo, results, strict=True):
        (cand, seed), (meta_path, weights) = runs[i], files[i]
        tensors = {k: v.contiguous() for k, v in state.items()}
        atomic_write_with(weights, lambda tmp, t=tensors: save_file(t, str(tmp)))
        doc = {"config": cand.config, "seed": seed, "data_key": ctx.data_key, "val": val}
        atomic_write_json(meta_path, doc)  # written last: a cache entry is complete or absent
        vals[i] = val
    for i, (cand, seed) in enumerate(runs):
        cand.seeds.append(seed)
        cand.val.append(vals[i])
        cand.weights.append(str(files[i][1]))


def _one_by_one(
    ctx: Any, todo: Sequence[tuple[Candidate, int]], started: Callable[[int], None]
) -> Iterator[tuple[dict[str, float], dict[str, Any]]]:
    for k, (cand, seed) in enumerate(todo):
        started(k)
        yield ctx.train(cand.config, seed, cand.pool_key)


def load_state(path: str) -> dict[str, Any]:
    """A cached run's weights (safetensors) as a state dict."""
    from safetensors.torch import load_file

    return load_file(path)
