"""One trial's computation: mix synthetic images in at a ratio, train the CNN, score it.

- :mod:`.mixing`: the pure mixing functions (R, replace/augment, one or several classes,
  the top-fraction filter's index arithmetic; no torch);
- :mod:`.cnn`: the reference study's CNN and its fixed input normalisation;
- :mod:`.loop`: the training loop and its metrics (torch, scikit-learn);
- :mod:`.multi`: several seeds of one configuration trained together (one vectorised model);
- :mod:`.trial`: :func:`run_trial` / :func:`train_seeds` (mix + train, no Ray, no MLflow);
- :mod:`.command`: ``ratio-search train`` (a ``--config`` YAML and its pool or pools).

May import ``config``, ``errors``, ``home``, ``_io``, ``data`` and ``pools``; nothing above them.
Names are loaded on first use, so that importing the mixing function does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Mixed": "mixing",
    "MODES": "mixing",
    "mix": "mixing",
    "synthetic_needed": "mixing",
    "mix_classes": "mixing",
    "synthetic_labels": "mixing",
    "kept_count": "mixing",
    "pool_needed": "mixing",
    "top_fraction": "mixing",
    "MEAN": "cnn",
    "STD": "cnn",
    "SimpleCNN": "cnn",
    "build_model": "cnn",
    "normalize": "cnn",
    "TrainResult": "loop",
    "compute_metrics": "loop",
    "evaluate": "loop",
    "predict_proba": "loop",
    "train_classifier": "loop",
    "run_trial": "trial",
    "mix_trial": "trial",
    "train_seeds": "trial",
    "train_seeds_tensors": "multi",
    "aggregate": "multi",
    "read_train_yaml": "command",
    "resolve_train_config": "command",
    "load_pool_images": "command",
    "save_outputs": "command",
    "default_train_out": "command",
    "train_from_config": "command",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
