"""Multi-seed confirmation: selection, new seeds, paired differences, test split once, usable R."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ratio_search.errors import SearchError
from ratio_search.evidence.confirm import (
    Candidate,
    config_signature,
    confirm,
    confirmation_seeds,
    paired,
    select_candidates,
)
from ratio_search.evidence.paired import BUDGET, EXCLUDES_ZERO, PRECISE
from ratio_search.home import Home
from ratio_search.search.looks import look_count, read_looks

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def fewer_replicates(monkeypatch):
    """1,000 bootstrap replicates instead of 4,000: the tests check the logic, not the digits."""
    import ratio_search.evidence.paired as paired_mod

    monkeypatch.setattr(paired_mod, "N_BOOT", 1000)


# The "true" accuracy per R of the fake trainer: best at R = 0.2, within one point of R = 0 up
# to R = 0.5 (the default non-inferiority grid 0.25/0.5/0.75/1.0 included).
TRUE = {0.0: 0.85, 0.2: 0.86, 0.25: 0.858, 0.4: 0.855, 0.5: 0.853, 0.6: 0.835, 0.75: 0.83,
        0.8: 0.82, 1.0: 0.60}  # fmt: skip
N_VAL, N_TEST = 400, 300
DEFAULTS = {
    "r": 0.0,
    "guidance": 2.0,
    "steps": 10,
    "scheduler": "ddim",
    "postprocess": "none",
    "mode": "replace",
    "epochs": 1,
    "batch_size": 8,
    "lr": 0.001,
    "seed": 0,
}


class FakeContext:
    """Stands in for RunContext: per-image correctness with a known accuracy per R, no training.

    Image i of a split is classified correctly when its fixed difficulty u_i lies below the
    model's accuracy ``TRUE[r] + seed effect (shared by every R) + a small own effect``: the same
    images are hard for every arm, as with real models.
    """

    data_key = "fake-data"
    n_test = N_TEST

    def __init__(self, true=None, test_shift=-0.02):
        self.true = dict(TRUE if true is None else true)
        self.test_shift = test_shift
        self.trained: list[tuple[float, int]] = []
        self.tested: list[tuple[float, int]] = []

    def full_config(self, params):
        return {**DEFAULTS, **params}

    @staticmethod
    def _noise(seed, r, scale=0.004):
        shared = np.random.default_rng(seed).normal(0, scale)  # the seed's effect, shared by all R
        own = np.random.default_rng([seed, int(r * 100)]).normal(0, scale / 4)
        return shared + own

    def _correct(self, r, seed, split):
        n = N_VAL if split == "val" else N_TEST
        # Evenly spread difficulties (in a fixed random order): accuracy p scores about p.
        u = np.random.default_rng(11 if split == "val" else 12).permutation(
            (np.arange(n) + 0.5) / n
        )
        p = self.true[r] + self._noise(seed, r) + (self.test_shift if split == "test" else 0.0)
        return (u < p).astype(np.uint8)

    def train(self, config, seed, pool_key):
        r = float(config["r"])
        self.trained.append((r, seed))
        acc = float(self._correct(r, seed, "val").mean())
        return {"val_accuracy": acc, "val_f1": acc - 0.01}, {"w": torch.tensor([float(seed), r])}

    def correct(self, config, state, split):
        seed, r = int(state["w"][0]), round(float(state["w"][1]), 3)
        assert r == float(config["r"])
        if split == "test":
            self.tested.append((r, seed))
        return self._correct(r, seed, split)

    def test(self, config, state):
        seed, r = int(state["w"][0]), round(float(state["w"][1]), 3)
        return {"test_accuracy": float(self._correct(r, seed, "test").mean())}


def make_run(tmp_path, trials, name="run1"):
    home = Home(tmp_path)
    folder = home.runs / name
    folder.mkdir(parents=True)
    info = {"name": name, "state": "finished", "metric": "val_accuracy", "mode": "max", "seed": 0}
    (folder / "run.json").write_text(json.dumps(info))
    with open(folder / "trials.jsonl", "w") as f:
        for i, (params, value, state) in enumerate(trials):
            rec = {
                "trial_id": f"t{i}",
                "state": state,
                "params": params,
                "metrics": {"val_accuracy": value},
                "pool_key": None
                if params.get("r", 0) == 0
                else f"pool-g{params.get('guidance', 2.0)}",
            }
            f.write(json.dumps(rec) + "\n")
    return home


TRIALS = [
    ({"r": 0.0}, 0.848, "TERMINATED"),
    ({"r": 0.2}, 0.861, "TERMINATED"),
    ({"r": 0.5}, 0.857, "TERMINATED"),
    ({"r": 0.6}, 0.856, "TERMINATED"),  # lucky: its true value is 0.835
    ({"r": 0.8}, 0.900, "TERMINATED"),  # very lucky: the search's "best" trial, truly 0.82
    ({"r": 0.8}, 0.870, "TERMINATED"),  # the same configuration again: counted once
    ({"r": 1.0, "seed": 1000}, 0.95, "RUNNING"),  # unfinished: ignored, but its seed is taken
    ({"r": 0.4}, float("nan"), "ERROR"),
]


def test_confirm_end_to_end_with_a_fake_trainer(tmp_path):
    home = make_run(tmp_path, TRIALS)
    ctx = FakeContext()
    out = confirm(home, "run1", top_k=3, n_seeds=5, tolerance=0.01, context=ctx, track=False)

    # New seeds: none the search used (0, and 1000 of the running trial).
    assert out["seeds"] == [1001, 1002, 1003, 1004, 1005]
    assert out["max_seeds"] == 10
    roles = {c["label"]: c["role"] for c in out["configurations"]}
    assert roles["R=0 (real only)"] == "baseline"
    top = [c for c in out["configurations"] if c["role"] == "top"]
    assert [c["params"]["r"] for c in top] == [0.8, 0.2, 0.5]  # the top 3 distinct by trial value
    assert top[0]["trial_value"] == 0.9
    # The non-inferiority grid at the chosen settings: 0.25, 0.75, 1.0 (0.5 is a top one already).
    grid = sorted(c["params"]["r"] for c in out["configurations"] if c["role"] == "grid")
    assert grid == [0.25, 0.75, 1.0]

    # The lucky R = 0.8 does not survive confirmation; R = 0.2 is chosen.
    assert out["chosen"]["params"]["r"] == 0.2 and not out["chosen"]["is_baseline"]
    by_r = {c["params"]["r"]: c for c in out["configurations"]}
    assert by_r[0.8]["val"]["val_accuracy"]["mean"] == pytest.approx(0.82, abs=0.01)
    pv = by_r[0.2]["paired_val"]
    assert pv["diff"] == pytest.approx(0.01, abs=0.004) and pv["n_images"] == N_VAL
    assert pv["seeds"] == out["seeds"] and by_r[0.0]["paired_val"] is None

    # Usable ratio: the lucky single trial at R = 0.6 (truly 0.835) is no candidate at all; the
    # largest confirmed R with its lower bound above -0.01 is 0.5 (truly -0.003).
    u = out["usable_ratio"]
    assert u["r"] == 0.5 and u["delta"] == 0.01 and u["failed_below"] == []
    assert 0.6 not in [p["r"] for p in u["points"]]
    passing = {p["r"]: p["passes"] for p in u["points"]}
    assert passing == {0.2: True, 0.25: True, 0.5: True, 0.75: False, 0.8: False, 1.0: False}

    # The test split: R = 0.2 against R = 0 on the same seeds and images, seeds added as needed.
    t = out["test"]
    assert t["arm"] == "R=0.20 guidance=2.0 steps=10" and t["n_test"] == N_TEST
    seq = t["paired"]
    assert seq["schedule"] == [5, 7, 9, 10] and seq["look_level"] == pytest.approx(0.9875)
    n = seq["final"]["n_seeds"]
    assert (
        t["seeds"] == list(range(1001, 1001 + n))
        and len(seq["looks"]) == seq["schedule"].index(n) + 1
    )
    assert seq["reason"] in (EXCLUDES_ZERO, PRECISE, BUDGET)
    assert seq["final"]["low"] <= 0.01 <= seq["final"]["high"]  # covers the planted +1 point
    # Only the compared arm, R = 0 and the usable ratio's configuration ever saw the test split.
    assert sorted({r for r, _ in ctx.tested}) == [0.0, 0.2, 0.5]
    assert t["usable"]["r"] == 0.5 and t["usable"]["seeds"] == out["seeds"]
    assert t["look"] == {"number": 1, "count": 1, "reused": False, "when": t["look"]["when"]}
    assert out["answer"].startswith(("synthetic data helps", "no gain", "undecided"))
    assert "R = 0.5" in out["answer"]
    # 7 configurations x 5 seeds, plus the added seeds of both compared arms.
    assert len(ctx.trained) == 35 + 2 * (n - 5)

    # A second export: cached runs, and the recorded numbers of look 1; nothing evaluated again.
    ctx2 = FakeContext()
    again = confirm(home, "run1", top_k=3, n_seeds=5, tolerance=0.01, context=ctx2, track=False)
    assert ctx2.trained == [] and ctx2.tested == []
    assert again["usable_ratio"] == out["usable_ratio"] and again["answer"] == out["answer"]
    assert again["test"]["look"]["reused"] and again["test"]["look"]["number"] == 1
    assert look_count(home.runs / "run1") == 1
    # Asking for other configurations (here: the grid 0.25 only, another δ) is look number 2.
    other = confirm(home, "run1", top_k=3, n_seeds=5, tolerance=0.02, context=FakeContext(),
                    track=False)  # fmt: skip
    assert other["test"]["look"] == {**other["test"]["look"], "number": 2, "reused": False}
    looks = read_looks(home.runs / "run1")
    assert [rec["look"] for rec in looks] == [1, 2]
    assert looks[0]["configurations"][:2] == [t["arm"], "R=0 (real only)"]
    assert looks[0]["seeds"][:5] == out["seeds"] and looks[0]["time"]


def test_confirm_baseline_wins_and_synthetic_data_hurts(tmp_path):
    # Every synthetic mix is worse: R = 0 is chosen, the best R > 0 is paired with it on test.
    true = {0.0: 0.85, 0.5: 0.80, 1.0: 0.70, 0.25: 0.83, 0.75: 0.75}
    home = make_run(tmp_path, [({"r": 0.0}, 0.85, "TERMINATED"), ({"r": 1.0}, 0.86, "TERMINATED")])
    ctx = FakeContext(true)
    out = confirm(home, "run1", top_k=2, n_seeds=3, confirm_r=[0.5, 1.0], context=ctx, track=False)
    assert out["chosen"]["is_baseline"] and out["chosen"]["params"]["r"] == 0.0
    assert out["test"]["arm"] == "R=0.50 guidance=2.0 steps=10"  # the best confirmed R > 0
    roles = [c["role"] for c in out["configurations"]]
    assert roles.count("grid") == 1  # R = 1.0 was confirmed already as a top configuration
    assert out["usable_ratio"]["r"] == 0.0 and out["test"]["usable"] is None
    assert out["test"]["paired"]["reason"] == EXCLUDES_ZERO
    assert out["answer"].startswith("synthetic data hurts: -5.0 points")
    assert "no R > 0 stays within 1 point(s) of R = 0" in out["answer"]


def test_confirm_errors(tmp_path):
    home = make_run(tmp_path, [({"r": 0.3}, float("nan"), "ERROR")])
    with pytest.raises(SearchError, match="no trial finished its full budget"):
        confirm(home, "run1", context=FakeContext(), track=False)
    with pytest.raises(SearchError, match="confirm-seeds"):
        confirm(home, "run1", n_seeds=1, context=FakeContext(), track=False)
    with pytest.raises(SearchError, match="max-seeds"):
        confirm(home, "run1", n_seeds=3, max_seeds=2, context=FakeContext(), track=False)
    with pytest.raises(SearchError, match="--workers: 0 must be >= 1"):
        confirm(home, "run1", workers=0, context=FakeContext(), track=False)
    with pytest.raises(SearchError, match="unknown run"):
        confirm(home, "nope", context=FakeContext(), track=False)


@pytest.mark.edges
def test_an_empty_test_split_is_refused_before_any_training(tmp_path):
    home = make_run(tmp_path, TRIALS)
    ctx = FakeContext()
    ctx.n_test = 0
    with pytest.raises(SearchError, match="test split is empty or missing"):
        confirm(home, "run1", n_seeds=2, context=ctx, track=False)
    assert ctx.trained == [] and not (home.runs / "run1" / "confirm").exists()


@pytest.mark.edges
def test_trials_stopped_by_the_scheduler_are_not_candidates(tmp_path):
    from ratio_search.config import Config, save_config
    from ratio_search.evidence.export import export_with_confirmation

    # t1 (R = 0.8) was stopped after 2 of 8 epochs with a high half-trained value.
    home = make_run(tmp_path, [({"r": 0.0, "epochs": 8}, 0.80, "TERMINATED"),
                               ({"r": 0.8, "epochs": 8}, 0.95, "TERMINATED"),
                               ({"r": 0.2, "epochs": 8}, 0.85, "TERMINATED")])  # fmt: skip
    folder = home.runs / "run1"
    recs = [json.loads(x) for x in (folder / "trials.jsonl").read_text().splitlines()]
    for rec in recs:
        rec["epoch"] = 2 if rec["trial_id"] == "t1" else 8
    (folder / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    save_config(Config(), folder / "config.yaml")
    doc = export_with_confirmation(home, "run1", top_k=3, n_seeds=2, confirm_r=[0.2],
                                   context=FakeContext(), track=False)  # fmt: skip
    c = doc["expected"]["confirm"]
    assert c["stopped_trials"] == ["t1"]
    assert [x["params"]["r"] for x in c["configurations"] if x["role"] == "top"] == [0.2]
    assert c["budget"]["epochs"] == 8 and doc["train"]["epochs"] == 8
    # Exporting the stopped trial itself: best.yaml carries the full budget the runs trained at.
    doc = export_with_confirmation(home, "run1", trial_id="t1", top_k=3, n_seeds=2,
                                   confirm_r=[0.2], context=FakeContext(), track=False)  # fmt: skip
    assert doc["train"]["epochs"] == 8
    assert any("full budget 8" in n for n in doc["expected"]["notes"])


def test_select_candidates_dedupes_and_finds_the_baseline_trial():
    ctx = FakeContext()
    trials = {
        "a": {
            "state": "TERMINATED",
            "params": {"r": 0.5, "guidance": 2.0},
            "metrics": {"val_accuracy": 0.9},
        },
        "b": {
            "state": "TERMINATED",
            "params": {"r": 0.5, "guidance": 2.0},
            "metrics": {"val_accuracy": 0.8},
        },
        "c": {
            "state": "TERMINATED",
            "params": {"r": 0.0, "guidance": 8.0},
            "metrics": {"val_accuracy": 0.85},
        },
        "d": {
            "state": "TERMINATED",
            "params": {"r": 0.5, "guidance": 4.0},
            "metrics": {"val_accuracy": 0.7},
        },
    }
    top, base = select_candidates(trials, ctx.full_config, "val_accuracy", "max", top_k=3)
    # R = 0 at guidance 8 is the same configuration as R = 0 at guidance 2: no pool is used.
    assert base.trial_id == "c" and base.config["r"] == 0.0
    assert [c.trial_id for c in top] == ["a", "d"]  # c is the baseline, b a duplicate of a
    top_min, _ = select_candidates(trials, ctx.full_config, "val_accuracy", "min", top_k=1)
    assert top_min[0].trial_id == "d"


def test_config_signature_and_seeds():
    a = {**DEFAULTS, "r": 0.0, "guidance": 2.0}
    b = {**DEFAULTS, "r": 0.0, "guidance": 9.0}
    assert config_signature(a) == config_signature(b)
    assert config_signature({**a, "r": 0.1}) != config_signature({**b, "r": 0.1})
    assert confirmation_seeds(3, {1000, 1002}) == [1001, 1003, 1004]
    # The seed is not part of a configuration; the CNN's size and numeric noise below 1e-6 are
    # (not): the signature is that of the TrialConfig.
    assert config_signature({**a, "seed": 5}) == config_signature(a)
    assert config_signature({**a, "lr": 0.001 + 1e-9}) == config_signature(a)
    assert config_signature({**a, "widths": [4, 4]}) != config_signature(a)
    assert config_signature({**a, "widths": [16, 32, 64]}) == config_signature(a)  # the default


def test_paired_matches_seeds_not_positions():
    a = Candidate("a", {}, "top", seeds=[1, 2, 3], val=[{"m": 1.0}, {"m": 2.0}, {"m": 3.0}])
    b = Candidate("b", {}, "baseline", seeds=[3, 2, 1], val=[{"m": 2.5}, {"m": 1.5}, {"m": 0.5}])
    d = paired(a, b)["m"]
    assert d["mean"] == pytest.approx(0.5) and d["half_width"] == pytest.approx(0.0, abs=1e-12)


TINY_DATA = {"image_size": 16, "phantom_n_per_class": 8, "phantom_val_per_class": 6,
             "phantom_test_per_class": 6, "min_val_per_class": 2}  # fmt: skip
TINY_FIXED = {"epochs": 2, "batch_size": 8, "widths": [4, 4], "fc": 8, "pool_size": 8}


def _real_run(tmp_path, track: bool = True):
    """evidence.testing.fabricated_run at 16 px: (home, folder, data, tracker, parent)."""
    from ratio_search import tracking
    from ratio_search.evidence.testing import fabricated_run

    home = Home(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}" if track else None
    folder, data, parent = fabricated_run(home, TINY_DATA, TINY_FIXED, tracking_uri=uri)
    tracker = tracking.SearchTracker(uri, run_dir=folder) if track else None
    return home, folder, data, tracker, parent


def test_confirm_through_the_real_trial_and_mlflow(tmp_path):
    """RunContext end to end: phantom data, a cached pool, run_trial, test split, MLflow runs."""
    from ratio_search import tracking

    torch.set_num_threads(1)
    home, folder, data, tracker, parent = _real_run(tmp_path)
    out = confirm(home, "real", top_k=1, n_seeds=2, max_seeds=2, confirm_r=[0.5], track=True)
    labels = [c["label"] for c in out["configurations"]]
    assert labels == ["R=0 (real only)", "R=0.50 guidance=2.0 steps=2"]
    for c in out["configurations"]:
        assert 0.0 <= c["val"]["val_accuracy"]["mean"] <= 1.0 and c["val"]["val_accuracy"]["n"] == 2
    assert out["test"]["n_test"] == len(data.test_y)
    assert out["test"]["summary"]["baseline"]["test_accuracy"]["n"] == 2
    # Per-image correctness of real models: the paired difference covers the test images.
    f = out["test"]["paired"]["final"]
    assert (
        f["n_images"] == len(data.test_y)
        and f["n_seeds"] == 2
        and f["low"] <= f["diff"] <= f["high"]
    )
    assert out["test"]["paired"]["reason"] in (EXCLUDES_ZERO, PRECISE, BUDGET)
    assert len(list((folder / "confirm").rglob("*.safetensors"))) == 4

    # One confirm child run per configuration under the parent, with the interval metrics.
    ids = out["mlflow"]
    assert set(ids) == set(labels)
    for run_id in ids.values():
        run = tracker.client.get_run(run_id)
        assert run.data.tags["ratio_search.kind"] == "confirm"
        assert run.data.tags[tracking.PARENT_TAG] == parent
        assert "val_accuracy_mean" in run.data.metrics
        assert "val_accuracy" not in run.data.metrics  # never mistaken for a trial


def test_export_with_confirmation_exports_the_confirmed_choice(tmp_path):
    from ratio_search.config import Config, save_config
    from ratio_search.evidence.export import export_with_confirmation

    home = make_run(tmp_path, TRIALS)
    save_config(Config(), home.runs / "run1" / "config.yaml")
    doc = export_with_confirmation(home, "run1", n_seeds=3, context=FakeContext(), track=False)
    # The search's best single trial (t4, R = 0.8) failed confirmation; t1 (R = 0.2) is exported.
    assert doc["expected"]["trial_id"] == "t1" and doc["train"]["r"] == 0.2
    assert any("instead of the best single trial t4" in n for n in doc["expected"]["notes"])
    assert doc["expected"]["confirm"]["chosen"]["params"]["r"] == 0.2
    # An explicit --trial is kept as asked.
    doc = export_with_confirmation(
        home, "run1", trial_id="t4", n_seeds=3, context=FakeContext(), track=False
    )
    assert doc["expected"]["trial_id"] == "t4"


def test_best_trial_at_r0_still_confirms_k_synthetic_configurations(tmp_path):
    from ratio_search.config import Config, save_config
    from ratio_search.evidence.export import export_with_confirmation

    # R = 0 ran three times (the baselines) and is the best; k = 1 must still confirm an R > 0.
    trials = [({"r": 0.0}, 0.86, "TERMINATED")] * 3 + [({"r": 0.5}, 0.80, "TERMINATED")]
    home = make_run(tmp_path, trials)
    save_config(Config(), home.runs / "run1" / "config.yaml")
    doc = export_with_confirmation(
        home, "run1", top_k=1, n_seeds=2, context=FakeContext(), track=False
    )
    roles = [(c["role"], c["params"]["r"]) for c in doc["expected"]["confirm"]["configurations"]]
    assert ("top", 0.5) in roles and ("baseline", 0.0) in roles
    # TRUE[0.5] = 0.853 > TRUE[0] = 0.85: R = 0.5 is chosen after all, and exported.
    assert doc["expected"]["confirm"]["chosen"]["params"]["r"] == 0.5
    assert doc["train"]["r"] == 0.5


def test_export_keeps_the_trial_when_the_choice_is_the_same_configuration(tmp_path):
    from ratio_search.config import Config, save_config
    from ratio_search.evidence.export import export_with_confirmation

    trials = [
        ({"r": 0.0}, 0.90, "TERMINATED"),
        ({"r": 0.0}, 0.90, "TERMINATED"),
        ({"r": 1.0}, 0.5, "TERMINATED"),
    ]
    home = make_run(tmp_path, trials)
    save_config(Config(), home.runs / "run1" / "config.yaml")
    doc = export_with_confirmation(home, "run1", n_seeds=2, context=FakeContext(), track=False)
    assert doc["expected"]["confirm"]["chosen"]["is_baseline"]
    assert doc["expected"]["trial_id"] == "t0"  # the earliest of the two identical R = 0 trials
    assert not any("instead of" in n for n in doc["expected"]["notes"])


def test_confirm_result_is_strict_json(tmp_path):
    # A single search trial (no interval) must not put NaN into best.yaml / --json output.
    home = make_run(tmp_path, TRIALS)
    out = confirm(home, "run1", n_seeds=2, context=FakeContext(), track=False)
    json.dumps(out, allow_nan=False)  # raises on NaN
    assert all(c["val"]["val_accuracy"]["n"] >= 2 for c in out["configurations"])


def test_confirmation_runs_side_by_side_equal_one_after_another(tmp_path):
    """Two worker processes train the same bits as the driver alone: every run's validation
    metrics, weights file and test-split interval are identical, in the same order."""
    import hashlib

    outs, files = [], []
    for workers, sub in ((1, "alone"), (2, "two")):
        home, folder, *_ = _real_run(tmp_path / sub, track=False)
        said: list[str] = []
        out = confirm(home, "real", top_k=1, n_seeds=2, max_seeds=3, confirm_r=[0.5],
                      track=False, workers=workers, progress=said.append)  # fmt: skip
        outs.append(out)
        assert any("training (2 at a time)" in m for m in said) == (workers == 2)
        weights = sorted((folder / "confirm").rglob("*.safetensors"))
        # by configuration and seed (the cache key holds the data key, which names the home)
        files.append({(p.parent.name, p.name.split("-")[1]): hashlib.sha1(p.read_bytes()).digest()
                      for p in weights})  # fmt: skip
    alone, two = outs
    assert len(files[0]) >= 4 and files[0] == files[1]  # 2 arms x 2-3 seeds, the same bits
    for a, b in zip(alone["configurations"], two["configurations"], strict=True):
        assert a["label"] == b["label"] and a["val"] == b["val"]
    assert alone["test"]["paired"] == two["test"]["paired"]
    assert alone["test"]["per_seed"] == two["test"]["per_seed"]


@pytest.mark.parametrize(
    ("threads", "n_runs", "cores", "want"),
    [(0, 8, 8, 1), (1, 8, 2, 2), (1, 1, 8, 1), (2, 8, 2, 1), (2, 8, 8, 4), (3, 8, 8, 2)],
)
def test_auto_workers(threads, n_runs, cores, want):
    """The job's cores over the runs' threads, at most one per run; torch's default: one."""
    from ratio_search.evidence.workers import auto_workers

    assert auto_workers(threads, n_runs, cores) == want
