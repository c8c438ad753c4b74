"""Each pool-quality figure on cases with a known answer: identical, shifted, copied, independent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ratio_search.errors import ConfigError, DataError
from ratio_search.quality import (
    c2st,
    frechet_distance,
    kernel_inception_distance,
    load_feature_extractor,
    memorisation_share,
    pool_quality,
    precision_recall,
    rank_by_confidence,
    train_feature_extractor,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one CPU thread


def gauss(n=300, d=8, shift=0.0, seed=0, scale=1.0):
    return np.random.default_rng(seed).normal(shift, scale, (n, d))


# ------------------------------------------------------------------------- Fréchet distance


@pytest.mark.unit
def test_fd_identical_sets_is_zero():
    x = gauss()
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.unit
def test_fd_closed_form_for_a_mean_shift():
    # Same covariance, mean shifted by s in every one of d dims: FD = d * s^2 exactly.
    x = gauss(d=4)
    assert frechet_distance(x, x + 0.5) == pytest.approx(4 * 0.25, rel=1e-6)


@pytest.mark.unit
def test_fd_grows_with_the_shift():
    x = gauss(seed=0)
    fds = [frechet_distance(x, gauss(seed=1, shift=s)) for s in (0.0, 0.5, 1.0, 2.0)]
    assert fds == sorted(fds) and fds[0] < 0.5 < fds[-1]


@pytest.mark.unit
def test_fd_sees_a_variance_change():
    # Tr(S1 + S2 - 2 sqrt(S1 S2)) for S1 = I, S2 = 4 I in d = 8: 8 * (1 + 4 - 4) = 8.
    x = gauss(n=4000, seed=0)
    y = gauss(n=4000, seed=1, scale=2.0)
    assert frechet_distance(x, y) == pytest.approx(8.0, rel=0.1)


@pytest.mark.unit
def test_fd_singular_covariance_is_finite():
    x = gauss(n=5, d=16)  # fewer samples than dimensions
    fd = frechet_distance(x, gauss(n=5, d=16, seed=3))
    assert np.isfinite(fd) and fd >= 0


@pytest.mark.edges
def test_fd_rejects_mismatched_dimensions():
    with pytest.raises(DataError, match="dimensions"):
        frechet_distance(gauss(d=4), gauss(d=5))


# ------------------------------------------------------------------------------------ KID


@pytest.mark.unit
def test_kid_identical_distribution_near_zero_and_shift_positive():
    x, y = gauss(seed=0), gauss(seed=1)
    same, _ = kernel_inception_distance(x, y, n_subsets=10, subset_size=200)
    shifted, _ = kernel_inception_distance(
        x, gauss(seed=1, shift=1.0), n_subsets=10, subset_size=200
    )
    ident, _ = kernel_inception_distance(x, x, n_subsets=10, subset_size=200)
    # Unbiased, so it scatters around 0; tiny against a one-sd shift of the mean.
    assert abs(same) < 0.01 * shifted and abs(ident) < 0.01 * shifted
    assert shifted > 1.0


@pytest.mark.unit
def test_kid_grows_with_the_shift():
    x = gauss(seed=0)
    kids = [
        kernel_inception_distance(x, gauss(seed=1, shift=s), n_subsets=5)[0]
        for s in (0.5, 1.0, 2.0)
    ]
    assert kids == sorted(kids)


@pytest.mark.unit
def test_kid_is_seeded():
    x, y = gauss(seed=0), gauss(seed=1, shift=0.3)
    a = kernel_inception_distance(x, y, n_subsets=3, subset_size=50, seed=7)
    b = kernel_inception_distance(x, y, n_subsets=3, subset_size=50, seed=7)
    assert a == b


# --------------------------------------------------------------------- precision / recall


@pytest.mark.unit
def test_precision_recall_identical_sets_are_one():
    x = gauss()
    assert precision_recall(x, x, k=3) == (1.0, 1.0)


@pytest.mark.unit
def test_precision_drops_with_the_shift():
    x = gauss(seed=0)
    prec = [precision_recall(x, gauss(seed=1, shift=s))[0] for s in (0.0, 1.0, 3.0)]
    assert prec[0] > 0.6 and prec[0] > prec[1] > prec[2] and prec[2] < 0.1


@pytest.mark.unit
def test_mode_collapse_keeps_precision_loses_recall():
    # A pool of near-duplicates of one real mode: faithful (precision high) but not diverse.
    real = gauss(n=300, seed=0)
    collapsed = real[:5].repeat(60, axis=0) + np.random.default_rng(1).normal(0, 1e-3, (300, 8))
    p, r = precision_recall(real, collapsed, k=3)
    assert p > 0.9 and r < 0.2


# ------------------------------------------------------------------------------------ C2ST


@pytest.mark.unit
def test_c2st_features_same_distribution_is_chance():
    acc = c2st(gauss(n=200, seed=0), gauss(n=200, seed=1), seed=0)
    assert 0.4 < acc < 0.6


@pytest.mark.unit
def test_c2st_features_clearly_different_is_near_one():
    acc = c2st(gauss(n=200, seed=0), gauss(n=200, seed=1, shift=3.0), seed=0)
    assert acc > 0.95


@pytest.mark.unit
def test_c2st_balances_unequal_sizes():
    # 400 vs 40 from one distribution: still chance (a majority-class guess would score 0.91).
    acc = c2st(gauss(n=400, seed=0), gauss(n=40, seed=1), seed=0)
    assert 0.3 < acc < 0.7


def noise_images(n, seed, offset=0, size=8):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 100, (n, 1, size, size)) + offset).astype(np.uint8)


@pytest.mark.unit
def test_c2st_images_with_the_cnn():
    kw = {"seed": 0, "epochs": 2, "min_steps": 40, "widths": (4,), "fc": 8}
    same = c2st(noise_images(64, 0), noise_images(64, 1), **kw)
    brighter = c2st(noise_images(64, 0), noise_images(64, 1, offset=80), **kw)
    assert 0.3 < same < 0.7
    assert brighter > 0.9


# ---------------------------------------------------------------------------- memorisation


@pytest.mark.unit
def test_memorisation_copies_score_one():
    train = gauss(n=200)
    share, thr = memorisation_share(train, train[:50].copy())
    assert share == 1.0 and thr > 0


@pytest.mark.unit
def test_memorisation_independent_draws_score_about_the_quantile():
    train, fresh = gauss(n=400, seed=0), gauss(n=400, seed=1)
    share, _ = memorisation_share(train, fresh, quantile=0.1)
    assert 0.03 < share < 0.2


@pytest.mark.unit
def test_memorisation_half_copies():
    train = gauss(n=200, seed=0)
    fake = np.concatenate([train[:100] + 1e-9, gauss(n=100, seed=5, shift=3.0)])
    share, _ = memorisation_share(train, fake)
    assert share == pytest.approx(0.5)


@pytest.mark.unit
def test_memorisation_on_uint8_images():
    train = noise_images(40, 0)
    assert memorisation_share(train, train[:10])[0] == 1.0
    with pytest.raises(ConfigError, match="quantile"):
        memorisation_share(train, train, quantile=0.0)


# ----------------------------------------------------------- through the CNN feature extractor


def two_class_images(n=48, size=16, seed=0):
    """Class 0 has a bright central square; class 1 is background only."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 60, (n, 1, size, size)).astype(np.uint8)
    x[y == 0, :, 4:12, 4:12] += 150
    return x, y.astype(np.int64)


