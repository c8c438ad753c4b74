"""The trial's classifier: shapes, determinism, resume, metrics, learning; run_trial's wiring."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from ratio_search.config import TrainConfig
from ratio_search.data import Dataset
from ratio_search.errors import DataError, RatioSearchError
from ratio_search.train.cnn import SimpleCNN, build_model
from ratio_search.train.loop import compute_metrics, evaluate, predict_proba, train_classifier
from ratio_search.train.trial import run_trial

pytestmark = pytest.mark.unit

# A ~1k-parameter CNN keeps every test fast on a shared 2-core machine.
TINY = {"widths": [4, 4], "fc": 8}


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def toy_set(n: int = 64, size: int = 16, channels: int = 1, seed: int = 0):
    """Class 1 has a bright square in the middle, class 0 does not: trivially separable."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 60, (n, channels, size, size)).astype(np.uint8)
    lo, hi = size // 4, size - size // 4
    x[y == 1, :, lo:hi, lo:hi] += 150
    return x, y.astype(np.int64)


def tiny_cfg(**kw) -> TrainConfig:
    base = {"epochs": 4, "batch_size": 16, "lr": 1e-2, "seed": 0, "device": "cpu", **TINY}
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------------------------ model


@pytest.mark.parametrize(
    "channels,size,n_classes,widths,fc",
    [
        (1, 32, 2, (16, 32, 64), 128),
        (3, 16, 4, (4, 4), 8),
        (1, 8, 2, (4, 4, 4), 8),
        (3, 37, 3, (4, 8), 16),
    ],
)
def test_simple_cnn_output_shape(channels, size, n_classes, widths, fc):
    model = SimpleCNN(channels, n_classes, size, widths, fc)
    out = model(torch.zeros(5, channels, size, size))
    assert out.shape == (5, n_classes)


def test_simple_cnn_is_the_studys_architecture():
    model = SimpleCNN(1, 2, 32)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64]
    assert all(c.kernel_size == (3, 3) for c in convs)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(64 * 4 * 4, 128), (128, 2)]


def test_tiny_cnn_is_about_a_thousand_parameters():
    n = sum(p.numel() for p in SimpleCNN(1, 2, 16, **TINY).parameters())
    assert 300 < n < 2000


def test_the_cnn_size_comes_from_the_train_config():
    # no side channel: TrainConfig's widths/fc decide the model, its defaults are the study's
    study = build_model(TrainConfig(), 1, 2, 32)
    assert [c.out_channels for c in study.modules() if isinstance(c, torch.nn.Conv2d)] == [
        16,
        32,
        64,
    ]
    x, y = toy_set(16)
    model = train_classifier(x, y, x, y, tiny_cfg(epochs=1, widths=[3], fc=5), n_classes=2).model
    assert [c.out_channels for c in model.modules() if isinstance(c, torch.nn.Conv2d)] == [3]
    assert model.classifier[1].out_features == 5
    with pytest.raises(RatioSearchError, match="arch"):
        build_model(TrainConfig(arch="vgg"), 1, 2, 32)  # resnet: tests/test_resnet.py


def test_simple_cnn_rejects_images_too_small_for_its_pools():
    with pytest.raises(RatioSearchError, match="too small"):
        SimpleCNN(1, 2, 4, widths=(4, 4, 4))


@pytest.mark.parametrize("channels,size,widths", [(1, 32, (16, 32, 64)), (3, 37, (4, 8))])
def test_the_fast_forward_gives_the_modules_numbers(channels, size, widths):
    # forward runs channels-last and pools before each ReLU; the Sequential modules applied in
    # order (conv, ReLU, pool; NCHW) must give the same logits and gradients, up to the
    # convolutions' summation order
    torch.manual_seed(0)
    model = SimpleCNN(channels, 2, size, widths, 8)
    x = torch.randn(6, channels, size, size)
    fast = model(x)
    fast.square().sum().backward()
    fast_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    slow = model.classifier(model.features(x))
    slow.square().sum().backward()
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    for a, p in zip(fast_grads, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)
        assert p.is_contiguous()  # the parameters stay NCHW (safetensors needs contiguous ones)
    assert model.hidden(x).shape == (6, 8)


