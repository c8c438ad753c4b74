"""Each pool-quality figure on cases with a known answer: identical, shifted, copied, independent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ratio_search.errors import ConfigError, DataError
from ratio_search.quality import (
    FLOORED,
    QUALITY_FORMAT,
    c2st,
    c2st_test,
    floor_name,
    frechet_distance,
    is_current,
    kernel_inception_distance,
    load_feature_extractor,
    memorisation_share,
    pool_quality,
    precision_recall,
    rank_by_confidence,
    reference_split,
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


@pytest.mark.unit
def test_c2st_test_real_vs_real_is_not_significant():
    same = c2st_test(gauss(n=200, seed=0), gauss(n=200, seed=1), seed=0)
    apart = c2st_test(gauss(n=200, seed=0), gauss(n=200, seed=1, shift=3.0), seed=0)
    assert same["n"] == 400 and same["accuracy"] == same["correct"] / 400
    assert same["p_value"] > 0.05 and same["low"] < 0.5 < same["high"]
    assert apart["p_value"] < 1e-6 and apart["low"] > 0.9
    for t in (same, apart):
        assert t["low"] <= t["accuracy"] <= t["high"]
    # c2st() is the accuracy of the same test
    assert c2st(gauss(n=200, seed=0), gauss(n=200, seed=1), seed=0) == same["accuracy"]


@pytest.mark.unit
def test_c2st_test_binomial_answer_on_images():
    kw = {"seed": 0, "epochs": 2, "min_steps": 40, "widths": (4,), "fc": 8}
    t = c2st_test(noise_images(64, 0), noise_images(64, 1, offset=80), **kw)
    from scipy.stats import binomtest

    assert t["n"] == 128 and t["correct"] > 115  # every image predicted once, held out
    assert t["p_value"] == pytest.approx(binomtest(t["correct"], 128, 0.5).pvalue)
    assert t["p_value"] < 1e-6
    # One distribution: a p-value is uniform, so one of several may fall below 0.05 by chance
    # (data seed 0 does: accuracy 0.41, p 0.04); most must not, and the accuracies centre on 0.5.
    same = [
        c2st_test(noise_images(64, 10 * s), noise_images(64, 10 * s + 1), **kw) for s in (0, 1, 2)
    ]
    assert sum(r["p_value"] < 0.05 for r in same) <= 1
    assert 0.4 < np.mean([r["accuracy"] for r in same]) < 0.6


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


def asymmetric_images(n, seed, size=8):
    """Noise with a bright left column: a mirror image is far from every unflipped one."""
    x = noise_images(n, seed, size=size)
    x[..., 0] += 150
    return x


@pytest.mark.unit
def test_memorisation_flipped_copies_are_copies():
    train = asymmetric_images(60, 0)
    mirrored = np.ascontiguousarray(train[:20, ..., ::-1])
    assert memorisation_share(train, mirrored)[0] == 1.0
    assert memorisation_share(train, mirrored, flips=False)[0] == 0.0  # the old rule missed them


@pytest.mark.unit
def test_memorisation_with_flips_independent_draws_score_about_the_quantile():
    share, _ = memorisation_share(noise_images(400, 0), noise_images(400, 1), quantile=0.1)
    assert 0.03 < share < 0.2


@pytest.mark.unit
def test_memorisation_threshold_ignores_an_images_own_mirror():
    # Symmetric training images: each is its own mirror image, at distance 0. Counting that
    # would make the threshold 0 and nothing memorised; a copy must still score 1.
    half = noise_images(50, 0, size=8)[..., :4]
    sym = np.ascontiguousarray(np.concatenate([half, half[..., ::-1]], axis=-1))
    share, thr = memorisation_share(sym, sym[:10])
    assert thr > 0 and share == 1.0


# ----------------------------------------------------------- through the CNN feature extractor


def two_class_images(n=48, size=16, seed=0):
    """Class 0 has a bright central square; class 1 is background only."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 60, (n, 1, size, size)).astype(np.uint8)
    x[y == 0, :, 4:12, 4:12] += 150
    return x, y.astype(np.int64)


TINY = {"widths": (4, 4), "fc": 8, "epochs": 3, "min_steps": 20, "batch_size": 16, "lr": 1e-2}


QKW = {"c2st_epochs": 2, "c2st_min_steps": 4, "kid_subsets": 3}


