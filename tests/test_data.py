"""load_dataset / load_image_folder: sources, splits, errors and the on-disk cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import ratio_search.data.imagefolder as imagefolder
from ratio_search.config import DataConfig
from ratio_search.data import infer_source, load_dataset, load_image_folder
from ratio_search.data.imagefolder import patient_of, plan_image_folder
from ratio_search.errors import DataError


def _cfg(root, **kw) -> DataConfig:
    kw.setdefault("image_size", 8)
    kw.setdefault("min_val_per_class", 0)
    return DataConfig(source="imagefolder", path=str(root), **kw)


# ----------------------------------------------------------------------------- image folders


@pytest.mark.unit
def test_image_folder_shapes_labels_and_info(tiny_image_folder, tiny_home):
    ds = load_dataset(_cfg(tiny_image_folder), tiny_home)
    assert ds.class_names == ["CNV", "NORMAL"] and ds.synthetic_label == 0
    assert ds.train_x.shape == (16, 1, 8, 8) and ds.train_x.dtype == np.uint8
    assert ds.val_x.shape == (4, 1, 8, 8) and ds.test_x.shape == (4, 1, 8, 8)
    assert ds.train_y.dtype == np.int64 and ds.train_y.tolist() == [0] * 8 + [1] * 8
    assert ds.info["val"]["how"] == "val folder" and ds.info["skipped"] == 0
    assert ds.info["val_patients_in_train"] == 0 and ds.info["test_patients_in_train"] == 0
    assert ds.info["counts"]["train"] == {"CNV": 8, "NORMAL": 8}
    # class 1 was written 40 grey levels brighter: labels and pixels line up
    assert ds.train_x[ds.train_y == 1].mean() > ds.train_x[ds.train_y == 0].mean() + 20


@pytest.mark.unit
def test_classes_order_and_synthetic_class(tiny_image_folder, tiny_home):
    ds = load_dataset(
        _cfg(tiny_image_folder, classes=["NORMAL", "CNV"], synthetic_class="CNV"), tiny_home
    )
    assert ds.class_names == ["NORMAL", "CNV"] and ds.synthetic_label == 1
    assert (
        ds.train_x[ds.train_y == 0].mean() > ds.train_x[ds.train_y == 1].mean()
    )  # NORMAL is label 0 now
    with pytest.raises(DataError, match="synthetic class 'DME'"):
        load_dataset(_cfg(tiny_image_folder, synthetic_class="DME"), tiny_home)


@pytest.mark.unit
@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("channels", [1, 3])
def test_grayscale_and_rgb_inputs_load_to_the_configured_channels(
    make_image_folder, tiny_home, mode, channels
):
    root = make_image_folder(f"imgs_{mode}", mode=mode, size=(20, 12))  # not square either
    ds = load_dataset(_cfg(root, channels=channels, image_size=10), tiny_home)
    assert ds.train_x.shape == (16, channels, 10, 10)
    if mode == "L" and channels == 3:
        np.testing.assert_array_equal(ds.train_x[:, 0], ds.train_x[:, 2])  # grey replicated


@pytest.mark.unit
def test_same_resize_for_every_image(tmp_path):
    """A 64 px image is reduced by an exact 2x2 mean (what real and synthetic images both get)."""
    rng = np.random.default_rng(0)
    a = (rng.integers(0, 128, (64, 64)) * 2).astype(np.uint8)  # even values: exact halves
    Image.fromarray(a).save(tmp_path / "a.png")
    got = load_image_folder(tmp_path, 32, 1)[0, 0].astype(np.float64)
    want = a.astype(np.float64).reshape(32, 2, 32, 2).mean(axis=(1, 3))
    assert np.abs(got - want).max() <= 0.5


@pytest.mark.edges
def test_corrupt_image_is_named_or_skipped_and_counted(tiny_image_folder, tiny_home):
    bad = tiny_image_folder / "train" / "CNV" / "CNV-9999-1.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="CNV-9999-1.png"):
        load_dataset(_cfg(tiny_image_folder), tiny_home)
    ds = load_dataset(_cfg(tiny_image_folder, skip_bad_images=True), tiny_home)
    assert ds.info["skipped"] == 1 and str(bad) in ds.info["skipped_files"][0]
    assert ds.info["counts"]["train"]["CNV"] == 8  # 9 files, one skipped


@pytest.mark.edges
def test_missing_path_class_and_folders(tmp_path, tiny_image_folder, tiny_home):
    with pytest.raises(DataError, match="not found"):
        load_dataset(_cfg(tmp_path / "nowhere"), tiny_home)
    with pytest.raises(DataError, match=r"unknown class 'DME'.*CNV, NORMAL"):
        load_dataset(_cfg(tiny_image_folder, classes=["CNV", "DME"]), tiny_home)
    for f in (tiny_image_folder / "test" / "NORMAL").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"class folder has no images: .*test/NORMAL"):
        load_dataset(_cfg(tiny_image_folder), tiny_home)
    (tiny_image_folder / "test" / "NORMAL").rmdir()
    with pytest.raises(DataError, match=r"class folder missing: .*test/NORMAL"):
        load_dataset(_cfg(tiny_image_folder), tiny_home)


@pytest.mark.edges
def test_empty_train_class_folder_is_named(tiny_image_folder, tiny_home):
    (tiny_image_folder / "train" / "DRUSEN").mkdir()
    with pytest.raises(DataError, match=r"class folder has no images: .*train/DRUSEN"):
        load_dataset(_cfg(tiny_image_folder), tiny_home)
    # naming the classes leaves the empty one out
    ds = load_dataset(_cfg(tiny_image_folder, classes=["CNV", "NORMAL"]), tiny_home)
    assert ds.class_names == ["CNV", "NORMAL"]


@pytest.mark.unit
def test_missing_test_split_gives_empty_arrays(make_image_folder, tiny_home):
    root = make_image_folder("no_test")
    for cls in ("CNV", "NORMAL"):
        for f in (root / "test" / cls).iterdir():
            f.unlink()
        (root / "test" / cls).rmdir()
    (root / "test").rmdir()
    ds = load_dataset(_cfg(root), tiny_home)
    assert ds.test_x.shape == (0, 1, 8, 8) and ds.test_y.shape == (0,)
    assert ds.info["test"]["how"] == "none" and "empty" in ds.info["test"]["note"]


@pytest.mark.unit
def test_max_per_class_is_a_seeded_deterministic_cap(make_image_folder, tiny_home):
    root = make_image_folder("cap", n_train=12)
    a = load_dataset(_cfg(root, max_per_class=5), tiny_home)
    b = load_dataset(_cfg(root, max_per_class=5), tiny_home)
    c = load_dataset(_cfg(root, max_per_class=5, seed=1), tiny_home)
    full = load_dataset(_cfg(root), tiny_home)
    assert a.info["counts"]["train"] == {"CNV": 5, "NORMAL": 5}
    np.testing.assert_array_equal(a.train_x, b.train_x)
    assert not np.array_equal(a.train_x, c.train_x)
    # the kept images are real training images
    pool = {x.tobytes() for x in full.train_x}
    assert all(x.tobytes() in pool for x in a.train_x)


# ------------------------------------------------------------------------------ val carving


@pytest.mark.unit
def test_tiny_val_is_replaced_by_a_patient_grouped_split(make_image_folder, tiny_home):
    root = make_image_folder("grouped", n_train=30, n_val=2, per_patient=3)
    # one patient with images in both classes (as in OCT2017): must stay on one side too
    src = root / "train" / "NORMAL" / "NORMAL-1100-1.png"
    src.rename(root / "train" / "NORMAL" / "NORMAL-1000-9.png")  # patient 1000 also has CNV images
    plan = plan_image_folder(root, None, None, val_fraction=0.3, min_val_per_class=20, seed=0)
    assert plan.info["val"]["how"] == "carved from train" and plan.info["val"]["grouped_by_patient"]
    train_p = {patient_of(p) for p, _ in plan.files["train"]}
    val_p = {patient_of(p) for p, _ in plan.files["val"]}
    assert train_p and val_p and not train_p & val_p
    assert plan.info["val_patients_in_train"] == 0
    for k in (0, 1):
        n_val = sum(1 for _, c in plan.files["val"] if c == k)
        assert 6 <= n_val <= 12  # about 30 % of 30, in whole patients of 3
    # the tiny val folder is not used; load_dataset gives the same split
    ds = load_dataset(_cfg(root, val_fraction=0.3, min_val_per_class=20), tiny_home)
    assert len(ds.val_y) == len(plan.files["val"]) and len(ds.train_y) == len(plan.files["train"])
    # a different seed gives a different split, the same seed the same one
    again = plan_image_folder(root, None, None, 0.3, 20, seed=0)
    other = plan_image_folder(root, None, None, 0.3, 20, seed=1)
    assert again.files["val"] == plan.files["val"] and other.files["val"] != plan.files["val"]


@pytest.mark.unit
def test_carving_without_patient_names_is_per_file(tmp_path, tiny_home):
    for cls, shade in (("a", 30), ("b", 200)):
        d = tmp_path / "plain" / "train" / cls
        d.mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((8, 8), shade + i, np.uint8)).save(d / f"img{i}.png")
    ds = load_dataset(_cfg(tmp_path / "plain", val_fraction=0.2, min_val_per_class=5), tiny_home)
    assert ds.info["val"]["grouped_by_patient"] is False
    assert ds.info["counts"]["val"] == {"a": 2, "b": 2} and ds.info["counts"]["train"] == {
        "a": 8,
        "b": 8,
    }
    train_set = {x.tobytes() for x in ds.train_x}
    assert not any(x.tobytes() in train_set for x in ds.val_x)


@pytest.mark.edges
def test_too_few_images_to_carve_val(tmp_path, tiny_home):
    for cls in ("a", "b"):
        d = tmp_path / "one" / "train" / cls
        d.mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / "only.png")
    with pytest.raises(DataError, match="cannot carve a validation split from 1"):
        load_dataset(_cfg(tmp_path / "one", min_val_per_class=5), tiny_home)


# ---------------------------------------------------------------------------------- cache


@pytest.mark.unit
def test_second_load_reuses_the_cache_without_decoding(tiny_image_folder, tiny_home, monkeypatch):
    first = load_dataset(_cfg(tiny_image_folder), tiny_home)
    assert first.info["cache"] == "miss"

    def no_decoding(*a, **k):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(imagefolder, "decode_image", no_decoding)
    second = load_dataset(_cfg(tiny_image_folder), tiny_home)
    assert second.info["cache"] == "hit" and second.key == first.key
    assert isinstance(second.train_x, np.memmap) and not second.train_x.flags.writeable
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(second, name), getattr(first, name))
    # no temp folders left in the cache
    assert not [p for p in tiny_home.cache.iterdir() if p.name.startswith(".")]

    # a changed file, or another image size, is another key (and would be decoded)
    f = tiny_image_folder / "train" / "CNV" / "CNV-1000-1.png"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded"):
        load_dataset(_cfg(tiny_image_folder), tiny_home)
    with pytest.raises(AssertionError, match="decoded"):
        load_dataset(_cfg(tiny_image_folder, image_size=6), tiny_home)


@pytest.mark.unit
def test_key_ignores_the_folder_location(make_image_folder, tiny_home):
    a = make_image_folder("one_place")
    b = make_image_folder("other_place")
    # same names, same bytes; align the times so that only the location differs
    for fa in a.rglob("*.png"):
        fb = b / fa.relative_to(a)
        os.utime(fb, ns=(fa.stat().st_atime_ns, fa.stat().st_mtime_ns))
    first = load_dataset(_cfg(a), tiny_home)
    second = load_dataset(_cfg(b), tiny_home)
    assert first.key == second.key and second.info["cache"] == "hit"
    assert second.info["path"] == str(b.resolve())  # info names where the data is now


@pytest.mark.unit
def test_threaded_decoding_keeps_order_and_names_the_bad_file(tmp_path):
    """Large lists are decoded by threads; the result equals one-by-one decoding."""
    paths = []
    for i in range(300):
        p = tmp_path / f"{i:03d}.png"
        Image.fromarray(np.full((4, 4), i % 256, np.uint8)).save(p)
        paths.append(p)
    paths[200].write_bytes(b"broken")
    with pytest.raises(DataError, match="200.png"):
        imagefolder.decode_files(paths, 4, 1, skip_bad=False)
    x, kept, skipped = imagefolder.decode_files(paths, 4, 1, skip_bad=True)
    assert skipped == [str(paths[200])] and kept == [i for i in range(300) if i != 200]
    assert x[:, 0, 0, 0].tolist() == [i % 256 for i in kept]


# -------------------------------------------------------------------------------------- npz


def _write_npz(path, rgb=False, with_val=True, with_test=True, drop=None):
    rng = np.random.default_rng(0)
    shape = (12, 8, 8, 3) if rgb else (12, 8, 8)
    arrays = {
        "train_images": rng.integers(0, 256, shape, dtype=np.uint8),
        "train_labels": np.array([0, 1, 2] * 4, dtype=np.int64).reshape(-1, 1),
    }
    if with_val:
        arrays["val_images"] = rng.integers(0, 256, (6,) + shape[1:], dtype=np.uint8)
        arrays["val_labels"] = np.array([0, 1, 2] * 2).reshape(-1, 1)
    if with_test:
        arrays["test_images"] = rng.integers(0, 256, (3,) + shape[1:], dtype=np.uint8)
        arrays["test_labels"] = np.array([2, 1, 0])
    if drop:
        del arrays[drop]
    np.savez(path, **arrays)
    return arrays


@pytest.mark.unit
def test_npz_round_trip(tmp_path, tiny_home):
    arrays = _write_npz(tmp_path / "d.npz")
    cfg = DataConfig(source="npz", path=str(tmp_path / "d.npz"), image_size=8, min_val_per_class=1)
    ds = load_dataset(cfg, tiny_home)
    assert ds.class_names == ["0", "1", "2"]
    np.testing.assert_array_equal(ds.train_x[:, 0], arrays["train_images"])  # same size: unchanged
    np.testing.assert_array_equal(ds.train_y, arrays["train_labels"][:, 0])
    np.testing.assert_array_equal(ds.val_x[:, 0], arrays["val_images"])
    np.testing.assert_array_equal(ds.test_y, [2, 1, 0])
    assert load_dataset(cfg, tiny_home).info["cache"] == "hit"


@pytest.mark.unit
def test_npz_rgb_class_selection_and_resize(tmp_path, tiny_home):
    arrays = _write_npz(tmp_path / "rgb.npz", rgb=True)
    cfg = DataConfig(source="npz", path=str(tmp_path / "rgb.npz"), image_size=8, channels=3,
                     classes=["2", "0"], min_val_per_class=1)  # fmt: skip
    ds = load_dataset(cfg, tiny_home)
    assert ds.class_names == ["2", "0"] and ds.train_x.shape == (8, 3, 8, 8)
    keep = np.isin(arrays["train_labels"][:, 0], [0, 2])
    np.testing.assert_array_equal(ds.train_x, arrays["train_images"][keep].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(ds.train_y, np.where(arrays["train_labels"][keep, 0] == 2, 0, 1))
    small = load_dataset(
        DataConfig(source="npz", path=str(tmp_path / "rgb.npz"), image_size=4, min_val_per_class=1),
        tiny_home,
    )
    assert small.train_x.shape == (12, 1, 4, 4)


@pytest.mark.edges
def test_npz_missing_key_and_missing_splits(tmp_path, tiny_home):
    _write_npz(tmp_path / "broken.npz", drop="val_labels")
    with pytest.raises(DataError, match="missing key 'val_labels'"):
        load_dataset(
            DataConfig(source="npz", path=str(tmp_path / "broken.npz"), image_size=8), tiny_home
        )
    _write_npz(tmp_path / "notrain.npz", drop="train_images")
    with pytest.raises(DataError, match="train_images"):
        load_dataset(
            DataConfig(source="npz", path=str(tmp_path / "notrain.npz"), image_size=8), tiny_home
        )
    _write_npz(tmp_path / "trainonly.npz", with_val=False, with_test=False)
    ds = load_dataset(
        DataConfig(
            source="npz", path=str(tmp_path / "trainonly.npz"), image_size=8, val_fraction=0.25
        ),
        tiny_home,
    )
    assert (
        ds.info["val"]["how"] == "carved from train" and len(ds.val_y) == 3 and len(ds.train_y) == 9
    )
    assert ds.test_x.shape == (0, 1, 8, 8)
    with pytest.raises(DataError, match="not found"):
        load_dataset(DataConfig(source="npz", path=str(tmp_path / "nope.npz")), tiny_home)


# ------------------------------------------------------------------------- flat image folders


@pytest.mark.unit
def test_load_image_folder_flat_and_one_subfolder(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((12, 12, 3), 10 * i, np.uint8)).save(flat / f"{i}.png")
    (flat / "notes.txt").write_text("ignored")
    a = load_image_folder(flat, 8, 1)
    assert a.shape == (3, 1, 8, 8) and a.dtype == np.uint8 and a[2].mean() == 20
    nested = tmp_path / "nested"
    (nested / "CNV").mkdir(parents=True)
    for f in flat.glob("*.png"):
        (nested / "CNV" / f.name).write_bytes(f.read_bytes())
    np.testing.assert_array_equal(load_image_folder(nested, 8, 1), a)
    assert load_image_folder(flat, 8, 3, n=2).shape == (2, 3, 8, 8)
    with pytest.raises(DataError, match="has 3 images, 5 asked for"):
        load_image_folder(flat, 8, 1, n=5)


@pytest.mark.edges
def test_load_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_image_folder(tmp_path / "missing", 8)
    (tmp_path / "two" / "a").mkdir(parents=True)
    (tmp_path / "two" / "b").mkdir()
    with pytest.raises(DataError, match="several subfolders"):
        load_image_folder(tmp_path / "two", 8)
    with pytest.raises(DataError, match="no images"):
        load_image_folder(tmp_path / "two" / "a", 8)
    (tmp_path / "two" / "a" / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="x.png"):
        load_image_folder(tmp_path / "two" / "a", 8)
    skipped: list[str] = []
    with pytest.raises(DataError, match="no readable images"):
        load_image_folder(tmp_path / "two" / "a", 8, skip_bad=True, skipped=skipped)
    assert skipped and skipped[0].endswith("x.png")


@pytest.mark.unit
def test_infer_source():
    assert infer_source(None) == "phantom"
    assert infer_source("data/octmnist.NPZ") == "npz"
    assert infer_source("OCT2017") == "imagefolder"


@pytest.mark.e2e
def test_cli_data_info(tiny_image_folder, tmp_path, capsys):
    import json

    from ratio_search.cli import main

    argv = [
        "data",
        "info",
        "--data",
        str(tiny_image_folder),
        "--image-size",
        "8",
        "--home",
        str(tmp_path / "h"),
    ]
    assert main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["class_names"] == ["CNV", "NORMAL"] and out["synthetic_class"] == "CNV"
    # the tiny val (2 per class) is below the default min_val_per_class: carved from train
    assert out["info"]["val"]["how"] == "carved from train"
    assert sum(out["counts"]["train"].values()) + sum(out["counts"]["val"].values()) == 16
    assert main(argv) == 0
    assert "<- synthetic" in capsys.readouterr().out
    assert (
        main(["data", "info", "--data", str(tmp_path / "none"), "--home", str(tmp_path / "h")]) == 2
    )
    assert "data path not found" in capsys.readouterr().err


@pytest.mark.unit
def test_patients_shared_between_splits_are_counted(tiny_image_folder, tiny_home):
    val_file = next((tiny_image_folder / "val" / "CNV").iterdir())
    val_file.rename(val_file.with_name("CNV-1000-7.png"))  # patient 1000 is in train
    ds = load_dataset(_cfg(tiny_image_folder), tiny_home)
    assert ds.info["val_patients_in_train"] == 1 and ds.info["test_patients_in_train"] == 0


@pytest.mark.unit
def test_concurrent_loads_decode_once(tiny_image_folder, tiny_home, monkeypatch):
    """Two loaders at once (as two trials starting together): one decodes, the other waits and reads."""
    import threading
    import time

    real_decode = imagefolder.decode_image
    calls: list[str] = []

    def slow_decode(path, image_size, channels):
        calls.append(str(path))
        time.sleep(0.005)  # widen the race window
        return real_decode(path, image_size, channels)

    monkeypatch.setattr(imagefolder, "decode_image", slow_decode)
    results: list = []
    threads = [
        threading.Thread(
            target=lambda: results.append(load_dataset(_cfg(tiny_image_folder), tiny_home))
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2
    assert len(calls) == 24  # 12 files per class decoded once, not twice
    assert sorted(r.info["cache"] for r in results) == ["hit", "miss"]
    np.testing.assert_array_equal(results[0].train_x, results[1].train_x)
