"""mix(): the ratio R in replace and augment modes, rounding, determinism, pool errors."""

from __future__ import annotations

import numpy as np
import pytest

from ratio_search.config import DataConfig
from ratio_search.data import load_dataset
from ratio_search.errors import ConfigError, PoolError
from ratio_search.train.mixing import mix, synthetic_needed

pytestmark = pytest.mark.unit


def _train(n_cls0: int = 10, n_cls1: int = 12, size: int = 4):
    """Real images are 0..n-1 in their first pixel (to recognise them); labels 0 and 1."""
    n = n_cls0 + n_cls1
    x = np.zeros((n, 1, size, size), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(n)
    y = np.array([0] * n_cls0 + [1] * n_cls1, dtype=np.int64)
    return x, y


def _pool(m: int, size: int = 4):
    """Synthetic images carry 200 + i in their first pixel and 255 in the second."""
    p = np.zeros((m, 1, size, size), dtype=np.uint8)
    p[:, 0, 0, 0] = 200 + np.arange(m) % 50
    p[:, 0, 0, 1] = 255
    return p


def test_r0_has_no_synthetic_and_needs_no_pool():
    x, y = _train()
    m = mix(x, y, None, 0.0, "replace", 0, seed=0)
    assert m.n_synthetic == 0 and not m.is_synthetic.any()
    assert m.n_real == len(y)
    np.testing.assert_array_equal(m.x, x)
    np.testing.assert_array_equal(m.y, y)


def test_r1_replace_makes_the_class_all_synthetic():
    x, y = _train(10, 12)
    m = mix(x, y, _pool(30), 1.0, "replace", 0, seed=0)
    cls0 = m.y == 0
    assert cls0.sum() == 10  # class size held at its real count
    assert m.is_synthetic[cls0].all()
    assert (m.x[cls0][:, 0, 0, 1] == 255).all()
    # the other class is untouched, in order
    np.testing.assert_array_equal(m.x[m.y == 1], x[y == 1])
    assert not m.is_synthetic[m.y == 1].any()


@pytest.mark.parametrize(
    "c,r,expected",
    [
        (10, 0.5, 5),
        (5, 0.5, 3),
        (7, 0.25, 2),
        (3, 0.5, 2),
        (30, 0.1, 3),
        (1, 0.4, 0),
        (1, 0.5, 1),
        (9, 1.0, 9),
    ],
)
def test_replace_counts_round_half_up(c, r, expected):
    assert synthetic_needed(c, r, "replace") == expected
    x, y = _train(c, 4)
    m = mix(x, y, _pool(20), r, "replace", 0, seed=1)
    cls0 = m.y == 0
    assert cls0.sum() == c
    assert m.is_synthetic[cls0].sum() == expected == m.n_synthetic
    assert m.n_real == c - expected + 4
    # synthetic rows are the ones carrying the pool's marker, and only they
    np.testing.assert_array_equal(m.x[:, 0, 0, 1] == 255, m.is_synthetic)


@pytest.mark.parametrize(
    "c,r,expected", [(10, 0.5, 10), (10, 0.2, 3), (9, 0.25, 3), (7, 0.75, 21), (10, 0.0, 0)]
)
def test_augment_counts_keep_every_real_image(c, r, expected):
    assert synthetic_needed(c, r, "augment") == expected
    x, y = _train(c, 5)
    m = mix(x, y, _pool(40), r, "augment", 0, seed=0)
    assert m.n_synthetic == expected
    assert m.n_real == c + 5
    np.testing.assert_array_equal(m.x[~m.is_synthetic], x)  # every real image, in order
    assert (m.y[m.is_synthetic] == 0).all()


def test_augment_r1_is_a_config_error_that_explains():
    x, y = _train()
    with pytest.raises(ConfigError, match="infinitely many"):
        mix(x, y, _pool(100), 1.0, "augment", 0, seed=0)


@pytest.mark.parametrize("r", [-0.1, 1.5, float("nan")])
def test_r_outside_unit_interval_is_a_config_error(r):
    x, y = _train()
    with pytest.raises(ConfigError, match="outside"):
        mix(x, y, _pool(100), r, "replace", 0, seed=0)


def test_unknown_mode_is_a_config_error():
    x, y = _train()
    with pytest.raises(ConfigError, match="mode"):
        mix(x, y, _pool(10), 0.5, "blend", 0, seed=0)


def test_pool_too_small_names_both_numbers():
    x, y = _train(100, 10)
    with pytest.raises(PoolError, match=r"pool has 10 images, R=0.5 needs 50"):
        mix(x, y, _pool(10), 0.5, "replace", 0, seed=0)


@pytest.mark.parametrize("pool", [None, np.zeros((0, 1, 4, 4), np.uint8)])
def test_missing_or_empty_pool_with_positive_r(pool):
    x, y = _train()
    with pytest.raises(PoolError):
        mix(x, y, pool, 0.3, "replace", 0, seed=0)


def test_pool_of_other_size_is_a_pool_error():
    x, y = _train()
    with pytest.raises(PoolError, match="size and channels"):
        mix(x, y, _pool(20, size=8), 0.5, "replace", 0, seed=0)


def test_same_inputs_same_output_and_seeds_differ():
    x, y = _train(40, 10)
    pool = _pool(100)
    a = mix(x, y, pool, 0.5, "replace", 0, seed=3)
    b = mix(x, y, pool, 0.5, "replace", 0, seed=3)
    c = mix(x, y, pool, 0.5, "replace", 0, seed=4)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(
        a.x, c.x
    )  # another seed keeps other real images / takes other pool images


def test_choices_are_nested_across_r():
    x, y = _train(40, 10)
    pool = _pool(100)
    lo = mix(x, y, pool, 0.25, "replace", 0, seed=7)
    hi = mix(x, y, pool, 0.75, "replace", 0, seed=7)
    real_lo = set(lo.x[~lo.is_synthetic][:, 0, 0, 0].tolist())
    real_hi = set(hi.x[~hi.is_synthetic][:, 0, 0, 0].tolist())
    assert real_hi < real_lo  # real images kept at the larger R were kept at the smaller R too
    syn_lo = lo.x[lo.is_synthetic][:, 0, 0, 0].tolist()
    syn_hi = hi.x[hi.is_synthetic][:, 0, 0, 0].tolist()
    assert syn_hi[: len(syn_lo)] == syn_lo


def test_other_synthetic_label():
    x, y = _train(6, 8)
    m = mix(x, y, _pool(10), 0.5, "replace", synthetic_label=1, seed=0)
    assert (m.y[m.is_synthetic] == 1).all() and m.n_synthetic == 4
    np.testing.assert_array_equal(m.x[m.y == 0], x[y == 0])


def test_inputs_are_not_modified():
    x, y = _train()
    x0, y0 = x.copy(), y.copy()
    mix(x, y, _pool(20), 0.5, "replace", 0, seed=0)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)


def test_evaluation_splits_do_not_depend_on_r(tiny_image_folder, tiny_home):
    """val/test come from load_dataset alone; mixing at any R leaves them (and the data) as they were."""
    cfg = DataConfig(
        source="imagefolder", path=str(tiny_image_folder), image_size=8, min_val_per_class=0
    )
    ds = load_dataset(cfg, tiny_home)
    val_x, test_x = np.array(ds.val_x), np.array(ds.test_x)
    pool = _pool(20, size=8)
    for r in (0.0, 0.5, 1.0):
        m = mix(ds.train_x, ds.train_y, pool, r, "replace", ds.synthetic_label, seed=0)
        assert len(m.y) == len(ds.train_y)
        again = load_dataset(cfg, tiny_home)
        np.testing.assert_array_equal(again.val_x, val_x)
        np.testing.assert_array_equal(again.test_x, test_x)
        np.testing.assert_array_equal(ds.val_x, val_x)
