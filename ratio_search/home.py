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


def dir_size(path: Path) -> int:
    """Bytes on disk below ``path`` (or of the file itself); links are not followed or counted."""
    if path.is_file() and not path.is_symlink():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            full = os.path.join(root, f)
            try:
                if not os.path.islink(full):
                    total += os.lstat(full).st_size
            except OSError:
                pass  # removed while we looked
    return total


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie)."""
    import psutil  # installed with Ray; imported here so that importing home stays cheap

    try:
        return psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # it exists, but belongs to someone else


def resolve_device(device: str = "auto") -> str:
    """``auto`` means CUDA when available, else CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
