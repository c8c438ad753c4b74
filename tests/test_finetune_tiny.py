"""The tiny diffusion backend: fine-tune, cache, resume, load, sample (test-sized network)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ratio_search.cli import main
from ratio_search.config import FinetuneConfig, GenerateConfig
from ratio_search.data import Dataset
from ratio_search.diffusion import (
    BACKENDS,
    SCHEDULERS,
    GenerativeModel,
    finetune,
    get_backend,
    list_models,
    load_model,
)
from ratio_search.diffusion.base import model_hash
from ratio_search.diffusion.tiny import (
    CHECKPOINT_NAME,
    CLASS_EMBEDDING_LR_SCALE,
    TEST_UNET,
    WEIGHTS_NAME,
    resolve,
)
from ratio_search.errors import ConfigError, ModelError
from ratio_search.home import Home

# The earlier, class-conditional base, kept beside the benchmarks (the package's base is task-naive).
LABELLED_BASE = Path(__file__).resolve().parent.parent / "benchmarks" / "base_model_labelled"

# The machine's cores are shared with other jobs; the tiny models do not need more than one.
pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]


class _Untouchable:
    """Stands in for val/test arrays: any use at all fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the generator looked at a val/test array ({name})")

    def __array__(self, *a, **k):
        raise AssertionError("the generator looked at a val/test array")

    def __len__(self):
        raise AssertionError("the generator looked at a val/test array (len)")

    def __getitem__(self, item):
        raise AssertionError("the generator looked at a val/test array ([])")


def _data(classes=("CNV", "NORMAL"), key="k-test", poison=False, n=8, size=16) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8)
    y = np.arange(n, dtype=np.int64) % len(classes)
    other = _Untouchable() if poison else x[:2]
    return Dataset(x, y, other, y[:2], other, y[:2], list(classes), 0, key, {"source": "test"})


