"""`llmq dev` brings the stack up (API, scheduler, webhook sender, Flower) without a secret key
of the user's, starts a worker for the first job, restarts a child that dies, and Ctrl-C leaves
no process behind. Outside `llmq dev` the processes refuse to start without LLMQ_SECRET_KEY."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from cli.devstack import free_port
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]


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


def running_with(marker: str, word: str) -> list[int]:
    """Live processes of the marked stack whose command line has `word` (zombies have none)."""
    found = []
    for pid in processes_with(marker):
        try:
            if word.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def dev_env(marker: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a `llmq dev` under test: no LLMQ_SECRET_KEY, its own ports."""
    env = dict(
        os.environ,
        LLMQ_SCHEDULER_METRICS_PORT="0",
        LLMQ_API_METRICS_PORT=str(free_port()),
        LLMQ_SECRET_KEY_FILE=str(tmp_path / "secret.key"),
        **extra,
    )
    del env["LLMQ_SECRET_KEY"]  # `llmq dev` makes one for its processes
    name, value = marker.split("=")
    env[name] = value
    return env


def test_dev_stack_runs_and_stops_cleanly(environment, auth, tmp_path):
    marker = f"LLMQ_DEV_TEST_MARK={uuid.uuid4().hex}"
    port, flower_port = free_port(), free_port()
    env = dev_env(marker, tmp_path, LLMQ_FLOWER_PORT=str(flower_port), LLMQ_FLOWER_BASIC_AUTH="u:p")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "dev", "--port", str(port), "--model", "echo"],
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
        metrics = f"http://127.0.0.1:{env['LLMQ_API_METRICS_PORT']}/metrics"
        assert "llmq_http_requests_total" in httpx.get(metrics, timeout=10).text
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 404
        before = len(processes_with(marker))
        assert before >= 4  # llmq dev, the API, the scheduler, Flower
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=70)
        job = api.post("/v1/jobs", json={"model": "echo", "prompt": "hi"}).json()
        job = api.get(f"/v1/jobs/{job['id']}", params={"wait": 60}).json()
        assert job["status"] == "succeeded", job  # the scheduler started a worker for it
        assert len(processes_with(marker)) == before + 1
        status = subprocess.run(
            [sys.executable, "-m", "cli", "status"],
            env=dict(env, LLMQ_API_URL=f"http://127.0.0.1:{port}",
                     LLMQ_API_KEY=auth["Authorization"].split()[1]),
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        echo_row = next(line for line in status.stdout.splitlines() if " echo " in line)
        assert "desired" in status.stdout and echo_row.split("│")[2].strip() == "1", status.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    wait_for(lambda: processes_with(marker) == [], 10, "every process of the stack gone")


def test_dev_stack_restarts_a_child_that_dies(environment, tmp_path):
    marker = f"LLMQ_DEV_TEST_MARK={uuid.uuid4().hex}"
    port = free_port()
    log_path = tmp_path / "dev.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "dev", "--port", str(port), "--model", "echo",
             "--no-flower"],
            env=dev_env(marker, tmp_path), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(lambda: "llmq is up" in log_path.read_text() or proc.poll() is not None, 120, "up")
        assert proc.poll() is None, log_path.read_text()
        (first,) = wait_for(lambda: running_with(marker, "webhook"), 30, "the webhook sender")
        os.kill(first, signal.SIGKILL)
        (second,) = wait_for(
            lambda: [p for p in running_with(marker, "webhook") if p != first],
            60,
            "a new webhook sender",
        )
        assert proc.poll() is None, log_path.read_text()
        assert "webhooks exited" in log_path.read_text()
        assert f"restarted webhooks (pid {second})" in log_path.read_text()
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    wait_for(lambda: processes_with(marker) == [], 10, "every process of the stack gone")


@pytest.mark.parametrize(
    "command",
    [
        ["api", "--port", "0"],
        ["worker", "--model", "echo"],
        ["webhook-worker"],
        ["scheduler", "--backend", "local", "--model", "echo"],
    ],
)
def test_processes_refuse_to_start_without_the_secret_key(environment, tmp_path, command):
    env = dict(os.environ, PYTHONPATH=str(ROOT), LLMQ_SCHEDULER_METRICS_PORT="0")
    del env["LLMQ_SECRET_KEY"]
    result = subprocess.run(
        [sys.executable, "-m", "cli", *command],
        cwd=tmp_path,  # no .env here
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    (line,) = [line for line in output.splitlines() if "LLMQ_SECRET_KEY" in line]
    assert line.startswith("error: "), output


def test_a_malformed_secret_key_is_refused_at_start(environment, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), LLMQ_SECRET_KEY="not-a-fernet-key")
    result = subprocess.run(
        [sys.executable, "-m", "cli", "webhook-worker"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "error: LLMQ_SECRET_KEY is not a Fernet key" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("crashes", "delay_s"),
    [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (50, 30.0)],
)
def test_restart_delay_doubles_up_to_a_cap(crashes, delay_s):
    from llmq.backoff import restart_delay_s

    assert restart_delay_s(crashes, first_s=1.0, cap_s=30.0) == delay_s


@pytest.mark.parametrize(
    ("previous", "uptime_s", "crashes"),
    [(0, 0.5, 1), (1, 0.5, 2), (4, 29.0, 5), (4, 30.0, 1), (9, 3600.0, 1)],
)
def test_a_child_that_stayed_up_starts_its_count_again(previous, uptime_s, crashes):
    from llmq.backoff import crashes_in_a_row

    assert crashes_in_a_row(previous, uptime_s, healthy_after_s=30.0) == crashes
