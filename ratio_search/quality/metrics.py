"""The quality figures, each a function of plain arrays with a known answer on simple cases.

- **Fréchet distance (FD)** and **KID** between real and generated features.
- **Precision / recall** (Kynkäänniemi et al., 2019): the share of generated images inside the real
  images' k-nearest-neighbour manifold (fidelity), and of real images inside the generated one
  (diversity: a mode-collapsed pool has low recall).
- **C2ST**: the held-out accuracy of a classifier telling real from generated images. 0.5 means
  indistinguishable; near 1 means a classifier can learn "looks synthetic", which is exactly the
  shortcut that makes an all-synthetic class (R = 1) collapse. Run on pixels with a small CNN (it
  sees brightness and texture cues that class features may ignore) and on the features with a
  logistic regression. :func:`c2st_test` adds an exact two-sided binomial test of the held-out
  predictions against chance (p-value and a 95 % Clopper-Pearson interval of the accuracy).
- **Memorisation**: the share of generated images closer to a training image than training images
  are to each other (below the ``quantile`` of the training set's nearest-neighbour distances,
  in pixel space). Images are also compared with the horizontally *flipped* training images (the
  fine-tune trains with flips, so a mirrored copy is a copy). An independent sample of the real
  distribution scores about ``quantile``; copies and mirrored copies score 1.

Inputs are features ``(N, D)`` or uint8 images ``(N, C, H, W)``, so that each figure is tested
on cases with a known answer (tests/test_quality.py).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import linalg
from scipy.spatial.distance import cdist
from sklearn.metrics.pairwise import polynomial_kernel
from sklearn.neighbors import NearestNeighbors

from ..config import TrainConfig
from ..errors import ConfigError, DataError


def _feats(x: np.ndarray, name: str, min_n: int = 2) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"{name}: expected features (N, D), got shape {x.shape}")
    if len(x) < min_n:
        raise DataError(f"{name}: need at least {min_n} samples, got {len(x)}")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{name}: features must be finite")
    return x


def _pair(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _feats(real, "real"), _feats(fake, "fake")
    if a.shape[1] != b.shape[1]:
        raise DataError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    return a, b


def frechet_distance(real: np.ndarray, fake: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (the FID formula).

    ``||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^{1/2})``. When the product is singular (fewer
    samples than dimensions), ``eps`` is added to both diagonals, as in the reference FID code.
    Tiny negative values from rounding are clipped to 0.
    """
    a, b = _pair(real, fake)
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
    a, b = _pair(real, fake)
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)

    def k(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # gamma=None is 1/d in scikit-learn: the KID kernel exactly
        return polynomial_kernel(x, y, degree=3, gamma=None, coef0=1.0)

    values = []
    for _ in range(n_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
        mmd = (
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2.0 * kxy.mean()
        )
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))


