"""Pool quality: how close are the generated images to the real ones, and are they copies?

Choosing "well" and "poorly" generated images by eye is not a measurement. These figures make a
pool's quality a number, per pool, before any classifier is mixed:

- :mod:`.features`: the feature space (a CNN trained on real images only, or the user's own);
- :mod:`.metrics`: FD, KID, precision/recall, C2ST and memorisation on plain arrays;
- :mod:`.measure`: all figures of one pool, and of every pool in the store (cached in manifests);
- :mod:`.selection`: confidence filtering (a judge's score per pool image, cached in the pool
  folder) and the synthetic images of one trial (:func:`trial_synthetic`).
"""

from __future__ import annotations

from .features import FeatureExtractor, load_feature_extractor, train_feature_extractor
from .measure import (
    QUALITY_NUMBERS,
    dataset_of_pool,
    pool_quality,
    pools_quality,
    rank_by_confidence,
    real_classifier,
)
from .metrics import (
    c2st,
    frechet_distance,
    kernel_inception_distance,
    memorisation_share,
    precision_recall,
)
from .selection import judge, judge_key, pool_scores, train_scorer, trial_synthetic

__all__ = [
    "QUALITY_NUMBERS",
    "FeatureExtractor",
    "c2st",
    "dataset_of_pool",
    "frechet_distance",
    "judge",
    "judge_key",
    "kernel_inception_distance",
    "load_feature_extractor",
    "memorisation_share",
    "pool_quality",
    "pool_scores",
    "pools_quality",
    "precision_recall",
    "rank_by_confidence",
    "real_classifier",
    "train_feature_extractor",
    "train_scorer",
    "trial_synthetic",
]
