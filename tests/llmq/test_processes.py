"""`llmq.processes`: real child processes, stopped with SIGTERM, a grace, then SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from llmq.processes import send_signal, stop_process, stop_processes

IGNORES_TERM = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
EXITS_3_ON_TERM = "import signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))\n"
LOOP = "import time\nwhile True: time.sleep(1)\n"
READY = "print('ready', flush=True)\n" + LOOP


def start(code: str, **popen) -> subprocess.Popen:
    """A Python child that has set up its signal handlers (it said so) before we go on."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, **popen)
    assert proc.stdout.readline() == b"ready\n"
    return proc


def gone(pid: int) -> bool:
    """No such process, or only its zombie: it has stopped running."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace():
    proc = start(IGNORES_TERM + READY)
    started = time.monotonic()
    code = stop_process(proc, grace_s=0.5)
    assert code == -signal.SIGKILL
    assert time.monotonic() - started >= 0.5  # it had its grace first


def test_a_child_that_exits_on_sigterm_is_not_killed():
    proc = start(EXITS_3_ON_TERM + READY)
    started = time.monotonic()
    assert stop_process(proc, grace_s=30) == 3
    assert time.monotonic() - started < 10  # it did not wait out the grace


def test_no_grace_kills_at_once():
    proc = start(EXITS_3_ON_TERM + READY)
    assert stop_process(proc, grace_s=0) == -signal.SIGKILL


def test_a_group_is_stopped_with_what_its_dead_leader_started():
    # The leader starts a grandchild that ignores SIGTERM, then exits on SIGTERM itself.
    leader = start(
        EXITS_3_ON_TERM
        + "import subprocess, sys\n"
        + f"child = subprocess.Popen([sys.executable, '-c', {IGNORES_TERM + READY!r}],"
        + " stdout=subprocess.PIPE)\n"
        + "child.stdout.readline()\n"
        + "print('ready', child.pid, sep='\\n', flush=True)\n"
        + LOOP,
        start_new_session=True,
    )
    grandchild = int(leader.stdout.readline())
    others = start(EXITS_3_ON_TERM + READY, start_new_session=True)
    try:
        assert stop_processes([leader, others], grace_s=0.5, group=True) == [3, 3]
        deadline = time.monotonic() + 10
        while not gone(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(grandchild), "the grandchild outlived its group's stop"
    finally:
        send_signal(grandchild, signal.SIGKILL)


def test_signalling_a_process_that_is_gone_says_so():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert send_signal(proc.pid, signal.SIGTERM) is False
    proc = start(READY)
    assert send_signal(proc.pid, signal.SIGTERM) is True
    assert proc.wait(timeout=10) == -signal.SIGTERM
