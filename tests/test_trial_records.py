"""The records of trials.jsonl (search/trials.py): what the final record of a trial keeps from
its last result. No Ray, no MLflow."""

from __future__ import annotations

import json
import types

import pytest

from ratio_search.search.trials import TrialLog, read_trials

pytestmark = pytest.mark.unit

# The last result of a trial that reported an equivalent trial's measured result
# (search/trainable.py: reused = 1, reused_from = the measuring trial).
REUSED_RESULT = {
    "epoch": 4,
    "val_accuracy": 0.7,
    "reused": 1,
    "reused_from": "aaaa0001",
    "pool_key": "",
    "model_hash": "m1",
    "node_id": "n1",
    "hostname": "vm",
    "node_ip": "10.0.0.2",
    "device": "cpu",
}


def _trial(tid: str = "bbbb0002") -> types.SimpleNamespace:
    return types.SimpleNamespace(trial_id=tid, config={"r": 0.0, "guidance": 7.5})


def test_the_final_record_says_the_result_was_reused_and_from_which_trial(tmp_path):
    log = TrialLog(tmp_path, "val_accuracy", "max")
    trial = _trial()
    log.event(trial, "RUNNING")
    log.event(trial, "RUNNING", REUSED_RESULT)
    final = log.event(trial, "TERMINATED")
    assert final["state"] == "TERMINATED"
    assert final["metrics"]["reused"] == 1 and final["reused_from"] == "aaaa0001"
    # where it ran is kept too
    assert (final["hostname"], final["node_ip"], final["device"]) == ("vm", "10.0.0.2", "cpu")
    assert (final["model_hash"], final["node_id"]) == ("m1", "n1")
    assert read_trials(tmp_path)["bbbb0002"] == final
    # a restored driver (built from the file) keeps carrying them
    again = TrialLog(tmp_path).record(trial, "TERMINATED")
    assert again["reused_from"] == "aaaa0001" and again["hostname"] == "vm"


def test_an_error_after_a_result_keeps_the_trial_fields(tmp_path):
    log = TrialLog(tmp_path)
    trial = _trial()
    log.event(trial, "RUNNING", dict(REUSED_RESULT, reused_from=None, reused=0))
    rec = log.event(trial, "ERROR", error="boom")
    assert rec["error"] == "boom" and rec["device"] == "cpu" and rec["node_ip"] == "10.0.0.2"
    assert "reused_from" not in rec  # a trained trial does not claim a reused result


def test_a_trained_trial_has_no_reused_from(tmp_path):
    log = TrialLog(tmp_path)
    trial = _trial("cccc0003")
    result = {k: v for k, v in REUSED_RESULT.items() if k not in ("reused", "reused_from")}
    log.event(trial, "RUNNING", result)
    final = log.event(trial, "TERMINATED")
    assert "reused_from" not in final and "reused" not in final["metrics"]
    assert final["hostname"] == "vm"


def test_a_trials_jsonl_written_before_the_change_is_still_read_and_continued(tmp_path):
    # the old final record: reused_from / hostname / node_ip / device only on the RUNNING line
    running = {"trial_id": "bbbb0002", "state": "RUNNING", "params": {"r": 0.0},
               "metrics": {"val_accuracy": 0.7, "reused": 1}, "best": {"value": 0.7, "epoch": 4},
               "epoch": 4, "pool_key": "", "pool_keys": None, "model_hash": "m1",
               "mlflow_run_id": None, "node_id": "n1", "time": 1.0, "hostname": "vm",
               "node_ip": "10.0.0.2", "device": "cpu", "reused_from": "aaaa0001"}  # fmt: skip
    old_final = {k: v for k, v in running.items()
                 if k not in ("hostname", "node_ip", "device", "reused_from")}  # fmt: skip
    old_final.update(state="TERMINATED", time=2.0)
    (tmp_path / "trials.jsonl").write_text(
        json.dumps(running) + "\n" + json.dumps(old_final) + "\n"
    )
    recs = read_trials(tmp_path)
    assert recs["bbbb0002"]["state"] == "TERMINATED" and "reused_from" not in recs["bbbb0002"]
    # a driver continuing from that file builds the next record from the old one without error
    log = TrialLog(tmp_path)
    assert log.best["bbbb0002"] == {"value": 0.7, "epoch": 4}
    rec = log.record(_trial(), "TERMINATED")
    assert rec["metrics"]["reused"] == 1 and rec["model_hash"] == "m1"
    assert "reused_from" not in rec  # not on the old final record: unknown, not invented


def test_status_rows_name_the_trial_a_result_was_reused_from(tmp_path):
    from ratio_search.home import Home
    from ratio_search.search.runs import run_status, write_run_json

    home = Home.resolve(tmp_path)
    folder = home.runs / "s1"
    folder.mkdir(parents=True)
    write_run_json(folder, {"name": "s1", "state": "finished", "n_trials": 1,
                            "metric": "val_accuracy", "mode": "max"})  # fmt: skip
    log = TrialLog(folder)
    log.event(_trial(), "RUNNING", REUSED_RESULT)
    log.event(_trial(), "TERMINATED")
    rows = {r["trial_id"]: r for r in run_status(home, "s1")["trials"]}
    assert rows["bbbb0002"]["reused_from"] == "aaaa0001"
