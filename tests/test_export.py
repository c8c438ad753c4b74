"""`export`: best trial -> best.yaml, and `train --config best.yaml` reproduces its validation metric.

The run folder is fabricated the way a search makes it: trials run through ``run_trial`` with the
trainable's config handling, reported through the tracking callback (trials.jsonl + MLflow).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ratio_search.config import Config, DataConfig, TrialConfig, save_config
from ratio_search.data import load_dataset
from ratio_search.errors import SearchError
from ratio_search.evidence.export import build_export, write_export
from ratio_search.home import Home
from ratio_search.search.space import parse_space
from ratio_search.tracking import MLflowTrialCallback, SearchTracker, append_jsonl
from ratio_search.train.trial import read_train_yaml, run_trial

SPACE = {
    "params": {"r": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.5}},
    "fixed": {
        "mode": "replace",
        "guidance": 2.0,
        "steps": 10,
        "scheduler": "ddim",
        "postprocess": "none",
        "epochs": 3,
        "batch_size": 8,
        "lr": 0.01,
        "seed": 3,
    },
    "search": {"metric": "val_accuracy", "mode": "max"},
}
POOL_KEY = "pool-export-test"
_VAL = ("accuracy", "f1", "precision", "recall", "roc_auc")


@dataclass
class FakeTrial:
    trial_id: str
    config: dict = field(default_factory=dict)


@pytest.fixture
def cli(run_cli, monkeypatch, one_thread):
    """``cli("export", ...) -> CompletedProcess``: the command line in-process (``run_cli``), in
    the environment the command would get: no MLFLOW_TRACKING_URI or RATIO_SEARCH_HOME from the
    caller, torch on one thread (as the trainable's). In-process: these tests are about what
    `export` writes and `train` reproduces, not the process; a subprocess costs seconds of imports.
    """
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RATIO_SEARCH_HOME", raising=False)

    def run(*args: str) -> subprocess.CompletedProcess:
        rc, out, err = run_cli(list(args))
        return subprocess.CompletedProcess(list(args), rc, out, err)

    return run


def _fabricate(home: Home, data_root: Path, name: str = "fab") -> dict:
    """A finished search of two trials (R = 0 and R = 0.5) in ``home.runs / name``."""
    torch.set_num_threads(1)  # as the trainable and the `train` subprocess (OMP_NUM_THREADS=1)
    dcfg = DataConfig(source="imagefolder", path=str(data_root), image_size=16, min_val_per_class=0)
    data = load_dataset(dcfg, home)
    space = parse_space(SPACE)

    # A cached pool of "generated" images, as pools.get_pool leaves it.
    pool_dir = home.pools / POOL_KEY
    pool_dir.mkdir(parents=True)
    rng = np.random.default_rng(7)
    pool = rng.integers(60, 255, size=(8, 1, 16, 16), dtype=np.uint8)
    np.save(pool_dir / "images.npy", pool)
    (pool_dir / "manifest.json").write_text(json.dumps({"key": POOL_KEY, "n": 8}))

    folder = home.runs / name
    folder.mkdir(parents=True)
    save_config(Config(data=dcfg), folder / "config.yaml")
    uri = home.tracking_uri()
    info = {
        "name": name,
        "state": "finished",
        "n_trials": 2,
        "metric": "val_accuracy",
        "mode": "max",
        "space": space.to_dict(),
        "data_key": data.key,
        "model_hash": "hash-test",
        "model_path": str(home.models / "tiny-test"),
        "pool_n": 8,
        "mlflow": {"tracking_uri": uri, "experiment_id": None, "parent_run_id": None},
    }
    tracker = SearchTracker(uri, "ratio-search", folder, metric="val_accuracy", mode="max")
    info["mlflow"]["parent_run_id"] = tracker.start_parent(name, {"n_trials": 2})
    info["mlflow"]["experiment_id"] = tracker.experiment_id
    (folder / "run.json").write_text(json.dumps(info))
    cb = MLflowTrialCallback(tracker, strict=True)

    finals = {}
    for i, params in enumerate(({"r": 0.0}, {"r": 0.5})):
        trial = FakeTrial(f"fab_{i:05d}", dict(params))
        full = space.trial_config(params)  # what the trainable does with trial.config
        tcfg = TrialConfig.from_flat(full).train
        tcfg.device = "cpu"
        cb.on_trial_start(0, [], trial)

        def report(epoch: int, m: dict, state: dict, trial=trial, full=full) -> None:
            res = {f"val_{k}": float(m[k]) for k in _VAL}
            res.update(
                epoch=epoch,
                val_loss=float(m["val_loss"]),
                train_loss=float(m["train_loss"]),
                confusion_matrix=json.dumps(m["confusion_matrix"]),
                pool_key=POOL_KEY if full["r"] > 0 else "",
                model_hash="hash-test",
                device="cpu",
            )
            cb.on_trial_result(0, [], trial, res)

        out = run_trial(tcfg, data, pool if full["r"] > 0 else None, report=report)
        cb.on_trial_complete(0, [], trial)
        finals[trial.trial_id] = out["metrics"]
    tracker.finish_parent()
    return {"folder": folder, "info": info, "finals": finals, "tracker": tracker}


@pytest.mark.slow
@pytest.mark.e2e
def test_export_then_train_reproduces_the_metric(make_image_folder, tmp_path: Path, cli) -> None:
    home = Home(tmp_path / "home")
    data_root = make_image_folder("data", n_train=8, n_val=6, n_test=2)
    fab = _fabricate(home, data_root)
    finals = fab["finals"]
    # The best trial by its final validation accuracy (ties: the earlier trial).
    want = max(finals, key=lambda t: (finals[t]["accuracy"], -int(t[-1])))

    doc = build_export(home, "fab")
    exp = doc["expected"]
    assert exp["trial_id"] == want
    assert exp["value"] == finals[want]["accuracy"]
    assert exp["validation"]["val_f1"] == finals[want]["f1"]
    assert exp["params"]["r"] == (0.5 if want == "fab_00001" else 0.0)
    assert doc["pool"] == ({"key": POOL_KEY, "n": 8} if want == "fab_00001" else None)
    assert doc["train"]["seed"] == 3 and doc["train"]["epochs"] == 3 and doc["train"]["lr"] == 0.01
    assert doc["data"]["path"] == str(data_root) and doc["data"]["image_size"] == 16
    assert exp["model_hash"] == "hash-test" and exp["data_key"] == fab["info"]["data_key"]
    assert exp["versions"]["torch"] == torch.__version__
    child = fab["tracker"].find_child(want)
    assert exp["mlflow"]["child_run_id"] == child.info.run_id
    assert exp["mlflow"]["parent_run_id"] == fab["info"]["mlflow"]["parent_run_id"]

    # The cached pool grows after the search (another search asked for more images; a pool's
    # first images never change): the export still names the 8 images the trial drew from.
    pool_dir = home.pools / POOL_KEY
    grown = np.concatenate([np.load(pool_dir / "images.npy"), np.full((4, 1, 16, 16), 9, np.uint8)])
    np.save(pool_dir / "images.npy", grown)
    (pool_dir / "manifest.json").write_text(json.dumps({"key": POOL_KEY, "n": 12}))

    # Both trials, each exported explicitly, reproduced by `train --config` on the CPU.
    for tid in finals:
        out_yaml = tmp_path / f"best-{tid}.yaml"
        res = cli(
            "export",
            "fab",
            "--home",
            str(home.root),
            "--out",
            str(out_yaml),
            "--trial",
            tid,
            "--no-confirm",
            "--json",
        )
        assert res.returncode == 0, res.stderr
        printed = json.loads(res.stdout)
        assert printed["path"] == str(out_yaml) and printed["expected"]["trial_id"] == tid
        sections, pool, pool_n = read_train_yaml(out_yaml)  # what `train --config` reads
        assert set(sections) == {"data", "train"}
        if tid == "fab_00001":
            assert (pool, pool_n) == (POOL_KEY, 8)
        else:
            assert pool is None
        out_dir = tmp_path / f"train-{tid}"
        res = cli(
            "train",
            "--config",
            str(out_yaml),
            "--home",
            str(home.root),
            "--out",
            str(out_dir),
            "--json",
        )
        assert res.returncode == 0, res.stderr
        got = json.loads((out_dir / "metrics.json").read_text())["metrics"]
        exported = yaml.safe_load(out_yaml.read_text())["expected"]["validation"]
        for k in _VAL:
            if exported[f"val_{k}"] is not None:
                assert got[k] == exported[f"val_{k}"], (tid, k)
        assert got["val_loss"] == exported["val_loss"], tid
        assert got["accuracy"] == finals[tid]["accuracy"]

    # Without trials.jsonl the same trial is found through the MLflow child runs.
    (fab["folder"] / "trials.jsonl").rename(fab["folder"] / "trials.jsonl.bak")
    doc2 = build_export(home, "fab")
    assert doc2["expected"]["trial_id"] == want
    assert doc2["expected"]["value"] == exp["value"]
    assert doc2["train"] == doc["train"] and doc2["pool"] == doc["pool"]


@pytest.mark.e2e
def test_export_errors_are_one_line(tmp_path: Path, cli) -> None:
    home = Home(tmp_path / "home")
    (home.runs / "busy").mkdir(parents=True)
    (home.runs / "busy" / "run.json").write_text(
        json.dumps({"name": "busy", "state": "running", "metric": "val_accuracy", "mode": "max"})
    )
    save_config(Config(), home.runs / "busy" / "config.yaml")
    for tid, state in (("a", "RUNNING"), ("b", "ERROR")):
        append_jsonl(
            home.runs / "busy" / "trials.jsonl",
            {"trial_id": tid, "state": state, "metrics": {"val_accuracy": 0.9}},
        )

    with pytest.raises(SearchError, match="no finished trial"):
        build_export(home, "busy")
    with pytest.raises(SearchError, match="unknown run 'nope'.*busy"):
        build_export(home, "nope")
    with pytest.raises(SearchError, match="trial 'zz'"):
        build_export(home, "busy", trial_id="zz")
    with pytest.raises(SearchError, match="RUNNING, not finished"):
        build_export(home, "busy", trial_id="a")

    for name, fragment in (("nope", "unknown run 'nope'"), ("busy", "no finished trial")):
        res = cli(
            "export",
            name,
            "--home",
            str(home.root),
            "--out",
            str(tmp_path / "b.yaml"),
            "--no-confirm",
        )
        assert res.returncode == 2, res.stdout + res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ratio-search: error: "), res.stderr
        assert fragment in lines[0]
        assert "Traceback" not in res.stderr
    assert not (tmp_path / "b.yaml").exists()


def _run_with_a_small_cnn(home: Home) -> None:
    """A finished run of one trial whose space fixes a small CNN (nothing is trained)."""
    folder = home.runs / "small"
    folder.mkdir(parents=True)
    save_config(Config(), folder / "config.yaml")
    space = {**SPACE, "fixed": {**SPACE["fixed"], "widths": [4, 4], "fc": 8}}
    info = {"name": "small", "state": "finished", "metric": "val_accuracy", "mode": "max"}
    (folder / "run.json").write_text(json.dumps({**info, "space": space}))
    rec = {"trial_id": "t0", "state": "TERMINATED", "params": {"r": 0.0}, "epoch": 3}
    rec["metrics"] = {"val_accuracy": 0.75}
    (folder / "trials.jsonl").write_text(json.dumps(rec) + "\n")


@pytest.mark.unit
def test_best_yaml_carries_the_cnn_size_and_train_reads_it(tmp_path: Path) -> None:
    from ratio_search.train.trial import resolve_train_config

    home = Home(tmp_path / "home")
    _run_with_a_small_cnn(home)
    doc = build_export(home, "small")
    assert doc["train"]["widths"] == [4, 4] and doc["train"]["fc"] == 8
    assert not any("cannot set" in n for n in doc["expected"]["notes"])  # reproducible now
    assert doc["expected"]["params"]["widths"] == [4, 4]
    out = write_export(doc, tmp_path / "best.yaml")
    cfg, _, _ = resolve_train_config(out, {})
    assert cfg.train.widths == [4, 4] and cfg.train.fc == 8 and cfg.train.seed == 3

    # A best.yaml written before the CNN's size was part of the train section: the defaults.
    old = yaml.safe_load(out.read_text())
    del old["train"]["widths"], old["train"]["fc"]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    cfg, _, _ = resolve_train_config(tmp_path / "old.yaml", {})
    assert cfg.train.widths == [16, 32, 64] and cfg.train.fc == 128


@pytest.mark.unit
def test_write_export_is_atomic_yaml(tmp_path: Path) -> None:
    out = write_export(
        {"data": {"source": "phantom"}, "train": {"r": 0.5}, "pool": None, "expected": {"x": 1}},
        tmp_path / "o" / "best.yaml",
    )
    text = out.read_text()
    assert text.startswith("# The best trial")
    assert yaml.safe_load(text) == {
        "data": {"source": "phantom"},
        "train": {"r": 0.5},
        "pool": None,
        "expected": {"x": 1},
    }
    assert [p.name for p in out.parent.iterdir()] == ["best.yaml"]  # no temp file left


@pytest.mark.slow
@pytest.mark.e2e
def test_real_search_export_train_chain(tmp_path: Path, cli) -> None:
    """A real (tiny) Ray Tune search, tracked by the callback; every trial exported and re-trained."""
    from ratio_search.config import FinetuneConfig
    from ratio_search.diffusion import finetune
    from ratio_search.diffusion.tiny import TEST_UNET
    from ratio_search.search.driver import run_search

    home = Home(tmp_path / "home")
    tiny = {"image_size": 16, "phantom_n_per_class": 8, "phantom_val_per_class": 8}
    tiny.update(phantom_test_per_class=2, min_val_per_class=0)
    space = parse_space(
        {
            "params": {
                "r": {"type": "categorical", "choices": [0.0, 0.5]},
                "guidance": {"type": "categorical", "choices": [1.0]},
                "steps": {"type": "categorical", "choices": [2]},
            },
            "fixed": {"epochs": 2, "batch_size": 8, "seed": 0},
            "search": {"n_startup_trials": 2},
            "data": tiny,
        }
    )
    data = load_dataset(space.data_config(), home)
    cfg = FinetuneConfig(max_steps=2, from_scratch=True, batch_size=8)
    finetune(data, cfg, home, progress=False, unet_config=TEST_UNET)
    out = run_search(
        home, name="chain", space=space, n_trials=2, progress=False, cpus_per_trial=1, concurrency=1
    )
    assert out["state"] == "finished"

    records = {}
    for line in (home.runs / "chain" / "trials.jsonl").read_text().splitlines():
        rec = json.loads(line)
        records[rec["trial_id"]] = rec
    assert len(records) == 2 and all(r["state"] == "TERMINATED" for r in records.values())
    # The space's baselines run first: R = 0 and R = 0.5 (with a generated pool).
    assert sorted(r["params"]["r"] for r in records.values()) == [0.0, 0.5]
    for tid, rec in records.items():
        out_yaml = tmp_path / f"{tid}.yaml"
        res = cli(
            "export",
            "chain",
            "--home",
            str(home.root),
            "--out",
            str(out_yaml),
            "--trial",
            tid,
            "--no-confirm",
        )
        assert res.returncode == 0, res.stderr
        doc = yaml.safe_load(out_yaml.read_text())
        assert doc["expected"]["mlflow"]["child_run_id"] == rec["mlflow_run_id"]
        if rec["params"]["r"] > 0:
            assert doc["pool"]["key"] == rec["pool_key"] and (home.pools / rec["pool_key"]).is_dir()
        res = cli(
            "train",
            "--config",
            str(out_yaml),
            "--home",
            str(home.root),
            "--out",
            str(tmp_path / f"t-{tid}"),
        )
        assert res.returncode == 0, res.stderr
        got = json.loads((tmp_path / f"t-{tid}" / "metrics.json").read_text())["metrics"]
        for k in ("accuracy", "f1", "roc_auc", "val_loss"):
            want = rec["metrics"][k if k == "val_loss" else f"val_{k}"]
            assert got[k] == want, (tid, k, got[k], want)
