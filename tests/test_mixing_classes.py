"""Several synthetic classes: labels from the spec, per-class counts, independent streams, the
top-fraction filter's arithmetic, and the default class bit-identical to the old ``mix``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ratio_search.errors import ConfigError, PoolError
from ratio_search.train.mixing import (
    kept_count,
    mix,
    mix_classes,
    pool_needed,
    synthetic_labels,
    synthetic_needed,
    top_fraction,
)

pytestmark = pytest.mark.unit

NAMES = ["CNV", "DME", "NORMAL"]


def _train(counts=(10, 7, 12), size: int = 4):
    """Real image i carries i in its first pixel; labels 0, 1, 2 with the given class sizes."""
    n = sum(counts)
    x = np.zeros((n, 1, size, size), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(n)
    y = np.concatenate([np.full(c, k, dtype=np.int64) for k, c in enumerate(counts)])
    return x, y


def _pool(m: int, label: int, size: int = 4):
    """Synthetic images of class ``label``: 100 * (label + 1) + i % 50 in the first pixel, 255 in
    the second (the synthetic marker)."""
    p = np.zeros((m, 1, size, size), dtype=np.uint8)
    p[:, 0, 0, 0] = 100 * (label + 1) % 256 + np.arange(m) % 50
    p[:, 0, 0, 1] = 255
    return p


def _old_mix(train_x, train_y, pool, r, mode, synthetic_label, seed):
    """The mix() of before several classes, frozen here as the reference of bit-identity."""
    cls_idx = np.flatnonzero(train_y == synthetic_label)
    c = len(cls_idx)
    s = synthetic_needed(c, r, mode)
    real_rng, pool_rng = (np.random.default_rng(s_) for s_ in np.random.SeedSequence(seed).spawn(2))
    n_drop = s if mode == "replace" else 0
    drop = np.sort(cls_idx[real_rng.permutation(c)[:n_drop]])
    keep = np.ones(len(train_y), dtype=bool)
    keep[drop] = False
    real_x, real_y = train_x[keep], train_y[keep].astype(np.int64)
    if s > 0:
        syn_x = np.asarray(pool[pool_rng.permutation(len(pool))[:s]], dtype=np.uint8)
    else:
        syn_x = np.zeros((0,) + tuple(train_x.shape[1:]), dtype=np.uint8)
    x = np.concatenate([real_x, syn_x])
    y = np.concatenate([real_y, np.full(s, synthetic_label, dtype=np.int64)])
    return x, y


@pytest.mark.parametrize("mode,r", [("replace", 0.0), ("replace", 0.3), ("replace", 1.0),
                                    ("augment", 0.5), ("augment", 0.75)])  # fmt: skip
@pytest.mark.parametrize("label", [0, 2])
@pytest.mark.parametrize("seed", [0, 5])
def test_default_class_is_bit_identical_to_the_old_mix(mode, r, label, seed):
    x, y = _train()
    pool = _pool(60, label)
    want_x, want_y = _old_mix(x, y, pool, r, mode, label, seed)
    for got in (
        mix(x, y, pool, r, mode, label, seed),
        mix_classes(x, y, {label: pool}, r, mode, seed, default_label=label),
    ):
        np.testing.assert_array_equal(got.x, want_x)
        np.testing.assert_array_equal(got.y, want_y)


@pytest.mark.parametrize("mode,r", [("replace", 0.5), ("augment", 0.5), ("augment", 0.25)])
def test_r_applies_to_each_listed_class(mode, r):
    counts = (10, 7, 12)
    x, y = _train(counts)
    pools = {0: _pool(40, 0), 2: _pool(40, 2)}
    m = mix_classes(x, y, pools, r, mode, seed=1, default_label=0)
    for label in (0, 2):
        s = synthetic_needed(counts[label], r, mode)
        assert s > 0
        in_cls = m.y == label
        assert m.is_synthetic[in_cls].sum() == s
        n_real = counts[label] - (s if mode == "replace" else 0)
        assert (~m.is_synthetic[in_cls]).sum() == n_real
        # the synthetic images of a class come from that class's pool
        lo = 100 * (label + 1) % 256
        syn = m.x[in_cls & m.is_synthetic][:, 0, 0, 0]
        assert ((syn >= lo) & (syn < lo + 50)).all()
    # the unlisted class is untouched, in order
    np.testing.assert_array_equal(m.x[m.y == 1], x[y == 1])
    assert not m.is_synthetic[m.y == 1].any()
    assert m.n_synthetic == int(m.is_synthetic.sum())
    # synthetic rows (marker 255) come last, class by class in label order
    np.testing.assert_array_equal(m.x[:, 0, 0, 1] == 255, m.is_synthetic)
    assert list(m.y[m.is_synthetic]) == sorted(m.y[m.is_synthetic])


def test_adding_a_class_does_not_change_another_class_draw():
    x, y = _train()
    p0, p1, p2 = _pool(40, 0), _pool(40, 1), _pool(40, 2)
    one = mix_classes(x, y, {2: p2}, 0.5, "replace", seed=3, default_label=0)
    two = mix_classes(x, y, {0: p0, 2: p2}, 0.5, "replace", seed=3, default_label=0)
    three = mix_classes(x, y, {0: p0, 1: p1, 2: p2}, 0.5, "replace", seed=3, default_label=0)
    for a, b in ((one, two), (two, three)):
        np.testing.assert_array_equal(a.x[a.y == 2], b.x[b.y == 2])
    np.testing.assert_array_equal(two.x[two.y == 0], three.x[three.y == 0])
    # ... and the default class draws exactly as when it is alone
    alone = mix(x, y, p0, 0.5, "replace", 0, seed=3)
    np.testing.assert_array_equal(alone.x[alone.y == 0], three.x[three.y == 0])


def test_a_missing_pool_names_the_class():
    x, y = _train()
    with pytest.raises(PoolError, match="class label 2"):
        mix_classes(x, y, {0: _pool(40, 0), 2: None}, 0.5, "replace", 0, default_label=0)
    # R = 0 needs no pool at all
    m = mix_classes(x, y, {0: None, 2: None}, 0.0, "replace", 0, default_label=0)
    np.testing.assert_array_equal(m.x, x)


def test_synthetic_labels():
    assert synthetic_labels("default", NAMES, 1) == [1]
    assert synthetic_labels("all", NAMES, 1) == [0, 1, 2]
    assert synthetic_labels("NORMAL,CNV", NAMES, 1) == [0, 2]  # label order
    assert synthetic_labels(["DME"], NAMES, 0) == [1]
    with pytest.raises(ConfigError, match="'AMD' is not a class"):
        synthetic_labels("CNV,AMD", NAMES, 0)
    with pytest.raises(ConfigError):
        synthetic_labels("", NAMES, 0)


@pytest.mark.parametrize("n,f,k", [(10, 0.8, 8), (11, 0.8, 9), (10, 0.7, 7), (5, 0.01, 1),
                                   (7, 1.0, 7), (0, 0.5, 0), (400, 0.5, 200)])  # fmt: skip
def test_kept_count_is_the_ceil_of_the_fraction(n, f, k):
    assert kept_count(n, f) == k


def test_top_fraction_keeps_exactly_the_top_in_score_order():
    scores = np.array([0.2, 0.9, 0.5, 0.9, np.nan, 0.1, 0.7, 0.3])
    keep = top_fraction(scores, 0.5)
    assert list(keep) == [1, 3, 6, 2]  # highest first, the tie 0.9/0.9 in index order
    assert len(top_fraction(scores, 0.8)) == math.ceil(0.8 * 8)
    assert list(top_fraction(scores, 1.0)) == list(range(8))  # no filter: the pool's own order
    assert top_fraction(scores, 1.0 - 1e-12)[-1] == 4  # NaN counts as the lowest score
    with pytest.raises(ConfigError):
        top_fraction(scores, 0.0)


@pytest.mark.parametrize("f", [1.0, 0.8, 0.5, 0.33, 0.01])
@pytest.mark.parametrize("mode,r", [("replace", 0.5), ("replace", 1.0), ("augment", 0.75)])
def test_pool_needed_is_the_smallest_pool_whose_top_fraction_suffices(f, mode, r):
    need = synthetic_needed(37, r, mode)
    m = pool_needed(37, r, mode, f)
    assert kept_count(m, f) >= need
    assert kept_count(m - 1, f) < need
