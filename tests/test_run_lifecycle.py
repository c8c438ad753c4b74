"""In-process: one driver per run (the lock, its holder, unique
default names), run.json from the first second, the ordered clean-up, trial records that cannot
be lost (torn line, failed write, rebuilt record) and the one-line errors of `run`/`resume`/`status`.

The SIGKILL-at-every-phase and racing-driver tests are subprocess tests in test_resume.py."""

from __future__ import annotations

import json
import os
import threading
import time
import types
from pathlib import Path

import pytest
import yaml

from ratio_search._io import utc_now
from ratio_search.errors import SearchError
from ratio_search.home import Home
from ratio_search.search import runs
from ratio_search.search.resources import RayStart
from ratio_search.search.runinfo import RunInfo
from ratio_search.search.trials import (
    TrialLog,
    TrialLogError,
    append_trial,
    read_trials,
    repair_trials,
)

TINY_DATA = {"image_size": 16, "phantom_n_per_class": 4, "phantom_val_per_class": 4,
             "phantom_test_per_class": 2, "min_val_per_class": 0}  # fmt: skip


def _one_line(rc: int, err: str, *words: str) -> str:
    assert rc == 2, err
    # progress lines may come first (the set-up's); the error is one line
    lines = [ln for ln in err.splitlines() if ln.startswith("ratio-search")]
    assert len(lines) == 1 and lines[0].startswith("ratio-search: error:"), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _space(tmp_path: Path, doc: dict | None = None) -> Path:
    """A space without generated images (r = 0 only): no model, no pools, so nothing slow."""
    doc = doc or {
        "params": {"r": {"type": "categorical", "choices": [0.0]}},
        "fixed": {"epochs": 1, "batch_size": 8, "widths": [2, 4], "fc": 4},
        "data": dict(TINY_DATA),
    }
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(doc) if doc != "empty" else "")
    return p


def _fake_run(home: Home, name: str, state: str, **ray) -> Path:
    folder = home.runs / name
    folder.mkdir(parents=True)
    RunInfo(name=name, state=state, created=utc_now(), n_trials=2).save(folder)
    return folder


# ----------------------------------------------------------------------- one driver per run


@pytest.mark.unit
def test_the_lock_names_its_holder_and_frees_with_release(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    lock = runs.RunLock(folder).acquire()
    holder = runs.lock_holder(folder)
    assert holder["pid"] == os.getpid() and holder["host"] == runs.hostname() and holder["since"]
    with pytest.raises(
        SearchError, match=rf"run r is in use by the driver on .* \(pid {os.getpid()}, since "
    ):
        runs.RunLock(folder).acquire(wait=0.1)
    lock.release()
    assert runs.lock_holder(folder) is None and not (folder / runs.HOLDER_FILE).exists()
    runs.RunLock(folder).acquire(wait=0).release()  # free again


@pytest.mark.unit
def test_default_names_never_collide(tmp_path):
    home = Home.resolve(tmp_path)
    names = {runs.new_run_folder(home, None)[0] for _ in range(3)}  # same second
    assert len(names) == 3 and all((home.runs / n).is_dir() for n in names)


@pytest.mark.edges
def test_run_and_resume_of_a_locked_run_refuse_naming_the_holder(tmp_path, run_cli):
    home = Home.resolve(tmp_path)
    folder = _fake_run(home, "x", "running")
    lock = runs.RunLock(folder).acquire()
    try:
        for args in (["run", "--space", _space(tmp_path), "--name", "x"], ["resume", "x"]):
            rc, _, err = run_cli([*args, "--home", tmp_path])
            _one_line(rc, err, "run x is in use by the driver on", f"pid {os.getpid()}", "since")
        assert runs.run_status(home, "x")["state"] == "running"  # the lock says it is alive
    finally:
        lock.release()
    assert runs.run_status(home, "x")["state"] == "crashed"  # lock free, run.json says running


@pytest.mark.edges
def test_resume_waits_for_an_old_driver_still_shutting_down(tmp_path, run_cli, monkeypatch):
    home = Home.resolve(tmp_path)
    folder = _fake_run(home, "w", "interrupted")
    lock = runs.RunLock(folder).acquire()

    def old_driver_ends() -> None:  # it finishes its clean-up, recording the run as finished
        time.sleep(3.0)  # longer than a driver's first try for the lock (2 s)
        info = RunInfo.load(folder)
        info.state = "finished"
        info.save(folder)
        lock.release()

    threading.Thread(target=old_driver_ends).start()
    t0 = time.time()
    rc, out, err = run_cli(["resume", "w", "--home", tmp_path])
    assert rc == 0, err
    assert time.time() - t0 >= 2.9  # it waited for the lock instead of going ahead
    assert "waiting for the old driver of w" in err and "nothing left to do" in err
    assert "search w finished" in out


@pytest.mark.edges
def test_resume_of_a_finished_run_stops_the_ray_its_killed_driver_left(tmp_path, run_cli):
    """Killed in its clean-up after recording "finished", a driver leaves its private Ray up:
    `resume` says nothing is left to do and stops those processes (found by the temp dir)."""
    import subprocess
    import sys

    from ratio_search.search.procs import find_ray_processes

    home = Home.resolve(tmp_path)
    folder = _fake_run(home, "f", "finished")
    temp_dir = tmp_path / "rs-leftover"
    temp_dir.mkdir()
    info = RunInfo.load(folder)
    info.ray.temp_dir = str(temp_dir)
    info.save(folder)
    # a stand-in for a raylet: a process whose command line names the run's Ray temp dir
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(temp_dir)])
    try:
        assert find_ray_processes(str(temp_dir)) == [proc.pid]
        rc, _, err = run_cli(["resume", "f", "--home", tmp_path])
        assert rc == 0 and "nothing left to do" in err, err
        assert f"stopped 1 leftover Ray processes of f: [{proc.pid}]" in err
        assert proc.wait(timeout=10) is not None and find_ray_processes(str(temp_dir)) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------- run.json and clean-up


