"""The Ray Tune trainable: one trial = get the pool, mix at R, train, report every epoch.

:func:`train_fn` is what Tune runs (through ``tune.with_parameters``); :func:`trial_body` is the
same work with the Ray calls passed in, so that tests call it directly without starting Ray.
Nothing here imports MLflow: the driver's callback records what :func:`ray.tune.report` sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_json
from ..config import POOL_FIELDS, GenerateConfig, TrialConfig
from ..diffusion.base import GenerativeModel
from ..home import Home
from ..train.mixing import synthetic_needed
from .space import parse_space
from .sysmetrics import RESULT_KEY as SYSTEM_KEY
from .sysmetrics import Sampler

STATE_FILE = "state.pt"
# Tests: "r=1.0" makes every trial whose complete config has that value fail (a failing trial
# in an end-to-end search, now that the space refuses the configs that used to fail).
FAIL_ENV = "RATIO_SEARCH_TEST_FAIL_TRIAL"
# trainer metric name -> reported name
_VAL_KEYS = ("accuracy", "f1", "precision", "recall", "roc_auc")


class LazyModel(GenerativeModel):
    """A saved generator known by its meta.json; the network is loaded only if a pool is missing.

    ``pools.get_pool`` needs the model's hash and image size to find a cached pool, and calls
    ``sample`` only on a cache miss, so a warm trial never pays for loading diffusers weights.
    """

    def __init__(self, path: str, meta: dict[str, Any]) -> None:
        super().__init__(path, meta)
        self._model: GenerativeModel | None = None

    def _sample(self, *args: Any) -> np.ndarray:
        """Load the saved model on first use; sample from it (arguments already checked)."""
        if self._model is None:
            from ..diffusion import load_model

            self._model = load_model(self.path)
        return self._model._sample(*args)


class Measured:
    """The run's record of measured configurations: ``<run>/measured/<key>.json``.

    ``key`` hashes a trial's complete config (:meth:`Space.trial_config`, which makes every
    R = 0 trial one config) and its seed count. The first trial of a key trains it and stores
    its final result; later equivalent trials report that result instead of training. While one
    trains, ``<key>.lock`` (its pid and host, touched every epoch) makes the others wait; a lock
    whose process is gone, or untouched for ``STALE_S`` seconds, is taken over.
    """

    STALE_S = 300.0
    POLL_S = 0.5

    def __init__(self, folder: Path, key: str, config: dict[str, Any], trial_id: str) -> None:
        self.folder, self.key, self.config, self.trial_id = folder, key, config, trial_id
        self.result_path = folder / f"{key}.json"
        self.lock_path = folder / f"{key}.lock"
        self.owner = False

    @classmethod
    def open(
        cls, run_dir: str | None, cfg: dict[str, Any], n_seeds: int, trial_id: str
    ) -> Measured | None:
        """The record for ``cfg`` in ``run_dir`` (None without a writable run folder)."""
        if not run_dir:
            return None
        folder = Path(run_dir) / "measured"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        config = dict(cfg, n_seeds=int(n_seeds))
        blob = json.dumps(config, sort_keys=True, default=str).encode()
        return cls(folder, hashlib.sha256(blob).hexdigest()[:16], config, trial_id)

    def _reuse(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.result_path.read_text())
        except (OSError, ValueError):
            return None
        return dict(doc["result"], reused=1, reused_from=str(doc.get("trial_id", "")))

    def _stale(self) -> bool:
        try:
            owner = json.loads(self.lock_path.read_text())
            age = time.time() - self.lock_path.stat().st_mtime
        except (OSError, ValueError):
            return True  # gone, or torn mid-write: try again
        if owner.get("host") == socket.gethostname():
            try:
                os.kill(int(owner["pid"]), 0)
            except ProcessLookupError:
                return True
            except (OSError, KeyError, ValueError):
                pass
        return age > self.STALE_S

    def claim(self) -> dict[str, Any] | None:
        """The measured result (to reuse), or None after taking the lock (this trial trains)."""
        while True:
            hit = self._reuse()
            if hit is not None:
                return hit
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale():
                    self.lock_path.unlink(missing_ok=True)
                else:
                    time.sleep(self.POLL_S)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(
                    {"pid": os.getpid(), "host": socket.gethostname(), "trial": self.trial_id}, f
                )
            self.owner = True
            hit = self._reuse()  # stored between our look and our lock
            if hit is not None:
                self.release()
            return hit

    def heartbeat(self) -> None:
        if self.owner:
            try:
                os.utime(self.lock_path)
            except OSError:
                pass

    def store(self, result: dict[str, Any]) -> None:
        doc = {"trial_id": self.trial_id, "key": self.key, "config": self.config, "result": result}
        atomic_write_json(self.result_path, doc)

    def release(self) -> None:
        if self.owner:
            self.lock_path.unlink(missing_ok=True)
            self.owner = False


def trial_config(cfg: dict[str, Any], n: int, device: str) -> TrialConfig:
    """The TrialConfig of one flat trial config (sampled + fixed values, see ``Space.trial_config``):
    its classifier (CNN size included) and its pool of ``n`` images, both on ``device``."""
    tc = TrialConfig.from_flat(cfg)
    tc.train.device = device
    tc.generate.n = int(n)
    tc.generate.device = device
    return tc


def generate_config(cfg: dict[str, Any], n: int, device: str) -> GenerateConfig:
    """The GenerateConfig of one trial's pool (its pool fields, ``pool_seed``; ``n`` images)."""
    flat = {k: cfg[k] for k in (*POOL_FIELDS, "pool_seed") if k in cfg}
    return trial_config(flat, n, device).generate


