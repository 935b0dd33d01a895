"""`llmq batch`: OpenAI Batch files through the API's /v1/files and /v1/batches.

`submit --wait` uploads, creates, follows the batch with a progress bar and downloads its
output and error files; the batch runs on the server, so stopping the command (Ctrl-C)
leaves it running, to be followed again with `llmq batch get ID --wait`. Following reads the
batch's event stream (`GET /v1/batches/{id}/events`), and polls the batch instead when the
stream cannot be read.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import httpx
import typer

from cli.common import check, client, console, fail, problem

app = typer.Typer(
    help="OpenAI Batch files: submit, follow, list, pause, resume, cancel.", no_args_is_help=True
)
ENDED = {"completed", "failed", "expired", "cancelled"}
Output = Annotated[
    Path | None, typer.Option(help="Where the output file goes (default: <input>.output.jsonl).")
]
Errors = Annotated[
    Path | None, typer.Option(help="Where the error file goes (default: <input>.errors.jsonl).")
]
PollS = Annotated[
    float, typer.Option(help="Seconds between reads of the batch, when its stream is unavailable.")
]


@contextlib.contextmanager
def _api() -> Iterator[httpx.Client]:
    """The CLI's client; an API it cannot reach is one line, not a traceback."""
    with client() as api:
        try:
            yield api
        except httpx.TransportError as exc:
            fail(f"cannot reach the API at {api.base_url}: {exc}")


def result_paths(stem: Path, output: Path | None, errors: Path | None) -> tuple[Path, Path]:
    """The output and error paths, by default beside `stem` (`requests.jsonl` gives
    `requests.output.jsonl` and `requests.errors.jsonl`)."""
    base = stem.with_suffix("") if stem.suffix == ".jsonl" else stem
    return (output or base.with_name(f"{base.name}.output.jsonl"),
            errors or base.with_name(f"{base.name}.errors.jsonl"))  # fmt: skip


def tokens_per_s(first: tuple[float, int], now: tuple[float, int]) -> float | None:
    """Output tokens per second between two (monotonic seconds, output tokens) readings."""
    elapsed_s = now[0] - first[0]
    return (now[1] - first[1]) / elapsed_s if elapsed_s > 0 else None


def _output_tokens(batch: dict) -> int:
    return int((batch.get("usage") or {}).get("output_tokens") or 0)


@app.command()
def submit(
    requests: Annotated[Path, typer.Argument(help="An OpenAI Batch JSONL file.")],
    endpoint: Annotated[str, typer.Option(help="The URL every line names.")] = (
        "/v1/chat/completions"
    ),
    metadata: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    wait: Annotated[bool, typer.Option(help="Follow it, then download its files.")] = False,
    output: Output = None,
    errors: Errors = None,
    poll_s: PollS = 1.0,
) -> None:
    """Upload the file and create the batch; prints its id, or follows it with --wait."""
    if not requests.is_file():
        fail(f"no such file: {requests}")
    meta = dict(item.partition("=")[::2] for item in metadata or [])
    with _api() as api, requests.open("rb") as data:
        uploaded = check(
            api.post("/v1/files", files={"file": (requests.name, data)}, data={"purpose": "batch"})
        )
        body = {"input_file_id": uploaded["id"], "endpoint": endpoint, "completion_window": "24h"}
        batch = check(api.post("/v1/batches", json=body | ({"metadata": meta} if meta else {})))
        if not wait:
            print(batch["id"])
            return
        console.print(f"batch {batch['id']} {batch['status']}", soft_wrap=True)
        _follow(api, batch, *result_paths(requests, output, errors), poll_s)


@app.command()
def get(
    batch_id: str,
    wait: Annotated[bool, typer.Option(help="Follow it, then download its files.")] = False,
    output: Output = None,
    errors: Errors = None,
    poll_s: PollS = 1.0,
) -> None:
    """Print a batch as JSON, or follow it to its end with --wait (files named by its id)."""
    with _api() as api:
        batch = check(api.get(f"/v1/batches/{batch_id}"))
        if not wait:
            print(json.dumps(batch, indent=2))
            return
        _follow(api, batch, *result_paths(Path(batch_id), output, errors), poll_s)


