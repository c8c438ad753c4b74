"""What a search may use: CPUs and GPUs per trial, how many trials at once, and the Ray it runs on.

:func:`resolve_resources` checks the asked-for GPUs against this machine and fills in defaults;
:func:`init_ray` starts a private local Ray (its own temp dir, no dashboard) or joins a cluster,
which :func:`check_address` first checks answers and :func:`cluster_shortfall` checks is big enough;
:class:`RayStart` runs :func:`init_ray` in the background while the run's set-up goes on.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any
from urllib.parse import urlparse

from ..errors import ConfigError, SearchError


class EnvironmentProblem(SearchError):
    """Something outside the run failed (MLflow store, Ray): the run is kept, resumable."""


def quiet_tune_env() -> None:
    """Environment for Tune's driver side; called just before a Tuner is built (never at import).

    With ``CheckpointConfig(num_to_keep=1)`` Tune snapshots the experiment after every trial
    checkpoint, so that a crash never leaves the experiment state pointing at a deleted
    checkpoint. That is what we want; Tune's warning about frequent snapshots would only be noise
    on every small search. Tune's new console output prints an experiment box and result paths
    even at verbose=0; our progress lines (callbacks.ProgressCallback) replace it, and the legacy
    reporter honours verbose=0.
    """
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def cuda_device_count() -> int:
    """CUDA devices torch sees here (0 without CUDA or with a broken install)."""
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # a broken CUDA install counts as none
        return 0


def resolve_resources(
    gpus: int | None,
    gpus_per_trial: float | None,
    cpus_per_trial: float | None,
    concurrency: int | None,
    address: str | None,
) -> dict[str, Any]:
    """Check the asked-for GPUs exist (locally) and fill in the defaults.

    Without ``address``: ``gpus`` must not exceed ``torch.cuda.device_count()`` (ConfigError).
    Defaults: all local GPUs; ``gpus_per_trial`` 1 with GPUs else 0; ``cpus_per_trial`` 1;
    ``concurrency`` = how many trials fit at once (at most 2 on a machine without GPUs).
    """
    ncpu = os.cpu_count() or 1
    if gpus is not None and gpus < 0:
        raise ConfigError(f"--gpus: must be >= 0, got {gpus}")
    if address is None:
        have = cuda_device_count()
        if gpus is not None and gpus > have:
            raise ConfigError(f"--gpus {gpus} asked for, this machine has {have} CUDA devices")
        if gpus is None:
            gpus = have
    gpus = int(gpus or 0)
    if gpus_per_trial is None:
        gpus_per_trial = 1.0 if gpus > 0 else 0.0
    if gpus_per_trial < 0 or (gpus_per_trial > 0 and gpus == 0 and address is None):
        raise ConfigError(f"--gpus-per-trial {gpus_per_trial:g} needs --gpus > 0 (have {gpus})")
    if gpus_per_trial > max(gpus, 1) and address is None:
        raise ConfigError(f"--gpus-per-trial {gpus_per_trial:g} is more than --gpus {gpus}")
    if cpus_per_trial is None:
        cpus_per_trial = 1.0
    if cpus_per_trial <= 0:
        raise ConfigError(f"--cpus-per-trial: must be > 0, got {cpus_per_trial:g}")
    if concurrency is None:
        fits = [max(1, int(ncpu // cpus_per_trial))]
        if gpus_per_trial > 0 and gpus > 0:
            fits.append(max(1, int(gpus / gpus_per_trial + 1e-9)))
        else:
            fits.append(2)
        concurrency = min(fits)
    if concurrency < 1:
        raise ConfigError(f"--concurrency: must be >= 1, got {concurrency}")
    return {
        "gpus": gpus,
        "gpus_per_trial": float(gpus_per_trial),
        "cpus_per_trial": float(cpus_per_trial),
        "concurrency": int(concurrency),
        "num_cpus": ncpu,
    }


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when a ``host:port`` Ray address does not answer."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SearchError(f"--address {address!r}: expected HOST:PORT (or ray://HOST:PORT, auto)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise SearchError(f"cannot reach the Ray cluster at {address}: {e}") from None


def init_ray(
    temp_dir: str, address: str | None, num_cpus: int, num_gpus: int, timeout: float = 5.0
) -> None:
    """Start a private local Ray (own temp dir, no dashboard) or join ``address``
    (:class:`EnvironmentProblem` / SearchError in one line when it cannot)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    if address:
        check_address(address, timeout)
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except Exception as e:  # a wrong port that accepts TCP, a version mismatch...
            raise SearchError(f"cannot join the Ray cluster at {address}: {e}") from None
        return
    try:
        ray.init(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            _temp_dir=temp_dir,
            # a private Ray's nodes advertise and connect on loopback; Ray 2.60 has no
            # option to bind its GCS/raylet sockets, which listen on all interfaces (token-guarded)
            _node_ip_address="127.0.0.1",
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    except Exception as e:  # a full /tmp, a port clash, a broken install...
        why = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
        raise EnvironmentProblem(
            f"cannot start a local Ray (temp dir {temp_dir}): {why}; the run is kept: fix "
            "that, then resume it"
        ) from None


class RayStart:
    """:func:`init_ray` in a background thread, started when the run's set-up begins.

    A private Ray takes about 8 s to start on two cores (``ray.init``, before any trial), which
    then overlaps the R = 0 calibration, the pools and the MLflow set-up instead of following
    them. Ray's C++ crash handler is switched off (``RAY_DISABLE_FAILURE_SIGNAL_HANDLER``, read
    when ray is first imported): ``ray.init`` installs it for SIGTERM too, where it prints a
    stack and aborts, and from the main thread Ray would put Python's handler back over it,
    from this thread it does not; with it off, SIGTERM during the set-up still ends the driver
    cleanly (exit 130, :class:`.procs.Signals`). Ray's processes then die on a crash without
    printing a C++ stack.

    The thread lives until :meth:`release`: Ray starts its GCS and raylet with
    ``PR_SET_PDEATHSIG``, which Linux fires when the *thread* that started them ends, so a
    thread that returned after ``ray.init`` would take the run's Ray down with it.
    """

    def __init__(self, *args: Any) -> None:
        self._args = args  # init_ray's
        self._error: BaseException | None = None
        self._up = threading.Event()  # init_ray returned (or raised)
        self._done = threading.Event()  # Ray is stopped: the thread may end
        self._thread = threading.Thread(target=self._run, name="ray-start", daemon=True)

    def _run(self) -> None:
        quiet = _NotMainThreadFilter()
        worker_logger = logging.getLogger("ray._private.worker")
        worker_logger.addFilter(quiet)
        try:
            init_ray(*self._args)
        except BaseException as e:  # noqa: BLE001 - re-raised by wait(), in the main thread
            self._error = e
        finally:
            worker_logger.removeFilter(quiet)
            self._up.set()
        self._done.wait()  # keep Ray's processes alive (PR_SET_PDEATHSIG: see the class)

    def start(self) -> RayStart:
        if self._thread.ident is None:
            os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
            self._thread.start()
        return self

    def settle(self) -> None:
        """Wait until the start has finished, whichever way (before Ray is stopped)."""
        if self._thread.ident is not None:
            while not self._up.wait(0.2):  # short waits: Ctrl-C still reaches the main thread
                pass

    def wait(self) -> None:
        """Ray is up when this returns (started now if it was not); raises init_ray's error."""
        self.start().settle()
        if self._error is not None:
            raise self._error

    def release(self) -> None:
        """Let the thread end: call after ``ray.shutdown()`` (Ray's processes die with it)."""
        self._done.set()
        if self._thread.ident is not None:
            self._thread.join(5.0)


class _NotMainThreadFilter(logging.Filter):
    """Drops ray.init's warning that it set no SIGTERM handler outside the main thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "not the main thread" not in record.getMessage()


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when an HTTP(S) MLflow store does not answer (before any step)."""
    u = urlparse(uri)
    if u.scheme not in ("http", "https") or not u.hostname:
        return
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname, port), timeout=timeout):
            pass
    except OSError as e:
        raise SearchError(
            f"cannot reach the MLflow store at {uri}: {e}; start it, give another "
            "--tracking-uri, or run with --no-tracking"
        ) from None


