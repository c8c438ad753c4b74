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
def test_ui_shows_parent_and_nested_trials(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    run_dir = home.runs / "ui-check"
    run_dir.mkdir(parents=True)
    tracker = SearchTracker(home.tracking_uri(), "ratio-search", run_dir, metric="val_accuracy")
    parent = tracker.start_parent("ui-check-search", {"n_trials": 2})
    cb = MLflowTrialCallback(tracker, strict=True)
    for i, r in enumerate((0.0, 0.5)):
        trial = FakeTrial(f"uitrial_0000{i}", {"r": r, "guidance": 2.0, "steps": 10, "seed": 0})
        cb.on_trial_start(0, [], trial)
        cb.on_trial_result(
            0,
            [],
            trial,
            {"epoch": 1, "val_accuracy": 0.6 + 0.1 * i, "confusion_matrix": "[[3, 1], [1, 3]]"},
        )
        cb.on_trial_complete(0, [], trial)
    tracker.finish_parent()
    exp_id = tracker.experiment_id
    child_ids = {c.data.tags["ray_trial_id"]: c.info.run_id for c in tracker.children(parent)}
    assert len(child_ids) == 2

    port = _free_port()
    env = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RATIO_SEARCH_HOME")
    }
    log = open(tmp_path / "ui.out", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ratio_search.cli",
            "ui",
            "--home",
            str(home.root),
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_for_http(f"{base}/health", timeout=90, proc=proc), (
            f"the UI did not answer: {(tmp_path / 'ui.out').read_text()}"
        )
        # The address is printed once the server answers.
        deadline = time.monotonic() + 10
        while base not in (tmp_path / "ui.out").read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert f"MLflow UI at {base}" in (tmp_path / "ui.out").read_text()

        # The parent run's page lists its nested child runs (found through mlflow.parentRunId).
        dom = _dump_dom(f"{base}/#/experiments/{exp_id}/runs/{parent}", tmp_path / "chrome1")
        assert "ui-check-search" in dom
        assert "Child runs" in dom
        after = dom[dom.index("Child runs") :]
        assert "trial-uitrial_00000" in after and "trial-uitrial_00001" in after

        # The experiment's runs table shows the parent and both trials (ordered by name, the
        # table lists children as rows of their own instead of folding them under the parent).
        dom = _dump_dom(
            f"{base}/#/experiments/{exp_id}/runs?orderByKey=attributes.run_name&orderByAsc=true",
            tmp_path / "chrome2",
        )
        for name in ("ui-check-search", "trial-uitrial_00000", "trial-uitrial_00001"):
            assert name in dom, f"{name} not rendered on the runs page"

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


def test_ui_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RATIO_SEARCH_HOME")
    }
    base = [sys.executable, "-m", "ratio_search.cli", "ui", "--home", str(tmp_path / "home")]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = subprocess.run(
            [*base, "--port", str(port)], capture_output=True, text=True, env=env, timeout=120
        )
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in res.stderr

    env["MLFLOW_TRACKING_URI"] = "http://tracking.example:5000"
    res = subprocess.run(
        [*base, "--port", str(_free_port())], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "MLFLOW_TRACKING_URI is http://tracking.example:5000" in res.stderr
