"""The phantom OCT renderer and its image folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ratio_search.config import DataConfig
from ratio_search.data import load_dataset, phantom_folder
from ratio_search.data.imagefolder import patient_of
from ratio_search.data.phantom import CLASSES, render_phantom, write_phantom_folder
from ratio_search.errors import ConfigError, DataError


@pytest.mark.unit
def test_shapes_and_dtype():
    a = render_phantom(3, "CNV", seed=0, split="train", size=32)
    assert a.shape == (3, 32, 32) and a.dtype == np.uint8
    assert render_phantom(2, "NORMAL", seed=0, split="val", size=48).shape == (2, 48, 48)
    assert 0 < a.mean() < 255 and a.std() > 10  # not blank


@pytest.mark.unit
def test_same_seed_same_bytes_and_images_independent_of_n():
    a = render_phantom(4, "CNV", seed=5, split="train", size=32)
    b = render_phantom(4, "CNV", seed=5, split="train", size=32)
    assert a.tobytes() == b.tobytes()
    # image i depends on (seed, split, class, i) only: a longer run extends, a start offset continues
    np.testing.assert_array_equal(render_phantom(2, "CNV", seed=5, split="train", size=32), a[:2])
    np.testing.assert_array_equal(
        render_phantom(2, "CNV", seed=5, split="train", size=32, start=2), a[2:]
    )
    assert render_phantom(4, "CNV", seed=6, split="train", size=32).tobytes() != a.tobytes()


@pytest.mark.unit
def test_splits_are_different_streams():
    imgs = {
        s: render_phantom(6, "NORMAL", seed=0, split=s, size=32)
        for s in ("train", "val", "test", "base")
    }
    flat = {s: {a.tobytes() for a in v} for s, v in imgs.items()}
    names = list(flat)
    for i, s in enumerate(names):
        assert len(flat[s]) == 6
        for t in names[i + 1 :]:
            assert not flat[s] & flat[t], f"{s} and {t} share an image"


@pytest.mark.edges
def test_bad_arguments():
    with pytest.raises(ConfigError, match="class"):
        render_phantom(1, "DME", seed=0)
    with pytest.raises(ConfigError, match="split"):
        render_phantom(1, "CNV", seed=0, split="holdout")
    with pytest.raises(ConfigError, match="seed"):
        render_phantom(1, "CNV", seed=-1)


def _brightest_patch(images: np.ndarray) -> np.ndarray:
    """Per image: the mean of its brightest 4 x 4 patch (speckle averages out over 16 pixels).

    The fibrovascular lesion under a CNV dome is hyperreflective; a NORMAL scan's brightest
    structure is the thin RPE band.
    """
    n, h, w = images.shape
    return (
        images.astype(np.float64)
        .reshape(n, h // 4, 4, w // 4, 4)
        .mean(axis=(2, 4))
        .max(axis=(1, 2))
    )


@pytest.mark.unit
def test_cnv_and_normal_differ_measurably():
    cnv = _brightest_patch(render_phantom(120, "CNV", seed=1, split="train", size=64))
    normal = _brightest_patch(render_phantom(120, "NORMAL", seed=1, split="train", size=64))
    # CNV is brighter on average (about 200 vs 170 of 255 when this was written) ...
    assert cnv.mean() > normal.mean() + 15, (cnv.mean(), normal.mean())
    # ... but the classes overlap: brightness alone does not give the label away
    assert (normal > np.median(cnv)).mean() > 0.05


@pytest.mark.unit
def test_write_phantom_folder(tmp_path):
    out = write_phantom_folder(tmp_path / "ph", 5, 3, 2, seed=0, size=32)
    assert out == (tmp_path / "ph").resolve()
    for split, n in (("train", 5), ("val", 3), ("test", 2)):
        for cls in CLASSES:
            files = sorted((out / split / cls).glob("*.png"))
            assert len(files) == n
            assert all(f.name.startswith(f"{cls}-") for f in files)
    # patients: four images each, and no patient in two splits
    pats = {s: {patient_of(f) for f in (out / s).rglob("*.png")} for s in ("train", "val", "test")}
    assert None not in pats["train"]
    assert len(pats["train"]) == 2 * 2  # 5 images per class -> patients of 4 + 1
    assert not pats["train"] & pats["val"] and not pats["train"] & pats["test"]
    assert json.loads((out / "phantom.json").read_text())["seed"] == 0
    # no temp folders left behind; a second write refuses to overwrite
    assert [p.name for p in tmp_path.iterdir()] == ["ph"]
    with pytest.raises(DataError, match="not empty"):
        write_phantom_folder(tmp_path / "ph", 5, 3, 2, seed=0, size=32)


@pytest.mark.unit
def test_write_is_atomic_on_failure(tmp_path, monkeypatch):
    import ratio_search.data.phantom as ph

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ph, "render_phantom", boom)
    with pytest.raises(RuntimeError):
        write_phantom_folder(tmp_path / "ph", 2, 2, 2, seed=0, size=16)
    assert list(tmp_path.iterdir()) == []  # no half folder, no temp folder


@pytest.mark.unit
def test_load_dataset_phantom_writes_once_and_reads_as_imagefolder(tiny_home):
    cfg = DataConfig(
        source="phantom", image_size=16, phantom_n_per_class=4, phantom_val_per_class=3,
        phantom_test_per_class=2, min_val_per_class=1,
    )  # fmt: skip
    ds = load_dataset(cfg, tiny_home)
    assert ds.class_names == ["CNV", "NORMAL"] and ds.synthetic_label == 0
    assert (
        ds.train_x.shape == (8, 1, 16, 16)
        and ds.val_x.shape == (6, 1, 16, 16)
        and ds.test_x.shape == (4, 1, 16, 16)
    )
    assert ds.info["source"] == "phantom"
    folder = phantom_folder(cfg, tiny_home)
    assert folder.parent == tiny_home.data and folder.name.startswith("phantom-n4-")
    # the written PNGs reduced by a 2x2 mean are exactly what was loaded
    direct = render_phantom(4, "CNV", seed=0, split="train", size=64).astype(np.float64)
    means = direct.reshape(4, 16, 4, 16, 4).mean(axis=(2, 4))
    assert np.abs(means - ds.train_x[:4, 0]).max() <= 1.0
    mtime = (folder / "phantom.json").stat().st_mtime_ns
    load_dataset(cfg, tiny_home)
    assert (folder / "phantom.json").stat().st_mtime_ns == mtime  # reused, not rewritten


@pytest.mark.edges
def test_phantom_path_that_is_not_a_phantom_is_refused(tmp_path, tiny_home):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("hello")
    cfg = DataConfig(source="phantom", path=str(tmp_path / "mine"), phantom_n_per_class=2)
    with pytest.raises(DataError, match="not a phantom folder"):
        load_dataset(cfg, tiny_home)


@pytest.mark.e2e
def test_cli_data_phantom(tmp_path, capsys):
    from ratio_search.cli import main

    out = tmp_path / "ph"
    argv = ["data", "phantom", "--out", str(out), "--n-per-class", "2", "--n-val-per-class", "2",
            "--n-test-per-class", "2", "--size", "16", "--json"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["path"] == str(out.resolve())
    assert len(list(out.rglob("*.png"))) == 12
    assert main(argv) == 2  # refuses to overwrite, one line
    assert "not empty" in capsys.readouterr().err
