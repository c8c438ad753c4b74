"""Finding and stopping the Ray processes a killed driver left behind, by PID.

When a search driver dies hard (SIGKILL, a crashed machine session), some of the local Ray
cluster it started outlives it: the agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``),
sometimes the raylet or trial workers. They hold CPU, memory and the run's sockets. Each run gives
Ray its own temp dir (``/tmp/rs-<hash>``, see :func:`runs.ray_temp_dir`), so its processes are
exactly those whose command line names that dir or which hold a file open under it (Ray renames
its workers' process titles to ``ray::...``, but their log files stay open). Nothing else is
ever signalled: not by name, not by process group.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from .runs import pid_alive


def _mentions(pid: int, needle: str) -> bool:
    base = Path(f"/proc/{pid}")
    try:
        if needle in (base / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
            return True
    except OSError:
        return False
    try:
        for fd in (base / "fd").iterdir():
            try:
                link = os.readlink(fd)
                if link == needle or link.startswith(needle + "/"):
                    return True
            except OSError:
                continue
    except OSError:
        pass
    return False


def find_ray_processes(temp_dir: str) -> list[int]:
    """PIDs of live processes that belong to the Ray cluster using ``temp_dir`` (not this one)."""
    needle = str(temp_dir).rstrip("/")
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me or not pid_alive(pid):
            continue
        if _mentions(pid, needle):
            found.append(pid)
    return sorted(found)


def kill_ray_processes(temp_dir: str, timeout: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL after ``timeout`` s, every process of :func:`find_ray_processes`.

    Returns the PIDs that were signalled. Ray's agents ignore SIGTERM, hence the SIGKILL.
    """
    pids = find_ray_processes(temp_dir)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.time() + timeout
    while time.time() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    deadline = time.time() + timeout
    while time.time() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.1)
    return pids
