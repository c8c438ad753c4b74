"""The search service without starting Ray: the trial function called directly, resources, the
searcher's Optuna bookkeeping, run folders and status, leftover-process clean-up, CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from ratio_search._io import utc_now
from ratio_search.config import FinetuneConfig
from ratio_search.errors import ConfigError, SearchError
from ratio_search.home import Home
from ratio_search.search import list_runs, run_status
from ratio_search.search import runs as runs_mod
from ratio_search.search.driver import check_address, pool_size, resolve_resources
from ratio_search.search.procs import find_ray_processes, kill_ray_processes
from ratio_search.search.space import parse_space
from ratio_search.search.trainable import load_state, save_state, trial_body
from ratio_search.search.trials import append_trial

TINY_DATA = {
    "image_size": 16,
    "phantom_n_per_class": 8,
    "phantom_val_per_class": 8,
    "phantom_test_per_class": 2,
    "min_val_per_class": 0,
}


def tiny_space(**search) -> dict:
    return {
        "params": {
            "r": {"type": "categorical", "choices": [0.0, 0.5, 1.0]},
            "guidance": {"type": "categorical", "choices": [1.0, 3.0]},
            "steps": {"type": "categorical", "choices": [2]},
        },
        "fixed": {"epochs": 2, "batch_size": 8, "widths": [2, 4], "fc": 4, "seed": 0},
        "search": {"n_startup_trials": 2, **search},
        "data": dict(TINY_DATA),
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A home with tiny phantom data and a tiny generator (2 fine-tune steps, ~10k parameters)."""
    from ratio_search.data import load_dataset
    from ratio_search.diffusion import finetune, read_meta
    from ratio_search.diffusion.tiny import TEST_UNET

    home = Home.resolve(tmp_path_factory.mktemp("home"))
    space = parse_space(tiny_space())
    data = load_dataset(space.data_config(), home)
    cfg = FinetuneConfig(max_steps=2, from_scratch=True, batch_size=8)
    info = finetune(data, cfg, home, progress=False, unet_config=TEST_UNET)
    ctx = {
        "home": str(home.root),
        "space": space.to_dict(),
        "pool_n": pool_size(space, data),
        "model_path": str(info.path),
        "model_meta": read_meta(info.path),
    }
    return home, space, data, ctx


# ------------------------------------------------------------------------------ the trial


@pytest.mark.unit
def test_trial_reports_contract_metrics_and_uses_a_cached_pool(tiny):
    home, space, data, ctx = tiny
    reports = []
    cfg = dict(space.fixed, r=0.5, guidance=1.0, steps=2)
    out = trial_body(cfg, ctx, data, report=lambda m, s: reports.append((m, s)), node_id="n1")
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    m = reports[-1][0]
    for key in ("val_accuracy", "val_f1", "val_precision", "val_recall", "val_roc_auc",
                "val_loss", "train_loss", "pool_key", "model_hash", "n_synthetic", "node_id"):  # fmt: skip
        assert key in m, key
    assert m["node_id"] == "n1" and m["model_hash"] == ctx["model_meta"]["model_hash"]
    assert json.loads(m["confusion_matrix"]) and np.array(
        json.loads(m["confusion_matrix"])
    ).sum() == len(data.val_y)
    # R=0.5 of the 8 synthetic-class images: 4 are generated
    assert m["n_synthetic"] == 4 == out["n_synthetic"]
    assert (home.pools / m["pool_key"] / "images.npy").is_file()
    # the same settings find the same pool (no second generation)
    mtime = (home.pools / m["pool_key"] / "images.npy").stat().st_mtime_ns
    reports2 = []
    trial_body(cfg, ctx, data, report=lambda m, s: reports2.append(m))
    assert reports2[-1]["pool_key"] == m["pool_key"]
    assert (home.pools / m["pool_key"] / "images.npy").stat().st_mtime_ns == mtime
    assert reports2[-1]["val_loss"] == m["val_loss"]  # same config -> same result


@pytest.mark.unit
def test_trial_at_r0_needs_no_model_or_pool(tiny):
    _, space, data, ctx = tiny
    ctx0 = dict(ctx, model_path=None, model_meta=None)
    reports = []
    trial_body(
        dict(space.fixed, r=0.0, guidance=1.0, steps=2),
        ctx0,
        data,
        report=lambda m, s: reports.append(m),
    )
    assert reports[-1]["pool_key"] == "" and reports[-1]["n_synthetic"] == 0