def cluster_shortfall(res: dict[str, Any], nodes: list[dict[str, Any]]) -> str | None:
    """What a joined cluster lacks for this search, or None: more ``--gpus`` than it has, or one
    trial (``--cpus-per-trial`` + ``--gpus-per-trial``) bigger than every node. ``nodes``: the
    ``Resources`` dicts of its live nodes (``ray.nodes()``)."""
    total = sum(float(n.get("GPU", 0)) for n in nodes)
    if res["gpus"] > total + 1e-9:
        return f"--gpus {res['gpus']} asked for, the Ray cluster has {total:g} GPUs"
    cpu, gpu = res["cpus_per_trial"], res["gpus_per_trial"]
    if not any(float(n.get("CPU", 0)) >= cpu and float(n.get("GPU", 0)) >= gpu for n in nodes):
        sizes = ", ".join(f"{n.get('CPU', 0):g} CPU + {n.get('GPU', 0):g} GPU" for n in nodes)
        return f"one trial needs {cpu:g} CPU + {gpu:g} GPU and no node has that ({sizes})"
    return None


__all__ = [
    "EnvironmentProblem",
    "check_address",
    "check_tracking_uri",
    "cluster_shortfall",
    "cuda_device_count",
    "init_ray",
    "quiet_tune_env",
    "resolve_resources",
]
