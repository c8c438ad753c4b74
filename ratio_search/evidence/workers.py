"""Confirmation runs side by side: one process per core, each run as alone.

A search trial pins torch to its CPU share (``train.threads``, 1 on a laptop), and a confirmation
run re-runs that trial with another seed, so run one after another an export leaves every core
but one idle. :class:`RunPool` hands independent runs to ``workers`` processes instead; each
process pins the same thread count, so a run's weights and metrics are the same bits as when it
runs alone in the driver (tested: ``tests/test_confirm.py``). The driver resolves the
generated images (pool cache or regeneration) and writes the cache; a worker only trains.

Workers are started with ``spawn`` (no forked torch or OpenMP state), ignore Ctrl-C (the driver
stops them) and die with the driver (``PR_SET_PDEATHSIG`` on Linux), so a killed export leaves
no process behind and loses at most the runs in flight: the cache holds every finished one.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# (config, seed, images) -> (validation metrics, weights); images as RunContext.pool_images.
Job = tuple[dict[str, Any], int, Any]
Result = tuple[dict[str, float], dict[str, Any]]

_CTX: Any = None  # the worker's RunContext (its dataset loaded once per process)
_PR_SET_PDEATHSIG = 1


def auto_workers(threads: int, n_runs: int, cores: int | None = None) -> int:
    """Processes for ``n_runs`` runs pinned to ``threads`` torch threads each: the job's cores
    divided by ``threads``, at most ``n_runs``; 1 for ``threads`` 0 (torch's default already
    takes every core)."""
    from ..diffusion.threads import job_cores

    if int(threads) <= 0:
        return 1
    cores = job_cores() if cores is None else int(cores)
    return max(1, min(int(n_runs), cores // int(threads)))


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:  # no libc by that name: the driver still terminates the pool
            pass


def _init(home_root: str, run_folder: str, info: dict[str, Any]) -> None:
    global _CTX
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C and stops us
    _die_with_parent()
    from ..home import Home
    from .runs import RunContext

    _CTX = RunContext(Home(Path(home_root)), Path(run_folder), info)


def _train(job: Job) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    config, seed, images = job
    val, state = _CTX.train_with(config, seed, images)
    # numpy over the pipe: plain pickling, no torch shared-memory file descriptors.
    return val, {k: v.detach().cpu().numpy() for k, v in state.items()}


class RunPool:
    """Trains batches of runs with ``ctx.train_with``, ``workers`` at a time; one pool of
    processes for the whole confirmation (a worker's start, torch and the dataset, costs
    seconds), started at its first batch. Use as a context manager: the
    processes are stopped on exit, also on an error or Ctrl-C in the driver."""

    def __init__(self, ctx: Any, workers: int) -> None:
        self.ctx, self.workers = ctx, int(workers)
        self._pool: Any = None

    def __enter__(self) -> RunPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()  # nothing keeps running after the confirmation
            self._pool.join()
            self._pool = None

    def at_once(self, n_jobs: int) -> int:
        """How many of ``n_jobs`` runs train at the same time."""
        return max(1, min(self.workers, n_jobs))

    def train(
        self, jobs: Sequence[Job], on_start: Callable[[int], None] | None = None
    ) -> Iterator[Result]:
        """Yield the results of ``jobs`` in their order, trained in the worker processes;
        ``on_start(i)`` as job ``i`` is handed out. (One run at a time needs no pool: the caller
        trains it in the driver, :func:`.runs.train_cached`.)"""
        import torch

        if self._pool is None:
            mp = multiprocessing.get_context("spawn")
            args = (str(self.ctx.home.root), str(self.ctx.run_folder), dict(self.ctx.info))
            self._pool = mp.Pool(self.workers, initializer=_init, initargs=args)
        if on_start:
            for i in range(len(jobs)):
                on_start(i)
        for val, state in self._pool.imap(_train, list(jobs)):
            yield val, {k: torch.from_numpy(v) for k, v in state.items()}


__all__ = ["RunPool", "auto_workers"]