def test_pooling_before_the_relu_is_exact():
    # ReLU is monotonic, so it commutes with a max: values and gradients equal bit for bit, also
    # for ties (equal positive maxima, windows at or below zero)
    x = torch.randn(2, 3, 8, 8)
    x[0, 0] = -1.0
    x[0, 1, :2, :2] = 0.5
    x[1, 2, :2, :2] = torch.tensor([[0.0, -2.0], [0.0, -1.0]])
    g = torch.randn(2, 3, 4, 4)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    first = torch.relu(torch.nn.functional.max_pool2d(a, 2))
    second = torch.nn.functional.max_pool2d(torch.relu(b), 2)
    first.backward(g)
    second.backward(g)
    assert torch.equal(first, second)
    assert torch.equal(a.grad, b.grad)
    assert a.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------ metrics


def test_metrics_of_perfect_predictions():
    y = np.array([0, 0, 1, 1, 1])
    proba = np.eye(2)[y] * 0.8 + 0.1
    m = compute_metrics(y, proba, positive_label=0)
    assert m["accuracy"] == 1.0 and m["f1"] == 1.0 and m["roc_auc"] == 1.0
    assert m["confusion_matrix"] == [[2, 0], [0, 3]]


def test_metrics_hand_made_binary_positive_class_is_the_synthetic_label():
    # true 0 0 0 1 1 ; predicted 0 1 1 1 0  -> for positive label 0: TP=1 FP=1 FN=2
    y = np.array([0, 0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1, 0])
    proba = np.eye(2)[pred]
    m0 = compute_metrics(y, proba, positive_label=0)
    assert m0["accuracy"] == pytest.approx(2 / 5)
    assert m0["precision"] == pytest.approx(1 / 2)
    assert m0["recall"] == pytest.approx(1 / 3)
    assert m0["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert m0["confusion_matrix"] == [[1, 2], [1, 1]]
    # label 1 as positive: TP=1 FP=2 FN=1
    m1 = compute_metrics(y, proba, positive_label=1)
    assert m1["precision"] == pytest.approx(1 / 3)
    assert m1["recall"] == pytest.approx(1 / 2)


def test_metrics_single_class_roc_auc_is_nan_not_an_error():
    y = np.zeros(4, dtype=np.int64)
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]])
    m = compute_metrics(y, proba, positive_label=0)
    assert math.isnan(m["roc_auc"])
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["confusion_matrix"] == [[3, 1], [0, 0]]


def test_metrics_multiclass_macro():
    y = np.array([0, 1, 2, 2])
    pred = np.array([0, 1, 2, 1])
    proba = np.eye(3)[pred] * 0.7 + 0.1
    m = compute_metrics(y, proba, n_classes=3)
    # per class precision: 1, 1/2, 1 -> macro 5/6; recall: 1, 1, 1/2 -> 5/6
    assert m["precision"] == pytest.approx(5 / 6)
    assert m["recall"] == pytest.approx(5 / 6)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert 0.0 <= m["roc_auc"] <= 1.0
    # a class missing from y_true: one-vs-rest AUC is undefined
    assert math.isnan(compute_metrics(y[:2], proba[:2], n_classes=3)["roc_auc"])


# ------------------------------------------------------------------------------------ training


def test_learns_a_separable_toy_set():
    x, y = toy_set(96)
    vx, vy = toy_set(64, seed=1)
    result = train_classifier(x, y, vx, vy, tiny_cfg(epochs=8), n_classes=2)
    assert result.metrics["accuracy"] > 0.9
    assert len(result.history) == 8
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # evaluate() and predict_proba() agree with what the trainer reported
    again = evaluate(result.model, vx, vy, positive_label=0)
    assert again["accuracy"] == pytest.approx(result.metrics["accuracy"])
    proba = predict_proba(result.model, vx)
    assert proba.shape == (64, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)