@pytest.mark.e2e
def test_a_run_whose_ray_cannot_start_is_one_line_and_stays_resumable(
    tmp_path, run_cli, monkeypatch
):
    """run.json is there from the start (state, phase, host); a failure after the set-up is one
    line, the clean-up records the run as resumable and frees the lock."""
    import ray

    def broken_init(*a, **k):
        raise RuntimeError("Failed to start the GCS\nport 6379 in use")

    monkeypatch.setattr(ray, "init", broken_init)
    args = ["run", "--space", _space(tmp_path), "--trials", "1", "--name", "nr", "--no-tracking"]
    rc, _, err = run_cli([*args, "--home", tmp_path])
    _one_line(rc, err, "cannot start a local Ray", "port 6379 in use", "the run is kept")
    folder = tmp_path / "runs" / "nr"
    info = RunInfo.load(folder)
    assert info.state == "interrupted" and info.phase == "data" and info.host == runs.hostname()
    assert info.data_key and info.n_trials == 1
    assert runs.lock_holder(folder) is None
    assert "resume it with: ratio-search resume nr" in err
    assert runs.run_status(Home.resolve(tmp_path), "nr")["state"] == "interrupted"


@pytest.mark.unit
def test_clean_up_runs_every_step_and_reports_the_first_failure(tmp_path, monkeypatch):
    from ratio_search.search import driver

    home = Home.resolve(tmp_path)
    folder = _fake_run(home, "c", "running")
    info = RunInfo.load(folder)
    lock = runs.RunLock(folder).acquire()
    calls = []

    class Tracker:
        def finish_parent(self, status):
            calls.append(status)
            raise RuntimeError("store gone")

    def broken_save(self, folder):
        raise OSError("disk full")

    monkeypatch.setattr(RunInfo, "save", broken_save)
    failed = driver._close(home, info, folder, Tracker(), "interrupted", lock, RayStart())
    assert failed[0].startswith("could not record the run's state in run.json: OSError: disk full")
    assert "close the MLflow parent run" in failed[1] and len(failed) == 2
    assert calls == ["KILLED"]  # the MLflow step ran although run.json failed
    assert not lock.held and runs.lock_holder(folder) is None  # and the lock was released