def ctx_models(ctx: dict[str, Any]) -> dict[int, tuple[str, dict[str, Any]]]:
    """``{finetune_steps: (path, meta)}`` of a trial's context (``models``; an older context's
    one ``model_path`` / ``model_meta`` is step 0)."""
    if ctx.get("models"):
        return {int(s): (str(pm[0]), dict(pm[1] or {})) for s, pm in ctx["models"].items()}
    if ctx.get("model_path"):
        return {0: (str(ctx["model_path"]), dict(ctx.get("model_meta") or {}))}
    return {}


def synthetic_for(
    ctx: dict[str, Any],
    models: dict[int, tuple[str, dict[str, Any]]],
    data: Any,
    trial: TrialConfig,
) -> tuple[np.ndarray | dict[int, np.ndarray] | None, dict[str, str], int]:
    """The synthetic images of one trial, ``{class name: pool key}`` (label order) and how many
    synthetic images it trains on.

    The default draw (the dataset's synthetic class, no filter, the final generator) reads its
    one pool here, as before (an array: bit-identical trials); any other (several classes,
    ``filter_top`` < 1, a checkpoint) goes through :func:`ratio_search.quality.selection.trial_synthetic` (a dict per label).
    """

    tcfg, gen = trial.train, trial.generate
    y = np.asarray(data.train_y)
    if tcfg.r <= 0:
        return None, {}, 0
    step = int(gen.finetune_steps)
    # as the confirmation draws them (evidence/runs.py): the final model's one default pool
    default = tcfg.synthetic_classes == "default" and float(tcfg.filter_top) >= 1.0 and step == 0
    syn = int(data.synthetic_label)
    n_syn = synthetic_needed(int((y == syn).sum()), tcfg.r, tcfg.mode)
    if default and n_syn == 0:
        return None, {}, 0
    if step not in models:
        raise RuntimeError(
            f"this trial needs the generator at finetune_steps {step}; the search has "
            f"{', '.join(map(str, sorted(models))) or 'no generator'}"
        )
    n = int(ctx["pool_n"])
    home = Home(Path(ctx["home"]))
    names = list(data.class_names)
    if default:
        from ..pools import get_pool
        from ..pools.postprocess import reference_for

        pool = get_pool(
            home, LazyModel(*models[step]), gen, n=n,
            reference=reference_for(data, gen.postprocess), synthetic_class_index=syn,
            progress=False,
        )  # fmt: skip
        return pool.images, {str(names[syn]): pool.key}, n_syn
    from ..quality.selection import trial_synthetic

    lazy = {s: LazyModel(p, m) for s, (p, m) in models.items()}
    images, info = trial_synthetic(home, lazy, data, trial, n, progress=False)
    keys_by_name = dict(info.get("pool_keys") or {})
    keys = {str(names[k]): str(keys_by_name[str(names[k])]) for k in sorted(images)}
    n_syn = sum(synthetic_needed(int((y == k).sum()), tcfg.r, tcfg.mode) for k in images)
    return images, keys, int(n_syn)


