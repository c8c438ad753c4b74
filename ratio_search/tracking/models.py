"""The confirmed classifier in MLflow: logged as a PyTorch model, registered on request.

``export`` (with its confirmation) calls :func:`log_chosen_model`: the chosen configuration's
classifier, trained with the confirmation's first seed (its weights from the confirmation's
cache), is logged with :func:`mlflow.pytorch.log_model` under that configuration's ``confirm``
run, with a signature and an input example; ``--register NAME`` registers it with the answer as
the model version's description, and the search's parent run gets the answer in its note.

The logged model is an :class:`ImageClassifier`: it takes the images as the dataset stores them
(uint8 ``(N, C, H, W)``), applies the training's fixed normalisation and returns class
probabilities, so ``mlflow.pytorch.load_model(uri)(torch.from_numpy(images))`` gives the same
probabilities as :func:`ratio_search.train.loop.predict_proba`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..train.cnn import normalize
from . import lineage

logger = logging.getLogger(__name__)
N_EXAMPLE = 2  # images in the input example


class ImageClassifier(nn.Module):
    """A trained CNN for raw images: uint8 (or 0..255 float) ``(N, C, H, W)`` -> probabilities."""

    def __init__(self, cnn: nn.Module, class_names: list[str]) -> None:
        super().__init__()
        self.cnn = cnn
        self.class_names = list(class_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.cnn(normalize(x)), dim=1)


def build_classifier(config: Mapping[str, Any], data: Any, state: Mapping[str, Any]) -> nn.Module:
    """The :class:`ImageClassifier` of a trial config's CNN with weights ``state``."""
    from ..config import TrialConfig
    from ..train.cnn import build_model

    c, h, w = data.train_x.shape[1:]
    cfg = TrialConfig.from_flat(dict(config)).train
    cnn = build_model(cfg, c, len(data.class_names), (h, w))
    cnn.load_state_dict(dict(state))
    return ImageClassifier(cnn, data.class_names).eval()


def log_classifier(
    tracking_uri: str,
    run_id: str,
    model: nn.Module,
    example: np.ndarray,
    name: str = "classifier",
    params: Mapping[str, Any] | None = None,
) -> str:
    """Log ``model`` as an MLflow PyTorch model under run ``run_id``; return its model URI."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    example = np.array(example, copy=True)  # writable, contiguous
    with torch.no_grad():
        out = model(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, out)
    torch_version = torch.__version__.split("+", 1)[0]
    with _store(tracking_uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model,
            name=name,
            signature=signature,
            input_example=example,
            # Stated, not inferred: inference would load the model again in a subprocess.
            pip_requirements=[f"torch=={torch_version}", "numpy"],
            params={k: str(v) for k, v in (params or {}).items()} or None,
        )
    return info.model_uri


def register(tracking_uri: str, model_uri: str, name: str, description: str) -> dict[str, Any]:
    """Register ``model_uri`` (``models:/<model id>``) as a new version of model ``name``, with
    ``description`` on the version and the registered model."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    model = client.get_logged_model(model_uri.removeprefix("models:/"))
    try:
        client.create_registered_model(name, description=description)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        client.update_registered_model(name, description=description)
    # The logged model's own artifact folder as the source: the registry then needs no look-up
    # through MLflow's process-global tracking URI.
    version = client.create_model_version(
        name,
        model.artifact_location,
        run_id=model.source_run_id,
        description=description,
        model_id=model.model_id,
    )
    return {"name": name, "version": str(version.version)}


def answer_text(result: Mapping[str, Any]) -> str:
    """The confirmation's answer in a few Markdown lines (chosen config, test, usable ratio)."""
    chosen, seeds = result["chosen"], result.get("seeds") or []
    m = str(result.get("metric", "val_accuracy"))
    lines = [f"- chosen configuration: {chosen['label']} (confirmed over {len(seeds)} seeds)"]
    test = (result.get("test") or {}).get("chosen") or {}
    tm = "test_" + m.removeprefix("val_")
    if isinstance(test.get(tm), Mapping):
        iv = test[tm]
        lines.append(
            f"- test {m.removeprefix('val_')}: {iv['mean']:.4f} "
            f"(95% CI {iv['low']:.4f} to {iv['high']:.4f}, over the seeds)"
        )
    u = result.get("usable_ratio") or {}
    if "r" in u:
        ok = "confirmed" if u.get("confirmed") else "unconfirmed"
        lines.append(f"- usable synthetic ratio R = {u['r']:g} ({ok})")
    return "\n".join(lines)


def log_chosen_model(
    ctx: Any,
    result: Mapping[str, Any],
    weights: str | os.PathLike,
    *,
    register_as: str | None = None,
) -> dict[str, Any] | None:
    """Log the chosen configuration's classifier (weights of its first confirmation seed) under
    its ``confirm`` run, register it as ``register_as``, and put the answer in the parent's note.

    Returns ``{model_uri, run_id, seed, registered}`` for best.yaml, None when the confirmation
    was not tracked, or ``{"error": ...}``: a store problem never loses the export.
    """
    ids, chosen = result.get("mlflow"), result["chosen"]
    if not isinstance(ids, Mapping) or chosen["label"] not in ids:
        return None
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    run_id, seed = ids[chosen["label"]], int(result["seeds"][0])
    try:
        uri = str(ctx.info["mlflow"]["tracking_uri"])
        client = MlflowClient(tracking_uri=uri)
        data = ctx.data
        model = build_classifier(chosen["config"], data, load_file(str(weights)))
        images = data.test_x if len(data.test_x) else data.val_x
        model_uri = log_classifier(
            uri, run_id, model, np.asarray(images[:N_EXAMPLE]), name=f"classifier-seed{seed}",
            params={"seed": seed, "label": chosen["label"], "data_key": ctx.data_key},
        )  # fmt: skip
        answer = answer_text(result)
        out: dict[str, Any] = {"model_uri": model_uri, "run_id": run_id, "seed": seed}
        if register_as:
            out["registered"] = register(uri, model_uri, register_as, answer)
        parent = client.get_run(run_id).data.tags.get("mlflow.parentRunId")
        if parent:
            note = client.get_run(parent).data.tags.get(lineage.NOTE_TAG, "")
            client.set_tag(parent, lineage.NOTE_TAG, lineage.with_answer(note, answer))
        return out
    except Exception as e:  # noqa: BLE001 - the answer is in best.yaml either way
        logger.warning("could not log the chosen classifier to MLflow: %s: %s", type(e).__name__, e)
        return {"error": f"{type(e).__name__}: {e}"}


class _store:
    """Point MLflow's fluent API at ``uri`` for a block; what was set before comes back after.

    ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` (and the registry's
    ``MLFLOW_REGISTRY_URI``) into the environment, which the home reads: both are restored exactly,
    an unset one unset again.
    """

    ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def __enter__(self) -> None:
        import mlflow

        self.old = {k: os.environ.get(k) for k in self.ENV}
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)

    def __exit__(self, *exc: Any) -> None:
        import mlflow

        mlflow.set_tracking_uri(self.old["MLFLOW_TRACKING_URI"])
        mlflow.set_registry_uri(self.old["MLFLOW_REGISTRY_URI"])
        for k, v in self.old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