def _cfg(**kw) -> FinetuneConfig:
    base = dict(from_scratch=True, max_steps=2, batch_size=4, checkpoint_every=2, device="cpu")
    base.update(kw)
    return FinetuneConfig(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    home = Home(tmp_path_factory.mktemp("home"))
    info = finetune(_data(), _cfg(), home, progress=False, unet_config=TEST_UNET)
    return home, info


def test_finetune_writes_a_complete_model_folder(trained):
    home, info = trained
    assert info.path == home.models / info.hash
    names = {p.name for p in info.path.iterdir()}
    assert {"config.json", WEIGHTS_NAME, "meta.json", "samples.png"} <= names
    assert CHECKPOINT_NAME not in names
    meta = json.loads((info.path / "meta.json").read_text())
    assert meta["complete"] is True and meta["backend"] == "tiny"
    assert meta["data_key"] == "k-test" and meta["class_names"] == ["CNV", "NORMAL"]
    assert meta["synthetic_class"] == "CNV" and meta["image_size"] == 16 and meta["channels"] == 1
    assert meta["training"]["steps"] == 2 and np.isfinite(meta["training"]["final_loss"])
    assert meta["config"]["unet"]["num_class_embeds"] == 3  # two classes + the null class
    assert "torch" in meta["versions"]
    assert not any(p.name.startswith(".tmp-") for p in home.models.iterdir())


def test_sample_shapes_dtype_and_determinism(trained):
    home, info = trained
    model = load_model(info.path, home)
    assert (model.model_hash, model.image_size, model.channels) == (info.hash, 16, 1)
    a = model.sample(5, 0, guidance=2.0, steps=2, seed=3)
    assert a.shape == (5, 1, 16, 16) and a.dtype == np.uint8
    assert np.array_equal(a, model.sample(5, 0, guidance=2.0, steps=2, seed=3))
    # image i depends only on (seed, i): neither on n nor on the batch size
    assert np.array_equal(a[:3], model.sample(3, 0, guidance=2.0, steps=2, seed=3, batch_size=2))
    assert np.array_equal(a, model.sample(5, 0, guidance=2.0, steps=2, seed=3, batch_size=1))
    assert not np.array_equal(a, model.sample(5, 0, guidance=2.0, steps=2, seed=4))
    assert len({im.tobytes() for im in a}) == 5  # different images within one pool
    model.ddim_eta = 1.0  # stochastic DDIM: the step noise too comes from image i's generator
    e0 = model.sample(4, 0, guidance=2.0, steps=2, seed=3, batch_size=3)
    assert np.array_equal(e0, model.sample(4, 0, guidance=2.0, steps=2, seed=3, batch_size=4))
    assert not np.array_equal(e0, a[:4])
    d = model.sample(2, 1, guidance=2.0, steps=2, scheduler="dpm-solver++")
    assert d.shape == (2, 1, 16, 16) and d.dtype == np.uint8


def test_guidance_changes_the_output(trained):
    home, info = trained
    model = load_model(info.path, home)
    g1 = model.sample(3, 0, guidance=1.0, steps=2, seed=0)
    g4 = model.sample(3, 0, guidance=4.0, steps=2, seed=0)
    assert not np.array_equal(g1, g4)


@pytest.mark.parametrize(
    "kw",
    [dict(guidance=-1.0), dict(steps=0), dict(scheduler="euler"), dict(class_index=2)],
)
@pytest.mark.edges
def test_bad_sampling_arguments_raise_config_error(trained, kw):
    home, info = trained
    model = load_model(info.path, home)
    args = dict(n=2, class_index=0, guidance=2.0, steps=2, scheduler="ddim") | kw
    with pytest.raises(ConfigError):
        model.sample(**args)


def test_cache_hit_returns_the_same_model_without_training(trained):
    home, info = trained
    calls = []
    again = finetune(_data(), _cfg(), home, progress=False, unet_config=TEST_UNET,
                     callback=lambda step, loss: calls.append(step))  # fmt: skip
    assert again.hash == info.hash and again.path == info.path and again.cached
    assert calls == []
    other = finetune(_data(key="k-other"), _cfg(), home, progress=False, unet_config=TEST_UNET)
    assert other.hash != info.hash and not other.cached


def test_the_generator_never_sees_val_or_test_images(tmp_path):
    info = finetune(
        _data(poison=True), _cfg(), Home(tmp_path), progress=False, unet_config=TEST_UNET
    )
    assert info.meta["n_train"] == 8


def test_resume_continues_from_the_checkpoint_and_matches_an_uninterrupted_run(tmp_path):
    cfg = _cfg(max_steps=4, checkpoint_every=2)
    full = finetune(_data(), cfg, Home(tmp_path / "a"), progress=False, unet_config=TEST_UNET)

    home = Home(tmp_path / "b")

    class Interrupt(Exception):
        pass

    def stop_at_2(step, loss):
        if step == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        finetune(_data(), cfg, home, progress=False, unet_config=TEST_UNET, callback=stop_at_2)
    assert not (home.models / full.hash).exists()
    assert (home.models / f".tmp-{full.hash}" / CHECKPOINT_NAME).is_file()

    steps = []
    resumed = finetune(_data(), cfg, home, resume=True, progress=False, unet_config=TEST_UNET,
                       callback=lambda step, loss: steps.append(step))  # fmt: skip
    assert steps == [3, 4]  # continued from step 2, not from 0
    assert resumed.hash == full.hash
    assert resumed.meta["training"]["resumed_from_step"] == 2
    assert resumed.meta["training"]["steps"] == 4
    a = load_file(str(full.path / WEIGHTS_NAME))
    b = load_file(str(resumed.path / WEIGHTS_NAME))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_without_resume_an_interrupted_run_starts_again(tmp_path):
    home = Home(tmp_path)

    def boom(step, loss):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(_data(), _cfg(max_steps=3, checkpoint_every=1), home, progress=False,
                 unet_config=TEST_UNET, callback=boom)  # fmt: skip
    steps = []
    info = finetune(_data(), _cfg(max_steps=3, checkpoint_every=1), home, progress=False,
                    unet_config=TEST_UNET, callback=lambda s, loss: steps.append(s))  # fmt: skip
    assert steps == [1, 2, 3] and info.meta["training"]["resumed_from_step"] == 0


def test_base_model_initialises_class_embeddings_by_name(trained, tmp_path):
    _, base = trained  # classes CNV, NORMAL
    cfg = _cfg(from_scratch=False, base_model=str(base.path), max_steps=1, lr=0.0)
    data = _data(classes=("NORMAL", "DME", "CNV"))
    info = finetune(data, cfg, Home(tmp_path), progress=False, unet_config=TEST_UNET)
    assert info.meta["base_hash"] is not None
    assert info.meta["training"]["classes_from_base"] == ["NORMAL", "CNV"]
    assert info.meta["training"]["classes_fresh"] == ["DME"]
    old = load_file(str(base.path / WEIGHTS_NAME))["class_embedding.weight"]
    new = load_file(str(info.path / WEIGHTS_NAME))["class_embedding.weight"]
    assert torch.equal(new[0], old[1]) and torch.equal(new[2], old[0])  # NORMAL, CNV by name
    assert torch.equal(new[3], old[2])  # the null class
    assert not torch.equal(new[1], old[0]) and not torch.equal(new[1], old[1])
    # the base model is part of the hash: from scratch is another model
    scratch = finetune(data, _cfg(max_steps=1, lr=0.0), Home(tmp_path), progress=False,
                       unet_config=TEST_UNET)  # fmt: skip
    assert scratch.hash != info.hash


@pytest.mark.edges
def test_missing_base_model_is_a_model_error(tmp_path):
    cfg = _cfg(from_scratch=False, base_model=str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="nope"):
        finetune(_data(), cfg, Home(tmp_path), progress=False, unet_config=TEST_UNET)


@pytest.mark.edges
def test_load_model_errors_and_latest(trained, tmp_path):
    home, info = trained
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "missing", home)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a saved model"):
        load_model(tmp_path / "empty", home)
    with pytest.raises(ModelError, match="no fine-tuned model"):
        load_model("latest", Home(tmp_path / "nohome"))
    assert load_model("latest", home, data_key="k-test").model_hash == info.hash
    assert load_model(info.hash, home).model_hash == info.hash  # a bare hash in home.models
    with pytest.raises(ModelError):
        load_model("latest", home, data_key="no-such-data")
    assert info.path in list_models(home)