TINY = {"widths": (4, 4), "fc": 8, "epochs": 3, "min_steps": 20, "batch_size": 16, "lr": 1e-2}


@pytest.mark.unit
def test_pool_quality_end_to_end_on_tiny_images(tmp_path):
    x, y = two_class_images()
    fe = train_feature_extractor(x, y, 2, seed=0, **TINY)
    assert fe.features(x).shape == (48, 8)
    real = x[y == 0]
    # Copies of the real class: a perfect (memorising) generator.
    copies = pool_quality(
        real, real, fe, synthetic_label=0, c2st_epochs=2, c2st_min_steps=4, kid_subsets=3
    )
    # A bad generator: the other class's images.
    wrong = pool_quality(
        x[y == 1], real, fe, synthetic_label=0, c2st_epochs=2, c2st_min_steps=4, kid_subsets=3
    )
    assert copies["fd"] == pytest.approx(0.0, abs=1e-6)
    assert copies["precision"] == copies["recall"] == 1.0
    assert copies["memorisation"] == 1.0
    assert wrong["memorisation"] < 0.5
    assert wrong["fd"] > copies["fd"] and wrong["kid"] > copies["kid"]
    assert wrong["c2st_features"] > 0.9
    assert copies["label_agreement"] > wrong["label_agreement"]
    for key in (
        "fd",
        "kid",
        "precision",
        "recall",
        "c2st",
        "memorisation",
        "n_pool",
        "feature_extractor",
    ):
        assert key in copies

    # Saved and re-loaded as a user checkpoint: the same features.
    path = fe.save(tmp_path / "fe.safetensors")
    again = load_feature_extractor(path, x.shape[1:])
    np.testing.assert_allclose(again.features(x), fe.features(x))
    torch.save(fe.model.state_dict(), tmp_path / "fe.pt")
    np.testing.assert_allclose(
        load_feature_extractor(tmp_path / "fe.pt", x.shape[1:]).features(x), fe.features(x)
    )

    order, score = rank_by_confidence(x, fe, label=0)
    assert score[order[0]] >= score[order[-1]]
    assert (y[order[:10]] == 0).mean() > (y[order[-10:]] == 0).mean()


