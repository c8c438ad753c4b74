"""Small helpers every room needs, written once: atomic writes, JSON-safe values, versions, time.

Nothing here imports anything of ours but ``errors``; every module may import it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

# The packages whose versions decide whether a result can be repeated bit for bit.
PACKAGES = (
    "ratio-search",
    "torch",
    "numpy",
    "pillow",
    "diffusers",
    "transformers",
    "safetensors",
    "scikit-learn",
    "optuna",
    "ray",
    "mlflow",
)

# One time-stamp format for every file we write (UTC, second resolution, ISO 8601).
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utc_now() -> str:
    """The current UTC time as ``2026-12-01T09:45:00Z`` (the one format of our files)."""
    return time.strftime(TIME_FORMAT, time.gmtime())


def is_number(v: Any) -> bool:
    """True for a finite int or float (not a bool): a value that can be plotted or averaged."""
    if hasattr(v, "item") and not isinstance(v, int | float):  # numpy scalar
        with contextlib.suppress(Exception):
            v = v.item()
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def json_safe(obj: Any) -> Any:
    """Strict-JSON and YAML-safe: NaN/inf become None, numpy scalars Python, tuples lists.

    An interval over one run has no bounds; ``null`` says so in every file and in ``--json``.
    """
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, int | float | str | bool):
        with contextlib.suppress(Exception):
            obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write_with(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (temp file + fsync + rename)."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(
    path: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = False
) -> Path:
    """Write ``obj`` as strict JSON (NaN/inf as null) atomically."""
    text = json.dumps(json_safe(obj), indent=indent, sort_keys=sort_keys, default=str) + "\n"
    return atomic_write_text(path, text)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success rename it to ``final``.

    On an exception the temporary folder is removed and ``final`` is untouched. With ``replace``
    an existing ``final`` is swapped out (moved aside, then deleted) instead of raising.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}.", dir=final.parent))
    try:
        yield tmp
        old = None
        if final.exists() and replace:
            old = final.with_name(f".old-{final.name}.{os.getpid()}")
            os.rename(final, old)
        os.rename(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (None where missing) and Python's."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; raise ``ValueError``/``OSError`` for the caller to name with a repair."""
    return json.loads(Path(path).read_text())
