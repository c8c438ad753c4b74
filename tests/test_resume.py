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


# ---------------------------------------------------------------- a kill at every phase

# One run killed in each phase in turn, in the order a search meets them: `run` is killed in the
# data load, then each `resume` is killed in the next phase (the fine-tune, the pool build, the
# first trial, between trials), one more `resume` gets SIGINT as a trial starts (Ctrl-C), and
# a last `resume` finishes. Each kill is checked as it happens
# (what the next resume needs was kept), the end state once: exactly N trials, one MLflow child
# each, none RUNNING, no metric step logged twice, no Ray process left. One home and one chain
# instead of a run per phase: each `run`/`resume` costs seconds of imports and a Ray start.
KILL_POINTS = ("data", "finetune", "pool", "trial", "between")
# run.json's phase at each kill (setup.enter_phase records it before the kill point)
KILL_PHASES = {"data": "data", "finetune": "model", "pool": "pools", "trial": "trials",
               "between": "trials"}  # fmt: skip
N_KILL = 2
KILL_EPOCHS = 2  # two epochs a trial: a re-run trial would log a step twice


def _kill_files(tmp_path: Path) -> tuple[Path, Path]:
    """The smallest search that has every phase: fine-tune (3 steps, a checkpoint each), one
    pool, 2 two-epoch trials."""
    space = {
        "params": {"r": {"type": "categorical", "choices": [0.0, 0.5]}},
        "fixed": {"guidance": 1.0, "steps": 2, "epochs": KILL_EPOCHS, "batch_size": 8,
                  "widths": [2, 4], "fc": 4},
        "search": {"n_startup_trials": 2},
        "data": TINY_DATA,
    }  # fmt: skip
    finetune = {"max_steps": 3, "checkpoint_every": 1, "from_scratch": True, "batch_size": 8}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"finetune": finetune}))
    return tmp_path / "space.yaml", tmp_path / "config.yaml"


def _children(info: dict) -> list:
    from ratio_search.tracking import SearchTracker

    return SearchTracker(info["mlflow"]["tracking_uri"]).children(info["mlflow"]["parent_run_id"])


def _pool_mtimes(home: Home) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in home.pools.glob("*/images.npy")}


@pytest.fixture(scope="module")
def kill_chain(tmp_path_factory) -> dict:
    """Run the chain; return what was seen after each kill (``seen[point]``) and at the end."""
    tmp_path = tmp_path_factory.mktemp("kill_chain")
    home = Home.resolve(tmp_path / "home")
    space, config = _kill_files(tmp_path)
    run_dir = home.runs / "k"
    seen: dict = {"home": home, "run_dir": run_dir}
    cmd = _cli(home, "run", "--space", str(space), "--config", str(config), "--trials",
               str(N_KILL), "--concurrency", "1", "--name", "k")  # fmt: skip
    for point in KILL_POINTS:
        env = dict(os.environ, RATIO_SEARCH_TEST_KILL_AT=point)
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        info = json.loads((run_dir / "run.json").read_text())  # there from the first second
        seen[point] = {
            "rc": p.returncode,
            "stderr": p.stderr[-3000:],
            "info": info,
            "status": run_status(home, "k"),
            "finished": _finished_trials(run_dir),
            "ray": find_ray_processes(info["ray"]["temp_dir"]) if info["ray"]["temp_dir"] else [],
            "checkpoints": list(home.models.glob(".tmp-*/*")),
            "pools": _pool_mtimes(home),
        }
        # a resume that did not die where it should would make the rest meaningless
        assert p.returncode == -signal.SIGKILL, (point, p.stderr[-3000:])
        cmd = _cli(home, "resume", "k", "--json")
    # Ctrl-C: SIGINT as the second trial starts (at a known moment, not a race with the trial)
    env = dict(os.environ, RATIO_SEARCH_TEST_KILL_AT="trial:SIGINT")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    info = json.loads((run_dir / "run.json").read_text())
    seen["interrupt"] = {"rc": p.returncode, "stderr": p.stderr, "info": info,
                         "status": run_status(home, "k"),
                         "ray": find_ray_processes(info["ray"]["temp_dir"])}  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    seen["final"] = {"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr[-3000:],
                     "pools": _pool_mtimes(home)}  # fmt: skip
    return seen


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_at_every_phase_leaves_a_crashed_resumable_run(kill_chain, point):
    """SIGKILL of the driver in the data load, the fine-tune, the pool build, the first trial and
    between trials (RATIO_SEARCH_TEST_KILL_AT: the driver kills itself there): run.json is there
    and says where it stopped, the run reads as crashed, and what the resume needs is kept."""
    s = kill_chain[point]
    assert s["rc"] == -signal.SIGKILL, s["stderr"]
    assert s["info"]["state"] in ("starting", "running") and s["info"]["host"]
    assert s["info"]["phase"] == KILL_PHASES[point]
    assert s["status"]["state"] == "crashed"
    assert s["finished"] < N_KILL
    if point == "finetune":  # the fine-tune's checkpoint is kept for the resume
        assert s["checkpoints"], "no fine-tune checkpoint left"
    if point == "pool":
        assert not s["info"]["pools_built"]
        assert s["pools"], "the first pool was not complete before the kill"
    if point in ("trial", "between"):  # killed with its Ray cluster up
        assert s["info"]["state"] == "running"  # nobody recorded the end
        assert s["ray"], "the killed driver left no Ray process behind (nothing to test)"


