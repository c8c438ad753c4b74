"""One real search through the CLI: Ray Tune + Optuna + MLflow on a tiny budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ratio_search.config import FinetuneConfig
from ratio_search.home import Home
from ratio_search.search.procs import find_ray_processes, kill_ray_processes

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

TINY_DATA = {
    "image_size": 16,
    "phantom_n_per_class": 8,
    "phantom_val_per_class": 8,
    "phantom_test_per_class": 2,
    "min_val_per_class": 0,
}


def make_tiny_model(home: Home, data_cfg: dict) -> Path:
    """A generator of about ten thousand parameters, fine-tuned for 2 steps on the tiny data."""
    from ratio_search.data import load_dataset
    from ratio_search.diffusion import finetune
    from ratio_search.diffusion.tiny import TEST_UNET
    from ratio_search.search.space import parse_space

    data = load_dataset(parse_space({"data": data_cfg}).data_config(), home)
    cfg = FinetuneConfig(max_steps=2, from_scratch=True, batch_size=8)
    return finetune(data, cfg, home, progress=False, unet_config=TEST_UNET).path


@pytest.fixture(scope="module")
def search(tmp_path_factory) -> dict:
    """One real search through the CLI that every test below reads: a grid over R in both modes
    (augment capped at R = 0.5) where every class gets synthetic images, filtered to the judge's
    top half, from a generator checkpoint, and where the R = 0 trials fail (an injected fault in
    the trainable) while the search goes on. One search instead of one per test: each costs a
    Ray start and a fresh trial worker's imports (torch, sklearn, the optimiser's dynamo)."""
    from ratio_search.data import load_dataset
    from ratio_search.diffusion import finetune
    from ratio_search.diffusion.tiny import TEST_UNET
    from ratio_search.search.space import parse_space

    tmp_path = tmp_path_factory.mktemp("search")
    home = Home.resolve(tmp_path / "home")
    data = load_dataset(parse_space({"data": TINY_DATA}).data_config(), home)
    cfg = FinetuneConfig(max_steps=2, from_scratch=True, batch_size=8, save_steps=[1])
    model = finetune(data, cfg, home, progress=False, unet_config=TEST_UNET).path
    space = {
        "params": {
            "r": {"type": "categorical", "choices": [0.0, 0.5, 1.0], "augment_high": 0.5},
            "mode": {"type": "categorical", "choices": ["replace", "augment"]},
        },
        "fixed": {"synthetic_classes": "all", "filter_top": 0.5, "finetune_steps": 1,
                  "arch": "simple", "guidance": 2.0, "steps": 2, "epochs": 2, "batch_size": 8,
                  "widths": [2, 4], "fc": 4},
        "search": {"sampler": "grid"},  # the R = 0 calibration runs too (calibrate: auto)
        "data": TINY_DATA,
    }  # fmt: skip
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    cmd = [sys.executable, "-m", "ratio_search.cli", "run", "--home", str(home.root), "--space",
           str(path), "--model", str(model), "--name", "it", "--concurrency", "2", "--json"]  # fmt: skip
    env = dict(os.environ, RATIO_SEARCH_TEST_FAIL_TRIAL="r=0.0")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)  # one JSON object on stdout, progress on stderr
    run_dir = Path(out["run_dir"])
    info = json.loads((run_dir / "run.json").read_text())
    recs = [json.loads(ln) for ln in (run_dir / "trials.jsonl").read_text().splitlines()]
    return {"home": home, "out": out, "run_dir": run_dir, "info": info, "recs": recs}


def _children(search: dict) -> list:
    from ratio_search.tracking import SearchTracker

    uri = search["info"]["mlflow"]["tracking_uri"]
    return SearchTracker(uri).children(search["out"]["mlflow_parent_run_id"])


def test_search_end_to_end_with_a_failing_trial(search):
    home, out, run_dir, info = search["home"], search["out"], search["run_dir"], search["info"]
    assert out["name"] == "it" and out["state"] == "finished"
    assert out["n_trials"] == 6 and out["n_errors"] == 2
    assert out["best"]["params"]["r"] in (0.5, 1.0) and 0.0 <= out["best"]["metric"] <= 1.0

    # trials.jsonl: every grid point once, R = 0 (both modes) recorded as ERROR with its reason
    from ratio_search.search import run_status

    st = run_status(home, "it")
    assert sorted((t["mode"], t["r"]) for t in st["trials"]) == [
        ("augment", 0.0), ("augment", 0.5), ("augment", 0.5),
        ("replace", 0.0), ("replace", 0.5), ("replace", 1.0)]  # fmt: skip
    states = {(t["mode"], t["r"]): t["state"] for t in st["trials"]}
    assert states.pop(("replace", 0.0)) == states.pop(("augment", 0.0)) == "ERROR"
    assert set(states.values()) == {"TERMINATED"}
    recs = search["recs"]
    err = [r for r in recs if r["state"] == "ERROR"][-1]
    assert "injected failure" in (err.get("error") or "")
    r05 = [r for r in recs if r["state"] == "TERMINATED" and r["params"]["r"] == 0.5][-1]
    assert r05["pool_key"] and r05["epoch"] == 2
    assert all((home.pools / k / "images.npy").is_file() for k in r05["pool_key"].split(","))

    # run.json, Optuna storage, Tune checkpoints
    assert info["state"] == "finished" and info["n_trials"] == 6
    import optuna

    study = optuna.load_study(study_name="it", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    assert len(study.trials) == 6
    assert list((run_dir / "tune").glob("*/checkpoint_*"))

    # MLflow: one child per trial, none left RUNNING, the parent finished
    from mlflow.tracking import MlflowClient

    client = MlflowClient(info["mlflow"]["tracking_uri"])
    assert client.get_run(out["mlflow_parent_run_id"]).info.status == "FINISHED"
    children = _children(search)
    assert len(children) == 6
    assert sorted(c.info.status for c in children) == ["FAILED"] * 2 + ["FINISHED"] * 4
    reused = {r["trial_id"] for r in recs if r["metrics"].get("reused")}
    trained = [c for c in children
               if c.info.status == "FINISHED" and c.data.tags["ray_trial_id"] not in reused]  # fmt: skip
    assert len(trained) == 3  # the capped augment point reused augment 0.5's result
    for c in trained:  # a trained trial logs each of its two epochs
        assert len(client.get_metric_history(c.info.run_id, "val_accuracy")) == 2

    # the run's Ray is gone, and its temp dir with it
    assert find_ray_processes(info["ray"]["temp_dir"]) == []
    assert not Path(info["ray"]["temp_dir"]).exists()


def test_pools_prebuilt_as_one_ray_task_per_gpu(tmp_path):
    """With GPUs, the space's pools are built as ``@ray.remote(num_gpus=1)`` tasks before the
    trials. Ray's logical GPUs stand in for real ones here (the tasks then sample on the CPU)."""
    import ray

    from ratio_search.data import load_dataset
    from ratio_search.diffusion import read_meta
    from ratio_search.search.driver import build_pools, init_ray
    from ratio_search.search.space import parse_space

    home = Home.resolve(tmp_path / "home")
    model = make_tiny_model(home, TINY_DATA)
    space = parse_space(
        {
            "params": {
                "r": {"type": "categorical", "choices": [0.0, 1.0]},
                "guidance": {"type": "categorical", "choices": [1.0, 3.0]},
            },
            "fixed": {"steps": 2},
            "data": TINY_DATA,
        }
    )
    data = load_dataset(space.data_config(), home)
    temp_dir = f"/tmp/rs-test-{tmp_path.name[-8:]}"
    init_ray(temp_dir, None, num_cpus=2, num_gpus=2)
    try:
        built = build_pools(
            home, space, data, str(model), read_meta(model), 8, gpus=2, progress=False
        )
    finally:
        ray.shutdown()
        kill_ray_processes(temp_dir)  # as the driver does: Ray's agents outlive shutdown() a while
    assert sorted(r["guidance"] for r in built) == [1.0, 3.0]
    assert all(r["generated"] and r["n"] == 8 for r in built)
    assert all((home.pools / r["key"] / "images.npy").is_file() for r in built)
    # the same grid again, serially here: every pool is a cache hit with the same key
    again = build_pools(home, space, data, str(model), read_meta(model), 8, gpus=0, progress=False)
    assert sorted(r["key"] for r in again) == sorted(r["key"] for r in built)
    assert not any(r["generated"] for r in again)
    assert find_ray_processes(temp_dir) == []
    import shutil

    shutil.rmtree(temp_dir, ignore_errors=True)


