"""Kill -9 a running search's driver, then resume it: leftovers cleaned, exactly N trials, no doubles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ratio_search.home import Home, pid_alive
from ratio_search.search import run_status
from ratio_search.search.procs import find_ray_processes

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

TINY_DATA = {
    "image_size": 16,
    "phantom_n_per_class": 8,
    "phantom_val_per_class": 8,
    "phantom_test_per_class": 2,
    "min_val_per_class": 0,
}
N_TRIALS = 4


def _tiny_model(home: Home) -> Path:
    from ratio_search.config import FinetuneConfig
    from ratio_search.data import load_dataset
    from ratio_search.diffusion import finetune
    from ratio_search.diffusion.tiny import TEST_UNET
    from ratio_search.search.space import parse_space

    data = load_dataset(parse_space({"data": TINY_DATA}).data_config(), home)
    cfg = FinetuneConfig(max_steps=2, from_scratch=True, batch_size=8)
    return finetune(data, cfg, home, progress=False, unet_config=TEST_UNET).path


def _cli(home: Home, *args: str) -> list[str]:
    return [sys.executable, "-m", "ratio_search.cli", *args, "--home", str(home.root)]


def _finished_trials(run_dir: Path) -> int:
    path = run_dir / "trials.jsonl"
    if not path.is_file():
        return 0
    done = set()
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("state") == "TERMINATED":
            done.add(rec["trial_id"])
    return len(done)


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory):
    home = Home.resolve(tmp_path_factory.mktemp("home"))
    return home, _tiny_model(home)


def _space_file(tmp_path: Path) -> Path:
    space = {
        "params": {
            "r": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25},
            "guidance": {"type": "categorical", "choices": [1.0, 3.0]},
        },
        "fixed": {"steps": 2, "epochs": 3, "batch_size": 8, "widths": [2, 4], "fc": 4},
        "search": {"n_startup_trials": 2},
        "data": TINY_DATA,
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def _wait_for_a_finished_trial(driver: subprocess.Popen, run_dir: Path, log: Path) -> None:
    deadline = time.time() + 400
    while _finished_trials(run_dir) < 1:
        assert driver.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "no trial finished in time"
        time.sleep(0.1)


def test_kill_driver_then_resume(tmp_path, tiny_home):
    home, model = tiny_home
    space_path = _space_file(tmp_path)
    run_dir = home.runs / "rz"
    log = open(tmp_path / "run.log", "w")  # noqa: SIM115
    driver = subprocess.Popen(
        _cli(
            home,
            "run",
            "--space",
            str(space_path),
            "--trials",
            str(N_TRIALS),
            "--concurrency",
            "1",
            "--model",
            str(model),
            "--name",
            "rz",
        ),  # fmt: skip
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_a_finished_trial(driver, run_dir, tmp_path / "run.log")
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(10)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        log.close()

    info = json.loads((run_dir / "run.json").read_text())
    assert info["state"] == "running"  # nobody recorded the end
    temp_dir = info["ray"]["temp_dir"]
    leftovers = find_ray_processes(temp_dir)
    assert leftovers, "the killed driver left no Ray process behind (nothing to test)"
    assert run_status(home, "rz")["state"] == "crashed"
    assert _finished_trials(run_dir) < N_TRIALS

    p = subprocess.run(
        _cli(home, "resume", "rz", "--json"), capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["state"] == "finished" and out["n_trials"] == N_TRIALS

    # the old cluster's processes are gone, and the new one's too
    assert not any(pid_alive(pid) for pid in leftovers)
    assert find_ray_processes(temp_dir) == []

    st = run_status(home, "rz")
    assert st["state"] == "finished"
    assert st["done"] == N_TRIALS and len(st["trials"]) == N_TRIALS
    assert all(t["state"] == "TERMINATED" for t in st["trials"])
    trial_ids = {t["trial_id"] for t in st["trials"]}

    # MLflow: exactly one child per trial, none RUNNING, no epoch logged twice
    from mlflow.tracking import MlflowClient

    info = json.loads((run_dir / "run.json").read_text())
    client = MlflowClient(info["mlflow"]["tracking_uri"])
    parent = info["mlflow"]["parent_run_id"]
    children = client.search_runs(
        [info["mlflow"]["experiment_id"]], f"tags.`mlflow.parentRunId` = '{parent}'"
    )
    assert sorted(c.data.tags["ray_trial_id"] for c in children) == sorted(trial_ids)
    assert all(c.info.status == "FINISHED" for c in children)
    for c in children:
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_accuracy")]
        assert steps == sorted(set(steps)) and steps[-1] == 3, steps
    assert client.get_run(parent).info.status == "FINISHED"

    # Optuna kept what it learnt: one COMPLETE trial per Tune trial
    import optuna

    study = optuna.load_study(study_name="rz", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == N_TRIALS
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]

    # a finished run is not resumed again: nothing is left, which is not an error
    p = subprocess.run(_cli(home, "resume", "rz"), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "run rz is finished (4 trials): nothing left to do" in p.stderr


def test_ctrl_c_stops_cleanly_and_prints_the_resume_command(tmp_path, tiny_home):
    home, model = tiny_home
    run_dir = home.runs / "ri"
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen(
            _cli(
                home,
                "run",
                "--space",
                str(_space_file(tmp_path)),
                "--trials",
                str(N_TRIALS),
                "--concurrency",
                "1",
                "--model",
                str(model),
                "--name",
                "ri",
                "--no-tracking",
            ),  # fmt: skip
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_a_finished_trial(driver, run_dir, log_path)
            os.kill(driver.pid, signal.SIGINT)  # what Ctrl-C sends
            rc = driver.wait(120)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
    text = log_path.read_text()
    assert rc == 130, text[-3000:]
    assert f"resume it with: ratio-search resume ri --home {home.root}" in text
    assert "Traceback" not in text
    info = json.loads((run_dir / "run.json").read_text())
    assert info["state"] == "interrupted"
    assert find_ray_processes(info["ray"]["temp_dir"]) == []
    assert run_status(home, "ri")["done"] < N_TRIALS

    p = subprocess.run(
        _cli(home, "resume", "ri", "--json"), capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout)["n_trials"] == N_TRIALS
    st = run_status(home, "ri")
    assert st["state"] == "finished" and st["done"] == N_TRIALS == len(st["trials"])


# ---------------------------------------------------------------- a kill at every phase

KILL_POINTS = ("data", "finetune", "pool", "trial", "between")
N_KILL = 2


def _kill_files(tmp_path: Path) -> tuple[Path, Path]:
    """The smallest search that has every phase: fine-tune (3 steps, a checkpoint each), one
    pool, 2 one-epoch trials."""
    space = {
        "params": {"r": {"type": "categorical", "choices": [0.0, 0.5]}},
        "fixed": {"guidance": 1.0, "steps": 2, "epochs": 1, "batch_size": 8, "widths": [2, 4],
                  "fc": 4},
        "search": {"n_startup_trials": 2},
        "data": TINY_DATA,
    }  # fmt: skip
    finetune = {"max_steps": 3, "checkpoint_every": 1, "from_scratch": True, "batch_size": 8}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"finetune": finetune}))
    return tmp_path / "space.yaml", tmp_path / "config.yaml"


def _children(info: dict) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(info["mlflow"]["tracking_uri"])
    parent = info["mlflow"]["parent_run_id"]
    return client.search_runs(
        [info["mlflow"]["experiment_id"]], f"tags.`mlflow.parentRunId` = '{parent}'"
    )


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_at_every_phase_then_resume_gives_exactly_n_trials(tmp_path, point):
    """SIGKILL of the driver in the data load, the fine-tune, the pool build, the first trial and
    between trials (RATIO_SEARCH_TEST_KILL_AT: the driver kills itself there); `resume` finishes
    with exactly N trials, one MLflow child each, none RUNNING, no Ray process left."""
    home = Home.resolve(tmp_path / "home")
    space, config = _kill_files(tmp_path)
    run = _cli(home, "run", "--space", str(space), "--config", str(config), "--trials",
               str(N_KILL), "--concurrency", "1", "--name", "k")  # fmt: skip
    env = dict(os.environ, RATIO_SEARCH_TEST_KILL_AT=point)
    p = subprocess.run(run, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    run_dir = home.runs / "k"
    info = json.loads((run_dir / "run.json").read_text())  # there from the first second
    assert info["state"] in ("starting", "running") and info["host"]
    assert run_status(home, "k")["state"] == "crashed"
    if point == "finetune":  # the fine-tune's checkpoint is kept for the resume
        assert list(home.models.glob(".tmp-*/*")), "no fine-tune checkpoint left"
    kept = {}
    if point == "pool":
        assert info["phase"] == "pools" and not info["pools_built"]
        kept = {p: p.stat().st_mtime_ns for p in home.pools.glob("*/images.npy")}
        assert kept, "the first pool was not complete before the kill"

    r = subprocess.run(_cli(home, "resume", "k", "--json"), capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["n_trials"] == N_KILL
    # the complete pool was kept, not rebuilt
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    st = run_status(home, "k")
    assert st["state"] == "finished" and st["done"] == N_KILL == len(st["trials"])
    assert all(t["state"] == "TERMINATED" for t in st["trials"])
    info = json.loads((run_dir / "run.json").read_text())
    children = _children(info)
    assert sorted(c.data.tags["ray_trial_id"] for c in children) == sorted(
        t["trial_id"] for t in st["trials"]
    )
    assert all(c.info.status == "FINISHED" for c in children)
    assert find_ray_processes(info["ray"]["temp_dir"]) == []


def _wait_for_holder(folder: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            if json.loads((folder / "driver.json").read_text()).get("pid") == proc.pid:
                return
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, proc.stdout.read()[-3000:] if proc.stdout else proc.returncode
        assert time.time() < deadline, "the driver never took the run's lock"
        time.sleep(0.2)


def test_racing_drivers_on_one_run_one_runs_the_others_refuse(tmp_path):
    """Two `run --name X`, then `resume X` against a live `run`, then `run` against a live
    `resume`: one driver runs, the others refuse in one line naming it; SIGTERM in the set-up
    stops the driver cleanly (exit 130, resumable)."""
    home = Home.resolve(tmp_path / "home")
    space, config = _kill_files(tmp_path)
    run = _cli(home, "run", "--space", str(space), "--config", str(config), "--trials", "2",
               "--name", "x", "--no-tracking")  # fmt: skip
    folder = home.runs / "x"

    def refused(cmd: list[str], holder: subprocess.Popen) -> None:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert p.returncode == 2, p.stderr[-2000:]
        assert "run x is in use by the driver on" in p.stderr and f"pid {holder.pid}," in p.stderr
        assert "Traceback" not in p.stderr

    def stop(proc: subprocess.Popen) -> str:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 130, out[-3000:]
        assert "Traceback" not in out and "resume it with: ratio-search resume x" in out
        return out

    first = subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_holder(folder, first)
        refused(run, first)  # a second `run --name x`
        refused(_cli(home, "resume", "x"), first)  # `resume` racing `run`
        stop(first)
        assert json.loads((folder / "run.json").read_text())["state"] == "interrupted"
        resumer = subprocess.Popen(
            _cli(home, "resume", "x"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            _wait_for_holder(folder, resumer)
            refused(run, resumer)  # `run` racing `resume`
            stop(resumer)
        finally:
            if resumer.poll() is None:
                resumer.kill()
                resumer.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert run_status(home, "x")["state"] == "interrupted"
