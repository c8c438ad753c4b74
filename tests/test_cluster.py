"""A search on a real two-node Ray cluster, on one machine (docs/cluster.md, tested).

A head and a second node are started the way a team starts them on a GPU cluster, with
``ray start`` (``--block``, each in its own session so that every process it spawns is ours to
find and stop by PID); then a search joins the cluster, once with ``ratio-search run --address``
and once submitted as a Ray Job (``ray job submit --working-dir``). Each node has one CPU, each
trial asks for one and two run at once, so the two trials can only run on different nodes: the
``node_id`` each trial reports must be the head's and the second node's (read independently
from each node's raylet log). On one machine the home folder (run folder, model, pools) is
shared storage anyway; on a real cluster it lives on NFS or similar.

Nothing here runs ``ray stop`` (it would stop every Ray on the machine): both nodes are stopped
by PID, and the test checks that no process of their sessions is left.

Ray 2.60 turns token authentication on for a head that finds ``~/.ray/auth_token``, but a
``ray start --address`` node reads a token only when ``RAY_AUTH_MODE=token``; so the cluster
gets its own token (``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN``) in every process, independent
of whatever ``~/.ray`` holds, as docs/cluster.md recommends.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ratio_search.home import Home

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: `ray` and `ratio-search` live there
RAY = str(BIN / "ray")
START_TIMEOUT = 120.0  # seconds for one `ray start` on a loaded 2-core machine (measured: 15-25)

# Tiny phantom data, as in the search tests: 8 training images per class, 16 px.
TINY_DATA = {
    "image_size": 16,
    "phantom_n_per_class": 8,
    "phantom_val_per_class": 8,
    "phantom_test_per_class": 2,
    "min_val_per_class": 0,
}


# ------------------------------------------------------------------------------ the cluster


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def session_pids(sids: set[int]) -> list[int]:
    """Every live process whose session id is one of ``sids`` (our ``ray start`` processes are
    session leaders, and Ray's GCS, raylets, agents and workers stay in their sessions)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp session ...": comm may hold spaces, so split after ')'
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[3]) in sids:
            found.append(int(proc.name))
    return found