def test_all_class_search_with_the_levers_through_ray(search):
    """Every class gets synthetic images, filtered to the judge's top half, from a generator
    checkpoint, in both modes (augment capped at R = 0.5): a grid through Ray whose MLflow child
    runs carry the levers, and whose trials read one pool per class."""
    home, info = search["home"], search["info"]
    assert sorted(info["models"]) == ["0", "1"]  # the final model and its step-1 checkpoint
    ckpt_hash = info["models"]["1"][1]["model_hash"]
    assert ckpt_hash != info["model_hash"]

    recs = search["recs"]
    done = [r for r in recs if r["state"] == "TERMINATED"]
    assert len(done) == 4
    # augment's R = 1 grid point ran at the bound, as Tune's config says
    assert sorted((r["params"]["mode"], r["params"]["r"]) for r in done) == [
        ("augment", 0.5), ("augment", 0.5), ("replace", 0.5), ("replace", 1.0)]  # fmt: skip
    # the capped point is the same configuration as augment at 0.5: measured once, reused once
    assert sum(1 for r in done if r["metrics"].get("reused")) == 1
    for r in done:  # one pool per class, from the checkpoint, in label order
        keys = json.loads(r["pool_keys"])
        assert list(keys) == ["CNV", "NORMAL"] and r["pool_key"] == ",".join(keys.values())
        assert len(set(keys.values())) == 2 and r["model_hash"] == ckpt_hash
        for k in keys.values():
            assert (home.pools / k / "images.npy").is_file()
            assert list((home.pools / k).glob("scores*"))  # the judge's scores, cached there
        assert r["metrics"]["n_synthetic"] > 0

    children = _children(search)
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert len(children) == 6 and len(finished) == 4  # the two R = 0 trials failed
    for c in children:
        ps = c.data.params
        assert ps["mode"] in ("replace", "augment") and ps["arch"] == "simple"
        # the fixed levers are params of every child run too
        lever = (ps["synthetic_classes"], ps["filter_top"], ps["finetune_steps"])
        assert lever == ("all", "0.5", "1")
    for c in finished:
        assert c.data.tags["pool_key"].count(",") == 1  # one pool per class
        assert c.data.tags["pool_key"] == ",".join(json.loads(c.data.tags["pool_keys"]).values())
    assert not any(float(c.data.params["r"]) >= 1 and c.data.params["mode"] == "augment"
                   for c in children)  # fmt: skip