@pytest.mark.unit
def test_trial_resumes_from_its_checkpoint(tiny, tmp_path):
    _, space, data, ctx = tiny
    cfg = dict(space.fixed, r=0.5, guidance=3.0, steps=2, epochs=3)
    full, states = [], []
    trial_body(cfg, ctx, data, report=lambda m, s: (full.append(m), states.append(s)))
    # the epoch-1 state through a checkpoint folder, loaded weights_only
    save_state(states[0], tmp_path)
    state = load_state(tmp_path)
    assert state["epoch"] == 1
    resumed = []
    trial_body(cfg, ctx, data, report=lambda m, s: resumed.append(m), state=state)
    assert [m["epoch"] for m in resumed] == [2, 3]
    assert resumed[-1]["val_loss"] == pytest.approx(full[-1]["val_loss"], abs=1e-6)
    assert resumed[-1]["train_loss"] == pytest.approx(full[-1]["train_loss"], abs=1e-6)


@pytest.mark.unit
def test_pool_size_covers_the_largest_r(tiny):
    _, space, data, _ = tiny
    assert pool_size(space, data) == 8  # R=1 replace: all 8 synthetic-class images
    doc = tiny_space()
    doc["fixed"]["mode"] = "augment"
    doc["params"]["r"]["augment_high"] = 0.5
    # augment: R=0.5 needs 8, R=1 is capped at 0.5 (augment_high)
    assert pool_size(parse_space(doc), data) == 8
    doc["fixed"]["pool_size"] = 20
    assert pool_size(parse_space(doc), data) == 20


# ----------------------------------------------------------------------- resources, address


@pytest.mark.unit
def test_resources_defaults_and_gpu_check(monkeypatch):
    from ratio_search.search import resources

    monkeypatch.setattr(resources, "cuda_device_count", lambda: 0)
    r = resolve_resources(None, None, None, None, None)
    assert r["gpus"] == 0 and r["gpus_per_trial"] == 0 and r["cpus_per_trial"] == 1
    assert 1 <= r["concurrency"] <= 2
    with pytest.raises(ConfigError, match="--gpus 8 asked for, this machine has 0 CUDA devices"):
        resolve_resources(8, None, None, None, None)
    monkeypatch.setattr(resources, "cuda_device_count", lambda: 4)
    r = resolve_resources(None, 0.25, 1, None, None)
    assert r["gpus"] == 4 and r["gpus_per_trial"] == 0.25
    assert r["concurrency"] == min(16, os.cpu_count() or 1)
    assert resolve_resources(2, None, None, None, None)["concurrency"] <= 2
    # a cluster's GPUs are not checked here
    assert resolve_resources(8, 0.5, 1, 3, "10.0.0.1:6379")["gpus"] == 8


@pytest.mark.edges
def test_unreachable_address_fails_fast():
    t0 = time.time()
    with pytest.raises(SearchError, match="cannot reach the Ray cluster at 127.0.0.1:9"):
        check_address("127.0.0.1:9", timeout=1.0)
    assert time.time() - t0 < 5
    with pytest.raises(SearchError, match="expected HOST:PORT"):
        check_address("nonsense")


# --------------------------------------------------------------------------- the searcher


