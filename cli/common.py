"""What the commands share: the console, failing with a message, and the API client."""

from __future__ import annotations

from typing import NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from llmq.settings import get_settings

console = Console()


def fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(1)


def require_secret_key() -> None:
    """Long-running processes share one key for webhook secrets: never a local one of their own."""
    from cryptography.fernet import Fernet

    key = get_settings().secret_key
    if not key:
        fail("set LLMQ_SECRET_KEY (a Fernet key; see docs/settings.md)")
    try:
        Fernet(key)
    except ValueError:
        fail("LLMQ_SECRET_KEY is not a Fernet key (urlsafe base64 of 32 bytes)")


def client(api_url: str | None = None, api_key: str | None = None) -> httpx.Client:
    settings = get_settings()
    key = api_key or settings.api_key
    if not key:
        fail("no API key: set LLMQ_API_KEY (create one with `llmq keys create --name NAME`)")
    return httpx.Client(
        base_url=api_url or settings.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=90
    )


def check(response: httpx.Response) -> dict:
    """The response's JSON body, or exit with the problem the API answered."""
    if response.status_code >= 400:
        fail(problem(response))
    return response.json()


def problem(response: httpx.Response) -> str:
    """One line from an error answer: RFC 9457 (`/v1/jobs`) or OpenAI's envelope
    (`{"error": {message, type, param, code}}`, the OpenAI-shaped routes)."""
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code}: {response.text[:200]}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        param = f" (param: {error['param']})" if error.get("param") else ""
        return f"{response.status_code} {error.get('type') or ''}: {error.get('message')}{param}"
    if not isinstance(body, dict):
        return f"{response.status_code}: {response.text[:200]}"
    fields = ", ".join(f"{e['field']}: {e['message']}" for e in body.get("errors", []))
    return f"{response.status_code} {body.get('title', '')}: {fields or body.get('detail', '')}"
