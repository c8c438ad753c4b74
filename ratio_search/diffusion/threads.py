"""How many CPU threads a fine-tune or a sampling job gives torch: the cores the job has.

``threads = 0`` (the default of ``finetune.threads`` and ``generate.threads``) means
:func:`job_cores`: the CPUs this process may run on (its affinity mask, as set by ``taskset``, a
container or a batch scheduler), capped by a cgroup v2 CPU quota (``cpu.max``) where one is set.
torch's own default counts the machine's physical cores, which oversubscribes a job given fewer.
The count changes speed only: the model hash and the pool key do not contain it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def job_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota."""
    if hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    else:  # macOS, Windows
        n = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            n = min(n, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota readable: the affinity mask decides
    return max(1, n)


def resolve_threads(threads: int) -> int:
    """``threads`` itself when > 0, else :func:`job_cores`."""
    return int(threads) if int(threads) > 0 else job_cores()


@contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """Run the block with torch's intra-op thread count at ``resolve_threads(threads)``; the
    previous count is restored afterwards (a search trial pins its own count for exact repeats)."""
    import torch

    before = torch.get_num_threads()
    n = resolve_threads(threads)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
