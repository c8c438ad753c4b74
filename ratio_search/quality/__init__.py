"""Pool quality: how close are the generated images to the real ones, and are they copies?

Choosing "well" and "poorly" generated images by eye is not a measurement. These figures make a
pool's quality a number, per pool, before any classifier is mixed:

- :mod:`.features`: the feature space (a CNN trained on real images only, or the user's own) and
  the split of the training images into the extractor's part and a held-out reference;
- :mod:`.metrics`: FD, KID, precision/recall, C2ST (with a binomial test) and memorisation (with
  mirrored neighbours) on plain arrays;
- :mod:`.measure`: all figures of one pool, each beside its real-vs-real floor (the rules);
- :mod:`.store`: every pool in the store (cached in manifests, logged to MLflow);
- :mod:`.selection`: confidence filtering (a judge's score per pool image, cached in the pool
  folder) and the synthetic images of one trial (:func:`trial_synthetic`).
"""

from __future__ import annotations

from .features import (
    FeatureExtractor,
    load_feature_extractor,
    reference_split,
    train_feature_extractor,
)
from .measure import (
    FLOORED,
    QUALITY_FORMAT,
    QUALITY_NUMBERS,
    floor_name,
    is_current,
    pool_quality,
    quality_extractor,
    rank_by_confidence,
    real_classifier,
)
from .metrics import (
    c2st,
    c2st_test,
    frechet_distance,
    kernel_inception_distance,
    memorisation_share,
    precision_recall,
)
from .selection import judge, judge_key, pool_scores, train_scorer, trial_synthetic
from .store import dataset_of_pool, pools_quality

__all__ = [
    "FLOORED",
    "QUALITY_FORMAT",
    "QUALITY_NUMBERS",
    "FeatureExtractor",
    "c2st",
    "c2st_test",
    "dataset_of_pool",
    "floor_name",
    "frechet_distance",
    "is_current",
    "judge",
    "judge_key",
    "kernel_inception_distance",
    "load_feature_extractor",
    "memorisation_share",
    "pool_quality",
    "pool_scores",
    "pools_quality",
    "precision_recall",
    "quality_extractor",
    "rank_by_confidence",
    "real_classifier",
    "reference_split",
    "train_feature_extractor",
    "train_scorer",
    "trial_synthetic",
]
