"""The MLflow tracking callback, driven directly with fake Tune trials (no Ray started)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ratio_search.home import Home
from ratio_search.tracking import (
    MLflowTrialCallback,
    SearchTracker,
    log_job,
    read_trials_jsonl,
    ui_command,
)

pytestmark = pytest.mark.unit


@dataclass
class FakeTrial:
    """The attributes of ray.tune.experiment.Trial that the callback reads."""

    trial_id: str
    config: dict = field(default_factory=dict)
    error_file: str | None = None


def _config(r: float, seed: int = 0) -> dict:
    return {
        "r": r,
        "guidance": 2.5,
        "steps": 10,
        "mode": "replace",
        "seed": seed,
        "epochs": 3,
        "lr": 1e-3,
    }


def _result(epoch: int, acc: float, last: bool = False) -> dict:
    res = {
        "epoch": epoch,
        "val_accuracy": acc,
        "val_f1": acc - 0.1,
        "val_loss": 1.0 - acc,
        "train_loss": 1.5 - acc,
        "n_synthetic": 4,
        "pool_key": "pool-abc",
        "model_hash": "hash-123",
        "node_id": "node-1",
        "training_iteration": epoch,
        "done": False,
        "config": {"r": 0.0},
        "hostname": "h",
    }
    if last:
        res["confusion_matrix"] = json.dumps([[5, 1], [2, 4]])
    return res


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    # One store for the module: creating an MLflow sqlite database takes seconds. Each test has
    # its own run folder and parent run, and looks runs up under that parent only.
    return Home(tmp_path_factory.mktemp("tracking") / "home")


def _tracker(home: Home, run_dir: Path) -> SearchTracker:
    return SearchTracker(
        f"sqlite:///{home.mlruns / 'mlflow.db'}",
        "ratio-search",
        run_dir,
        metric="val_accuracy",
        mode="max",
    )


def _run_trial(
    cb: MLflowTrialCallback,
    trial: FakeTrial,
    accs: list[float],
    start_epoch: int = 1,
    complete=True,
):
    cb.on_trial_start(0, [], trial)
    for i, acc in enumerate(accs):
        epoch = start_epoch + i
        cb.on_trial_result(0, [], trial, _result(epoch, acc, last=complete and i == len(accs) - 1))
    if complete:
        cb.on_trial_complete(0, [], trial)


def test_parent_children_params_metrics_tags_artifacts(home: Home, tmp_path: Path) -> None:
    run_dir = home.runs / "s1"
    run_dir.mkdir(parents=True)
    cfg_file = run_dir / "config.yaml"
    cfg_file.write_text("train:\n  epochs: 3\n")
    tracker = _tracker(home, run_dir)
    parent = tracker.start_parent("s1", {"n_trials": 2, "space": {"r": [0, 1]}}, [cfg_file])
    cb = MLflowTrialCallback(tracker, strict=True)
    t1, t2 = FakeTrial("t_00001", _config(0.0)), FakeTrial("t_00002", _config(0.5, seed=1))
    _run_trial(cb, t1, [0.6, 0.7, 0.75])
    # Another kind of child run (confirm.py's) must not count as a trial or as the best.
    other = tracker.client.create_run(
        tracker.experiment_id, tags={"mlflow.parentRunId": parent, "ratio_search.kind": "confirm"}
    ).info.run_id
    tracker.log_epoch(other, 0, {"val_accuracy": 0.99})
    tracker.end_child(other, "FINISHED")
    _run_trial(cb, t2, [0.5, 0.8, 0.7])
    tracker.finish_parent("FINISHED")

    client = tracker.client
    p = client.get_run(parent)
    assert p.info.status == "FINISHED"
    assert p.data.params["n_trials"] == "2" and p.data.params["space.r"] == "[0, 1]"
    assert [a.path for a in client.list_artifacts(parent)] == ["config.yaml"]
    # Best finished trial so far, by its last epoch: t1 (0.75) beats t2 (0.7).
    assert p.data.metrics["best_val_accuracy"] == pytest.approx(0.75)
    assert p.data.tags["best_trial_id"] == "t_00001"
    assert p.data.metrics["trials_finished"] == 2
    hist = client.get_metric_history(parent, "best_val_accuracy")
    assert [m.value for m in sorted(hist, key=lambda m: m.step)] == pytest.approx([0.75, 0.75])
    # The experiment's artifacts live under the home's mlruns/artifacts.
    exp = client.get_experiment(tracker.experiment_id)
    assert exp.artifact_location == (home.mlruns / "artifacts").as_uri()

    children = [c for c in tracker.children(parent) if c.info.run_id != other]
    assert len(children) == 2
    by_trial = {c.data.tags["ray_trial_id"]: c for c in children}
    c2 = by_trial["t_00002"]
    assert c2.data.tags["mlflow.parentRunId"] == parent
    assert c2.info.status == "FINISHED"
    assert c2.info.run_name == "trial-t_00002"
    assert c2.data.params["r"] == "0.5" and c2.data.params["guidance"] == "2.5"
    assert c2.data.params["steps"] == "10" and c2.data.params["mode"] == "replace"
    assert c2.data.params["seed"] == "1"
    for tag, value in (("pool_key", "pool-abc"), ("model_hash", "hash-123"), ("node_id", "node-1")):
        assert c2.data.tags[tag] == value
    hist = sorted(client.get_metric_history(c2.info.run_id, "val_accuracy"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in hist] == [(1, 0.5), (2, 0.8), (3, 0.7)]
    assert "done" not in c2.data.metrics and "epoch" not in c2.data.metrics
    arts = {a.path for a in client.list_artifacts(c2.info.run_id)}
    assert {"confusion_matrix.json", "confusion_matrix.png"} <= arts
    local = Path(client.download_artifacts(c2.info.run_id, "confusion_matrix.json", str(tmp_path)))
    assert json.loads(local.read_text())["confusion_matrix"] == [[5, 1], [2, 4]]
    png = Path(client.download_artifacts(c2.info.run_id, "confusion_matrix.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # trials.jsonl: last line per trial says TERMINATED with its run id, metrics and best epoch.
    recs = read_trials_jsonl(run_dir / "trials.jsonl")
    assert list(recs) == ["t_00001", "t_00002"]
    assert recs["t_00002"]["state"] == "TERMINATED"
    assert recs["t_00002"]["mlflow_run_id"] == c2.info.run_id
    assert recs["t_00002"]["metrics"]["val_accuracy"] == 0.7
    assert recs["t_00002"]["best"] == {"value": 0.8, "epoch": 2}
    assert recs["t_00002"]["epoch"] == 3
    assert recs["t_00002"]["pool_key"] == "pool-abc"
    assert recs["t_00002"]["params"]["r"] == 0.5


def test_restore_reuses_or_replaces_never_doubles(home: Home) -> None:
    run_dir = home.runs / "s2"
    run_dir.mkdir(parents=True)
    tracker = _tracker(home, run_dir)
    parent = tracker.start_parent("s2", {}, [])
    cb = MLflowTrialCallback(tracker, strict=True)
    ta, tb, tc = (FakeTrial(f"x_{i}", _config(0.25 * i)) for i in range(3))
    _run_trial(cb, ta, [0.6, 0.7, 0.8])  # finished before the crash
    _run_trial(cb, tb, [0.5, 0.55], complete=False)  # running at epoch 2 when the driver died
    _run_trial(cb, tc, [0.4, 0.45], complete=False)  # running at epoch 2 when the driver died

    # The driver dies. A new driver resumes the parent and closes the stale runs.
    tracker2 = _tracker(home, run_dir)
    tracker2.resume_parent(parent)
    assert tracker2.close_stale_runs(parent) == 2
    statuses = {c.data.tags["ray_trial_id"]: c.info.status for c in tracker2.children(parent)}
    assert statuses == {"x_0": "FINISHED", "x_1": "KILLED", "x_2": "KILLED"}
    assert tracker2.close_stale_runs(parent) == 0

    cb2 = MLflowTrialCallback(tracker2, strict=True)  # knows nothing of the old runs
    # x_1 resumes from its epoch-2 checkpoint (reuse); x_2 lost it and restarts at epoch 1 (replace).
    _run_trial(cb2, tb, [0.6], start_epoch=3)
    _run_trial(cb2, tc, [0.41, 0.46, 0.5], start_epoch=1)
    tracker2.finish_parent()

    children = tracker2.children(parent)
    assert sorted(c.data.tags["ray_trial_id"] for c in children) == ["x_0", "x_1", "x_2"]
    assert all(c.info.status == "FINISHED" for c in children)
    by_trial = {c.data.tags["ray_trial_id"]: c.info.run_id for c in children}
    client = tracker2.client

    def history(trial_id: str) -> list[tuple[int, float]]:
        h = client.get_metric_history(by_trial[trial_id], "val_accuracy")
        return sorted((m.step, m.value) for m in h)

    assert history("x_1") == [(1, 0.5), (2, 0.55), (3, 0.6)]
    assert history("x_2") == [(1, 0.41), (2, 0.46), (3, 0.5)]
    # The replaced run is gone, not just hidden under a second name.
    assert client.get_run(by_trial["x_2"]).data.params["r"] == "0.5"
    recs = read_trials_jsonl(run_dir / "trials.jsonl")
    assert {t: r["state"] for t, r in recs.items()} == {
        "x_0": "TERMINATED",
        "x_1": "TERMINATED",
        "x_2": "TERMINATED",
    }
    assert recs["x_2"]["mlflow_run_id"] == by_trial["x_2"]
    # The best trial's epoch survives the restore (best of x_1 over both drivers: 0.6 at epoch 3).
    assert recs["x_1"]["best"] == {"value": 0.6, "epoch": 3}
    assert client.get_run(parent).data.tags["best_trial_id"] == "x_0"


def test_error_marks_failed_with_message(home: Home, tmp_path: Path) -> None:
    run_dir = home.runs / "s3"
    run_dir.mkdir(parents=True)
    err = tmp_path / "error.txt"
    err.write_text("Traceback...\nRatioSearchError: pool missing")
    tracker = _tracker(home, run_dir)
    parent = tracker.start_parent("s3", {}, [])
    cb = MLflowTrialCallback(tracker, strict=True)
    t = FakeTrial("e_1", _config(1.0), error_file=str(err))
    _run_trial(cb, t, [0.5], complete=False)
    cb.on_trial_error(0, [], t)
    (child,) = tracker.children(parent)
    assert child.info.status == "FAILED"
    assert "pool missing" in child.data.tags["error"]
    assert read_trials_jsonl(run_dir / "trials.jsonl")["e_1"]["state"] == "ERROR"
    assert tracker.client.get_run(parent).data.metrics["trials_failed"] == 1


def test_log_job(home: Home, tmp_path: Path) -> None:
    art = tmp_path / "meta.json"
    art.write_text("{}")
    uri = f"sqlite:///{home.mlruns / 'mlflow.db'}"
    run_id = log_job(
        "finetune",
        {"cfg": {"lr": 0.001, "max_steps": 5}},
        {"loss": [1.0, 0.5, 0.25], "final_loss": 0.25},
        [art],
        tracking_uri=uri,
        tags={"model_hash": "abc"},
    )
    tracker = _tracker(home, None)
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["cfg.lr"] == "0.001"
    assert run.data.tags["ratio_search.kind"] == "finetune" and run.data.tags["model_hash"] == "abc"
    hist = sorted((m.step, m.value) for m in tracker.client.get_metric_history(run_id, "loss"))
    assert hist == [(0, 1.0), (1, 0.5), (2, 0.25)]
    assert [a.path for a in tracker.client.list_artifacts(run_id)] == ["meta.json"]
    with pytest.raises(Exception, match="kind"):
        log_job("report", {}, tracking_uri=uri)


def test_ui_command_binds_loopback_and_uses_home_store(home: Home) -> None:
    uri = home.tracking_uri()
    cmd = ui_command(uri, port=5123)
    assert cmd[2:4] == ["mlflow", "ui"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--backend-store-uri") + 1] == uri
    assert cmd[cmd.index("--workers") + 1] == "1"
    srv = ui_command(uri, port=5123, server=True)
    assert srv[3] == "server" and "--serve-artifacts" in srv
    assert srv[srv.index("--artifacts-destination") + 1] == (home.mlruns / "artifacts").as_uri()


def test_child_params_are_the_full_trial_config(home: Home) -> None:
    """Tune's trial.config holds the sampled values; the child run gets the space's rest too."""
    run_dir = home.runs / "s4"
    run_dir.mkdir(parents=True)
    space = {
        "params": {"r": {"type": "categorical", "choices": [0.0, 0.5]}},
        "fixed": {"epochs": 2, "guidance": 3.0, "steps": 5},
        "search": {"metric": "val_f1", "mode": "max"},
    }
    (run_dir / "run.json").write_text(
        json.dumps({"name": "s4", "metric": "val_f1", "mode": "max", "space": space})
    )
    tracker = SearchTracker(f"sqlite:///{home.mlruns / 'mlflow.db'}", "ratio-search", run_dir)
    assert (tracker.metric, tracker.mode) == ("val_f1", "max")  # from run.json
    parent = tracker.start_parent("s4", {})
    cb = MLflowTrialCallback(tracker, strict=True)
    _run_trial(cb, FakeTrial("p_1", {"r": 0.5}), [0.5])
    (child,) = tracker.children(parent)
    params = child.data.params
    assert params["r"] == "0.5" and params["guidance"] == "3.0" and params["steps"] == "5"
    assert params["mode"] == "replace" and params["seed"] == "0" and params["epochs"] == "2"
    # trials.jsonl keeps Tune's own config (what status and export read back)
    assert read_trials_jsonl(run_dir / "trials.jsonl")["p_1"]["params"] == {"r": 0.5}
    assert tracker.client.get_run(parent).data.metrics["best_val_f1"] == pytest.approx(0.4)


@pytest.mark.edges
@pytest.mark.parametrize(
    ("cm", "names"),
    [([[5, 1], [2, 4]], ["CNV", "NORMAL"]), ([[0, 0], [0, 0]], None), ([[3]], ["only"]),
     ([[1, 2, 3], [4, 5, 6], [7, 8, 9]], ["a", "b"])],  # wrong count of names: indices
)  # fmt: skip
def test_confusion_image_shades_each_cell_by_its_count(cm, names):
    """One cell per (true, predicted) pair, darker for larger counts; an all-zero matrix draws."""
    from ratio_search.tracking.store import confusion_image

    img = confusion_image(cm, names)
    n = len(cm)
    assert img.mode == "RGB" and img.width > 64 * n and img.height > 64 * n
    # The pixel at each cell's corner (away from its number) carries the cell's shade.
    left = img.width - 12 - 64 * n
    shade = {(i, j): sum(img.getpixel((left + 64 * j + 3, 44 + 64 * i + 3))) for i in range(n)
             for j in range(n)}  # fmt: skip
    flat = sorted((cm[i][j], shade[i, j]) for i in range(n) for j in range(n))
    for (c1, s1), (c2, s2) in zip(flat, flat[1:], strict=False):
        assert s1 >= s2 if c2 > c1 else s1 == s2  # a larger count is never lighter
    if flat[-1][0] > flat[0][0]:
        assert flat[-1][1] < flat[0][1]  # and the largest is darker than the smallest
