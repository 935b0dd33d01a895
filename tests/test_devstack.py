"""`llmq dev` brings the stack up (API, scheduler, Flower), starts a worker for the first job,
and Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from llmq.devstack import free_port


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_dev_stack_runs_and_stops_cleanly(environment, auth):
    marker = f"LLMQ_DEV_TEST_MARK={uuid.uuid4().hex}"
    port, flower_port = free_port(), free_port()
    env = dict(
        os.environ,
        LLMQ_FLOWER_PORT=str(flower_port),
        LLMQ_FLOWER_BASIC_AUTH="u:p",
        LLMQ_SCHEDULER_METRICS_PORT="0",
    )
    env[marker.split("=")[0]] = marker.split("=")[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmq.cli", "dev", "--port", str(port), "--model", "echo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            if "llmq is up" in line or proc.poll() is not None:
                break
        assert proc.poll() is None, proc.stdout.read().decode()
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        workers = httpx.get(
            f"http://127.0.0.1:{flower_port}/api/workers", auth=("u", "p"), timeout=10
        )
        assert workers.status_code == 200
        before = len(processes_with(marker))
        assert before >= 4  # llmq dev, the API, the scheduler, Flower
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=70)
        job = api.post("/v1/jobs", json={"model": "echo", "prompt": "hi"}).json()
        job = api.get(f"/v1/jobs/{job['id']}", params={"wait": 60}).json()
        assert job["status"] == "succeeded", job  # the scheduler started a worker for it
        assert len(processes_with(marker)) == before + 1
        status = subprocess.run(
            [sys.executable, "-m", "llmq.cli", "status"],
            env=dict(env, LLMQ_API_URL=f"http://127.0.0.1:{port}",
                     LLMQ_API_KEY=auth["Authorization"].split()[1]),
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        echo_row = next(line for line in status.stdout.splitlines() if " echo " in line)
        assert "desired" in status.stdout and echo_row.split("│")[2].strip() == "1", status.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    time.sleep(0.5)
    assert processes_with(marker) == []
