"""Pools per class and per checkpoint, confidence filtering by a judge that never sees val/test,
and best.yaml's ``pools:`` through ``export`` and ``train --config``."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import yaml

from ratio_search.config import Config, DataConfig, TrialConfig, save_config
from ratio_search.errors import ConfigError
from ratio_search.home import Home
from ratio_search.pools import build_space_pools, class_reference, reference_hash
from ratio_search.quality import selection
from ratio_search.train.mixing import pool_needed, synthetic_needed
from ratio_search.train.trial import read_train_yaml, run_trial

pytestmark = pytest.mark.unit

# A tiny judge (the default one trains for 300 steps); cached in the home like the real one.
JUDGE = {"epochs": 1, "min_steps": 3, "widths": (4,), "fc": 8, "device": "cpu"}
DATA = {
    "image_size": 16,
    "phantom_n_per_class": 12,
    "phantom_val_per_class": 6,
    "phantom_test_per_class": 6,
    "min_val_per_class": 2,
}  # fmt: skip  (= tiny_dataset)
TRAIN = {"epochs": 1, "batch_size": 8, "widths": [4], "fc": 8, "device": "cpu", "threads": 1}


@pytest.fixture
def gen16(fake_generator):
    """Two generator 'checkpoints' (own hashes) at the tiny dataset's 16 px."""
    make = type(fake_generator)
    return {0: make(image_size=16, model_hash="final001"), 100: make(16, model_hash="step0100")}


def _trial(**kw) -> TrialConfig:
    t = TrialConfig.from_flat({**TRAIN, "postprocess": "none", "steps": 2, **kw})
    return t


def test_pool_keys_differ_per_class_and_per_checkpoint(tiny_home, tiny_dataset, gen16):
    grid = [{"guidance": 1.0, "steps": 2, "postprocess": "histogram-match", "finetune_steps": s}
            for s in (0, 100)]  # fmt: skip

    class Space:
        def pool_grid(self):
            return grid

        def choices(self, name):
            return {"synthetic_classes": ["default", "all"]}[name]

    seen = []
    res = build_space_pools(tiny_home, gen16, Space(), 4, tiny_dataset, on_done=seen.append)
    assert len(res) == 4 == len(seen) and len({r["key"] for r in res}) == 4
    assert sorted((r["finetune_steps"], r["class_name"]) for r in res) == [
        (0, "CNV"), (0, "NORMAL"), (100, "CNV"), (100, "NORMAL")]  # fmt: skip
    for r in res:  # each class is matched to its own real training images
        manifest = json.loads((tiny_home.pools / r["key"] / "manifest.json").read_text())
        want = reference_hash(class_reference(tiny_dataset, r["class_index"]))
        assert manifest["reference"]["hash"] == want and manifest["class_name"] == r["class_name"]
    with pytest.raises(ConfigError, match="finetune_steps = 200"):
        build_space_pools(tiny_home, gen16, [{"finetune_steps": 200}], 4, tiny_dataset)


def test_filtering_keeps_exactly_the_top_fraction_in_score_order(tiny_home, tiny_dataset, gen16):
    n = 10
    calls = len(gen16[0].calls)
    full, info_full = selection.trial_synthetic(
        tiny_home, gen16, tiny_dataset, _trial(r=0.5, synthetic_classes="all"), n, **JUDGE
    )
    assert len(gen16[0].calls) == calls + 2  # one pool per class
    assert info_full["judge"] is None and info_full["kept"] == {"CNV": n, "NORMAL": n}
    for f in (0.8, 0.5):
        trial = _trial(r=0.5, synthetic_classes="all", filter_top=f)
        images, info = selection.trial_synthetic(tiny_home, gen16, tiny_dataset, trial, n, **JUDGE)
        assert len(gen16[0].calls) == calls + 2  # another filter_top regenerates nothing
        assert info["pool_keys"] == info_full["pool_keys"] and info["pool_n"] == n
        for label, name in enumerate(tiny_dataset.class_names):
            scores = selection.pool_scores(
                tiny_home, info["pool_keys"][name], tiny_dataset, label, **JUDGE
            )
            k = math.ceil(f * n)
            order = np.argsort(-scores, kind="stable")
            assert info["kept"][name] == k == len(images[label])
            np.testing.assert_array_equal(images[label], full[label][order[:k]])
            kept = scores[order[:k]]
            assert (np.diff(kept) <= 0).all() and kept.min() >= scores[order[k:]].max()
    # scores cached in the pool folder, named by the judge; recomputing gives the same numbers
    key = info_full["pool_keys"]["CNV"]
    jk = selection.judge_key(selection.judge(tiny_home, tiny_dataset, **JUDGE))
    cached = tiny_home.pools / key / selection.scores_name(jk, 0)
    first = np.load(cached)
    cached.unlink()
    np.testing.assert_array_equal(selection.pool_scores(tiny_home, key, tiny_dataset, 0), first)
    assert cached.is_file()


