"""The stable-diffusion backend on a tiny, randomly initialised pipeline built here (no download)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ratio_search.config import FinetuneConfig
from ratio_search.data import Dataset
from ratio_search.diffusion import finetune, load_model, sd, sd_train
from ratio_search.diffusion.testing import build_tiny_pipeline
from ratio_search.errors import ConfigError, ModelError
from ratio_search.home import Home

# The machine's cores are shared with other jobs; the tiny models do not need more than one.
pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

IMAGE_SIZE = 16  # the dataset's images
RESOLUTION = 32  # the fine-tune's (tiny pipeline: 8x8 latents)


def make_data(n_per_class: int = 4, channels: int = 1, seed: int = 0) -> Dataset:
    """A random two-class dataset; CNV (label 0) is the class that gets synthetic images."""
    rng = np.random.default_rng(seed)
    n = 2 * n_per_class
    x = rng.integers(0, 256, (n, channels, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    y = np.repeat(np.arange(2, dtype=np.int64), n_per_class)
    # val/test images are distinct, bright ones: the fine-tune must never see them.
    held_out = np.full((2, channels, IMAGE_SIZE, IMAGE_SIZE), 255, dtype=np.uint8)
    return Dataset(
        train_x=x,
        train_y=y,
        val_x=held_out,
        val_y=np.arange(2, dtype=np.int64),
        test_x=held_out,
        test_y=np.arange(2, dtype=np.int64),
        class_names=["CNV", "NORMAL"],
        synthetic_label=0,
        key="test-data",
    )


def sd_config(base: Path, **kw) -> FinetuneConfig:
    values = {
        "backend": "stable-diffusion",
        "base_model": str(base),
        "max_steps": 1,
        "batch_size": 2,
        "resolution": RESOLUTION,
        "device": "cpu",
        "seed": 0,
    }
    values.update(kw)
    return FinetuneConfig(**values)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("sd") / "base", image_size=RESOLUTION)


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sd") / "model"
    stats = sd.finetune_sd(make_data(), sd_config(base), out, resume=False, progress=False)
    return out, stats


# --------------------------------------------------------------------------------------------


def test_tiny_pipeline_is_a_complete_pipeline(base):
    assert sd.check_pipeline_folder(base) == base
    index = json.loads((base / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert list(base.rglob("*.bin")) == []


def test_tiny_tokenizer_knows_the_prompt_words(base):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    tokens = tok.convert_ids_to_tokens(tok("OCT scan showing CNV").input_ids)
    assert tokens == [
        "<|startoftext|>",
        "oct</w>",
        "scan</w>",
        "showing</w>",
        "cnv</w>",
        "<|endoftext|>",
    ]
    # An unknown word is spelled out in byte symbols rather than mapped to the unknown token.
    ids = tok("weird_class").input_ids
    assert tok.unk_token_id not in ids[1:-1] and len(ids) > 3


@pytest.mark.edges
def test_missing_base_model_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="--base-model is required"):
        sd.check_pipeline_folder(None)
    with pytest.raises(ModelError, match="not found"):
        sd.check_pipeline_folder(tmp_path / "nowhere")
    with pytest.raises(ModelError, match=r"no model_index\.json"):
        sd.check_pipeline_folder(tmp_path)


@pytest.mark.edges
def test_incomplete_pipeline_names_what_is_missing(base, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(base, broken)
    shutil.rmtree(broken / "unet")
    (broken / "text_encoder" / "config.json").unlink()
    with pytest.raises(ModelError) as e:
        sd.finetune_sd(make_data(), sd_config(broken), tmp_path / "out")
    msg = str(e.value)
    assert str(broken) in msg and "unet/" in msg and "text_encoder/config.json" in msg
    assert "vae" not in msg and "\n" not in msg


@pytest.mark.edges
def test_unloadable_weights_and_bad_prompt_are_one_line_errors(base, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(base, broken)
    (weights,) = (broken / "unet").glob("*.safetensors")
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match=r"cannot load unet") as e:
        sd.finetune_sd(make_data(), sd_config(broken), tmp_path / "out")
    assert str(broken) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="finetune.prompt"):
        sd.finetune_sd(make_data(), sd_config(base, prompt="scan of {label}"), tmp_path / "out")


def test_sd_defaults_replace_tiny_defaults_only():
    resolved = sd.resolve_sd_settings(FinetuneConfig(backend="stable-diffusion"))
    assert resolved == {"lr": 1e-4, "batch_size": 8, "resolution": 512}
    explicit = FinetuneConfig(backend="stable-diffusion", lr=5e-5, batch_size=2, resolution=256)
    assert sd.resolve_sd_settings(explicit) == {"lr": 5e-5, "batch_size": 2, "resolution": 256}


def test_resolved_config_records_what_training_uses(base):
    cfg = FinetuneConfig(backend="stable-diffusion", base_model=str(base), ema_decay=0.5)
    resolved = sd.resolve_config(cfg)
    assert (resolved["lr"], resolved["batch_size"], resolved["resolution"]) == (1e-4, 8, 512)
    assert "ema_decay" not in resolved and resolved["base_model"] == str(base.resolve())
    # leaving the default and asking for the SD value explicitly train the same model
    assert sd.resolve_config(dataclasses.replace(cfg, lr=1e-4, batch_size=8)) == resolved


def test_finetune_trains_the_unet_only_and_saves_safetensors(base, trained):
    out, stats = trained
    assert stats["steps"] == 1 and math.isfinite(stats["final_loss"]) and stats["seconds"] > 0
    # Resolved values: lr left at the tiny default -> SD's; batch and resolution as set.
    assert (stats["lr"], stats["batch_size"], stats["resolution"]) == (1e-4, 2, RESOLUTION)
    assert stats["prompt"] == "OCT scan showing CNV" and stats["n_train_images"] == 4
    assert stats["mixed_precision"] == "no" and stats["gradient_checkpointing"] is False

    assert sd.check_pipeline_folder(out) == out
    assert list(out.rglob("*.bin")) == [] and not (out / "checkpoint").exists()
    assert not (out / "safety_checker").exists()

    def weights(folder: Path, part: str) -> dict[str, torch.Tensor]:
        (f,) = (folder / part).glob("*.safetensors")
        return load_file(str(f))

    unet_old, unet_new = weights(base, "unet"), weights(out, "unet")
    assert any(not torch.equal(unet_old[k], unet_new[k]) for k in unet_old)
    for frozen in ("vae", "text_encoder"):
        old, new = weights(base, frozen), weights(out, frozen)
        assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)


def test_sample_shape_dtype_range_and_seeding(trained):
    out, _ = trained
    model = sd.SDModel.load(out)
    assert (model.image_size, model.channels, model.class_names) == (
        IMAGE_SIZE,
        1,
        ["CNV", "NORMAL"],
    )
    assert model.prompt(0) == "OCT scan showing CNV"
    imgs = model.sample(2, class_index=0, guidance=3.0, steps=2, seed=0, batch_size=2, device="cpu")
    assert imgs.shape == (2, 1, IMAGE_SIZE, IMAGE_SIZE) and imgs.dtype == np.uint8
    assert imgs.min() >= 0 and imgs.max() <= 255 and imgs.std() > 0
    assert not np.array_equal(imgs[0], imgs[1])  # different noise per image
    # Image i depends only on (seed, i): a larger pool starts with the smaller one's images.
    more = model.sample(3, class_index=0, guidance=3.0, steps=2, seed=0, batch_size=2, device="cpu")
    np.testing.assert_array_equal(more[:2], imgs)
    other = model.sample(
        2, class_index=0, guidance=3.0, steps=2, seed=1, batch_size=2, device="cpu"
    )
    assert not np.array_equal(other, imgs)


def test_guidance_and_scheduler_change_the_images(trained):
    model = sd.SDModel.load(trained[0])
    kw = {"n": 2, "class_index": 0, "steps": 2, "seed": 0, "batch_size": 2, "device": "cpu"}
    plain = model.sample(guidance=1.0, **kw)
    guided = model.sample(guidance=7.5, **kw)
    assert not np.array_equal(plain, guided)
    # 0 = unconditional (as in the tiny backend; diffusers alone would ignore scales <= 1)
    uncond = model.sample(guidance=0.0, **kw)
    assert not np.array_equal(uncond, plain) and not np.array_equal(uncond, guided)
    dpm = model.sample(guidance=7.5, scheduler="dpm-solver++", **kw)
    assert dpm.shape == guided.shape and not np.array_equal(dpm, guided)
    with pytest.raises(ConfigError, match="scheduler"):
        model.sample(guidance=1.0, scheduler="euler", **kw)
    with pytest.raises(ConfigError, match="class index 5"):
        model.sample(2, class_index=5, guidance=1.0, steps=2, device="cpu")
    assert model.sample(0, 0, guidance=1.0, steps=2).shape == (0, 1, IMAGE_SIZE, IMAGE_SIZE)


def test_common_finetune_and_load_model_use_the_sd_backend(base, tmp_path):
    home = Home(tmp_path / "home")
    info = finetune(make_data(), sd_config(base), home, progress=False)
    assert info.meta["backend"] == "stable-diffusion" and info.meta["complete"] is True
    assert info.meta["training"]["steps"] == 1 and info.meta["training"]["lr"] == 1e-4
    model = load_model(info.path)
    assert isinstance(model, sd.SDModel) and model.model_hash == info.hash
    imgs = model.sample(2, class_index=1, guidance=2.0, steps=2, device="cpu")
    assert imgs.shape == (2, 1, IMAGE_SIZE, IMAGE_SIZE) and imgs.dtype == np.uint8
    # the same data and config again: a cache hit, no second fine-tune
    assert finetune(make_data(), sd_config(base), home, progress=False).cached
    # the hash holds only what trains an SD model: tiny-only fields are not part of it
    assert info.meta["config"] == sd.resolve_config(sd_config(base))
    tiny_only = sd_config(base, ema_decay=0.5, null_class_prob=0.3, from_scratch=True)
    assert finetune(make_data(), tiny_only, home, progress=False).hash == info.hash


def test_rgb_output_keeps_three_channels():
    rng = np.random.default_rng(0)
    out = sd.pipeline_output_to_images(rng.random((3, 32, 32, 3)), image_size=16, channels=3)
    assert out.shape == (3, 3, 16, 16) and out.dtype == np.uint8
    gray = sd.pipeline_output_to_images(np.full((1, 32, 32, 3), 0.5), image_size=16, channels=1)
    assert gray.shape == (1, 1, 16, 16) and np.all(gray == 128)


def test_resume_continues_from_the_checkpoint(base, tmp_path, monkeypatch):
    data = make_data()
    cfg = sd_config(base, max_steps=3, checkpoint_every=2)
    straight = tmp_path / "straight"
    sd.finetune_sd(data, cfg, straight)

    # Interrupt a second run after its last step (the checkpoint of step 2 is on disk), resume it.
    def crash(*args, **kw):
        raise KeyboardInterrupt

    resumed = tmp_path / "resumed"
    with monkeypatch.context() as m:
        m.setattr(sd_train, "_save_pipeline", crash)
        with pytest.raises(KeyboardInterrupt):
            sd.finetune_sd(data, cfg, resumed)
    state = json.loads((resumed / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2 and len(state["losses"]) == 2

    with pytest.raises(ModelError, match="lr"):
        sd.finetune_sd(data, dataclasses.replace(cfg, lr=1e-3), resumed, resume=True)
    stats = sd.finetune_sd(data, cfg, resumed, resume=True)
    assert stats["resumed_from_step"] == 2 and stats["steps"] == 3
    assert not (resumed / "checkpoint").exists()
    a = load_file(str(next((straight / "unet").glob("*.safetensors"))))
    b = load_file(str(next((resumed / "unet").glob("*.safetensors"))))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_mixed_precision_path_trains_on_synthetic_class_train_images_only(
    base, tmp_path, monkeypatch
):
    # The GPU path (autocast + gradient checkpointing) exercised on the CPU with bf16 autocast.
    data = make_data()
    seen: list[np.ndarray] = []
    to_input = sd_train.images_to_pipeline_input

    def spy(x, resolution):
        seen.append(np.array(x))
        return to_input(x, resolution)

    monkeypatch.setattr(sd_train, "images_to_pipeline_input", spy)
    cfg = sd_config(base, max_steps=2)
    stats = sd_train._train(
        data,
        cfg,
        base,
        tmp_path / "amp",
        sd.resolve_sd_settings(cfg),
        torch.device("cpu"),
        torch.bfloat16,
        True,
        False,
        False,
    )
    assert stats["mixed_precision"] == "bfloat16" and stats["gradient_checkpointing"] is True
    assert math.isfinite(stats["final_loss"])
    allowed = {img.tobytes() for img in data.train_x[data.train_y == data.synthetic_label]}
    assert len(seen) == 2 and all(img.tobytes() in allowed for batch in seen for img in batch)


@pytest.mark.edges
def test_a_checkpoint_moved_aside_by_a_crash_mid_swap_is_found_then_cleaned_up(tmp_path):
    assert sd_train._find_checkpoint(tmp_path) is None
    aside = tmp_path / ".old-checkpoint.123"  # what atomic_dir leaves if killed mid-swap
    aside.mkdir()
    (aside / "state.json").write_text("{}")
    (aside / "unet.safetensors").write_bytes(b"")
    half = tmp_path / ".tmp-checkpoint.abc"  # a half-written one: never resumed from
    half.mkdir()
    (half / "state.json").write_text("{}")
    assert sd_train._find_checkpoint(tmp_path) == aside
    sd_train._remove_checkpoints(tmp_path)
    assert list(tmp_path.iterdir()) == []
