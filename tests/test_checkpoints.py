"""Generator checkpoints: ``finetune.save_steps`` models, their hashes, cache and CLI flag."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ratio_search.config import FinetuneConfig
from ratio_search.diffusion import (
    checkpoints_of,
    finetune,
    finetune_checkpoints,
    list_models,
    load_model,
    read_meta,
)
from ratio_search.diffusion.base import model_hash
from ratio_search.diffusion.tiny import TEST_UNET, WEIGHTS_NAME, resolve
from ratio_search.errors import ConfigError
from ratio_search.home import Home

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]


def _cfg(**kw) -> FinetuneConfig:
    base = dict(from_scratch=True, max_steps=4, batch_size=4, checkpoint_every=2, device="cpu")
    base.update(kw)
    return FinetuneConfig(**base)


def _tune(data, cfg, home, calls=None):
    cb = None if calls is None else (lambda step, loss: calls.append(step))
    return finetune(data, cfg, home, progress=False, callback=cb, unet_config=TEST_UNET)


def _weights(path) -> bytes:
    return (path / WEIGHTS_NAME).read_bytes()


def test_saved_steps_are_models_with_their_own_hash_and_the_final_is_unchanged(
    tiny_dataset, tiny_home, tmp_path
):
    info = _tune(tiny_dataset, _cfg(save_steps=[1, 2, 4]), tiny_home)  # 4: the final itself
    plain = _tune(tiny_dataset, _cfg(), Home(tmp_path / "plain"))
    assert info.hash == plain.hash  # save_steps is not in the model hash ...
    assert _weights(info.path) == _weights(plain.path)  # ... nor does it change the weights
    assert "at_step" not in info.meta and plain.meta["checkpoints"] == {}
    ck = info.meta["checkpoints"]
    assert sorted(ck) == ["1", "2"] and len({ck["1"], ck["2"], info.hash}) == 3
    resolved = resolve(tiny_dataset, _cfg(), TEST_UNET)
    for s in (1, 2):
        folder = tiny_home.models / ck[str(s)]
        meta = read_meta(folder)
        assert meta["complete"] and meta["checkpoint_of"] == info.hash and meta["at_step"] == s
        assert (
            meta["model_hash"]
            == ck[str(s)]
            == model_hash(tiny_dataset.key, resolved.config, None, at_step=s)
        )
        assert meta["training"]["steps"] == s and (folder / "samples.png").is_file()
        assert _weights(folder) != _weights(info.path)
    assert _weights(tiny_home.models / ck["1"]) != _weights(tiny_home.models / ck["2"])
    # nothing half-made is left: no training folder, no step folder inside the final model
    assert not list(tiny_home.models.glob(".tmp-*")) and not list(info.path.glob("at-*"))


def test_a_checkpoint_loads_and_samples_but_is_never_latest(tiny_dataset, tiny_home):
    info = _tune(tiny_dataset, _cfg(save_steps=[2]), tiny_home)
    ck = tiny_home.models / info.meta["checkpoints"]["2"]
    model = load_model(ck)
    assert model.model_hash == ck.name
    images = model.sample(3, 0, guidance=2.0, steps=2, seed=1)
    assert images.shape == (3, 1, 16, 16) and images.dtype == np.uint8
    assert list_models(tiny_home) == [info.path]
    assert list_models(tiny_home, tiny_dataset.key) == [info.path]
    assert load_model("latest", tiny_home).path == info.path
    assert checkpoints_of(info.path, tiny_home) == {0: info.path, 4: info.path, 2: ck}
    assert checkpoints_of(ck.name, tiny_home) == {0: ck}  # a bare hash; a checkpoint has none


def test_finetune_checkpoints_trains_one_run_once_and_then_reuses_it(tiny_dataset, tiny_home):
    calls: list[int] = []
    cb = lambda step, loss: calls.append(step)  # noqa: E731
    cfg = _cfg(max_steps=3)

    def get():
        return finetune_checkpoints(
            tiny_dataset, cfg, tiny_home, [0, 2, 4], progress=False, callback=cb,
            unet_config=TEST_UNET,
        )  # fmt: skip

    models = get()
    assert calls == [1, 2, 3, 4]  # one run, to the largest step asked
    assert sorted(models) == [0, 2, 4]
    final = models[4]
    assert final.meta["config"]["max_steps"] == 4 and "checkpoint_of" not in final.meta
    assert models[2].meta["at_step"] == 2 and models[2].meta["checkpoint_of"] == final.hash
    assert models[0].meta["at_step"] == 3  # 0: the model after cfg.max_steps steps
    assert len({m.hash for m in models.values()}) == 3
    again = get()
    assert calls == [1, 2, 3, 4]  # cached: no second training
    assert {s: m.hash for s, m in again.items()} == {s: m.hash for s, m in models.items()}
    assert all(m.cached for m in again.values())
    # steps within cfg.max_steps: 0 is the plain fine-tune's own model
    plain = finetune_checkpoints(
        tiny_dataset, _cfg(), tiny_home, [0], progress=False, unet_config=TEST_UNET
    )
    assert plain[0].hash == _tune(tiny_dataset, _cfg(), tiny_home).hash


def test_a_cached_final_model_gets_the_checkpoints_it_lacks(tiny_dataset, tiny_home, tmp_path):
    first = _tune(tiny_dataset, _cfg(), tiny_home)
    before = _weights(first.path)
    calls: list[int] = []
    info = _tune(tiny_dataset, _cfg(save_steps=[2]), tiny_home, calls)
    assert calls == [1, 2]  # the same run again, only as far as the missing step
    assert info.hash == first.hash and _weights(info.path) == before
    assert read_meta(first.path)["checkpoints"] == info.meta["checkpoints"]
    ck = tiny_home.models / info.meta["checkpoints"]["2"]
    # deterministic: the same checkpoint as a run that saved it the first time
    fresh = _tune(tiny_dataset, _cfg(save_steps=[2]), Home(tmp_path / "fresh"))
    assert _weights(ck) == _weights(fresh.path.parent / fresh.meta["checkpoints"]["2"])
    calls.clear()
    assert _tune(tiny_dataset, _cfg(save_steps=[2]), tiny_home, calls).cached and calls == []


@pytest.mark.edges
def test_a_resumed_run_saves_the_steps_it_passed_before_the_interruption(tiny_dataset, tiny_home):
    class Stop(Exception):
        pass

    def stop_at_3(step, loss):
        if step == 3:
            raise Stop

    cfg = _cfg(max_steps=5, save_steps=[1, 4], checkpoint_every=2)
    with pytest.raises(Stop):
        finetune(tiny_dataset, cfg, tiny_home, progress=False, callback=stop_at_3,
                 unet_config=TEST_UNET)  # fmt: skip
    calls: list[int] = []
    info = finetune(tiny_dataset, cfg, tiny_home, resume=True, progress=False,
                    callback=lambda s, loss: calls.append(s), unet_config=TEST_UNET)  # fmt: skip
    assert calls == [3, 4, 5]  # from the checkpoint at step 2: step 1 was saved before it
    assert sorted(info.meta["checkpoints"]) == ["1", "4"]


@pytest.mark.edges
def test_bad_save_steps_are_one_line_config_errors(tiny_dataset, tiny_home):
    with pytest.raises(ConfigError, match=r"save_steps: 9 not in \[1, finetune.max_steps = 4\]"):
        _tune(tiny_dataset, _cfg(save_steps=[2, 9]), tiny_home)
    with pytest.raises(ConfigError, match="stable-diffusion backend saves only") as e:
        finetune(tiny_dataset, FinetuneConfig(backend="stable-diffusion", save_steps=[2]),
                 tiny_home, progress=False)  # fmt: skip
    assert "\n" not in str(e.value)
    assert not tiny_home.models.exists()  # refused before anything was trained


@pytest.fixture
def cli_config(tmp_path, monkeypatch) -> Callable[..., Path]:
    """Test-sized fine-tunes through the CLI: the tiny test network, and 2 sampling steps for
    each model's samples grid. Returns ``write(**finetune)``, which writes ``tmp_path/c.yaml``
    (a tiny phantom data set; a CPU fine-tune from scratch, plus ``finetune``) and returns it."""
    from ratio_search.diffusion import tiny

    full = tiny.tiny_unet_config
    monkeypatch.setattr(tiny, "tiny_unet_config", lambda n, s, c, o=None: full(n, s, c, TEST_UNET))
    monkeypatch.setattr(tiny, "BACKEND", dataclasses.replace(tiny.BACKEND, grid_steps=2))

    def write(**finetune: Any) -> Path:
        extra = "".join(f", {k}: {v}" for k, v in finetune.items())
        path = tmp_path / "c.yaml"
        path.write_text(
            "data: {image_size: 16, phantom_n_per_class: 12, phantom_val_per_class: 6,\n"
            "       phantom_test_per_class: 6, min_val_per_class: 2}\n"
            f"finetune: {{from_scratch: true, batch_size: 4, device: cpu{extra}}}\n"
        )
        return path

    return write


@pytest.mark.e2e
def test_cli_finetune_save_steps(tmp_path, run_cli, cli_config):
    argv = ["finetune", "--home", tmp_path, "--config", cli_config(), "--max-steps", "3",
            "--json"]  # fmt: skip
    rc, out, err = run_cli([*argv, "--save-steps", "1", "2"])
    assert rc == 0, err
    got = json.loads(out)
    meta = read_meta(tmp_path / "models" / got["hash"])
    assert sorted(meta["checkpoints"]) == ["1", "2"]
    for s, h in meta["checkpoints"].items():
        assert read_meta(tmp_path / "models" / h)["at_step"] == int(s)
    rc, out, err = run_cli(argv)  # no --save-steps: the same model, cached
    assert rc == 0 and json.loads(out)["hash"] == got["hash"] and json.loads(out)["cached"]
    rc, out, err = run_cli([*argv, "--save-steps", "7"])
    assert rc == 2 and "save_steps" in err and len(err.strip().splitlines()) == 1


@pytest.mark.e2e
def test_cli_generate_space_prebuilds_the_pools_of_every_checkpoint(tmp_path, run_cli, cli_config):
    from ratio_search.pools import load_pool

    config = cli_config(max_steps=2)
    (tmp_path / "s.yaml").write_text(
        "params:\n  finetune_steps: {type: categorical, choices: [0, 1, 3]}\n"
        "fixed: {r: 0.5, guidance: 2.0, steps: 2, pool_size: 2}\n"
        "search: {n_trials: 1}\n"
    )
    argv = ["generate", "--home", tmp_path, "--config", config,
            "--space", tmp_path / "s.yaml", "--device", "cpu", "--json"]  # fmt: skip
    rc, out, err = run_cli(argv)  # no model yet ("latest"): one fine-tune saving steps 1 and 2
    assert rc == 0, err
    got = json.loads(out)
    assert got["generated"] == 3 and {p["finetune_steps"] for p in got["pools"]} == {0, 1, 3}
    by_steps = {p["finetune_steps"]: load_pool(Home(tmp_path), p["key"]) for p in got["pools"]}
    hashes = {s: pool.manifest["model_hash"] for s, pool in by_steps.items()}
    assert len(set(hashes.values())) == 3  # a model, and pools, of their own per checkpoint
    final = read_meta(tmp_path / "models" / hashes[3])
    assert final["config"]["max_steps"] == 3 and final["checkpoints"] == {
        "1": hashes[1], "2": hashes[0]  # 0: after finetune.max_steps = 2 steps of that run
    }  # fmt: skip
    models = sorted(p.name for p in (tmp_path / "models").iterdir())
    rc, out, err = run_cli(argv)  # everything cached: no fine-tune, no pool generated
    assert rc == 0 and json.loads(out)["generated"] == 0, err
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == models
