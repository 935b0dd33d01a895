"""The local backend's end of the warm template (`workers.template`): start it, ask it for a
worker, and notice when it is gone.

Nothing depends on it: a template still importing, one that does not answer within
`REPLY_TIMEOUT_S`, or one that died, means the worker starts as a plain process instead, and
a dead template is started again after a pause. The workers it forked keep serving whatever
happens to it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from llmq.processes import stop_process

log = logging.getLogger("llmq.scheduler")

READY = "ready"
REPLY_TIMEOUT_S = 10.0
RESTART_AFTER_S = 5.0  # a template that died is started again no sooner than this


class WarmTemplate:
    def __init__(self, models: list[str], env: dict[str, str], log_path: Path | None = None):
        self.models, self.env, self.log_path = models, env, log_path
        self.proc: subprocess.Popen | None = None
        self._ready = False
        self.gpu = False  # whether it may fork workers that use CUDA (it has not started CUDA)
        self._buffer = b""
        self._died_at: float | None = None

    def start(self) -> None:
        out = self.log_path.open("ab") if self.log_path is not None else None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.template", *self.models],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=out,
            env=self.env,
        )
        if out is not None:
            out.close()
        self._ready, self._buffer, self._died_at = False, b"", None
        log.info("started the warm template (pid %d)", self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        """Done importing and answering; never waits."""
        if not self._ready and self.alive():
            line = self._read_line(0.0)
            try:
                hello = json.loads(line) if line else {}
            except ValueError:
                hello = {}
            self._ready, self.gpu = bool(hello.get(READY)), bool(hello.get("gpu"))
        return self._ready and self.alive()

    def tick(self) -> None:
        """Start the template again once a pause has passed since it died."""
        if self.alive():
            return
        now = time.monotonic()
        if self.proc is not None and self._died_at is None:
            log.warning("the warm template exited (code %s)", self.proc.returncode)
            self._died_at = now
        if self._died_at is None or now - self._died_at >= RESTART_AFTER_S:
            self.start()

    def fork(
        self, model: str, node: str, env: dict[str, str], log_path: Path | None, gpu: bool = False
    ) -> int | None:
        """The pid of a new worker forked from the template, or None: start it plainly."""
        if not self.ready() or (gpu and not self.gpu):
            return None
        request = {"model": model, "node": node, "env": env, "log": str(log_path or "")}
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
            reply = json.loads(self._read_line(REPLY_TIMEOUT_S) or "{}")
        except (OSError, ValueError):
            reply = {}
        if not isinstance(reply.get("pid"), int):
            log.warning("the warm template did not fork %s (%s); stopping it", node, reply)
            self.stop()
            return None
        return reply["pid"]

    def stop(self) -> None:
        """Close its stdin (it exits), then stop it; the workers it forked are not touched."""
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        stop_process(self.proc, grace_s=2, reap_s=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._ready = False
        self._died_at = time.monotonic()

    def _read_line(self, timeout_s: float) -> str | None:
        """One line from the template, or None when none came within `timeout_s`."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if not select.select([fd], [], [], max(0.0, left))[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None  # it exited
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode().strip()