@pytest.mark.unit
def test_searcher_queues_baselines_snaps_and_prunes_asha_stops(tmp_path):
    from ratio_search.search.searcher import make_searcher

    doc = {
        "params": {
            "r": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.05},
            "guidance": {"type": "categorical", "choices": [2.0, 12.5]},
        },
        "search": {"n_startup_trials": 2},
    }
    space = parse_space(doc)
    s = make_searcher(space, tmp_path, "t", "val_accuracy", "max", seed=0)
    assert s.suggest("a") == {"r": 0.0, "guidance": 12.5}
    assert s.suggest("b") == {"r": 0.5, "guidance": 12.5}
    for i in range(3):
        p = s.suggest(f"c{i}")
        assert p["r"] in space.params["r"].values()
    # a: complete after all epochs; b: stopped by ASHA after 1 of 3 epochs
    s.on_trial_result("a", {"val_accuracy": 0.8, "training_iteration": 3})
    s.on_trial_complete("a", {"val_accuracy": 0.8, "epoch": 3, "epochs": 3})
    s.on_trial_result("b", {"val_accuracy": 0.6, "training_iteration": 1})
    s.on_trial_complete("b", {"val_accuracy": 0.6, "epoch": 1, "epochs": 3})
    import optuna

    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = {t.params["r"]: t.state for t in study.trials if t.state.is_finished()}
    assert states == {0.0: optuna.trial.TrialState.COMPLETE, 0.5: optuna.trial.TrialState.PRUNED}
    # c0..c2 are RUNNING; forget c2 (as a crash before the experiment snapshot would) -> FAIL
    del s._ot_trials["c2"]
    assert s.fail_orphans() == 1
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert sum(t.state == optuna.trial.TrialState.RUNNING for t in study.trials) == 2


@pytest.mark.unit
def test_grid_searcher_visits_every_point_once(tmp_path):
    from ratio_search.search.searcher import make_searcher
    from ratio_search.search.space import load_space

    space = load_space("reference_grid")
    s = make_searcher(space, tmp_path, "g", "val_accuracy", "max", seed=0)
    seen = []
    for i in range(11):
        seen.append(s.suggest(str(i))["r"])
        s.on_trial_result(str(i), {"val_accuracy": 0.5, "training_iteration": 1})
        s.on_trial_complete(str(i), {"val_accuracy": 0.5, "epoch": 8, "epochs": 8})
    assert sorted(seen) == [round(0.1 * i, 1) for i in range(11)]


# ------------------------------------------------------------------------- run folder, status


def _fake_run(home: Home, name: str, state: str, trials: list[dict]) -> Path:
    folder = home.runs / name
    folder.mkdir(parents=True)
    runs_mod.write_run_json(
        folder,
        {"name": name, "state": state, "created": utc_now(), "n_trials": 3,
         "metric": "val_accuracy", "mode": "max", "ray": {"driver_pid": None}},
    )  # fmt: skip
    for rec in trials:
        append_trial(folder, rec)
    return folder


@pytest.mark.unit
def test_status_last_line_wins_and_best(tmp_path):
    home = Home.resolve(tmp_path)
    t = lambda tid, state, acc, r: {  # noqa: E731
        "trial_id": tid, "state": state, "params": {"r": r, "guidance": 2.0, "steps": 10},
        "metrics": {"val_accuracy": acc}, "epoch": 2,
    }  # fmt: skip
    folder = _fake_run(
        home, "s1", "running",
        [t("a", "RUNNING", 0.5, 0.0), t("a", "TERMINATED", 0.7, 0.0), t("b", "RUNNING", 0.9, 0.5),
         t("c", "TERMINATED", 0.8, 1.0), t("d", "ERROR", None, 0.3)],
    )  # fmt: skip
    with open(folder / "trials.jsonl", "a") as f:
        f.write('{"trial_id": "e", "sta')  # a torn last line (driver killed mid-write)
    s = run_status(home, "s1")
    assert s["counts"] == {"RUNNING": 1, "TERMINATED": 2, "ERROR": 1}
    assert s["done"] == 3 and len(s["trials"]) == 4
    # b is better but still running: the best is the best finished trial
    assert s["best"]["trial_id"] == "c" and s["best"]["metric"] == 0.8
    # the driver pid is gone -> "crashed" rather than "running"
    runs_mod.write_run_json(
        folder, dict(runs_mod.read_run_json(folder), ray={"driver_pid": 2**22 + 12345})
    )
    assert run_status(home, "s1")["state"] == "crashed"
    _fake_run(home, "s0", "finished", [])
    listed = list_runs(home)
    assert [r["name"] for r in listed] == ["s1", "s0"] or {r["name"] for r in listed} == {
        "s0",
        "s1",
    }
    with pytest.raises(SearchError, match=r"unknown run 'nope' .*s0, s1"):
        run_status(home, "nope")


