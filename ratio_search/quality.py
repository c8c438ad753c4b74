"""Pool quality: how close are the generated images to the real ones, and are they copies?

The reference study never measured its generator; it picked "well" and "poorly" generated images
by eye. These figures make a pool's quality a number, per pool, before any classifier is mixed:

- **Fréchet distance (FD)** and **KID** between real and generated images in the feature space of
  a CNN. No Inception weights are downloaded (nothing is, at run time): the feature extractor is a
  :class:`~ratio_search.trainer.SimpleCNN` trained on the *real training images only*
  (:func:`train_feature_extractor`; its penultimate layer), or the user's own checkpoint
  (:func:`load_feature_extractor`). FD/KID values are therefore comparable between pools of one
  dataset and one extractor, not with published FID numbers.
- **Precision / recall** (Kynkäänniemi et al., 2019): the share of generated images inside the real
  images' k-nearest-neighbour manifold (fidelity), and of real images inside the generated one
  (diversity: a mode-collapsed pool has low recall).
- **C2ST**: the held-out accuracy of a classifier telling real from generated images. 0.5 means
  indistinguishable; near 1 means a classifier can learn "looks synthetic", which is exactly the
  shortcut that makes R = 1 collapse (PHANTOM.md). Run on pixels with a small CNN (it sees
  brightness and texture cues that class features may ignore) and on the features with a
  logistic regression.
- **Memorisation**: the share of generated images closer to a training image than training images
  are to each other (below the ``quantile`` of the training set's nearest-neighbour distances,
  in pixel space). An independent sample of the real distribution scores about ``quantile``;
  copies score 1.

Every metric function takes plain arrays (features ``(N, D)`` or uint8 images ``(N, C, H, W)``), so
that each is tested on cases with a known answer (tests/test_quality.py).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import linalg
from scipy.spatial.distance import cdist
from torch import nn

from .config import TrainConfig
from .errors import ConfigError, DataError
from .trainer import SimpleCNN, normalize, predict_proba, train_classifier

# Images per forward pass when extracting features.
_BATCH = 512


# ------------------------------------------------------------------------- feature extractor


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
        head = self.model.classifier[:-1]  # Flatten, Linear, ReLU: everything but the logits
        out = []
        for i in range(0, len(images), _BATCH):
            x = torch.from_numpy(np.array(images[i : i + _BATCH], copy=True)).to(self.device)
            out.append(head(self.model.features(normalize(x))).double().cpu().numpy())
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
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        tmp = path.with_name(path.name + ".tmp")
        save_file(state, str(tmp))
        tmp.replace(path)
        Path(str(path) + ".json").write_text(json.dumps(self.info, indent=2))
        return path


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
    from .home import resolve_device

    device = resolve_device(device)
    train_x = np.asarray(train_x)
    train_y = np.asarray(train_y).astype(np.int64)
    if len(train_x) < 4:
        raise DataError(
            f"feature extractor: need at least 4 real training images, got {len(train_x)}"
        )
    rng = np.random.default_rng(seed)
    if max_per_class is not None:
        keep = []
        for c in np.unique(train_y):
            idx = np.flatnonzero(train_y == c)
            if len(idx) > max_per_class:
                idx = np.sort(rng.choice(idx, size=max_per_class, replace=False))
            keep.append(idx)
        keep_idx = np.sort(np.concatenate(keep))
        if len(keep_idx) < len(train_x):
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
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device)
    result = train_classifier(
        np.ascontiguousarray(train_x[fit]),
        train_y[fit],
        np.ascontiguousarray(train_x[is_val]),
        train_y[is_val],
        cfg,
        n_classes=n_classes,
        device=device,
        widths=widths,
        fc=fc,
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


# ------------------------------------------------------------------------------- the metrics


def _feats(x: np.ndarray, name: str, min_n: int = 2) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"{name}: expected features (N, D), got shape {x.shape}")
    if len(x) < min_n:
        raise DataError(f"{name}: need at least {min_n} samples, got {len(x)}")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{name}: features must be finite")
    return x


def frechet_distance(real: np.ndarray, fake: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (the FID formula).

    ``||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^{1/2})``. When the product is singular (fewer
    samples than dimensions), ``eps`` is added to both diagonals, as in the reference FID code.
    Tiny negative values from rounding are clipped to 0.
    """
    a, b = _feats(real, "real"), _feats(fake, "fake")
    if a.shape[1] != b.shape[1]:
        raise DataError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1 = np.atleast_2d(np.cov(a, rowvar=False))
    s2 = np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():
        # Dead ReLU units give zero-variance features and a singular product; handled below.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.all(np.isfinite(covmean)):
            offset = np.eye(len(s1)) * eps
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(fd, 0.0)


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kernel_inception_distance(
    real: np.ndarray,
    fake: np.ndarray,
    n_subsets: int = 20,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (Bińkowski et al., 2018): unbiased MMD² with the cubic kernel ``(x·y/d + 1)^3``.

    Averaged over ``n_subsets`` random subsets of ``min(subset_size, n_real, n_fake)`` samples per
    side; returns ``(mean, std over subsets)``. Unbiased, so it scatters around 0 (and may be
    slightly negative) for two samples of one distribution.
    """
    a, b = _feats(real, "real"), _feats(fake, "fake")
    if a.shape[1] != b.shape[1]:
        raise DataError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
        mmd = (
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2.0 * kxy.mean()
        )
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))


def _kth_nn_radius(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each point to its k-th nearest neighbour within ``x`` (itself excluded)."""
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    k = min(k, len(x) - 1)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) with k-NN manifolds.

    Each sample's ball has the radius of its k-th nearest neighbour in its own set. Precision is
    the share of ``fake`` samples inside at least one real ball; recall the share of ``real``
    samples inside at least one fake ball.
    """
    a, b = _feats(real, "real"), _feats(fake, "fake")
    if k < 1:
        raise ConfigError(f"k: {k} must be >= 1")
    r_real, r_fake = _kth_nn_radius(a, k), _kth_nn_radius(b, k)
    d = cdist(b, a)  # (n_fake, n_real)
    precision = float(np.mean((d <= r_real[None, :]).any(axis=1)))
    recall = float(np.mean((d.T <= r_fake[None, :]).any(axis=1)))
    return precision, recall


def _balanced(real: np.ndarray, fake: np.ndarray, rng: np.random.Generator):
    n = min(len(real), len(fake))
    ia = rng.choice(len(real), n, replace=False)
    ib = rng.choice(len(fake), n, replace=False)
    return real[ia], fake[ib], n


def c2st(
    real: np.ndarray,
    fake: np.ndarray,
    seed: int = 0,
    folds: int = 5,
    epochs: int = 15,
    min_steps: int = 100,
    widths: Sequence[int] = (8, 16),
    fc: int = 32,
) -> float:
    """Classifier two-sample test: held-out accuracy of telling ``real`` from ``fake``.

    Both sets are subsampled to the same size, so chance is exactly 0.5: 0.5 means a classifier
    cannot tell them apart, 1.0 that it always can. Well *below* 0.5 happens when generated images
    are copies of real ones (the classifier learns the images themselves, and a copy in the
    held-out half carries the other label); :func:`memorisation_share` flags that case.

    - Features ``(N, D)``: standardised logistic regression, ``folds``-fold cross-validated.
    - uint8 images ``(N, C, H, W)``: a small :class:`SimpleCNN` trained on one stratified half and
      scored on the other (two folds: train on each half, score on the other, average), for
      ``epochs`` but at least ``min_steps`` steps. The held-out half is never used to pick
      anything (no early stopping), so its accuracy is a fair estimate.
    """
    rng = np.random.default_rng(seed)
    real, fake = np.asarray(real), np.asarray(fake)
    if real.ndim != fake.ndim or real.shape[1:] != fake.shape[1:]:
        raise DataError(f"c2st: real {real.shape} and fake {fake.shape} differ in shape")
    if min(len(real), len(fake)) < 4:
        raise DataError(f"c2st: need at least 4 samples per side, got {len(real)} and {len(fake)}")
    a, b, n = _balanced(real, fake, rng)
    x = np.concatenate([a, b])
    y = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])
    if x.ndim == 2:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_score
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x = _feats(x, "c2st features")
        cv = StratifiedKFold(n_splits=min(folds, n), shuffle=True, random_state=seed)
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        return float(np.mean(cross_val_score(clf, x, y, cv=cv, scoring="accuracy")))
    if x.ndim != 4 or x.dtype != np.uint8:
        raise DataError(
            f"c2st: expected features (N, D) or uint8 images (N, C, H, W), got {x.dtype} {x.shape}"
        )
    # Two stratified halves; each side's first half vs second half after a shuffle.
    half = np.zeros(2 * n, dtype=bool)
    for lo in (0, n):
        idx = lo + rng.permutation(n)
        half[idx[: n // 2]] = True
    batch_size = 32
    epochs = max(epochs, math.ceil(min_steps / math.ceil(int(half.sum()) / batch_size)))
    accs = []
    for fold, train_mask in enumerate((half, ~half)):
        cfg = TrainConfig(
            epochs=epochs, batch_size=batch_size, lr=1e-3, seed=seed + fold, device="cpu"
        )
        res = train_classifier(
            np.ascontiguousarray(x[train_mask]),
            y[train_mask],
            np.ascontiguousarray(x[~train_mask]),
            y[~train_mask],
            cfg,
            n_classes=2,
            widths=widths,
            fc=fc,
        )
        accs.append(res.metrics["accuracy"])
    return float(np.mean(accs))


def memorisation_share(
    train: np.ndarray, fake: np.ndarray, quantile: float = 0.05
) -> tuple[float, float]:
    """Share of ``fake`` samples closer to a training sample than training samples are to each other.

    The threshold is the ``quantile`` of the training samples' nearest-neighbour distances (to the
    other training samples). A generated image whose nearest training image is nearer than that
    is counted as memorised. Returns ``(share, threshold)``. Known answers: exact copies give 1;
    an independent draw from the training distribution gives about ``quantile`` (its distance to
    the training set is distributed like a training point's distance to the others).
    Images are compared as flattened pixels scaled to [0, 1] when given as uint8 ``(N, C, H, W)``.
    """
    if not 0.0 < quantile < 1.0:
        raise ConfigError(f"quantile: {quantile!r} is outside (0, 1)")
    a, b = _as_flat(train, "train"), _as_flat(fake, "fake")
    if a.shape[1] != b.shape[1]:
        raise DataError(
            f"memorisation: train and fake differ in size ({a.shape[1]} vs {b.shape[1]})"
        )
    d_tt = cdist(a, a)
    np.fill_diagonal(d_tt, np.inf)
    threshold = float(np.quantile(d_tt.min(axis=1), quantile))
    nearest = cdist(b, a).min(axis=1)
    return float(np.mean(nearest <= threshold)), threshold


def _as_flat(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 4:
        x = x.reshape(len(x), -1).astype(np.float64) / 255.0
    return _feats(x, name)


# ---------------------------------------------------------------------------- one pool


def pool_quality(
    pool_images: np.ndarray,
    real_train_images: np.ndarray,
    feature_extractor: FeatureExtractor,
    *,
    synthetic_label: int | None = None,
    seed: int = 0,
    k: int = 3,
    kid_subsets: int = 20,
    memorisation_quantile: float = 0.05,
    c2st_epochs: int = 15,
    c2st_min_steps: int = 100,
    max_images: int = 2000,
) -> dict[str, Any]:
    """All quality figures of one pool against the real training images of its class.

    ``real_train_images`` should be the real training images of the class the pool was generated
    for (uint8, same shape). Both sets are capped at ``max_images`` (random, seeded) so that the
    quadratic distance matrices stay small. With ``synthetic_label`` given, also the share of pool
    images the real-trained extractor labels as that class and its mean confidence.
    """
    pool_images, real = np.asarray(pool_images), np.asarray(real_train_images)
    if pool_images.shape[1:] != real.shape[1:]:
        raise DataError(
            f"pool images {pool_images.shape[1:]} and real images {real.shape[1:]} differ in shape"
        )
    rng = np.random.default_rng(seed)
    if len(pool_images) > max_images:
        pool_images = pool_images[np.sort(rng.choice(len(pool_images), max_images, replace=False))]
    if len(real) > max_images:
        real = real[np.sort(rng.choice(len(real), max_images, replace=False))]
    fr = feature_extractor.features(real)
    fp = feature_extractor.features(pool_images)
    kid_mean, kid_std = kernel_inception_distance(fr, fp, n_subsets=kid_subsets, seed=seed)
    precision, recall = precision_recall(fr, fp, k=k)
    mem, mem_threshold = memorisation_share(real, pool_images, memorisation_quantile)
    out: dict[str, Any] = {
        "fd": frechet_distance(fr, fp),
        "kid": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
        "c2st": c2st(real, pool_images, seed=seed, epochs=c2st_epochs, min_steps=c2st_min_steps),
        "c2st_features": c2st(fr, fp, seed=seed),
        "memorisation": mem,
        "memorisation_expected": float(memorisation_quantile),
        "memorisation_threshold": mem_threshold,
        "n_pool": int(len(pool_images)),
        "n_real": int(len(real)),
        "k": int(k),
        "feature_extractor": dict(feature_extractor.info),
    }
    if synthetic_label is not None:
        proba = feature_extractor.predict_proba(pool_images)[:, synthetic_label]
        out["label_agreement"] = float(np.mean(proba >= 0.5))
        out["mean_confidence"] = float(np.mean(proba))
    return out


def rank_by_confidence(
    images: np.ndarray, classifier: FeatureExtractor | nn.Module, label: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``images`` from most to least confidently of class ``label``, and the scores.

    ``classifier`` is a real-trained model (a :class:`FeatureExtractor` or any SimpleCNN); the
    report shows the two ends of this ranking as the best- and worst-generated images.
    """
    if isinstance(classifier, FeatureExtractor):
        proba = classifier.predict_proba(images)
    else:
        proba = predict_proba(classifier, images)
    score = proba[:, label]
    order = np.argsort(-score, kind="stable")
    return order, score


# ------------------------------------------------------------------- the store: every pool


def real_classifier(
    cache_dir: str | Path,
    data: Any,
    *,
    seed: int = 0,
    path: str | Path | None = None,
    **train_kwargs: Any,
) -> FeatureExtractor:
    """The feature extractor / real-trained classifier of a dataset, trained once and cached.

    ``path``: the user's own checkpoint (:func:`load_feature_extractor`) instead. Otherwise a
    SimpleCNN is trained on ``data``'s real training images (:func:`train_feature_extractor`,
    ``train_kwargs`` passed on) and kept as ``<cache_dir>/extractor-<data key>-s<seed>.safetensors``,
    so that every pool of a dataset is measured in the same feature space.
    """
    shape = tuple(int(s) for s in data.train_x.shape[1:])
    if path is not None:
        return load_feature_extractor(path, shape)
    cached = Path(cache_dir) / f"extractor-{data.key}-s{seed}.safetensors"
    if cached.is_file() and Path(str(cached) + ".json").is_file():
        fe = load_feature_extractor(cached, shape)
        fe.info = json.loads(Path(str(cached) + ".json").read_text())
        return fe
    fe = train_feature_extractor(
        data.train_x, data.train_y, len(data.class_names), seed=seed, **train_kwargs
    )
    fe.info["data_key"] = str(data.key)
    fe.save(cached)
    return fe


@dataclass
class _CachedData:
    """The parts of a cached dataset that quality needs (no DataConfig required)."""

    train_x: np.ndarray
    train_y: np.ndarray
    class_names: list[str]
    synthetic_label: int
    key: str


def dataset_of_pool(home: Any, manifest: dict[str, Any]) -> _CachedData:
    """The real training set a pool's model was fine-tuned on, from the model's meta.json and the
    data cache (``<home>/cache/data-<key>``). DataError when either is gone."""
    model_path = manifest.get("model_path")
    if not model_path:
        raise DataError(
            f"pool {manifest.get('key')}: no model recorded (an imported folder?), so its real "
            "dataset is unknown"
        )
    meta_path = Path(model_path) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        raise DataError(
            f"pool {manifest.get('key')}: the model's {meta_path} cannot be read"
        ) from None
    key = meta.get("data_key")
    folder = Path(home.cache) / f"data-{key}"
    if not key or not (folder / "meta.json").is_file():
        raise DataError(
            f"pool {manifest.get('key')}: the dataset {key} of its model is not in {home.cache} "
            "(load it once, e.g. with `ratio-search finetune`, to cache it)"
        )
    names = list(
        meta.get("class_names") or json.loads((folder / "meta.json").read_text()).get("class_names")
    )
    return _CachedData(
        train_x=np.load(folder / "train_x.npy", mmap_mode="r"),
        train_y=np.load(folder / "train_y.npy"),
        class_names=names,
        synthetic_label=int(meta.get("synthetic_label", 0)),
        key=str(key),
    )


QUALITY_NUMBERS = (
    "fd",
    "kid",
    "kid_std",
    "precision",
    "recall",
    "c2st",
    "c2st_features",
    "memorisation",
    "label_agreement",
    "mean_confidence",
)


def pools_quality(
    home: Any,
    keys: Sequence[str] | None = None,
    *,
    extractor_path: str | Path | None = None,
    force: bool = False,
    seed: int = 0,
    track: bool = True,
    progress: Any = None,
    extractor_kwargs: dict[str, Any] | None = None,
    quality_kwargs: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Compute (or read) the quality figures of every pool (or of ``keys``) in the store.

    Figures already in a pool's manifest are reused unless ``force``. New figures are written into
    the manifest's ``quality`` block (atomically, :func:`ratio_search.pools.update_manifest`) and,
    with ``track``, logged as a ``pool`` job in MLflow (``home.tracking_uri()``). Returns one row
    per pool: ``{"key", "status": computed|cached|skipped, "reason", "quality"}``.
    """
    from . import pools

    rows = pools.list_pools(home)
    if keys:
        wanted = set(keys)
        missing = wanted - {r["key"] for r in rows} - {r.get("name") for r in rows}
        if missing:
            raise DataError(
                f"pool(s) not found: {', '.join(sorted(missing))} (see `ratio-search pools`)"
            )
        rows = [r for r in rows if r["key"] in wanted or r.get("name") in wanted]
    extractors: dict[str, FeatureExtractor] = {}
    out = []
    for row in rows:
        pool = pools.load_pool(home, row["path"])
        have = pool.manifest.get("quality") or {}
        if have.get("fd") is not None and not force:
            out.append({"key": pool.key, "status": "cached", "reason": None, "quality": have})
            continue
        try:
            data = dataset_of_pool(home, pool.manifest)
        except DataError as e:
            out.append({"key": pool.key, "status": "skipped", "reason": str(e), "quality": have})
            continue
        if progress:
            progress(f"pool {pool.key}: measuring quality")
        if data.key not in extractors:
            extractors[data.key] = real_classifier(
                Path(home.cache) / "quality",
                data,
                seed=seed,
                path=extractor_path,
                **(extractor_kwargs or {}),
            )
        fe = extractors[data.key]
        real = np.asarray(data.train_x[np.asarray(data.train_y) == data.synthetic_label])
        q = pool_quality(
            pool.images,
            real,
            fe,
            synthetic_label=data.synthetic_label,
            seed=seed,
            **(quality_kwargs or {}),
        )
        pools.update_manifest(home, pool.key, {"quality": q})
        if track:
            q["mlflow_run_id"] = _log_quality(home, pool.key, pool.manifest, q)
        out.append({"key": pool.key, "status": "computed", "reason": None, "quality": q})
    return out


def _log_quality(home: Any, key: str, manifest: dict[str, Any], q: dict[str, Any]) -> str | None:
    """Log a pool's figures as a ``pool`` job in MLflow; None (and a warning) if that fails."""
    try:
        from . import tracking

        params = {
            k: manifest.get(k)
            for k in (
                "key",
                "model_hash",
                "guidance",
                "steps",
                "scheduler",
                "postprocess",
                "seed",
                "n",
            )
        }
        params["feature_extractor"] = q["feature_extractor"].get("source")
        metrics = {k: q[k] for k in QUALITY_NUMBERS if _is_num(q.get(k))}
        return tracking.log_job(
            "pool",
            params,
            metrics,
            tracking_uri=home.tracking_uri(),
            run_name=f"pool-quality {key}",
            tags={"pool_key": key, "ratio_search.job": "pool_quality"},
        )
    except Exception as e:  # noqa: BLE001 - the figures are in the manifest either way
        warnings.warn(f"pool {key}: quality not logged to MLflow ({e})", stacklevel=2)
        return None


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