@pytest.mark.edges
def test_load_feature_extractor_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_feature_extractor(tmp_path / "missing.pt", (1, 16, 16))
    torch.save({"w": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="not a SimpleCNN"):
        load_feature_extractor(tmp_path / "bad.pt", (1, 16, 16))
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_feature_extractor(tmp_path / "junk.safetensors", (1, 16, 16))


@pytest.mark.edges
def test_extractor_rejects_wrong_image_shape():
    x, y = two_class_images()
    fe = train_feature_extractor(x, y, 2, **TINY)
    with pytest.raises(DataError, match="expects"):
        fe.features(np.zeros((2, 1, 8, 8), np.uint8))


@pytest.mark.unit
def test_pools_quality_over_the_store(tmp_path):
    """Every pool of the store: figures written into the manifest, then read back as cached."""
    import json

    from ratio_search.config import DataConfig
    from ratio_search.data import load_dataset
    from ratio_search.home import Home
    from ratio_search.pools import load_pool
    from ratio_search.quality import pools_quality

    home = Home(tmp_path)
    data = load_dataset(
        DataConfig(image_size=16, phantom_n_per_class=8, phantom_val_per_class=2,
                   phantom_test_per_class=2, min_val_per_class=1),
        home,
    )  # fmt: skip
    model = tmp_path / "models" / "m1"
    model.mkdir(parents=True)
    (model / "meta.json").write_text(
        json.dumps({"data_key": data.key, "class_names": data.class_names, "synthetic_label": 0})
    )
    real = np.asarray(data.train_x[data.train_y == 0])
    for key, manifest in (
        ("pa", {"n": 8, "key": "pa", "model_path": str(model), "quality": {}}),
        ("pb", {"n": 8, "key": "pb", "source": "folder", "name": "imported", "quality": {}}),
    ):
        (home.pools / key).mkdir(parents=True)
        np.save(home.pools / key / "images.npy", real)
        (home.pools / key / "manifest.json").write_text(json.dumps(manifest))

    kw = {
        "extractor_kwargs": TINY,
        "quality_kwargs": {"c2st_epochs": 1, "c2st_min_steps": 2, "kid_subsets": 2},
    }
    rows = {r["key"]: r for r in pools_quality(home, track=False, **kw)}
    assert rows["pa"]["status"] == "computed" and rows["pb"]["status"] == "skipped"
    assert "no model" in rows["pb"]["reason"]
    q = load_pool(home, "pa").manifest["quality"]
    assert q["memorisation"] == 1.0 and q["fd"] == pytest.approx(
        0.0, abs=1e-6
    )  # copies of the real class
    assert list((tmp_path / "cache" / "quality").glob("extractor-*.safetensors"))
    again = pools_quality(home, ["pa"], track=False, **kw)
    assert again[0]["status"] == "cached" and again[0]["quality"]["fd"] == q["fd"]
    with pytest.raises(DataError, match="not found"):
        pools_quality(home, ["zz"], track=False)


@pytest.mark.e2e
@pytest.mark.slow  # the CLI's default extractor (300 steps) and an MLflow store: tens of seconds
def test_pools_quality_cli(tmp_path, capsys):
    """`ratio-search pools --quality --json`: figures per pool, logged as a pool job in MLflow."""
    import json

    from ratio_search.cli import main
    from ratio_search.config import DataConfig
    from ratio_search.data import load_dataset
    from ratio_search.home import Home

    home = Home(tmp_path)
    data = load_dataset(
        DataConfig(image_size=16, phantom_n_per_class=8, phantom_val_per_class=2,
                   phantom_test_per_class=2, min_val_per_class=1),
        home,
    )  # fmt: skip
    model = tmp_path / "models" / "m1"
    model.mkdir(parents=True)
    (model / "meta.json").write_text(
        json.dumps({"data_key": data.key, "class_names": data.class_names, "synthetic_label": 0})
    )
    (home.pools / "pa").mkdir(parents=True)
    np.save(home.pools / "pa" / "images.npy", np.asarray(data.train_x[data.train_y == 1]))
    (home.pools / "pa" / "manifest.json").write_text(
        json.dumps({"n": 8, "key": "pa", "model_path": str(model), "quality": {}})
    )
    assert main(["pools", "--quality", "--home", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["pools"]
    q = rows[0]["quality"]
    assert rows[0]["status"] == "computed" and 0.0 <= q["c2st"] <= 1.0 and q["fd"] > 0
    assert q["mlflow_run_id"]  # logged as a pool job
    assert main(["pools", "--quality", "--keys", "nope", "--home", str(tmp_path)]) == 2


@pytest.mark.unit
def test_extractor_caps_images_per_class():
    x, y = two_class_images(n=48)
    fe = train_feature_extractor(x, y, 2, max_per_class=10, device="cpu", **TINY)
    assert fe.info["n_train"] == 18  # 10 per class, 1 per class held out
