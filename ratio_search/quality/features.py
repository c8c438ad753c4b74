"""The feature space of the quality figures: a CNN trained on real images only, or the user's own.

No Inception weights are downloaded (nothing is, at run time): the feature extractor is a
:class:`~ratio_search.train.cnn.SimpleCNN` trained on the *real training images only*
(:func:`train_feature_extractor`; its penultimate layer), or the user's own checkpoint
(:func:`load_feature_extractor`). FD/KID values are therefore comparable between pools of one
dataset and one extractor, not with published FID numbers.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write_json, atomic_write_with
from ..config import TrainConfig
from ..errors import ConfigError, DataError
from ..home import resolve_device
from ..train.cnn import SimpleCNN, normalize
from ..train.loop import predict_proba, train_classifier

# Images per forward pass when extracting features.
_BATCH = 512


class FeatureExtractor:
    """A SimpleCNN used as a feature map: the activations of its penultimate (hidden FC) layer.

    Also a real-trained classifier: :meth:`predict_proba` gives its class probabilities, which the
    report uses to rank generated images by how confidently they look like their class.
    """

    def __init__(self, model: SimpleCNN, info: dict[str, Any], device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.info = dict(info)
        self.device = device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` the extractor was built for."""
        return tuple(self.info["image_shape"])  # type: ignore[return-value]

    def _check(self, images: np.ndarray, name: str) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise DataError(
                f"{name}: expected uint8 images (N, C, H, W), got {images.dtype} {images.shape}"
            )
        if tuple(images.shape[1:]) != self.image_shape:
            raise DataError(
                f"{name}: images are {tuple(images.shape[1:])}, the feature extractor expects "
                f"{self.image_shape} (source: {self.info.get('source')})"
            )
        return images

    @torch.no_grad()
    def features(self, images: np.ndarray) -> np.ndarray:
        """Penultimate-layer features ``(N, fc)`` (float64) of uint8 images ``(N, C, H, W)``."""
        images = self._check(images, "images")
        out = []
        for i in range(0, len(images), _BATCH):
            x = torch.from_numpy(np.array(images[i : i + _BATCH], copy=True)).to(self.device)
            out.append(self.model.hidden(normalize(x)).double().cpu().numpy())
        if not out:
            return np.zeros((0, int(self.info["fc"])), dtype=np.float64)
        return np.concatenate(out)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, n_classes)`` of uint8 images."""
        return predict_proba(self.model, self._check(images, "images"), self.device)

    def save(self, path: str | Path) -> Path:
        """Weights as safetensors at ``path`` and the info as ``<path>.json`` beside it."""
        from safetensors.torch import save_file

        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        atomic_write_with(path, lambda tmp: save_file(state, str(tmp)))
        atomic_write_json(Path(str(path) + ".json"), self.info)
        return path


def _per_class_subset(
    y: np.ndarray, max_per_class: int | None, rng: np.random.Generator
) -> np.ndarray | None:
    """Sorted indices keeping at most ``max_per_class`` per class (seeded); None if all are kept."""
    if max_per_class is None:
        return None
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) > max_per_class:
            idx = np.sort(rng.choice(idx, size=max_per_class, replace=False))
        keep.append(idx)
    keep_idx = np.sort(np.concatenate(keep))
    return keep_idx if len(keep_idx) < len(y) else None


#: The reference split's defaults: the share of each class's training images held out as the
#: quality reference, and the fewest held out per class (two halves of 4: the floor's minimum).
REFERENCE_SHARE = 0.2
REFERENCE_MIN = 8


def reference_split(
    train_y: np.ndarray,
    *,
    share: float = REFERENCE_SHARE,
    min_per_class: int = REFERENCE_MIN,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split the training split into ``(fit, reference)`` indices, per class and seeded.

    The quality feature extractor trains on ``fit`` only; ``reference`` are real images it never
    saw, which the pools are compared with (and, in two halves, with each other: the floor). Per
    class, ``max(min_per_class, round(share * n_c))`` images go to the reference, but never more
    than half of the class, so that the extractor still sees every class. Val and test are not
    involved. Both index arrays are sorted; same ``train_y`` and arguments, same split.
    """
    if not 0.0 < share < 1.0:
        raise ConfigError(f"reference share: {share!r} is outside (0, 1)")
    y = np.asarray(train_y).astype(np.int64)
    rng = np.random.default_rng(seed)
    ref: list[np.ndarray] = []
    for c in np.unique(y):  # in class order, so the draws do not depend on the images' order
        idx = np.flatnonzero(y == c)
        n_ref = min(max(int(min_per_class), int(round(share * len(idx)))), len(idx) // 2)
        ref.append(rng.choice(idx, size=n_ref, replace=False))
    ref_idx = np.sort(np.concatenate(ref)) if ref else np.zeros(0, np.int64)
    is_ref = np.zeros(len(y), dtype=bool)
    is_ref[ref_idx] = True
    return np.flatnonzero(~is_ref), ref_idx


def split_key(fit_idx: np.ndarray, n_train: int) -> str:
    """12 hex digits naming an extractor's training set (which of ``n_train`` images it fits)."""
    h = hashlib.sha256(f"{int(n_train)}|".encode())
    h.update(np.ascontiguousarray(np.asarray(fit_idx, dtype=np.int64)).tobytes())
    return h.hexdigest()[:12]


def train_feature_extractor(
    train_x: np.ndarray,
    train_y: np.ndarray,
    n_classes: int,
    *,
    seed: int = 0,
    epochs: int = 10,
    min_steps: int = 300,
    batch_size: int = 64,
    lr: float = 1e-3,
    widths: Sequence[int] = (16, 32, 64),
    fc: int = 128,
    holdout: float = 0.1,
    max_per_class: int | None = 2000,
    device: str = "auto",
) -> FeatureExtractor:
    """Train a SimpleCNN on the **real** training images only and wrap it as a feature extractor.

    Never on generated images: the feature space must not have learned what the generator does.
    Epochs are raised until at least ``min_steps`` optimisation steps are taken (a few hundred
    real images make few batches per epoch). A stratified ``holdout`` share of the training
    images is kept out to report the extractor's accuracy (``info["holdout_accuracy"]``), so that a
    useless feature space is visible. At most ``max_per_class`` images per class are used (a
    seeded subset), which bounds the one-off cost on a large dataset such as OCT2017.
    ``device``: ``auto`` means CUDA when available; the extractor then computes features there.
    """
    device = resolve_device(device)
    train_x = np.asarray(train_x)
    train_y = np.asarray(train_y).astype(np.int64)
    if len(train_x) < 4:
        raise DataError(
            f"feature extractor: need at least 4 real training images, got {len(train_x)}"
        )
    rng = np.random.default_rng(seed)
    keep_idx = _per_class_subset(train_y, max_per_class, rng)
    if keep_idx is not None:
        train_x, train_y = train_x[keep_idx], train_y[keep_idx]
    val_idx: list[int] = []
    for c in np.unique(train_y):
        idx = np.flatnonzero(train_y == c)
        n_val = int(round(holdout * len(idx))) if len(idx) > 1 else 0
        val_idx += rng.choice(idx, size=n_val, replace=False).tolist()
    is_val = np.zeros(len(train_x), dtype=bool)
    is_val[val_idx] = True
    if not is_val.any():  # too few to hold out: score on the training images (flagged in info)
        is_val[:] = True
    fit = ~is_val if (~is_val).any() else is_val
    steps_per_epoch = math.ceil(int(fit.sum()) / batch_size)
    epochs = max(epochs, math.ceil(min_steps / steps_per_epoch))
    cfg = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
        widths=list(widths), fc=int(fc),
    )  # fmt: skip
    result = train_classifier(
        np.ascontiguousarray(train_x[fit]),
        train_y[fit],
        np.ascontiguousarray(train_x[is_val]),
        train_y[is_val],
        cfg,
        n_classes=n_classes,
        device=device,
    )
    info = {
        "source": "trained on the real training images",
        "image_shape": list(train_x.shape[1:]),
        "n_classes": int(n_classes),
        "widths": list(widths),
        "fc": int(fc),
        "seed": int(seed),
        "epochs": int(epochs),
        "n_train": int(fit.sum()),
        "holdout_accuracy": float(result.metrics["accuracy"]),
        "holdout_is_train": bool(is_val.all()),
    }
    return FeatureExtractor(result.model.cpu(), info, device)


