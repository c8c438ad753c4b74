"""The paired bootstrap over seeds and images, and the sequential stopping rule, on fake trials
with a planted effect (+2 points, and none): known answers, vectorised arithmetic, no training."""

from __future__ import annotations

import numpy as np
import pytest

from ratio_search.errors import ConfigError
from ratio_search.evidence.answer import answer_text
from ratio_search.evidence.paired import (
    BUDGET,
    EXCLUDES_ZERO,
    PRECISE,
    look_confidence,
    look_schedule,
    paired_bootstrap,
    sequential_paired,
    stop_reason,
)

pytestmark = pytest.mark.unit


def fake_trials(effect, n_seeds=10, n_images=400, seed=0):
    """Per-image correctness of two arms trained on the same seeds, scored on the same images.

    Image i has a difficulty p_i; seed s shifts both arms by u_s (shared) and each arm by its own
    small e; the same uniform U[s, i] decides both arms (the same model init sees the same image).
    The synthetic arm is ``effect`` more accurate in expectation: the planted answer.
    """
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.6, 0.96, size=n_images)
    u = rng.normal(0, 0.015, size=(n_seeds, 1))
    e_a, e_b = rng.normal(0, 0.006, size=(2, n_seeds, 1))
    uni = rng.uniform(size=(n_seeds, n_images))
    a = (uni < p + u + e_a + effect).astype(np.uint8)
    b = (uni < p + u + e_b).astype(np.uint8)
    return a, b


def run_sequential(effect, seed, start=3, max_seeds=9, n_boot=500, n_images=400):
    a, b = fake_trials(effect, max_seeds, n_images, seed)
    return sequential_paired(
        lambda n: (a[:n], b[:n]), start, max_seeds, 0.01, n_boot=n_boot, seed=seed
    )


def test_bootstrap_by_hand():
    a = np.array([[1, 1, 0, 1], [1, 0, 0, 1]])
    d = paired_bootstrap(a, a)
    assert (d.diff, d.low, d.high, d.half_width) == (0.0, 0.0, 0.0, 0.0)
    b = np.zeros_like(a)
    d = paired_bootstrap(a, b, n_boot=200)
    assert d.mean_a == pytest.approx(5 / 8) and d.mean_b == 0 and d.diff == pytest.approx(5 / 8)
    assert d.low < d.diff < d.high and d.n_seeds == 2 and d.n_images == 4
    # Deterministic for a given seed; the pairing matters: swapped arms mirror the interval.
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    m = paired_bootstrap(b, a)
    assert m.diff == -d.diff and m.low == pytest.approx(-d.high) and m.high == pytest.approx(-d.low)


def test_bootstrap_covers_the_images_too():
    # One seed effect only (the seeds agree exactly): a seed-only interval would be of width 0;
    # the image resampling still gives the test-sample uncertainty (about ±2 sd / sqrt(N)).
    rng = np.random.default_rng(1)
    row_a, row_b = rng.uniform(size=(2, 1000)) < np.array([[0.85], [0.84]])
    a, b = np.repeat(row_a[None], 4, axis=0), np.repeat(row_b[None], 4, axis=0)
    d = paired_bootstrap(a, b)
    sd = np.std(row_a.astype(float) - row_b) / np.sqrt(1000)
    assert d.half_width == pytest.approx(1.96 * sd * np.sqrt(4 / 3), rel=0.2)


@pytest.mark.parametrize(
    "a, b, match",
    [
        (np.ones((1, 5)), np.ones((1, 5)), ">= 2 seeds"),
        (np.ones((2, 5)), np.ones((2, 4)), "one shape"),
    ],
)
def test_bootstrap_rejects_bad_arms(a, b, match):
    with pytest.raises(ConfigError, match=match):
        paired_bootstrap(a, b)


def test_look_schedule_and_levels():
    assert look_schedule(3, 9) == [3, 5, 7, 9]
    assert look_schedule(5, 10) == [5, 7, 9, 10]
    assert look_schedule(3, 4) == [3, 4] and look_schedule(5, 5) == [5]
    assert look_confidence(0.95, 4) == pytest.approx(0.9875)
    with pytest.raises(ConfigError, match="max-seeds"):
        look_schedule(5, 4)


def test_planted_two_points_are_found_and_covered():
    seq = run_sequential(0.02, seed=0)
    f = seq.final
    assert seq.reason == EXCLUDES_ZERO and f.low > 0
    assert f.low <= 0.02 <= f.high
    assert seq.look_level == pytest.approx(1 - 0.05 / len(seq.schedule))
    text = answer_text({"test": {"paired": seq.as_dict(), "arm": "R=0.50"},
                        "usable_ratio": {"r": 0.5, "delta": 0.01, "failed_below": []}})  # fmt: skip
    assert text.startswith("synthetic data helps: +") and "at R=0.50" in text
    # Over repeated seed sets: the planted effect is found, and covered, nearly always.
    runs = [run_sequential(0.02, seed=s) for s in range(1, 21)]
    assert sum(r.final.low > 0 for r in runs) >= 18
    assert sum(r.final.low <= 0.02 <= r.final.high for r in runs) >= 19


def test_no_effect_says_no_gain_in_at_least_95_percent_of_seed_sets():
    runs = [run_sequential(0.0, seed=s, n_boot=400, n_images=300) for s in range(100)]
    helps = sum(r.final.low > 0 for r in runs)
    assert helps <= 5  # a false "helps" in at most 5 % of the seed sets (2.5 % one-sided)
    # ... and each stopped for a stated reason; most reached the precision or the budget.
    assert {r.reason for r in runs} <= {EXCLUDES_ZERO, PRECISE, BUDGET}
    covered = sum(r.final.low <= 0.0 <= r.final.high for r in runs)
    assert covered >= 95
    text = answer_text({"test": {"paired": runs[0].as_dict(), "arm": "R=0.50"},
                        "usable_ratio": {"r": 0.5, "delta": 0.01, "failed_below": []}})  # fmt: skip
    assert text.startswith(("no gain larger than 1 point(s)", "undecided after"))


def test_stop_reasons():
    from ratio_search.evidence.paired import PairedDiff

    def pd(low, high):
        return PairedDiff(0.8, 0.8, (low + high) / 2, low, high, (high - low) / 2, 3, 10, 0.95)

    assert stop_reason(pd(0.001, 0.03), 0.01) == EXCLUDES_ZERO
    assert stop_reason(pd(-0.03, -0.001), 0.01) == EXCLUDES_ZERO
    assert stop_reason(pd(-0.004, 0.004), 0.01) == PRECISE
    assert stop_reason(pd(-0.02, 0.02), 0.01) is None
