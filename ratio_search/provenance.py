"""What data a generator was fine-tuned on, checked against the data a search runs on.

An explicit ``--model`` fine-tuned on other images than the search's training split would make
the search measure another generator than the one the question is about (or one that has seen
the validation or test images). :func:`check_model_data` refuses it in one line unless the user
says ``--allow-other-data``, which is then recorded in run.json. Standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import ModelError


def check_model_data(
    meta: Mapping[str, Any], data_key: str, path: str, allow_other_data: bool = False
) -> str | None:
    """None when the model at ``path`` was fine-tuned on ``data_key``; else a ModelError, or the
    note to record when ``allow_other_data`` is set."""
    trained_on = meta.get("data_key")
    if trained_on == data_key:
        return None
    what = f"data {trained_on}" if trained_on else "unrecorded data"
    if not allow_other_data:
        raise ModelError(
            f"model {path} was fine-tuned on {what}, not on this search's data {data_key}; "
            "fine-tune on this data (ratio-search finetune), or pass --allow-other-data to use it"
        )
    return f"--allow-other-data: model {path} was fine-tuned on {what}, the search's data is {data_key}"