@pytest.mark.edges
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    rc = main(["finetune", "--home", str(tmp_path), "--base-model", str(tmp_path / "nope"),
               "--data", str(tmp_path / "nodata")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "nodata" in err
    rc = main(["finetune", "--home", str(tmp_path), "--export-base"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--from-scratch" in err and len(err.splitlines()) == 1


@pytest.mark.e2e
def test_cli_finetune_trains_then_hits_the_cache(tmp_path, capsys):
    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in (("train", 8), ("val", 40), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 16, 16), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.arange(n) % 2
    np.savez(tmp_path / "d.npz", class_names=np.array(["CNV", "NORMAL"]), **arrays)
    argv = ["finetune", "--home", str(tmp_path), "--data", str(tmp_path / "d.npz"),
            "--image-size", "16", "--from-scratch", "--max-steps", "1", "--batch-size", "2",
            "--json"]  # fmt: skip
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["cached"] is False and first["training"]["steps"] == 1
    assert (tmp_path / "models" / first["hash"] / "meta.json").is_file()
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["cached"] is True and second["hash"] == first["hash"]


def _zeros_data(size=16, classes=("CNV", "NORMAL"), key="k-test") -> Dataset:
    x = np.zeros((8, 1, size, size), dtype=np.uint8)
    y = np.arange(8) % len(classes)
    return Dataset(x, y, x[:2], y[:2], x[:2], y[:2], list(classes), 0, key, {"source": "test"})


@pytest.mark.parametrize(
    "data, cfg, unet, base_hash, expected",
    [
        (_zeros_data(), _cfg(), TEST_UNET, None, "382903078254a461"),
        # a labelled base (the earlier bundled one): no class-embedding lr scale in the config
        (_zeros_data(32, ("NORMAL", "DME", "CNV"), "phantom-x"),
         FinetuneConfig(base_model=str(LABELLED_BASE), max_steps=400), None, "0123456789abcdef",
         "2103bb6d3482b281"),
        # max_steps pinned at the default these hashes were taken with (it is 600 since)
        (_zeros_data(), FinetuneConfig(from_scratch=True, resolution=24, prompt="x {cls}", max_steps=400,
         base_model="/nowhere", device="cuda", checkpoint_every=7, seed=3, lr=1e-3,
         ema_decay=0.9, null_class_prob=0.2, threads=5), None, None, "cc209338d7f0af68"),
    ],
)  # fmt: skip
def test_tiny_model_hash_is_unchanged(data, cfg, unet, base_hash, expected):
    # Computed with the code before the diffusion package was restructured: existing homes must
    # still find their models (the hash is the folder name).
    resolved = resolve(data, cfg, unet)
    assert model_hash(data.key, resolved.config, base_hash) == expected


def test_a_task_naive_base_gives_the_class_embeddings_their_own_learning_rate():
    # The bundled base is unconditional: its fine-tunes train differently, so they hash apart.
    naive = resolve(_zeros_data(), FinetuneConfig()).config
    labelled = resolve(_zeros_data(), FinetuneConfig(base_model=str(LABELLED_BASE))).config
    assert naive["class_embedding_lr_scale"] == CLASS_EMBEDDING_LR_SCALE > 1
    assert "class_embedding_lr_scale" not in labelled


def test_backend_registry_matches_the_config_choices():
    choices = {f.name: f.metadata["choices"] for f in dataclasses.fields(FinetuneConfig)}
    assert set(BACKENDS) == set(choices["backend"])
    assert {name: get_backend(name).name for name in BACKENDS} == {n: n for n in BACKENDS}
    gen_choices = {f.name: f.metadata["choices"] for f in dataclasses.fields(GenerateConfig)}
    assert SCHEDULERS == tuple(gen_choices["scheduler"])
    with pytest.raises(ConfigError, match="tiny, stable-diffusion"):
        finetune(_data(), _cfg(backend="gan"), Home("/nonexistent"), progress=False)


@pytest.mark.edges
def test_a_model_of_unknown_backend_is_a_model_error(trained, tmp_path):
    import shutil

    _, info = trained
    odd = tmp_path / "odd"
    shutil.copytree(info.path, odd)
    meta = json.loads((odd / "meta.json").read_text())
    (odd / "meta.json").write_text(json.dumps(meta | {"backend": "gan"}))
    with pytest.raises(ModelError, match="unknown backend 'gan'"):
        load_model(odd)


def test_a_meta_json_written_before_the_restructuring_still_loads(trained, tmp_path):
    import shutil

    _, info = trained
    old = tmp_path / "old"
    shutil.copytree(info.path, old)
    meta = json.loads((old / "meta.json").read_text())
    # versions as the old code wrote them ("n/a" for a missing package, no ratio-search key)
    meta["versions"] = {"python": "3.11.7", "torch": "2.4.0", "diffusers": "n/a"}
    (old / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    model = load_model(old)
    assert isinstance(model, GenerativeModel) and model.model_hash == info.hash
    assert model.sample(1, 0, guidance=2.0, steps=2).shape == (1, 1, 16, 16)


def test_a_base_folder_without_meta_json_still_resolves(tmp_path):
    # init_from_base accepts a base with only weights and config; resolve must not demand more.
    import shutil

    for name in ("config.json", WEIGHTS_NAME):
        shutil.copyfile(LABELLED_BASE / name, tmp_path / name)
    config = resolve(_zeros_data(), FinetuneConfig(base_model=str(tmp_path))).config
    assert "class_embedding_lr_scale" not in config
