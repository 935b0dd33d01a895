"""Device gauges read at scrape time: memory the worker holds, and GPU utilization via NVML.

On CUDA the memory is what PyTorch's caching allocator has reserved on the device (what other
processes cannot use); on CPU it is the process's resident memory, where the model lives.
NVML (the `nvidia-ml-py` package) is optional: without it there is no utilization gauge.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from llmq import metrics

log = logging.getLogger(__name__)


def resident_bytes() -> int:
    """Resident memory of this process, from /proc (Linux); 0 where that is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _gpu_percent(index: int) -> float | None:
    """torch maps the CUDA index to NVML's (CUDA_VISIBLE_DEVICES honoured); None: no NVML."""
    import torch

    try:
        return float(torch.cuda.utilization(index))
    except Exception:  # no pynvml, no driver library, or an NVML error
        return None


class DeviceCollector(Collector):
    """Memory in use on the worker's device and, on NVIDIA GPUs with NVML, utilization."""

    def __init__(self, model: str, device: str):
        self.model, self.device = model, str(device)
        self.cuda_index: int | None = None
        self.nvml = importlib.util.find_spec("pynvml") is not None
        if self.device.startswith("cuda"):
            import torch

            self.cuda_index = torch.device(self.device).index or 0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = [self.model, self.device]
        used = GaugeMetricFamily(
            metrics.DEVICE_MEMORY,
            metrics.COLLECTED[metrics.DEVICE_MEMORY],
            labels=["model", "device"],
        )
        if self.cuda_index is None:
            used.add_metric(labels, resident_bytes())
            yield used
            return
        import torch

        used.add_metric(labels, torch.cuda.memory_reserved(self.cuda_index))
        yield used
        total = GaugeMetricFamily(
            metrics.DEVICE_MEMORY_TOTAL,
            metrics.COLLECTED[metrics.DEVICE_MEMORY_TOTAL],
            labels=["model", "device"],
        )
        total.add_metric(labels, torch.cuda.get_device_properties(self.cuda_index).total_memory)
        yield total
        percent = _gpu_percent(self.cuda_index) if self.nvml else None
        if percent is not None:
            util = GaugeMetricFamily(
                metrics.GPU_UTILIZATION,
                metrics.COLLECTED[metrics.GPU_UTILIZATION],
                labels=["model", "device"],
            )
            util.add_metric(labels, percent / 100)
            yield util