def _state_dict_from(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"feature extractor checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one clear error
        raise ConfigError(f"feature extractor checkpoint {path} cannot be read: {e}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"feature extractor checkpoint {path}: expected a state dict of tensors")
    return state


def load_feature_extractor(
    path: str | Path, image_shape: Sequence[int], device: str = "cpu"
) -> FeatureExtractor:
    """A user's feature extractor: the weights of a :class:`SimpleCNN` (any widths / fc size).

    ``path`` is a ``.safetensors`` file or a torch file read with ``weights_only=True`` (a plain
    state dict, or one under ``"state_dict"`` / ``"model"``). The architecture is read from the
    tensor shapes; ``image_shape`` ``(C, H, W)`` is that of the images it will see.
    """
    path = Path(path).expanduser()
    state = _state_dict_from(path)
    convs = sorted(
        (int(k.split(".")[1]), v.shape)
        for k, v in state.items()
        if k.startswith("features.") and k.endswith(".weight") and v.ndim == 4
    )
    if not convs or "classifier.1.weight" not in state or "classifier.3.weight" not in state:
        raise ConfigError(
            f"feature extractor checkpoint {path}: not a SimpleCNN state dict "
            "(needs features.N.weight conv layers and classifier.1/classifier.3 linear layers)"
        )
    widths = [int(shape[0]) for _, shape in convs]
    channels = int(convs[0][1][1])
    fc = int(state["classifier.1.weight"].shape[0])
    n_classes = int(state["classifier.3.weight"].shape[0])
    c, h, w = (int(s) for s in image_shape)
    if c != channels:
        raise ConfigError(
            f"feature extractor checkpoint {path}: built for {channels} channel(s), images have {c}"
        )
    model = SimpleCNN(channels, n_classes, (h, w), widths, fc)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "shape mismatch"
        raise ConfigError(
            f"feature extractor checkpoint {path} does not fit {h}x{w} images: {first}"
        ) from None
    info = {
        "source": str(path),
        "image_shape": [c, h, w],
        "n_classes": n_classes,
        "widths": widths,
        "fc": fc,
    }
    return FeatureExtractor(model, info, device)
