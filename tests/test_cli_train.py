"""`ratio-search train`: the happy path, `--config best.yaml`, and every bad input of issue 2 item 6.

The command runs in-process (``cli.main``); each error case checks: exit code 2, one line on
stderr that names the problem, no traceback, and no output folder written. One smoke test runs
the real command in a subprocess, as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ratio_search.config import load_config
from ratio_search.errors import ConfigError
from ratio_search.train.trial import read_train_yaml, resolve_train_config

SIZE = 16


def _png(path: Path, bright: bool, rng: np.random.Generator, size: int = SIZE) -> None:
    a = rng.integers(0, 80, (size, size)).astype(np.uint8)
    if bright:
        a[size // 4 : -size // 4, size // 4 : -size // 4] += 150
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def make_data(root: Path, n: int = 8, classes: tuple[str, ...] = ("CNV", "NORMAL")) -> Path:
    """``root/train/CLASS/*.png``: ``n`` 16-px images per class (CNV has a bright square)."""
    rng = np.random.default_rng(0)
    for cls in classes:
        for i in range(n):
            _png(root / "train" / cls / f"{cls}-{i}-0.png", cls == "CNV", rng)
    return root


def make_pool(folder: Path, n: int = 8) -> Path:
    """A flat folder of ``n`` "generated" CNV-like images, at another size (they get resized)."""
    rng = np.random.default_rng(1)
    for i in range(n):
        _png(folder / f"gen-{i:03d}.png", True, rng, size=20)
    return folder


@pytest.fixture
def env(tmp_path: Path) -> dict:
    home = tmp_path / "home"
    home.mkdir()
    return {
        "home": home,
        "data": make_data(tmp_path / "data"),
        "pool": make_pool(tmp_path / "pool"),
        "tmp": tmp_path,
    }


TRAIN = ["--image-size", str(SIZE), "--epochs", "2", "--device", "cpu"]


@pytest.fixture
def run_train(env, run_cli, one_thread) -> Callable[..., tuple[int, str, str]]:
    """``run_train(*args) -> (rc, stdout, stderr)``: `train` on the env's home, in-process."""

    def run(*args: str) -> tuple[int, str, str]:
        return run_cli(["train", "--home", str(env["home"]), *TRAIN, *args])

    return run


def assert_clean_error(env: dict, rc: int, out: str, err: str, *fragments: str) -> None:
    assert rc == 2, out + err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ratio-search: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    runs = env["home"] / "runs"
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())
    assert not (env["tmp"] / "out").exists()
    assert out == ""


# ------------------------------------------------------------------------------------ happy path


@pytest.mark.e2e
def test_train_json_happy_path(env, run_train):
    out = env["tmp"] / "out"
    rc, stdout, stderr = run_train(
        "--data", str(env["data"]), "--r", "0.5", "--pool", str(env["pool"]), "--json",
        "--out", str(out),
    )  # fmt: skip
    assert rc == 0, stderr
    assert "Traceback" not in stderr
    assert "epoch" not in stderr  # --json: no progress bar
    lines = stdout.strip().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    m = doc["metrics"]
    assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["f1"] <= 1.0
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (2, 2) and cm.sum() == doc["n_val"] > 0
    assert m["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert doc["r"] == 0.5 and doc["mode"] == "replace"
    assert doc["class_names"] == ["CNV", "NORMAL"] and doc["synthetic_class"] == "CNV"
    # 8 images per class, some carved off as val; R=0.5 replaces half of CNV's training images
    n_cnv = doc["n_train"] - (8 - cm[1].sum())
    assert doc["n_synthetic"] == int(np.floor(0.5 * n_cnv + 0.5))
    assert doc["n_real"] + doc["n_synthetic"] == doc["n_train"]
    assert [h["epoch"] for h in doc["history"]] == [1, 2]
    assert doc["pool"]["kind"] == "image-folder" and doc["pool"]["path"] == str(env["pool"])
    # the outputs: resolved config (loadable, same values) and the same metrics
    assert Path(doc["out"]) == out
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "metrics.json"]
    cfg = load_config(out / "config.yaml")
    assert cfg.train.r == 0.5 and cfg.train.epochs == 2 and cfg.data.source == "imagefolder"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"] == m and saved["history"] == doc["history"]


@pytest.mark.e2e
def test_train_human_summary_and_default_out(env):
    """The real command in a subprocess (the smoke test): summary, default out, progress bar."""
    cmd = [sys.executable, "-m", "ratio_search.cli", "train", "--home", str(env["home"]), *TRAIN]
    proc_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    res = subprocess.run(
        [*cmd, "--data", str(env["data"]), "--r", "0"],
        capture_output=True, text=True, env=proc_env, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    out_lines = res.stdout.strip().splitlines()
    assert len(out_lines) == 1 and out_lines[0].startswith("R=0 (replace): val accuracy ")
    assert "0 synthetic" in out_lines[0]
    runs = list((env["home"] / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("train-")
    assert str(runs[0]) in out_lines[0]
    assert (runs[0] / "metrics.json").is_file() and (runs[0] / "config.yaml").is_file()
    assert "2/2" in res.stderr  # the progress bar over epochs ran to the end
    # ...and a bad input through the real command: one line, exit 2, no traceback.
    res = subprocess.run(
        [*cmd, "--data", str(env["data"]), "--r", "1.5", "--pool", str(env["pool"])],
        capture_output=True, text=True, env=proc_env, timeout=300,
    )  # fmt: skip
    runs_before = list((env["home"] / "runs").iterdir())
    assert res.returncode == 2 and res.stdout == "" and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        "ratio-search: error: train.r: 1.5 is outside [0.0, 1.0]"
    ]
    assert runs_before == runs


@pytest.mark.e2e
def test_train_config_best_yaml_with_pool_and_expected(env, run_train):
    best = env["tmp"] / "best.yaml"
    best.write_text(
        yaml.safe_dump(
            {
                "data": {"source": "imagefolder", "path": str(env["data"]), "image_size": SIZE},
                "train": {"r": 0.25, "mode": "augment", "epochs": 3, "seed": 3},
                "pool": {"path": "pool", "n": 6},  # relative to the YAML's folder
                "expected": {"accuracy": 0.9, "mlflow_run_id": "abc"},
            }
        )
    )
    rc, stdout, stderr = run_train("--config", str(best), "--json")  # --epochs 2 overrides 3
    assert rc == 0, stderr
    doc = json.loads(stdout)
    assert doc["r"] == 0.25 and doc["mode"] == "augment"
    assert len(doc["history"]) == 2
    assert doc["n_synthetic"] > 0 and doc["pool"]["path"] == str(env["pool"])
    assert doc["pool"]["n"] == 6  # the first 6 of the folder's 8 images
    cfg = load_config(Path(doc["out"]) / "config.yaml")
    assert cfg.train.seed == 3 and cfg.train.mode == "augment"


@pytest.mark.e2e
def test_skip_bad_images_skips_and_reports_the_count(env, run_train):
    bad = env["data"] / "train" / "NORMAL" / "NORMAL-99-0.png"
    bad.write_bytes(b"this is not a png")
    rc, stdout, stderr = run_train(
        "--data", str(env["data"]), "--r", "0", "--skip-bad-images", "--json"
    )
    assert rc == 0, stderr
    assert json.loads(stdout)["skipped_images"] == 1
    rc, stdout, stderr = run_train("--data", str(env["data"]), "--r", "0", "--skip-bad-images")
    assert rc == 0, stderr
    assert "skipped 1 unreadable image" in stdout


# ------------------------------------------------------------------------------------ bad input
# Each case: env -> (the train flags, fragments the one error line must name).


def _missing_data_path(env):
    missing = env["tmp"] / "nope"
    return ["--data", missing, "--out", env["tmp"] / "out"], ["not found", str(missing)]


def _empty_class_folder(env):
    empty = env["data"] / "train" / "DRUSEN"
    empty.mkdir()
    return ["--data", env["data"], "--out", env["tmp"] / "out"], ["no images", str(empty)]


def _missing_class_folder(env):
    return ["--data", env["data"], "--classes", "CNV", "DME"], ["DME"]


def _unreadable_image(env):
    bad = env["data"] / "train" / "CNV" / "CNV-77-0.png"
    bad.write_bytes(b"\x89PNG but truncated")
    return ["--data", env["data"], "--out", env["tmp"] / "out"], ["unreadable image", str(bad)]


def _too_few_images_for_val(env):
    data = make_data(env["tmp"] / "small", n=1)
    return ["--data", data, "--out", env["tmp"] / "out"], ["cannot carve a validation split", "CNV"]


def _r_outside(r):
    def case(env):
        return ["--data", env["data"], "--r", r, "--pool", env["pool"]], ["train.r", r, "outside"]

    return case


def _r_above_zero_without_a_pool(env):
    return ["--data", env["data"], "--r", "0.5"], ["--pool"]


def _pool_smaller_than_r_needs(env):
    small = make_pool(env["tmp"] / "small-pool", n=2)
    flags = ["--data", env["data"], "--r", "1", "--pool", small, "--out", env["tmp"] / "out"]
    return flags, ["pool has 2 images", "R=1 needs"]


def _missing_pool_folder(env):
    return ["--data", env["data"], "--r", "0.5", "--pool", "no-such-pool"], [
        "pool not found",
        "no-such-pool",
    ]


def _unreadable_pool_image(env):
    bad = env["pool"] / "gen-999.png"
    bad.write_bytes(b"garbage")
    return ["--data", env["data"], "--r", "0.5", "--pool", env["pool"]], [
        "unreadable image",
        str(bad),
    ]


def _unknown_yaml_key(env):
    cfg = env["tmp"] / "bad.yaml"
    cfg.write_text("train:\n  r: 0.5\n  learning_rate: 0.1\n")
    return ["--data", env["data"], "--config", cfg], ["train.learning_rate", str(cfg)]


def _unknown_top_level_yaml_key(env):
    cfg = env["tmp"] / "bad.yaml"
    cfg.write_text("train:\n  r: 0.0\nmetrics:\n  accuracy: 1.0\n")
    return ["--data", env["data"], "--config", cfg], ["'metrics'", "pool", "expected"]


BAD_INPUTS = [
    _missing_data_path,
    _empty_class_folder,
    _missing_class_folder,
    _unreadable_image,
    _too_few_images_for_val,
    pytest.param(_r_outside("1.5"), id="r_above_one"),
    pytest.param(_r_outside("-0.1"), id="r_below_zero"),
    _r_above_zero_without_a_pool,
    _pool_smaller_than_r_needs,
    _missing_pool_folder,
    _unreadable_pool_image,
    _unknown_yaml_key,
    _unknown_top_level_yaml_key,
]


@pytest.mark.edges
@pytest.mark.parametrize(
    "case", BAD_INPUTS, ids=lambda c: c.__name__.strip("_") if callable(c) else None
)
def test_bad_input_is_one_line_exit_2(env, run_train, case):
    flags, fragments = case(env)
    rc, out, err = run_train(*map(str, flags))
    assert_clean_error(env, rc, out, err, *fragments)


@pytest.mark.edges
def test_existing_output_folder_is_not_overwritten(env, run_train):
    out = env["tmp"] / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, _, err = run_train("--data", str(env["data"]), "--out", str(out))
    assert rc == 2 and "already exists" in err and "Traceback" not in err
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1


# ------------------------------------------------------------------- the YAML reader, in-process


@pytest.mark.unit
def test_read_train_yaml_accepts_sections_pool_expected(tmp_path):
    (tmp_path / "p").mkdir()
    f = tmp_path / "best.yaml"
    f.write_text("train:\n  r: 0.5\npool: p\nexpected:\n  accuracy: 0.9\n")
    sections, pool, n = read_train_yaml(f)
    assert sections == {"train": {"r": 0.5}}
    assert pool == str(tmp_path / "p") and n is None
    cfg, pool2, _ = resolve_train_config(f, {"train.r": 0.25, "train.lr": None})
    assert cfg.train.r == 0.25 and pool2 == pool and cfg.train.lr == 1e-3


@pytest.mark.unit
def test_read_train_yaml_pool_may_be_a_mapping_or_a_key(tmp_path):
    f = tmp_path / "best.yaml"
    f.write_text("pool:\n  key: abc123\n  n: 40\n")
    assert read_train_yaml(f)[1:] == ("abc123", 40)  # not a folder beside the YAML: a key
    f.write_text("pool: abc123\nexpected:\n  pool_n: 30\n")  # as export writes it
    assert read_train_yaml(f)[1:] == ("abc123", 30)
    f.write_text("pool: null\nexpected:\n  pool_n: 0\n")
    assert read_train_yaml(f)[1:] == (None, None)
    f.write_text("pool:\n  key: abc123\n  size: 40\n")
    with pytest.raises(ConfigError, match="pool.size"):
        read_train_yaml(f)
    f.write_text("pool:\n  key: abc123\n  n: 0\n")
    with pytest.raises(ConfigError, match="pool.n"):
        read_train_yaml(f)


@pytest.mark.unit
def test_resolve_train_config_validates_values(tmp_path):
    with pytest.raises(ConfigError, match="train.epochs"):
        resolve_train_config(None, {"train.epochs": 0})


@pytest.mark.unit
def test_load_pool_images_from_a_pool_folder_and_by_key(tmp_path):
    from ratio_search.errors import PoolError
    from ratio_search.home import Home
    from ratio_search.train.trial import load_pool_images

    home = Home(tmp_path / "home")
    folder = home.pools / "k123"
    folder.mkdir(parents=True)
    images = np.arange(3 * 1 * 8 * 8, dtype=np.uint8).reshape(3, 1, 8, 8)
    np.save(folder / "images.npy", images)
    (folder / "manifest.json").write_text(json.dumps({"key": "k123", "n": 3}))
    got, info = load_pool_images(folder, home, 8, 1)
    assert isinstance(got, np.memmap) and np.array_equal(got, images)
    assert info["kind"] == "pool" and info["key"] == "k123"
    by_key, _ = load_pool_images("k123", home, 8, 1)
    assert np.array_equal(by_key, images)
    first, info = load_pool_images("k123", home, 8, 1, n=2)  # a pool that grew since the trial
    assert np.array_equal(first, images[:2]) and info["n"] == 2
    with pytest.raises(PoolError, match="holds 3 images, fewer than the 4"):
        load_pool_images("k123", home, 8, 1, n=4)
    with pytest.raises(PoolError, match=r"\(N, 3, 8, 8\)"):  # shape must match the data
        load_pool_images(folder, home, 8, 3)
