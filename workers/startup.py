"""A worker's start in parts, so a slow scale-up from zero says where its time went.

spawn: from the moment something asked for the worker (`LLMQ_START_REQUESTED_AT`, set by
whoever starts it) to the process existing; imports: from there to the loader opening the
weights (the interpreter, torch, transformers, Celery); weights: the load itself, up to the
engine being ready (a weightless engine has none). The heartbeat
record carries them (`startup_s`); the first batch is the job's own time after that.
"""

from __future__ import annotations

import os
import time

from llmq.processes import START_REQUESTED_ENV

PARTS = ("spawn", "imports", "weights")


_weights_started_at: list[float] = []  # set by the loader as it opens the weights


def weights_started() -> None:
    """The loader calls this as it starts on the weights: what came before was imports."""
    _weights_started_at[:] = [time.time()]


def weights_started_at(default: float) -> float:
    return _weights_started_at[0] if _weights_started_at else default


def process_started_at() -> float:
    """Unix time this process was created (a fork counts), from /proc, to the clock tick."""
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    age_s = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - age_s


def requested_at(environ: dict[str, str] | os._Environ = os.environ) -> float | None:
    try:
        return float(environ[START_REQUESTED_ENV])
    except (KeyError, ValueError):
        return None


def parts_s(
    requested: float | None, started: float, loading: float, loaded: float
) -> dict[str, float]:
    """The parts of a start from its Unix times; no spawn part when nobody said when it was
    asked for (a worker started by hand)."""
    parts = {"imports": loading - started, "weights": loaded - loading}
    if requested is not None:
        parts = {"spawn": started - requested, **parts}
    return {name: round(max(0.0, value), 3) for name, value in parts.items()}