def trial_body(
    config: dict[str, Any],
    ctx: dict[str, Any],
    data: Any,
    *,
    report: Callable[[dict[str, Any], dict[str, Any]], None],
    state: dict[str, Any] | None = None,
    device: str = "cpu",
    node_id: str = "",
    trial_id: str = "",
) -> dict[str, Any]:
    """Run one trial: ``report(metrics, state)`` after every epoch; returns ``run_trial``'s dict.

    ``ctx``: ``home`` (root path), ``space`` (the space dict), ``pool_n`` (images per pool),
    ``models`` (``{finetune_steps: (path, meta)}``; or one ``model_path`` / ``model_meta``; none
    when no trial needs a pool), optionally ``run_dir``
    (the run folder: enables the reuse of measured configurations, :mod:`.measured`).
    ``state`` resumes after the epoch it holds. The space's ``search.seeds_per_trial`` (k) seeds
    are trained together; the reported metrics are their mean, with ``<metric>_sd``,
    ``n_seeds`` and each seed's ``seed_accuracy_<i>`` (seed ``seed + i``).

    A configuration equivalent to one the run already measured (same complete config, e.g. any
    R = 0 trial whatever its sampled guidance) is not trained again: its measured result is
    reported once, with ``reused = 1`` and ``reused_from`` (the trial that measured it).
    """
    from ..train.trial import run_trial

    space = parse_space(ctx["space"])
    cfg = space.trial_config(config)
    trial = trial_config(cfg, int(ctx.get("pool_n") or 0), device)
    tcfg, gen = trial.train, trial.generate
    tcfg.n_seeds = space.seeds_per_trial
    fault = os.environ.get(FAIL_ENV, "")
    if fault and str(cfg.get(fault.partition("=")[0])) == fault.partition("=")[2]:
        raise RuntimeError(f"{FAIL_ENV}: injected failure of the trials with {fault}")
    memo = Measured.open(ctx.get("run_dir"), cfg, tcfg.n_seeds, trial_id)
    if state is None and memo is not None:
        hit = memo.claim()  # waits while an equivalent trial is being trained elsewhere
        if hit is not None:
            report(hit, {})
            return {"metrics": hit, "reused_from": hit.get("reused_from")}
    models = ctx_models(ctx)
    step = int(gen.finetune_steps)
    pool_images, keys, n_synthetic = synthetic_for(ctx, models, data, trial)
    pool_key = ",".join(keys.values())
    pool_keys = json.dumps(keys)
    model_hash = (models.get(step, models.get(0, ("", {})))[1] or {}).get("model_hash", "")
    class_names = json.dumps(list(data.class_names))
    sampler = Sampler(device)  # system metrics per epoch, search/sysmetrics.py

    def on_epoch(epoch: int, metrics: dict[str, Any], st: dict[str, Any]) -> None:
        out: dict[str, Any] = {"epoch": int(epoch), "epochs": int(tcfg.epochs)}
        for k in (*_VAL_KEYS, "loss"):
            out[f"val_{k}"] = float(metrics[k if k != "loss" else "val_loss"])
            if tcfg.n_seeds > 1:  # the seeds' spread: the trial's standard error is sd / sqrt(k)
                out[f"val_{k}_sd"] = float(metrics[f"{k if k != 'loss' else 'val_loss'}_sd"])
        out["train_loss"] = float(metrics["train_loss"])
        out["n_seeds"] = int(tcfg.n_seeds)
        for i, m in enumerate(metrics.get("per_seed", [])):
            out[f"seed_accuracy_{i}"] = float(m["accuracy"])
        # Every epoch, not only the last: ASHA may stop a trial at any epoch.
        out["confusion_matrix"] = json.dumps(metrics["confusion_matrix"])
        out["class_names"] = class_names
        out.update(
            pool_key=pool_key,  # the pools' keys, comma-joined in label order ("" at R = 0)
            pool_keys=pool_keys,  # json {class name: pool key}
            model_hash=model_hash,
            n_synthetic=int(n_synthetic),
            n_real=int(len(data.train_y)) - int(n_synthetic)
            if tcfg.mode == "replace"
            else int(len(data.train_y)),
            node_id=node_id,
            device=device,
        )
        if memo is not None:
            memo.heartbeat()
            if epoch == tcfg.epochs:  # measured at the full budget: equivalent trials reuse it
                memo.store(out)
        out[SYSTEM_KEY] = sampler.sample()  # logged as system/... metrics
        report(out, st)

    try:
        return run_trial(tcfg, data, pool_images, report=on_epoch, state=state)
    finally:
        if memo is not None:
            memo.release()


def save_state(state: dict[str, Any], folder: str | os.PathLike) -> Path:
    """The trainer's epoch state as ``state.pt`` (tensors, numbers, lists: weights_only-loadable)."""
    import torch

    path = Path(folder) / STATE_FILE
    torch.save(state, path)
    return path


def load_state(folder: str | os.PathLike) -> dict[str, Any]:
    import torch

    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def train_fn(config: dict[str, Any], ctx: dict[str, Any] | None = None, data: Any = None) -> None:
    """The function Ray Tune runs per trial (wrapped by ``tune.with_parameters(ctx=, data=)``)."""
    import ray
    import torch
    from ray import tune

    # One trial, its share of the CPUs: without this each trial's torch would use every core.
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    node_id = ray.get_runtime_context().get_node_id()

    state = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_state(d)

    def report(metrics: dict[str, Any], st: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="rs-ckpt-") as d:
            save_state(st, d)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    trial_body(
        config, ctx, data, report=report, state=state, device=device, node_id=node_id,
        trial_id=str(tune.get_context().get_trial_id() or ""),
    )  # fmt: skip
