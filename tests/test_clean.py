"""`ratio-search clean`: selective, confirmed, reports sizes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ratio_search.clean import find_targets, remove, store_sizes
from ratio_search.errors import RatioSearchError
from ratio_search.home import Home


def _populate(root):
    home = Home.resolve(root)
    for d, names in {"runs": ["a", "b"], "pools": ["k1"], "models": ["m1"]}.items():
        for n in names:
            (getattr(home, d) / n).mkdir(parents=True)
            (getattr(home, d) / n / "x.bin").write_bytes(b"0" * 1000)
    (home.pools / "k1.lock").write_text("")
    return home


def test_sizes_and_selective_removal(tmp_path):
    home = _populate(tmp_path)
    assert store_sizes(home) == {
        "runs": 2000,
        "pools": 1000,
        "models": 1000,
        "cache": 0,
        "data": 0,
        "mlruns": 0,
    }
    targets = find_targets(home, ["runs"], ["a"])
    assert [t.name for t in targets] == ["a"]
    assert remove(targets) == 1000
    assert not (home.runs / "a").exists() and (home.runs / "b").exists()
    assert (home.pools / "k1").exists()


def test_unknown_store_and_name(tmp_path):
    home = _populate(tmp_path)
    with pytest.raises(RatioSearchError, match="unknown store"):
        find_targets(home, ["everything"])
    with pytest.raises(RatioSearchError, match="nothing named"):
        find_targets(home, ["runs"], ["zzz"])


def _cli(*args, home, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "ratio_search.cli", "clean", "--home", str(home), *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )


def test_cli_needs_confirmation(tmp_path):
    home = _populate(tmp_path)
    r = _cli("pools", home=tmp_path, stdin="")
    assert r.returncode == 2
    assert "--yes" in r.stderr and "Traceback" not in r.stderr
    assert (home.pools / "k1").exists()  # nothing removed without confirmation
    r = _cli("pools", "models", "--yes", "--json", home=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["freed"] == 2000
    assert not (home.pools / "k1").exists() and not (home.models / "m1").exists()
    assert (home.runs / "a").exists()