@pytest.mark.unit
def test_reference_split_is_per_class_seeded_and_disjoint():
    y = np.repeat([0, 1, 2], [100, 30, 6])
    fit, ref = reference_split(y, share=0.2, min_per_class=8, seed=3)
    assert len(np.intersect1d(fit, ref)) == 0 and len(fit) + len(ref) == len(y)
    assert [int((y[ref] == c).sum()) for c in range(3)] == [20, 8, 3]  # 20 %, floor 8, half
    again = reference_split(y, share=0.2, min_per_class=8, seed=3)
    np.testing.assert_array_equal(again[1], ref)
    assert not np.array_equal(reference_split(y, share=0.2, min_per_class=8, seed=4)[1], ref)
    with pytest.raises(ConfigError, match="share"):
        reference_split(y, share=1.0)


def measured(pool, x, y, fe, ref, label=0, **kw):
    """pool_quality of ``pool`` against class ``label`` of (x, y), reference ``ref`` (indices in x)."""
    in_class = np.flatnonzero(y == label)
    return pool_quality(
        pool, x[in_class], np.flatnonzero(np.isin(in_class, ref)), fe,
        synthetic_label=label, **{**QKW, **kw},
    )  # fmt: skip


@pytest.mark.unit
def test_pool_quality_end_to_end_on_tiny_images(tmp_path):
    x, y = two_class_images(n=64)
    fit, ref = reference_split(y, seed=0)  # 8 of the 32 per class held out
    fe = train_feature_extractor(x[fit], y[fit], 2, seed=0, **TINY)
    assert fe.features(x).shape == (64, 8)
    real_fit = x[np.setdiff1d(np.flatnonzero(y == 0), ref)]  # class 0, seen by the extractor
    copies = measured(real_fit, x, y, fe, ref)  # a perfect (memorising) generator
    mirrored = measured(np.ascontiguousarray(real_fit[..., ::-1]), x, y, fe, ref)
    wrong = measured(x[y == 1], x, y, fe, ref)  # a bad generator: the other class's images
    assert copies["format"] == QUALITY_FORMAT and is_current(copies)
    assert copies["memorisation"] == 1.0 and mirrored["memorisation"] == 1.0
    assert wrong["memorisation"] < 0.5
    # every figure beside its floor: two halves of held-out real images of the class
    for name in FLOORED:
        assert name in wrong and floor_name(name) in wrong
    assert wrong["n_real"] == 4 and wrong["n_floor"] == 4 and wrong["n_pool"] == 32
    assert wrong["fd"] > wrong["fd_floor"] and wrong["kid"] > wrong["kid_floor"]
    assert wrong["c2st_features"] > 0.9 and wrong["c2st_features_p_value"] < 0.05
    assert wrong["label_agreement"] < wrong["label_agreement_floor"]
    assert 0.0 <= wrong["memorisation_floor"] <= 0.5  # real images of the class are no copies
    # the floor and the reference do not depend on the pool
    assert copies["fd_floor"] == wrong["fd_floor"] and copies["c2st_floor"] == wrong["c2st_floor"]
    assert copies["label_agreement"] > wrong["label_agreement"]

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


@pytest.mark.unit
def test_pool_quality_measures_the_first_pool_n_images():
    x, y = two_class_images(n=64)
    fit, ref = reference_split(y, seed=0)
    fe = train_feature_extractor(x[fit], y[fit], 2, seed=0, **TINY)
    # first 8: copies of class-0 training images; the rest: the other class (no copies)
    pool = np.concatenate([x[y == 0][:8], x[y == 1]])
    first = measured(pool, x, y, fe, ref, pool_n=8)
    whole = measured(pool, x, y, fe, ref)
    assert first["memorisation"] == 1.0 and first["n_pool"] == first["pool_n"] == 8
    assert whole["memorisation"] == pytest.approx(8 / 40) and whole["pool_n"] == 40
    assert is_current(first, 8) and not is_current(first, 40)
    capped = measured(pool, x, y, fe, ref, pool_n=20, max_images=8)  # at most the first 8
    assert capped["n_pool"] == 8 and capped["pool_n"] == 20 and capped["memorisation"] == 1.0
    with pytest.raises(DataError, match="holds 40"):
        measured(pool, x, y, fe, ref, pool_n=41)


@pytest.mark.edges
def test_pool_quality_needs_enough_held_out_images():
    x, y = two_class_images(n=64)
    fe = train_feature_extractor(x, y, 2, seed=0, **TINY)
    with pytest.raises(DataError, match="held-out"):
        measured(x[y == 0], x, y, fe, np.flatnonzero(y == 0)[:6])


@pytest.mark.unit
def test_old_quality_blocks_are_never_current():
    assert not is_current({})
    assert not is_current({"fd": 1.0, "c2st": 0.5})  # format 1: no floors, own training images
    assert not is_current({"format": QUALITY_FORMAT, "fd": 1.0})


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


