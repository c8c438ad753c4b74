"""The Ray Tune trainable: one trial = get the pool, mix at R, train, report every epoch.

:func:`train_fn` is what Tune runs (through ``tune.with_parameters``); :func:`trial_body` is the
same work with the Ray calls passed in, so that tests call it directly without starting Ray.
Nothing here imports MLflow: the driver's callback records what :func:`ray.tune.report` sees.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..config import POOL_FIELDS, GenerateConfig, TrialConfig
from ..diffusion.base import GenerativeModel
from ..home import Home
from ..train.mixing import synthetic_needed
from .space import parse_space

STATE_FILE = "state.pt"
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


def trial_body(
    config: dict[str, Any],
    ctx: dict[str, Any],
    data: Any,
    *,
    report: Callable[[dict[str, Any], dict[str, Any]], None],
    state: dict[str, Any] | None = None,
    device: str = "cpu",
    node_id: str = "",
) -> dict[str, Any]:
    """Run one trial: ``report(metrics, state)`` after every epoch; returns ``run_trial``'s dict.

    ``ctx``: ``home`` (root path), ``space`` (the space dict), ``pool_n`` (images per pool),
    ``model_path`` / ``model_meta`` (None when no trial needs a pool). ``state`` resumes after
    the epoch it holds.
    """
    from ..pools import get_pool
    from ..pools.postprocess import reference_for
    from ..train.trial import run_trial

    space = parse_space(ctx["space"])
    cfg = space.trial_config(config)
    trial = trial_config(cfg, int(ctx.get("pool_n") or 0), device)
    tcfg, gen = trial.train, trial.generate
    syn = int(data.synthetic_label)
    n_class = int((np.asarray(data.train_y) == syn).sum())
    n_synthetic = synthetic_needed(n_class, tcfg.r, tcfg.mode) if tcfg.r > 0 else 0

    pool_images, pool_key = None, ""
    if n_synthetic > 0:
        if not ctx.get("model_path"):
            raise RuntimeError("this trial needs a pool but the search has no generator model")
        model = LazyModel(ctx["model_path"], ctx["model_meta"])
        pool = get_pool(
            Home(Path(ctx["home"])),
            model,
            gen,
            n=int(ctx["pool_n"]),
            reference=reference_for(data, gen.postprocess),
            synthetic_class_index=syn,
            progress=False,
        )
        pool_images, pool_key = pool.images, pool.key

    model_hash = (ctx.get("model_meta") or {}).get("model_hash", "")
    class_names = json.dumps(list(data.class_names))

    def on_epoch(epoch: int, metrics: dict[str, Any], st: dict[str, Any]) -> None:
        out: dict[str, Any] = {"epoch": int(epoch), "epochs": int(tcfg.epochs)}
        for k in _VAL_KEYS:
            out[f"val_{k}"] = float(metrics[k])
        out["val_loss"] = float(metrics["val_loss"])
        out["train_loss"] = float(metrics["train_loss"])
        # Every epoch, not only the last: ASHA may stop a trial at any epoch.
        out["confusion_matrix"] = json.dumps(metrics["confusion_matrix"])
        out["class_names"] = class_names
        out.update(
            pool_key=pool_key,
            model_hash=model_hash,
            n_synthetic=int(n_synthetic),
            n_real=int(len(data.train_y)) - int(n_synthetic)
            if tcfg.mode == "replace"
            else int(len(data.train_y)),
            node_id=node_id,
            device=device,
        )
        report(out, st)

    return run_trial(tcfg, data, pool_images, report=on_epoch, state=state)


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

    trial_body(config, ctx, data, report=report, state=state, device=device, node_id=node_id)