@pytest.mark.unit
def test_ray_starts_in_the_background_and_its_error_reaches_the_driver(monkeypatch):
    """The driver starts Ray while the set-up goes on (search/resources.RayStart): the start
    runs once, wait() blocks until it is done and raises its error in the calling thread, and
    settle() (the clean-up's) only waits; release() ends the thread."""
    import threading
    import time

    from ratio_search.search import resources
    from ratio_search.search.resources import EnvironmentProblem

    calls, gate = [], threading.Event()

    def slow_init(*args):
        calls.append((args, threading.current_thread().name))
        gate.wait(5)
        time.sleep(0.05)
        raise EnvironmentProblem("cannot start a local Ray: port in use")

    monkeypatch.setattr(resources, "init_ray", slow_init)
    monkeypatch.delenv("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", raising=False)
    start = RayStart("/tmp/t", None, 2, 0, 5.0)
    start.start()
    start.start()  # once only
    # Ray's C++ crash handler would abort on SIGTERM during the set-up: off before ray starts
    assert os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] == "1"
    gate.set()
    t = time.perf_counter()
    start.settle()  # waits for the start to end, raises nothing
    assert time.perf_counter() - t >= 0.04
    with pytest.raises(EnvironmentProblem, match="port in use"):
        start.wait()
    assert calls == [(("/tmp/t", None, 2, 0, 5.0), "ray-start")]
    start.release()
    RayStart().settle()  # never started: nothing to wait for

    # Started fine: the thread that started Ray outlives wait(), until release(), since Ray's
    # processes get SIGKILL when the thread that started them ends (PR_SET_PDEATHSIG).
    monkeypatch.setattr(resources, "init_ray", lambda *a: None)
    ok = RayStart("/tmp/t", None, 2, 0, 5.0)
    ok.wait()
    time.sleep(0.05)
    assert ok._thread.is_alive()
    ok.release()
    assert not ok._thread.is_alive()


# ------------------------------------------------------------------------ trial records


def _trial(tid: str, **kw):
    return types.SimpleNamespace(trial_id=tid, config={"r": 0.5}, **kw)


@pytest.mark.unit
def test_a_torn_line_is_repaired_before_the_next_append(tmp_path):
    append_trial(tmp_path, {"trial_id": "a", "state": "TERMINATED"})
    with open(tmp_path / "trials.jsonl", "a") as f:
        f.write('{"trial_id": "b", "sta')  # the driver was killed mid-write
    log = TrialLog(tmp_path)  # a new driver's log repairs the file first
    log.event(_trial("c"), "RUNNING")
    lines = (tmp_path / "trials.jsonl").read_text().splitlines()
    assert [json.loads(ln)["trial_id"] for ln in lines] == ["a", "c"]
    # a whole record that only lacks its newline is kept
    with open(tmp_path / "trials.jsonl", "a") as f:
        f.write('{"trial_id": "d", "state": "RUNNING"}')
    assert repair_trials(tmp_path) == 0 and set(read_trials(tmp_path)) == {"a", "c", "d"}


@pytest.mark.unit
def test_a_failed_write_surfaces_and_is_not_remembered(tmp_path, monkeypatch):
    from ratio_search.search import trials

    log = TrialLog(tmp_path)
    tries = []

    def full_disk(folder, rec):
        tries.append(rec["trial_id"])
        raise OSError(28, "No space")

    monkeypatch.setattr(trials, "append_trial", full_disk)
    with pytest.raises(
        TrialLogError, match=r"trials.jsonl \(\[Errno 28\] No space\); the search stops"
    ):
        log.event(_trial("a"), "TERMINATED")
    assert tries == ["a", "a"]  # retried once, then surfaced
    assert "a" not in log.last  # not remembered as written
    monkeypatch.undo()
    log.event(_trial("a"), "TERMINATED")  # once the disk is back, the record goes in
    assert read_trials(tmp_path)["a"]["state"] == "TERMINATED"


@pytest.mark.unit
def test_a_missing_record_is_rebuilt_from_the_tune_state_once(tmp_path, monkeypatch):
    import ray.tune

    from ratio_search.search.tuner import reconcile_trials

    append_trial(
        tmp_path, {"trial_id": "a", "state": "TERMINATED", "metrics": {"val_accuracy": 0.7}}
    )
    append_trial(tmp_path, {"trial_id": "b", "state": "RUNNING"})  # its TERMINATED line was lost
    trials = [
        _trial("a", status="TERMINATED", last_result={"epoch": 2, "val_accuracy": 0.7}),
        _trial("b", status="TERMINATED", last_result={"epoch": 2, "val_accuracy": 0.9}),
        _trial("c", status="RUNNING", last_result={}),
    ]
    monkeypatch.setattr(
        ray.tune, "ExperimentAnalysis", lambda p: types.SimpleNamespace(trials=trials)
    )
    assert reconcile_trials(tmp_path, None) == (0, 1)
    b = read_trials(tmp_path)["b"]
    assert b["state"] == "TERMINATED" and b["rebuilt"] and b["metrics"]["val_accuracy"] == 0.9
    assert b["best"] == {"value": 0.9, "epoch": 2}
    assert reconcile_trials(tmp_path, None) == (0, 0)  # nothing rebuilt twice
    lines = (tmp_path / "trials.jsonl").read_text().splitlines()
    assert sum(json.loads(ln)["trial_id"] == "b" for ln in lines) == 2