def test_the_judge_never_sees_val_or_test_images(tmp_path, tiny_dataset, gen16, monkeypatch):
    import ratio_search.quality.measure as measure

    seen = []
    real_train = measure.train_feature_extractor

    def spy(x, y, *a, **kw):
        seen.append((np.array(x), np.array(y)))
        return real_train(x, y, *a, **kw)

    monkeypatch.setattr(measure, "train_feature_extractor", spy)
    d = tiny_dataset
    # val and test replaced by images and labels that would teach a judge something else
    poisoned = dataclasses.replace(
        d, val_x=np.full_like(d.val_x, 255), val_y=1 - d.val_y,
        test_x=np.zeros_like(d.test_x), test_y=1 - d.test_y,
    )  # fmt: skip
    trial = _trial(r=0.5, filter_top=0.5)
    out = []
    for name, data in (("clean", d), ("poisoned", poisoned)):
        home = Home(tmp_path / name)  # own judge cache per home: each trains its judge
        images, info = selection.trial_synthetic(home, gen16, data, trial, 12, **JUDGE)
        out.append((images, selection.pool_scores(home, info["pool_keys"]["CNV"], data, 0)))
    assert len(seen) == 2
    for x, y in seen:  # trained on the training split exactly
        np.testing.assert_array_equal(x, d.train_x)
        np.testing.assert_array_equal(y, d.train_y)
    np.testing.assert_array_equal(out[0][1], out[1][1])
    np.testing.assert_array_equal(out[0][0][0], out[1][0][0])


def test_r0_reads_no_pool_and_a_missing_checkpoint_is_named(tiny_home, tiny_dataset, gen16):
    images, info = selection.trial_synthetic(
        tiny_home, gen16, tiny_dataset, _trial(r=0.0, synthetic_classes="all"), 5
    )
    assert images == {} and info["pool_keys"] == {} and not gen16[0].calls
    with pytest.raises(ConfigError, match="finetune_steps = 50"):
        selection.trial_synthetic(
            tiny_home, gen16, tiny_dataset, _trial(r=0.5, finetune_steps=50), 5
        )


def test_best_yaml_with_pools_round_trips_through_train_config(
    tiny_home, tiny_dataset, gen16, run_cli, tmp_path, one_thread
):
    """export writes `pools:` from the record's pool_keys; `train --config` re-applies the filter
    and repeats the trial: same composition, same validation metrics."""
    from ratio_search.evidence.export import build_export, write_export
    from ratio_search.search.trials import append_trial

    n = pool_needed(12, 0.5, "augment", 0.5)
    flat = {**TRAIN, "r": 0.5, "mode": "augment", "synthetic_classes": "all", "filter_top": 0.5,
            "postprocess": "none", "steps": 2, "seed": 4}  # fmt: skip
    trial = TrialConfig.from_flat(flat)
    images, info = selection.trial_synthetic(tiny_home, gen16, tiny_dataset, trial, n, **JUDGE)
    direct = run_trial(trial.train, tiny_dataset, images)
    assert direct["n_synthetic"] == 2 * synthetic_needed(12, 0.5, "augment")

    folder = tiny_home.runs / "multi"
    folder.mkdir(parents=True)
    save_config(Config(data=DataConfig(**DATA)), folder / "config.yaml")
    (folder / "run.json").write_text(json.dumps({"name": "multi", "state": "finished",
        "metric": "val_accuracy", "mode": "max", "data_key": tiny_dataset.key, "pool_n": n}))  # fmt: skip
    append_trial(folder, {"trial_id": "t0", "state": "TERMINATED", "params": flat, "epoch": 1,
                          "metrics": {"val_accuracy": direct["metrics"]["accuracy"]},
                          "pool_key": info["pool_key"],
                          "pool_keys": json.dumps(info["pool_keys"])})  # fmt: skip
    doc = build_export(tiny_home, "multi")
    assert "pool" not in doc
    assert doc["pools"] == {c: {"key": k, "n": n} for c, k in info["pool_keys"].items()}
    out = write_export(doc, tmp_path / "best.yaml")
    sections, pool, pool_n = read_train_yaml(out)
    assert pool == info["pool_keys"] and pool_n == {"CNV": n, "NORMAL": n}
    assert (
        sections["train"]["filter_top"] == 0.5 and sections["train"]["synthetic_classes"] == "all"
    )

    rc, stdout, err = run_cli(["train", "--config", out, "--home", tiny_home.root,
                               "--out", tmp_path / "again", "--json"])  # fmt: skip
    assert rc == 0, err
    res = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert res["n_synthetic"] == direct["n_synthetic"] and res["n_train"] == direct["n_train"]
    assert set(res["pools"]) == {"CNV", "NORMAL"}
    assert all(p["kept"] == math.ceil(0.5 * n) for p in res["pools"].values())
    for k in ("accuracy", "f1", "val_loss"):
        assert res["metrics"][k] == pytest.approx(direct["metrics"][k], abs=0)


