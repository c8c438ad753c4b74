"""The HTML report end to end on a tiny fabricated finished search; the Pareto front by hand."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml

from ratio_search.config import Config, save_config
from ratio_search.data import load_dataset
from ratio_search.evidence.confirm import confirm
from ratio_search.home import Home
from ratio_search.report import build_report, pareto_front

TINY = {"widths": (4, 4), "fc": 8, "epochs": 2, "min_steps": 10, "batch_size": 16, "lr": 1e-2}
# (r, guidance, steps, val_accuracy) of the fabricated search.
TRIALS = [
    (0.0, 2.0, 2, 0.70),
    (0.5, 2.0, 2, 0.80),
    (0.5, 4.0, 2, 0.75),
    (0.25, 4.0, 4, 0.78),
    (1.0, 2.0, 4, 0.55),
    (0.75, 2.0, 2, 0.795),
]


pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]


def test_pareto_front_by_hand():
    pts = [(0.0, 0.80), (0.2, 0.85), (0.4, 0.84), (0.6, 0.86), (0.8, 0.70), (0.8, 0.60), (1.0, 0.5)]
    # From R = 1 down: 0.5, 0.70 at 0.8 (beats 0.5), 0.86 at 0.6; nothing below 0.6 beats 0.86.
    assert pareto_front(pts) == [(1.0, 0.5), (0.8, 0.70), (0.6, 0.86)]
    assert pareto_front(pts, mode="min") == [(1.0, 0.5)]


def make_search(tmp_path, name="tiny"):
    """A finished search folder written by hand, following the run-folder contract."""
    import optuna

    home = Home(tmp_path)
    cfg = Config()
    cfg.data.image_size = 16
    cfg.data.phantom_n_per_class = 12
    cfg.data.phantom_val_per_class = 6
    cfg.data.phantom_test_per_class = 6
    cfg.data.min_val_per_class = 2
    data = load_dataset(cfg.data, home)
    real = np.asarray(data.train_x[data.train_y == data.synthetic_label])
    rng = np.random.default_rng(0)
    for g in (2.0, 4.0):
        # Fabricated "generated" images: noisy real ones, noisier at the higher guidance.
        noisy = np.clip(real.astype(int) + rng.integers(-10 * g, 10 * g + 1, real.shape), 0, 255)
        key = f"pool-g{g:g}"
        (home.pools / key).mkdir(parents=True)
        np.save(home.pools / key / "images.npy", noisy.astype(np.uint8))
        manifest = {"n": len(real), "key": key, "guidance": g, "steps": 2, "quality": {}}
        if g == 2.0:
            manifest["quality"] = {"fd": 1.25, "kid": 0.01, "precision": 0.9, "recall": 0.8,
                                   "c2st": 0.55, "memorisation": 0.1, "label_agreement": 0.95}  # fmt: skip
        (home.pools / key / "manifest.json").write_text(json.dumps(manifest))

    space = {
        "params": {
            "r": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25},
            "guidance": {"type": "categorical", "choices": [2.0, 4.0]},
            "steps": {"type": "categorical", "choices": [2, 4]},
        },
        "fixed": {"epochs": 1, "batch_size": 8, "widths": [4, 4], "fc": 8, "pool_size": len(real)},
    }
    folder = home.runs / name
    folder.mkdir(parents=True)
    save_config(cfg, folder / "config.yaml")
    info = {"name": name, "state": "finished", "metric": "val_accuracy", "mode": "max",
            "space": space, "data_key": data.key, "n_trials": len(TRIALS)}  # fmt: skip
    (folder / "run.json").write_text(json.dumps(info))
    study = optuna.create_study(
        study_name=name, storage=f"sqlite:///{folder / 'optuna.db'}", direction="maximize"
    )
    dists = {
        "r": optuna.distributions.FloatDistribution(0.0, 1.0, step=0.25),
        "guidance": optuna.distributions.CategoricalDistribution([2.0, 4.0]),
        "steps": optuna.distributions.CategoricalDistribution([2, 4]),
    }
    with open(folder / "trials.jsonl", "w") as f:
        for i, (r, g, s, v) in enumerate(TRIALS):
            params = {"r": r, "guidance": g, "steps": s}
            rec = {"trial_id": f"t{i}", "state": "TERMINATED", "params": params,
                   "metrics": {"val_accuracy": v}, "pool_key": f"pool-g{g:g}", "time": 100.0 + i}  # fmt: skip
            f.write(json.dumps(rec) + "\n")
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=v))
    return home, folder


def img_count(page: str) -> int:
    return len(re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]{100,}"', page))


@pytest.mark.e2e
def test_report_end_to_end_with_a_confirmation(tmp_path):
    home, folder = make_search(tmp_path)
    # The confirmation as export writes it (expected.confirm in best.yaml), with real tiny trials.
    result = confirm(home, "tiny", top_k=1, n_seeds=2, max_seeds=2, confirm_r=[1.0], track=False)
    (folder / "best.yaml").write_text(
        yaml.safe_dump({"expected": {"run": "tiny", "confirm": result}})
    )

    # The search's MLflow parent run, where the report's files go as artifacts.
    from ratio_search import tracking

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    tracker = tracking.SearchTracker(uri, run_dir=folder)
    parent = tracker.start_parent("tiny")
    tracker.finish_parent()
    info = json.loads((folder / "run.json").read_text())
    info["mlflow"] = {"tracking_uri": uri, "parent_run_id": parent}
    (folder / "run.json").write_text(json.dumps(info))

    out = build_report(home, "tiny", grid_n=4, classifier_kwargs=TINY)
    page = open(out["html"]).read()
    logged = {a.path for a in tracker.client.list_artifacts(parent, "report")}
    assert {"report/report.html", "report/metric_vs_r.png", "report/best_generated.png"} <= logged
    best_r = result["chosen"]["params"]["r"]
    assert out["best_r"] == best_r and out["confirmed"]
    # The answer, computed from the confirmation; the usable ratio with δ and its rule.
    assert result["answer"] and result["answer"] in out["summary"]
    assert out["summary"].startswith(
        ("synthetic data helps", "synthetic data hurts", "no gain", "undecided")
    )
    assert f"Usable synthetic ratio: R = {result['usable_ratio']['r']}" in page
    assert "δ = 0.01" in page and "lower 95 % bound above -delta" in page
    assert "paired over 2 seeds" in page and "accuracy, paired over seeds and test images" in page
    # metric vs R, guidance x steps, history, importances, best and worst grids: all embedded.
    assert img_count(page) == 6
    names = sorted(p.rsplit("/", 1)[-1] for p in out["pngs"])
    assert names == sorted(["metric_vs_r.png", "guidance_steps.png", "history.png",
                            "importances.png", "best_generated.png", "worst_generated.png"])  # fmt: skip
    for p in out["pngs"]:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # The pool quality table shows the stored figures; the test split section is there.
    assert "1.2500" in page and "Pool quality" in page
    assert "Test split (" in page and "look 1 of 1" in page
    assert "No confirmation found" not in page


@pytest.mark.e2e
def test_report_without_confirmation_through_the_cli(tmp_path, run_cli):
    home, folder = make_search(tmp_path)
    (folder / "optuna.db").unlink()  # history then comes from trials.jsonl; no importances
    info = json.loads((folder / "run.json").read_text())
    info["calibration"] = {"line": "budget 2 epochs kept: R = 0 gains +0.001"}
    (folder / "run.json").write_text(json.dumps(info))
    rc, stdout, _ = run_cli(
        [
            "report",
            "tiny",
            "--home",
            str(tmp_path),
            "--grid",
            "0",
            "--json",
            "--out",
            str(tmp_path / "rep"),
        ]
    )
    assert rc == 0
    out = json.loads(stdout.strip().splitlines()[-1])
    page = open(out["html"]).read()
    assert out["html"].startswith(str(tmp_path / "rep"))
    # Best single trial: R = 0.5 at guidance 2 (0.80). Single trials never name a usable ratio.
    assert out["best_r"] == 0.5 and out["usable_r"] is None and not out["confirmed"]
    assert "No usable synthetic ratio without a confirmation" in page
    assert "Budget calibration on R = 0: budget 2 epochs kept: R = 0 gains +0.001" in page
    assert "Best R = 0.50 (guidance 2, 2 steps)" in page
    assert "one run, not confirmed" in page and "No confirmation found" in page
    assert img_count(page) == 3  # metric vs R, guidance x steps, history


@pytest.mark.edges
def test_report_unknown_run_is_one_line(tmp_path, run_cli):
    rc, _, err = run_cli(["report", "nope", "--home", str(tmp_path)])
    assert rc == 2
    assert "unknown run 'nope'" in err and len(err.strip().splitlines()) == 1


def test_report_of_a_search_without_finished_trials(tmp_path):
    home = Home(tmp_path)
    folder = home.runs / "empty"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(
        json.dumps({"name": "empty", "state": "running", "metric": "val_accuracy"})
    )
    rec = {"trial_id": "a", "state": "RUNNING", "params": {"r": 0.3}, "metrics": {}}
    (folder / "trials.jsonl").write_text(json.dumps(rec) + "\n")
    out = build_report(
        home, "empty", context=type("Ctx", (), {"full_config": staticmethod(dict)})(), track=False
    )
    page = open(out["html"]).read()
    assert out["best_r"] is None and out["n_trials"] == 0 and out["pngs"] == []
    assert "No finished trial" in page
