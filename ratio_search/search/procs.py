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
import signal
import threading
import time
from typing import Any

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


# Fault injection for the tests and benchmarks/bench_faults.py: a driver started with
# RATIO_SEARCH_TEST_KILL_AT=<point> SIGKILLs itself when it reaches that point: the start of
# a phase (data, model, tracking, pools, trials), the 2nd fine-tune step (finetune), the first
# pool built (pool), the first trial started (trial) or finished (between). Unset (always, outside those tests), nothing happens.
# ``<point>:SIGINT`` sends SIGINT instead, once (what Ctrl-C sends, at a known moment).
KILL_AT_ENV = "RATIO_SEARCH_TEST_KILL_AT"
_signalled: set[str] = set()


def kill_point(point: str) -> None:
    """SIGKILL this process if ``$RATIO_SEARCH_TEST_KILL_AT`` names ``point`` (or send the signal
    it names after a colon, the first time only)."""
    name, _, sig = os.environ.get(KILL_AT_ENV, "").partition(":")
    if name != point or point in _signalled:
        return
    if sig:
        _signalled.add(point)
    os.kill(os.getpid(), getattr(signal, sig or "SIGKILL"))


# ------------------------------------------------------------------ the driver's signals


class Signals:
    """SIGTERM and SIGINT from the driver's first second: KeyboardInterrupt during the set-up,
    Tune's graceful stop during the trials, ignored during the clean-up (which is short)."""

    def __init__(self) -> None:
        self.main = threading.current_thread() is threading.main_thread()
        self.old = {}
        if self.main:
            self.old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
            self.setup()

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def _set(self, term: Any, intr: Any) -> None:
        if self.main:
            signal.signal(signal.SIGTERM, term)
            signal.signal(signal.SIGINT, intr)

    def setup(self) -> None:
        self._set(self._raise, self._raise)

    def trials(self) -> None:
        """Before ``tuner.fit``: Tune installs its own SIGINT/SIGUSR1 handlers (stop, save the
        experiment, return); SIGTERM is forwarded as SIGUSR1 once they are there."""
        usr1 = getattr(signal, "SIGUSR1", None)
        before = signal.getsignal(usr1) if usr1 else None

        def term(signum: int, frame: Any) -> None:
            cur = signal.getsignal(usr1) if usr1 else None
            if callable(cur) and cur is not before:
                os.kill(os.getpid(), usr1)
            else:
                raise KeyboardInterrupt

        self._set(term, signal.default_int_handler)

    def quiet(self) -> None:
        self._set(signal.SIG_IGN, signal.SIG_IGN)

    def restore(self) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def our_error(e: BaseException | None) -> BaseException | None:
    """The RatioSearchError behind an exception Tune raised (e.g. a TrialLogError in a callback)."""
    seen = set()
    while e is not None and id(e) not in seen:
        from ..errors import RatioSearchError

        if isinstance(e, RatioSearchError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None
