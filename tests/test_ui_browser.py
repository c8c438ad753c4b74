"""`ratio-search ui` in a real browser: headless Chromium renders the MLflow UI's React pages.

Skipped when no Chromium binary is installed (CI's .ci/run installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ratio_search.home import Home
from ratio_search.tracking import MLflowTrialCallback, SearchTracker, wait_for_http

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


CHROMIUM = _chromium()


@dataclass
class FakeTrial:
    trial_id: str
    config: dict = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dump_dom(url: str, profile: Path) -> str:
    """The DOM of ``url`` after the page's scripts ran (15 s of virtual time)."""
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        "--dump-dom",
        url,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    return res.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary (chromium / /usr/bin/chromium)")
def test_ui_opens_on_the_runs_table_as_a_user_clicks(tmp_path: Path) -> None:
    """Root page -> the experiment's link -> the runs table (the printed address's view) with the
    parent and its nested trials and their datasets; the models page."""
    from ratio_search.search.runinfo import MlflowInfo, RunInfo

    home = Home(tmp_path / "home")
    run_dir = home.runs / "ui-check"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("data:\n  source: phantom\n  image_size: 16\n")
    info = RunInfo(name="ui-check", n_trials=2, data_key="datakey0123456789",
                   mlflow=MlflowInfo(tracking_uri=home.tracking_uri()))  # fmt: skip
    info.save(run_dir)
    tracker = SearchTracker(home.tracking_uri(), "ratio-search", run_dir, metric="val_accuracy")
    parent = tracker.start_parent("ui-check-search", {"n_trials": 2})
    info.mlflow.experiment_id, info.mlflow.parent_run_id = tracker.experiment_id, parent
    info.save(run_dir)
    cb = MLflowTrialCallback(tracker, strict=True)
    for i, r in enumerate((0.0, 0.5)):
        trial = FakeTrial(f"uitrial_0000{i}", {"r": r, "guidance": 2.0, "steps": 10, "seed": 0})
        cb.on_trial_start(0, [], trial)
        cb.on_trial_result(
            0,
            [],
            trial,
            {"epoch": 1, "val_accuracy": 0.6 + 0.1 * i, "confusion_matrix": "[[3, 1], [1, 3]]",
             "pool_key": "poolkey0123" if r else ""},
        )  # fmt: skip
        cb.on_trial_complete(0, [], trial)
    tracker.finish_parent()
    exp_id = tracker.experiment_id
    child_ids = {c.data.tags["ray_trial_id"]: c.info.run_id for c in tracker.children(parent)}
    assert len(child_ids) == 2
    # A registered model (the real registration is tests/test_mlflow_model.py's).
    tracker.client.create_registered_model("ui-check-classifier", description="the answer")

    port = _free_port()
    env = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RATIO_SEARCH_HOME")
    }
    log = open(tmp_path / "ui.out", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "ratio_search.cli", "ui", "--home", str(home.root),
         "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    printed = f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    try:
        assert wait_for_http(f"{base}/health", timeout=90, proc=proc), (
            f"the UI did not answer: {(tmp_path / 'ui.out').read_text()}"
        )
        # The addresses are printed once the server answers: the root and the newest search's.
        deadline = time.monotonic() + 10
        while printed not in (tmp_path / "ui.out").read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        out = (tmp_path / "ui.out").read_text()
        assert f"MLflow UI at {base}" in out and f"newest search ui-check: {printed}" in out

        # The root page links the experiment; its runs table, in the view the printed address
        # names (MLflow 3.17 keeps GenAI vs machine learning per browser, GenAI by default).
        dom = _dump_dom(f"{base}/", tmp_path / "chrome0")
        assert f'href="#/experiments/{exp_id}"' in dom and "ratio-search" in dom
        link = f"{base}/#/experiments/{exp_id}?workflowType=machine_learning"
        dom = _dump_dom(link, tmp_path / "chrome1")
        for words in ("ui-check-search", "Dataset", "datakey0123456789"):
            assert words in dom, f"{words!r} not on the experiment's page"
        assert "No data available" not in dom  # not the GenAI overview
        # Ordered by name, the table lists the nested trials as rows of their own.
        dom = _dump_dom(f"{printed}&orderByKey=attributes.run_name&orderByAsc=true",
                        tmp_path / "chrome2")  # fmt: skip
        for words in ("ui-check-search", "trial-uitrial_00000", "trial-uitrial_00001",
                      "datakey0123456789", "poolkey0123", "synthetic"):  # fmt: skip
            assert words in dom, f"{words!r} not in the runs table"

        # The registered classifier on the models page.
        dom = _dump_dom(f"{base}/#/models", tmp_path / "chrome3")
        assert "ui-check-classifier" in dom

        # The UI serves the trials' artifacts from the home's mlruns/artifacts.
        url = (
            f"{base}/get-artifact?path=confusion_matrix.json&run_uuid={child_ids['uitrial_00001']}"
        )
        with urllib.request.urlopen(url, timeout=30) as r:
            assert json.loads(r.read())["confusion_matrix"] == [[3, 1], [1, 3]]
    finally:
        proc.send_signal(signal.SIGTERM)  # the CLI stops the MLflow server it started, then exits
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == 0
    # Nothing is left listening on the port.
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_ui_server_takes_remote_writers(tmp_path: Path) -> None:
    """`ui --server`: a tracker pointed at http://HOST:PORT writes runs and artifacts into the home."""
    home = Home(tmp_path / "home")
    port = _free_port()
    env = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RATIO_SEARCH_HOME")
    }
    log = open(tmp_path / "server.out", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ratio_search.cli",
            "ui",
            "--server",
            "--home",
            str(home.root),
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for_http(f"{url}/health", timeout=90, proc=proc), (
            tmp_path / "server.out"
        ).read_text()
        deadline = time.monotonic() + 10
        while (
            "--tracking-uri" not in (tmp_path / "server.out").read_text()
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert f"--tracking-uri {url}" in (tmp_path / "server.out").read_text()

        run_dir = tmp_path / "client-run"  # a client's run folder, elsewhere
        run_dir.mkdir()
        tracker = SearchTracker(url, "ratio-search", run_dir, metric="val_accuracy")
        parent = tracker.start_parent("remote-search", {"n_trials": 1})
        cb = MLflowTrialCallback(tracker, strict=True)
        trial = FakeTrial("remote_00000", {"r": 0.5, "seed": 0})
        cb.on_trial_start(0, [], trial)
        cb.on_trial_result(
            0, [], trial, {"epoch": 1, "val_accuracy": 0.75, "confusion_matrix": "[[2, 0], [1, 1]]"}
        )
        cb.on_trial_complete(0, [], trial)
        tracker.finish_parent()
        (child,) = tracker.children(parent)
        assert child.data.metrics["val_accuracy"] == 0.75
        assert tracker.client.get_run(parent).data.tags["best_trial_id"] == "remote_00000"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    # The server kept the runs in the home's sqlite store and the artifacts under mlruns/artifacts.
    assert (home.mlruns / "mlflow.db").is_file()
    local = SearchTracker(home.tracking_uri(), "ratio-search", None)
    assert [c.data.tags["ray_trial_id"] for c in local.children(parent)] == ["remote_00000"]
    pngs = list((home.mlruns / "artifacts").rglob("confusion_matrix.png"))
    assert len(pngs) == 1 and child.info.run_id in str(pngs[0])


def test_ui_bad_inputs_are_one_line_errors(tmp_path: Path, run_cli, monkeypatch) -> None:
    """In-process (``run_cli``): both are refused before any server starts."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RATIO_SEARCH_HOME", raising=False)
    base = ["ui", "--home", str(tmp_path / "home")]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc, _, err = run_cli([*base, "--port", str(port)])
    assert rc == 2 and err.count("\n") == 1, err
    assert f"port {port} on 127.0.0.1 is already in use" in err

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    rc, _, err = run_cli([*base, "--port", str(_free_port())])
    assert rc == 2 and err.count("\n") == 1, err
    assert "MLFLOW_TRACKING_URI is http://tracking.example:5000" in err
