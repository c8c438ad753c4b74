"""The readers of a run folder's ``space.yaml`` and ``config.yaml`` (what ``resume`` reads).

A missing or broken file is one :class:`SearchError` naming it and the repair, never a traceback.
Both are written by ``run`` before any trial; without them a run cannot be resumed, but its
finished trials stay readable (``status``, ``export``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import RatioSearchError, SearchError


def _repair(folder: Path) -> str:
    name = folder.name
    return (
        f"restore it from a backup, or start the search again: "
        f"`ratio-search clean runs --name {name} --yes` then `ratio-search run --name {name} ...`"
    )


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise SearchError(f"{path}: missing; {_repair(path.parent)}")
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SearchError(f"{path}: unreadable ({why}); {_repair(path.parent)}") from None


def read_run_space(folder: str | Path):
    """The run's search space (``space.yaml``), validated; SearchError naming the file."""
    from .space import parse_space

    path = Path(folder) / "space.yaml"
    doc = _read_yaml(path)
    if not isinstance(doc, dict) or not doc:
        raise SearchError(f"{path}: empty or not a mapping; {_repair(path.parent)}")
    try:
        return parse_space(doc, origin=str(path))
    except SearchError:
        raise
    except (RatioSearchError, TypeError, ValueError, AttributeError) as e:
        raise SearchError(f"{path}: {e}; {_repair(path.parent)}") from None


def read_run_config(folder: str | Path):
    """The run's resolved config (``config.yaml``), validated; SearchError naming the file."""
    from ..config import config_from_dict

    path = Path(folder) / "config.yaml"
    doc = _read_yaml(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        raise SearchError(f"{path}: no data section; {_repair(path.parent)}")
    try:
        return config_from_dict(doc)
    except (RatioSearchError, TypeError, ValueError, AttributeError) as e:
        raise SearchError(f"{path}: {e}; {_repair(path.parent)}") from None
