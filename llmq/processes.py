"""Stopping a child process: SIGTERM, a grace to finish what it holds, then SIGKILL.

Whatever starts processes (the dev stack, the scheduler's local backend, the bench, the
reliability runs, the tests) stops them this one way. A child started in a session of its
own (`start_new_session=True`) is stopped with its whole process group, so what it started
(a scheduler's workers) goes too, even after the child itself has exited.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence

# Unix time a worker was asked for, in its environment: its start's `spawn` part counts from it.
START_REQUESTED_ENV = "LLMQ_START_REQUESTED_AT"


def send_signal(pid: int, sig: int, *, group: bool = False) -> bool:
    """Signal a process (or its group); False when none is left to signal."""
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_processes(
    procs: Sequence[subprocess.Popen],
    grace_s: float,
    *,
    group: bool = False,
    term_group: bool | None = None,
    reap_s: float = 10.0,
) -> list[int | None]:
    """SIGTERM each process, give them `grace_s` together to exit, then SIGKILL what is left.

    `group`: each process leads its own group, and SIGKILL goes to the whole group. SIGTERM
    does too unless `term_group` is False (a scheduler drains its own workers, so they should
    hear it from the scheduler, not all at once). A grace of 0 kills at once. Returns each
    exit code, or None for a process still there `reap_s` after SIGKILL.
    """
    term_group = group if term_group is None else term_group
    if grace_s > 0:
        for proc in procs:
            if term_group or proc.poll() is None:
                send_signal(proc.pid, signal.SIGTERM, group=term_group)
        deadline = time.monotonic() + grace_s
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if group or proc.poll() is None:  # a group may outlive its leader
            send_signal(proc.pid, signal.SIGKILL, group=group)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=reap_s)
    return [proc.returncode for proc in procs]


def stop_process(
    proc: subprocess.Popen,
    grace_s: float,
    *,
    group: bool = False,
    term_group: bool | None = None,
    reap_s: float = 10.0,
) -> int | None:
    """`stop_processes` for one process: its exit code, or None if it would not die."""
    return stop_processes([proc], grace_s, group=group, term_group=term_group, reap_s=reap_s)[0]
