"""Pools of generated images: key, cache hits, locking, atomicity, histogram matching, listing."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ratio_search import pools as pools_mod
from ratio_search.config import GenerateConfig
from ratio_search.errors import ConfigError, PoolError
from ratio_search.home import Home
from ratio_search.pools import (
    build_one,
    build_space_pools,
    get_pool,
    histogram_match,
    list_pools,
    load_pool,
    pool_key,
    pool_store_size,
    update_manifest,
)

REPO = Path(__file__).resolve().parents[1]

# The fake generator lives in a module file of its own so that subprocesses can import it too
# (conftest's FakeGenerator cannot be imported there, and this one can be slowed and counted).
FAKE_MODEL_SRC = textwrap.dedent(
    '''
    import os, time
    import numpy as np

    class FakeModel:
        """Same interface as diffusion's GenerativeModel; image i depends only on (seed, i, ...)."""

        def __init__(self, marker=None, delay=0.0, image_size=8, channels=1, model_hash="fake0001"):
            self.model_hash = model_hash
            self.image_size = image_size
            self.channels = channels
            self.class_names = ["CNV", "NORMAL"]
            self.path = "/models/fake"
            self.marker = marker
            self.delay = delay

        def sample(self, n, class_index, guidance, steps, scheduler, seed, batch_size, device,
                   progress=False):
            if self.marker:  # one line per generation, so tests can count model calls
                with open(self.marker, "a") as f:
                    f.write(f"{os.getpid()} {n}\\n")
            time.sleep(self.delay)
            s = (self.channels, self.image_size, self.image_size)
            out = np.empty((n, *s), dtype=np.uint8)
            for i in range(n):
                rng = np.random.default_rng([seed, i, int(guidance * 1000), steps, class_index])
                # bright and flat, like the tiny generator's samples of the phantom data
                out[i] = np.clip(rng.normal(150, 12, size=s), 0, 255).astype(np.uint8)
            return out
    '''
)

WORKER_SRC = textwrap.dedent(
    """
    import hashlib, json, os, sys, time
    from ratio_search.config import GenerateConfig
    from ratio_search.home import Home
    from ratio_search.pools import get_pool
    from fakegen import FakeModel

    home, marker, delay, n = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    if len(sys.argv) > 5:  # a start barrier: say "ready", wait for "go"
        sync = sys.argv[5]
        open(os.path.join(sync, f"ready-{os.getpid()}"), "w").close()
        while not os.path.exists(os.path.join(sync, "go")):
            time.sleep(0.01)
    pool = get_pool(Home.resolve(home), FakeModel(marker=marker, delay=delay),
                    GenerateConfig(guidance=2.0, steps=2, device="cpu"), n, progress=False)
    digest = hashlib.sha256(bytes(pool.images)).hexdigest()
    print(json.dumps({"key": pool.key, "sha": digest, "generated": pool.generated}))
    """
)


@pytest.fixture()
def fake(tmp_path):
    """(FakeModel class, dir holding fakegen.py and worker.py)."""
    d = tmp_path / "fakemods"
    d.mkdir()
    (d / "fakegen.py").write_text(FAKE_MODEL_SRC)
    (d / "worker.py").write_text(WORKER_SRC)
    spec = importlib.util.spec_from_file_location("fakegen", d / "fakegen.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.FakeModel, d


@pytest.fixture()
def home(tiny_home):
    """conftest's ``tiny_home`` under this file's short name."""
    return tiny_home


def _gen(**kw):
    return GenerateConfig(**{"guidance": 2.0, "steps": 2, "device": "cpu", **kw})


def _generations(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def _worker(fake_dir, home, marker, delay=0.0, n=8, sync=None):
    env = {**os.environ, "PYTHONPATH": f"{fake_dir}{os.pathsep}{REPO}"}
    cmd = [
        sys.executable,
        str(fake_dir / "worker.py"),
        str(home.root),
        str(marker),
        str(delay),
        str(n),
        *([str(sync)] if sync else []),
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ------------------------------------------------------------------------------------- keys


@pytest.mark.unit
def test_pool_key_is_canonical_and_sensitive():
    k = pool_key("abc", 2, 25, "ddim", 32, 0, "none")
    assert k == pool_key("abc", 2.0, 25, "ddim", 32, 0, "none")
    assert len(k) == 16 and int(k, 16) >= 0
    others = {
        pool_key("abd", 2, 25, "ddim", 32, 0, "none"),
        pool_key("abc", 2.5, 25, "ddim", 32, 0, "none"),
        pool_key("abc", 2, 26, "ddim", 32, 0, "none"),
        pool_key("abc", 2, 25, "dpm-solver++", 32, 0, "none"),
        pool_key("abc", 2, 25, "ddim", 64, 0, "none"),
        pool_key("abc", 2, 25, "ddim", 32, 1, "none"),
        pool_key("abc", 2, 25, "ddim", 32, 0, "histogram-match", reference_hash="r1"),
        pool_key("abc", 2, 25, "ddim", 32, 0, "none", class_index=1),
    }
    assert k not in others and len(others) == 8
    # the reference only matters when it is used
    assert pool_key("abc", 2, 25, "ddim", 32, 0, "none", reference_hash="r1") == k
    assert pool_key(
        "abc", 2, 25, "ddim", 32, 0, "histogram-match", reference_hash="r1"
    ) != pool_key("abc", 2, 25, "ddim", 32, 0, "histogram-match", reference_hash="r2")


# ---------------------------------------------------------------------------- cache behaviour


@pytest.mark.unit
def test_get_pool_builds_then_hits_without_calling_the_model(home, fake, tmp_path):
    FakeModel, _ = fake
    marker = tmp_path / "marker"
    model = FakeModel(marker=str(marker))
    p1 = get_pool(home, model, _gen(), 8, progress=False)
    assert p1.generated and _generations(marker) == 1
    assert p1.images.dtype == np.uint8 and p1.images.shape == (8, 1, 8, 8)
    assert isinstance(p1.images, np.memmap)
    assert p1.path == home.pools / p1.key
    m = json.loads((p1.path / "manifest.json").read_text())
    assert m["n"] == 8 and m["model_hash"] == "fake0001" and m["class_name"] == "CNV"
    assert m["guidance"] == 2.0 and m["steps"] == 2 and m["scheduler"] == "ddim"
    assert m["postprocess"] == "none" and m["quality"] == {} and m["seconds"] >= 0
    assert "numpy" in m["versions"] and m["created"]

    p2 = get_pool(home, model, _gen(), 8, progress=False)
    assert not p2.generated and _generations(marker) == 1
    assert np.array_equal(p1.images, p2.images)

    # fewer images than the pool holds: served from it, exactly the first n
    p3 = get_pool(home, model, _gen(), 5, progress=False)
    assert _generations(marker) == 1 and p3.n == 5
    assert np.array_equal(p3.images, p1.images[:5])


@pytest.mark.unit
def test_bigger_pool_regenerates_and_starts_with_same_bytes(home, fake, tmp_path):
    FakeModel, _ = fake
    marker = tmp_path / "marker"
    model = FakeModel(marker=str(marker))
    small = np.array(get_pool(home, model, _gen(), 4, progress=False).images)
    big = get_pool(home, model, _gen(), 8, progress=False)
    assert big.generated and _generations(marker) == 2 and big.n == 8
    assert np.array_equal(big.images[:4], small)
    assert big.manifest["n"] == 8
    # the old, smaller pool was replaced, not left beside it
    assert [r["n"] for r in list_pools(home)] == [8]
    assert not [p for p in home.pools.iterdir() if p.name.startswith(".")]


@pytest.mark.unit
def test_same_key_same_bytes_in_two_homes(fake, tmp_path):
    FakeModel, _ = fake
    a = get_pool(Home.resolve(tmp_path / "a"), FakeModel(), _gen(), 6, progress=False)
    b = get_pool(Home.resolve(tmp_path / "b"), FakeModel(), _gen(), 6, progress=False)
    assert a.key == b.key
    assert (a.path / "images.npy").read_bytes() == (b.path / "images.npy").read_bytes()
    c = get_pool(Home.resolve(tmp_path / "a"), FakeModel(), _gen(guidance=3.0), 6, progress=False)
    assert c.key != a.key and not np.array_equal(c.images, a.images)


@pytest.mark.edges
def test_bad_generate_settings_are_config_errors(home, fake):
    FakeModel, _ = fake
    with pytest.raises(ConfigError, match="scheduler"):
        get_pool(home, FakeModel(), _gen(scheduler="euler"), 4)
    with pytest.raises(ConfigError, match="guidance"):
        get_pool(home, FakeModel(), _gen(guidance=-1.0), 4)
    with pytest.raises(ConfigError, match="steps"):
        get_pool(home, FakeModel(), _gen(steps=0), 4)
    with pytest.raises(PoolError, match="reference"):
        get_pool(home, FakeModel(), _gen(postprocess="histogram-match"), 4)
    with pytest.raises(PoolError, match="class index 5"):
        get_pool(home, FakeModel(), _gen(), 4, synthetic_class_index=5)


@pytest.mark.edges
def test_load_pool_missing_incomplete_and_too_small(home, fake):
    FakeModel, _ = fake
    with pytest.raises(PoolError, match="not found"):
        load_pool(home, "0123456789abcdef")
    pool = get_pool(home, FakeModel(), _gen(), 4, progress=False)
    assert load_pool(home, pool.key).n == 4
    assert load_pool(home, str(pool.path), n=3).n == 3
    with pytest.raises(PoolError, match="fewer than the 9"):
        load_pool(home, pool.key, n=9)
    # a manifest that disagrees with images.npy makes the pool incomplete, for readers and builders
    m = json.loads((pool.path / "manifest.json").read_text())
    (pool.path / "manifest.json").write_text(json.dumps({**m, "n": 99}))
    with pytest.raises(PoolError, match="incomplete"):
        load_pool(home, pool.key)
    assert list_pools(home) == []
    assert get_pool(home, FakeModel(), _gen(), 4, progress=False).generated


@pytest.mark.unit
def test_no_space_left_removes_temp_dir(home, fake, monkeypatch):
    FakeModel, _ = fake

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(PoolError, match="no space left on device.*nothing was kept"):
        get_pool(home, FakeModel(), _gen(), 4, progress=False)
    assert [p.name for p in home.pools.iterdir() if p.is_dir()] == []


@pytest.mark.unit
def test_update_manifest_keeps_pool_complete(home, fake):
    FakeModel, _ = fake
    pool = get_pool(home, FakeModel(), _gen(), 4, progress=False)
    update_manifest(home, pool.key, {"quality": {"fd": 1.5}, "n": 1000})
    again = load_pool(home, pool.key)
    assert again.manifest["quality"] == {"fd": 1.5} and again.manifest["n"] == 4


# ------------------------------------------------------------------------------ concurrency


@pytest.mark.e2e
def test_two_processes_generate_once_and_see_same_bytes(home, fake, tmp_path):
    _, fake_dir = fake
    marker = tmp_path / "marker"
    sync = tmp_path / "sync"
    sync.mkdir()
    procs = [_worker(fake_dir, home, marker, delay=1.0, sync=sync) for _ in range(2)]
    deadline = time.time() + 90
    while len(list(sync.glob("ready-*"))) < 2 and time.time() < deadline:
        time.sleep(0.02)
    (sync / "go").touch()  # both are imported and waiting: they ask for the pool at once
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert _generations(marker) == 1
    assert outs[0]["sha"] == outs[1]["sha"] and outs[0]["key"] == outs[1]["key"]
    assert sorted(o["generated"] for o in outs) == [False, True]


@pytest.mark.e2e
def test_killed_builder_leaves_no_complete_pool_and_next_call_builds(home, fake, tmp_path):
    FakeModel, fake_dir = fake
    marker = tmp_path / "marker"
    p = _worker(fake_dir, home, marker, delay=60.0)
    deadline = time.time() + 60
    while _generations(marker) == 0 and time.time() < deadline:
        time.sleep(0.05)
    assert _generations(marker) == 1, p.stderr.read() if p.poll() is not None else "no start"
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)

    leftovers = [d for d in home.pools.iterdir() if d.is_dir()]
    assert [d.name.startswith(".tmp-") for d in leftovers] == [True]
    assert list_pools(home) == []
    key = leftovers[0].name.split("-")[1]
    with pytest.raises(PoolError):
        load_pool(home, key)

    pool = get_pool(home, FakeModel(marker=str(marker)), _gen(), 8, progress=False)
    assert pool.key == key and pool.generated and _generations(marker) == 2
    assert not any(d.name.startswith(".tmp-") for d in home.pools.iterdir())  # stale temp cleaned
    expected = FakeModel().sample(8, 0, 2.0, 2, "ddim", 0, 64, "cpu")
    assert np.array_equal(pool.images, expected)


# ---------------------------------------------------------------------------- postprocessing


@pytest.mark.unit
def test_histogram_match_moves_mean_and_std_to_the_reference(home, fake):
    FakeModel, _ = fake
    rng = np.random.default_rng(0)
    reference = np.clip(rng.normal(60, 25, size=(20, 1, 8, 8)), 0, 255).astype(np.uint8)
    raw = get_pool(home, FakeModel(), _gen(), 16, progress=False).images
    assert abs(raw.mean() - reference.mean()) > 50  # the gap the matching must close

    matched = get_pool(
        home, FakeModel(), _gen(postprocess="histogram-match"), 16, reference=reference
    )
    assert matched.manifest["postprocess"] == "histogram-match"
    assert matched.manifest["reference"]["n"] == 20
    assert matched.key != pool_key("fake0001", 2.0, 2, "ddim", 8, 0, "none")
    assert abs(matched.images.mean() - reference.mean()) < 2.0
    assert abs(matched.images.std() - reference.std()) < 2.0
    for i in range(len(raw)):  # per image too, and monotone: pixel order is kept
        assert abs(matched.images[i].mean() - reference.mean()) < 6.0
        a, b = raw[i].ravel().astype(int), matched.images[i].ravel().astype(int)
        order = np.argsort(a, kind="stable")
        assert np.all(np.diff(b[order]) >= 0)

    # a different reference is a different pool
    other = get_pool(
        home, FakeModel(), _gen(postprocess="histogram-match"), 16, reference=reference // 2
    )
    assert other.key != matched.key


@pytest.mark.unit
def test_histogram_match_rgb_per_channel():
    rng = np.random.default_rng(1)
    ref = np.stack(
        [
            rng.integers(0, 80, (10, 6, 6)),
            rng.integers(150, 250, (10, 6, 6)),
            rng.integers(90, 110, (10, 6, 6)),
        ],
        axis=1,
    ).astype(np.uint8)
    gen = rng.integers(0, 256, (4, 3, 6, 6)).astype(np.uint8)
    out = histogram_match(gen, ref)
    for c in range(3):
        assert abs(out[:, c].mean() - ref[:, c].mean()) < 6


# ------------------------------------------------------------------------- listing, grid


@pytest.mark.unit
def test_list_pools_and_store_size(home, fake):
    FakeModel, _ = fake
    assert list_pools(home) == [] and pool_store_size(home) == 0
    a = get_pool(home, FakeModel(), _gen(), 4, progress=False)
    b = get_pool(home, FakeModel(), _gen(steps=3, scheduler="dpm-solver++"), 6, progress=False)
    rows = {r["key"]: r for r in list_pools(home)}
    assert set(rows) == {a.key, b.key}
    assert rows[b.key]["n"] == 6 and rows[b.key]["steps"] == 3
    assert rows[b.key]["scheduler"] == "dpm-solver++" and rows[a.key]["model_hash"] == "fake0001"
    npy = (a.path / "images.npy").stat().st_size
    assert rows[a.key]["size_bytes"] >= npy > 4 * 64
    assert pool_store_size(home) >= rows[a.key]["size_bytes"] + rows[b.key]["size_bytes"]


@pytest.mark.unit
def test_list_pools_reads_the_old_created_at_stamp(home, fake):
    """Pools written before the one time-stamp format recorded ``created_at``: still listed."""
    FakeModel, _ = fake
    pool = get_pool(home, FakeModel(), _gen(), 4, progress=False)
    m = json.loads((pool.path / "manifest.json").read_text())
    m["created_at"] = "2026-01-02T03:04:05+00:00"
    del m["created"]
    (pool.path / "manifest.json").write_text(json.dumps(m))
    assert [r["created"] for r in list_pools(home)] == ["2026-01-02T03:04:05+00:00"]


@pytest.mark.unit
def test_build_space_pools_builds_missing_ones_only(home, fake, tmp_path):
    FakeModel, _ = fake
    marker = tmp_path / "marker"
    model = FakeModel(marker=str(marker))
    get_pool(home, model, _gen(guidance=1.0, steps=2), 4, progress=False)
    grid = [
        {"guidance": 1.0, "steps": 2},
        {"guidance": 4.0, "steps": 2},
        {"guidance": 1.0, "steps": 3},
        {"guidance": 4.0, "steps": 2},  # duplicate: built once
    ]
    results = build_space_pools(home, model, grid, 4, base=_gen(), progress=False)
    assert [r["generated"] for r in results] == [False, True, True]
    assert _generations(marker) == 3 and len(list_pools(home)) == 3

    class Space:  # the space engineer's object: anything with pool_grid()
        def pool_grid(self):
            return [{"guidance": 4.0, "steps": 2, "postprocess": "none"}]

    assert build_space_pools(home, model, Space(), 4, base=_gen())[0]["generated"] is False
    with pytest.raises(ConfigError, match="unknown key"):
        build_space_pools(home, model, [{"guidence": 1.0}], 4)


@pytest.mark.unit
def test_build_one_takes_plain_values_and_pickles(home, fake):
    import pickle

    FakeModel, _ = fake
    gen = dataclasses.asdict(_gen(guidance=1.5))
    out = build_one(str(home.root), FakeModel(), gen, 4)
    assert out["generated"] and out["n"] == 4 and out["guidance"] == 1.5
    assert pickle.loads(pickle.dumps(out)) == out
    pickle.dumps(build_one)  # a plain module-level function: a Ray task can wrap it


@pytest.mark.unit
def test_import_folder_pool(home, tmp_path):
    from PIL import Image

    folder = tmp_path / "other_gen"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(folder / f"{i}.png")
    pool = pools_mod.import_folder_pool(home, folder, 8, 1, name="sdxl")
    assert pool.n == 3 and pool.images.shape == (3, 1, 8, 8) and pool.images.dtype == np.uint8
    assert pool.manifest["source"] == "folder" and pool.manifest["name"] == "sdxl"
    assert load_pool(home, "sdxl").key == pool.key
    again = pools_mod.import_folder_pool(home, folder, 8, 1)
    assert again.key == pool.key and not again.generated
    assert pools_mod.import_folder_pool(home, folder, 16, 1).key != pool.key
    Image.fromarray(np.zeros((12, 12), dtype=np.uint8)).save(folder / "3.png")
    changed = pools_mod.import_folder_pool(home, folder, 8, 1)
    assert changed.key != pool.key and changed.n == 4
    with pytest.raises(PoolError, match="not found"):
        pools_mod.import_folder_pool(home, tmp_path / "nope", 8, 1)


@pytest.mark.unit
def test_pool_bytes_hash_stable(home, fake):
    """Same key, same bytes, across a rebuild from scratch."""
    FakeModel, _ = fake
    a = get_pool(home, FakeModel(), _gen(), 5, progress=False)
    digest = hashlib.sha256((a.path / "images.npy").read_bytes()).hexdigest()
    import shutil

    shutil.rmtree(a.path)
    b = get_pool(home, FakeModel(), _gen(), 5, progress=False)
    assert (
        b.generated and hashlib.sha256((b.path / "images.npy").read_bytes()).hexdigest() == digest
    )


# ------------------------------------------------------------------------------------ CLI


@pytest.mark.edges
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--guidance", "-1"], "generate.guidance"),
        (["--steps", "0"], "generate.steps"),
        (["--n", "0"], "generate.n"),
        (["--scheduler", "euler"], "--scheduler"),
        (["--postprocess", "sharpen"], "--postprocess"),
    ],
)
def test_cli_generate_bad_input_is_one_line_exit_2(home, run_cli, flags, message):
    rc, out, err = run_cli(["generate", "--home", str(home.root), *flags])
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.unit
def test_cli_pools_empty_store(home, run_cli):
    rc, out, _ = run_cli(["pools", "--home", str(home.root), "--json"])
    assert rc == 0 and json.loads(out) == {"pools": [], "total_bytes": 0, "path": str(home.pools)}


@pytest.fixture()
def tiny_model(tmp_path, make_image_folder, one_thread):
    """A real tiny diffusion model (a ~10k-parameter UNet, 2 training steps) and its data."""
    from ratio_search.config import DataConfig, FinetuneConfig
    from ratio_search.data import load_dataset
    from ratio_search.diffusion import finetune
    from ratio_search.diffusion.tiny import TEST_UNET

    home = Home.resolve(tmp_path / "home")
    root = make_image_folder(size=16)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"data:\n  path: {root}\n  source: imagefolder\n  image_size: 16\n  min_val_per_class: 0\n"
    )
    data_cfg = DataConfig(source="imagefolder", path=str(root), image_size=16, min_val_per_class=0)
    data = load_dataset(data_cfg, home)
    ft = FinetuneConfig(from_scratch=True, max_steps=2, batch_size=4, device="cpu")
    info = finetune(data, ft, home, progress=False, unet_config=TEST_UNET)
    return home, info, data, cfg


@pytest.mark.e2e
def test_real_tiny_model_through_cli_and_get_pool(tiny_model, run_cli):
    """The one test on a real generator: the CLI builds a histogram-matched pool, caches it, lists it."""
    from ratio_search.diffusion import load_model
    from ratio_search.pools import class_reference, model_class_index

    home, info, data, cfg = tiny_model
    argv = ["generate", "--home", str(home.root), "--config", str(cfg), "--model", "latest",
            "--guidance", "2", "--steps", "2", "--n", "4", "--device", "cpu",
            "--postprocess", "histogram-match", "--json"]  # fmt: skip
    rc, out, err = run_cli(argv)
    assert rc == 0, err
    res = json.loads(out)
    assert res["generated"] == 1 and res["pools"][0]["n"] == 4
    key = res["pools"][0]["key"]
    pool = load_pool(home, key)
    assert pool.images.shape == (4, 1, 16, 16) and pool.manifest["model_hash"] == info.hash
    assert pool.manifest["class_name"] == data.class_names[data.synthetic_label]

    rc, out, _ = run_cli(argv)  # second time: a cache hit, same pool
    assert rc == 0 and json.loads(out)["cached"] == 1 and json.loads(out)["pools"][0]["key"] == key

    # the library call a trial makes finds the same pool (same reference, same class)
    model = load_model(info.path, home)
    gen = _gen(postprocess="histogram-match")
    ref = class_reference(data)
    hit = get_pool(home, model, gen, 4, ref, model_class_index(model, data), progress=False)
    assert hit.key == key and not hit.generated

    # image i depends only on (seed, i): a bigger pool starts with the smaller one's bytes
    small = np.array(get_pool(home, model, _gen(), 3, progress=False).images)
    big = get_pool(home, model, _gen(), 6, progress=False)
    assert big.generated and np.array_equal(big.images[:3], small)

    rc, out, _ = run_cli(["pools", "--home", str(home.root), "--json"])
    listed = json.loads(out)
    assert {p["key"] for p in listed["pools"]} == {key, big.key}
    assert listed["total_bytes"] >= sum(p["size_bytes"] for p in listed["pools"]) > 0
    rc, out, _ = run_cli(["pools", "--home", str(home.root)])
    assert rc == 0 and key in out and "histogram-match" in out and "2 pool(s)" in out

    rc, _, err = run_cli(["generate", "--home", str(home.root), "--config", str(cfg),
                       "--model", str(home.root / "no-such-model")])  # fmt: skip
    assert rc == 2 and "no-such-model" in err and len(err.strip().splitlines()) == 1