# --------------------------------------------------------------- one line for bad input


@pytest.mark.edges
@pytest.mark.parametrize(
    "doc, extra, words",
    [
        (None, ["--trials", "0"], ["--trials: must be >= 1, got 0"]),
        (None, ["--trials", "-3"], ["--trials: must be >= 1, got -3"]),
        ("empty", [], ["space.yaml: no parameters to search"]),
        (None, ["--tracking-uri", "http://127.0.0.1:9"],
         ["cannot reach the MLflow store at http://127.0.0.1:9", "--no-tracking"]),
    ],
)  # fmt: skip
def test_bad_run_input_is_one_line_and_starts_nothing(tmp_path, run_cli, doc, extra, words):
    space = _space(tmp_path, doc)
    rc, _, err = run_cli(["run", "--space", space, *extra, "--home", tmp_path])
    line = _one_line(rc, err, *words)
    if doc == "empty":
        assert str(space) in line
    assert not list((tmp_path / "runs").glob("*/run.json"))


@pytest.mark.edges
@pytest.mark.parametrize(
    "content, words",
    [
        ("[1, 2]", ["holds a JSON list, not an object"]),
        (json.dumps({"name": "b", "state": "running", "ray": {"driver_pid": "abc"}}),
         ["ray.driver_pid: 'abc' is not a process id"]),
        (json.dumps({"name": "b", "state": "running", "ray": 7}), ["ray: must be an object"]),
        ("{not json", ["cannot read the run's state"]),
    ],
)  # fmt: skip
def test_a_broken_run_json_is_named_with_its_repair_and_status_lists_the_others(
    tmp_path, run_cli, content, words
):
    home = Home.resolve(tmp_path)
    _fake_run(home, "good", "finished")
    (home.runs / "b").mkdir()
    (home.runs / "b" / "run.json").write_text(content)
    for cmd in ("status", "resume"):
        rc, _, err = run_cli([cmd, "b", "--home", tmp_path])
        _one_line(rc, err, "runs/b/run.json", *words, "ratio-search clean runs --name b --yes")
    rc, out, err = run_cli(["status", "--json", "--home", tmp_path])
    assert rc == 0, err
    rows = {r["name"]: r for r in json.loads(out)["runs"]}
    assert rows["good"]["state"] == "finished" and rows["b"]["state"] == "broken"
    assert "runs/b/run.json" in rows["b"]["error"]
    rc, out, err = run_cli(["status", "--home", tmp_path])
    assert rc == 0 and "good" in out and "broken" in out and "runs/b/run.json" in err


@pytest.mark.unit
def test_run_cli_puts_the_signal_handlers_back_after_an_interrupted_command(monkeypatch, run_cli):
    """An interrupted ``main`` ignores SIGINT/SIGTERM (it is leaving, exit 130); in-process, the
    ``run_cli`` fixture puts the handlers back, or the rest of the test run would ignore Ctrl-C."""
    import signal

    from ratio_search.cli import search as cli_search

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_search, "cmd_status", interrupted)

    def marker(signum, frame):  # a handler of our own: the process's may be SIG_IGN (xdist)
        pass

    old = {s: signal.signal(s, marker) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc, _, err = run_cli(["status"])
        assert rc == 130 and "ratio-search: interrupted" in err
        assert {s: signal.getsignal(s) for s in old} == dict.fromkeys(old, marker)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["exec", "eval"])
def test_an_interrupt_inside_a_string_exec_still_exits_130(tmp_path, how):
    """Under ``python -m`` an interrupt that left a string exec/eval (dataclasses builds its
    methods that way, so a signal during an import can land there) made CPython kill itself with
    SIGINT at exit (-2) after main had printed "interrupted": the racing-drivers test's rare
    failure under load. The command here is interrupted exactly there, every time."""
    import subprocess
    import sys

    (tmp_path / "interrupted_cli.py").write_text(
        "import ratio_search.cli.finetune as f\n"
        "def boom(args):\n"
        f"    {how}('(_ for _ in ()).throw(KeyboardInterrupt)', {{}})\n"
        "f.cmd_finetune = boom\n"
        "from ratio_search.cli import run\n"
        "run()\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    p = subprocess.run(
        [sys.executable, "-m", "interrupted_cli", "finetune", "--home", str(tmp_path / "h")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert p.returncode == 130, (p.returncode, p.stderr[-2000:])
    assert p.stderr.strip().splitlines()[-1] == "ratio-search: interrupted"
    assert "Traceback" not in p.stderr