def test_rgb_and_three_classes():
    x, y = toy_set(48, size=16, channels=3)
    y = (np.arange(48) % 3).astype(np.int64)
    result = train_classifier(x, y, x, y, tiny_cfg(epochs=1), n_classes=3)
    assert np.array(result.metrics["confusion_matrix"]).shape == (3, 3)
    assert np.array(result.metrics["confusion_matrix"]).sum() == 48


def test_same_seed_same_numbers_and_weights():
    x, y = toy_set(48)
    a = train_classifier(x, y, x, y, tiny_cfg(epochs=2), n_classes=2)
    b = train_classifier(x, y, x, y, tiny_cfg(epochs=2), n_classes=2)
    assert a.history == b.history
    for (ka, va), (kb, vb) in zip(
        a.model.state_dict().items(), b.model.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)
    c = train_classifier(x, y, x, y, tiny_cfg(epochs=2, seed=1), n_classes=2)
    assert c.history[-1]["train_loss"] != a.history[-1]["train_loss"]


def test_training_leaves_the_global_rng_alone():
    x, y = toy_set(32)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_classifier(x, y, x, y, tiny_cfg(epochs=1), n_classes=2)
    assert torch.equal(torch.rand(3), expected)


def test_resume_from_a_mid_training_state_equals_the_straight_run():
    x, y = toy_set(56)  # 56 / 16: a partial last batch too
    vx, vy = toy_set(32, seed=1)
    cfg = tiny_cfg(epochs=4)
    seen: list[tuple[int, dict, dict]] = []
    straight = train_classifier(
        x,
        y,
        vx,
        vy,
        cfg,
        n_classes=2,
        report=lambda e, m, s: seen.append((e, m, s)),
    )
    assert [e for e, _, _ in seen] == [1, 2, 3, 4]
    assert set(seen[1][2]) >= {"epoch", "model", "optimizer", "rng"}
    # the snapshot handed to report is a copy: later epochs must not change it
    w_epoch2 = seen[1][2]["model"]["features.0.weight"]
    assert not torch.equal(w_epoch2, straight.model.state_dict()["features.0.weight"])

    calls: list[int] = []
    resumed = train_classifier(
        x,
        y,
        vx,
        vy,
        cfg,
        n_classes=2,
        state=seen[1][2],
        report=lambda e, m, s: calls.append(e),
    )
    assert calls == [3, 4]  # only the remaining epochs run
    assert resumed.history == straight.history
    assert resumed.metrics == straight.metrics
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_resume_from_the_last_epoch_trains_nothing():
    x, y = toy_set(32)
    cfg = tiny_cfg(epochs=2)
    states = []
    straight = train_classifier(
        x,
        y,
        x,
        y,
        cfg,
        n_classes=2,
        report=lambda e, m, s: states.append(s),
    )
    done = train_classifier(x, y, x, y, cfg, n_classes=2, state=states[-1])
    assert done.metrics == straight.metrics


def test_bad_inputs_raise_data_errors():
    x, y = toy_set(16)
    with pytest.raises(DataError, match="uint8"):
        train_classifier(x.astype(np.float32), y, x, y, tiny_cfg(), n_classes=2)
    with pytest.raises(DataError, match="labels must lie"):
        train_classifier(x, y + 5, x, y, tiny_cfg(), n_classes=2)
    with pytest.raises(DataError, match="validation set is empty"):
        train_classifier(x, y, x[:0], y[:0], tiny_cfg(), n_classes=2)
    with pytest.raises(DataError, match="differ in shape"):
        train_classifier(x, y, x[:, :, :8, :8], y, tiny_cfg(), n_classes=2)


def test_divergence_is_a_clear_error():
    x, y = toy_set(32)
    with pytest.raises(RatioSearchError, match="diverged"):
        train_classifier(x, y, x, y, tiny_cfg(lr=float("inf"), epochs=3), n_classes=2)


def test_read_only_memory_mapped_input(tmp_path):
    x, y = toy_set(32)
    np.save(tmp_path / "x.npy", x)
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    a = train_classifier(xm, y, xm, y, tiny_cfg(epochs=1), n_classes=2)
    b = train_classifier(x, y, x, y, tiny_cfg(epochs=1), n_classes=2)
    assert a.history == b.history


