"""`llmq batch` run as a command against a live API process and a real echo worker; the
feeder's rounds publish the lines and the sweeper's pass finalizes the batch while the command
follows it, as the leader's would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cli.batches import events, result_paths, tokens_per_s
from tests.api.routes import test_batches
from tests.api.routes.test_batches import feed, request, sweeper
from tests.conftest import ROOT, make_key, wait_for

api, echo_worker = test_batches.api, test_batches.echo_worker  # the same fixtures


def run(api, key: str, *args: str, sweep: bool = False) -> tuple[int, str]:
    """The command's exit status and output; with `sweep`, the feeder and the sweeper pass
    until it ends."""
    env = dict(os.environ, LLMQ_API_URL=api.url, LLMQ_API_KEY=key, COLUMNS="200")
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "batch", *args], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, text=True)  # fmt: skip

        def ended() -> bool:
            if sweep:
                feed()
                sweeper().sweep()
            return proc.poll() is not None

        wait_for(ended, 90, f"llmq batch {' '.join(args)}", interval_s=0.2)
        out.seek(0)
        return proc.returncode, out.read()


def write(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def lines(path: Path) -> dict[str, dict]:
    return {x["custom_id"]: x for x in map(json.loads, path.read_text().splitlines())}


def test_submit_wait_writes_one_line_per_custom_id(api, echo_worker, tmp_path):
    good = [request(f"g{i}") for i in range(4)]
    bad = [request("unknown", model="nope"), request("tools", tools=[{"type": "function"}])]
    requests = write(tmp_path / "requests.jsonl", [*good, *bad])
    status, out = run(api, make_key("cli"), "submit", str(requests), "--wait", "--poll-s", "0.2",
                      sweep=True)  # fmt: skip
    assert status == 0, out
    assert "completed: 4 completed, 2 failed of 6" in out
    output = lines(tmp_path / "requests.output.jsonl")
    assert sorted(output) == ["g0", "g1", "g2", "g3"]
    assert output["g0"]["response"]["body"]["choices"][0]["message"]["content"] == "one two"
    errors = lines(tmp_path / "requests.errors.jsonl")
    assert sorted(errors) == ["tools", "unknown"]
    assert errors["unknown"]["error"]["code"] == "model_not_found"


def test_submit_get_list_cancel(api, tmp_path):
    """No worker serves the model, so the batch is still running when it is cancelled."""
    key = make_key("cli-cancel")
    requests = write(tmp_path / "queued.jsonl", [request(f"q{i}", model="tiny-serial")
                                                  for i in range(2)])  # fmt: skip
    status, out = run(api, key, "submit", str(requests), "--metadata", "run=7")
    assert status == 0, out
    batch_id = out.strip()
    assert batch_id.startswith("batch_")
    status, out = run(api, key, "get", batch_id)
    got = json.loads(out)
    assert status == 0 and got["status"] == "in_progress" and got["metadata"] == {"run": "7"}
    assert got["request_counts"]["total"] == 2
    status, out = run(api, key, "list")
    assert status == 0 and batch_id in out and "in_progress" in out
    status, out = run(api, key, "pause", batch_id)
    assert status == 0 and out.strip() == f"batch {batch_id} in_progress, paused", out
    status, out = run(api, key, "resume", batch_id)
    assert status == 0 and out.strip() == f"batch {batch_id} in_progress", out
    status, out = run(api, key, "cancel", batch_id)
    assert status == 0 and out.strip() == f"batch {batch_id} cancelled"
    status, out = run(api, key, "get", batch_id, "--wait", "--errors", str(tmp_path / "e.jsonl"))
    assert status == 1 and "cancelled: 0 completed, 2 failed of 2" in out, out
    assert {e["error"]["code"] for e in lines(tmp_path / "e.jsonl").values()} == {"batch_cancelled"}


def test_ctrl_c_stops_following_and_leaves_the_batch_running(api, tmp_path):
    key = make_key("cli-interrupt")
    requests = write(tmp_path / "held.jsonl", [request("h", model="tiny-serial")])
    env = dict(os.environ, LLMQ_API_URL=api.url, LLMQ_API_KEY=key, COLUMNS="200")
    log = tmp_path / "out.txt"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "batch", "submit", str(requests), "--wait"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(lambda: "in_progress" in log.read_text(), 60, "following", interval_s=0.1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
    batch_id = log.read_text().split()[1]
    assert f"Follow it again with: llmq batch get {batch_id} --wait" in log.read_text()
    status, out = run(api, key, "get", batch_id)
    assert status == 0 and json.loads(out)["status"] == "in_progress"
    run(api, key, "cancel", batch_id)


def test_a_broken_file_fails_the_wait_with_its_line_errors(api, tmp_path):
    requests = tmp_path / "broken.jsonl"
    requests.write_text(json.dumps(request("a")) + "\nnot json\n")
    status, out = run(api, make_key("cli-broken"), "submit", str(requests), "--wait")
    assert status == 1 and "failed: 0 completed, 0 failed of 0" in out, out
    assert "line 2:" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "missing.jsonl"], "error: no such file: missing.jsonl"),
        (["get", "batch_nope"], "error: 404 invalid_request_error: "),
        (["cancel", "batch_nope"], "error: 404 invalid_request_error: "),
        (["list", "--after", "batch_nope"], "error: 400 invalid_request_error: "),
    ],
)
def test_a_failure_is_one_line_and_exit_1(api, args, message):
    status, out = run(api, make_key("cli-errors"), *args)
    assert status == 1
    assert len(out.strip().splitlines()) == 1 and out.startswith(message), out


def test_a_wrong_key_is_the_apis_one_line(api, tmp_path):
    requests = write(tmp_path / "r.jsonl", [request("a")])
    status, out = run(api, "llmq_wrong", "submit", str(requests))
    assert status == 1 and out.startswith("error: 401 ") and len(out.splitlines()) == 1, out


def test_the_result_paths_sit_beside_the_input():
    assert result_paths(Path("d/r.jsonl"), None, None) == (
        Path("d/r.output.jsonl"), Path("d/r.errors.jsonl")
    )  # fmt: skip
    assert result_paths(Path("batch_1"), Path("o"), None) == (
        Path("o"),
        Path("batch_1.errors.jsonl"),
    )
    assert tokens_per_s((10.0, 100), (12.0, 300)) == 100
    assert tokens_per_s((10.0, 100), (10.0, 300)) is None


def test_an_unreachable_api_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "batch", "list"], cwd=ROOT, capture_output=True, text=True,
        env=dict(os.environ, LLMQ_API_URL="http://127.0.0.1:9", LLMQ_API_KEY="k"), timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stdout.startswith("error: cannot reach the API")


def test_events_are_read_from_the_streams_lines():
    stream = [": ping - 2026-01-01", "event: progress", 'data: {"status": "in_progress"}', "",
              "event: batch", 'data: {"status":', 'data: "completed"}', ""]  # fmt: skip
    assert list(events(iter(stream))) == [{"status": "in_progress"}, {"status": "completed"}]
