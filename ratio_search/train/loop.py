"""A trial's training loop and its metrics.

Speed: a trial's training set is small, so it is moved to the device once as ``uint8`` and
batched there from shuffled index tensors, normalised on the fly. There are no DataLoader workers;
this keeps a trial near the speed of a bare PyTorch loop (``benchmarks/bench_trainer.py``
measures the ratio).

Determinism: the model's initial weights come from ``torch.manual_seed(cfg.seed)`` inside a forked
RNG (the caller's global RNG is left untouched), and the batch order from a ``torch.Generator``
seeded with ``cfg.seed``. The same config and data give the same numbers on the CPU. After every
epoch, ``report(epoch, metrics, state)`` receives everything needed to resume bit-exactly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)
from torch import nn

from ..config import TrainConfig
from ..errors import DataError, RatioSearchError
from .cnn import build_model, normalize

# Images per forward pass when evaluating. Not larger: on the CPU a 1,024-image batch's
# activations fall out of the cache, and 128 evaluates the 600 validation images of the demo 2.3x
# faster with the same logits (benchmarks/bench_trainer.py, "evaluation batch").
EVAL_BATCH_SIZE = 128

ReportFn = Callable[[int, dict[str, Any], dict[str, Any]], None]


@dataclass
class TrainResult:
    """A trained model, its final validation metrics and one metrics dict per epoch."""

    model: nn.Module
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def compute_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    *,
    n_classes: int | None = None,
    positive_label: int = 0,
) -> dict[str, Any]:
    """Classification metrics from true labels and predicted class probabilities.

    Binary tasks score the ``positive_label`` class (the synthetic class: CNV in the study) for
    F1, precision, recall and ROC AUC; multiclass tasks use macro averages and one-vs-rest AUC.
    ROC AUC is NaN when ``y_true`` lacks a class it needs. ``confusion_matrix`` is a nested list,
    rows = true label, columns = predicted label, over all ``n_classes`` labels.
    """
    y_true = np.asarray(y_true).astype(np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    n_classes = int(n_classes or proba.shape[1])
    labels = list(range(n_classes))
    y_pred = proba.argmax(axis=1)
    if n_classes == 2:
        avg: dict[str, Any] = {"average": "binary", "pos_label": positive_label}
    else:
        avg = {"average": "macro", "labels": labels}
    # One call for the three: f1_score, precision_score and recall_score each call it (same numbers).
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, zero_division=0, **avg
    )
    out: dict[str, Any] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "roc_auc": _roc_auc(y_true, proba, n_classes, positive_label),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    return out


def _roc_auc(y_true: np.ndarray, proba: np.ndarray, n_classes: int, positive_label: int) -> float:
    present = set(np.unique(y_true).tolist())
    if n_classes == 2:
        if len(present) < 2:  # undefined with one class only
            return float("nan")
        return float(roc_auc_score(y_true == positive_label, proba[:, positive_label]))
    if present != set(range(n_classes)):  # one-vs-rest needs every class in y_true
        return float("nan")
    # sklearn checks that rows sum to 1; renormalise away float32 rounding of the softmax.
    proba = proba / proba.sum(axis=1, keepdims=True)
    return float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro"))


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Logits of uint8 images ``x`` (on any device), in batches, on ``device``."""
    was_training = model.training
    model.eval()
    out = [
        model(normalize(x[i : i + EVAL_BATCH_SIZE].to(device)))
        for i in range(0, len(x), EVAL_BATCH_SIZE)
    ]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, device=device)


def _evaluate_tensors(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    n_classes: int,
    positive_label: int,
) -> dict[str, Any]:
    logits = _logits(model, x, device)
    if not bool(torch.isfinite(logits).all()):  # sklearn would fail on NaN with a vaguer message
        raise RatioSearchError("the classifier's outputs are not finite (training diverged?)")
    y = y.to(device)
    val_loss = float(F.cross_entropy(logits, y).item())
    proba = torch.softmax(logits.double(), dim=1).cpu().numpy()
    metrics = compute_metrics(
        y.cpu().numpy(), proba, n_classes=n_classes, positive_label=positive_label
    )
    metrics["val_loss"] = val_loss
    return metrics


