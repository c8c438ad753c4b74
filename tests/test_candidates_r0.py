"""The confirmation's baseline at R = 0 is one canonical configuration, as the search's R = 0 trials."""

from __future__ import annotations

import pytest

from ratio_search.evidence.candidates import config_signature, select_candidates
from ratio_search.search.space import parse_space

pytestmark = pytest.mark.unit

SPACE = {
    "params": {
        "r": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.1, "augment_high": 0.5},
        "mode": {"type": "categorical", "choices": ["replace", "augment"]},
        "guidance": {"type": "categorical", "choices": [2.0, 12.5]},
        "steps": {"type": "categorical", "choices": [10, 25]},
        "filter_top": {"type": "categorical", "choices": [1.0, 0.8]},
    },
    "fixed": {"epochs": 2, "batch_size": 8},
}


def _rec(params: dict, value: float) -> dict:
    return {"state": "TERMINATED", "params": params, "metrics": {"val_accuracy": value}}


def test_the_baseline_is_the_searchs_canonical_r0_config_whatever_the_best_trials_settings():
    space = parse_space(SPACE)
    trials = {
        # the best trial is augment at guidance 12.5 with a filter: its R = 0 twin is canonical
        "best": _rec(
            {"r": 0.5, "mode": "augment", "guidance": 12.5, "steps": 10, "filter_top": 0.8}, 0.9
        ),  # fmt: skip
        "r0": _rec({"r": 0.0, "mode": "replace", "guidance": 2.0, "steps": 25}, 0.85),
        "next": _rec({"r": 0.3, "mode": "replace", "guidance": 2.0, "steps": 10}, 0.84),
    }
    top, base = select_candidates(trials, space.trial_config, "val_accuracy", "max", top_k=2)
    assert base.config == space.trial_config({"r": 0.0})  # one config: one cache entry per seed
    assert base.trial_id == "r0"  # the search's own R = 0 trial is recognised as the baseline
    assert [c.trial_id for c in top] == ["best", "next"]  # so it takes no top place
    # mode, draw and pool settings do not make another configuration at R = 0
    twin = dict(base.config, mode="augment", guidance=12.5, filter_top=0.8, steps=10)
    assert config_signature(twin) == config_signature(base.config)
    assert config_signature(dict(twin, r=0.1)) != config_signature(dict(base.config, r=0.1))


def test_labels_name_every_lever_that_is_not_plain_so_configurations_never_share_one():
    from ratio_search.evidence.candidates import label_of

    plain = {"r": 0.5, "guidance": 2.0, "steps": 10, "mode": "replace", "filter_top": 1.0,
             "synthetic_classes": "default", "finetune_steps": 0, "arch": "simple"}  # fmt: skip
    assert label_of(plain) == "R=0.50 guidance=2.0 steps=10"  # as before for the plain case
    aug = dict(plain, mode="augment", filter_top=0.8)
    assert label_of(aug) == "R=0.50 guidance=2.0 steps=10 mode=augment filter_top=0.8"
    assert label_of(dict(plain, mode="augment")) != label_of(plain)


def test_the_usable_clause_says_adding_for_augment_and_replacing_for_replace():
    from ratio_search.evidence.answer import usable_clause

    c = {"usable_ratio": {"r": 0.5, "delta": 0.01, "mode": "augment"}}
    assert usable_clause(c).startswith("adding generated images up to R = 0.5 (augment) costs")
    c["usable_ratio"]["mode"] = "replace"
    assert usable_clause(c).startswith("replacing up to R = 0.5 costs at most 1 point(s)")
    del c["usable_ratio"]["mode"]  # a best.yaml written before the mode was recorded
    assert usable_clause(c).startswith("replacing up to R = 0.5")