def _kth_nn_radius(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each point to its k-th nearest neighbour within ``x`` (itself excluded)."""
    k = min(k, len(x) - 1)
    # kneighbors() without a query leaves each point out of its own neighbours.
    dist, _ = NearestNeighbors(n_neighbors=k).fit(x).kneighbors()
    return dist[:, k - 1]


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
    d = cdist(b, a)  # (n_fake, n_real): every pair, each against its own ball's radius
    precision = float(np.mean((d <= r_real[None, :]).any(axis=1)))
    recall = float(np.mean((d.T <= r_fake[None, :]).any(axis=1)))
    return precision, recall


def _balanced(real: np.ndarray, fake: np.ndarray, rng: np.random.Generator):
    n = min(len(real), len(fake))
    ia = rng.choice(len(real), n, replace=False)
    ib = rng.choice(len(fake), n, replace=False)
    return real[ia], fake[ib], n


def c2st_test(
    real: np.ndarray,
    fake: np.ndarray,
    seed: int = 0,
    folds: int = 5,
    epochs: int = 15,
    min_steps: int = 100,
    widths: Sequence[int] = (8, 16),
    fc: int = 32,
) -> dict[str, float | int]:
    """Classifier two-sample test: held-out accuracy of telling ``real`` from ``fake``, with a test.

    Both sets are subsampled to the same size ``n``, so chance is exactly 0.5: 0.5 means a
    classifier cannot tell them apart, 1.0 that it always can. Well *below* 0.5 happens when
    generated images are copies of real ones (the classifier learns the images themselves, and a
    copy in the held-out part carries the other label); :func:`memorisation_share` flags that case.

    Every one of the ``2 n`` samples is predicted exactly once by a classifier that did not train
    on it; ``correct`` of them are right. ``p_value`` is the exact two-sided binomial test of
    ``correct`` out of ``2 n`` against 0.5 (:func:`scipy.stats.binomtest`) and ``low``/``high`` the
    95 % Clopper-Pearson interval of the accuracy. (The folds' classifiers share training data, so
    the predictions are not strictly independent; the test is the usual approximation.)

    - Features ``(N, D)``: standardised logistic regression, ``folds``-fold cross-validated.
    - uint8 images ``(N, C, H, W)``: a small :class:`SimpleCNN` trained on one stratified half and
      scored on the other (two folds: train on each half, score on the other), for ``epochs`` but
      at least ``min_steps`` steps. The held-out half is never used to pick anything (no early
      stopping), so its accuracy is a fair estimate.

    Returns ``{"accuracy", "correct", "n", "p_value", "low", "high"}`` (``n``: samples predicted).
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
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x = _feats(x, "c2st features")
        cv = StratifiedKFold(n_splits=min(folds, n), shuffle=True, random_state=seed)
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        correct = int(np.sum(cross_val_predict(clf, x, y, cv=cv) == y))
        return _binomial(correct, len(y))
    if x.ndim != 4 or x.dtype != np.uint8:
        raise DataError(
            f"c2st: expected features (N, D) or uint8 images (N, C, H, W), got {x.dtype} {x.shape}"
        )
    from ..train.loop import predict_proba, train_classifier  # torch: only for images

    # Two stratified halves; each side's first half vs second half after a shuffle.
    half = np.zeros(2 * n, dtype=bool)
    for lo in (0, n):
        idx = lo + rng.permutation(n)
        half[idx[: n // 2]] = True
    batch_size = 32
    epochs = max(epochs, math.ceil(min_steps / math.ceil(int(half.sum()) / batch_size)))
    correct = 0
    for fold, train_mask in enumerate((half, ~half)):
        cfg = TrainConfig(
            epochs=epochs, batch_size=batch_size, lr=1e-3, seed=seed + fold, device="cpu",
            widths=list(widths), fc=int(fc),
        )  # fmt: skip
        held = np.ascontiguousarray(x[~train_mask])
        res = train_classifier(
            np.ascontiguousarray(x[train_mask]), y[train_mask], held, y[~train_mask], cfg,
            n_classes=2,
        )  # fmt: skip
        correct += int(np.sum(predict_proba(res.model, held).argmax(axis=1) == y[~train_mask]))
    return _binomial(correct, len(y))


def _binomial(correct: int, n: int) -> dict[str, float | int]:
    """Accuracy ``correct / n`` with the exact binomial test against 0.5 and its 95 % interval."""
    from scipy.stats import binomtest

    test = binomtest(int(correct), int(n), 0.5, alternative="two-sided")
    ci = test.proportion_ci(confidence_level=0.95, method="exact")
    return {
        "accuracy": float(correct / n),
        "correct": int(correct),
        "n": int(n),
        "p_value": float(test.pvalue),
        "low": float(ci.low),
        "high": float(ci.high),
    }


def c2st(real: np.ndarray, fake: np.ndarray, **kwargs: Any) -> float:
    """The held-out accuracy of :func:`c2st_test` alone (same keyword arguments, same classifiers)."""
    return float(c2st_test(real, fake, **kwargs)["accuracy"])


def _as_flat(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 4:
        x = x.reshape(len(x), -1).astype(np.float64) / 255.0
    return _feats(x, name)


def _nearest_other(a: np.ndarray, flipped: np.ndarray | None) -> np.ndarray:
    """Each training sample's distance to its nearest *other* training sample (and, with
    ``flipped``, the others' mirror images; never its own mirror image, which is not a copy)."""
    if flipped is None:
        return _kth_nn_radius(a, 1)
    n = len(a)
    both = np.concatenate([a, flipped])
    # At most two of the 3 nearest are the sample itself and its own mirror image.
    dist, idx = NearestNeighbors(n_neighbors=min(3, len(both))).fit(both).kneighbors(a)
    other = (idx % n) != np.arange(n)[:, None]
    return np.where(other, dist, np.inf).min(axis=1)


def memorisation_share(
    train: np.ndarray, fake: np.ndarray, quantile: float = 0.05, flips: bool = True
) -> tuple[float, float]:
    """Share of ``fake`` samples closer to a training sample than training samples are to each other.

    The threshold is the ``quantile`` of the training samples' nearest-neighbour distances (to the
    other training samples). A generated image whose nearest training image is nearer than that
    is counted as memorised. Returns ``(share, threshold)``. Known answers: exact copies give 1;
    an independent draw from the training distribution gives about ``quantile`` (its distance to
    the training set is distributed like a training point's distance to the others).
    Images are compared as flattened pixels scaled to [0, 1] when given as uint8 ``(N, C, H, W)``.

    ``flips`` (images only): the training set also holds each image mirrored left-right, for the
    generated images' distances and for the threshold alike (a training image's own mirror image
    is left out of its threshold distance), so a horizontally flipped copy counts as a copy.
    Features ``(N, D)`` have no left and right and are never flipped.
    """
    if not 0.0 < quantile < 1.0:
        raise ConfigError(f"quantile: {quantile!r} is outside (0, 1)")
    images = np.asarray(train).ndim == 4
    a, b = _as_flat(train, "train"), _as_flat(fake, "fake")
    if a.shape[1] != b.shape[1]:
        raise DataError(
            f"memorisation: train and fake differ in size ({a.shape[1]} vs {b.shape[1]})"
        )
    flipped = None
    if flips and images:
        flipped = _as_flat(np.ascontiguousarray(np.asarray(train)[..., ::-1]), "train flipped")
    threshold = float(np.quantile(_nearest_other(a, flipped), quantile))
    ref = a if flipped is None else np.concatenate([a, flipped])
    nearest, _ = NearestNeighbors(n_neighbors=1).fit(ref).kneighbors(b)
    return float(np.mean(nearest[:, 0] <= threshold)), threshold
