"""System metrics of one trial, sampled inside the trial's own process (no MLflow here).

:class:`Sampler` is created when a trial starts and read once per epoch; what it returns goes into
the epoch's result as ``result["system"]`` (a nested dict, so that trials.jsonl and the scheduler
never see it), and the driver's tracking callback logs it under MLflow's ``system/...`` names:

- ``process_cpu_utilization_percentage``: the trial process's CPU time over the epoch, in % of one
  core (``200`` = two cores busy), and ``process_memory_usage_megabytes`` (its resident memory);
- ``cpu_utilization_percentage``, ``system_memory_usage_megabytes``,
  ``system_memory_usage_percentage``: the node's, as MLflow's own system-metrics monitor names them;
- at ``device="cuda"`` with NVML (``pynvml``) importable, per GPU the trial sees (``gpu_0`` = its
  first): ``gpu_0_utilization_percentage``, ``gpu_0_memory_usage_megabytes`` and
  ``gpu_0_memory_usage_percentage``; without NVML, ``gpu_0_torch_reserved_megabytes`` (the
  memory this process's torch holds), so that a ``--gpus-per-trial`` share shows how full it is.

Each read costs a few system calls (about 0.1 ms; see BENCHMARKS.md "System metrics"). Set
``RATIO_SEARCH_SYSTEM_METRICS=0`` to sample nothing. A failing probe drops its metrics, never
the trial.
"""

from __future__ import annotations

import os
from typing import Any

RESULT_KEY = "system"
ENV_OFF = "RATIO_SEARCH_SYSTEM_METRICS"
MB = 1e6


def enabled() -> bool:
    """Whether sampling is on (``RATIO_SEARCH_SYSTEM_METRICS`` unset or not ``0``/``false``)."""
    return os.environ.get(ENV_OFF, "1").strip().lower() not in ("0", "false", "no", "off")


class Sampler:
    """Samples the trial process, its node and its GPUs; :meth:`sample` once per epoch."""

    def __init__(self, device: str = "cpu") -> None:
        self.on = enabled()
        self._proc: Any = None
        self._nvml: list[Any] = []
        self._torch_gpus: list[int] = []
        if not self.on:
            return
        try:
            import psutil

            self._psutil = psutil
            self._proc = psutil.Process()
            self._proc.cpu_percent(None)  # primes both counters: the first read covers the epoch
            psutil.cpu_percent(None)
        except Exception:  # noqa: BLE001 - no psutil: no CPU/memory metrics
            self._proc = None
        if str(device).startswith("cuda"):
            self._nvml = _nvml_handles()
            if not self._nvml:
                self._torch_gpus = _torch_gpus()

    def sample(self) -> dict[str, float]:
        """The metrics since the previous call (CPU) or now (memory); ``{}`` when off."""
        out: dict[str, float] = {}
        if not self.on:
            return out
        if self._proc is not None:
            try:
                ps = self._psutil
                out["process_cpu_utilization_percentage"] = float(self._proc.cpu_percent(None))
                out["process_memory_usage_megabytes"] = self._proc.memory_info().rss / MB
                out["cpu_utilization_percentage"] = float(ps.cpu_percent(None))
                vm = ps.virtual_memory()
                out["system_memory_usage_megabytes"] = vm.used / MB
                out["system_memory_usage_percentage"] = float(vm.percent)
            except Exception:  # noqa: BLE001 - the process's metrics are optional
                pass
        for i, handle in enumerate(self._nvml):
            out.update(_nvml_sample(i, handle))
        for i in self._torch_gpus:
            try:
                import torch

                out[f"gpu_{i}_torch_reserved_megabytes"] = torch.cuda.memory_reserved(i) / MB
            except Exception:  # noqa: BLE001
                pass
        return out


def _visible_gpus() -> list[int] | None:
    """The physical GPU indices this process sees (``CUDA_VISIBLE_DEVICES``), None if unset."""
    text = os.environ.get("CUDA_VISIBLE_DEVICES")
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:  # UUIDs: NVML's order is then unknown to us
        return []


def _nvml_handles() -> list[Any]:
    try:
        import pynvml

        pynvml.nvmlInit()
        visible = _visible_gpus()
        ids = visible if visible is not None else range(pynvml.nvmlDeviceGetCount())
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in ids]
    except Exception:  # noqa: BLE001 - no NVML (no pynvml, no driver): no GPU utilisation
        return []


def _nvml_sample(i: int, handle: Any) -> dict[str, float]:
    try:
        import pynvml

        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        util = pynvml.nvmlDeviceGetUtilizationRates(handle)
        return {
            f"gpu_{i}_utilization_percentage": float(util.gpu),
            f"gpu_{i}_memory_usage_megabytes": mem.used / MB,
            f"gpu_{i}_memory_usage_percentage": 100.0 * mem.used / mem.total if mem.total else 0.0,
        }
    except Exception:  # noqa: BLE001
        return {}


def _torch_gpus() -> list[int]:
    try:
        import torch

        return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    except Exception:  # noqa: BLE001
        return []