def test_ctrl_c_stops_cleanly_and_prints_the_resume_command(kill_chain):
    """SIGINT (what Ctrl-C sends) during the trials: Tune stops gracefully, the driver exits 130
    with the resume command and no traceback, run.json says interrupted, and the run's Ray
    processes are gone; the next `resume` finishes the run (the tests below)."""
    s, home = kill_chain["interrupt"], kill_chain["home"]
    assert s["rc"] == 130, s["stderr"][-3000:]
    assert f"resume it with: ratio-search resume k --home {home.root}" in s["stderr"]
    assert "Traceback" not in s["stderr"]
    assert s["info"]["state"] == "interrupted"
    assert s["ray"] == []
    assert s["status"]["done"] < N_KILL


def test_resume_after_the_kills_gives_exactly_n_trials(kill_chain):
    """The last `resume` finishes the run with exactly N trials, one MLflow child each (all
    FINISHED), and stops every Ray process the killed drivers left behind."""
    f, home, run_dir = kill_chain["final"], kill_chain["home"], kill_chain["run_dir"]
    assert f["rc"] == 0, f["stderr"]
    out = json.loads(f["stdout"])
    assert out["state"] == "finished" and out["n_trials"] == N_KILL
    st = run_status(home, "k")
    assert st["state"] == "finished" and st["done"] == N_KILL == len(st["trials"])
    assert all(t["state"] == "TERMINATED" for t in st["trials"])
    info = json.loads((run_dir / "run.json").read_text())
    children = _children(info)
    assert sorted(c.data.tags["ray_trial_id"] for c in children) == sorted(
        t["trial_id"] for t in st["trials"]
    )
    assert all(c.info.status == "FINISHED" for c in children)
    # the old clusters' processes are gone (each resume stops them first), and the last one's too
    for point in ("trial", "between"):
        left = kill_chain[point]["ray"]
        assert not any(pid_alive(pid) for pid in left), (point, left)
    assert find_ray_processes(info["ray"]["temp_dir"]) == []


def test_the_complete_pool_is_kept_not_rebuilt(kill_chain):
    """The pool finished before the kill in the pool build is the same file after the resumes."""
    kept = kill_chain["pool"]["pools"]
    assert kept
    for later in ("trial", "between"):  # the resume after the pool kill, and the one after that
        assert {p: kill_chain[later]["pools"][p] for p in kept} == kept
    assert {p: kill_chain["final"]["pools"][p] for p in kept} == kept


def test_resumed_run_logs_each_metric_step_once(kill_chain):
    """MLflow after the kills: no epoch logged twice in any child, each has all its epochs, and
    the parent run is FINISHED (not left RUNNING by a killed driver)."""
    from mlflow.tracking import MlflowClient

    assert kill_chain["final"]["rc"] == 0, kill_chain["final"]["stderr"]
    info = json.loads((kill_chain["run_dir"] / "run.json").read_text())
    client = MlflowClient(info["mlflow"]["tracking_uri"])
    children = _children(info)
    assert len(children) == N_KILL
    for c in children:
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_accuracy")]
        assert steps == sorted(set(steps)) and steps[-1] == KILL_EPOCHS, steps
    assert client.get_run(info["mlflow"]["parent_run_id"]).info.status == "FINISHED"


def test_resumed_run_keeps_what_optuna_learnt(kill_chain):
    """Optuna: one COMPLETE trial per Tune trial, none left RUNNING by the killed drivers."""
    import optuna

    assert kill_chain["final"]["rc"] == 0, kill_chain["final"]["stderr"]
    db = kill_chain["run_dir"] / "optuna.db"
    study = optuna.load_study(study_name="k", storage=f"sqlite:///{db}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == N_KILL
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


def test_a_finished_run_is_not_resumed_again(kill_chain, run_cli):
    """Nothing is left to do, which is not an error (in-process: not a test of the process)."""
    assert kill_chain["final"]["rc"] == 0, kill_chain["final"]["stderr"]
    rc, _, err = run_cli(["resume", "k", "--home", kill_chain["home"].root])
    assert rc == 0 and f"run k is finished ({N_KILL} trials): nothing left to do" in err


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