@pytest.mark.unit
def test_run_json_is_written_atomically(tmp_path):
    runs_mod.write_run_json(tmp_path, {"name": "x", "state": "running"})
    assert json.loads((tmp_path / "run.json").read_text())["state"] == "running"
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temp file left
    # NaN is not JSON: written as null, so that every reader can parse the file
    runs_mod.write_run_json(
        tmp_path, {"name": "x", "state": "running", "stats": [float("nan"), 1.0]}
    )
    assert json.loads((tmp_path / "run.json").read_text())["stats"] == [None, 1.0]


@pytest.mark.unit
def test_ray_temp_dir_is_short_and_per_run(tmp_path):
    a = runs_mod.ray_temp_dir(tmp_path / ("x" * 200) / "runs" / "a")
    b = runs_mod.ray_temp_dir(tmp_path / "runs" / "b")
    assert a != b and len(a) == len("/tmp/rs-") + 10


# ------------------------------------------------------------------- leftover processes


@pytest.mark.e2e
def test_leftover_processes_found_and_killed_by_pid(tmp_path):
    temp_dir = f"/tmp/rs-test{os.getpid()}"
    os.makedirs(temp_dir, exist_ok=True)
    log = open(os.path.join(temp_dir, "raylet.out"), "w")  # noqa: SIM115
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    # one names the dir on its command line, one only holds a log file open under it (as Ray's
    # renamed workers do), one is unrelated
    by_cmd = subprocess.Popen([sys.executable, "-c", code, f"--temp-dir={temp_dir}"])
    by_fd = subprocess.Popen([sys.executable, "-c", code], stdout=log)
    other = subprocess.Popen([sys.executable, "-c", code, "--temp-dir=/tmp/rs-other"])
    try:
        time.sleep(0.5)
        found = find_ray_processes(temp_dir)
        assert by_cmd.pid in found and by_fd.pid in found and other.pid not in found
        killed = kill_ray_processes(temp_dir, timeout=1.0)  # they ignore SIGTERM: SIGKILL
        assert set(killed) == {by_cmd.pid, by_fd.pid}
        assert by_cmd.wait(5) == -9 and by_fd.wait(5) == -9
        assert other.poll() is None
    finally:
        for p in (by_cmd, by_fd, other):
            if p.poll() is None:
                p.kill()
                p.wait()
        log.close()
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


# ---------------------------------------------------------------------------- CLI errors


def _one_line_error(rc: int, err: str, match: str) -> None:
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ratio-search: error:"), err
    assert match in lines[0], lines[0]
    assert "Traceback" not in err


def _space_file(tmp_path: Path, mutate=lambda d: None) -> Path:
    doc = tiny_space()
    mutate(doc)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(doc))
    return space


@pytest.mark.edges
@pytest.mark.parametrize(
    "mutate, extra, match",
    [
        (lambda d: None, ["--gpus", "8"], "--gpus 8 asked for, this machine has 0 CUDA devices"),
        (lambda d: d["params"]["r"].update(choices=[]), [], "params.r.choices: must be a non-empty list"),
        (lambda d: d["params"].update(r={"type": "float", "low": 0.0, "high": 1.5, "step": 0.5}), [],
         "params.r.high: 1.5 is outside"),
        (lambda d: d["params"].update(r={"type": "float", "low": 0.5, "high": 0.5}), [], "params.r: empty range"),
        (lambda d: d["search"].update(metric="val_auc"), [], "search.metric: unknown metric 'val_auc'"),
        (lambda d: None, ["--metric", "accuracy"], "--metric: unknown metric 'accuracy'"),
    ],
)  # fmt: skip
def test_cli_run_bad_input_is_one_line_exit_2(tmp_path, run_cli, mutate, extra, match):
    if "--gpus" in extra:
        import torch

        if torch.cuda.device_count() >= 8:
            pytest.skip("this machine has 8 GPUs")
    space = _space_file(tmp_path, mutate)
    rc, _, err = run_cli(["run", "--space", space, "--trials", "1", *extra, "--home", tmp_path])
    _one_line_error(rc, err, match)
    assert not (tmp_path / "runs").exists()  # nothing was started


