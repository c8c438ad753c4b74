"""Finding and stopping the Ray processes a killed driver left behind, by PID (with psutil).

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
import time

import psutil

# Readable, not a zombie: a process we could still signal.
_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except _GONE:
        return False


def _mentions(p: psutil.Process, needle: str) -> bool:
    """Whether ``p``'s command line names ``needle`` or it holds a file open under it."""
    try:
        if needle in " ".join(p.cmdline()):
            return True
    except (psutil.Error, OSError):
        return False
    try:
        return any(f.path == needle or f.path.startswith(needle + "/") for f in p.open_files())
    except (psutil.Error, OSError):
        return False


def find_ray_processes(temp_dir: str) -> list[int]:
    """PIDs of live processes that belong to the Ray cluster using ``temp_dir`` (not this one)."""
    needle = str(temp_dir).rstrip("/")
    me = os.getpid()
    found = [
        p.pid for p in psutil.process_iter() if p.pid != me and _alive(p) and _mentions(p, needle)
    ]
    return sorted(found)


def _signal_and_wait(procs: list[psutil.Process], kill: bool, timeout: float) -> list:
    """Send SIGTERM (or SIGKILL) to ``procs``; return those still alive after ``timeout`` s.

    Polled rather than ``psutil.wait_procs``: that reaps our own children, and the caller (a test
    or a supervisor) may still want their exit status.
    """
    for p in procs:
        try:
            p.kill() if kill else p.terminate()
        except (psutil.Error, OSError):
            pass
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if _alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _alive(p)]
    return alive


def kill_ray_processes(temp_dir: str, timeout: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL after ``timeout`` s, every process of :func:`find_ray_processes`.

    Returns the PIDs that were signalled. Ray's agents ignore SIGTERM, hence the SIGKILL.
    """
    pids = find_ray_processes(temp_dir)
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            continue
    left = _signal_and_wait(procs, kill=False, timeout=timeout)
    if left:
        _signal_and_wait(left, kill=True, timeout=timeout)
    return pids


def is_driver(pid: int) -> bool:
    """Whether ``pid`` looks like a ratio-search / python driver (not a recycled pid)."""
    try:
        cmd = " ".join(psutil.Process(pid).cmdline())
    except (psutil.Error, OSError):
        return False
    return "python" in cmd or "ratio-search" in cmd or "ratio_search" in cmd
