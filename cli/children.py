"""The local stack's child processes: each in its own process group, restarted with a back-off
when it dies (`supervise`), and stopped together, with whatever a dead one left behind.

The back-off (`llmq.backoff`) is the one the scheduler's local backend uses for its workers.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmq.backoff import crashes_in_a_row, restart_delay_s
from llmq.processes import stop_processes

RESTART_FIRST_S = 1.0
RESTART_CAP_S = 30.0
HEALTHY_AFTER_S = 60.0  # a child up this long starts its crash count again


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen
    started_s: float
    crashes: int = 0  # exits in a row, each within HEALTHY_AFTER_S of its start
    restart_at_s: float | None = None  # set while it waits out its back-off


class Children:
    """Children started with `env` (read at each start), logging to `log_dir` when given."""

    def __init__(self, env: dict[str, str], log_dir: Path | None, log: Callable[[str], object]):
        self.env, self.log_dir, self.log = env, log_dir, log
        self.children: list[Child] = []
        self._dead: list[subprocess.Popen] = []  # children that died: stop() ends their groups

    def spawn(self, name: str, argv: list[str]) -> None:
        self.children.append(Child(name, argv, self._popen(name, argv), time.monotonic()))

    def first_exited(self) -> Child | None:
        return next((c for c in self.children if c.proc.poll() is not None), None)

    def supervise(self) -> None:
        """Restart each child that exited, once its back-off has passed; call it every second."""
        now = time.monotonic()
        for child in self.children:
            if child.restart_at_s is None:
                code = child.proc.poll()
                if code is None:
                    continue
                child.crashes = crashes_in_a_row(
                    child.crashes, now - child.started_s, HEALTHY_AFTER_S
                )
                delay_s = restart_delay_s(child.crashes, RESTART_FIRST_S, RESTART_CAP_S)
                child.restart_at_s = now + delay_s
                # What it started (a scheduler's workers) may live on: stop() ends them too.
                self._dead.append(child.proc)
                self.log(
                    f"{child.name} exited with code {code} ({child.crashes} in a row); "
                    f"restarting in {delay_s:.0f}s"
                )
            elif now >= child.restart_at_s:
                child.proc = self._popen(child.name, child.argv)
                child.started_s, child.restart_at_s = now, None
                self.log(f"restarted {child.name} (pid {child.proc.pid})")

    def stop(self, grace_s: float) -> None:
        """SIGTERM every child group (workers finish what they hold), then SIGKILL stragglers."""
        live = [child.proc for child in reversed(self.children)]
        stop_processes([*self._dead, *live], grace_s, group=True, reap_s=5)
        self.children.clear()
        self._dead.clear()

    def _popen(self, name: str, argv: list[str]) -> subprocess.Popen:
        output = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = (self.log_dir / f"{name.replace(':', '-')}.log").open("ab")
        proc = subprocess.Popen(
            argv, env=self.env, start_new_session=True, stdout=output, stderr=output
        )
        if output is not None:
            output.close()  # the child holds its own copy
        return proc
