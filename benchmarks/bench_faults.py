"""Fault injection: random SIGKILLs of a search's driver, each followed by ``resume``.

Each kill gets a fresh home (so the set-up, fine-tune included, is part of the search's life), a
quick search (``ratio-search run``, MLflow on) and one SIGKILL of the driver at a time drawn
uniformly over the life of an uninterrupted search (``--life`` seconds; by default measured first
with one uninterrupted search). Then ``ratio-search resume`` (or, if the kill came before run.json
existed, the same ``run`` again) must finish the search. Per kill it records the phase that was
hit and checks:

- completed: the search ends "finished" with exactly N finished trials;
- lost: N minus the finished trials;
- duplicated: finished trial records or MLflow child runs beyond one per trial;
- RUNNING: MLflow runs (parent or children) left RUNNING, and the run's Ray processes left alive.

    .venv/bin/python benchmarks/bench_faults.py --kills 20            # the issue's benchmark
    .venv/bin/python benchmarks/bench_faults.py --kills 3 --life 230  # what fits a loaded machine
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

TINY_DATA = {"image_size": 16, "phantom_n_per_class": 8, "phantom_val_per_class": 8,
             "phantom_test_per_class": 2, "min_val_per_class": 0}  # fmt: skip
SPACE = {
    "params": {"r": {"type": "categorical", "choices": [0.0, 0.5]}},
    "fixed": {"guidance": 1.0, "steps": 2, "epochs": 1, "batch_size": 8, "widths": [2, 4], "fc": 4},
    "search": {"n_startup_trials": 2},
    "data": TINY_DATA,
}
FINETUNE = {"max_steps": 3, "checkpoint_every": 1, "from_scratch": True, "batch_size": 8}


def _cli(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ratio_search.cli", *args, "--home", str(home)]


def _files(work: Path) -> tuple[Path, Path]:
    (work / "space.yaml").write_text(yaml.safe_dump(SPACE))
    (work / "config.yaml").write_text(yaml.safe_dump({"finetune": FINETUNE}))
    return work / "space.yaml", work / "config.yaml"


def _run_cmd(home: Path, space: Path, config: Path, n: int) -> list[str]:
    return _cli(home, "run", "--space", str(space), "--config", str(config), "--trials", str(n),
                "--concurrency", "1", "--name", "f", "--json")  # fmt: skip


def _check(home: Path, n: int) -> dict:
    """What the finished (or not) search left: trials, MLflow runs, Ray processes."""
    from mlflow.tracking import MlflowClient

    from ratio_search.home import Home
    from ratio_search.search import run_status
    from ratio_search.search.procs import find_ray_processes

    h = Home.resolve(home)
    st = run_status(h, "f")
    lines = [json.loads(x) for x in (h.runs / "f" / "trials.jsonl").read_text().splitlines() if x]
    terminated = [x["trial_id"] for x in lines if x.get("state") == "TERMINATED"]
    info = json.loads((h.runs / "f" / "run.json").read_text())
    ml = info["mlflow"]
    client = MlflowClient(ml["tracking_uri"])
    children = client.search_runs(
        [ml["experiment_id"]], f"tags.`mlflow.parentRunId` = '{ml['parent_run_id']}'"
    )
    ids = [c.data.tags.get("ray_trial_id") for c in children]
    # every run of the home's experiment (parents, children, jobs): none may stay RUNNING
    running = len(client.search_runs([ml["experiment_id"]], "attributes.status = 'RUNNING'"))
    done = st["done"]
    return {
        "state": st["state"],
        "done": done,
        "lost": max(0, n - done),
        # a trial finished twice (two TERMINATED lines of different ids beyond N) or two children
        "duplicated": max(0, len(set(terminated)) - n) + (len(ids) - len(set(ids))),
        "mlflow_running": running,
        "ray_left": len(find_ray_processes(info["ray"]["temp_dir"])),
    }


def _one(work: Path, i: int, t_kill: float, n: int) -> dict:
    home = work / f"home{i}"
    space, config = _files(work)
    t0 = time.time()
    proc = subprocess.Popen(_run_cmd(home, space, config, n), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    while proc.poll() is None and time.time() - t0 < t_kill:
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_json = home / "runs" / "f" / "run.json"
    phase = "after the end"
    if killed and not run_json.is_file():
        phase = "before run.json"
    elif killed:
        phase = json.loads(run_json.read_text()).get("phase") or "start"
    t1 = time.time()
    if run_json.is_file():
        cmd = _cli(home, "resume", "f", "--json")
    else:  # killed before the run existed: nothing to resume, start it (again)
        cmd = _run_cmd(home, space, config, n)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    row = {"kill": i + 1, "t_kill_s": round(t_kill, 1), "killed": killed, "phase": phase,
           "resume_rc": p.returncode, "resume_s": round(time.time() - t1, 1)}  # fmt: skip
    try:
        row.update(_check(home, n))
    except Exception as e:  # noqa: BLE001 - a broken run is a result, not a crash of the bench
        row.update(state=f"unreadable: {e}", done=0, lost=n, duplicated=0, mlflow_running=0,
                   ray_left=0)  # fmt: skip
    if p.returncode != 0:
        row["error"] = p.stderr.strip().splitlines()[-1:] if p.stderr else None
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument(
        "--life", type=float, help="seconds of an uninterrupted search (default: measure)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, help="work folder (default: a temp dir)")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    life = args.life
    if life is None:
        space, config = _files(work)
        t0 = time.time()
        subprocess.run(_run_cmd(work / "home-ref", space, config, args.trials), check=True,
                       capture_output=True)  # fmt: skip
        life = time.time() - t0
    print(f"life of an uninterrupted search: {life:.1f} s; {args.kills} kills; work {work}")
    rng = random.Random(args.seed)
    rows = []
    for i in range(args.kills):
        row = _one(work, i, rng.uniform(0, life), args.trials)
        rows.append(row)
        print(json.dumps(row), flush=True)
    completed = sum(r["state"] == "finished" and r["done"] == args.trials for r in rows)
    summary = {
        "kills": len(rows),
        "killed_while_running": sum(r["killed"] for r in rows),
        "searches_completed": f"{completed}/{len(rows)}",
        "trials_lost": sum(r["lost"] for r in rows),
        "trials_duplicated": sum(r["duplicated"] for r in rows),
        "running_runs_left": sum(r["mlflow_running"] for r in rows),
        "ray_processes_left": sum(r["ray_left"] for r in rows),
        "phases_hit": sorted({r["phase"] for r in rows}),
    }
    print(json.dumps(summary))
    return 0 if completed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
