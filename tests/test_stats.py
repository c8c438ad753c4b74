"""Interval arithmetic and the usable-ratio rule, on numbers that can be checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ratio_search.errors import ConfigError
from ratio_search.evidence.stats import mean_ci, paired_difference, usable_ratio

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


# ---------------------------------------------------------------------------- usable ratio


def rows(pairs, confirmed=False, group=None):
    return [{"r": r, "value": v, "confirmed": confirmed, "group": group} for r, v in pairs]


def test_usable_ratio_basic_table():
    table = rows([(0.0, 0.85), (0.2, 0.86), (0.4, 0.87), (0.6, 0.865), (0.8, 0.84), (1.0, 0.50)])
    u = usable_ratio(table, tolerance=0.01)
    assert u.best_r == 0.4 and u.best_value == pytest.approx(0.87)
    assert u.threshold == pytest.approx(0.86)
    assert u.r == 0.6  # 0.865 >= 0.86; 0.8 (0.84) is not
    assert not u.confirmed and not u.best_confirmed
    assert [p.r for p in u.points] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_usable_ratio_non_monotone_takes_largest_r():
    # A dip in the middle does not stop the rule: it is the LARGEST R within the tolerance.
    table = rows([(0.0, 0.90), (0.3, 0.70), (0.7, 0.895), (1.0, 0.6)])
    assert usable_ratio(table, tolerance=0.01).r == 0.7


def test_usable_ratio_exactly_at_threshold_counts():
    table = rows([(0.0, 0.87), (0.5, 0.86)])
    assert usable_ratio(table, tolerance=0.01).r == 0.5


def test_usable_ratio_ties_go_to_smaller_best_r():
    table = rows([(0.0, 0.80), (0.3, 0.88), (0.6, 0.88), (0.9, 0.70)])
    u = usable_ratio(table, tolerance=0.0)
    assert u.best_r == 0.3
    assert u.r == 0.6  # tolerance 0: the tie itself is usable


def test_usable_ratio_single_r():
    u = usable_ratio(rows([(0.5, 0.8), (0.5, 0.82)]), tolerance=0.01)
    assert u.r == u.best_r == 0.5
    assert u.value == pytest.approx(0.81)
    assert u.points[0].n == 2


def test_usable_ratio_all_below_baseline_gives_zero():
    # Every synthetic mix is worse than real-only by more than the tolerance: usable ratio 0.
    table = rows([(0.0, 0.85), (0.25, 0.82), (0.5, 0.78), (1.0, 0.5)])
    u = usable_ratio(table, tolerance=0.01)
    assert u.best_r == 0.0 and u.r == 0.0


def test_usable_ratio_confirmed_runs_override_trials():
    # A lucky single trial at R = 0.8 is overruled by its confirmation (mean 0.80).
    trials = rows([(0.0, 0.85), (0.4, 0.86), (0.8, 0.88)])
    confirm = rows([(0.8, 0.79), (0.8, 0.81), (0.0, 0.85), (0.0, 0.85)], confirmed=True)
    u = usable_ratio(trials + confirm, tolerance=0.01)
    point = {p.r: p for p in u.points}
    assert point[0.8].confirmed and point[0.8].value == pytest.approx(0.80)
    assert point[0.8].interval is not None and point[0.8].interval.n == 2
    assert not point[0.4].confirmed  # only a trial there: flagged as unconfirmed
    assert u.best_r == 0.4 and not u.best_confirmed
    assert u.r == 0.4


def test_usable_ratio_groups_take_the_best_configuration():
    # At R = 0.6, guidance 8 images are bad but guidance 2 ones are fine: R = 0.6 counts as 0.86.
    table = rows([(0.0, 0.86)], group="g=2") + rows([(0.6, 0.86), (0.6, 0.86)], group="g=2")
    table += rows([(0.6, 0.60), (0.6, 0.62)], group="g=8")
    u = usable_ratio(table, tolerance=0.005)
    p06 = [p for p in u.points if p.r == 0.6][0]
    assert p06.group == "g=2" and p06.value == pytest.approx(0.86)
    assert u.r == 0.6


def test_usable_ratio_rounds_r_and_skips_nan():
    table = rows([(0.30000000001, 0.8), (0.3, 0.9), (0.5, float("nan"))])
    u = usable_ratio(table, tolerance=0.01)
    assert [p.r for p in u.points] == [0.3]
    assert u.points[0].value == pytest.approx(0.85)


def test_usable_ratio_min_mode():
    # Loss-like metric: lower is better; the rule mirrors.
    table = rows([(0.0, 0.40), (0.5, 0.35), (0.8, 0.355), (1.0, 0.9)])
    u = usable_ratio(table, tolerance=0.01, mode="min")
    assert u.best_r == 0.5 and u.threshold == pytest.approx(0.36)
    assert u.r == 0.8


@pytest.mark.parametrize(
    "table,kw,match",
    [
        ([], {}, "empty"),
        (rows([(0.1, 0.5)]), {"tolerance": -1}, "tolerance"),
        (rows([(0.1, 0.5)]), {"mode": "best"}, "mode"),
        ([{"r": 0.1}], {}, "row 0"),
        (rows([(0.1, float("nan"))]), {}, "finite"),
    ],
)
def test_usable_ratio_errors(table, kw, match):
    with pytest.raises(ConfigError, match=match):
        usable_ratio(table, **kw)


def test_usable_ratio_as_dict_is_plain():
    d = usable_ratio(rows([(0.0, 0.8), (0.0, 0.82), (0.5, 0.81)]), tolerance=0.01).as_dict()
    assert d["r"] == 0.5 and isinstance(d["points"][0]["interval"], dict)
    assert d["points"][0]["interval"]["n"] == 2
