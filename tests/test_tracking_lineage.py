"""What a user sees in MLflow: the experiment's view tag, each run's datasets, the
search's note, the trials' system metrics, the address `ratio-search ui` prints."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ratio_search.home import Home
from ratio_search.search.runinfo import MlflowInfo, RunInfo
from ratio_search.search.sysmetrics import RESULT_KEY, Sampler
from ratio_search.tracking import MLflowTrialCallback, SearchTracker, get_or_create_experiment
from ratio_search.tracking.links import newest_search, runs_page
from ratio_search.tracking.store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

pytestmark = pytest.mark.unit

DATA_KEY = "abc123def4567890"


@dataclass
class FakeTrial:
    trial_id: str
    config: dict = field(default_factory=dict)


def make_run(home: Home, name: str = "s1", created: str = "2026-01-01T00:00:00Z") -> Path:
    """A run folder as the driver leaves it: run.json, config.yaml and the data cache's meta."""
    folder = home.runs / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("data:\n  source: phantom\n  image_size: 16\n")
    meta = home.cache / f"data-{DATA_KEY}"
    meta.mkdir(parents=True, exist_ok=True)
    counts = {"train": {"a": 5, "b": 7}, "val": {"a": 2, "b": 2}, "test": {"a": 3, "b": 3}}
    (meta / "meta.json").write_text(
        json.dumps({"class_names": ["a", "b"], "info": {"counts": counts}})
    )
    space = {"params": {"r": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.5},
                        "steps": {"type": "categorical", "choices": [10, 25]}}}  # fmt: skip
    RunInfo(name=name, n_trials=2, data_key=DATA_KEY, model_hash="mh01", space=space,
            created=created, mlflow=MlflowInfo(tracking_uri=home.tracking_uri())).save(folder)  # fmt: skip
    return folder


def inputs_of(tracker: SearchTracker, run_id: str) -> dict[str, tuple[str, dict, dict]]:
    """``{dataset name: (context, source, profile)}`` of a run's dataset inputs."""
    out = {}
    for di in tracker.client.get_run(run_id).inputs.dataset_inputs:
        tags = {t.key: t.value for t in di.tags}
        ds = di.dataset
        out[ds.name] = (tags["mlflow.data.context"], json.loads(ds.source), json.loads(ds.profile))
    return out


def test_experiment_kind_tag_new_and_existing(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    old = client.create_experiment("old-one")  # made by an older version: no tag
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    for name in ("old-one", "new-one"):
        for _ in range(2):  # idempotent
            exp_id = get_or_create_experiment(client, name, uri)
        assert client.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert EXPERIMENT_KIND == "custom_model_development"


def test_trials_log_their_datasets_and_system_metrics(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    folder = make_run(home)
    tracker = SearchTracker(home.tracking_uri(), run_dir=folder)
    parent = tracker.start_parent("s1", {"n_trials": 2})
    cb = MLflowTrialCallback(tracker, strict=True)
    for i, r in enumerate((0.0, 0.5)):
        trial = FakeTrial(f"t{i}", {"r": r, "guidance": 2.0, "steps": 10, "postprocess": "none"})
        cb.on_trial_start(0, [], trial)
        for epoch in (1, 2):
            sysm = {
                "process_cpu_utilization_percentage": 90.0 + epoch,
                "gpu_0_utilization_percentage": 50.0,
            }
            res = {"epoch": epoch, "val_accuracy": 0.5, "pool_key": "pk1" if r else "pk-unused",
                   RESULT_KEY: sysm}  # fmt: skip
            cb.on_trial_result(0, [], trial, res)
        cb.on_trial_complete(0, [], trial)
    runs = {c.data.tags["ray_trial_id"]: c.info.run_id for c in tracker.children(parent)}

    real = ("training", {"uri": "phantom"}, {"source": "phantom", "n_train": 12, "n_val": 4,
            "n_test": 6, "classes": ["a", "b"], "image_size": 16})  # fmt: skip
    assert inputs_of(tracker, runs["t0"]) == {DATA_KEY: real}  # R = 0: no pool, whatever it had
    got = inputs_of(tracker, runs["t1"])
    assert got[DATA_KEY] == real and set(got) == {DATA_KEY, "pk1"}
    context, source, profile = got["pk1"]
    assert context == "synthetic" and source == {"uri": str(home.pools / "pk1")}
    assert profile == {
        "model_hash": "mh01",
        "guidance": 2.0,
        "steps": 10,
        "scheduler": "ddim",
        "filter": "none",
        "finetune_steps": 0,  # the generator checkpoint (0: the final weights)
    }
    assert inputs_of(tracker, parent) == {DATA_KEY: real}

    # System metrics under MLflow's names, one value per epoch; trials.jsonl never sees them.
    hist = tracker.client.get_metric_history(
        runs["t1"], "system/process_cpu_utilization_percentage"
    )
    assert [(m.step, m.value) for m in hist] == [(1, 91.0), (2, 92.0)]
    assert "system/gpu_0_utilization_percentage" in tracker.client.get_run(runs["t0"]).data.metrics
    lines = [json.loads(x) for x in (folder / "trials.jsonl").read_text().splitlines()]
    assert not any("system" in k for rec in lines for k in rec["metrics"])

    # The parent's description: the space and the data.
    note = tracker.client.get_run(parent).data.tags["mlflow.note.content"]
    assert "r 0.0..1.0 step 0.5" in note and "steps {10, 25}" in note
    assert f"data `{DATA_KEY}` from phantom (12 train, 4 val, 6 test)" in note


def test_sampler_reads_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Sampler("cpu")
    sum(i * i for i in range(200000))  # some CPU time to measure
    out = s.sample()
    assert out["process_memory_usage_megabytes"] > 1.0
    assert out["process_cpu_utilization_percentage"] >= 0.0
    assert 0.0 < out["system_memory_usage_percentage"] <= 100.0
    assert not any(k.startswith("gpu_") for k in out)
    monkeypatch.setenv("RATIO_SEARCH_SYSTEM_METRICS", "0")
    assert Sampler("cpu").sample() == {}


def test_ui_address_is_the_newest_searchs_runs_table(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    assert newest_search(home.runs, home.tracking_uri()) is None
    for name, created, exp in (
        ("old", "2026-01-01T00:00:00Z", "3"),
        ("new", "2026-02-01T00:00:00Z", "7"),
    ):
        folder = make_run(home, name, created)
        info = RunInfo.load(folder)
        info.mlflow.experiment_id, info.mlflow.parent_run_id = exp, f"p-{name}"
        info.save(folder)
    other = make_run(home, "elsewhere", "2026-03-01T00:00:00Z")  # tracked in another store
    info = RunInfo.load(other)
    info.mlflow.tracking_uri, info.mlflow.experiment_id = "http://server:5000", "9"
    info.save(other)
    found = newest_search(home.runs, home.tracking_uri())
    assert found == {"name": "new", "experiment_id": "7", "parent_run_id": "p-new"}
    assert runs_page("http://h:5000/", "7") == (
        "http://h:5000/#/experiments/7/runs?workflowType=machine_learning"
    )
