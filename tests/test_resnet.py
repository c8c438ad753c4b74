"""``train.arch: resnet``: the small residual network (train/resnet.py), its training through the
same loop, its seeds trained side by side (train/multi.py) and ``train --config`` reproduction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from ratio_search.config import TrainConfig
from ratio_search.errors import ConfigError
from ratio_search.train.cnn import SimpleCNN, build_model
from ratio_search.train.loop import evaluate, predict_proba, train_classifier
from ratio_search.train.multi import train_seeds_tensors
from ratio_search.train.resnet import ResNet

# Two stages of 4 channels, FC 8: ~1.3k parameters, fast on a shared 2-core machine.
TINY = {"arch": "resnet", "widths": [4, 4], "fc": 8, "device": "cpu"}


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "batch_size": 16, "lr": 1e-2, "seed": 0, **TINY, **kw})


def toy_set(n: int = 48, size: int = 12, seed: int = 0):
    """Class 1 has a bright square in the middle, class 0 does not."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.int64)
    x = rng.integers(0, 60, (n, 1, size, size)).astype(np.uint8)
    x[y == 1, :, size // 4 : -size // 4, size // 4 : -size // 4] += 150
    return x, y


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.unit
@pytest.mark.parametrize("channels,size,n_classes", [(1, 32, 2), (3, 17, 4), (1, 5, 3)])
def test_build_model_gives_a_resnet_of_the_right_output_shape(channels, size, n_classes):
    model = build_model(_cfg(widths=[4, 8, 8]), channels, n_classes, size)
    assert isinstance(model, ResNet)
    out = model(torch.randn(3, channels, size, size))
    assert out.shape == (3, n_classes)
    # the width of each stage comes from train.widths, the hidden head from train.fc
    convs = [m.out_channels for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert convs == [4]  # the stem; the stages are residual blocks
    assert [b.conv2.out_channels for b in model.features if hasattr(b, "conv2")] == [
        4,
        4,
        8,
        8,
        8,
        8,
    ]
    assert model.classifier[1].out_features == 8


@pytest.mark.unit
def test_parameter_count_is_the_documented_one():
    # ResNet's docstring: 182,898 at the study's widths, 1.2x SimpleCNN's 154,754 at 32 px
    study = TrainConfig(arch="resnet")
    resnet = build_model(study, 1, 2, 32)
    assert _n_params(resnet) == 182_898
    assert _n_params(resnet) == _n_params(build_model(study, 1, 2, 64))  # size-independent
    assert _n_params(SimpleCNN(1, 2, 32)) == 154_754
    assert _n_params(ResNet(1, 2, widths=(16, 32, 64), fc=128, blocks=2)) == 182_898


@pytest.mark.unit
def test_too_small_images_fail_with_a_config_error():
    build_model(_cfg(widths=[4, 4, 4]), 1, 2, 5)  # 5 -> 3 -> 2 px: enough for BatchNorm
    with pytest.raises(ConfigError, match="too small"):
        build_model(_cfg(widths=[4, 4, 4]), 1, 2, 4)  # 4 -> 2 -> 1 px


@pytest.mark.unit
def test_the_default_arch_is_still_the_simple_cnn():
    assert isinstance(build_model(TrainConfig(), 1, 2, 32), SimpleCNN)


@pytest.mark.unit
def test_same_seed_same_weights_other_seed_other_weights():
    x, y = toy_set()
    a = train_classifier(x, y, x, y, _cfg(epochs=2, seed=4), n_classes=2)
    b = train_classifier(x, y, x, y, _cfg(epochs=2, seed=4), n_classes=2)
    c = train_classifier(x, y, x, y, _cfg(epochs=2, seed=5), n_classes=2)
    assert _same_weights(a.model, b.model) and a.history == b.history
    assert not _same_weights(a.model, c.model)


@pytest.mark.unit
def test_trains_on_tiny_data_above_chance(one_thread):
    x, y = toy_set(64)
    vx, vy = toy_set(40, seed=1)
    res = train_classifier(x, y, vx, vy, _cfg(epochs=6), n_classes=2)
    assert res.metrics["accuracy"] >= 0.9
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    # the metrics are the trainer's own: the same keys as the simple CNN's
    simple = train_classifier(x, y, vx, vy, _cfg(epochs=1, arch="simple"), n_classes=2)
    assert res.metrics.keys() == simple.metrics.keys()


@pytest.mark.unit
def test_batchnorm_statistics_are_kept_and_validation_does_not_move_them(one_thread):
    x, y = toy_set()
    res = train_classifier(x, y, x, y, _cfg(epochs=2), n_classes=2)
    norms = [m for m in res.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(int(m.num_batches_tracked) == 2 * 3 for m in norms)  # 48 / 16 per epoch
    before = {k: v.clone() for k, v in res.model.state_dict().items()}
    p1 = predict_proba(res.model, x)
    m1 = evaluate(res.model, x, y)
    assert np.array_equal(p1, predict_proba(res.model, x[::-1].copy())[::-1])  # per image: eval()
    assert all(torch.equal(before[k], v) for k, v in res.model.state_dict().items())
    assert m1["val_loss"] == res.metrics["val_loss"]  # the trainer's own validation


@pytest.mark.unit
def test_resume_after_an_epoch_ends_with_the_same_weights(one_thread):
    x, y = toy_set()
    states = []
    full = train_classifier(
        x, y, x, y, _cfg(), n_classes=2, report=lambda e, m, s: states.append(s)
    )
    resumed = train_classifier(x, y, x, y, _cfg(), n_classes=2, state=states[0])
    assert _same_weights(full.model, resumed.model) and resumed.history == full.history


@pytest.mark.unit
def test_seeds_together_equal_each_seed_alone_exactly(one_thread):
    x, y = toy_set()
    vx, vy = toy_set(20, seed=1)
    seeds = [3, 4, 5]
    xs = [x, x[::-1].copy(), x]  # every seed its own training set, as mixing gives them
    ys = [y, y[::-1].copy(), y]
    reports, states = [], []
    together = train_seeds_tensors(
        xs, ys, vx, vy, _cfg(), seeds, n_classes=2,
        report=lambda e, m, s: (reports.append((e, m)), states.append(s)),
    )  # fmt: skip
    for s, xi, yi, res in zip(seeds, xs, ys, together, strict=True):
        alone = train_classifier(xi, yi, vx, vy, _cfg(seed=s), n_classes=2)
        assert _same_weights(res.model, alone.model)
        assert res.history == alone.history and res.metrics == alone.metrics
    assert [e for e, _ in reports] == [1, 2, 3]
    assert reports[-1][1] == [r.metrics for r in together]
    assert len({r.metrics["val_loss"] for r in together}) == 3  # different seeds, different runs
    # resuming the k seeds after epoch 1 ends where the uninterrupted run ended
    again = train_seeds_tensors(xs, ys, vx, vy, _cfg(), seeds, n_classes=2, state=states[0])
    for a, b in zip(again, together, strict=True):
        assert _same_weights(a.model, b.model) and a.history == b.history


@pytest.mark.e2e
def test_train_config_with_resnet_reproduces_its_metrics(tmp_path, run_cli, one_thread):
    cfg = tmp_path / "x.yaml"
    data = {"source": "phantom", "image_size": 16, "phantom_n_per_class": 12,
            "phantom_val_per_class": 6, "phantom_test_per_class": 6, "min_val_per_class": 2}  # fmt: skip
    train = {
        **TINY,
        "epochs": 2,
        "batch_size": 8,
        "lr": 0.01,
        "seed": 1,
        "n_seeds": 2,
        "threads": 1,
    }
    cfg.write_text(yaml.safe_dump({"data": data, "train": train}))
    docs = []
    for i in range(2):
        argv = [
            "train",
            "--home",
            tmp_path / "home",
            "--config",
            cfg,
            "--json",
            "--out",
            tmp_path / f"out{i}",
        ]
        rc, out, err = run_cli(argv)
        assert rc == 0, err
        docs.append(json.loads(out))
    assert docs[0]["metrics"] == docs[1]["metrics"] and docs[0]["history"] == docs[1]["history"]
    assert len(docs[0]["history"]) == 2
    saved = yaml.safe_load((tmp_path / "out0" / "config.yaml").read_text())
    assert saved["train"]["arch"] == "resnet" and saved["train"]["widths"] == [4, 4]
    # a resnet really trained: the simple CNN's numbers at the same config are other numbers
    cfg.write_text(yaml.safe_dump({"data": data, "train": {**train, "arch": "simple"}}))
    rc, out, err = run_cli(["train", "--home", tmp_path / "home", "--config", cfg, "--json",
                            "--out", tmp_path / "simple"])  # fmt: skip
    assert rc == 0, err
    assert json.loads(out)["metrics"]["val_loss"] != docs[0]["metrics"]["val_loss"]
