"""The report's trial rows: a reused R = 0 result counts once in the R = 0 mean."""

from __future__ import annotations

import pytest

from ratio_search.report.inputs import r0_trial_mean, trial_rows

pytestmark = pytest.mark.unit


class _Ctx:
    @staticmethod
    def full_config(params):
        return {"guidance": 2.0, "steps": 10, **params}


def _rec(r, value, **extra):
    return {"state": "TERMINATED", "params": {"r": r}, "metrics": {"val_accuracy": value}, **extra}


def test_a_reused_r0_trial_is_marked_and_not_counted_again():
    trials = {
        "a": _rec(0.0, 0.80),
        "b": _rec(0.0, 0.80, reused_from="a"),  # the final record names the measured trial
        "c": {**_rec(0.0, 0.80), "metrics": {"val_accuracy": 0.80, "reused": 1}},  # older file
        "d": _rec(0.0, 0.90),  # a second real measurement (another budget, say)
        "e": _rec(0.5, 0.70),
    }
    rows = trial_rows(trials, "val_accuracy", _Ctx())
    assert {r["trial_id"]: r["reused"] for r in rows} == {
        "a": False, "b": True, "c": True, "d": False, "e": False
    }  # fmt: skip
    assert r0_trial_mean(rows) == pytest.approx(0.85)  # (0.80 + 0.90) / 2, not 0.825
    assert r0_trial_mean([r for r in rows if r["r"] > 0]) is None