def predict_proba(
    model: nn.Module, x: np.ndarray, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Class probabilities ``(N, n_classes)`` (float64) of uint8 images ``x`` ``(N, C, H, W)``."""
    device = torch.device(device)
    xt = torch.from_numpy(_check_images(x, "x"))
    logits = _logits(model, xt, device)
    return torch.softmax(logits.double(), dim=1).cpu().numpy()


def evaluate(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    device: str | torch.device = "cpu",
    positive_label: int = 0,
) -> dict[str, Any]:
    """Metrics of ``model`` on uint8 images ``x`` with labels ``y`` (see :func:`compute_metrics`).

    Includes ``val_loss``, the mean cross-entropy on ``(x, y)``.
    """
    device = torch.device(device)
    xt = torch.from_numpy(_check_images(x, "x"))
    yt = torch.from_numpy(_check_labels(y, len(xt), "y"))
    n_classes = _n_outputs(model)
    return _evaluate_tensors(model, xt, yt, device, n_classes, positive_label)


def _n_outputs(model: nn.Module) -> int:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return int(last.out_features)


def _check_images(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise DataError(f"{name}: expected uint8 images (N, C, H, W), got {x.dtype} {x.shape}")
    # from_numpy needs a writable, contiguous array; a read-only memory map is copied once here.
    if not x.flags.c_contiguous or not x.flags.writeable:
        x = np.array(x, order="C", copy=True)
    return x


def _check_labels(y: np.ndarray, n: int, name: str, n_classes: int | None = None) -> np.ndarray:
    y = np.asarray(y).astype(np.int64)
    if y.shape != (n,):
        raise DataError(f"{name}: expected {n} labels, got shape {y.shape}")
    if n_classes is not None and n and (y.min() < 0 or y.max() >= n_classes):
        raise DataError(
            f"{name}: labels must lie in [0, {n_classes - 1}], found {y.min()}..{y.max()}"
        )
    return y


def _to_cpu(obj: Any) -> Any:
    """A detached CPU copy of a (nested) state dict, safe to keep while training goes on."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


def train_classifier(
    x: np.ndarray,
    y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    cfg: TrainConfig,
    *,
    n_classes: int,
    device: str | torch.device = "cpu",
    report: ReportFn | None = None,
    state: dict[str, Any] | None = None,
    positive_label: int = 0,
) -> TrainResult:
    """Train the classifier of ``cfg`` on uint8 images ``x`` / labels ``y``; validate after every
    ``cfg.val_every``-th epoch and the last.

    The model is :func:`.cnn.build_model`'s (``cfg.arch``, sized by ``cfg.widths`` / ``cfg.fc``).
    Adam (``cfg.lr``), cross-entropy, ``cfg.batch_size``, ``cfg.epochs``; initial weights and batch
    order are seeded from ``cfg.seed``. After each validated epoch ``report(epoch, metrics,
    state)`` is called with the 1-based epoch, the validation metrics (:func:`compute_metrics` plus
    ``train_loss`` and ``val_loss``) and ``state = {"epoch", "model", "optimizer", "rng",
    "history"}`` (CPU copies). Passing that ``state`` back resumes after its epoch and ends with the
    same weights and metrics as an uninterrupted run.
    """
    run = SeedRun(x, y, val_x, val_y, cfg, n_classes=n_classes, device=device, state=state,
                  positive_label=positive_label)  # fmt: skip
    while run.epoch < cfg.epochs:
        metrics = run.train_epoch()
        if report is not None and metrics is not None:
            report(run.epoch, dict(metrics), run.snapshot())
    return run.result()


def validates(epoch: int, cfg: TrainConfig) -> bool:
    """Whether epoch ``epoch`` (1-based) ends with validation: every ``cfg.val_every``-th epoch
    and the last (so the final metrics are always measured, whatever ``val_every``)."""
    return epoch % int(cfg.val_every) == 0 or epoch >= int(cfg.epochs)


class SeedRun:
    """One seed's training in progress: its model, optimizer, batch order and history.

    :func:`train_classifier` runs one to the end; :mod:`.multi` steps several side by side, one
    epoch each in turn (models other than the stacked CNN), with the same numbers as alone: a run
    shares no state with another (its own generator; the global RNG is only used, forked, to build
    the model).
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        val_x: np.ndarray,
        val_y: np.ndarray,
        cfg: TrainConfig,
        *,
        n_classes: int,
        device: str | torch.device = "cpu",
        state: dict[str, Any] | None = None,
        positive_label: int = 0,
    ) -> None:
        x = _check_images(x, "training images")
        val_x = _check_images(val_x, "validation images")
        y = _check_labels(y, len(x), "training labels", n_classes)
        val_y = _check_labels(val_y, len(val_x), "validation labels", n_classes)
        if len(x) == 0:
            raise DataError("the training set is empty")
        if len(val_x) == 0:
            raise DataError("the validation set is empty")
        if x.shape[1:] != val_x.shape[1:]:
            raise DataError(
                f"training images {x.shape[1:]} and validation images {val_x.shape[1:]} differ "
                "in shape"
            )
        self.cfg = cfg
        self.n_classes = n_classes
        self.positive_label = positive_label
        self.device = device = torch.device(device)

        # Initial weights: seeded, without disturbing the caller's global RNG; built on the CPU so
        # the same seed gives the same starting point on every device.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = build_model(cfg, x.shape[1], n_classes, (x.shape[2], x.shape[3]))
        self.model = model.to(device)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        # Batch order: its own CPU generator, so its state can be saved and restored exactly.
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # epochs done
        if state is not None:
            model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.gen.set_state(state["rng"])
            self.history = copy.deepcopy(list(state.get("history", [])))
            self.epoch = int(state["epoch"])

        # The whole (small) training set goes to the device once, as uint8; batches are gathered
        # there.
        self.xt = torch.from_numpy(x).to(device)
        self.yt = torch.from_numpy(y).to(device)
        self.vxt = torch.from_numpy(val_x).to(device)
        self.vyt = torch.from_numpy(val_y).to(device)
        self.metrics: dict[str, Any] = self.history[-1] if self.history else {}
        model.train()

    def train_epoch(self) -> dict[str, Any] | None:
        """One epoch of training, then validation when :func:`validates` says so; returns (and
        records) its metrics, or None for an epoch without validation."""
        model, optimizer, cfg, device = self.model, self.optimizer, self.cfg, self.device
        n = len(self.xt)
        perm = torch.randperm(n, generator=self.gen).to(device)
        loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per batch
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            logits = model(normalize(self.xt[idx]))
            loss = F.cross_entropy(logits, self.yt[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
        train_loss = float(loss_sum.item()) / n
        self.epoch += 1
        if not math.isfinite(train_loss):
            raise RatioSearchError(
                f"training diverged at epoch {self.epoch} (train loss {train_loss}); "
                f"try a lower train.lr (now {cfg.lr})"
            )
        if not validates(self.epoch, cfg):
            return None
        metrics = self._evaluate()
        metrics["train_loss"] = train_loss
        metrics["epoch"] = self.epoch
        self.history.append(metrics)
        self.metrics = metrics
        return metrics

    def _evaluate(self) -> dict[str, Any]:
        return _evaluate_tensors(
            self.model, self.vxt, self.vyt, self.device, self.n_classes, self.positive_label
        )

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to resume after the last epoch (CPU copies): the ``state`` of
        :func:`train_classifier`'s ``report``."""
        return {
            "epoch": self.epoch,
            "model": _to_cpu(self.model.state_dict()),
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "rng": self.gen.get_state(),
            "history": copy.deepcopy(self.history),
        }

    def result(self) -> TrainResult:
        """The trained model and its final metrics (re-scored when resumed past the last epoch
        with no history)."""
        if not self.metrics:
            self.metrics = self._evaluate()
        return TrainResult(model=self.model, metrics=dict(self.metrics), history=self.history)
