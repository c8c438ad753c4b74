"""The MLflow UI / tracking server as a supervised child process (``ratio-search ui``).

No mlflow import here: the server runs as ``python -m mlflow ...`` in its own session.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ..errors import RatioSearchError
from .store import artifact_root_for


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only: ``localhost``, 127.0.0.0/8
    or ``::1``. Anything else (``0.0.0.0``, ``::``, a host name, a LAN address) other machines
    may reach."""
    import ipaddress

    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def ui_command(
    tracking_uri: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    server: bool = False,
    workers: int = 1,
) -> list[str]:
    """The ``mlflow ui`` (or, with ``server``, ``mlflow server``) command line for a store.

    ``mlflow ui`` reads the store; artifacts are read from each experiment's own location (the
    home's ``mlruns/artifacts``). ``mlflow server`` also proxies artifact uploads of remote
    clients into that folder (``--serve-artifacts``), for a team's tracking server.
    """
    cmd = [sys.executable, "-m", "mlflow", "server" if server else "ui"]
    cmd += ["--backend-store-uri", tracking_uri, "--host", host, "--port", str(port)]
    cmd += ["--workers", str(workers)]
    root = artifact_root_for(tracking_uri)
    if server:
        cmd += ["--serve-artifacts"]
        if root is not None:
            cmd += ["--artifacts-destination", root.as_uri()]
    elif root is not None:
        cmd += ["--default-artifact-root", root.as_uri()]
    return cmd


def wait_for_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> bool:
    """Poll ``url`` until it answers 200 (True), ``proc`` exits or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def stop_process_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a child started with ``start_new_session=True`` and the workers it forked."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)  # the group id is the child's own pid (new session)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def serve_ui(
    tracking_uri: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    server: bool = False,
    log_path: str | os.PathLike | None = None,
    on_ready=None,
    startup_timeout: float = 90.0,
) -> int:
    """Run the MLflow UI / tracking server on ``tracking_uri`` until Ctrl-C or SIGTERM.

    ``on_ready(url)`` is called once the server answers. Returns the server's exit code (0 after
    a Ctrl-C). Raises :class:`RatioSearchError` when the port is taken or the server does not start.
    """
    if not port_is_free(host, port):
        raise RatioSearchError(f"port {port} on {host} is already in use; pass another --port")
    root = artifact_root_for(tracking_uri)
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    cmd = ui_command(tracking_uri, host=host, port=port, server=server)
    log_file = Path(log_path) if log_path else None
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    # Its own session: Ctrl-C reaches only us, and we stop the server and its workers together.
    env = dict(os.environ)
    # MLflow's job runner (GenAI judges, trace roll-ups) starts about ten worker processes that
    # viewing runs never uses; off unless the user asked for it.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    proc = subprocess.Popen(
        cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    url_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{url_host}:{port}"

    def on_term(signum, frame):  # SIGTERM (kill PID) stops the server like Ctrl-C does
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        if not wait_for_http(f"{url}/health", timeout=startup_timeout, proc=proc):
            stop_process_group(proc)
            where = f"; see {log_file}" if log_file else ""
            raise RatioSearchError(
                f"the MLflow {'server' if server else 'UI'} did not start{where}"
            )
        if on_ready is not None:
            on_ready(url)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_process_group(proc)
        signal.signal(signal.SIGTERM, old)
        if log_file:
            out.close()
