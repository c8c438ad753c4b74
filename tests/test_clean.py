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


# ------------------------------------------------------------------ names, running runs


def _dirs(root, names):
    for n in names:
        (root / n).mkdir(parents=True)
        (root / n / "x.bin").write_bytes(b"0" * 10)


def test_run_names_match_exactly(tmp_path, run_cli):
    home = Home.resolve(tmp_path)
    _dirs(home.runs, ["rz", "rz2", "other"])
    assert [t.name for t in find_targets(home, ["runs"], ["rz"])] == ["rz"]
    with pytest.raises(RatioSearchError, match="nothing named 'r'.*exactly"):
        find_targets(home, ["runs"], ["r"])  # a prefix is not a run name
    rc, _, err = run_cli(["clean", "--home", tmp_path, "runs", "--name", "rz", "--yes"])
    assert rc == 0, err
    assert not (home.runs / "rz").exists() and (home.runs / "rz2").exists()


def test_an_empty_name_is_an_error_not_everything(tmp_path, run_cli):
    home = Home.resolve(tmp_path)
    _dirs(home.runs, ["a"])
    _dirs(home.pools, ["k1"])
    rc, _, err = run_cli(["clean", "--home", tmp_path, "runs", "pools", "--name", "", "--yes"])
    assert rc == 2 and "non-empty" in err and "Traceback" not in err
    assert (home.runs / "a").exists() and (home.pools / "k1").exists()


def test_hash_keys_by_unique_prefix_and_ambiguous_is_an_error(tmp_path):
    home = Home.resolve(tmp_path)
    _dirs(home.pools, ["ab12", "ab34", "cd56"])
    _dirs(home.models, ["ab99"])
    assert [t.name for t in find_targets(home, ["pools"], ["cd"])] == ["cd56"]
    assert [t.name for t in find_targets(home, ["pools"], ["ab12"])] == ["ab12"]
    with pytest.raises(RatioSearchError, match="ambiguous in pools: 2 entries.*ab12, ab34"):
        find_targets(home, ["pools"], ["ab"])
    # one match per store: the prefix means one pool and one model
    assert {t.kind for t in find_targets(home, ["pools", "models"], ["ab3", "ab9"])} == {
        "pools",
        "models",
    }


def _running(home, name, **info):
    folder = home.runs / name
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"name": name, **info}))
    return folder


def test_a_running_search_is_refused(tmp_path, run_cli):
    import os
    import socket

    home = Home.resolve(tmp_path)
    # this test's process is a live python: it passes for a driver
    _running(home, "live", state="running", ray={"driver_pid": os.getpid()})
    _running(home, "elsewhere", state="starting", host="not-" + socket.gethostname())
    _running(home, "crashed", state="running", ray={"driver_pid": 2**22 + 12345})
    _running(home, "done", state="finished", ray={"driver_pid": os.getpid()})
    for name, why in (("live", "its driver \\(pid"), ("elsewhere", "on host not-")):
        with pytest.raises(RatioSearchError, match=f"run {name} is still running.*{why}"):
            find_targets(home, ["runs"], [name])
    rc, _, err = run_cli(["clean", "--home", tmp_path, "runs", "--yes"])
    assert rc == 2 and "still running" in err and (home.runs / "crashed").exists()
    rc, _, err = run_cli(["clean", "--home", tmp_path, "runs", "--name", "crashed", "done", "-y"])
    assert rc == 0, err
    assert not (home.runs / "crashed").exists() and not (home.runs / "done").exists()


def test_a_run_whose_driver_lock_is_held_is_refused(tmp_path):
    from filelock import FileLock

    home = Home.resolve(tmp_path)
    folder = _running(home, "locked", state="interrupted")
    with FileLock(str(folder / "driver.lock")):
        with pytest.raises(RatioSearchError, match="holds .*driver.lock"):
            find_targets(home, ["runs"], ["locked"])
    assert [t.name for t in find_targets(home, ["runs"], ["locked"])] == ["locked"]


# ------------------------------------------------------------------ stale temp folders


def test_stale_temp_folders_go_only_with_their_lock_free(tmp_path, run_cli):
    from filelock import FileLock

    home = Home.resolve(tmp_path)
    _dirs(home.pools, ["k1", ".tmp-k1-999999-ab", ".tmp-k2-1-cd", ".old-k3-1-ef"])
    _dirs(home.models, ["m1", ".tmp-m1", ".tmp-m2"])
    _dirs(home.cache, [".tmp-data-c1.xyz"])
    held = [FileLock(str(home.pools / "k2.lock")), FileLock(str(home.models / ".m2.lock"))]
    for lock in held:
        lock.acquire()
    try:
        stale = {(t.kind, t.name) for t in find_targets(home, [], stale=True)}
        assert stale == {("pools", ".tmp-k1-999999-ab"), ("pools", ".old-k3-1-ef"),
                         ("models", ".tmp-m1"), ("cache", ".tmp-data-c1.xyz")}  # fmt: skip
        assert {t.name for t in find_targets(home, ["models"], stale=True)} == {".tmp-m1"}
        with pytest.raises(RatioSearchError, match="no --name"):
            find_targets(home, ["pools"], ["k1"], stale=True)
        rc, out, err = run_cli(["clean", "--home", tmp_path, "--stale", "--yes", "--json"])
        assert rc == 0, err
        assert len(json.loads(out)["removed"]) == 4
    finally:
        for lock in held:
            lock.release()
    left = {
        p.name for d in (home.pools, home.models, home.cache) for p in d.iterdir() if p.is_dir()
    }
    assert left == {"k1", ".tmp-k2-1-cd", "m1", ".tmp-m2"}  # complete entries are not stale
