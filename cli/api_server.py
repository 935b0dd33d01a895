"""How the API is started: uvicorn with `LLMQ_API_WORKERS` processes behind one port.

Several processes share their Prometheus counters through Prometheus' multiprocess mode: each
writes its own files in `PROMETHEUS_MULTIPROC_DIR`, which must be set before any of them
imports prometheus_client, so it is set here, in the parent, for a fresh directory per start
(a directory an operator set is kept). Whichever process binds the metrics port sums them all.
"""

from __future__ import annotations

import os
import tempfile

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def worker_count(configured: int) -> int:
    """`LLMQ_API_WORKERS`, with 0 meaning one per core this process may run on."""
    if configured > 0:
        return configured
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def multiprocess_env(env: dict[str, str], workers: int) -> dict[str, str]:
    """`env` with a metrics directory for `workers` processes (unchanged for one)."""
    if workers <= 1 or env.get(MULTIPROC_ENV):
        return env
    return dict(env, **{MULTIPROC_ENV: tempfile.mkdtemp(prefix="llmq-api-metrics-")})
