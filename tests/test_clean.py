"""`ratio-search clean`: selective, confirmed, reports sizes."""

from __future__ import annotations

import json

import pytest

from ratio_search.clean import find_targets, remove, store_sizes
from ratio_search.errors import RatioSearchError
from ratio_search.home import Home

pytestmark = pytest.mark.unit


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


def test_cli_needs_confirmation(tmp_path, run_cli):
    home = _populate(tmp_path)
    rc, _, err = run_cli(["clean", "--home", tmp_path, "pools"])  # stdin is not a terminal
    assert rc == 2
    assert "--yes" in err and "Traceback" not in err
    assert (home.pools / "k1").exists()  # nothing removed without confirmation
    rc, stdout, err = run_cli(["clean", "--home", tmp_path, "pools", "models", "--yes", "--json"])
    assert rc == 0, err
    out = json.loads(stdout)
    assert out["freed"] == 2000
    assert not (home.pools / "k1").exists() and not (home.models / "m1").exists()
    assert (home.runs / "a").exists()