def store_with_pools(tmp_path, pools):
    """A home with phantom data (24 train images per class) and ``pools``: ``{key: (images,
    manifest extras)}``; a pool with ``model: True`` records a model whose dataset is cached."""
    import json

    from ratio_search.config import DataConfig
    from ratio_search.data import load_dataset
    from ratio_search.home import Home

    home = Home(tmp_path)
    data = load_dataset(
        DataConfig(image_size=16, phantom_n_per_class=24, phantom_val_per_class=2,
                   phantom_test_per_class=2, min_val_per_class=1),
        home,
    )  # fmt: skip
    model = tmp_path / "models" / "m1"
    model.mkdir(parents=True)
    (model / "meta.json").write_text(
        json.dumps({"data_key": data.key, "class_names": data.class_names, "synthetic_label": 0})
    )
    for key, (images, extra) in pools.items():
        manifest = {"n": len(images), "key": key, "quality": {}, **extra}
        if manifest.pop("model", False):
            manifest["model_path"] = str(model)
        (home.pools / key).mkdir(parents=True)
        np.save(home.pools / key / "images.npy", np.asarray(images))
        (home.pools / key / "manifest.json").write_text(json.dumps(manifest))
    return home, data


STORE_KW = {
    "extractor_kwargs": TINY,
    "quality_kwargs": {"c2st_epochs": 1, "c2st_min_steps": 2, "kid_subsets": 2},
}


@pytest.mark.unit
def test_pools_quality_over_the_store(tmp_path, monkeypatch):
    """Every pool of the store: figures written into the manifest, then read back as cached; the
    extractor never sees the held-out reference; an old block is re-measured."""
    import ratio_search.quality.measure as measure
    from ratio_search.pools import load_pool
    from ratio_search.quality import pools_quality, real_classifier

    old = {"fd": 9.0, "c2st": 0.5, "memorisation": 0.0}  # a format-1 block
    phantom = store_with_pools(tmp_path / "probe", {})[1]
    real = np.asarray(phantom.train_x[phantom.train_y == 0])
    home, data = store_with_pools(tmp_path, {
        "pa": (real, {"model": True, "quality": old}),
        "pb": (real, {"source": "folder", "name": "imported"}),
    })  # fmt: skip
    # the judge (trained on all of train) is cached first: it must not be taken for the extractor
    real_classifier(tmp_path / "cache" / "quality", data, **TINY)
    seen = []
    real_train = measure.train_feature_extractor
    monkeypatch.setattr(
        measure, "train_feature_extractor",
        lambda x, y, *a, **kw: seen.append(np.array(x)) or real_train(x, y, *a, **kw),
    )  # fmt: skip
    rows = {r["key"]: r for r in pools_quality(home, track=False, **STORE_KW)}
    assert rows["pa"]["status"] == "computed" and rows["pb"]["status"] == "skipped"
    assert "no model" in rows["pb"]["reason"]
    q = load_pool(home, "pa").manifest["quality"]
    assert is_current(q, 24) and q["fd"] != 9.0 and rows["pa"]["current"]
    assert q["memorisation"] == 1.0 and q["memorisation_floor"] < 1.0  # copies of the class
    ref = q["reference"]
    assert ref["n_reference"] == 16 and ref["n_fit"] == 32 and ref["n_class"] == 8
    assert ref["seed"] == 0 and ref["extractor_saw_reference"] is False
    # trained once, on the fit part only: no held-out reference image among its training images
    fit, held = reference_split(data.train_y, seed=0)
    assert len(seen) == 1 and len(seen[0]) == len(fit)
    np.testing.assert_array_equal(seen[0], np.asarray(data.train_x)[fit])
    flat = {img.tobytes() for img in seen[0]}
    assert not any(img.tobytes() in flat for img in np.asarray(data.train_x)[held])
    names = sorted(p.name for p in (tmp_path / "cache" / "quality").glob("extractor-*.safetensors"))
    assert len(names) == 2 and any("-fit" in n for n in names)  # judge and quality extractor

    again = pools_quality(home, ["pa"], track=False, **STORE_KW)
    assert again[0]["status"] == "cached" and again[0]["quality"]["fd"] == q["fd"]
    assert len(seen) == 1  # the cached extractor, not a retrained one
    first8 = pools_quality(home, ["pa"], pool_n=8, track=False, **STORE_KW)[0]
    assert first8["status"] == "computed" and first8["quality"]["n_pool"] == 8
    too_many = pools_quality(home, ["pa"], pool_n=99, track=False, **STORE_KW)[0]
    assert too_many["status"] == "skipped" and "holds 24" in too_many["reason"]
    with pytest.raises(DataError, match="not found"):
        pools_quality(home, ["zz"], track=False)