# ------------------------------------------------------------------------------------ run_trial


def toy_dataset(n: int = 48, n_val: int = 32):
    x, y = toy_set(n)
    vx, vy = toy_set(n_val, seed=1)
    # label 1 (bright square) is the synthetic class, as if it were CNV
    return Dataset(
        train_x=x, train_y=y, val_x=vx, val_y=vy, test_x=vx[:0], test_y=vy[:0],
        class_names=["NORMAL", "CNV"], synthetic_label=1, key="toy", info={},
    )  # fmt: skip


def test_run_trial_at_r0_without_a_pool():
    data = toy_dataset()
    epochs = []
    out = run_trial(tiny_cfg(epochs=2), data, None, report=lambda e, m, s: epochs.append(e))
    assert epochs == [1, 2]
    assert out["n_synthetic"] == 0 and out["n_real"] == out["n_train"] == 48
    assert out["device"] == "cpu" and len(out["history"]) == 2
    assert out["metrics"] == out["history"][-1]
    assert np.array(out["metrics"]["confusion_matrix"]).sum() == 32


def test_run_trial_mixes_the_pool_and_scores_the_synthetic_class():
    data = toy_dataset()
    pool, _ = toy_set(40, seed=5)
    pool = pool[1::2]  # 20 "generated" bright-square images
    out = run_trial(tiny_cfg(epochs=1, r=0.5), data, pool)
    # 24 images of class 1; replace R=0.5 swaps 12 of them for pool images
    assert out["n_synthetic"] == 12 and out["n_real"] == 36 and out["n_train"] == 48
    aug = run_trial(tiny_cfg(epochs=1, r=0.25, mode="augment"), data, pool)
    assert aug["n_synthetic"] == 8 and aug["n_real"] == 48  # 0.25 * 24 / 0.75 added on top
    # binary metrics use the synthetic class (label 1) as the positive class
    cm = np.array(out["metrics"]["confusion_matrix"])
    tp, fn = cm[1, 1], cm[1, 0]
    assert out["metrics"]["recall"] == pytest.approx(tp / (tp + fn))


def test_run_trial_is_deterministic():
    data = toy_dataset()
    pool, _ = toy_set(40, seed=5)
    a = run_trial(tiny_cfg(epochs=1, r=0.5), data, pool[1::2])
    b = run_trial(tiny_cfg(epochs=1, r=0.5), data, pool[1::2])
    assert a == b


# ------------------------------------------------------------------------------------ isolation


def test_trainer_and_trial_import_neither_ray_nor_mlflow():
    code = (
        "import sys, ratio_search.train.loop, ratio_search.train.trial; "
        "ratio_search.train.trial.run_trial; "
        "bad = [m for m in ('ray', 'mlflow') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_resume_state_survives_a_weights_only_torch_save(tmp_path):
    # how a checkpoint travels (Ray Tune, a resumed search): torch.save, then a safe torch.load
    x, y = toy_set(40)
    cfg = tiny_cfg(epochs=3)
    states = []
    straight = train_classifier(
        x,
        y,
        x,
        y,
        cfg,
        n_classes=2,
        report=lambda e, m, s: states.append(s),
    )
    torch.save(states[0], tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    resumed = train_classifier(x, y, x, y, cfg, n_classes=2, state=state)
    assert resumed.metrics == straight.metrics


def test_trial_threads_are_fixed_for_training_then_restored():
    # CPU kernels reduce in a thread-count-dependent order; `threads` pins it so that an exported
    # trial (trained with its CPU share) repeats bit for bit from the command line.
    data = toy_dataset()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = run_trial(tiny_cfg(epochs=2, threads=1), data, None)
        assert torch.get_num_threads() == 2  # the caller's setting comes back
        torch.set_num_threads(1)
        b = run_trial(tiny_cfg(epochs=2, threads=1), data, None)
    finally:
        torch.set_num_threads(before)
    assert a["metrics"]["val_loss"] == b["metrics"]["val_loss"]
    assert a["history"] == b["history"]
