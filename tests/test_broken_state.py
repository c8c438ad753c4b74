"""Every broken state file is one line and exit 2 naming it and its repair, or,
for the data cache, is detected and rebuilt (never trusted because a meta.json is there)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from ratio_search.config import DataConfig
from ratio_search.data import cached_dataset, load_dataset
from ratio_search.data.validate import cache_problem
from ratio_search.home import Home

SMALL = {"image_size": 16, "phantom_n_per_class": 6, "phantom_val_per_class": 2,
         "phantom_test_per_class": 2, "min_val_per_class": 1}  # fmt: skip


def _one_line(rc: int, err: str, *words: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ratio-search: error:"), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture
def small(tiny_home):
    cfg = DataConfig(**SMALL)
    return cfg, load_dataset(cfg, tiny_home)


# ------------------------------------------------------------------------------ the data cache


@pytest.mark.unit
def test_a_whole_cache_folder_has_no_problem(small):
    _, ds = small
    assert cache_problem(ds.info["cache_dir"]) is None


def _truncate(folder, name="train_x.npy"):
    p = folder / name
    p.write_bytes(p.read_bytes()[:-7])


def _bad_meta(folder):
    (folder / "meta.json").write_text("{not json")


def _meta_a_list(folder):
    (folder / "meta.json").write_text("[1, 2]")


def _meta_without_names(folder):
    meta = json.loads((folder / "meta.json").read_text())
    del meta["class_names"]
    (folder / "meta.json").write_text(json.dumps(meta))


def _meta_alone(folder):
    for p in folder.glob("*.npy"):
        p.unlink()


def _labels_do_not_fit(folder):
    y = np.load(folder / "val_y.npy")
    np.save(folder / "val_y.npy", y[:-1])


@pytest.mark.edges
@pytest.mark.parametrize(
    "damage",
    [_truncate, _bad_meta, _meta_a_list, _meta_without_names, _meta_alone, _labels_do_not_fit],
    ids=["truncated-npy", "bad-json", "json-list", "no-class-names", "meta-alone", "labels"],
)
def test_a_damaged_cache_is_rebuilt_not_trusted(small, tiny_home, damage):
    cfg, ds = small
    folder = tiny_home.cache / f"data-{ds.key}"
    want = np.array(ds.train_x)
    damage(folder)
    assert cache_problem(folder) is not None
    again = load_dataset(cfg, tiny_home)
    assert again.info["cache"] == "miss" and again.info["cache_rebuilt"]
    assert again.key == ds.key and np.array_equal(np.asarray(again.train_x), want)
    assert cache_problem(folder) is None
    assert load_dataset(cfg, tiny_home).info["cache"] == "hit"


@pytest.mark.edges
def test_a_damaged_cache_is_no_hit_for_readers_by_key(small, tiny_home):
    _, ds = small
    _truncate(tiny_home.cache / f"data-{ds.key}", "test_x.npy")
    assert cached_dataset(tiny_home, ds.key) is None  # not a memory map of a torn file


# ------------------------------------------------------------------------------ phantom.json


@pytest.mark.edges
@pytest.mark.parametrize("text", ["", "{oops", "\x00\x01"])
def test_a_broken_phantom_json_is_one_line_naming_it(small, tiny_home, tmp_path, run_cli, text):
    cfg, ds = small
    folder = tiny_home.data / next(p.name for p in tiny_home.data.iterdir() if p.is_dir())
    (folder / "phantom.json").write_text(text)
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump({"data": SMALL}))
    rc, _, err = run_cli(["data", "info", "--home", tiny_home.root, "--config", conf])
    _one_line(rc, err, "phantom.json", "delete", str(folder))


# ------------------------------------------------------------------------------ a model's meta.json


@pytest.mark.edges
@pytest.mark.parametrize("drop", ["image_size", "class_names", "model_hash"])
def test_a_model_meta_without_a_key_is_one_line(small, tiny_home, tmp_path, run_cli, drop):
    from ratio_search.diffusion import read_meta

    _, ds = small
    meta = {"backend": "tiny", "complete": True, "model_hash": "m0", "data_key": ds.key,
            "image_size": 16, "channels": 1, "class_names": ["CNV", "NORMAL"]}  # fmt: skip
    model = tiny_home.models / "m0"
    model.mkdir(parents=True)
    (model / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != drop}))
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump({"data": SMALL}))
    argv = ["generate", "--home", tiny_home.root, "--config", conf, "--model", model, "--n", 2]
    rc, _, err = run_cli(argv)
    _one_line(rc, err, "meta.json", drop, "fine-tune again")
    # an unfinished model's meta.json may lack them (it is written before the samples grid)
    (model / "meta.json").write_text(json.dumps({"backend": "tiny", "complete": False}))
    assert read_meta(model)["complete"] is False


# ------------------------------------------------------------------------------ resume's files


def _run_folder(home: Home, name: str, tmp_path) -> None:
    from ratio_search.config import Config, save_config
    from ratio_search.search.runinfo import RunInfo

    folder = home.runs / name
    folder.mkdir(parents=True)
    RunInfo(name=name, state="interrupted", n_trials=2, data_key="k").save(folder)
    save_config(Config(data=DataConfig(**SMALL)), folder / "config.yaml")
    space = {"params": {"r": {"type": "categorical", "choices": [0.0, 0.5]}}}
    (folder / "space.yaml").write_text(yaml.safe_dump(space))


@pytest.mark.edges
@pytest.mark.parametrize(
    "file, text",
    [("space.yaml", None), ("space.yaml", "params: [unclosed"), ("space.yaml", ""),
     ("space.yaml", "params: 3"), ("config.yaml", None), ("config.yaml", "data: {image_size: x}"),
     ("config.yaml", "- a list"), ("config.yaml", "\tbad: : yaml")],
    ids=["space-missing", "space-yaml", "space-empty", "space-params", "config-missing",
         "config-value", "config-list", "config-yaml"],
)  # fmt: skip
def test_resume_with_a_broken_run_file_is_one_line_naming_it(tmp_path, run_cli, file, text):
    home = Home(tmp_path / "home")
    _run_folder(home, "rb", tmp_path)
    path = home.runs / "rb" / file
    if text is None:
        path.unlink()
    else:
        path.write_text(text)
    rc, _, err = run_cli(["resume", "rb", "--home", home.root])
    _one_line(rc, err, str(path), "clean runs --name rb")
    assert (home.runs / "rb" / "run.json").is_file()  # nothing of the run was removed


@pytest.mark.unit
def test_the_run_file_readers_read_what_run_wrote(tmp_path):
    from ratio_search.search.runfiles import read_run_config, read_run_space

    home = Home(tmp_path / "home")
    _run_folder(home, "ok", tmp_path)
    assert read_run_config(home.runs / "ok").data.image_size == 16
    assert list(read_run_space(home.runs / "ok").params) == ["r"]
    shutil.rmtree(home.runs / "ok")
