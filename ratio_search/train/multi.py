"""Several seeds of one configuration trained together, as one vectorised model.

The k copies of the CNN are built one by one exactly as :func:`.loop.train_classifier` builds
them (``torch.manual_seed(seed)`` in a forked RNG), stacked with
:func:`torch.func.stack_module_state`, and run as grouped convolutions (``groups=k``) and batched
matmuls (:func:`_stacked_forward`); each copy gets its
own training set (mixing depends on the seed) and its own batch order (a ``torch.Generator``
seeded with its seed), so seed ``i`` sees exactly the batches it would see alone. One Adam over
the stacked tensors is k independent Adams: its update is elementwise, and the summed loss gives
each copy the gradient of its own loss. What differs from training each seed alone is only the
order of floating-point sums inside the batched convolutions (BENCHMARKS.md, "Seeds trained
together", states the largest difference measured).

A single seed never goes through here: :func:`train_seeds` hands it to ``train_classifier``,
which stays the bit-exact reference.

Only the study's CNN is stacked. Any other ``train.arch`` (``resnet``: residual blocks and
BatchNorm, which the grouped convolutions above do not cover) trains its seeds side by side as k
ordinary :class:`.loop.SeedRun`, one epoch each in turn (:func:`_train_seeds_in_turn`): as fast as
k single-seed trials, and every seed's weights and metrics equal its ``train_classifier`` run's
exactly (on the CPU at the same thread count).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import stack_module_state

from ..config import TrainConfig
from ..errors import DataError, RatioSearchError
from .cnn import build_model, normalize
from .loop import (
    EVAL_BATCH_SIZE,
    SeedRun,
    TrainResult,
    _check_images,
    _check_labels,
    _to_cpu,
    compute_metrics,
    train_classifier,
    validates,
)

# report(epoch, per-seed metrics (one dict per seed), state)
MultiReportFn = Callable[[int, list[dict[str, Any]], dict[str, Any]], None]


def _stacked_forward(base: nn.Module) -> Callable:
    """``f(params, buffers, x) -> logits (k, B, classes)`` for k stacked :class:`SimpleCNN`.

    ``x`` is ``(k, B, C, H, W)`` uint8, or ``(B, C, H, W)`` shared by every seed. The k convs of a
    block run as one grouped convolution (``groups=k``) in channels-last layout and the k linear
    layers as one batched matmul: the same arithmetic per seed as the module alone, in another
    summation order (``torch.func.vmap`` over ``functional_call`` gives the same numbers but was
    slower on the CPU).
    """
    convs = [i for i, m in enumerate(base.features) if isinstance(m, nn.Conv2d)]
    linears = [i for i, m in enumerate(base.classifier) if isinstance(m, nn.Linear)]

    def forward(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor):
        k = next(iter(params.values())).shape[0]
        h = normalize(x)
        if h.dim() == 4:  # one batch for every seed
            h = h.repeat(1, k, 1, 1)
        else:  # (k, B, C, H, W) -> (B, k*C, H, W)
            h = h.permute(1, 0, 2, 3, 4).flatten(1, 2)
        h = h.contiguous(memory_format=torch.channels_last)
        for i in convs:
            w, b = params[f"features.{i}.weight"], params[f"features.{i}.bias"]
            h = F.conv2d(h, w.flatten(0, 1), b.flatten(), padding=1, groups=k)
            h = F.relu(F.max_pool2d(h, 2))  # pool first, as SimpleCNN.hidden: the same numbers
        n = h.shape[0]
        h = h.reshape(n, k, -1).transpose(0, 1)  # (k, B, c*h*w), each seed's NCHW flatten order
        for j, i in enumerate(linears):
            w, b = params[f"classifier.{i}.weight"], params[f"classifier.{i}.bias"]
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if j < len(linears) - 1:
                h = F.relu(h)
        return h

    return forward


def _unstack(params: dict[str, torch.Tensor], base: nn.Module, k: int) -> list[nn.Module]:
    """The k trained models as ordinary :class:`SimpleCNN` modules (CPU copies of the slices)."""
    models = []
    for i in range(k):
        m = copy.deepcopy(base).to_empty(device="cpu")
        m.load_state_dict({name: p[i].detach().to("cpu") for name, p in params.items()})
        models.append(m)
    return models


def train_seeds_tensors(
    xs: Sequence[np.ndarray],
    ys: Sequence[np.ndarray],
    val_x: np.ndarray,
    val_y: np.ndarray,
    cfg: TrainConfig,
    seeds: Sequence[int],
    *,
    n_classes: int,
    device: str | torch.device = "cpu",
    report: MultiReportFn | None = None,
    state: dict[str, Any] | None = None,
    positive_label: int = 0,
) -> list[TrainResult]:
    """Train one CNN per seed on ``xs[i]`` / ``ys[i]`` (same size for every seed), together.

    ``cfg`` gives everything but the seed. Returns one :class:`TrainResult` per seed, in order.
    ``report(epoch, [metrics per seed], state)`` is called after each validated epoch
    (:func:`.loop.validates`); passing that ``state`` back resumes after its epoch. One seed is
    trained by ``train_classifier`` itself (bit-exact with a single-seed trial; its ``report``
    gets a one-element list); so are the seeds of an ``arch`` other than ``simple``, one epoch
    each in turn (the module's docstring).
    """
    seeds = [int(s) for s in seeds]
    k = len(seeds)
    if k == 0:
        raise DataError("train_seeds: no seeds given")
    if len(xs) != k or len(ys) != k:
        raise DataError(f"train_seeds: {k} seeds but {len(xs)} training sets")
    if k == 1:
        one_cfg = dataclasses.replace(cfg, seed=seeds[0])

        def rep1(epoch: int, m: dict[str, Any], st: dict[str, Any]) -> None:
            report(epoch, [m], st)  # type: ignore[misc]

        return [
            train_classifier(
                xs[0], ys[0], val_x, val_y, one_cfg, n_classes=n_classes, device=device,
                report=rep1 if report is not None else None, state=state,
                positive_label=positive_label,
            )
        ]  # fmt: skip

    if cfg.arch != "simple":
        return _train_seeds_in_turn(
            xs, ys, val_x, val_y, cfg, seeds, n_classes=n_classes, device=device, report=report,
            state=state, positive_label=positive_label,
        )  # fmt: skip

    xs = [_check_images(x, f"training images (seed {s})") for x, s in zip(xs, seeds, strict=True)]
    ys = [
        _check_labels(y, len(x), f"training labels (seed {s})", n_classes)
        for x, y, s in zip(xs, ys, seeds, strict=True)
    ]
    val_x = _check_images(val_x, "validation images")
    val_y = _check_labels(val_y, len(val_x), "validation labels", n_classes)
    n = len(xs[0])
    if n == 0 or len(val_x) == 0:
        raise DataError("the training set is empty" if n == 0 else "the validation set is empty")
    if any(len(x) != n or x.shape[1:] != xs[0].shape[1:] for x in xs):
        raise DataError("train_seeds: every seed's training set must have the same shape")
    if xs[0].shape[1:] != val_x.shape[1:]:
        raise DataError(
            f"training images {xs[0].shape[1:]} and validation images {val_x.shape[1:]} differ"
        )
    device = torch.device(device)
    size = (xs[0].shape[2], xs[0].shape[3])

    models = []
    for s in seeds:  # the same initial weights as train_classifier(seed=s)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            models.append(build_model(cfg, xs[0].shape[1], n_classes, size))
    base = copy.deepcopy(models[0]).to("meta")
    params, buffers = stack_module_state([m.to(device) for m in models])
    del models
    optimizer = torch.optim.Adam(list(params.values()), lr=cfg.lr)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    histories: list[list[dict[str, Any]]] = [[] for _ in seeds]
    start_epoch = 0
    if state is not None:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state["params"][name].to(device))
        optimizer.load_state_dict(state["optimizer"])
        for g, st in zip(gens, state["rng"], strict=True):
            g.set_state(st)
        histories = copy.deepcopy([list(h) for h in state["history"]])
        start_epoch = int(state["epoch"])

    forward = _stacked_forward(base)
    xt = torch.stack([torch.from_numpy(x) for x in xs]).to(device)  # (k, n, C, H, W) uint8
    yt = torch.stack([torch.from_numpy(y) for y in ys]).to(device)  # (k, n)
    vxt = torch.from_numpy(val_x).to(device)
    vyt = torch.from_numpy(val_y).to(device)
    rows = torch.arange(k, device=device)[:, None]

    metrics: list[dict[str, Any]] = [h[-1] for h in histories] if histories[0] else []
    for epoch in range(start_epoch, cfg.epochs):
        perm = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)
        loss_sum = torch.zeros(k, device=device)
        for i in range(0, n, cfg.batch_size):
            idx = perm[:, i : i + cfg.batch_size]
            logits = forward(params, buffers, xt[rows, idx])  # (k, B, classes)
            by = yt[rows, idx]
            losses = F.cross_entropy(logits.flatten(0, 1), by.flatten(), reduction="none")
            per_seed = losses.view(k, -1).mean(dim=1)
            optimizer.zero_grad(set_to_none=True)
            per_seed.sum().backward()
            optimizer.step()
            loss_sum += per_seed.detach() * idx.shape[1]
        train_loss = (loss_sum / n).tolist()
        bad = [s for s, v in zip(seeds, train_loss, strict=True) if not math.isfinite(v)]
        if bad:
            raise RatioSearchError(
                f"training diverged at epoch {epoch + 1} (seed {bad[0]}); "
                f"try a lower train.lr (now {cfg.lr})"
            )
        if not validates(epoch + 1, cfg):
            continue
        metrics = _evaluate_stacked(forward, params, buffers, vxt, vyt, n_classes, positive_label)
        for m, h, tl in zip(metrics, histories, train_loss, strict=True):
            m["train_loss"] = float(tl)
            m["epoch"] = epoch + 1
            h.append(m)
        if report is not None:
            snapshot = {
                "epoch": epoch + 1,
                "seeds": list(seeds),
                "params": _to_cpu({k_: v.detach() for k_, v in params.items()}),
                "optimizer": _to_cpu(optimizer.state_dict()),
                "rng": [g.get_state() for g in gens],
                "history": copy.deepcopy(histories),
            }
            report(epoch + 1, [dict(m) for m in metrics], snapshot)

    if not metrics:  # resumed at or past the last epoch with no history: re-score
        metrics = _evaluate_stacked(forward, params, buffers, vxt, vyt, n_classes, positive_label)
    trained = _unstack(params, base, k)
    return [
        TrainResult(model=m, metrics=dict(mt), history=h)
        for m, mt, h in zip(trained, metrics, histories, strict=True)
    ]


def _train_seeds_in_turn(
    xs: Sequence[np.ndarray],
    ys: Sequence[np.ndarray],
    val_x: np.ndarray,
    val_y: np.ndarray,
    cfg: TrainConfig,
    seeds: list[int],
    *,
    n_classes: int,
    device: str | torch.device,
    report: MultiReportFn | None,
    state: dict[str, Any] | None,
    positive_label: int,
) -> list[TrainResult]:
    """k :class:`SeedRun` side by side, one epoch each in turn: seed ``s`` gets exactly its
    ``train_classifier(seed=s)`` numbers. ``state`` is ``{"epoch", "seeds", "runs": [each
    seed's train_classifier state]}``."""
    if state is not None and [int(s) for s in state.get("seeds", [])] != seeds:
        raise DataError(f"train_seeds: the state is of seeds {state.get('seeds')}, not {seeds}")
    if any(x.shape != xs[0].shape for x in xs):
        raise DataError("train_seeds: every seed's training set must have the same shape")
    runs = [
        SeedRun(
            x, y, val_x, val_y, dataclasses.replace(cfg, seed=s), n_classes=n_classes,
            device=device, state=state["runs"][i] if state is not None else None,
            positive_label=positive_label,
        )
        for i, (x, y, s) in enumerate(zip(xs, ys, seeds, strict=True))
    ]  # fmt: skip
    while runs[0].epoch < cfg.epochs:
        metrics = [run.train_epoch() for run in runs]
        if metrics[0] is None:  # an epoch without validation (cfg.val_every): nothing to report
            continue
        if report is not None:
            snapshot = {
                "epoch": runs[0].epoch,
                "seeds": list(seeds),
                "runs": [run.snapshot() for run in runs],
            }
            report(runs[0].epoch, [dict(m) for m in metrics], snapshot)
    return [run.result() for run in runs]


@torch.no_grad()
def _evaluate_stacked(
    forward: Callable,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    positive_label: int,
) -> list[dict[str, Any]]:
    """Per-seed validation metrics (as ``loop._evaluate_tensors``) of the stacked models."""
    k = next(iter(params.values())).shape[0]
    # k seeds at once make k times the activations of one: a chunk of EVAL_BATCH_SIZE / k images
    # keeps them the size of a single seed's evaluation batch, which stays in the cache (whole
    # 128-image chunks at k = 8 made the first block's 67 MB of activations the slowest step).
    step = max(1, EVAL_BATCH_SIZE // k)
    chunks = []
    for i in range(0, len(x), step):
        chunks.append(forward(params, buffers, x[i : i + step]))
    logits = torch.cat(chunks, dim=1)  # (k, N, classes)
    if not bool(torch.isfinite(logits).all()):
        raise RatioSearchError("the classifier's outputs are not finite (training diverged?)")
    y_np = y.cpu().numpy()
    out = []
    for j in range(k):
        val_loss = float(F.cross_entropy(logits[j], y).item())
        proba = torch.softmax(logits[j].double(), dim=1).cpu().numpy()
        m = compute_metrics(y_np, proba, n_classes=n_classes, positive_label=positive_label)
        m["val_loss"] = val_loss
        out.append(m)
    return out


def aggregate(per_seed: Sequence[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """One metrics dict for k seeds: the mean of every number, ``<name>_sd`` (sample sd, n - 1)
    for each, the confusion matrices summed (so its accuracy is the mean accuracy), ``seeds``
    and ``per_seed`` (the seeds' own dicts, in order). ``epoch`` stays an integer."""
    out: dict[str, Any] = {}
    first = per_seed[0]
    for key, v in first.items():
        if key == "confusion_matrix":
            out[key] = np.sum([np.asarray(m[key]) for m in per_seed], axis=0).tolist()
        elif key == "epoch":
            out[key] = int(v)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            vals = np.array([float(m[key]) for m in per_seed])
            out[key] = float(vals.mean())
            out[f"{key}_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    out["seeds"] = [int(s) for s in seeds]
    out["per_seed"] = [dict(m) for m in per_seed]
    return out


__all__ = ["MultiReportFn", "aggregate", "train_seeds_tensors"]