def test_train_yaml_pools_errors(tmp_path, tiny_home):
    p = tmp_path / "b.yaml"
    p.write_text(yaml.safe_dump({"pool": "a", "pools": {"CNV": "a"}}))
    with pytest.raises(ConfigError, match="not both"):
        read_train_yaml(p)
    p.write_text(yaml.safe_dump({"pools": {"CNV": {"key": "a", "n": 0}}}))
    with pytest.raises(ConfigError, match="pools.CNV.n"):
        read_train_yaml(p)
    p.write_text(yaml.safe_dump({"data": DATA, "train": {**TRAIN, "r": 0.5,
                                 "synthetic_classes": "all"}, "pool": "somekey"}))  # fmt: skip
    from ratio_search.train.trial import resolve_train_config, train_from_config

    cfg, pool, pool_n = resolve_train_config(p, {})
    with pytest.raises(ConfigError, match="one pool per class"):
        train_from_config(cfg, tiny_home, pool, tmp_path / "o", pool_n=pool_n)


def test_generate_makes_one_pool_per_listed_class(tiny_home, tiny_dataset, gen16):
    from ratio_search.config import TrainConfig
    from ratio_search.pools import generate

    cfg = Config(data=DataConfig(**DATA), train=TrainConfig(synthetic_classes="NORMAL"))
    res = generate(tiny_home, cfg, {0: gen16[0]}, n=3, progress=False, data=tiny_dataset)
    assert [(r["class_name"], r["class_index"], r["n"]) for r in res] == [("NORMAL", 1, 3)]
    cfg.train.synthetic_classes = "all"
    res = generate(tiny_home, cfg, {0: gen16[0]}, n=3, progress=False, data=tiny_dataset)
    assert [r["class_name"] for r in res] == ["CNV", "NORMAL"]
    assert [r["generated"] for r in res] == [True, False]  # NORMAL's pool was already there


def test_the_confirmation_reruns_get_the_trial_images(tiny_home, tiny_dataset, gen16, tmp_path):
    """evidence.runs.RunContext (confirmation, test split) mixes what the trial mixed."""
    from ratio_search.evidence.runs import RunContext

    flat = {**TRAIN, "r": 0.5, "synthetic_classes": "all", "filter_top": 0.5,
            "postprocess": "none", "steps": 2}  # fmt: skip
    trial = TrialConfig.from_flat(flat)
    want, _ = selection.trial_synthetic(tiny_home, gen16, tiny_dataset, trial, 8, **JUDGE)
    ctx = RunContext(tiny_home, tmp_path, {"pool_n": 8, "model_path": "/models/fake"})
    ctx._data, ctx._model = tiny_dataset, gen16[0]
    got = ctx.pool_images(trial.to_flat(), "ignored,keys")
    assert sorted(got) == [0, 1] and all(len(got[k]) == 4 for k in got)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_train_filter_top_flag_filters_one_pool(tiny_home, tiny_dataset, gen16, run_cli, tmp_path):
    """`train --filter-top` on the default class's one pool: the top half, by the cached judge."""
    from ratio_search.pools import get_pool

    pool = get_pool(tiny_home, gen16[0], TrialConfig.from_flat({"steps": 2}).generate, 12,
                    progress=False)  # fmt: skip
    selection.pool_scores(tiny_home, pool, tiny_dataset, 0, **JUDGE)  # trains the tiny judge
    p = tmp_path / "one.yaml"
    p.write_text(yaml.safe_dump({"data": DATA, "train": {**TRAIN, "r": 0.5},
                                 "pool": {"key": pool.key, "n": 12}}))  # fmt: skip
    argv = ["train", "--config", p, "--home", tiny_home.root, "--json", "--filter-top", "0.5"]
    rc, _, err = run_cli([*argv, "--out", tmp_path / "o"])
    assert rc == 0, err
    res = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert res["filter_top"] == 0.5 and res["pool"]["kept"] == 6 and res["n_synthetic"] == 6