@dataclass
class Node:
    """One ``ray start --block`` process, its own temp dir and log."""

    proc: subprocess.Popen
    temp_dir: Path
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    def wait_started(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in self.log_text():
            if self.proc.poll() is not None:
                pytest.fail(
                    f"ray start exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"ray start not up after {timeout:.0f} s:\n{self.log_text()[-3000:]}")
            time.sleep(0.25)

    def node_id(self) -> str:
        """The node id this node's raylet logged at start-up (``Setting node ID node_id=...``)."""
        log = self.temp_dir / "session_latest" / "logs" / "raylet.out"
        m = re.search(r"node_id=([0-9a-f]{56})", log.read_text(errors="replace"))
        assert m, f"no node id in {log}"
        return m.group(1)


def start_node(args: list[str], temp_dir: Path, env: dict[str, str]) -> Node:
    """``ray start ARGS --block`` as a session leader, logging to ``temp_dir/start.log``."""
    temp_dir.mkdir(parents=True)
    log = temp_dir / "start.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [
                RAY,
                "start",
                *args,
                f"--temp-dir={temp_dir}",
                "--object-store-memory=100000000",
                "--disable-usage-stats",
                "--block",
            ],  # fmt: skip
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    return Node(proc, temp_dir, log)


def stop_nodes(nodes: list[Node], timeout: float = 30.0) -> list[int]:
    """SIGTERM each ``ray start --block`` (it stops its GCS, raylet, agents and workers), then
    SIGKILL, by PID, whatever of their sessions is still alive. Returns the PIDs left alive."""
    sids = {n.proc.pid for n in nodes}
    for n in nodes:
        if n.proc.poll() is None:
            n.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for n in nodes:
        try:
            n.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            n.proc.kill()
            n.proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while (left := session_pids(sids)) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    return session_pids(sids)


def make_tiny(tmp: Path) -> tuple[Home, Path, Path]:
    """A home (the shared storage) with a tiny fine-tuned generator, and a two-trial space:
    R = 0.25 and 0.5 on a grid, one pool (guidance 2, 2 steps) that both trials read."""
    import torch

    from ratio_search.config import FinetuneConfig
    from ratio_search.data import load_dataset
    from ratio_search.diffusion import finetune
    from ratio_search.diffusion.tiny import TEST_UNET
    from ratio_search.search.space import parse_space

    torch.set_num_threads(1)
    home = Home.resolve(tmp / "home")
    data = load_dataset(parse_space({"data": TINY_DATA}).data_config(), home)
    cfg = FinetuneConfig(max_steps=2, from_scratch=True, batch_size=8)
    model = finetune(data, cfg, home, progress=False, unet_config=TEST_UNET).path
    space = {
        "params": {"r": {"type": "categorical", "choices": [0.25, 0.5]}},
        "fixed": {"mode": "replace", "guidance": 2.0, "steps": 2, "epochs": 2, "batch_size": 8,
                  "widths": [2], "fc": 4},
        # no R = 0 calibration: these searches test where trials run, and the lost-node one's
        # 60 epochs would be calibrated against 120 first
        "search": {"sampler": "grid", "calibrate": "off"},
        "data": TINY_DATA,
    }  # fmt: skip
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return home, Path(model), path


@dataclass
class Cluster:
    head: Node
    worker: Node
    address: str  # 127.0.0.1:GCS_PORT, for `run --address`
    dashboard: str  # http://127.0.0.1:PORT, for `ray job submit --address`
    env: dict[str, str]
    home: Home  # the shared storage: run folders, the model, pools
    model: Path
    space: Path


def cluster_env() -> dict[str, str]:
    """The environment of every process of the test cluster (nodes, driver, job client)."""
    env = dict(os.environ)
    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RATIO_SEARCH_HOME", "CUDA_VISIBLE_DEVICES"):
        env.pop(k, None)
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # `ratio-search` for the Job's entrypoint
        OMP_NUM_THREADS="1",
        # a killed node is found dead within about 3 s (default: 5 failed checks 3 s apart)
        RAY_health_check_period_ms="1000",
        RAY_health_check_timeout_ms="1000",
        RAY_health_check_failure_threshold="3",
    )
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head (1 CPU, dashboard for Ray Jobs) and a second node (1 CPU), each with its own short
    temp dir (unix socket paths must stay under 107 characters; and two nodes sharing one temp
    dir would share, and delete, each other's Ray Jobs working dirs). The tiny model is built
    while the head starts."""
    root = Path(tempfile.mkdtemp(prefix="rsc-", dir="/tmp"))
    env = cluster_env()
    gcs, dash = free_port(), free_port()
    nodes: list[Node] = []
    t0 = time.monotonic()
    try:
        head = start_node(
            [
                "--head",
                f"--port={gcs}",
                "--num-cpus=1",
                "--num-gpus=0",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash}",
                f"--ray-client-server-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}",
            ],
            root / "h",
            env,
        )
        nodes.append(head)
        home, model, space = make_tiny(tmp_path_factory.mktemp("cluster"))
        head.wait_started()
        worker = start_node(
            [
                f"--address=127.0.0.1:{gcs}",
                "--num-cpus=1",
                "--num-gpus=0",
                f"--dashboard-agent-listen-port={free_port()}",
            ],
            root / "w",
            env,
        )
        nodes.append(worker)
        worker.wait_started()
        print(f"\ncluster up in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        yield Cluster(
            head, worker, f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}", env, home, model, space
        )
    finally:
        t1 = time.monotonic()
        left = stop_nodes(nodes)
        print(f"cluster stopped in {time.monotonic() - t1:.1f} s", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"Ray processes left running after stopping the nodes: {left}"


# ------------------------------------------------------------------------------ the search


def search_args(home: Home, model: Path, space: Path, name: str, *extra: str) -> list[str]:
    return ["ratio-search", "run", *extra, "--trials", "2", "--concurrency", "2",
            "--cpus-per-trial", "1", "--space", str(space), "--model", str(model),
            "--home", str(home.root), "--name", name, "--json"]  # fmt: skip


def last_json(text: str) -> dict:
    """The last line of ``text`` that is a JSON object (Ray Jobs wrap the output in log lines)."""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON object in the output:\n{text[-3000:]}")


def wait_for_idle_cpus(cluster: Cluster, timeout: float = 120) -> None:
    """Wait until the cluster shows both CPUs and none in use: an earlier search's actors may
    still hold one for a while on a loaded machine, and then a 2-trial search runs both trials
    on the other node, one after the other (what check_spread must not be fooled by)."""
    deadline = time.monotonic() + timeout
    while True:
        p = subprocess.run([RAY, "status", "--address", cluster.address], capture_output=True,
                           text=True, env=cluster.env, timeout=60)  # fmt: skip
        # " 0.0/2.0 CPU", with "(x used of y reserved in placement groups)" while a placement
        # group of a finished search still holds a CPU
        m = re.search(r"([\d.]+)/([\d.]+) CPU(.*)", p.stdout)
        if m and float(m.group(1)) == 0.0 and float(m.group(2)) >= 2.0 and "reserved" not in m[3]:
            return
        assert time.monotonic() < deadline, (p.stdout + p.stderr)[-2000:]
        time.sleep(1.0)


def check_spread(home: Home, name: str, out: dict, cluster: Cluster) -> None:
    """Both trials finished, one on each node, both read the one pool from the shared home."""
    assert out["name"] == name and out["state"] == "finished", out
    assert out["n_trials"] == 2 and out["n_errors"] == 0, out
    run_dir = home.runs / name
    last: dict[str, dict] = {}
    for line in (run_dir / "trials.jsonl").read_text().splitlines():
        rec = json.loads(line)
        last[rec["trial_id"]] = rec
    assert len(last) == 2 and {r["state"] for r in last.values()} == {"TERMINATED"}, last
    assert sorted(r["params"]["r"] for r in last.values()) == [0.25, 0.5]
    nodes = {r["node_id"] for r in last.values()}
    assert nodes == {cluster.head.node_id(), cluster.worker.node_id()}, (
        f"trials ran on {nodes}; head {cluster.head.node_id()}, worker {cluster.worker.node_id()}"
    )
    keys = {r["pool_key"] for r in last.values()}
    assert len(keys) == 1 and (home.pools / keys.pop() / "images.npy").is_file()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["state"] == "finished" and info["ray"]["address"]


@pytest.mark.slow
@pytest.mark.e2e
def test_run_with_address_spreads_trials_over_both_nodes(cluster):
    home, model, space = cluster.home, cluster.model, cluster.space
    wait_for_idle_cpus(cluster)
    t0 = time.monotonic()
    p = subprocess.run(
        search_args(home, model, space, "spread", "--address", cluster.address),
        capture_output=True,
        text=True,
        env=cluster.env,
        timeout=300,
    )
    print(f"search on the cluster: {time.monotonic() - t0:.1f} s", file=sys.stderr)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)  # stdout is the one JSON object
    check_spread(home, "spread", out, cluster)
    # MLflow got one child run per trial, tagged with the node it ran on
    from ratio_search.tracking import SearchTracker

    tracker = SearchTracker(out["tracking_uri"], run_dir=out["run_dir"])
    children = tracker.children(out["mlflow_parent_run_id"])
    assert len(children) == 2
    assert {r.data.tags["node_id"] for r in children} == {
        cluster.head.node_id(),
        cluster.worker.node_id(),
    }


@pytest.mark.slow
@pytest.mark.e2e
def test_ray_job_submit_runs_the_search_on_the_cluster(cluster):
    """``ray job submit --working-dir REPO -- ratio-search run ...``: the code is uploaded to the
    cluster, the driver runs on the head and joins the cluster through the RAY_ADDRESS that Ray
    sets for a Job (no --address needed), the trials run on both nodes."""
    home, model, space = cluster.home, cluster.model, cluster.space
    args = search_args(home, model, space, "job", "--no-tracking")
    wait_for_idle_cpus(cluster)
    t0 = time.monotonic()
    p = subprocess.run(
        [
            RAY,
            "job",
            "submit",
            "--address",
            cluster.dashboard,
            "--working-dir",
            str(REPO),
            "--",
            *args,
        ],
        capture_output=True,
        text=True,
        env=cluster.env,
        timeout=300,
    )
    print(f"search as a Ray Job: {time.monotonic() - t0:.1f} s", file=sys.stderr)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert re.search(r"Job 'raysubmit_\w+' succeeded", p.stdout + p.stderr)
    check_spread(home, "job", last_json(p.stdout), cluster)


@pytest.mark.slow
@pytest.mark.e2e
def test_asking_for_gpus_the_cluster_lacks_is_said_not_silent(cluster):
    """Ray would wait, without a word, for GPUs the cluster does not have: the driver says so
    (a warning: an autoscaling cluster would add them), and stops on SIGTERM."""
    home, model, space = cluster.home, cluster.model, cluster.space
    args = search_args(home, model, space, "no-gpus", "--address", cluster.address)
    args += ["--gpus", "1", "--gpus-per-trial", "0.5", "--no-tracking"]
    p = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                         env=cluster.env)  # fmt: skip
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(p.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120  # the driver prints it within about 20 s here
        while not any("warning:" in ln for ln in seen) and time.monotonic() < deadline:
            assert p.poll() is None, "".join(seen)[-3000:]
            time.sleep(0.2)
    finally:
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
    reader.join(timeout=10)
    warning = [ln for ln in seen if "warning:" in ln]
    assert warning, "".join(seen)[-3000:]
    assert "--gpus 1 asked for, the Ray cluster has 0 GPUs" in warning[0]
    assert "waits until the cluster has them" in warning[0]


@pytest.mark.slow
@pytest.mark.e2e
def test_the_cluster_refuses_a_client_without_its_token(cluster):
    """Token authentication is enforced, not just configured: the dashboard (Ray Jobs API)
    answers 401 without the token and with a wrong one, and 200 with it (docs/cluster.md)."""
    import urllib.error
    import urllib.request

    def status(token: str | None) -> int:
        req = urllib.request.Request(f"{cluster.dashboard}/api/version")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert status(None) in (401, 403)
    assert status("0" * 64) in (401, 403)
    assert status(cluster.env["RAY_AUTH_TOKEN"]) == 200


# The driver of the lost-node test: `run` has no --max-failures flag; the library's option is it.
LOST_NODE_DRIVER = """
import json, sys
from ratio_search.home import Home
from ratio_search.search import run_search
home, name, space, model, address = sys.argv[1:6]
out = run_search(Home.resolve(home), name=name, space=space, model=model, n_trials=2,
                 concurrency=2, cpus_per_trial=1, address=address, max_failures=3,
                 progress=False)
print(json.dumps(out, default=str))
"""


def _trial_events(run_dir: Path) -> list[dict]:
    path = run_dir / "trials.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return out


@pytest.mark.slow
@pytest.mark.e2e
def test_a_lost_worker_node_costs_a_retry_not_a_trial(cluster, tmp_path):
    """A lost worker node. The second node is killed (every process of its session, SIGKILL) while
    it runs a trial: that trial is retried on the head, the search finishes with exactly its 2
    trials, and the retried trial is one MLflow child run tagged with its attempts.

    Runs last among the cluster tests: the cluster has one node afterwards."""
    home, model = cluster.home, cluster.model
    doc = yaml.safe_load(cluster.space.read_text())
    doc["fixed"]["epochs"] = 60  # long enough to be killed in the middle (seconds here)
    space = tmp_path / "long.yaml"
    space.write_text(yaml.safe_dump(doc))
    worker_id = cluster.worker.node_id()
    run_dir = home.runs / "lost-node"
    p = subprocess.Popen(
        [sys.executable, "-c", LOST_NODE_DRIVER, str(home.root), "lost-node", str(space),
         str(model), cluster.address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster.env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300  # data, pool and Ray start-up on a loaded machine
        while True:
            on_worker = [e for e in _trial_events(run_dir) if e.get("node_id") == worker_id]
            assert not any(e["state"] == "TERMINATED" for e in on_worker), "finished unkilled"
            if any(e["state"] == "RUNNING" and e.get("epoch") for e in on_worker):
                break  # the worker's trial has reported an epoch: it is running there now
            assert p.poll() is None, p.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no trial ran on the worker node"
            time.sleep(0.1)
        victims = session_pids({cluster.worker.proc.pid})
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        out, err = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
    assert p.returncode == 0, err[-3000:]
    assert victims and not session_pids({cluster.worker.proc.pid})
    res = last_json(out)
    assert res["state"] == "finished" and res["n_trials"] == 2 and res["n_errors"] == 0, res
    last: dict[str, dict] = {}
    for e in _trial_events(run_dir):
        last[e["trial_id"]] = e
    assert len(last) == 2 and {e["state"] for e in last.values()} == {"TERMINATED"}, last
    assert {e["node_id"] for e in last.values()} == {cluster.head.node_id()}  # all on the head
    retried = {e["trial_id"] for e in _trial_events(run_dir) if e.get("node_id") == worker_id}
    assert len(retried) == 1

    from ratio_search.tracking import SearchTracker

    tracker = SearchTracker(res["tracking_uri"], run_dir=res["run_dir"])
    children = tracker.children(res["mlflow_parent_run_id"])
    by_trial = {}
    for run in children:
        by_trial.setdefault(run.data.tags.get("ray_trial_id"), []).append(run)
    assert sorted(by_trial) == sorted(last) and all(len(v) == 1 for v in by_trial.values())
    assert {r.info.status for v in by_trial.values() for r in v} == {"FINISHED"}
    (tid,) = retried
    tags = by_trial[tid][0].data.tags
    assert tags.get("attempts") == "2" and tags.get("attempt_1_error"), tags
    other = next(t for t in by_trial if t != tid)
    assert "attempts" not in by_trial[other][0].data.tags


@pytest.mark.unit
def test_cluster_shortfall_names_what_is_missing():
    from ratio_search.search.driver import cluster_shortfall

    res = {"gpus": 0, "cpus_per_trial": 1.0, "gpus_per_trial": 0.0}
    two = [{"CPU": 1.0}, {"CPU": 1.0, "GPU": 0.0}]
    assert cluster_shortfall(res, two) is None
    assert cluster_shortfall(dict(res, gpus=1), two) == (
        "--gpus 1 asked for, the Ray cluster has 0 GPUs"
    )
    gpu_nodes = [{"CPU": 8.0, "GPU": 4.0}, {"CPU": 2.0, "GPU": 8.0}]
    assert cluster_shortfall(dict(res, gpus=12, gpus_per_trial=0.25), gpu_nodes) is None
    assert cluster_shortfall(dict(res, gpus=13), gpu_nodes).endswith("has 12 GPUs")
    # 4 CPUs and 8 GPUs for one trial: each is on some node, but not both on one
    msg = cluster_shortfall(dict(res, gpus=8, cpus_per_trial=4.0, gpus_per_trial=8.0), gpu_nodes)
    assert msg == (
        "one trial needs 4 CPU + 8 GPU and no node has that (8 CPU + 4 GPU, 2 CPU + 8 GPU)"
    )
