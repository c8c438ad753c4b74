"""Interval arithmetic and the usable-ratio rule, on numbers that can be checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ratio_search.errors import ConfigError
from ratio_search.evidence.noninferiority import usable_ratio_ni
from ratio_search.evidence.stats import mean_ci, paired_difference

pytestmark = pytest.mark.unit

# ------------------------------------------------------------------------------ intervals


def test_mean_ci_by_hand():
    # values 1..5: mean 3, sd sqrt(2.5); t_{0.975, 4} = 2.7764451051977987
    ci = mean_ci([1, 2, 3, 4, 5])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)
    assert ci.mean == pytest.approx(3.0)
    assert ci.sd == pytest.approx(math.sqrt(2.5))
    assert ci.half_width == pytest.approx(half)
    assert ci.low == pytest.approx(3.0 - half)
    assert ci.high == pytest.approx(3.0 + half)
    assert ci.n == 5


def test_mean_ci_two_values_and_confidence():
    # n = 2: t_{0.975, 1} = 12.706204736174698; half = t * sd / sqrt(2) = t * 0.5 for [0, 1]
    ci = mean_ci([0.0, 1.0])
    assert ci.half_width == pytest.approx(12.706204736174698 * 0.5)
    # A lower confidence gives a narrower interval.
    assert mean_ci([0.0, 1.0], confidence=0.9).half_width < ci.half_width


def test_mean_ci_single_value_has_no_interval():
    ci = mean_ci([0.8])
    assert ci.mean == 0.8 and ci.n == 1
    assert math.isnan(ci.low) and math.isnan(ci.high) and math.isnan(ci.half_width)
    assert "n=1" in str(ci)


def test_mean_ci_constant_values_zero_width():
    ci = mean_ci([0.7, 0.7, 0.7])
    assert ci.half_width == pytest.approx(0.0, abs=1e-12)
    assert ci.low == pytest.approx(0.7) and ci.high == pytest.approx(0.7)


def test_mean_ci_coverage_is_about_95_percent():
    # The t-interval of n = 5 normal draws covers the true mean in ~95 % of repeats.
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        ci = mean_ci(rng.normal(1.0, 2.0, 5))
        hits += ci.low <= 1.0 <= ci.high
    assert 0.93 < hits / 2000 < 0.97


@pytest.mark.parametrize("bad", [[], [float("nan"), 1.0], [float("inf")]])
def test_mean_ci_rejects_bad_input(bad):
    with pytest.raises(ConfigError):
        mean_ci(bad)


def test_mean_ci_rejects_bad_confidence():
    with pytest.raises(ConfigError, match="confidence"):
        mean_ci([1, 2], confidence=1.5)


def test_paired_difference_by_hand():
    a = [0.90, 0.88, 0.91, 0.87, 0.89]
    b = [0.85, 0.84, 0.86, 0.83, 0.87]
    d = paired_difference(a, b)
    diffs = np.subtract(a, b)
    assert d.mean == pytest.approx(diffs.mean())
    assert d.half_width == pytest.approx(2.7764451051977987 * diffs.std(ddof=1) / math.sqrt(5))
    assert d.low > 0  # a is better on every seed: the interval excludes 0


def test_pairing_removes_shared_seed_variance():
    # Seeds shift both arms alike; the unpaired spread is huge, the paired one is zero.
    seed_effect = np.array([0.0, 0.1, -0.1, 0.05, -0.05])
    a, b = 0.8 + seed_effect + 0.02, 0.8 + seed_effect
    d = paired_difference(a, b)
    assert d.mean == pytest.approx(0.02)
    assert d.half_width == pytest.approx(0.0, abs=1e-12)
    assert mean_ci(a).half_width > 0.05


def test_paired_difference_needs_equal_lengths():
    with pytest.raises(ConfigError, match="paired by seed"):
        paired_difference([1, 2, 3], [1, 2])


# ------------------------------------------------------------- usable ratio: non-inferiority


def pt(r, diff, hw, n=5, label=None):
    return {"r": r, "diff": diff, "low": diff - hw, "high": diff + hw, "n_seeds": n, "label": label}


def test_non_inferiority_takes_the_largest_passing_r():
    ni = usable_ratio_ni(
        [
            pt(0.25, 0.004, 0.006),
            pt(0.5, -0.002, 0.007),
            pt(0.75, -0.006, 0.006),
            pt(1.0, -0.2, 0.02),
        ],
        delta=0.01,
    )
    # lower bounds: -0.002, -0.009 (> -0.01), -0.012 (fails), -0.22 (fails)
    assert ni.r == 0.5 and ni.r_all_below == 0.5 and ni.failed_below == []
    assert [p.passes for p in ni.points] == [True, True, False, False]
    assert ni.delta == 0.01 and "lower 95 % bound above -delta" in ni.rule


def test_non_inferiority_a_dip_is_reported():
    # R = 0.5 fails (a dip), R = 0.75 passes: the rule names 0.75 and says that 0.5 failed;
    # the fixed-sequence reading stops at 0.25.
    ni = usable_ratio_ni([pt(0.25, 0.0, 0.005), pt(0.5, -0.01, 0.005), pt(0.75, 0.0, 0.005)], 0.01)
    assert ni.r == 0.75 and ni.failed_below == [0.5] and ni.r_all_below == 0.25


def test_non_inferiority_a_lucky_single_trial_is_no_candidate():
    # R = 1.0 rests on one run (a search trial, say): never named, however good it looks.
    ni = usable_ratio_ni([pt(0.5, 0.0, 0.004), {"r": 1.0, "diff": 0.05, "low": float("nan"),
                                                "high": float("nan"), "n_seeds": 1}], 0.01)  # fmt: skip
    assert ni.r == 0.5
    single = [p for p in ni.points if p.r == 1.0][0]
    assert not single.candidate and not single.passes


def test_non_inferiority_a_noisy_high_r_fails():
    # R = 1.0 has the best mean but a wide interval: its lower bound is below -delta.
    ni = usable_ratio_ni([pt(0.5, -0.001, 0.005), pt(1.0, 0.01, 0.03)], 0.01)
    assert ni.r == 0.5 and ni.failed_below == []
    # Nothing passes: real images only.
    none = usable_ratio_ni([pt(0.5, -0.02, 0.005), pt(1.0, 0.01, 0.03)], 0.01)
    assert none.r == 0.0 and none.r_all_below == 0.0 and none.label is None


def test_non_inferiority_other_settings_at_one_r_and_r0_ignored():
    ni = usable_ratio_ni([pt(0.0, 0.0, 0.0), pt(0.5, -0.03, 0.005, label="g=12.5"),
                          pt(0.5, 0.0, 0.005, label="g=2")], 0.01)  # fmt: skip
    assert ni.r == 0.5 and ni.label == "g=2" and [p.r for p in ni.points] == [0.5, 0.5]


@pytest.mark.parametrize(
    "points, delta, match",
    [([pt(0.5, 0, 0.01)], -0.1, "delta"), ([{"r": 0.5}], 0.01, "needs r, diff")],
)
def test_non_inferiority_errors(points, delta, match):
    with pytest.raises(ConfigError, match=match):
        usable_ratio_ni(points, delta)


def test_non_inferiority_as_dict_is_plain():
    import json

    d = usable_ratio_ni([pt(0.5, 0.0, 0.004)], 0.01).as_dict()
    assert json.loads(json.dumps(d))["points"][0]["passes"] is True
