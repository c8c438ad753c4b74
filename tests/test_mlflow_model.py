"""The confirmed classifier in MLflow: logged as a PyTorch model under its confirm run,
registered with the answer, and loaded back with the same predictions on the test images."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ratio_search.config import TrialConfig
from ratio_search.tracking import SearchTracker
from ratio_search.tracking.models import log_chosen_model
from ratio_search.train.cnn import build_model
from ratio_search.train.loop import predict_proba

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_chosen_classifier_logged_registered_and_loaded(
    tiny_home, tiny_dataset, tmp_path, one_thread, monkeypatch
):
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient
    from safetensors.torch import save_file

    uri = tiny_home.tracking_uri()
    tracker = SearchTracker(uri, run_dir=None)
    parent = tracker.start_parent("s1")
    run = tracker.client.create_run(
        tracker.experiment_id, tags={"mlflow.parentRunId": parent}, run_name="confirm R=0.50"
    )
    config = {"r": 0.5, "widths": [4, 4], "fc": 8, "epochs": 1}
    torch.manual_seed(0)
    data = tiny_dataset
    cnn = build_model(TrialConfig.from_flat(config).train, 1, len(data.class_names), (16, 16))
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in cnn.state_dict().items()}, str(weights))
    ctx = SimpleNamespace(data=data, data_key=data.key, info={"mlflow": {"tracking_uri": uri}})
    result = {
        "metric": "val_accuracy",
        "seeds": [7, 8],
        "chosen": {"label": "R=0.50", "config": config},
        "mlflow": {"R=0.50": run.info.run_id},
        "test": {"chosen": {"test_accuracy": {"mean": 0.75, "low": 0.7, "high": 0.8}}},
        "usable_ratio": {"r": 0.5, "confirmed": True},
    }

    out = log_chosen_model(ctx, result, weights, register_as="rs-classifier")
    assert out["run_id"] == run.info.run_id and out["seed"] == 7
    assert out["registered"] == {"name": "rs-classifier", "version": "1"}

    # Same probabilities as the trainer's own prediction, from the raw uint8 test images.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # as a user loads it: models:/ URIs
    want = predict_proba(cnn, np.asarray(data.test_x))
    for model_uri in (out["model_uri"], "models:/rs-classifier/1"):
        loaded = mlflow.pytorch.load_model(model_uri)
        with torch.no_grad():
            got = loaded(torch.from_numpy(np.array(data.test_x))).numpy()
        assert got.shape == (len(data.test_y), 2)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    client = MlflowClient(uri, registry_uri=uri)
    model = client.get_logged_model(out["model_uri"].removeprefix("models:/"))
    assert model.source_run_id == run.info.run_id and model.name == "classifier-seed7"
    info = mlflow.models.get_model_info(out["model_uri"])
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["dtype"] == "uint8"
    version = client.get_model_version("rs-classifier", "1")
    assert "usable synthetic ratio R = 0.5 (confirmed)" in version.description
    assert "test accuracy: 0.7500" in client.get_registered_model("rs-classifier").description
    note = tracker.client.get_run(parent).data.tags["mlflow.note.content"]
    assert note.count("**Answer**") == 1 and "chosen configuration: R=0.50" in note

    # Not tracked: nothing logged, nothing raised.
    assert log_chosen_model(ctx, {**result, "mlflow": None}, weights) is None
