"""Every look at the test split, recorded in the run folder as ``test_looks.jsonl``.

One JSON line per look: when, which configurations (labels and signatures), which seeds, the
stopping settings, and the numbers it gave. ``export`` reads it first: a second export that asks
for the same configurations with the same settings shows the recorded numbers and evaluates
nothing; one that asks for other configurations is look number N, and says so. ``status`` shows
the count (:func:`look_count`). Standard library only, so any layer may count the looks.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TEST_LOOKS = "test_looks.jsonl"


def read_looks(folder: str | Path) -> list[dict[str, Any]]:
    """The recorded looks, oldest first (a torn last line, from a crash mid-write, is skipped)."""
    path = Path(folder) / TEST_LOOKS
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def look_count(folder: str | Path) -> int:
    """How many times the test split of the run in ``folder`` has been looked at."""
    return len(read_looks(folder))


def look_key(request: Mapping[str, Any]) -> str:
    """A short hash of what a look asks for (configurations, seeds plan, settings)."""
    text = json.dumps(request, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def find_look(folder: str | Path, key: str) -> tuple[int, dict[str, Any]] | None:
    """``(look number, record)`` of an earlier look with ``key``, or None."""
    for i, rec in enumerate(read_looks(folder), start=1):
        if rec.get("key") == key:
            return i, rec
    return None


def record_look(folder: str | Path, record: Mapping[str, Any]) -> int:
    """Append one look (a single line, flushed and synced); return its number."""
    path = Path(folder) / TEST_LOOKS
    n = look_count(folder) + 1
    line = json.dumps({"look": n, **record}, sort_keys=True, default=str)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    return n
