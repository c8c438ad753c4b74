"""A builder's temp folder is stale when its builder is gone (its lock can be
taken), never because of its age: a pool build of many hours is never deleted under its builder."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from filelock import FileLock

from ratio_search.home import Home
from ratio_search.pools import store

pytestmark = pytest.mark.unit

DAY = 24 * 3600


def _old(path):
    t = time.time() - DAY  # older than the 6 hours that used to count as abandoned
    os.utime(path, (t, t))


def test_stale_means_lock_free_never_old(tmp_path):
    pools = tmp_path / "pools"
    mine = pools / f".tmp-aaaa-{os.getpid()}-01"  # the caller holds aaaa's lock: abandoned
    busy_old = pools / ".tmp-bbbb-1-02"  # a day old, but its builder holds bbbb's lock
    gone_fresh = pools / f".tmp-cccc-{os.getpid()}-03"  # fresh, our own pid, but nobody's lock
    gone_old = pools / ".old-dddd-1-04"
    for d in (mine, busy_old, gone_fresh, gone_old):
        d.mkdir(parents=True)
    _old(busy_old)
    _old(gone_old)
    with FileLock(str(pools / "bbbb.lock")):
        removed = set(store._clean_stale(pools, "aaaa"))
    assert removed == {mine, gone_fresh, gone_old}
    assert busy_old.is_dir()


def test_lock_is_held_and_try_lock(tmp_path):
    path = tmp_path / "k.lock"
    assert store.lock_is_held(path) is False and not path.exists()  # checking makes no lock file
    with FileLock(str(path)):
        assert store.lock_is_held(path) is True
        with store.try_lock(path) as free:
            assert free is False
    with store.try_lock(path) as free:
        assert free is True and store.lock_is_held(path) is True


def test_a_build_keeps_a_long_running_builders_temp_folder(tmp_path):
    home = Home(tmp_path)
    other = home.pools / ".tmp-bbbb-1-aa"
    other.mkdir(parents=True)
    _old(other)
    images = np.zeros((2, 1, 4, 4), np.uint8)

    def build():
        return images, store.new_manifest("aaaa", "test", 2)

    with FileLock(str(home.pools / "bbbb.lock")):  # bbbb's builder is still at work
        pool = store.build_pool(home, "aaaa", build)
    assert pool.generated and pool.n == 2 and other.is_dir()
    # once bbbb's builder is gone, the next build of any key removes its leftover
    store.build_pool(home, "eeee", lambda: (images, store.new_manifest("eeee", "test", 2)))
    assert not other.exists()
