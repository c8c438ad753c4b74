"""Seeds trained together (train/multi.py), noise-aware trials (k seeds, measured configurations
reused) and the R = 0 budget calibration (search/calibrate.py). Tiny CNNs, no Ray."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ratio_search.config import TrainConfig
from ratio_search.errors import ConfigError
from ratio_search.search.calibrate import calibrate, calibrate_run
from ratio_search.search.runinfo import RunInfo
from ratio_search.search.space import parse_space
from ratio_search.search.trainable import trial_body
from ratio_search.train.multi import aggregate
from ratio_search.train.trial import run_trial, train_seeds

TINY = {"epochs": 3, "batch_size": 8, "widths": [2, 4], "fc": 4, "lr": 0.01, "threads": 1}


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**TINY, **kw})


@pytest.mark.unit
def test_seeds_together_equal_each_seed_alone(tiny_dataset, one_thread):
    seeds = [3, 4, 5]
    together = train_seeds(_cfg(), tiny_dataset, None, seeds)
    assert together["seeds"] == seeds and len(together["per_seed"]) == 3
    for s, res in zip(seeds, together["per_seed"], strict=True):
        alone = run_trial(_cfg(seed=s), tiny_dataset, None)
        a, b = res["metrics"], alone["metrics"]
        assert a["accuracy"] == b["accuracy"]
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
    # different seeds really are different runs
    assert len({r["metrics"]["val_loss"] for r in together["per_seed"]}) == 3
    # the trial's numbers are their mean; n_seeds in the config does the same
    mean = np.mean([r["metrics"]["val_loss"] for r in together["per_seed"]])
    assert together["metrics"]["val_loss"] == pytest.approx(mean)
    again = run_trial(_cfg(seed=3, n_seeds=3), tiny_dataset, None)
    assert again["metrics"]["val_loss"] == together["metrics"]["val_loss"]  # deterministic


@pytest.mark.unit
def test_one_seed_stays_bit_exact_and_resume_continues_exactly(tiny_dataset, one_thread):
    one = train_seeds(_cfg(seed=2), tiny_dataset, None, [2])
    alone = run_trial(_cfg(seed=2), tiny_dataset, None)
    assert one["per_seed"][0]["metrics"]["val_loss"] == alone["metrics"]["val_loss"]
    states, full = [], []
    train_seeds(
        _cfg(),
        tiny_dataset,
        None,
        [0, 1],
        report=lambda e, m, s: (full.append(m), states.append(s)),
    )
    resumed = []
    train_seeds(
        _cfg(),
        tiny_dataset,
        None,
        [0, 1],
        report=lambda e, m, s: resumed.append(m),
        state=states[0],
    )
    assert [m["epoch"] for m in resumed] == [2, 3]
    assert resumed[-1]["val_loss"] == full[-1]["val_loss"]
    assert resumed[-1]["val_loss_sd"] == full[-1]["val_loss_sd"] > 0


@pytest.mark.unit
def test_aggregate_means_sds_and_summed_confusion():
    a = {"accuracy": 0.5, "epoch": 2, "confusion_matrix": [[1, 1], [1, 1]]}
    b = {"accuracy": 1.0, "epoch": 2, "confusion_matrix": [[2, 0], [0, 2]]}
    out = aggregate([a, b], [7, 8])
    assert out["accuracy"] == 0.75 and out["accuracy_sd"] == pytest.approx(np.std([0.5, 1], ddof=1))
    assert out["confusion_matrix"] == [[3, 1], [1, 3]] and out["epoch"] == 2
    assert out["seeds"] == [7, 8] and out["per_seed"][1]["accuracy"] == 1.0


# ---------------------------------------------------------------- conditional space, k seeds

SPACE = {
    "params": {
        "r": {"type": "categorical", "choices": [0.0, 0.5]},
        "guidance": {"type": "categorical", "choices": [1.0, 3.0, 5.0]},
        "steps": {"type": "categorical", "choices": [2, 4]},
    },
    "fixed": {k: v for k, v in TINY.items() if k != "threads"},
    "search": {"seeds_per_trial": 2, "tolerance": 0.01},
}


@pytest.mark.unit
def test_r0_is_one_configuration_whatever_the_pool_params():
    sp = parse_space(SPACE)
    a = sp.trial_config({"r": 0.0, "guidance": 5.0, "steps": 4})
    b = sp.trial_config({"r": 0.0, "guidance": 1.0, "steps": 2})
    assert a == b and a["guidance"] == 1.0
    c = sp.trial_config({"r": 0.5, "guidance": 5.0, "steps": 4})
    assert (c["guidance"], c["steps"]) == (5.0, 4)  # R > 0: the sampled pool
    assert sp.seeds_per_trial == 2 and sp.tolerance == 0.01
    with pytest.raises(ConfigError, match="seeds_per_trial"):
        parse_space({**SPACE, "search": {"seeds_per_trial": 0}})
    with pytest.raises(ConfigError, match="calibrate"):
        parse_space({**SPACE, "search": {"calibrate": "sometimes"}})


@pytest.mark.unit
def test_a_conditional_space_never_trains_r0_twice(tiny_dataset, tmp_path, one_thread, monkeypatch):
    import ratio_search.train.trial as trial_mod

    calls = []
    real = trial_mod.run_trial

    def counting(cfg, *a, **kw):
        calls.append((cfg.r, cfg.n_seeds))
        return real(cfg, *a, **kw)

    monkeypatch.setattr(trial_mod, "run_trial", counting)
    sp = parse_space(SPACE)
    ctx = {"home": str(tmp_path), "space": sp.to_dict(), "pool_n": 0, "model_path": None,
           "model_meta": None, "run_dir": str(tmp_path / "run")}  # fmt: skip
    results = []
    for i, (g, st) in enumerate([(1.0, 2), (5.0, 4), (3.0, 2), (1.0, 2)]):
        reports = []
        trial_body({"r": 0.0, "guidance": g, "steps": st}, ctx, tiny_dataset,
                   report=lambda m, s, out=reports: out.append(m), trial_id=f"t{i}")  # fmt: skip
        results.append(reports[-1])
    assert calls == [(0.0, 2)]  # trained once, with its k = 2 seeds
    first = results[0]
    assert first["n_seeds"] == 2 and "val_accuracy_sd" in first and "seed_accuracy_1" in first
    for later in results[1:]:
        assert later["reused"] == 1 and later["reused_from"] == "t0"
        assert later["val_accuracy"] == first["val_accuracy"]
    assert not list((tmp_path / "run" / "measured").glob("*.lock"))  # lock released


# ---------------------------------------------------------------------------- calibration


def _fake(curve):
    """A measure function: seed s scores curve(epochs) + 0.01 * s (paired seed effect)."""
    calls = []

    def measure(cfg, seeds, epochs):
        calls.append(epochs)
        return [curve(epochs) + 0.01 * (s % 3) for s in seeds]

    return measure, calls


@pytest.mark.unit
def test_calibration_flags_an_undertrained_budget():
    sp = parse_space({**SPACE, "fixed": {**SPACE["fixed"], "epochs": 8}})
    undertrained, calls = _fake(lambda e: {8: 0.75, 16: 0.82, 32: 0.825}[e])
    new, rec = calibrate(sp, None, measure=undertrained)
    assert rec["decision"] == "raised" and rec["epochs"] == 16 and new.value("epochs") == 16
    assert rec["steps"][0]["gain"] == pytest.approx(0.07) and calls == [8, 16, 32]
    assert sp.value("epochs") == 8  # the given space is left alone
    assert "8 -> 16 epochs" in rec["line"]
    with pytest.raises(ConfigError, match=r"pin.*\+0\.070.*16 epochs"):
        calibrate(parse_space({**SPACE, "search": {"calibrate": "pin"}} | {"fixed": sp.fixed}),
                  None, measure=undertrained)  # fmt: skip


@pytest.mark.unit
def test_calibration_keeps_a_converged_budget_and_records_it(tmp_path):
    sp = parse_space(SPACE)
    converged, calls = _fake(lambda e: 0.85 + 0.001 * (e > 3))
    new, rec = calibrate(sp, None, measure=converged)
    assert rec["decision"] == "kept" and new is sp and calls == [3, 6]
    assert rec["seeds"] == [0, 1, 2] and rec["k_suggested"] >= 1
    off, rec_off = calibrate(parse_space({**SPACE, "search": {"calibrate": "off"}}), None)
    assert rec_off["decision"] == "skipped"
    # the driver's step: recorded in run.json once; a resume applies it without training
    info = RunInfo(name="r")
    rec_raised = dict(rec, epochs=6)
    info.extra["calibration"] = rec_raised
    calibrate_run(tmp_path, info, sp, None, progress=False)
    assert sp.fixed["epochs"] == 6 and info.space["fixed"]["epochs"] == 6
    assert RunInfo.load(tmp_path).extra["calibration"]["epochs"] == 6


@pytest.mark.unit
def test_calibration_trains_r0_runs_continued(tiny_dataset, one_thread):
    sp = parse_space(
        {**SPACE, "fixed": {**SPACE["fixed"], "epochs": 1}, "search": {"tolerance": 1.0}}
    )
    new, rec = calibrate(sp, tiny_dataset)
    assert rec["decision"] == "kept" and len(rec["seeds"]) == 3
    assert 0.0 <= rec["steps"][0]["mean_to"] <= 1.0 and rec["seconds"] >= 0


@pytest.mark.unit
def test_dataclass_replace_keeps_n_seeds():
    assert dataclasses.replace(_cfg(n_seeds=3), epochs=1).n_seeds == 3


@pytest.mark.unit
@pytest.mark.parametrize(
    "seeds, arch",
    [([0], {}), ([0, 1], {}), ([0, 1], {"arch": "resnet", "widths": [4, 4], "fc": 8})],
    ids=["one seed", "stacked seeds", "seeds in turn (resnet)"],
)
def test_val_every_validates_less_and_changes_no_number(tiny_dataset, one_thread, seeds, arch):
    every, sparse = [], []
    base = train_seeds(
        _cfg(epochs=5, **arch), tiny_dataset, None, seeds, report=lambda e, m, s: every.append(e)
    )
    states: list = []
    fewer = train_seeds(
        _cfg(epochs=5, val_every=2, **arch),
        tiny_dataset,
        None,
        seeds,
        report=lambda e, m, s: (sparse.append(e), states.append(s)),
    )
    assert every == [1, 2, 3, 4, 5] and sparse == [2, 4, 5]  # every 2nd epoch and the last
    assert [h["epoch"] for h in fewer["history"]] == [2, 4, 5]
    for a, b in zip(fewer["per_seed"], base["per_seed"], strict=True):
        assert a["metrics"]["val_loss"] == b["metrics"]["val_loss"]  # the same weights
        assert a["metrics"]["accuracy"] == b["metrics"]["accuracy"]
    # resuming from the epoch-2 checkpoint goes on validating at 4 and 5, with the same end
    resumed: list = []
    train_seeds(
        _cfg(epochs=5, val_every=2, **arch),
        tiny_dataset,
        None,
        seeds,
        report=lambda e, m, s: resumed.append((e, m["val_loss"])),
        state=states[0],
    )
    assert [e for e, _ in resumed] == [4, 5]
    assert resumed[-1][1] == fewer["metrics"]["val_loss"]


@pytest.mark.unit
def test_calibration_with_val_every_reads_both_budgets(tiny_dataset, one_thread):
    fixed = {**SPACE["fixed"], "epochs": 2, "val_every": 2}
    sp = parse_space({**SPACE, "fixed": fixed, "search": {"tolerance": 1.0}})
    _, rec = calibrate(sp, tiny_dataset)
    plain = parse_space({**SPACE, "fixed": {**fixed, "val_every": 1}, "search": {"tolerance": 1.0}})
    _, ref = calibrate(plain, tiny_dataset)
    assert rec["steps"][0]["from"] == 2 and rec["steps"][0]["to"] == 4
    assert rec["steps"][0]["mean_to"] == ref["steps"][0]["mean_to"]
    assert rec["steps"][0]["mean_from"] == ref["steps"][0]["mean_from"]
