"""Where everything a command makes lives: one home directory (cwd, --home or RATIO_SEARCH_HOME)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Home:
    """The layout of a ratio-search home directory."""

    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike | None = None) -> Home:
        """``home`` if given, else ``$RATIO_SEARCH_HOME``, else the current directory."""
        root = home or os.environ.get("RATIO_SEARCH_HOME") or os.getcwd()
        return cls(Path(root).expanduser().resolve())

    @property
    def mlruns(self) -> Path:
        return self.root / "mlruns"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def pools(self) -> Path:
        return self.root / "pools"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def tracking_uri(self) -> str:
        """The default MLflow store: sqlite inside mlruns/ (MLflow 3 refuses the plain file store)."""
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.mlruns / 'mlflow.db'}"


def resolve_device(device: str = "auto") -> str:
    """``auto`` means CUDA when available, else CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
