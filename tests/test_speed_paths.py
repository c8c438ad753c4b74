"""The speed paths : thread counts from the job's cores, and the folder listing that
the data cache's second load relies on (one scandir pass, stat results reused by the key)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ratio_search.data.cache import file_fingerprint
from ratio_search.data.imagefolder import list_images, plan_image_folder, scan_images
from ratio_search.diffusion.threads import job_cores, resolve_threads, torch_threads

pytestmark = pytest.mark.unit


def test_job_cores_is_capped_by_a_cgroup_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = tmp_path / "cpu.max"
    quota.write_text("max 100000\n")
    assert job_cores(quota) == affinity
    quota.write_text("50000 100000\n")  # half a core: still one thread
    assert job_cores(quota) == 1
    assert job_cores(tmp_path / "missing") == affinity
    assert resolve_threads(3) == 3 and resolve_threads(0) == job_cores()


def test_torch_threads_sets_and_restores():
    before = torch.get_num_threads()
    with torch_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_threads_fields_are_flags_and_no_pool_field(run_cli):
    from ratio_search.config import POOL_FIELDS, GenerateConfig, TrialConfig

    assert "threads" not in POOL_FIELDS
    # a trial's flat record (and so its pool) does not change with the sampling thread count
    assert TrialConfig(generate=GenerateConfig(threads=3)).to_flat() == TrialConfig().to_flat()
    for cmd in ("finetune", "generate"):
        rc, out, _ = run_cli([cmd, "--help"])
        assert rc == 0 and "--threads" in out


def _old_listing(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in (".png", ".jpeg")
    )


def test_scan_images_lists_like_before_and_keeps_stats(tmp_path):
    d = tmp_path / "cls"
    d.mkdir()
    for name in ("b.png", "a.JPEG", ".hidden.png", "notes.txt", "c.png"):
        (d / name).write_bytes(b"x" * len(name))
    (d / "sub.png").mkdir()  # a folder with an image-like name is not an image
    os.symlink(d / "c.png", d / "link.png")  # a link to an image is one, as Path.is_file says
    scanned = scan_images(d)
    assert [p for p, _ in scanned] == list_images(d) == _old_listing(d)
    assert [p.name for p, _ in scanned] == ["a.JPEG", "b.png", "c.png", "link.png"]
    assert all(st.st_size == p.stat().st_size for p, st in scanned)


def test_fingerprint_from_listing_stats_equals_fresh_stats(make_image_folder):
    root = make_image_folder(n_train=4, n_val=2, n_test=2)
    plan = plan_image_folder(root, None, None, 0.2, 1, 0)
    for split, files in plan.files.items():
        paths = [p for p, _ in files]
        fresh = file_fingerprint(paths, root)  # stat-ed again, relative_to for the names
        assert [fp[1:] for fp in plan.fingerprint[split]] == fresh
        assert fresh and fresh[0][0] == paths[0].relative_to(root).as_posix()
