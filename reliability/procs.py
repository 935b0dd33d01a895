"""What the load and security suites add to bench.env: the webhook sender and Flower as child
processes, and a resident-memory sampler."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import httpx

from bench.env import BenchEnv, Proc


def flower(env: BenchEnv, port: int, auth: tuple[str, str], timeout_s: float = 60) -> Proc:
    """`llmq flower` with basic auth, once it answers."""
    argv = [sys.executable, "-m", "cli", "flower", "--port", str(port), "--loglevel", "info"]
    proc = Proc(argv, dict(env.env, LLMQ_FLOWER_BASIC_AUTH=":".join(auth)), env.dir / "flower.log")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.stop()
    raise RuntimeError("Flower did not start")


def log_text(proc: Proc) -> str:
    if not proc.log.closed:
        proc.log.flush()
    return Path(proc.log.name).read_text(errors="replace")


def rss_kb(pid: int) -> int:
    """Resident memory of a process and its children (a process group's tree), in KiB."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        total += next((int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:")), 0)
    return total


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in map(int, kids):
            out += [kid, *_children(kid)]
    return out


class RssSampler:
    """Samples each named process's resident memory every `every_s` in a thread."""

    def __init__(self, pids: dict[str, int], every_s: float):
        self.pids, self.every_s = pids, every_s
        self.started = time.monotonic()
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            at = time.monotonic() - self.started
            self.samples.append((round(at, 1), {n: rss_kb(p) for n, p in self.pids.items()}))
            if self._stop.wait(self.every_s):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def first_after_mb(self, seconds: float) -> dict[str, float]:
        sample = next((s for t, s in self.samples if t >= seconds), self.samples[-1][1])
        return {n: kb / 1024 for n, kb in sample.items()}

    def last_mb(self) -> dict[str, float]:
        return {n: kb / 1024 for n, kb in self.samples[-1][1].items()}

    def growth(self, baseline_s: float) -> dict[str, float]:
        """Each process's growth from the first sample at or after `baseline_s` to the last."""
        first, last = self.first_after_mb(baseline_s), self.last_mb()
        return {n: last[n] / first[n] - 1 for n in first if first[n]}