@pytest.mark.e2e
def test_cli_run_unreachable_cluster_in_a_subprocess(tmp_path):
    """The real command (a subprocess: Ray's connection attempt stays out of the test process)."""
    space = _space_file(tmp_path)
    p = subprocess.run(
        [sys.executable, "-m", "ratio_search.cli", "run", "--space", str(space), "--trials", "1",
         "--address", "127.0.0.1:9", "--home", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    _one_line_error(p.returncode, p.stderr, "cannot reach the Ray cluster at 127.0.0.1:9")
    assert not (tmp_path / "runs").exists()  # nothing was started


@pytest.mark.edges
def test_cli_unknown_run_name(tmp_path, run_cli):
    _one_line_error(*run_cli(["resume", "nope", "--home", tmp_path])[::2], "unknown run 'nope'")
    _one_line_error(*run_cli(["status", "nope", "--home", tmp_path])[::2], "unknown run 'nope'")


@pytest.mark.edges
def test_cli_run_refuses_an_existing_unfinished_name(tmp_path, run_cli):
    _fake_run(Home.resolve(tmp_path), "old", "interrupted", [])
    space = _space_file(tmp_path)
    rc, _, err = run_cli(["run", "--space", space, "--name", "old", "--home", tmp_path])
    _one_line_error(
        rc, err, "run old exists and is unfinished; resume it with: ratio-search resume old"
    )


@pytest.mark.unit
def test_cli_status_json_and_table(tmp_path, run_cli):
    home = Home.resolve(tmp_path)
    _fake_run(home, "s1", "finished", [
        {"trial_id": "a", "state": "TERMINATED", "params": {"r": 0.5, "guidance": 2.0, "steps": 10},
         "metrics": {"val_accuracy": 0.75}, "epoch": 2},
    ])  # fmt: skip
    rc, out, err = run_cli(["status", "s1", "--json", "--home", tmp_path])
    assert rc == 0, err
    s = json.loads(out)
    assert s["best"]["metric"] == 0.75 and s["done"] == 1 and s["state"] == "finished"
    rc, out, _ = run_cli(["status", "--home", tmp_path])
    assert rc == 0 and "s1" in out and "1/3" in out
    rc, out, _ = run_cli(["status", "s1", "--home", tmp_path])
    assert rc == 0 and "0.7500" in out and "TERMINATED" in out


@pytest.mark.unit
def test_trials_lost_in_a_crash_are_marked_and_not_counted(tmp_path, monkeypatch):
    """A trial the killed driver started after its last experiment snapshot is unknown to the
    restored experiment: marked LOST in trials.jsonl, not shown or counted by status."""
    import types

    import ray.tune

    from ratio_search.search.tuner import reconcile_trials

    home = Home.resolve(tmp_path)
    rec = lambda tid, state: {"trial_id": tid, "state": state, "params": {"r": 0.5}, "metrics": {}}  # noqa: E731
    folder = _fake_run(
        home, "c", "running", [rec("a", "TERMINATED"), rec("b", "RUNNING"), rec("x", "RUNNING")]
    )
    trials = [types.SimpleNamespace(trial_id=t) for t in ("a", "b")]
    monkeypatch.setattr(
        ray.tune, "ExperimentAnalysis", lambda path: types.SimpleNamespace(trials=trials)
    )
    assert reconcile_trials(folder, tracker=None) == (1, 0)
    st = run_status(home, "c")
    assert [t["trial_id"] for t in st["trials"]] == ["a", "b"]
    assert st["counts"]["LOST"] == 1 and st["done"] == 1
    assert reconcile_trials(folder, tracker=None) == (0, 0)  # idempotent


# ------------------------------------------------------------- records: run.json, trials.jsonl


@pytest.mark.unit
def test_an_old_run_json_loads_and_keeps_unknown_keys(tmp_path):
    from ratio_search.search.runinfo import RunInfo

    old = {
        "name": "old", "state": "interrupted", "created": "2026-01-01T00:00:00Z", "n_trials": 4,
        "metric": "val_f1", "mode": "max", "space": {"params": {}}, "data_key": "d1",
        "model_hash": None, "model_path": None, "model_meta": None, "pool_n": 0,
        "mlflow": {"tracking_uri": None, "experiment_id": None, "parent_run_id": None},
        "ray": {"temp_dir": "/tmp/rs-x", "address": None, "driver_pid": 1, "node": "n1"},
        "argv": ["ratio-search", "run"], "seed": 3,
        "options": {"scheduler": "asha", "resources": {"concurrency": 2}, "concurrency": 2},
        "a_future_key": [1, 2],
    }  # fmt: skip
    (tmp_path / "run.json").write_text(json.dumps(old))
    info = RunInfo.load(tmp_path)
    assert info.state == "interrupted" and info.metric == "val_f1" and info.seed == 3
    assert info.options.scheduler == "asha" and info.options.max_failures == 0
    assert info.ray.temp_dir == "/tmp/rs-x" and info.extra == {"a_future_key": [1, 2]}
    info.save(tmp_path)
    back = json.loads((tmp_path / "run.json").read_text())
    assert back["a_future_key"] == [1, 2] and back["ray"]["node"] == "n1"
    # every value of the old file is written back as it was (missing ones get their defaults)
    assert {k: back[k] for k in old if k != "options"} == {
        k: v for k, v in old.items() if k != "options"
    }
    assert {k: back["options"][k] for k in old["options"]} == old["options"]
    # a run.json that is not an object names the file
    (tmp_path / "run.json").write_text("[1]")
    with pytest.raises(SearchError, match=r"run.json: cannot read the run's state .*JSON list"):
        RunInfo.load(tmp_path)


@pytest.mark.unit
def test_best_trial_finished_finite_ties_to_the_earliest():
    from ratio_search.search.trials import best_trial

    def rec(tid, state, v):
        return {"trial_id": tid, "state": state, "metrics": {"val_loss": v, "val_accuracy": v}}

    trials = {
        "a": rec("a", "TERMINATED", 0.5),
        "b": rec("b", "TERMINATED", 0.7),
        "c": rec("c", "TERMINATED", 0.7),  # ties with b: b came first
        "d": rec("d", "RUNNING", 0.9),  # not finished
        "e": rec("e", "TERMINATED", float("nan")),  # no finite value
        "f": rec("f", "ERROR", 0.1),
    }
    assert best_trial(trials, "val_accuracy", "max")["trial_id"] == "b"
    assert best_trial(trials, "val_loss", "min")["trial_id"] == "a"
    assert best_trial({"d": trials["d"]}, "val_accuracy", "max") is None


@pytest.mark.unit
def test_one_record_builder_carries_metrics_and_the_best_epoch(tmp_path):
    import types

    from ratio_search.search.trials import TrialLog, read_trials

    trial = types.SimpleNamespace(trial_id="t1", config={"r": 0.5})
    log = TrialLog(tmp_path, "val_accuracy", "max")
    log.event(trial, "RUNNING")
    result = {"epoch": 1, "val_accuracy": 0.6, "train_loss": float("nan"), "pool_key": "p",
              "done": False, "time_total_s": 1.5, "flag": True, "confusion_matrix": "[[1]]"}  # fmt: skip
    log.event(trial, "RUNNING", result)
    log.event(trial, "RUNNING", dict(result, epoch=2, val_accuracy=0.5))
    rec = log.event(trial, "ERROR", error="boom")
    assert rec["metrics"] == {"val_accuracy": 0.5, "train_loss": None, "time_total_s": 1.5}
    assert rec["best"] == {"value": 0.6, "epoch": 1} and rec["epoch"] == 2
    assert rec["pool_key"] == "p" and rec["error"] == "boom" and rec["params"] == {"r": 0.5}
    assert read_trials(tmp_path)["t1"] == rec
    # a restored driver continues from the file: the best epoch is kept
    assert TrialLog(tmp_path).best["t1"] == {"value": 0.6, "epoch": 1}


@pytest.mark.unit
def test_optuna_search_still_has_the_private_state_the_searcher_uses(tmp_path):
    """The adapter around OptunaSearch's private attributes finds them on the installed Ray."""
    from ratio_search.search.searcher import _Internals, make_searcher

    space = parse_space({"params": {"r": {"type": "categorical", "choices": [0.0, 0.5]}}})
    s = make_searcher(space, tmp_path, "t", "val_accuracy", "max", seed=0)
    s.suggest("a")
    ot = s.internals
    assert ot.open("a") and not ot.frozen("a").state.is_finished()
    assert ot.storage is ot.study._storage and "a" in ot.trials
    with pytest.raises(SearchError, match="OptunaSearch lacks _ot_trials"):
        _Internals(type("Bare", (), {"_ot_study": None, "_completed_trials": set()})())