@pytest.mark.unit
def test_old_block_without_its_dataset_is_shown_as_old(tmp_path):
    from ratio_search.quality import pools_quality

    old = {"fd": 9.0, "c2st": 0.5}
    home, _ = store_with_pools(
        tmp_path, {"pc": (noise_images(8, 0, size=16), {"source": "folder", "quality": old})}
    )
    row = pools_quality(home, track=False, **STORE_KW)[0]
    assert row["status"] == "skipped" and row["current"] is False
    assert row["quality"]["fd"] == 9.0 and "older measurement" in row["reason"]


@pytest.mark.e2e
@pytest.mark.slow  # the CLI's default extractor (300 steps) and an MLflow store: tens of seconds
def test_pools_quality_cli(tmp_path, capsys):
    """`ratio-search pools --quality --json`: figures and floors per pool, logged as a pool job in
    MLflow; the table shows each figure beside its floor; --pool-n asks for the first N."""
    import json

    from ratio_search.cli import main

    probe = store_with_pools(tmp_path / "probe", {})[1]
    other = np.asarray(probe.train_x[probe.train_y == 1])
    home, _ = store_with_pools(tmp_path, {"pa": (other, {"model": True})})
    assert main(["pools", "--quality", "--home", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["pools"]
    q = rows[0]["quality"]
    assert rows[0]["status"] == "computed" and 0.0 <= q["c2st"] <= 1.0 and q["fd"] > 0
    assert 0.0 <= q["c2st_p_value"] <= 1.0 and "fd_floor" in q and q["n_pool"] == 24
    assert q["mlflow_run_id"]  # logged as a pool job
    assert main(["pools", "--quality", "--home", str(tmp_path)]) == 0  # cached: the table
    out = capsys.readouterr().out
    assert "pool/floor" in out and f"{q['fd']:.3f}/{q['fd_floor']:.3f}" in out
    assert main(["pools", "--quality", "--pool-n", "99", "--home", str(tmp_path)]) == 0
    assert "pool_n = 99, but the pool holds 24 images" in capsys.readouterr().out
    assert main(["pools", "--quality", "--keys", "nope", "--home", str(tmp_path)]) == 2
    assert main(["pools", "--quality", "--pool-n", "0", "--home", str(tmp_path)]) == 2


@pytest.mark.unit
def test_extractor_caps_images_per_class():
    x, y = two_class_images(n=48)
    fe = train_feature_extractor(x, y, 2, max_per_class=10, device="cpu", **TINY)
    assert fe.info["n_train"] == 18  # 10 per class, 1 per class held out


@pytest.mark.unit
def test_report_pool_table_shows_each_figure_beside_its_floor(tmp_path):
    """The report's pool cells: ``value / floor``; an old block's value alone, marked old; the
    trials' pool size named when the figures are of another number of first images."""
    import json

    from ratio_search.home import Home
    from ratio_search.report.inputs import measured_on, pool_table, with_floor

    new = {"format": QUALITY_FORMAT, "fd": 2.0, "fd_floor": 0.5, "c2st": 0.7, "c2st_floor": 0.5,
           "c2st_p_value": 0.01, "pool_n": 40, "n_pool": 40, "n_real": 10}  # fmt: skip
    old = {"fd": 1.25, "c2st": 0.55}
    assert with_floor(new, "fd") == "2.0000 / 0.5000" and with_floor(old, "fd") == 1.25
    assert with_floor(old, "kid") is None and measured_on({}) is None
    assert measured_on(old).startswith("old")
    assert measured_on(new, 40) == "first 40 vs 10 held-out"
    assert "the trials used the first 20" in measured_on(new, 20)
    home = Home(tmp_path)
    for key, q in (("pn", new), ("po", old)):
        (home.pools / key).mkdir(parents=True)
        np.save(home.pools / key / "images.npy", noise_images(40, 0))
        (home.pools / key / "manifest.json").write_text(
            json.dumps({"n": 40, "key": key, "quality": q})
        )
    rows = [{"pool_key": k, "r": 0.5, "value": 0.8} for k in ("pn", "po")]
    table = {r[0]: r for r in pool_table(home, rows, "max", pool_n=40)}
    assert table["pn"][6] == "2.0000 / 0.5000" and table["pn"][-2] == 0.01
    assert table["po"][6] == 1.25 and table["po"][-1].startswith("old")