@app.command("list")
def list_(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    after: Annotated[str | None, typer.Option(help="List those older than this batch.")] = None,
) -> None:
    """The key's batches, newest first."""
    from rich.table import Table

    params: dict = {"limit": limit} | ({"after": after} if after else {})
    with _api() as api:
        page = check(api.get("/v1/batches", params=params))
    table = Table("id", "status", "completed", "failed", "total", "created", "endpoint")
    for b in page["data"]:
        counts = b["request_counts"]
        created = datetime.fromtimestamp(b["created_at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(b["id"], b["status"], str(counts["completed"]), str(counts["failed"]),
                      str(counts["total"]), created, b["endpoint"])  # fmt: skip
    console.print(table)
    if page["has_more"]:
        console.print(f"more: llmq batch list --after {page['last_id']}", soft_wrap=True)


def _act(batch_id: str, action: str) -> None:
    """POST the batch's `action` and print what it is now."""
    with _api() as api:
        batch = check(api.post(f"/v1/batches/{batch_id}/{action}"))
    paused = ", paused" if batch.get("paused") and batch["status"] == "in_progress" else ""
    console.print(f"batch {batch['id']} {batch['status']}{paused}", soft_wrap=True)


@app.command()
def cancel(batch_id: str) -> None:
    """Cancel a batch's queued and running requests; what ran is kept in its files."""
    _act(batch_id, "cancel")


@app.command()
def pause(batch_id: str) -> None:
    """Pause a batch: its running requests finish, no queued one starts until resumed."""
    _act(batch_id, "pause")


@app.command()
def resume(batch_id: str) -> None:
    """Resume a paused batch: its queued requests run again."""
    _act(batch_id, "resume")


def _follow(api: httpx.Client, batch: dict, output: Path, errors: Path, poll_s: float) -> None:
    """Progress until the batch ends, then its files and a summary; exit 1 unless it
    completed. Ctrl-C stops following, not the batch."""
    try:
        batch = _watch(api, batch, poll_s)
    except KeyboardInterrupt:
        console.print(
            f"\nstopped following; batch {batch['id']} keeps running. "
            f"Follow it again with: llmq batch get {batch['id']} --wait",
            soft_wrap=True,
        )
        raise typer.Exit(130) from None
    saved = [
        f"{kind} → {_download(api, batch[field], path)}"
        for kind, field, path in (("output", "output_file_id", output),
                                  ("errors", "error_file_id", errors))
        if batch.get(field)
    ]  # fmt: skip
    counts = batch["request_counts"]
    colour = "green" if batch["status"] == "completed" else "red"
    console.print(
        f"batch {batch['id']} [{colour}]{batch['status']}[/{colour}]: {counts['completed']} "
        f"completed, {counts['failed']} failed of {counts['total']}"
        + "".join(f"; {line}" for line in saved),
        soft_wrap=True,
    )
    for error in (batch.get("errors") or {}).get("data") or []:
        console.print(f"  line {error.get('line')}: {error.get('message')}", soft_wrap=True)
    if batch["status"] != "completed":
        raise typer.Exit(1)


def events(lines: Iterator[str]) -> Iterator[dict]:
    """The JSON data of each server-sent event in a stream's lines (comments, such as the
    server's pings, are skipped)."""
    data: list[str] = []
    for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            yield json.loads("\n".join(data))
            data = []


def _updates(api: httpx.Client, batch: dict, poll_s: float) -> Iterator[dict]:
    """The batch as it changes, until it ends: from its event stream, else by polling."""
    yield batch
    try:
        timeout = httpx.Timeout(10.0, read=60.0)  # the server pings every 15 s
        with api.stream("GET", f"/v1/batches/{batch['id']}/events", timeout=timeout) as answer:
            answer.raise_for_status()
            for batch in events(answer.iter_lines()):
                yield batch
                if batch["status"] in ENDED:
                    return
    except (httpx.HTTPError, ValueError, KeyError):
        pass  # an API without the stream, or one that dropped it: poll instead
    while batch["status"] not in ENDED:
        time.sleep(poll_s)
        batch = check(api.get(f"/v1/batches/{batch['id']}"))
        yield batch


def _pace(batch: dict, first: tuple[float, int]) -> str:
    """Tokens/s and ETA as the server measures them, else the rate seen here."""
    progress = batch.get("llmq_progress") or {}
    rate = progress.get("tokens_per_s")
    if rate is None:
        rate = tokens_per_s(first, (time.monotonic(), _output_tokens(batch)))
    parts = [f"{rate:.0f} tok/s"] if rate is not None else []
    if progress.get("eta_s") is not None and batch["status"] not in ENDED:
        parts.append(f"ETA {timedelta(seconds=round(progress['eta_s']))}")
    if batch.get("paused"):
        parts.append("paused")
    return "  ".join(parts)


def _watch(api: httpx.Client, batch: dict, poll_s: float) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[failed]} failed  {task.fields[pace]}"))  # fmt: skip
    first = (time.monotonic(), _output_tokens(batch))
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(batch["status"], total=None, failed=0, pace="")
        for current in _updates(api, batch, poll_s):
            batch = current
            counts = current["request_counts"]
            progress.update(
                task, description=batch["status"], total=counts["total"] or None,
                completed=counts["completed"] + counts["failed"], failed=counts["failed"],
                pace=_pace(batch, first),
            )  # fmt: skip
    return batch


def _download(api: httpx.Client, file_id: str, path: Path) -> Path:
    """The file's content to `path`, streamed."""
    with api.stream("GET", f"/v1/files/{file_id}/content") as answer:
        if answer.status_code >= 400:
            answer.read()
            fail(problem(answer))
        with path.open("wb") as out:
            for chunk in answer.iter_bytes():
                out.write(chunk)
    return path
